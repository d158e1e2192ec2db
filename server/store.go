package server

import (
	"context"
	"path/filepath"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlite"
)

// openStore opens the metadata store cfg selects.
func openStore(ctx context.Context, cfg Config) (berth.Store, error) {
	return sqlite.Open(ctx, filepath.Join(cfg.DataDir, "berth.db"))
}
