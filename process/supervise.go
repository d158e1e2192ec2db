package process

import (
	"context"
	"fmt"
	"time"

	"github.com/berthhq/berth"
)

// supervise owns d from its first healthy start until it is stopped or
// given up on: it restarts the process on the same port when it dies, with
// exponential backoff, and reports each change through OnStatus.
func (r *Runtime) supervise(d *deployment, p *proc) {
	restarts := 0 // restarts so far; reported with every status
	streak := 0   // restarts since the last process that stayed up
	for {
		select {
		case <-d.stop:
			r.stopProc(d, p)
			return
		case <-p.exited:
		}
		p.reap()
		uptime := time.Since(p.started)
		d.mu.Lock()
		d.cur = nil
		d.mu.Unlock()
		why := fmt.Sprintf("process exited (%s)", p.exitStatus())
		d.sink.Notef("%s after %s", why, uptime.Round(time.Millisecond))
		d.log.Warn("deployment process exited", "status", p.exitStatus(), "uptime", uptime)
		if uptime >= r.opts.MaxRestartBackoff {
			streak = 0
		}

		// Restart until one attempt becomes healthy, Stop is called, or too
		// many attempts in a row have failed.
		failures := 0
		for {
			if failures >= r.opts.MaxFailedRestarts {
				r.giveUp(d, restarts, why, failures)
				return
			}
			restarts++
			r.report(d, berth.DeploymentStarting, restarts, why+"; restarting")
			if !r.sleep(d, r.backoff(streak)) {
				r.finish(d)
				return
			}
			streak++
			np, err := r.restart(d, restarts)
			if err == nil {
				p = np
				d.mu.Lock()
				d.cur = p
				d.mu.Unlock()
				d.log.Info("deployment restarted", "restarts", restarts, "pid", p.pid)
				r.report(d, berth.DeploymentRunning, restarts, "")
				break
			}
			if isClosed(d.stop) {
				r.finish(d)
				return
			}
			failures++
			why = "restart failed: " + berth.ErrorMessage(err)
			d.log.Warn("deployment restart failed", "restarts", restarts, "err", err)
		}
	}
}

// restart starts a new process for d and waits for it to become healthy;
// a process that does not is killed.
func (r *Runtime) restart(d *deployment, restarts int) (*proc, error) {
	p, err := r.spawn(d, restarts)
	if err != nil {
		return nil, err
	}
	if err := r.waitReady(context.Background(), d, p, time.Now().Add(d.readyTimeout)); err != nil {
		p.kill()
		d.sink.Notef("restart failed: %s", berth.ErrorMessage(err))
		return nil, err
	}
	return p, nil
}

// stopProc ends supervision of d on request: graceful stop, then finish.
func (r *Runtime) stopProc(d *deployment, p *proc) {
	d.sink.Notef("stopping (SIGTERM, SIGKILL after %s)", r.opts.StopTimeout)
	p.terminate(r.opts.StopTimeout)
	d.sink.Notef("stopped (%s)", p.exitStatus())
	d.log.Info("deployment stopped")
	r.finish(d)
}

// giveUp ends supervision of d after failed restarts. d leaves the runtime
// before OnStatus is told, so that the callback may Remove it, while a Stop
// that is already waiting returns only after the report.
func (r *Runtime) giveUp(d *deployment, restarts int, why string, failures int) {
	msg := why
	if failures > 0 {
		msg = fmt.Sprintf("gave up after %d failed restarts: %s", failures, why)
	}
	d.sink.Notef("%s", msg)
	d.log.Error("deployment failed", "restarts", restarts, "reason", msg)
	r.mu.Lock()
	if r.deps[d.id] == d {
		delete(r.deps, d.id)
	}
	r.mu.Unlock()
	d.running.Store(false)
	r.report(d, berth.DeploymentFailed, restarts, msg)
	r.finish(d)
}

// report calls OnStatus, if set.
func (r *Runtime) report(d *deployment, s berth.DeploymentStatus, restarts int, msg string) {
	if r.opts.OnStatus != nil {
		r.opts.OnStatus(d.id, s, restarts, msg)
	}
}

// backoff is the delay before a restart after streak quick restarts in a
// row: RestartBackoff doubled streak times, capped at MaxRestartBackoff.
func (r *Runtime) backoff(streak int) time.Duration {
	d := r.opts.RestartBackoff
	for range streak {
		if d >= r.opts.MaxRestartBackoff {
			break
		}
		d *= 2
	}
	return min(d, r.opts.MaxRestartBackoff)
}

// sleep waits for dur unless d is stopped first; it reports whether the
// full duration passed.
func (r *Runtime) sleep(d *deployment, dur time.Duration) bool {
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-d.stop:
		return false
	}
}
