// Command bench measures Berth end to end: warm and cold rollback latency,
// how latency scales with version history, the built-in proxy against
// direct access and nginx, zero-downtime under rollbacks and updates, and
// memory per agent.
//
// Usage:
//
//	go run ./bench <subcommand> [flags]
//
// Subcommands: warm, cold, scale, proxy, zerodowntime, memory. Run
// `go run ./bench <subcommand> -h` for each one's flags. Every subcommand
// stops by itself and sends traffic only to 127.0.0.1. See BENCHMARKS.md
// for what each measures and the figures measured so far.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"time"
)

// subcommand is one bench.
type subcommand struct {
	summary string
	run     func(args []string) error
	hidden  bool // helper processes the bench starts itself
}

var subcommands map[string]subcommand

func init() {
	// Filled in here rather than in the declaration: the run functions
	// refer back to subcommands (through usage), an initialization cycle.
	subcommands = map[string]subcommand{
		"warm":         {summary: "warm rollbacks between two running versions: server-side and round-trip latency", run: runWarm},
		"cold":         {summary: "rollbacks to a stopped version: total latency and the agent-start part", run: runCold},
		"scale":        {summary: "rollback and version-history latency with 10 vs 5,000 versions (1,000 other agents)", run: runScale},
		"proxy":        {summary: "proxy throughput and latency: direct vs Berth vs nginx, with wrk", run: runProxy},
		"zerodowntime": {summary: "steady load through the proxy during rollbacks and blue-green updates: failures must be 0", run: runZeroDowntime},
		"memory":       {summary: "server RSS with 1,000 registered agents and with 50 running agents", run: runMemory},
		"_backend":     {run: runBackend, hidden: true},
		"_berthproxy":  {run: runBerthProxy, hidden: true},
	}
}

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		usage(os.Stdout)
		return
	}
	sc, ok := subcommands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "bench: unknown subcommand %q\n\n", name)
		usage(os.Stderr)
		os.Exit(2)
	}
	if err := sc.run(os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", name, err)
		os.Exit(1)
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: go run ./bench <subcommand> [flags]")
	fmt.Fprintln(w)
	var names []string
	for n, sc := range subcommands {
		if !sc.hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-13s %s\n", n, subcommands[n].summary)
	}
}

// env is what every subcommand shares: a work directory on the real disk
// (data dirs live there, so commits pay for a real fsync), logging and the
// echo agent binary.
type env struct {
	name    string
	work    string
	keep    bool
	verbose bool
	echoBin string
	out     io.Writer
	log     *slog.Logger
	madeDir bool
	// cpuprofile, when set, profiles this process (the in-process server
	// and the bench's client side) from setup to cleanup.
	cpuprofile string
	stopProf   func()
}

// commonFlags registers the shared flags on fs.
func commonFlags(fs *flag.FlagSet, name string) *env {
	e := &env{name: name, out: os.Stdout}
	fs.StringVar(&e.work, "work", "", "work directory for data dirs and builds (default: a new directory under $TMPDIR, removed afterwards)")
	fs.BoolVar(&e.keep, "keep", false, "keep the work directory")
	fs.BoolVar(&e.verbose, "v", false, "log the server's warnings to stderr")
	fs.StringVar(&e.echoBin, "echo-bin", "", "prebuilt examples/echo-agent binary (default: go build it)")
	if name != "proxy" && name != "memory" {
		// Those two run Berth in another process; proxy has its own flag.
		fs.StringVar(&e.cpuprofile, "cpuprofile", "", "write a CPU profile of the bench process (in-process server included) here")
	}
	return e
}

// setup creates the work directory and the logger and prints the run's
// header: machine, Go version, date.
func (e *env) setup() error {
	if e.work == "" {
		dir, err := os.MkdirTemp("", "berth-bench-")
		if err != nil {
			return err
		}
		e.work, e.madeDir = dir, true
	} else if err := os.MkdirAll(e.work, 0o755); err != nil {
		return err
	}
	abs, err := filepath.Abs(e.work)
	if err != nil {
		return err
	}
	e.work = abs
	level := slog.Level(100) // nothing
	if e.verbose {
		level = slog.LevelWarn
	}
	e.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// Packages that log to the default logger (the store's migrations) follow
	// the same level.
	slog.SetDefault(e.log)
	host, _ := os.Hostname()
	fmt.Fprintf(e.out, "# bench %s — %s, %d CPUs (GOMAXPROCS %d), %s %s/%s, host %s\n",
		e.name, time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), runtime.GOMAXPROCS(0),
		runtime.Version(), runtime.GOOS, runtime.GOARCH, host)
	fmt.Fprintf(e.out, "# work dir %s\n", e.work)
	if e.cpuprofile != "" {
		f, err := os.Create(e.cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		e.stopProf = func() {
			pprof.StopCPUProfile()
			f.Close()
		}
	}
	return nil
}

// cleanup removes the work directory unless asked to keep it or it was
// given by the user.
func (e *env) cleanup() {
	if e.stopProf != nil {
		e.stopProf()
		fmt.Fprintf(e.out, "# CPU profile: %s\n", e.cpuprofile)
	}
	if e.keep || !e.madeDir {
		if e.work != "" {
			fmt.Fprintf(e.out, "# kept %s\n", e.work)
		}
		return
	}
	_ = os.RemoveAll(e.work)
}

// subdir makes and returns a fresh directory under the work directory.
func (e *env) subdir(name string) (string, error) {
	dir := filepath.Join(e.work, name)
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	return dir, os.MkdirAll(dir, 0o755)
}

// parse parses args into fs, answering -h with the flag list.
func parse(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(os.Stderr)
	return fs.Parse(args)
}
