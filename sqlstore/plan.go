package sqlstore

import "time"

// PlannedQuery is a statement the Store runs that an index must serve, for
// a backend's query-plan test: the backend asks its database for the plan
// and checks that it uses Index (and does not sort, unless Sorts).
type PlannedQuery struct {
	Name  string
	Query string
	Args  []any  // sample arguments; they give the parameters their types
	Index string // the index the plan must use
	Sorts bool   // the plan may sort
}

// PlannedQueries returns the statements the Store contract requires to be
// index-served, and the hot lookups, with sample arguments encoded for d.
func PlannedQueries(d Dialect) []PlannedQuery {
	at := d.Time(time.Now())
	return []PlannedQuery{
		{Name: "ListVersions first page", Query: listVersionsSQL, Args: []any{"a", 51}, Index: "versions_semver"},
		{Name: "ListVersions next page", Query: listVersionsNextSQL,
			Args: []any{"a", int64(1), int64(2), int64(3), 51}, Index: "versions_semver"},
		{Name: "HighestVersion", Query: highestVersionSQL, Args: []any{"a"}, Index: "versions_semver"},
		{Name: "RecentlyActive", Query: recentlyActiveSQL, Args: []any{"a", "ready", 5}, Index: "versions_recently_active"},
		{Name: "idempotency lookup", Query: idempotentOpSQL, Args: []any{"a", "k", at}, Index: "operations_idempotency"},
		{Name: "agent has operations", Query: agentHasOpsSQL, Args: []any{"a"}, Index: "operations_agent_started"},
		{Name: "ListOperations", Query: listOpsSQL, Args: []any{"a", 50}, Index: "operations_agent_started"},
		{Name: "ListBuilds", Query: listBuildsSQL, Args: []any{"a"}, Index: "builds_agent_created"},
		{Name: "ListAgents(owner)", Query: listAgentsOfSQL, Args: []any{"u"}, Index: "agents_owner_name"},
		{Name: "LiveDeployments", Query: liveDeploymentsSQL, Index: "deployments_live"},
		{Name: "CurrentDeployments", Query: currentDeploymentsSQL, Args: []any{"a"}, Index: "deployments_current"},
		{Name: "DeploymentsOfVersions", Query: deploymentsOfVersionSQL, Args: []any{"v"}, Index: "deployments_version"},
		{Name: "running operations", Query: runningOpsSQL, Index: "operations_running"},
		// Sorted to lock in ID order.
		{Name: "expired guards", Query: expiredGuardsSQL(d), Args: []any{d.LeaseArg(time.Now())},
			Index: "agents_locked", Sorts: true},
		{Name: "forget idempotency keys", Query: forgetKeysSQL, Args: []any{at}, Index: "operations_idempotency_started"},
	}
}
