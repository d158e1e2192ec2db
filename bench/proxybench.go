package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// aptHint is how to install what the proxy bench drives.
const aptHint = "apt-get update && apt-get install -y wrk nginx"

// loadResult is one load-generator run against one target.
type loadResult struct {
	RPS      float64
	Lat      summary // P90 comes from wrk's distribution, Max from its thread stats
	Requests int64
	Errors   int64 // socket errors and non-2xx/3xx answers
	// ProxyCPU and BackendCPU are CPU time per request spent by the proxy
	// process tree and by the backend during the run.
	ProxyCPU, BackendCPU time.Duration
}

// proxyTarget is one way of reaching the backend.
type proxyTarget struct {
	name string
	url  string
	pid  int // the proxy's process (tree) for CPU accounting; 0 = none
}

// runProxy compares the backend reached directly, through Berth's proxy and
// through nginx, with the same load generator settings, in one run.
func runProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	e := commonFlags(fs, "proxy")
	threads := fs.Int("t", 2, "wrk threads")
	conns := fs.Int("c", 64, "connections")
	dur := fs.Duration("d", 10*time.Second, "duration of each measured run")
	warm := fs.Duration("warmup", 2*time.Second, "unrecorded run before each measured one")
	rounds := fs.Int("rounds", 3, "rounds of direct, berth, nginx (figures are medians over rounds)")
	procs := fs.Int("gomaxprocs", 0, "GOMAXPROCS of Berth's proxy process (0 = Go's default, all CPUs; nginx runs 1 worker)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of Berth's proxy process here")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := e.setup(); err != nil {
		return err
	}
	defer e.cleanup()

	wrk, wrkErr := exec.LookPath("wrk")
	nginx := lookNginx()
	if wrkErr != nil {
		fmt.Fprintf(e.out, "# SKIP wrk: not installed (%s); using the built-in Go load generator instead (closed loop, %d keep-alive connections)\n", aptHint, *conns)
	}
	if nginx == "" {
		fmt.Fprintf(e.out, "# SKIP nginx: not installed (%s); measuring direct and Berth only\n", aptHint)
	}

	backend, err := startChild(nil, "_backend")
	if err != nil {
		return err
	}
	defer backend.stop()
	// Berth is measured with Go's default GOMAXPROCS (every CPU, as berth
	// serve runs) and, like nginx's one worker, on one P; -gomaxprocs N
	// measures only N.
	variants := []struct{ name, procs string }{{"berth", ""}, {"berth-1p", "1"}}
	if *procs > 0 {
		variants = variants[:1]
		variants[0].procs = strconv.Itoa(*procs)
	}
	targets := []proxyTarget{{name: "direct", url: "http://" + backend.addr + "/"}}
	for i, v := range variants {
		bp := []string{"_berthproxy", "-upstream", "http://" + backend.addr}
		if v.procs != "" {
			bp = append(bp, "-gomaxprocs", v.procs)
		}
		if *cpuprofile != "" && i == 0 {
			abs, err := filepath.Abs(*cpuprofile)
			if err != nil {
				return err
			}
			bp = append(bp, "-cpuprofile", abs)
		}
		berth, err := startChild(nil, bp...)
		if err != nil {
			return err
		}
		defer berth.stop()
		targets = append(targets, proxyTarget{name: v.name, url: "http://" + berth.addr + "/agents/b/", pid: berth.cmd.Process.Pid})
	}
	if nginx != "" {
		dir, err := e.subdir("nginx")
		if err != nil {
			return err
		}
		ng, err := startNginx(nginx, dir, backend.addr)
		if err != nil {
			return err
		}
		defer ng.stop()
		targets = append(targets, proxyTarget{name: "nginx", url: "http://" + ng.addr + "/", pid: ng.pid})
	}
	for _, t := range targets {
		if err := checkTarget(t.url); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
	}

	gen := "wrk " + fmt.Sprintf("-t%d -c%d -d%s --latency", *threads, *conns, *dur)
	if wrkErr != nil {
		gen = fmt.Sprintf("Go load generator, %d connections, %s", *conns, *dur)
	}
	procsNote := "berth: GOMAXPROCS default (all CPUs), berth-1p: GOMAXPROCS=1"
	if *procs > 0 {
		procsNote = fmt.Sprintf("GOMAXPROCS=%d", *procs)
	}
	fmt.Fprintf(e.out, "# backend: Go net/http answering %d bytes; Berth: proxy.Proxy behind its Frontend, as berth serve runs it (%s); nginx: 1 worker, upstream keepalive 64\n",
		len(backendBody), procsNote)
	fmt.Fprintf(e.out, "# load: %s, %s warm-up before each run, %d rounds; all on 127.0.0.1\n", gen, *warm, *rounds)

	results := map[string][]loadResult{}
	for r := 1; r <= *rounds; r++ {
		for _, t := range targets {
			run := func(d time.Duration) (loadResult, error) {
				if wrkErr != nil {
					return goLoad(t.url, *conns, d)
				}
				return runWrk(wrk, t.url, *threads, *conns, d)
			}
			if *warm > 0 {
				if _, err := run(*warm); err != nil {
					return fmt.Errorf("%s warm-up: %w", t.name, err)
				}
			}
			pcpu0, bcpu0 := time.Duration(0), treeCPU(backend.cmd.Process.Pid)
			if t.pid != 0 {
				pcpu0 = treeCPU(t.pid)
			}
			res, err := run(*dur)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			if res.Requests > 0 {
				res.BackendCPU = (treeCPU(backend.cmd.Process.Pid) - bcpu0) / time.Duration(res.Requests)
				if t.pid != 0 {
					res.ProxyCPU = (treeCPU(t.pid) - pcpu0) / time.Duration(res.Requests)
				}
			}
			results[t.name] = append(results[t.name], res)
			fmt.Fprintf(e.out, "  round %d %-6s %9.0f req/s  p50 %s  p99 %s ms  errors %d\n", r, t.name, res.RPS, ms(res.Lat.P50), ms(res.Lat.P99), res.Errors)
		}
	}

	rows := [][]string{{"target", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "proxy CPU µs/req", "backend CPU µs/req"}}
	for _, t := range targets {
		rs := results[t.name]
		rows = append(rows, []string{
			t.name,
			fmt.Sprintf("%.0f", medianF(rs, func(r loadResult) float64 { return r.RPS })),
			fmt.Sprintf("%.3f", medianF(rs, func(r loadResult) float64 { return msF(r.Lat.P50) })),
			fmt.Sprintf("%.3f", medianF(rs, func(r loadResult) float64 { return msF(r.Lat.P90) })),
			fmt.Sprintf("%.3f", medianF(rs, func(r loadResult) float64 { return msF(r.Lat.P99) })),
			fmt.Sprintf("%.3f", medianF(rs, func(r loadResult) float64 { return msF(r.Lat.Max) })),
			fmt.Sprint(sumErrors(rs)),
			cpuCell(t.pid != 0, medianF(rs, func(r loadResult) float64 { return usF(r.ProxyCPU) })),
			fmt.Sprintf("%.1f", medianF(rs, func(r loadResult) float64 { return usF(r.BackendCPU) })),
		})
	}
	fmt.Fprintln(e.out, "medians over rounds:")
	writeAligned(e.out, rows)

	// Ratios are taken within each round (same minute, same noise) and the
	// median of those is reported.
	perRound := func(a, b string, f func(loadResult) float64) float64 {
		var xs []float64
		for i := range results[a] {
			if i < len(results[b]) {
				xs = append(xs, ratio(f(results[a][i]), f(results[b][i])))
			}
		}
		return median(xs)
	}
	rps := func(r loadResult) float64 { return r.RPS }
	p99 := func(r loadResult) float64 { return float64(r.Lat.P99) }
	p50 := func(r loadResult) float64 { return float64(r.Lat.P50) }
	for _, v := range variants {
		berthDirect := perRound(v.name, "direct", rps)
		fmt.Fprintf(e.out, "throughput %s/direct: %.3f\n", v.name, berthDirect)
		if nginx == "" {
			continue
		}
		nginxDirect := perRound("nginx", "direct", rps)
		p99Ratio := perRound(v.name, "nginx", p99)
		fmt.Fprintf(e.out, "throughput nginx/direct: %.3f\n", nginxDirect)
		fmt.Fprintf(e.out, "throughput %s/nginx: %.3f\n", v.name, perRound(v.name, "nginx", rps))
		fmt.Fprintf(e.out, "latency %s/nginx: p50 %.3f, p99 %.3f\n", v.name, perRound(v.name, "nginx", p50), p99Ratio)
		fmt.Fprintf(e.out, "target %s/direct >= nginx/direct: %s; target %s p99 <= 1.2x nginx p99: %s\n",
			v.name, verdict(berthDirect >= nginxDirect), v.name, verdict(p99Ratio <= 1.2))
	}
	if *cpuprofile != "" {
		fmt.Fprintf(e.out, "# CPU profile of Berth's proxy: %s (go tool pprof -top %s)\n", *cpuprofile, *cpuprofile)
	}
	return nil
}

