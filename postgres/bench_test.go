package postgres

import (
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/storetest"
)

// openBench opens a store on a fresh schema with durable commits
// (synchronous_commit=on, whatever the test URL says), so the numbers
// compare with the SQLite store's fsynced ones; they include the round
// trips to the server (loopback in CI).
func openBench(b *testing.B) berth.Store {
	b.Helper()
	return openURL(b, withParam(freshSchema(b), "synchronous_commit", "on"))
}

// BenchmarkCommitSwitch measures one durable active-version switch.
func BenchmarkCommitSwitch(b *testing.B) { storetest.BenchCommitSwitch(b, openBench) }

// BenchmarkRecentlyActive measures the "last known good" lookup with 10
// and 5,000 versions.
func BenchmarkRecentlyActive(b *testing.B) { storetest.BenchRecentlyActive(b, openBench) }
