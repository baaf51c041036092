// Command mdc-agent runs on nodes that mdc network-booted. In the
// commissioning image it describes the hardware to mdc and does what mdc
// answers (reboot into the role's image, power off, wait); in a role image
// it reports the boot, writes the role's files, runs the role's join hook,
// reports the join and sends heartbeats (docs/agent.md).
//
// It reads mdc.url, mdc.machine, mdc.token and mdc.mode from the kernel
// command line (and key=value settings from /etc/mdc-agent.conf), needs
// nothing on the node but the kernel, and is built static.
//
// Exit status: 0 done or stopped, 1 failed, 2 bad configuration, 3 mdc
// refused this machine's token.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/microdc/mdc/api/agentapi"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	var le loggedError
	if err != nil && !errors.As(err, &le) && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "mdc-agent:", err)
	}
	os.Exit(exitCode(err))
}

// usageError is a configuration mistake (exit 2).
type usageError struct{ error }

// loggedError has been logged to the console already.
type loggedError struct{ error }

func (e loggedError) Unwrap() error { return e.error }

func exitCode(err error) int {
	var ue usageError
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errRefused):
		return 3
	case errors.As(err, &ue):
		return 2
	}
	return 1
}

// deps are what tests replace.
type deps struct {
	power   func(agentapi.Action) error
	backoff backoff
	sleep   func(context.Context, time.Duration) error
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	return runWith(ctx, args, stdout, stderr, getenv, deps{power: power, backoff: backoff{Min: time.Second, Max: 30 * time.Second}, sleep: sleepCtx})
}

func runWith(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string, d deps) error {
	fs := flag.NewFlagSet("mdc-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "/etc/mdc-agent.conf", "key=value settings (url, machine, token, mode, image, join_hook, run_dir, file_roots, console); the kernel command line wins")
	cmdline := fs.String("cmdline", "", "file with the kernel command line (default: /proc/cmdline under -root)")
	root := fs.String("root", "/", "where the node's /sys, /proc and /etc are (for tests and debugging)")
	printFacts := fs.Bool("facts", false, "print the hardware facts as JSON and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	dryRun := fs.Bool("dry-run", false, "log the reboot or power-off mdc asks for instead of doing it (running by hand, tests)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("no arguments expected, got %q", fs.Args())}
	}
	if *showVersion {
		fmt.Fprintln(stdout, "mdc-agent", version)
		return nil
	}
	if *printFacts {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(collectFacts(*root))
	}
	cfg := defaultConfig()
	cfg.Root = *root
	cfg.fromEnv(getenv)
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	if err := cfg.fromFile(cfg.hostPathIf(*configFile, !explicit), explicit); err != nil {
		return usageError{err}
	}
	cmdFile := *cmdline
	if cmdFile == "" {
		cmdFile = cfg.hostPath("/proc/cmdline")
	}
	b, err := os.ReadFile(cmdFile)
	if err != nil {
		return usageError{fmt.Errorf("kernel command line: %w", err)}
	}
	if err := cfg.fromCmdline(string(b)); err != nil {
		return usageError{err}
	}
	if err := cfg.validate(); err != nil {
		return usageError{err}
	}

	console := cfg.Console
	if console != "" {
		console = cfg.hostPath(console)
	}
	log := slog.New(slog.NewTextHandler(consoleWriter(stderr, console), &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				a.Value = slog.StringValue(a.Value.Time().Format("15:04:05.000"))
			}
			return a
		},
	}))
	if *dryRun {
		d.power = func(a agentapi.Action) error {
			log.Info("dry run: not doing " + string(a))
			return nil
		}
	}
	a := &agent{
		cfg: cfg, log: log, power: d.power, joinBackoff: backoff{Min: 5 * d.backoff.Min, Max: 10 * d.backoff.Max},
		c: &client{
			base: cfg.URL, machine: string(cfg.Machine), token: cfg.Token, backoff: d.backoff, log: log, sleep: d.sleep,
			http: &http.Client{Timeout: 30 * time.Second},
		},
	}
	err = a.run(ctx)
	switch {
	case err == nil || ctx.Err() != nil:
		log.Info("stopped")
		return nil
	case errors.Is(err, errRefused):
		log.Error("giving up: "+err.Error(), "hint",
			"this boot's token is no longer valid (the machine booted again, failed, or was retired since), or it is not this machine's; the next network boot gets a new one")
	default:
		log.Error("giving up", "err", err)
	}
	return loggedError{err}
}

// hostPathIf puts p under the root when the default is used.
func (c *config) hostPathIf(p string, underRoot bool) string {
	if underRoot {
		return c.hostPath(p)
	}
	return p
}

// consoleWriter logs to w and to the console device too, unless w is the
// console already. Writes to the console never fail the log.
func consoleWriter(w io.Writer, console string) io.Writer {
	out := &prefixWriter{prefix: []byte("mdc-agent: ")}
	out.ws = append(out.ws, w)
	if console == "" {
		return out
	}
	f, err := os.OpenFile(console, os.O_WRONLY|os.O_APPEND|syscall.O_NOCTTY, 0)
	if err != nil {
		return out
	}
	if ef, ok := w.(*os.File); ok && sameDevice(ef, f) {
		f.Close()
		return out
	}
	out.ws = append(out.ws, f)
	return out
}

// prefixWriter writes each log record, prefixed, to every writer; an
// error of one does not stop the others.
type prefixWriter struct {
	prefix []byte
	ws     []io.Writer
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	line := append(append([]byte{}, p.prefix...), b...)
	for _, w := range p.ws {
		_, _ = w.Write(line)
	}
	return len(b), nil
}