func cpuCell(ok bool, v float64) string {
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

func msF(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func usF(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianF(rs []loadResult, f func(loadResult) float64) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = f(r)
	}
	return median(xs)
}

func sumErrors(rs []loadResult) int64 {
	var n int64
	for _, r := range rs {
		n += r.Errors
	}
	return n
}

// checkTarget makes one request and expects the backend's body.
func checkTarget(url string) error {
	c := &http.Client{Timeout: 5 * time.Second}
	res, err := c.Get(url)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK || string(b) != backendBody {
		return fmt.Errorf("GET %s = %d %q, want 200 %q", url, res.StatusCode, b, backendBody)
	}
	return nil
}

// runWrk runs wrk and parses its report.
func runWrk(wrk, url string, threads, conns int, d time.Duration) (loadResult, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	cmd := exec.Command(wrk, fmt.Sprintf("-t%d", threads), fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", secs), "--latency", url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return loadResult{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	return parseWrk(string(out))
}

// parseWrk reads wrk's --latency report: the Latency thread-stats line (for
// the max), the 50/90/99% distribution, the request count, Requests/sec,
// socket errors and non-2xx/3xx answers.
func parseWrk(out string) (loadResult, error) {
	var r loadResult
	var haveRPS, have50, have99 bool
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "Latency" && len(f) >= 4:
			// "Latency avg stdev max +/-stdev"
			if d, err := time.ParseDuration(f[3]); err == nil {
				r.Lat.Max = d
			}
		case (f[0] == "50%" || f[0] == "90%" || f[0] == "99%") && len(f) >= 2:
			d, err := time.ParseDuration(f[1])
			if err != nil {
				return r, fmt.Errorf("wrk: bad latency %q", f[1])
			}
			switch f[0] {
			case "50%":
				r.Lat.P50, have50 = d, true
			case "90%":
				r.Lat.P90 = d
			case "99%":
				r.Lat.P99, have99 = d, true
			}
		case f[0] == "Requests/sec:" && len(f) >= 2:
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return r, fmt.Errorf("wrk: bad Requests/sec %q", f[1])
			}
			r.RPS, haveRPS = v, true
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err == nil {
				r.Requests = n
				r.Lat.N = int(n)
			}
		case f[0] == "Socket" && len(f) >= 3 && f[1] == "errors:":
			// "Socket errors: connect 0, read 0, write 0, timeout 0"
			for i := 2; i+1 < len(f); i += 2 {
				n, err := strconv.ParseInt(strings.TrimSuffix(f[i+1], ","), 10, 64)
				if err == nil {
					r.Errors += n
				}
			}
		case f[0] == "Non-2xx" && len(f) >= 5:
			if n, err := strconv.ParseInt(f[len(f)-1], 10, 64); err == nil {
				r.Errors += n
			}
		}
	}
	if !haveRPS || !have50 || !have99 {
		return r, fmt.Errorf("wrk: could not read its report:\n%s", out)
	}
	return r, nil
}

