// Package server assembles a complete Berth control plane from its
// configuration: store, runtime, proxy, release engine and HTTP API.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
	berthhttp "github.com/berthhq/berth/http"
	"github.com/berthhq/berth/lifecycle"
	"github.com/berthhq/berth/proxy"
)

// Version is Berth's version, set at build time with -ldflags.
var Version = "dev"

// Config is everything `berth serve` can be told.
type Config struct {
	Addr    string
	DataDir string
	// PublicURL is the base URL users reach this server at; default
	// http://<Addr>.
	PublicURL string
	// MaxUploadBytes bounds an uploaded package.
	MaxUploadBytes int64
	// ReadyTimeout is the default wait for an agent's health check.
	ReadyTimeout time.Duration
	// StopTimeout is how long an agent gets between SIGTERM and SIGKILL.
	StopTimeout time.Duration
	// TokenTTL is how long a login token is valid.
	TokenTTL time.Duration
	// Engine holds release policy (grace period, standby, limits, …).
	Engine lifecycle.Config
	// AdminAccessKey/AdminAccessSecret set the first superuser's
	// credentials instead of generating them.
	AdminAccessKey, AdminAccessSecret string
	// JWTSecret signs tokens instead of the secret kept in the data dir.
	JWTSecret string
	// ShutdownTimeout bounds draining requests on shutdown.
	ShutdownTimeout time.Duration
	// ReadHeaderTimeout bounds how long a client may take to send a
	// request's headers (slow-client protection); default 10s.
	ReadHeaderTimeout time.Duration
	// WriteTimeout bounds how long one write of a proxied response may
	// block on a client that stopped reading before it is disconnected
	// (per write, so long streams are fine); zero means the proxy's
	// default (a minute), negative means no limit.
	WriteTimeout time.Duration
	// DatabaseURL selects PostgreSQL for metadata (postgres://…); empty
	// means SQLite in DataDir.
	DatabaseURL string
	// RestartBackoff is the process runtime's delay before restarting a
	// crashed agent, doubling per attempt; zero means process's default.
	RestartBackoff time.Duration
	// SQLiteBusyTimeout bounds how long a write waits for a lock another
	// process holds on the SQLite database before it fails with
	// unavailable (503); zero means sqlite's default.
	SQLiteBusyTimeout time.Duration
	// Runtime selects how agents run: "process" (default) or "kubernetes".
	Runtime string
	// KubeNamespace is the namespace the Kubernetes runtime manages.
	KubeNamespace string
	Logger        *slog.Logger
}

// Server is a running Berth control plane.
type Server struct {
	cfg     Config
	log     *slog.Logger
	store   berth.Store
	runtime berth.Runtime
	proxy   *proxy.Proxy
	engine  *lifecycle.Engine
	api     *berthhttp.Server
	lock    *os.File // the data dir's lock (see lockDataDir)
}

