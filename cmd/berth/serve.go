package main

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"sort"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/berthhq/berth/lifecycle"
	"github.com/berthhq/berth/proxy"
	"github.com/berthhq/berth/server"
	"github.com/berthhq/berth/sqlite"
)

// serveEnv names the environment variable of each serve flag. A variable
// that is set and not empty stands in for its flag when the flag is not
// given, and is parsed as the flag would be: a bad value is refused rather
// than silently replaced by the default.
var serveEnv = map[string]string{
	"addr": "BERTH_ADDR", "data-dir": "BERTH_DATA_DIR", "public-url": "BERTH_PUBLIC_URL",
	"max-upload-mb": "BERTH_MAX_UPLOAD_MB", "ready-timeout": "BERTH_READY_TIMEOUT",
	"stop-timeout": "BERTH_STOP_TIMEOUT", "token-ttl": "BERTH_TOKEN_TTL",
	"rollback-grace": "BERTH_ROLLBACK_GRACE", "standby": "BERTH_STANDBY",
	"no-auto-rollback": "BERTH_NO_AUTO_ROLLBACK", "build-timeout": "BERTH_BUILD_TIMEOUT",
	"max-package-entries": "BERTH_MAX_PACKAGE_ENTRIES", "max-unpacked-bytes": "BERTH_MAX_UNPACKED_BYTES",
	"read-header-timeout": "BERTH_READ_HEADER_TIMEOUT", "write-timeout": "BERTH_WRITE_TIMEOUT",
	"shutdown-timeout": "BERTH_SHUTDOWN_TIMEOUT", "database-url": "BERTH_DATABASE_URL",
	"sqlite-busy-timeout": sqlite.BusyTimeoutEnv, "runtime": "BERTH_RUNTIME",
	"kube-namespace": "BERTH_KUBE_NAMESPACE", "log-level": "BERTH_LOG_LEVEL", "log-format": "BERTH_LOG_FORMAT",
}

// applyEnv sets each flag of fs that was not given from its environment
// variable (see serveEnv).
func applyEnv(fs *pflag.FlagSet) error {
	names := make([]string, 0, len(serveEnv))
	for name := range serveEnv {
		names = append(names, name)
	}
	sort.Strings(names) // the first bad one reported is always the same
	for _, name := range names {
		env := serveEnv[name]
		v, ok := os.LookupEnv(env)
		if !ok || v == "" || fs.Changed(name) {
			continue
		}
		if err := fs.Set(name, v); err != nil {
			return usagef("%s=%q: %v", env, v, err)
		}
	}
	return nil
}

// checkServe refuses settings that parse but make no sense.
func checkServe(cfg server.Config, maxUploadMB int, logFormat string) error {
	positive := map[string]time.Duration{
		"--ready-timeout": cfg.ReadyTimeout, "--stop-timeout": cfg.StopTimeout, "--token-ttl": cfg.TokenTTL,
		"--build-timeout": cfg.Engine.BuildTimeout, "--read-header-timeout": cfg.ReadHeaderTimeout,
		"--shutdown-timeout": cfg.ShutdownTimeout, "--sqlite-busy-timeout": cfg.SQLiteBusyTimeout,
	}
	for _, name := range slices.Sorted(maps.Keys(positive)) {
		if positive[name] <= 0 {
			return usagef("%s must be positive, not %v", name, positive[name])
		}
	}
	switch {
	case cfg.Engine.Grace < 0:
		return usagef("--rollback-grace must not be negative, not %v", cfg.Engine.Grace)
	case maxUploadMB < 1:
		return usagef("--max-upload-mb must be at least 1, not %d", maxUploadMB)
	case cfg.Engine.Standby < 0:
		return usagef("--standby must not be negative, not %d", cfg.Engine.Standby)
	case cfg.Engine.Limits.MaxEntries < 1:
		return usagef("--max-package-entries must be at least 1, not %d", cfg.Engine.Limits.MaxEntries)
	case cfg.Engine.Limits.MaxUnpackedBytes < 1:
		return usagef("--max-unpacked-bytes must be at least 1, not %d", cfg.Engine.Limits.MaxUnpackedBytes)
	case logFormat != "text" && logFormat != "json":
		return usagef("--log-format must be text or json, not %q", logFormat)
	case cfg.Runtime != "process" && cfg.Runtime != "kubernetes":
		return usagef("--runtime must be process or kubernetes, not %q", cfg.Runtime)
	}
	return nil
}

