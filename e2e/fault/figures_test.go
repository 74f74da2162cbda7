package fault

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"
)

// The figures table: every test of the package adds the figures it
// measured with Figure or Check, and TestMain prints them all, in the order
// they were added, when the tests end.
//
//	Figure(t, "heap at 10%", fmt.Sprintf("%.1f MiB", mib), "")
//	Check(t, "good expires applied", applied, "= 100,000", applied == 100_000)
//
// Values are printed with fmt, except integers (with thousands separators:
// 100,000), durations (rounded to the millisecond, or microsecond below a
// second) and floats (%.4g). Pass a string to print anything else your way.

// row is one line of the table.
type row struct {
	test, figure, value, target, verdict string
}

var figures struct {
	mu   sync.Mutex
	rows []row
}

// Figure adds a figure of t that is reported, not judged: what it is,
// its value, and note, which says what it means or what it is compared
// with ("" for nothing). It also logs the row on t.
func Figure(t testing.TB, figure string, value any, note string) {
	t.Helper()
	add(t, row{test: t.Name(), figure: figure, value: formatValue(value), target: note})
}

// Check adds a figure of t held to target (such as "= 0" or "< 1.5x
// start + 8 MiB"), with the verdict pass says: "ok", or "FAIL", which also
// fails t with the row. It returns pass.
func Check(t testing.TB, figure string, value any, target string, pass bool) bool {
	t.Helper()
	r := row{test: t.Name(), figure: figure, value: formatValue(value), target: target, verdict: "ok"}
	if !pass {
		r.verdict = "FAIL"
	}
	add(t, r)
	if !pass {
		t.Errorf("%s: %s, want %s", figure, r.value, target)
	}
	return pass
}

func add(t testing.TB, r row) {
	t.Helper()
	figures.mu.Lock()
	figures.rows = append(figures.rows, r)
	figures.mu.Unlock()
	line := r.figure + ": " + r.value
	if r.target != "" {
		line += " (" + r.target + ")"
	}
	if r.verdict != "" {
		line += " " + r.verdict
	}
	t.Log("figure: " + line)
}

// formatValue renders a value for the table.
func formatValue(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case time.Duration:
		if x >= time.Second || x <= -time.Second {
			return x.Round(time.Millisecond).String()
		}
		return x.Round(time.Microsecond).String()
	case float64:
		return strconv.FormatFloat(x, 'g', 4, 64)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', 4, 32)
	case int:
		return thousands(strconv.FormatInt(int64(x), 10))
	case int64:
		return thousands(strconv.FormatInt(x, 10))
	case int32:
		return thousands(strconv.FormatInt(int64(x), 10))
	case uint:
		return thousands(strconv.FormatUint(uint64(x), 10))
	case uint64:
		return thousands(strconv.FormatUint(x, 10))
	case uint32:
		return thousands(strconv.FormatUint(uint64(x), 10))
	}
	return fmt.Sprint(v)
}

// thousands puts a comma between groups of three digits of a decimal
// integer: 100000 → 100,000.
func thousands(s string) string {
	sign := ""
	if strings.HasPrefix(s, "-") {
		sign, s = "-", s[1:]
	}
	if len(s) <= 3 {
		return sign + s
	}
	var b strings.Builder
	b.WriteString(sign)
	head := len(s) % 3
	if head > 0 {
		b.WriteString(s[:head])
	}
	for i := head; i < len(s); i += 3 {
		if b.Len() > len(sign) {
			b.WriteByte(',')
		}
		b.WriteString(s[i : i+3])
	}
	return b.String()
}

// writeFigures writes the table of every row added so far; nothing when
// there is none.
func writeFigures(w io.Writer) {
	figures.mu.Lock()
	rows := append([]row(nil), figures.rows...)
	figures.mu.Unlock()
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n=== cachebus fault suite: figures (%s, %s)\n", time.Now().UTC().Format(time.RFC3339), buildMode())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TEST\tFIGURE\tVALUE\tTARGET\tVERDICT")
	last := ""
	for _, r := range rows {
		test := r.test
		if test == last {
			test = "" // a test's name once, on its first row
		}
		last = r.test
		cells := [][]string{{test}, wrap(r.figure, 40), wrap(r.value, 44), wrap(r.target, 44), {r.verdict}}
		lines := 0
		for _, c := range cells {
			lines = max(lines, len(c))
		}
		for i := range lines {
			for j, c := range cells {
				if i < len(c) {
					fmt.Fprint(tw, c[i])
				}
				if j < len(cells)-1 {
					fmt.Fprint(tw, "\t")
				}
			}
			fmt.Fprintln(tw)
		}
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
}

// wrap cuts s into lines of at most width bytes at spaces; a longer word
// stays whole.
func wrap(s string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(s) {
		switch {
		case line == "":
			line = word
		case len(line)+1+len(word) <= width:
			line += " " + word
		default:
			lines = append(lines, line)
			line = word
		}
	}
	return append(lines, line)
}

// buildMode says whether the race detector is on, which changes what some
// tests count.
func buildMode() string {
	if raceEnabled {
		return "race detector on: reduced counts"
	}
	return "race detector off"
}

// buildBinaries, when set (records_test.go sets it on Unix systems),
// builds the binaries the process tests run, before the tests, and returns
// what removes them after.
var buildBinaries func() (cleanup func(), err error)

// child, when set (memoclient_test.go sets it on Unix systems), runs the
// test binary as one of the processes a test starts from it, and reports
// whether the environment asked for one.
var child func() (code int, ok bool)

func TestMain(m *testing.M) {
	if child != nil {
		if code, ok := child(); ok {
			os.Exit(code)
		}
	}
	flag.Parse()
	code := run(m)
	writeFigures(os.Stdout)
	if path := os.Getenv("CACHEBUS_FIGURES"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			writeFigures(f)
			err = f.Close()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "fault: CACHEBUS_FIGURES=%s: %v\n", path, err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// run builds the binaries of the process tests, unless -short skips them
// (their tests then skip themselves), and runs the tests.
func run(m *testing.M) int {
	if buildBinaries != nil && !testing.Short() {
		cleanup, err := buildBinaries()
		if err != nil {
			fmt.Fprintf(os.Stderr, "fault: %v\n", err)
			return 1
		}
		defer cleanup()
	}
	return m.Run()
}
