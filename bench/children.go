package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/berthhq/berth/proxy"
)

// backendBody is what the benchmark backend answers: small and fixed, so
// the proxies, not the backend, are what is measured.
const backendBody = "hello from the backend\n"

// runBackend is the hidden `_backend` subcommand: a minimal Go HTTP server
// answering every request with backendBody. It prints "ADDR host:port" once
// listening and serves until SIGTERM or SIGINT.
func runBackend(args []string) error {
	fs := flag.NewFlagSet("_backend", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	body := []byte(backendBody)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write(body)
	})
	return serveUntilSignal(*addr, &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, nil, nil)
}

// runBerthProxy is the hidden `_berthproxy` subcommand: Berth's production
// proxy (proxy.New with the options server.Open uses) mounted on its own
// http.Server (with the settings server.Serve uses), routing agent "b" to
// -upstream. With -cpuprofile it profiles itself until it is stopped.
func runBerthProxy(args []string) error {
	fs := flag.NewFlagSet("_berthproxy", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	upstream := fs.String("upstream", "", "the backend's base URL")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile here")
	procs := fs.Int("gomaxprocs", 0, "GOMAXPROCS (0 = Go's default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *upstream == "" {
		return errors.New("-upstream is required")
	}
	if *procs > 0 {
		runtime.GOMAXPROCS(*procs)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p := proxy.New(proxy.Options{Logger: log, ResponseHeaderTimeout: -1})
	mux := http.NewServeMux()
	p.Mount(mux)
	p.Set("b", *upstream)
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	var stop func()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		stop = func() {
			pprof.StopCPUProfile()
			f.Close()
		}
	}
	return serveUntilSignal(*addr, hs, p, stop)
}

// serveUntilSignal listens on addr, prints "ADDR host:port", serves hs
// until SIGTERM or SIGINT, then runs atStop and shuts down. With a non-nil
// p, connections go through p's Frontend first, as in berth serve.
func serveUntilSignal(addr string, hs *http.Server, p *proxy.Proxy, atStop func()) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	errc := make(chan error, 2)
	if p != nil {
		front := proxy.NewFrontend(p, ln, proxy.FrontendOptions{ReadHeaderTimeout: hs.ReadHeaderTimeout, IdleTimeout: hs.IdleTimeout})
		defer front.Close()
		go func() { errc <- front.Serve() }()
		ln = front.Fallback()
	}
	go func() { errc <- hs.Serve(ln) }()
	fmt.Printf("ADDR %s\n", ln.Addr())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	if atStop != nil {
		atStop()
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = hs.Shutdown(sctx)
	return nil
}

// child is a helper process started from this bench's own binary.
type child struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

// startChild runs this executable with args and waits for its "ADDR" line.
func startChild(env []string, args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// Our own death should not leave helpers behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, done: make(chan error, 1)}
	line := make(chan string, 1)
	go func() {
		br := bufio.NewReader(out)
		s, _ := br.ReadString('\n')
		line <- s
		_, _ = io.Copy(io.Discard, br)
	}()
	go func() { c.done <- cmd.Wait() }()
	select {
	case s := <-line:
		addr, ok := strings.CutPrefix(strings.TrimSpace(s), "ADDR ")
		if !ok {
			c.stop()
			return nil, fmt.Errorf("%s: unexpected first line %q", args[0], s)
		}
		c.addr = addr
		return c, nil
	case <-time.After(30 * time.Second):
		c.stop()
		return nil, fmt.Errorf("%s did not start", args[0])
	}
}

// stop sends SIGTERM and waits (SIGKILL after 10 s).
func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}
