package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/berthhq/berth/server"
)

// runWarm measures warm rollbacks: two versions of the example agent both
// running (blue-green update, long rollback grace), then explicit rollbacks
// toggling between them. Each one is a health probe of the standby plus the
// durable commit and the pointer swap.
func runWarm(args []string) error {
	fs := flag.NewFlagSet("warm", flag.ContinueOnError)
	e := commonFlags(fs, "warm")
	n := fs.Int("n", 1000, "measured rollbacks")
	warmup := fs.Int("warmup", 20, "rollbacks before measuring (not counted)")
	grace := fs.Duration("rollback-grace", 24*time.Hour, "rollback grace: long, so the version rolled back from stays warm")
	dbURL := fs.String("database-url", "", "PostgreSQL URL of an EMPTY database to keep metadata in (default: SQLite in the data dir)")
	fsyncPeer := fs.Bool("fsync-peer", true, "after each rollback, time one 4 KiB append + fdatasync in the data dir: the disk's own commit cost, as a peer")
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
	dataDir, err := e.subdir("warm-data")
	if err != nil {
		return err
	}
	s, err := startInproc(dataDir, newCreds(), e.log, func(c *server.Config) {
		c.Engine.Grace = *grace
		c.DatabaseURL = *dbURL
	})
	if err != nil {
		return err
	}
	defer s.Close()

	const agent = "echo-warm"
	versions, err := deployTwo(s.API, kit, agent, "1.0.0", "1.1.0", "blue-green")
	if err != nil {
		return err
	}
	ds, err := s.API.deployments(agent)
	if err != nil {
		return err
	}
	for _, v := range versions {
		if !live(ds, v) {
			return fmt.Errorf("version %s is not running after the blue-green update: %+v", v, ds)
		}
	}
	store := "SQLite synchronous=FULL (sqlite.Open's DSN)"
	if *dbURL != "" {
		store = "PostgreSQL (durable only if the URL keeps synchronous_commit=on)"
	}
	fmt.Fprintf(e.out, "# in-process server (server.Open + Serve), data dir on %s, metadata in %s\n", dataDir, store)
	fmt.Fprintf(e.out, "# agent %s: %s and %s running (update_strategy=blue-green, rollback grace %s); %d warm-up + %d measured rollbacks toggling target_version\n",
		agent, versions[0], versions[1], *grace, *warmup, *n)

	var probe *fsyncProbe
	if *fsyncPeer {
		if probe, err = newFsyncProbe(filepath.Join(dataDir, "fsync-peer")); err != nil {
			return err
		}
		defer probe.close()
	}
	var srv, ready, rtt, syncs []time.Duration
	cold := 0
	cur := 1 // the update left versions[1] active
	start := time.Now()
	for i := 0; i < *warmup+*n; i++ {
		target := versions[1-cur]
		rb, err := s.API.rollback(agent, target)
		if err != nil {
			return fmt.Errorf("rollback %d: %w", i+1, err)
		}
		if rb.To != target {
			return fmt.Errorf("rollback %d went to %s, want %s", i+1, rb.To, target)
		}
		cur = 1 - cur
		if i == *warmup-1 {
			start = time.Now()
		}
		if i < *warmup {
			continue
		}
		if !rb.Warm {
			cold++
		}
		srv = append(srv, rb.Server)
		ready = append(ready, rb.Ready)
		rtt = append(rtt, rb.RTT)
		if probe != nil {
			d, err := probe.sample()
			if err != nil {
				return err
			}
			syncs = append(syncs, d)
		}
	}
	elapsed := time.Since(start)

	t := newTable(e.out)
	sSrv := summarize(srv)
	t.add("server rollback (Server-Timing rollback)", sSrv)
	t.add("  of which probe (Server-Timing ready)", summarize(ready))
	t.add("client round trip", summarize(rtt))
	var sSync summary
	if probe != nil {
		sSync = summarize(syncs)
		t.add("peer: 4 KiB append + fdatasync", sSync)
	}
	t.flush()
	fmt.Fprintf(e.out, "rollbacks: %d in %s; answered warm=false: %d (want 0)\n",
		len(srv), elapsed.Round(time.Millisecond), cold)
	if probe != nil {
		fmt.Fprintf(e.out, "rollback / fdatasync: p50 %.2fx, p99 %.2fx (a rollback is two durable SQLite commits: begin operation, commit switch)\n",
			ratio(float64(sSrv.P50), float64(sSync.P50)), ratio(float64(sSrv.P99), float64(sSync.P99)))
	}
	fmt.Fprintf(e.out, "target server-side p99 <= 10 ms: p99 = %s ms -> %s\n", ms(sSrv.P99), verdict(sSrv.P99 <= 10*time.Millisecond))
	return nil
}

// deployTwo uploads version v1 of the example agent as agent and updates it
// to v2 with the given strategy, waiting for each; it returns the labels.
func deployTwo(a *api, kit *agentKit, agent, v1, v2, strategy string) ([2]string, error) {
	p1, err := kit.pkg(agent, v1)
	if err != nil {
		return [2]string{}, err
	}
	d1, err := a.upload(p1)
	if err != nil {
		return [2]string{}, err
	}
	p2, err := kit.pkg(agent, v2)
	if err != nil {
		return [2]string{}, err
	}
	d2, _, err := a.update(agent, p2, map[string]string{"version": v2, "update_strategy": strategy})
	if err != nil {
		return [2]string{}, err
	}
	return [2]string{d1.Version, d2.NewVersion}, nil
}

func verdict(ok bool) string {
	if ok {
		return "MET"
	}
	return "MISSED"
}

// fsyncProbe times what a durable commit costs the disk itself: append
// 4 KiB and fdatasync, as SQLite does for a WAL commit with
// synchronous=FULL.
type fsyncProbe struct {
	f   *os.File
	buf []byte
	off int64
}

func newFsyncProbe(path string) (*fsyncProbe, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	return &fsyncProbe{f: f, buf: make([]byte, 4096)}, nil
}

func (p *fsyncProbe) sample() (time.Duration, error) {
	start := time.Now()
	if _, err := p.f.WriteAt(p.buf, p.off); err != nil {
		return 0, err
	}
	if err := syscall.Fdatasync(int(p.f.Fd())); err != nil {
		return 0, err
	}
	p.off += int64(len(p.buf))
	return time.Since(start), nil
}

func (p *fsyncProbe) close() {
	name := p.f.Name()
	p.f.Close()
	os.Remove(name)
}
