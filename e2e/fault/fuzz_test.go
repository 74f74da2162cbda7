package fault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fuzzing budget: CACHEBUS_FUZZTIME per target, unless the targets would
// together take more than CACHEBUS_FUZZ_MAX; then each gets an equal share,
// never less than minFuzzTime.
const (
	defaultFuzzTime = 4 * time.Second
	defaultFuzzMax  = 2 * time.Minute
	minFuzzTime     = time.Second
)

// fuzzTarget is one fuzz target of the repository.
type fuzzTarget struct {
	dir  string // package directory, relative to the module root, slash-separated
	name string // FuzzXxx
	file string // the file that declares it, relative to the module root
}

func (f fuzzTarget) pkg() string { return "./" + f.dir }

// TestFuzzTargets runs every fuzz target of the repository for a bounded
// time, one after the other (the machine has two cores, and other
// packages' tests run beside this one). Each package's fuzzing test
// binary is built once (`go test -c -fuzz`, without the race detector,
// whatever this test runs under) and run once per target in the package's
// directory, as `go test -fuzz` would run it.
func TestFuzzTargets(t *testing.T) {
	if testing.Short() {
		t.Skip("fuzzing skipped under -short")
	}
	root := moduleRoot(t)
	targets, err := findFuzzTargets(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) == 0 {
		t.Fatalf("no fuzz target found under %s: the scan is broken, or the targets are gone", root)
	}
	if only := os.Getenv("CACHEBUS_FUZZ_RUN"); only != "" {
		re, err := regexp.Compile(only)
		if err != nil {
			t.Fatalf("CACHEBUS_FUZZ_RUN=%q: %v", only, err)
		}
		targets = slices.DeleteFunc(targets, func(tg fuzzTarget) bool { return !re.MatchString(tg.dir + "." + tg.name) })
		if len(targets) == 0 {
			t.Skipf("CACHEBUS_FUZZ_RUN=%q selects no fuzz target", only)
		}
	}
	per, iterations, err := fuzzBudget(len(targets))
	if err != nil {
		t.Fatal(err)
	}
	if per == "" {
		t.Skip("CACHEBUS_FUZZTIME=0: fuzzing skipped")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to run the fuzz targets: %v", err)
	}
	env := fuzzEnv(os.Environ())
	modPath, err := modulePath(root)
	if err != nil {
		t.Fatal(err)
	}
	goEnv := exec.Command(goBin, "env", "GOCACHE")
	goEnv.Dir, goEnv.Env = root, env
	out, err := goEnv.Output()
	gocache := strings.TrimSpace(string(out))
	if err != nil || gocache == "" || gocache == "off" {
		t.Fatalf("fuzzing keeps what it finds in the build cache: go env GOCACHE = %q, %v", gocache, err)
	}
	Figure(t, "fuzz targets found", len(targets), "every func Fuzz* in a _test.go file")
	Figure(t, "fuzz time per target", per, fuzzBudgetNote(len(targets), iterations))

	// A cold build cache makes the first instrumented build take minutes
	// on two cores: leave room for it, within the test's own deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	if dl, ok := t.Deadline(); ok {
		ctx, cancel = context.WithDeadline(context.Background(), dl.Add(-30*time.Second))
	}
	defer cancel()
	binDir := t.TempDir()
	start := time.Now()
	var (
		execs            int64
		failed, packages int
		buildTime        time.Duration
		bin, built       string
		buildOut         []byte
		buildErr         error
	)
	for _, tg := range targets {
		if tg.dir != built {
			// The first target of a package: build its fuzzing binary.
			built, packages = tg.dir, packages+1
			bstart := time.Now()
			bin = filepath.Join(binDir, strings.ReplaceAll(tg.dir, "/", "_")+".test")
			cmd := exec.CommandContext(ctx, goBin, "test", "-c", "-fuzz", ".", "-o", bin, tg.pkg())
			cmd.Dir, cmd.Env, cmd.WaitDelay = root, env, 10*time.Second
			buildOut, buildErr = cmd.CombinedOutput()
			buildTime += time.Since(bstart)
		}
		var res fuzzResult
		if buildErr != nil {
			res = fuzzResult{output: string(buildOut), err: fmt.Errorf("go test -c -fuzz %s: %w", tg.pkg(), buildErr)}
		} else {
			cacheDir := filepath.Join(gocache, "fuzz", filepath.FromSlash(modPath+"/"+tg.dir))
			res = runFuzzTarget(ctx, bin, root, tg, per, cacheDir)
		}
		execs += res.execs
		what := fmt.Sprintf("%s (%s)", tg.name, tg.dir)
		value := fmt.Sprintf("%s execs, %s new interesting, %s", formatValue(res.execs), formatValue(res.interesting),
			res.elapsed.Round(100*time.Millisecond))
		switch {
		case res.err != nil:
			value = fmt.Sprintf("failed after %s execs, %s", formatValue(res.execs), res.elapsed.Round(100*time.Millisecond))
		case res.baselineOnly:
			// The whole budget went to running the corpus (the seeds and
			// what earlier runs found, kept in the build cache): no new
			// input was tried.
			value = fmt.Sprintf("corpus only, %s of %s entries, %s", formatValue(res.baselineDone), formatValue(res.baselineTotal),
				res.elapsed.Round(100*time.Millisecond))
		}
		if !Check(t, what, value, "no failure in "+per, res.err == nil) {
			failed++
			t.Errorf("%s (%s): %v\n%s", tg.name, tg.file, res.err, res.output)
		}
	}
	total := time.Since(start)
	Figure(t, "fuzz executions, all targets", execs, "")
	Check(t, "fuzz targets failed", failed, "= 0", failed == 0)
	// Builds take seconds each with a warm build cache, minutes for the
	// first one on a cold cache (every package is built instrumented).
	Figure(t, "fuzzing binaries built", fmt.Sprintf("%d packages in %s", packages, buildTime.Round(100*time.Millisecond)), "")
	Figure(t, "fuzzing wall time", total, fmt.Sprintf("%d targets x %s + %d builds", len(targets), per, packages))
}

