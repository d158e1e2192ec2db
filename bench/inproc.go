package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/lifecycle"
	"github.com/berthhq/berth/server"
)

// creds are the superuser credentials every bench server is started with
// (through server.Config on an empty store, or seeded into the store).
type creds struct{ key, secret string }

func newCreds() creds {
	k, s := berth.NewCredentials()
	return creds{k, s}
}

// inproc is a complete Berth control plane running inside the bench
// process: server.Open on a data dir plus Serve on a 127.0.0.1 listener,
// exactly what `berth serve` runs (SQLite store with synchronous=FULL, the
// process runtime starting real child processes, the built-in proxy).
type inproc struct {
	URL     string
	DataDir string
	API     *api
	srv     *server.Server
	cancel  context.CancelFunc
	done    chan error
}

// startInproc opens a server on dataDir with cfg's defaults adjusted by
// tune, serves it and logs in as the superuser c.
func startInproc(dataDir string, c creds, log *slog.Logger, tune func(*server.Config)) (*inproc, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	cfg := server.Config{
		Addr:              addr,
		DataDir:           dataDir,
		PublicURL:         "http://" + addr,
		ReadyTimeout:      30 * time.Second,
		StopTimeout:       5 * time.Second,
		Engine:            lifecycle.DefaultConfig(),
		AdminAccessKey:    c.key,
		AdminAccessSecret: c.secret,
		ShutdownTimeout:   30 * time.Second,
		Logger:            log,
	}
	if tune != nil {
		tune(&cfg)
	}
	srv, err := server.Open(context.Background(), cfg)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("server.Open: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &inproc{URL: "http://" + addr, DataDir: dataDir, srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ctx, ln) }()
	s.API = newAPI(s.URL)
	hctx, hcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer hcancel()
	if err := waitHealthy(hctx, s.URL); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.API.login(c.key, c.secret); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close shuts the server down gracefully, stopping its agents.
func (s *inproc) Close() error {
	if s.cancel == nil {
		return nil
	}
	s.API.close()
	s.cancel()
	s.cancel = nil
	return <-s.done
}
