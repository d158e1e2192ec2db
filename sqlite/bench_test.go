package sqlite

import (
	"path/filepath"
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/storetest"
)

// openBench opens a store in b.TempDir, durable as in production
// (synchronous=FULL).
func openBench(b *testing.B) berth.Store {
	b.Helper()
	s, err := Open(b.Context(), filepath.Join(b.TempDir(), "berth.db"))
	if err != nil {
		b.Fatalf("Open() = %v", err)
	}
	return s
}

// BenchmarkCommitSwitch measures one durable active-version switch.
func BenchmarkCommitSwitch(b *testing.B) { storetest.BenchCommitSwitch(b, openBench) }

// BenchmarkRecentlyActive measures the "last known good" lookup with 10
// and 5,000 versions.
func BenchmarkRecentlyActive(b *testing.B) { storetest.BenchRecentlyActive(b, openBench) }