// fuzzBudget returns the -fuzztime value for each of n targets ("" to
// skip), and whether it counts iterations rather than time.
func fuzzBudget(n int) (string, bool, error) {
	per := defaultFuzzTime
	if v := os.Getenv("CACHEBUS_FUZZTIME"); v != "" {
		if count, ok := strings.CutSuffix(v, "x"); ok {
			if c, err := strconv.ParseUint(count, 10, 63); err != nil || c == 0 {
				return "", false, fmt.Errorf("CACHEBUS_FUZZTIME=%q: want a duration such as 4s, or Nx for N inputs", v)
			}
			return v, true, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return "", false, fmt.Errorf("CACHEBUS_FUZZTIME=%q: want a duration such as 4s, or Nx for N inputs", v)
		}
		if d == 0 {
			return "", false, nil
		}
		per = d
	}
	limit := defaultFuzzMax
	if v := os.Getenv("CACHEBUS_FUZZ_MAX"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return "", false, fmt.Errorf("CACHEBUS_FUZZ_MAX=%q: want a duration such as 3m", v)
		}
		limit = d
	}
	if time.Duration(n)*per > limit {
		per = max(limit/time.Duration(n), minFuzzTime).Truncate(100 * time.Millisecond)
	}
	return per.String(), false, nil
}

func fuzzBudgetNote(n int, iterations bool) string {
	if iterations {
		return "CACHEBUS_FUZZTIME"
	}
	limit := defaultFuzzMax
	if v, err := time.ParseDuration(os.Getenv("CACHEBUS_FUZZ_MAX")); err == nil && v > 0 {
		limit = v
	}
	return fmt.Sprintf("CACHEBUS_FUZZTIME (default %s), %d targets sharing at most %s", defaultFuzzTime, n, limit)
}

// fuzzEnv is the environment of the fuzzing builds: this one's, without
// -race in GOFLAGS (fuzzing needs a build without the race detector;
// -race given to the parent `go test` on its command line is not in the
// environment anyway).
func fuzzEnv(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GOFLAGS="); ok {
			var keep []string
			for _, f := range strings.Fields(v) {
				if f != "-race" && f != "--race" && !strings.HasPrefix(f, "-race=") && !strings.HasPrefix(f, "--race=") {
					keep = append(keep, f)
				}
			}
			kv = "GOFLAGS=" + strings.Join(keep, " ")
		}
		out = append(out, kv)
	}
	return out
}

// fuzzResult is what fuzzing one target did.
type fuzzResult struct {
	execs, interesting int64
	// baselineOnly is set when the budget ended while the fuzzer was still
	// running the corpus, baselineDone of baselineTotal entries.
	baselineOnly                bool
	baselineDone, baselineTotal int64
	elapsed                     time.Duration
	output                      string
	err                         error
}

var (
	execsRE       = regexp.MustCompile(`execs: (\d+)`)
	interestingRE = regexp.MustCompile(`new interesting: (\d+)`)
	baselineRE    = regexp.MustCompile(`gathering baseline coverage: (\d+)/(\d+) completed`)
)

