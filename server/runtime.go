package server

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/lifecycle"
	"github.com/berthhq/berth/process"
	"github.com/berthhq/berth/proxy"
)

// openRuntime builds the runtime cfg selects, the router that moves an
// agent's traffic, and the build function for packages' build commands.
func openRuntime(ctx context.Context, cfg Config, p *proxy.Proxy, onStatus berth.StatusFunc) (berth.Runtime, lifecycle.Router, lifecycle.BuildFunc, error) {
	switch cfg.Runtime {
	case "", "process":
		rt, err := process.New(process.Options{
			RunDir:              filepath.Join(cfg.DataDir, "run"),
			LogDir:              filepath.Join(cfg.DataDir, "logs"),
			DefaultReadyTimeout: cfg.ReadyTimeout,
			StopTimeout:         cfg.StopTimeout,
			Logger:              cfg.Logger,
			OnStatus:            onStatus,
		})
		if err != nil {
			return nil, nil, nil, err
		}
		return rt, proxyRouter{p}, process.Build, nil
	}
	return nil, nil, nil, fmt.Errorf("unknown runtime %q (want process or kubernetes)", cfg.Runtime)
}

// proxyRouter adapts the built-in proxy to the engine's Router.
type proxyRouter struct{ p *proxy.Proxy }

func (r proxyRouter) Route(agent, url string) func(context.Context) error {
	prev := r.p.Set(agent, url)
	return func(ctx context.Context) error {
		if prev == nil || prev.URL() == url {
			return nil
		}
		return prev.Drain(ctx)
	}
}

func (r proxyRouter) Unroute(agent string) { r.p.Remove(agent) }
