package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth/server"
)

// epochs tracks which versions may answer. Every change of what may answer
// appends an epoch; a request notes the epoch before it is sent and after
// its answer, and its answer must come from a version allowed in one of the
// epochs in between. So "allowed" is exact, not a guess with slack: while a
// switch call is in flight both versions are allowed, and once it has
// returned only the new one is, because Berth moves traffic before it
// answers.
type epochs struct {
	mu      sync.RWMutex
	allowed []map[string]bool
}

func (e *epochs) set(versions ...string) {
	m := map[string]bool{}
	for _, v := range versions {
		m[v] = true
	}
	e.mu.Lock()
	e.allowed = append(e.allowed, m)
	e.mu.Unlock()
}

func (e *epochs) current() int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return len(e.allowed) - 1
}

// ok reports whether version was allowed in any epoch from e0 to e1.
func (e *epochs) ok(e0, e1 int, version string) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	for i := e0; i <= e1 && i < len(e.allowed); i++ {
		if e.allowed[i][version] {
			return true
		}
	}
	return false
}

// loadStats are the totals of one phase's load.
type loadStats struct {
	requests, failed, unexpected atomic.Int64
	mu                           sync.Mutex
	firstErrors                  []string
	lat                          []time.Duration
	done                         chan struct{} // closed when the load has stopped
}

// note keeps the first few problems as examples for the report.
func (s *loadStats) note(msg string) {
	s.mu.Lock()
	if len(s.firstErrors) < 5 {
		s.firstErrors = append(s.firstErrors, msg)
	}
	s.mu.Unlock()
}

// runZeroDowntime keeps steady load on an agent through Berth's proxy while
// (1) rolling back and forth every interval, and (2) deploying blue-green
// updates back to back, and counts failed requests and answers from
// versions that should not have answered.
func runZeroDowntime(args []string) error {
	fs := flag.NewFlagSet("zerodowntime", flag.ContinueOnError)
	e := commonFlags(fs, "zerodowntime")
	dur := fs.Duration("duration", 30*time.Second, "length of each phase")
	conns := fs.Int("conns", 8, "load goroutines, each on its own keep-alive connection")
	interval := fs.Duration("interval", 100*time.Millisecond, "pause between rollbacks (and between updates)")
	phases := fs.String("phases", "rollback,bluegreen", "phases to run")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := e.setup(); err != nil {
		return err
	}
	defer e.cleanup()
	kit, err := newAgentKit(e.work, e.echoBin)
	if err != nil {
		return err
	}
	dataDir, err := e.subdir("zd-data")
	if err != nil {
		return err
	}
	s, err := startInproc(dataDir, newCreds(), e.log, func(c *server.Config) { c.Engine.Grace = 24 * time.Hour })
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(e.out, "# in-process server; %d load goroutines GET /agents/<agent>/whoami through Berth's proxy (keep-alive), %s per phase\n", *conns, *dur)

	failed := false
	for _, ph := range strings.Split(*phases, ",") {
		var st *loadStats
		var ops int
		var err error
		switch strings.TrimSpace(ph) {
		case "rollback":
			st, ops, err = zdRollback(s, kit, *conns, *dur, *interval)
		case "bluegreen":
			st, ops, err = zdBlueGreen(s, kit, *conns, *dur, *interval)
		default:
			return fmt.Errorf("unknown phase %q", ph)
		}
		if err != nil {
			return fmt.Errorf("phase %s: %w", ph, err)
		}
		what := map[string]string{"rollback": "rollbacks", "bluegreen": "blue-green updates"}[strings.TrimSpace(ph)]
		fmt.Fprintf(e.out, "%s: %d %s; requests %d, failed %d, unexpected version %d\n",
			ph, ops, what, st.requests.Load(), st.failed.Load(), st.unexpected.Load())
		t := newTable(e.out)
		t.add("  request round trip", summarize(st.lat))
		t.flush()
		for _, m := range st.firstErrors {
			fmt.Fprintf(e.out, "  e.g. %s\n", m)
		}
		if st.failed.Load() != 0 || st.unexpected.Load() != 0 {
			failed = true
		}
	}
	fmt.Fprintf(e.out, "zero downtime (0 failed, 0 unexpected): %s\n", verdict(!failed))
	return nil
}

