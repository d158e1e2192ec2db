package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/sqlite"
	"github.com/berthhq/berth/storetest"
)

// openTemp opens a store in a new file under t.TempDir.
func openTemp(t *testing.T) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "berth.db"))
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	return s
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) berth.Store { return openTemp(t) })
}
