package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// serverProc is `berth serve` running as its own process, so that its RSS
// is the server's alone.
type serverProc struct {
	cmd  *exec.Cmd
	url  string
	api  *api
	done chan error
}

// startBinary runs bin serve on dataDir with c as the bootstrap superuser
// and logs in.
func startBinary(bin, dataDir string, c creds, verbose bool) (*serverProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	level := "error"
	if verbose {
		level = "warn"
	}
	cmd := exec.Command(bin, "serve", "--addr", addr, "--data-dir", dataDir, "--log-level", level,
		"--rollback-grace", "1h")
	cmd.Env = append(os.Environ(), "BERTH_ADMIN_ACCESS_KEY="+c.key, "BERTH_ADMIN_ACCESS_SECRET="+c.secret)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &serverProc{cmd: cmd, url: "http://" + addr, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := waitHealthy(ctx, p.url); err != nil {
		p.stop()
		return nil, err
	}
	p.api = newAPI(p.url)
	if err := p.api.login(c.key, c.secret); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

func (p *serverProc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM (the server then stops its agents) and waits.
func (p *serverProc) stop() {
	if p.api != nil {
		p.api.close()
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// runMemory measures the server's resident memory empty, with many
// registered agents, and with running agents, and the agents' own.
func runMemory(args []string) error {
	fs := flag.NewFlagSet("memory", flag.ContinueOnError)
	e := commonFlags(fs, "memory")
	registered := fs.Int("agents", 1000, "registered agents (seeded, none running)")
	perAgent := fs.Int("agent-versions", 1, "versions (each with a build and a stopped deployment) per registered agent")
	running := fs.Int("running", 50, "running echo agents deployed through the API")
	settle := fs.Duration("settle", 3*time.Second, "wait before each reading")
	bin := fs.String("berth-bin", "", "prebuilt berth binary (default: go build ./cmd/berth)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := e.setup(); err != nil {
		return err
	}
	defer e.cleanup()
	if *bin == "" {
		*bin = filepath.Join(e.work, "berth")
		if err := goBuild("cmd/berth", *bin); err != nil {
			return err
		}
	}
	kit, err := newAgentKit(e.work, e.echoBin)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "# `berth serve` as its own process (binary built from ./cmd/berth); RSS from /proc/<pid>/status after %s idle\n", *settle)

	// 1. Empty store.
	c := newCreds()
	dir, err := e.subdir("mem-empty")
	if err != nil {
		return err
	}
	p, err := startBinary(*bin, dir, c, e.verbose)
	if err != nil {
		return err
	}
	time.Sleep(*settle)
	empty, err := readMem(p.pid())
	p.stop()
	if err != nil {
		return err
	}

	// 2. Registered agents, none running.
	dir, err = e.subdir("mem-agents")
	if err != nil {
		return err
	}
	if err := seedStore(context.Background(), filepath.Join(dir, "berth.db"), c,
		seedSpec{Others: *registered, OtherVersions: *perAgent}); err != nil {
		return err
	}
	p, err = startBinary(*bin, dir, c, e.verbose)
	if err != nil {
		return err
	}
	defer p.stop()
	// List them once, as a dashboard would.
	if r, err := p.api.do("GET", "/api/v1/registry/user/agents", nil, ""); err != nil {
		return err
	} else if err := expect(r, 200, "list agents"); err != nil {
		return err
	}
	time.Sleep(*settle)
	reg, err := readMem(p.pid())
	if err != nil {
		return err
	}

	// 3. Running agents on top.
	for i := range *running {
		name := fmt.Sprintf("mem-%03d", i)
		pkg, err := kit.pkg(name, "1.0.0")
		if err != nil {
			return err
		}
		if _, err := p.api.upload(pkg); err != nil {
			return fmt.Errorf("upload %s: %w", name, err)
		}
		// One request through the proxy, so its connection pool holds a
		// connection to every agent as it would in use.
		if r, err := p.api.do("GET", "/agents/"+name+"/whoami", nil, ""); err != nil {
			return err
		} else if err := expect(r, 200, "whoami "+name); err != nil {
			return err
		}
	}
	time.Sleep(*settle)
	withRunning, err := readMem(p.pid())
	if err != nil {
		return err
	}
	kids, err := descendants(p.pid())
	if err != nil {
		return err
	}
	var agentRSS []int64
	var agentTotal int64
	for _, k := range kids {
		m, err := readMem(k)
		if err != nil {
			continue // exited meanwhile
		}
		agentRSS = append(agentRSS, m.RSS)
		agentTotal += m.RSS
	}
	slices.Sort(agentRSS)

	mib := func(kib int64) string { return fmt.Sprintf("%.1f", float64(kib)/1024) }
	rows := [][]string{
		{"process", "VmRSS MiB", "VmHWM MiB", "RssAnon MiB"},
		{"server, empty store", mib(empty.RSS), mib(empty.HWM), mib(empty.Anon)},
		{fmt.Sprintf("server, %d agents registered (none running)", *registered), mib(reg.RSS), mib(reg.HWM), mib(reg.Anon)},
		{fmt.Sprintf("server, + %d running agents", *running), mib(withRunning.RSS), mib(withRunning.HWM), mib(withRunning.Anon)},
	}
	writeAligned(e.out, rows)
	fmt.Fprintf(e.out, "server overhead per registered agent: %.1f KiB ((%s - %s) MiB / %d)\n",
		float64(reg.RSS-empty.RSS)/float64(*registered), mib(reg.RSS), mib(empty.RSS), *registered)
	fmt.Fprintf(e.out, "server overhead per running agent: %.1f KiB ((%s - %s) MiB / %d)\n",
		float64(withRunning.RSS-reg.RSS)/float64(*running), mib(withRunning.RSS), mib(reg.RSS), *running)
	if n := len(agentRSS); n > 0 {
		fmt.Fprintf(e.out, "agent processes (the agents' own memory, not the server's): %d, total %s MiB, median %s MiB, max %s MiB each\n",
			n, mib(agentTotal), mib(agentRSS[n/2]), mib(agentRSS[n-1]))
	}
	if len(agentRSS) != *running {
		fmt.Fprintf(e.out, "WARNING: found %d agent processes, expected %d\n", len(agentRSS), *running)
	}
	return nil
}