// goLoad is the fallback load generator: conns goroutines, each with its
// own keep-alive connection, sending GETs back to back for d.
func goLoad(url string, conns int, d time.Duration) (loadResult, error) {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var errs atomic.Int64
	lats := make([][]time.Duration, conns)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				t0 := time.Now()
				res, err := c.Get(url)
				if err != nil {
					if ctx.Err() == nil {
						errs.Add(1)
					}
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode >= 400 {
					errs.Add(1)
				}
				lats[i] = append(lats[i], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	s := summarize(all)
	return loadResult{RPS: float64(len(all)) / elapsed.Seconds(), Lat: s, Requests: int64(len(all)), Errors: errs.Load()}, nil
}

// lookNginx finds the nginx binary, which Debian installs in /usr/sbin.
func lookNginx() string {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

// nginxProc is a running nginx master process.
type nginxProc struct {
	cmd  *exec.Cmd
	pid  int
	addr string
	done chan error
}

// nginxConf is the comparison configuration: one worker, no access log,
// HTTP/1.1 keep-alive to the upstream with 64 idle connections. The
// keepalive_requests limits are raised because Go's server and Transport
// have none; nginx's default (1000) would make it reconnect every 1000
// requests.
const nginxConf = `worker_processes 1;
daemon off;
master_process on;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_requests 1000000;
    upstream backend {
        server %[2]s;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen %[3]s;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`

// startNginx writes the config into dir and starts nginx in the foreground.
func startNginx(bin, dir, backend string) (*nginxProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(nginxConf, dir, backend, addr)), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-p", dir+"/", "-c", conf, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n := &nginxProc{cmd: cmd, pid: cmd.Process.Pid, addr: addr, done: make(chan error, 1)}
	go func() { n.done <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return n, nil
		}
		select {
		case err := <-n.done:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return nil, fmt.Errorf("nginx exited: %v\n%s", err, log)
		default:
		}
		if time.Now().After(deadline) {
			n.stop()
			return nil, errors.New("nginx did not start listening")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop asks nginx to quit fast (SIGTERM) and waits.
func (n *nginxProc) stop() {
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
	}
}

// freeAddr returns a 127.0.0.1 address that was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
