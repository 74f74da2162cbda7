package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/kelseyhightower/envconfig"
)

// envPrefix is the prefix of every variable the daemons and commands read.
const envPrefix = "CACHEBUS"

// exitUsage is the exit code of a bad flag, argument or variable.
const exitUsage = 2

// command is one subcommand. Each file registers its own in init, so a
// command is found by its file name.
type command struct {
	name    string
	summary string
	// usage is the argument synopsis shown by -h, after the command name.
	usage string
	// config, when set, returns the command's Config struct, read from the
	// environment before run and listed by -h.
	config func() any
	// flags adds the command's flags to fs, bound to the config.
	flags func(fs *flag.FlagSet, cfg any)
	run   func(ctx context.Context, env *runEnv, cfg any, args []string) error
}

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

// runEnv is what every command gets besides its config.
type runEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	log            *slog.Logger
}

// usageError is a bad invocation: it exits 2 with its message.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// LogConfig is read by every command under CACHEBUS_.
type LogConfig struct {
	LogFormat string `envconfig:"LOG_FORMAT" default:"text" desc:"log format: text or json"`
	LogLevel  string `envconfig:"LOG_LEVEL" default:"info" desc:"log level: debug, info, warn or error"`
}

func run(args []string) int {
	return runWith(args, os.Stdout, os.Stderr)
}

// runWith runs a command until it ends or the process gets SIGINT or
// SIGTERM.
func runWith(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runContext(ctx, args, os.Stdin, stdout, stderr)
}

// runContext runs a command until it ends or ctx is cancelled.
func runContext(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printCommands(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "cachebus: unknown command %q\n\n", args[0])
		printCommands(stderr)
		return exitUsage
	}
	var logCfg LogConfig
	if err := envconfig.Process(envPrefix, &logCfg); err != nil {
		fmt.Fprintf(stderr, "cachebus %s: %v\n", cmd.name, err)
		return exitUsage
	}
	log, err := newLogger(logCfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "cachebus %s: %v\n", cmd.name, err)
		return exitUsage
	}

	var cfg any
	if cmd.config != nil {
		cfg = cmd.config()
	}
	fs := flag.NewFlagSet("cachebus "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { printUsage(stderr, cmd, fs, cfg) }
	if cmd.flags != nil {
		cmd.flags(fs, cfg)
	}
	// Variables first, so that flags given on the command line win.
	if cfg != nil {
		if err := envconfig.Process(envPrefix, cfg); err != nil {
			fmt.Fprintf(stderr, "cachebus %s: %v\n", cmd.name, err)
			return exitUsage
		}
	}
	if err := fs.Parse(interleave(fs, args[1:])); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}

	err = cmd.run(ctx, &runEnv{stdin: stdin, stdout: stdout, stderr: stderr, log: log}, cfg, fs.Args())
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "cachebus %s: %v\n", cmd.name, err)
		fs.Usage()
		return exitUsage
	default:
		fmt.Fprintf(stderr, "cachebus %s: %v\n", cmd.name, err)
		return 1
	}
}

// interleave moves flags after positional arguments to the front, so that
// `cachebus expire users k1 --prefix p:` works as users expect.
func interleave(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if f := fs.Lookup(name); f != nil && !isBoolFlag(f) && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return append(flags, pos...)
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func printCommands(w io.Writer) {
	fmt.Fprintln(w, "Usage: cachebus <command> [flags] [args]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\n`cachebus <command> -h` lists a command's flags and CACHEBUS_* variables.")
}

func printUsage(w io.Writer, cmd *command, fs *flag.FlagSet, cfg any) {
	fmt.Fprintf(w, "Usage: cachebus %s %s\n\n%s\n", cmd.name, cmd.usage, cmd.summary)
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintln(w, "\nFlags:")
		fs.PrintDefaults()
	}
	fmt.Fprintln(w, "\nEnvironment:")
	var logCfg LogConfig
	_ = envconfig.Usagef(envPrefix, &logCfg, w, envTable)
	if cfg != nil {
		_ = envconfig.Usagef(envPrefix, cfg, w, envTable)
	}
}

const envTable = `{{range .}}  {{usage_key .}}{{if usage_default .}} (default {{usage_default .}}){{end}}
      {{usage_description .}}
{{end}}`

func newLogger(cfg LogConfig, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("CACHEBUS_LOG_LEVEL: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch cfg.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("CACHEBUS_LOG_FORMAT: want text or json, got %q", cfg.LogFormat)
}
