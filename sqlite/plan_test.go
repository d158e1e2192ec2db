package sqlite

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQueryPlans checks that the queries the Store contract requires to be
// index-served (and the hot lookups) neither scan a table nor sort.
func TestQueryPlans(t *testing.T) {
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "berth.db"))
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	defer s.Close()
	ts := encTime(time.Now())
	tests := []struct {
		name  string
		query string
		args  []any
		index string // the index the plan must name
	}{
		{"ListVersions first page", `SELECT ` + versionCols + ` FROM versions WHERE agent_id = $1` + semverOrder + ` LIMIT $2`,
			[]any{"a", 51}, "versions_semver"},
		{"ListVersions next page", `SELECT ` + versionCols + ` FROM versions
			WHERE agent_id = $1 AND (major, minor, patch) < ($2, $3, $4)` + semverOrder + ` LIMIT $5`,
			[]any{"a", 1, 2, 3, 51}, "versions_semver"},
		{"HighestVersion", `SELECT ` + versionCols + ` FROM versions WHERE agent_id = $1` + semverOrder + ` LIMIT 1`,
			[]any{"a"}, "versions_semver"},
		{"RecentlyActive", `SELECT ` + versionCols + ` FROM versions
			WHERE agent_id = $1 AND state = $2 AND activated_at IS NOT NULL ORDER BY activated_at DESC LIMIT $3`,
			[]any{"a", "ready", 5}, "versions_recently_active"},
		{"idempotency lookup", `SELECT ` + opCols + ` FROM operations
			WHERE agent_id = $1 AND idempotency_key = $2 AND started_at > $3 ORDER BY started_at DESC LIMIT 1`,
			[]any{"a", "k", ts}, "operations_idempotency"},
		{"ListOperations", `SELECT ` + opCols + ` FROM operations
			WHERE agent_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2`, []any{"a", 50}, "operations_agent_started"},
		{"LiveDeployments", `SELECT ` + deploymentCols + ` FROM deployments
			WHERE status IN ('starting', 'running') ORDER BY created_at, id`, nil, "deployments_live"},
		{"running operations", `SELECT ` + opCols + ` FROM operations WHERE status = 'running' ORDER BY started_at, id`,
			nil, "operations_running"},
		{"forget idempotency keys", `UPDATE operations SET idempotency_key = NULL
			WHERE idempotency_key IS NOT NULL AND started_at < $1`, []any{ts}, "operations_idempotency_started"},
	}
	for _, tc := range tests {
		rows, err := s.read.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+tc.query, tc.args...)
		if err != nil {
			t.Fatalf("%s: EXPLAIN QUERY PLAN = %v", tc.name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatalf("%s: scan plan = %v", tc.name, err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		joined := strings.Join(plan, "; ")
		t.Logf("%s: %s", tc.name, joined)
		if !strings.Contains(joined, "USING INDEX "+tc.index) && !strings.Contains(joined, "USING COVERING INDEX "+tc.index) {
			t.Errorf("%s: plan %q, want it to use index %s", tc.name, joined, tc.index)
		}
		if strings.Contains(joined, "TEMP B-TREE") {
			t.Errorf("%s: plan %q sorts in a temporary b-tree, want index order", tc.name, joined)
		}
	}
}