// runFuzzTarget fuzzes one target for budget with the package's fuzzing
// test binary, in the package's directory, keeping what it finds in
// cacheDir as go test does; and checks that a passing run left the
// target's corpus directory as it was.
func runFuzzTarget(ctx context.Context, bin, root string, tg fuzzTarget, budget, cacheDir string) fuzzResult {
	pkgDir := filepath.Join(root, filepath.FromSlash(tg.dir))
	corpus := filepath.Join(pkgDir, "testdata", "fuzz", tg.name)
	before := listDir(corpus)

	// A time budget is not given to the fuzzer as -test.fuzztime=4s: Go
	// 1.26's coordinator can report its own deadline as a failure, with no
	// failing input, when a loaded machine keeps a worker from answering
	// in time (go.dev/issue/75804). The fuzzer gets an unbounded count and
	// an interrupt at the end of the budget, which it takes as a clean stop,
	// as it takes ^C.
	fuzztime, wall := budget, time.Duration(0)
	if d, err := time.ParseDuration(budget); err == nil {
		fuzztime, wall = strconv.FormatInt(math.MaxInt64, 10)+"x", d
	}
	// -test.parallel=1: one fuzzing worker, so that the tests of other
	// packages running beside this one keep a core.
	cmd := exec.CommandContext(ctx, bin, "-test.run=^$", "-test.fuzz=^"+tg.name+"$", "-test.fuzztime="+fuzztime,
		"-test.parallel=1", "-test.fuzzcachedir="+cacheDir, "-test.timeout=10m")
	cmd.Dir = pkgDir
	cmd.WaitDelay = 10 * time.Second
	out := &fuzzOutput{started: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fuzzResult{err: fmt.Errorf("start the fuzzer: %w", err)}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	if wall == 0 {
		err = <-done
	} else {
		err = interruptAfter(cmd, done, out.started, wall)
	}
	res := fuzzResult{elapsed: time.Since(start), output: out.String()}
	if m := execsRE.FindAllStringSubmatch(res.output, -1); len(m) > 0 {
		res.execs, _ = strconv.ParseInt(m[len(m)-1][1], 10, 64)
	}
	if m := interestingRE.FindAllStringSubmatch(res.output, -1); len(m) > 0 {
		res.interesting, _ = strconv.ParseInt(m[len(m)-1][1], 10, 64)
	}
	if m := baselineRE.FindAllStringSubmatch(res.output, -1); len(m) > 0 && !execsRE.MatchString(res.output) {
		res.baselineOnly = true
		res.baselineDone, _ = strconv.ParseInt(m[len(m)-1][1], 10, 64)
		res.baselineTotal, _ = strconv.ParseInt(m[len(m)-1][2], 10, 64)
	}
	added := newEntries(before, listDir(corpus))
	switch {
	case ctx.Err() != nil:
		res.err = fmt.Errorf("fuzzing did not end in time: %w", ctx.Err())
	case err != nil:
		res.err = fmt.Errorf("fuzzing failed: %w", err)
		for _, name := range added {
			data, _ := os.ReadFile(filepath.Join(corpus, name))
			res.err = fmt.Errorf("%w; failing input %s (go test -run=%s/%s %s):\n%s", res.err,
				filepath.Join(tg.dir, "testdata", "fuzz", tg.name, name), tg.name, name, tg.pkg(), data)
		}
	case len(added) > 0:
		res.err = fmt.Errorf("a passing run added %v to %s: the tree must stay clean", added, corpus)
	case !strings.Contains(res.output, "fuzz: elapsed"):
		res.err = errors.New("no fuzzing progress in the output: the target did not fuzz")
	}
	return res
}

// interruptAfter interrupts the fuzzer once it has fuzzed for wall, and
// returns how it ended. The interrupt waits for the fuzzer's first progress
// line: before it, the test binary may not yet catch the signal, which
// would kill it.
func interruptAfter(cmd *exec.Cmd, done <-chan error, started <-chan struct{}, wall time.Duration) error {
	select {
	case err := <-done:
		return err
	case <-started:
	}
	budget := time.NewTimer(wall)
	defer budget.Stop()
	select {
	case err := <-done:
		return err
	case <-budget.C:
		if err := cmd.Process.Signal(os.Interrupt); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("interrupt the fuzzer: %w", err)
		}
		return <-done
	}
}

// fuzzOutput collects the fuzzer's output and closes started at its first
// progress line.
type fuzzOutput struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	started chan struct{}
	seen    bool
}

func (o *fuzzOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n, err := o.buf.Write(p)
	if !o.seen && bytes.Contains(o.buf.Bytes(), []byte("fuzz: elapsed")) {
		o.seen = true
		close(o.started)
	}
	return n, err
}

