package server

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/kube"
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
			RestartBackoff:      cfg.RestartBackoff,
			Logger:              cfg.Logger,
			OnStatus:            onStatus,
		})
		if err != nil {
			return nil, nil, nil, err
		}
		return rt, proxyRouter{p}, process.Build, nil
	case "kubernetes":
		return openKube(cfg, p, onStatus)
	}
	return nil, nil, nil, fmt.Errorf("unknown runtime %q (want process or kubernetes)", cfg.Runtime)
}

// openKube builds the Kubernetes runtime: agents run as Deployments in
// cfg.KubeNamespace, and the router moves each agent's Service and the
// built-in proxy together. Versions run their berth.json image, built by
// the user's CI, so a package's build command is not run (see skipBuild).
func openKube(cfg Config, p *proxy.Proxy, onStatus berth.StatusFunc) (berth.Runtime, lifecycle.Router, lifecycle.BuildFunc, error) {
	conn, err := kube.Connect()
	if err != nil {
		return nil, nil, nil, err
	}
	ns := cfg.KubeNamespace
	if ns == "" {
		ns = conn.Namespace
	}
	rt, err := kube.New(kube.Options{
		Client:              conn.Client,
		Namespace:           ns,
		DefaultReadyTimeout: cfg.ReadyTimeout,
		StopTimeout:         cfg.StopTimeout,
		// Only a Berth inside the cluster reaches Service addresses, so
		// only it can health-check through them.
		CheckHTTP: conn.InCluster,
		OnStatus:  onStatus,
		Logger:    cfg.Logger,
	})
	if err != nil {
		return nil, nil, nil, err
	}
	if !conn.InCluster {
		cfg.Logger.Warn("berth runs outside the cluster: agents are reachable through their Services inside it, "+
			"but /agents/<name>/ on this server cannot reach them", "namespace", ns)
	}
	// The proxy is routed even outside the cluster: its 502 then says
	// the agent exists but cannot be reached from here, where no route at
	// all would claim the agent does not exist.
	return rt, rt.Router(kube.RouterOptions{Next: proxyRouter{p}}), skipBuild, nil
}

// skipBuild is the build step under the Kubernetes runtime. The version
// runs its image, so its build command (there for the process runtime)
// would build nothing that runs; skipping it, and saying so in the build
// log, lets one package carry both "build" and "image" and deploy on
// either runtime.
func skipBuild(_ context.Context, _ string, argv []string, _ []string, _ time.Duration, _ int) ([]byte, error) {
	return fmt.Appendf(nil, "[berth] build command %q not run: the kubernetes runtime runs the version's \"image\"\n", argv), nil
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
