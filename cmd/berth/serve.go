package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/berthhq/berth/lifecycle"
	"github.com/berthhq/berth/proxy"
	"github.com/berthhq/berth/server"
	"github.com/berthhq/berth/sqlite"
)

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

func envDuration(key string, def time.Duration) time.Duration {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

func envInt(key string, def int) int {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
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
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return usagef("--log-level: %v", err)
			}
			opts := &slog.HandlerOptions{Level: level}
			var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
			if logFormat == "json" {
				h = slog.NewJSONHandler(os.Stderr, opts)
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
	f.StringVar(&cfg.Addr, "addr", envOr("BERTH_ADDR", "127.0.0.1:8080"), "listen address (env BERTH_ADDR)")
	f.StringVar(&cfg.DataDir, "data-dir", envOr("BERTH_DATA_DIR", "./berth-data"), "data directory: SQLite store, packages, logs (env BERTH_DATA_DIR)")
	f.StringVar(&cfg.PublicURL, "public-url", envOr("BERTH_PUBLIC_URL", ""), "base URL users reach this server at (default http://<addr>)")
	f.IntVar(&maxUploadMB, "max-upload-mb", envInt("BERTH_MAX_UPLOAD_MB", 256), "largest accepted package, MiB")
	f.DurationVar(&cfg.ReadyTimeout, "ready-timeout", envDuration("BERTH_READY_TIMEOUT", 30*time.Second), "default wait for an agent's health check")
	f.DurationVar(&cfg.StopTimeout, "stop-timeout", envDuration("BERTH_STOP_TIMEOUT", 10*time.Second), "time an agent gets between SIGTERM and SIGKILL")
	f.DurationVar(&cfg.TokenTTL, "token-ttl", envDuration("BERTH_TOKEN_TTL", 24*time.Hour), "login token lifetime")
	f.DurationVar(&cfg.Engine.Grace, "rollback-grace", envDuration("BERTH_ROLLBACK_GRACE", def.Grace), "how long the version rolled back from stays warm")
	f.IntVar(&cfg.Engine.Standby, "standby", envInt("BERTH_STANDBY", def.Standby), "earlier versions a blue-green update keeps warm")
	f.BoolVar(&cfg.Engine.NoAutoRollback, "no-auto-rollback", envOr("BERTH_NO_AUTO_ROLLBACK", "") == "true", "do not roll an agent back by itself when its active deployment crashes and cannot be restarted")
	f.DurationVar(&cfg.Engine.BuildTimeout, "build-timeout", envDuration("BERTH_BUILD_TIMEOUT", def.BuildTimeout), "limit for a package's build command")
	f.IntVar(&cfg.Engine.Limits.MaxEntries, "max-package-entries", envInt("BERTH_MAX_PACKAGE_ENTRIES", def.Limits.MaxEntries), "most files a package may hold")
	f.Int64Var(&cfg.Engine.Limits.MaxUnpackedBytes, "max-unpacked-bytes", int64(envInt("BERTH_MAX_UNPACKED_BYTES", int(def.Limits.MaxUnpackedBytes))), "largest unpacked package size")
	f.DurationVar(&cfg.ReadHeaderTimeout, "read-header-timeout", envDuration("BERTH_READ_HEADER_TIMEOUT", 10*time.Second), "time a client gets to send request headers (slow-client protection)")
	f.DurationVar(&cfg.WriteTimeout, "write-timeout", envDuration("BERTH_WRITE_TIMEOUT", proxy.DefaultWriteTimeout), "time one write of an agent's response may wait for a client that stopped reading before it is disconnected (per write: long streams are fine)")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", envDuration("BERTH_SHUTDOWN_TIMEOUT", 30*time.Second), "time to drain requests on shutdown")
	f.StringVar(&cfg.DatabaseURL, "database-url", envOr("BERTH_DATABASE_URL", ""), "PostgreSQL URL for metadata (default: SQLite in the data dir)")
	f.DurationVar(&cfg.SQLiteBusyTimeout, "sqlite-busy-timeout", envDuration(sqlite.BusyTimeoutEnv, sqlite.DefaultBusyTimeout), "how long a write waits for a lock another process holds on the SQLite database before answering 503")
	f.StringVar(&cfg.Runtime, "runtime", envOr("BERTH_RUNTIME", "process"), "how agents run: process or kubernetes")
	f.StringVar(&cfg.KubeNamespace, "kube-namespace", envOr("BERTH_KUBE_NAMESPACE", "berth-agents"), "namespace the kubernetes runtime manages")
	f.StringVar(&logLevel, "log-level", envOr("BERTH_LOG_LEVEL", "info"), "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", envOr("BERTH_LOG_FORMAT", "text"), "text or json")
	return cmd
}