func (o *fuzzOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// listDir lists the names in dir (none when it does not exist).
func listDir(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func newEntries(before, after []string) []string {
	var added []string
	for _, n := range after {
		if !slices.Contains(before, n) {
			added = append(added, n)
		}
	}
	return added
}

// modulePath is the module path named by root's go.mod.
func modulePath(root string) (string, error) {
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "module"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			return strings.Trim(strings.TrimSpace(rest), `"`), nil
		}
	}
	return "", fmt.Errorf("no module line in %s", filepath.Join(root, "go.mod"))
}

// moduleRoot is the directory of the go.mod above the test's directory.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// findFuzzTargets lists the fuzz targets under root, in a stable order:
// every top-level func FuzzXxx(*testing.F) declared in a _test.go file
// that the go command would build here without the race detector (build
// constraints and file name suffixes are honoured), outside testdata,
// vendor and the directories go ignores (., _ prefixes).
func findFuzzTargets(root string) ([]fuzzTarget, error) {
	ctx := build.Default
	var targets []fuzzTarget
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			if path != root {
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
					return filepath.SkipDir // another module
				}
			}
			return nil
		}
		if !strings.HasSuffix(name, "_test.go") || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
			return nil
		}
		dir := filepath.Dir(path)
		if ok, err := ctx.MatchFile(dir, name); err != nil || !ok {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return fmt.Errorf("scanning for fuzz targets: %w", err)
		}
		relDir, err := filepath.Rel(root, dir)
		if err != nil {
			return err
		}
		relFile, _ := filepath.Rel(root, path)
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !isFuzzName(fn.Name.Name) || !takesTestingF(f, fn) {
				continue
			}
			targets = append(targets, fuzzTarget{dir: filepath.ToSlash(relDir), name: fn.Name.Name, file: filepath.ToSlash(relFile)})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(targets, func(a, b fuzzTarget) int {
		if c := strings.Compare(a.dir, b.dir); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	return targets, nil
}

// isFuzzName is the go command's rule: "Fuzz", then nothing or a
// character that is not a lower-case letter.
func isFuzzName(name string) bool {
	rest, ok := strings.CutPrefix(name, "Fuzz")
	if !ok {
		return false
	}
	return rest == "" || !(rest[0] >= 'a' && rest[0] <= 'z')
}

// takesTestingF reports whether fn's one parameter is *testing.F, with
// testing imported under whatever name the file gives it.
func takesTestingF(f *ast.File, fn *ast.FuncDecl) bool {
	params := fn.Type.Params.List
	if len(params) != 1 || len(params[0].Names) > 1 || fn.Type.Results != nil {
		return false
	}
	star, ok := params[0].Type.(*ast.StarExpr)
	if !ok {
		return false
	}
	sel, ok := star.X.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "F" {
		return false
	}
	pkg, ok := sel.X.(*ast.Ident)
	if !ok {
		return false
	}
	for _, imp := range f.Imports {
		if imp.Path.Value != `"testing"` {
			continue
		}
		local := "testing"
		if imp.Name != nil {
			local = imp.Name.Name
		}
		if local == pkg.Name {
			return true
		}
	}
	return false
}

// TestFindFuzzTargets checks the scan against targets known to exist,
// so that a broken scan cannot pass for a repository without targets.
func TestFindFuzzTargets(t *testing.T) {
	targets, err := findFuzzTargets(moduleRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, tg := range targets {
		key := tg.dir + "." + tg.name
		if have[key] {
			t.Errorf("%s found twice", key)
		}
		have[key] = true
	}
	for _, want := range []string{
		"bus.FuzzDecodeExpire", "bus.FuzzDecodeExpireText", "bus.FuzzDecodeSeed", "bus.FuzzDecodeFallback",
		"bus.FuzzDecodeDrain", "bus.FuzzDecodeHeartbeat", "cachenode/wire.FuzzParseRequest",
		"cachenode/wire.FuzzFrameRoundTrip", "lbgateway.FuzzDecodeRoute", "lbgateway.FuzzParseCacheControl",
		"admin.FuzzAdminBody",
	} {
		if !have[want] {
			t.Errorf("fuzz target %s not found; found %d: %v", want, len(targets), targets)
		}
	}
	for _, name := range []string{"Fuzz", "FuzzX", "Fuzz_x", "Fuzz1"} {
		if !isFuzzName(name) {
			t.Errorf("%s is a fuzz target name", name)
		}
	}
	for _, name := range []string{"Fuzzy", "fuzzX", "TestFuzz"} {
		if isFuzzName(name) {
			t.Errorf("%s is not a fuzz target name", name)
		}
	}
}
