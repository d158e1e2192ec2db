package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/berthhq/berth/server"
)

// runCold measures cold rollbacks: the target version is not running, so
// the rollback starts it from its stored artifact and waits for its health
// check before moving traffic. The rollback grace is tiny and no standby is
// kept, so the version rolled back from stops within one janitor tick; the
// bench waits for that before rolling back to it.
func runCold(args []string) error {
	fs := flag.NewFlagSet("cold", flag.ContinueOnError)
	e := commonFlags(fs, "cold")
	n := fs.Int("n", 50, "measured cold rollbacks")
	warmup := fs.Int("warmup", 2, "rollbacks before measuring (not counted)")
	janitor := fs.Duration("janitor", 50*time.Millisecond, "engine janitor interval (how soon an expired grace period stops the old version)")
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
	dataDir, err := e.subdir("cold-data")
	if err != nil {
		return err
	}
	s, err := startInproc(dataDir, newCreds(), e.log, func(c *server.Config) {
		c.Engine.Grace = time.Millisecond
		c.Engine.Standby = 0
		c.Engine.JanitorInterval = *janitor
	})
	if err != nil {
		return err
	}
	defer s.Close()

	const agent = "echo-cold"
	versions, err := deployTwo(s.API, kit, agent, "1.0.0", "1.1.0", "rolling")
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "# in-process server, data dir on %s; rollback grace 1ms, standby 0, janitor every %s\n", dataDir, *janitor)
	fmt.Fprintf(e.out, "# agent %s: the real examples/echo-agent (AgentCard.json + berth.json without its build step, prebuilt binary), health_path /healthz\n", agent)
	fmt.Fprintf(e.out, "# %d warm-up + %d measured rollbacks toggling %s <-> %s, each to a version whose deployment is stopped\n",
		*warmup, *n, versions[0], versions[1])

	var total, ready, rest, rtt []time.Duration
	warm := 0
	cur := 1
	for i := 0; i < *warmup+*n; i++ {
		target := versions[1-cur]
		if err := waitStopped(s.API, agent, target, 30*time.Second); err != nil {
			return err
		}
		rb, err := s.API.rollback(agent, target)
		if err != nil {
			return fmt.Errorf("rollback %d: %w", i+1, err)
		}
		cur = 1 - cur
		if i < *warmup {
			continue
		}
		if rb.Warm {
			warm++
		}
		total = append(total, rb.Server)
		ready = append(ready, rb.Ready)
		rest = append(rest, rb.Server-rb.Ready)
		rtt = append(rtt, rb.RTT)
	}

	t := newTable(e.out)
	t.add("server rollback total (Server-Timing rollback)", summarize(total))
	t.add("  agent start to healthy (Server-Timing ready)", summarize(ready))
	t.add("  the rest: decide, record, commit, switch", summarize(rest))
	t.add("client round trip", summarize(rtt))
	t.flush()
	fmt.Fprintf(e.out, "cold rollbacks: %d; answered warm=true: %d (want 0)\n", len(total), warm)
	return nil
}

// waitStopped polls agent's deployments until no deployment of version is
// live.
func waitStopped(a *api, agent, version string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ds, err := a.deployments(agent)
		if err != nil {
			return err
		}
		if !live(ds, version) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("version %s of %s still running after %s", version, agent, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
