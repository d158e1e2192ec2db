package server

import (
	"context"
	"path/filepath"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/postgres"
	"github.com/berthhq/berth/sqlite"
)

// openStore opens the metadata store cfg selects: PostgreSQL when
// cfg.DatabaseURL is set (several replicas may share it), else SQLite in
// the data directory.
func openStore(ctx context.Context, cfg Config) (berth.Store, error) {
	if cfg.DatabaseURL != "" {
		return postgres.Open(ctx, cfg.DatabaseURL)
	}
	return sqlite.OpenOptions(ctx, filepath.Join(cfg.DataDir, "berth.db"), sqlite.Options{BusyTimeout: cfg.SQLiteBusyTimeout})
}
