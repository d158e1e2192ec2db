package sqlite

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/berthhq/berth/sqlstore"
)

// TestQueryPlans checks that the queries the Store contract requires to be
// index-served (and the hot lookups) neither scan a table nor sort.
func TestQueryPlans(t *testing.T) {
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "berth.db"))
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	defer s.Close()
	for _, tc := range sqlstore.PlannedQueries(dialect{}) {
		if tc.Name == "expired guards" {
			// SQLite's schema has no agents_locked index: only the one
			// server sweeps guards, at start-up and on expired leases, and
			// it writes agents' rows anyway.
			continue
		}
		rows, err := s.read.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+tc.Query, tc.Args...)
		if err != nil {
			t.Fatalf("%s: EXPLAIN QUERY PLAN = %v", tc.Name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatalf("%s: scan plan = %v", tc.Name, err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		joined := strings.Join(plan, "; ")
		t.Logf("%s: %s", tc.Name, joined)
		if !strings.Contains(joined, "USING INDEX "+tc.Index) && !strings.Contains(joined, "USING COVERING INDEX "+tc.Index) {
			t.Errorf("%s: plan %q, want it to use index %s", tc.Name, joined, tc.Index)
		}
		if strings.Contains(joined, "TEMP B-TREE") && !tc.Sorts {
			t.Errorf("%s: plan %q sorts in a temporary b-tree, want index order", tc.Name, joined)
		}
	}
}
