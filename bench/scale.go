package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth/server"
)

// scaleResult is one history size's measurements.
type scaleResult struct {
	versions int
	rollback summary
	history  []summary // one per page size, in the order of -limits
	seedTime time.Duration
}

// runScale measures how warm-rollback latency and the version-history page
// grow with history: one agent with a small and with a large history (plus
// two real running versions on top), among many other agents.
func runScale(args []string) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	e := commonFlags(fs, "scale")
	sizes := fs.String("versions", "10,5000", "comma-separated history sizes of the measured agent (first is the baseline)")
	others := fs.Int("others", 1000, "other agents in the store")
	otherVersions := fs.Int("other-versions", 3, "versions (with a build and a stopped deployment each) per other agent")
	n := fs.Int("n", 300, "measured rollbacks and history reads per size")
	warmup := fs.Int("warmup", 20, "rollbacks and history reads before measuring")
	limitsFlag := fs.String("limits", "50,10", "comma-separated history page sizes to read (?limit=); 10 makes both pages equally long")
	if err := parse(fs, args); err != nil {
		return err
	}
	limits, err := parseCounts(*limitsFlag, "-limits")
	if err != nil {
		return err
	}
	counts, err := parseCounts(*sizes, "-versions")
	if err != nil {
		return err
	}
	if len(counts) < 2 {
		return fmt.Errorf("-versions needs at least two sizes")
	}
	if err := e.setup(); err != nil {
		return err
	}
	defer e.cleanup()
	kit, err := newAgentKit(e.work, e.echoBin)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "# in-process server per size; store seeded through berth.Store (sqlite.Open before server.Open): %d other agents x %d versions,\n", *others, *otherVersions)
	fmt.Fprintf(e.out, "# measured agent: N seeded versions (ready/rolled_back, each with a build and a stopped deployment) + 1.0.0 and 1.1.0 deployed through the API (blue-green)\n")
	fmt.Fprintf(e.out, "# per size: %d warm-up + %d rollbacks toggling 1.0.0 <-> 1.1.0, then per page size %d warm-up + %d GET /api/v1/agents/scale-agent/versions?limit=L\n", *warmup, *n, *warmup, *n)

	var results []scaleResult
	for _, count := range counts {
		r, err := scaleOne(e, kit, count, *others, *otherVersions, *n, *warmup, limits)
		if err != nil {
			return fmt.Errorf("%d versions: %w", count, err)
		}
		results = append(results, r)
		t := newTable(e.out)
		t.add(fmt.Sprintf("%d versions: rollback, server-side", count), r.rollback)
		for i, l := range limits {
			t.add(fmt.Sprintf("%d versions: history ?limit=%d, round trip", count, l), r.history[i])
		}
		t.flush()
		fmt.Fprintf(e.out, "  (seeded in %s)\n", r.seedTime.Round(time.Millisecond))
	}
	base := results[0]
	for _, r := range results[1:] {
		rb50 := ratio(float64(r.rollback.P50), float64(base.rollback.P50))
		rb99 := ratio(float64(r.rollback.P99), float64(base.rollback.P99))
		fmt.Fprintf(e.out, "ratio %d/%d versions: rollback p50 %.2fx p99 %.2fx (target within 1.5x on p50: %s)\n",
			r.versions, base.versions, rb50, rb99, verdict(rb50 <= 1.5))
		for i, l := range limits {
			h50 := ratio(float64(r.history[i].P50), float64(base.history[i].P50))
			h99 := ratio(float64(r.history[i].P99), float64(base.history[i].P99))
			fmt.Fprintf(e.out, "ratio %d/%d versions: history ?limit=%d p50 %.2fx p99 %.2fx (target within 1.5x on p50: %s)\n",
				r.versions, base.versions, l, h50, h99, verdict(h50 <= 1.5))
		}
	}
	return nil
}

func scaleOne(e *env, kit *agentKit, count, others, otherVersions, n, warmup int, limits []int) (scaleResult, error) {
	res := scaleResult{versions: count}
	dataDir, err := e.subdir(fmt.Sprintf("scale-%d", count))
	if err != nil {
		return res, err
	}
	c := newCreds()
	const agent = "scale-agent"
	start := time.Now()
	err = seedStore(context.Background(), filepath.Join(dataDir, "berth.db"), c, seedSpec{
		Others: others, OtherVersions: otherVersions, Target: agent, TargetVersions: count,
	})
	if err != nil {
		return res, err
	}
	res.seedTime = time.Since(start)
	s, err := startInproc(dataDir, c, e.log, func(cfg *server.Config) { cfg.Engine.Grace = 24 * time.Hour })
	if err != nil {
		return res, err
	}
	defer s.Close()

	// Two real versions on top of the seeded history, so the rollbacks
	// below are real warm switches between running processes.
	var labels [2]string
	for i, label := range []string{"1.0.0", "1.1.0"} {
		p, err := kit.pkg(agent, label)
		if err != nil {
			return res, err
		}
		d, _, err := s.API.update(agent, p, map[string]string{"version": label, "update_strategy": "blue-green"})
		if err != nil {
			return res, err
		}
		labels[i] = d.NewVersion
	}

	var rb []time.Duration
	cur := 1
	for i := 0; i < warmup+n; i++ {
		target := labels[1-cur]
		r, err := s.API.rollback(agent, target)
		if err != nil {
			return res, fmt.Errorf("rollback %d: %w", i+1, err)
		}
		if !r.Warm {
			return res, fmt.Errorf("rollback %d to %s was not warm", i+1, target)
		}
		cur = 1 - cur
		if i >= warmup {
			rb = append(rb, r.Server)
		}
	}
	for _, limit := range limits {
		var hist []time.Duration
		path := fmt.Sprintf("/api/v1/agents/%s/versions?limit=%d", agent, limit)
		for i := 0; i < warmup+n; i++ {
			r, err := s.API.do("GET", path, nil, "")
			if err != nil {
				return res, err
			}
			if err := expect(r, 200, "version history"); err != nil {
				return res, err
			}
			if i >= warmup {
				hist = append(hist, r.RTT)
			}
		}
		res.history = append(res.history, summarize(hist))
	}
	res.rollback = summarize(rb)
	return res, nil
}

// parseCounts parses a comma-separated list of non-negative integers.
func parseCounts(s, flagName string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 0 {
			return nil, fmt.Errorf("%s: %q is not a count", flagName, f)
		}
		out = append(out, v)
	}
	return out, nil
}