// load runs conns goroutines against url until ctx ends, checking every
// answer against ep.
func load(ctx context.Context, url string, conns int, ep *epochs) *loadStats {
	st := &loadStats{done: make(chan struct{})}
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	lats := make([][]time.Duration, conns)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				e0 := ep.current()
				t0 := time.Now()
				v, err := whoami(c, url)
				lat := time.Since(t0)
				e1 := ep.current()
				st.requests.Add(1)
				switch {
				case err != nil:
					st.failed.Add(1)
					st.note(err.Error())
				case !ep.ok(e0, e1, v):
					st.unexpected.Add(1)
					st.note(fmt.Sprintf("version %s answered in epochs %d..%d", v, e0, e1))
				default:
					lats[i] = append(lats[i], lat)
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		tr.CloseIdleConnections()
		for _, l := range lats {
			st.lat = append(st.lat, l...)
		}
		close(st.done)
	}()
	return st
}

// whoami asks the echo agent which version answered.
func whoami(c *http.Client, url string) (string, error) {
	res, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return "", fmt.Errorf("read body: %v", err)
	}
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", res.StatusCode, truncate(b, 200))
	}
	var w struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(b, &w); err != nil || w.Version == "" {
		return "", fmt.Errorf("bad whoami answer %q", truncate(b, 200))
	}
	return w.Version, nil
}

// zdRollback deploys two versions (blue-green, long grace) and rolls back
// and forth every interval under load.
func zdRollback(s *inproc, kit *agentKit, conns int, dur, interval time.Duration) (*loadStats, int, error) {
	const agent = "zd-rollback"
	vs, err := deployTwo(s.API, kit, agent, "1.0.0", "1.1.0", "blue-green")
	if err != nil {
		return nil, 0, err
	}
	ep := &epochs{}
	ep.set(vs[1])
	ctx, cancel := context.WithCancel(context.Background())
	st := load(ctx, s.URL+"/agents/"+agent+"/whoami", conns, ep)
	ops := 0
	cur := 1
	end := time.Now().Add(dur)
	var opErr error
	for time.Now().Before(end) {
		time.Sleep(interval)
		target := vs[1-cur]
		ep.set(vs[cur], target)
		if _, err := s.API.rollback(agent, target); err != nil {
			opErr = err
			break
		}
		ep.set(target)
		cur = 1 - cur
		ops++
	}
	cancel()
	<-st.done
	return st, ops, opErr
}

// zdBlueGreen deploys a first version, then blue-green updates back to back
// (pausing interval between them) under load.
func zdBlueGreen(s *inproc, kit *agentKit, conns int, dur, interval time.Duration) (*loadStats, int, error) {
	const agent = "zd-update"
	p, err := kit.pkg(agent, "1.0.0")
	if err != nil {
		return nil, 0, err
	}
	d, err := s.API.upload(p)
	if err != nil {
		return nil, 0, err
	}
	cur := d.Version
	ep := &epochs{}
	ep.set(cur)
	ctx, cancel := context.WithCancel(context.Background())
	st := load(ctx, s.URL+"/agents/"+agent+"/whoami", conns, ep)
	ops := 0
	end := time.Now().Add(dur)
	var opErr error
	for i := 1; time.Now().Before(end); i++ {
		time.Sleep(interval)
		next := fmt.Sprintf("1.0.%d", i)
		p, err := kit.pkg(agent, next)
		if err != nil {
			opErr = err
			break
		}
		ep.set(cur, next)
		if _, _, err := s.API.update(agent, p, map[string]string{"version": next, "update_strategy": "blue-green"}); err != nil {
			opErr = err
			break
		}
		ep.set(next)
		cur = next
		ops++
	}
	cancel()
	<-st.done
	return st, ops, opErr
}