// Open prepares the data directory, the store (bootstrapping the first
// superuser), the runtime and the engine, and brings back every agent the
// store says should run.
func Open(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DataDir == "" {
		return nil, errors.New("data dir is required")
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 30 * time.Second
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = 10 * time.Second
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = dataDir
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	// Before anything touches the data dir's agents or store.
	lock, err := lockDataDir(dataDir)
	if err != nil {
		return nil, err
	}
	// The token secret before the store: a bad one must stop the start
	// before a database is created and the first superuser written.
	secret, err := jwtSecret(dataDir, cfg.JWTSecret)
	if err == nil {
		var st berth.Store
		if st, err = openStore(ctx, cfg); err == nil {
			return open(ctx, cfg, st, lock, secret)
		}
		err = fmt.Errorf("open store: %w", err)
	}
	if lock != nil {
		lock.Close()
	}
	return nil, err
}

// open is Open once the data dir is locked, the token secret known and the
// store open; on failure it closes them.
func open(ctx context.Context, cfg Config, st berth.Store, lock *os.File, secret []byte) (*Server, error) {
	log, dataDir := cfg.Logger, cfg.DataDir
	s := &Server{cfg: cfg, log: log, store: st, lock: lock}
	fail := func(err error) (*Server, error) {
		s.close()
		return nil, err
	}
	if err := bootstrapAdmin(ctx, st, dataDir, cfg.AdminAccessKey, cfg.AdminAccessSecret, log); err != nil {
		return fail(err)
	}

	s.proxy = proxy.New(proxy.Options{Logger: log, ResponseHeaderTimeout: -1, WriteTimeout: cfg.WriteTimeout})
	ecfg := cfg.Engine
	ecfg.DataDir = dataDir
	ecfg.SharedStore = cfg.DatabaseURL != ""
	// The engine is created before the runtime reports statuses to it.
	var engine *lifecycle.Engine
	rt, router, build, err := openRuntime(ctx, cfg, s.proxy, func(id string, status berth.DeploymentStatus, restarts int, msg string) {
		if engine != nil {
			engine.OnStatus(id, status, restarts, msg)
		}
	})
	if err != nil {
		return fail(err)
	}
	s.runtime = rt
	engine = lifecycle.New(ecfg, st, rt, router, build, log)
	s.engine = engine

	publicURL := cfg.PublicURL
	if publicURL == "" {
		publicURL = "http://" + cfg.Addr
	}
	s.api = berthhttp.NewServer(berthhttp.Config{
		MaxUploadBytes: cfg.MaxUploadBytes,
		TempDir:        filepath.Join(dataDir, "tmp"),
		PublicURL:      publicURL,
		Version:        Version,
	}, st, engine, rt, &berthhttp.Tokens{Secret: secret, TTL: cfg.TokenTTL}, s.proxy, log)

	// Uploads spooled before a crash are garbage.
	_ = os.RemoveAll(filepath.Join(dataDir, "tmp"))
	if err := engine.Reconcile(ctx); err != nil {
		// One agent that cannot come back must not keep the others down.
		log.Error("some agents could not be restored", "err", err)
	}
	return s, nil
}

// Handler is the HTTP API (and the agent proxy).
func (s *Server) Handler() http.Handler { return s.api }

// Store is the metadata store.
func (s *Server) Store() berth.Store { return s.store }

// Serve serves on ln until ctx ends, then shuts down gracefully: stop
// accepting, drain requests, finish operations, stop agent processes.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.api,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	jctx, stopJanitor := context.WithCancel(context.Background())
	janitorDone := make(chan struct{})
	go func() {
		defer close(janitorDone)
		s.engine.Run(jctx)
	}()
	// Proxied requests are read by the proxy's own front end; it hands
	// every other connection (the API, anything unusual) to hs.
	front := proxy.NewFrontend(s.proxy, ln, proxy.FrontendOptions{
		ReadHeaderTimeout: hs.ReadHeaderTimeout,
		IdleTimeout:       hs.IdleTimeout,
	})
	errc := make(chan error, 2)
	go func() { errc <- hs.Serve(front.Fallback()) }()
	go func() { errc <- front.Serve() }()
	s.log.Info("berth serving", "addr", ln.Addr().String(), "data_dir", s.cfg.DataDir, "version", Version)
	var err error
	select {
	case err = <-errc:
		front.Close()
		hs.Close()
	case <-ctx.Done():
		s.log.Info("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
		ferr := make(chan error, 1)
		go func() { ferr <- front.Shutdown(sctx) }()
		err = errors.Join(hs.Shutdown(sctx), <-ferr)
		cancel()
	}
	stopJanitor()
	<-janitorDone
	s.close()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Close releases everything without serving (for tests that only use the
// handler).
func (s *Server) Close() { s.close() }

func (s *Server) close() {
	if s.engine != nil {
		s.engine.Close()
	}
	if s.runtime != nil {
		if err := s.runtime.Close(); err != nil {
			s.log.Warn("stop agents", "err", err)
		}
	}
	if s.store != nil {
		if err := s.store.Close(); err != nil {
			s.log.Warn("close store", "err", err)
		}
	}
	if s.lock != nil {
		// Last: the agents are stopped and the store closed.
		s.lock.Close()
	}
}

// Run listens on cfg.Addr and serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return err
	}
	if cfg.PublicURL == "" {
		cfg.PublicURL = "http://" + ln.Addr().String()
	}
	s, err := Open(ctx, cfg)
	if err != nil {
		ln.Close()
		return err
	}
	return s.Serve(ctx, ln)
}

// AdminCredentials is the file the first start writes the superuser's
// credentials to.
type AdminCredentials struct {
	Username     string `json:"username"`
	AccessKey    string `json:"access_key"`
	AccessSecret string `json:"access_secret"`
}

// AdminCredentialsFile is the name of that file in the data dir.
const AdminCredentialsFile = "admin-credentials.json"

// bootstrapAdmin creates the first superuser on an empty store, with the
// given credentials or fresh ones written to the data dir (mode 0600).
func bootstrapAdmin(ctx context.Context, st berth.Store, dataDir, key, secret string, log *slog.Logger) error {
	n, err := st.CountUsers(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		if key != "" {
			log.Warn("BERTH_ADMIN_ACCESS_KEY is ignored: the store already has users")
		}
		return nil
	}
	if (key == "") != (secret == "") {
		return errors.New("set both BERTH_ADMIN_ACCESS_KEY and BERTH_ADMIN_ACCESS_SECRET, or neither")
	}
	fromEnv := key != ""
	if !fromEnv {
		key, secret = berth.NewCredentials()
	}
	u := berth.User{ID: uuid.NewString(), Username: "admin", AccessKey: key, SecretHash: berth.HashSecret(secret),
		IsSuperUser: true, CreatedAt: time.Now().UTC()}
	if !fromEnv {
		// Write the file first: a superuser whose secret nobody has is
		// useless, and the next start would not make another.
		b, _ := json.MarshalIndent(AdminCredentials{Username: u.Username, AccessKey: key, AccessSecret: secret}, "", "  ")
		if err := writeFileAtomic(filepath.Join(dataDir, AdminCredentialsFile), append(b, '\n'), 0o600); err != nil {
			return fmt.Errorf("write admin credentials: %w", err)
		}
	}
	if err := st.CreateUser(ctx, u); err != nil {
		if berth.ErrorCode(err) == berth.CodeConflict {
			// Another replica sharing the store bootstrapped first; its
			// superuser stands, and the credentials written here are void.
			if !fromEnv {
				_ = os.Remove(filepath.Join(dataDir, AdminCredentialsFile))
			}
			log.Info("superuser already created by another server sharing the store")
			return nil
		}
		return fmt.Errorf("create admin user: %w", err)
	}
	if fromEnv {
		log.Info("created superuser from BERTH_ADMIN_ACCESS_KEY", "user", u.Username)
	} else {
		log.Info("created superuser; credentials written", "user", u.Username, "file", filepath.Join(dataDir, AdminCredentialsFile))
	}
	return nil
}

// jwtSecret returns the token signing secret: the configured one, or the one
// kept in the data dir (created on first start).
func jwtSecret(dataDir, configured string) ([]byte, error) {
	if configured != "" {
		if len(configured) < 32 {
			return nil, errors.New("BERTH_JWT_SECRET must be at least 32 characters")
		}
		return []byte(configured), nil
	}
	path := filepath.Join(dataDir, "jwt-secret")
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return []byte(strings.TrimSpace(string(b))), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	secret := hex.EncodeToString(raw)
	if err := writeFileAtomic(path, []byte(secret+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write jwt secret: %w", err)
	}
	return []byte(secret), nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