// durationsAsText renders durations in JSON logs as Go duration text
// ("1.5ms"), as the text handler does, rather than as nanoseconds.
func durationsAsText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

func newServeCmd() *cobra.Command {
	def := lifecycle.DefaultConfig()
	cfg := server.Config{Engine: def}
	var logLevel, logFormat string
	var maxUploadMB int
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Berth control plane (SQLite + local processes by default)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := applyEnv(cmd.Flags()); err != nil {
				return err
			}
			if err := checkServe(cfg, maxUploadMB, logFormat); err != nil {
				return err
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return usagef("--log-level: %v", err)
			}
			opts := &slog.HandlerOptions{Level: level}
			var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
			if logFormat == "json" {
				h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level, ReplaceAttr: durationsAsText})
			}
			cfg.Logger = slog.New(h)
			slog.SetDefault(cfg.Logger)
			cfg.MaxUploadBytes = int64(maxUploadMB) << 20
			cfg.AdminAccessKey = os.Getenv("BERTH_ADMIN_ACCESS_KEY")
			cfg.AdminAccessSecret = os.Getenv("BERTH_ADMIN_ACCESS_SECRET")
			cfg.JWTSecret = os.Getenv("BERTH_JWT_SECRET")
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return server.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Addr, "addr", "127.0.0.1:8080", "listen address")
	f.StringVar(&cfg.DataDir, "data-dir", "./berth-data", "data directory: SQLite store, packages, logs")
	f.StringVar(&cfg.PublicURL, "public-url", "", "base URL users reach this server at (default http://<addr>)")
	f.IntVar(&maxUploadMB, "max-upload-mb", 256, "largest accepted package, MiB")
	f.DurationVar(&cfg.ReadyTimeout, "ready-timeout", 30*time.Second, "default wait for an agent's health check")
	f.DurationVar(&cfg.StopTimeout, "stop-timeout", 10*time.Second, "time an agent gets between SIGTERM and SIGKILL")
	f.DurationVar(&cfg.TokenTTL, "token-ttl", 24*time.Hour, "login token lifetime")
	f.DurationVar(&cfg.Engine.Grace, "rollback-grace", def.Grace, "how long the version rolled back from stays warm")
	f.IntVar(&cfg.Engine.Standby, "standby", def.Standby, "earlier versions a blue-green update keeps warm")
	f.BoolVar(&cfg.Engine.NoAutoRollback, "no-auto-rollback", false, "do not roll an agent back by itself when its active deployment crashes and cannot be restarted")
	f.DurationVar(&cfg.Engine.BuildTimeout, "build-timeout", def.BuildTimeout, "limit for a package's build command")
	f.IntVar(&cfg.Engine.Limits.MaxEntries, "max-package-entries", def.Limits.MaxEntries, "most files a package may hold")
	f.Int64Var(&cfg.Engine.Limits.MaxUnpackedBytes, "max-unpacked-bytes", def.Limits.MaxUnpackedBytes, "largest unpacked package size")
	f.DurationVar(&cfg.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "time a client gets to send request headers (slow-client protection)")
	f.DurationVar(&cfg.WriteTimeout, "write-timeout", proxy.DefaultWriteTimeout, "time one write of an agent's response may wait for a client that stopped reading before it is disconnected (per write: long streams are fine)")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "time to drain requests on shutdown")
	f.StringVar(&cfg.DatabaseURL, "database-url", "", "PostgreSQL URL for metadata (default: SQLite in the data dir)")
	f.DurationVar(&cfg.SQLiteBusyTimeout, "sqlite-busy-timeout", sqlite.DefaultBusyTimeout, "how long a write waits for a lock another process holds on the SQLite database before answering 503")
	f.StringVar(&cfg.Runtime, "runtime", "process", "how agents run: process or kubernetes")
	f.StringVar(&cfg.KubeNamespace, "kube-namespace", "berth-agents", "namespace the kubernetes runtime manages")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	for name, env := range serveEnv {
		f.Lookup(name).Usage += " (env " + env + ")"
	}
	return cmd
}
