package berth

import (
	"context"
	"time"
)

// Store is Berth's metadata store. SQLite (embedded default) and PostgreSQL
// implement it and pass one acceptance suite (storetest).
//
// Lookups of something that does not exist return an *Error with
// CodeNotFound; unique-constraint clashes return CodeConflict.
type Store interface {
	// Users.
	CreateUser(ctx context.Context, u User) error
	UserByID(ctx context.Context, id string) (User, error)
	UserByAccessKey(ctx context.Context, accessKey string) (User, error)
	CountUsers(ctx context.Context) (int, error)

	// Agents. AgentByName and AgentByID fill in Agent.ActiveVersion.
	CreateAgent(ctx context.Context, a Agent) error
	AgentByID(ctx context.Context, id string) (Agent, error)
	AgentByName(ctx context.Context, name string) (Agent, error)
	// ListAgents lists agents ordered by name; ownerID "" lists all.
	ListAgents(ctx context.Context, ownerID string) ([]Agent, error)
	// UpdateAgentMeta writes Description and Card (nothing else).
	UpdateAgentMeta(ctx context.Context, a Agent) error
	// DeleteAgent removes the agent and all its versions, builds and
	// deployments. Its operations stay: they are the audit trail, readable
	// with ListOperations and OperationByID after the agent is gone. If op
	// is not nil, it is the operation doing the delete, written (like
	// Commit.Operation) in the same transaction; the delete is fenced like
	// Commit: unless op holds the agent's guard it fails with CodeConflict
	// and deletes nothing (CodeInvalid if op is another agent's).
	DeleteAgent(ctx context.Context, id string, op *Operation) error
	// DeleteUnusedAgent removes agent id only if no operation was ever
	// recorded for it (an agent whose upload never began), deciding and
	// deleting atomically. It returns CodeNotFound if there is no such
	// agent and CodeConflict, changing nothing, if it has operations.
	DeleteUnusedAgent(ctx context.Context, id string) error

	// Versions. (AgentID, Version) is unique: a label is never reused.
	CreateVersion(ctx context.Context, v Version) error
	VersionByID(ctx context.Context, id string) (Version, error)
	VersionByLabel(ctx context.Context, agentID, label string) (Version, error)
	// ListVersions returns up to limit versions ordered newest semver first,
	// starting after the version labelled cursor ("" = from the top), and the
	// cursor of the next page ("" when there is none). Its cost must not grow
	// with the number of versions (keyset pagination on an index).
	ListVersions(ctx context.Context, agentID string, limit int, cursor string) ([]Version, string, error)
	// HighestVersion returns the agent's version with the highest semver
	// label in any state, or CodeNotFound if it has none.
	HighestVersion(ctx context.Context, agentID string) (Version, error)
	// RecentlyActive returns up to limit versions in state VersionReady
	// that have been active, most recently activated first (ActivatedAt
	// desc). It backs the "last known good" rollback target and must be
	// served from an index.
	RecentlyActive(ctx context.Context, agentID string, limit int) ([]Version, error)

	// Builds.
	CreateBuild(ctx context.Context, b Build) error
	UpdateBuild(ctx context.Context, b Build) error // writes Status, Logs, Error, UpdatedAt, FinishedAt
	BuildByID(ctx context.Context, id string) (Build, error)
	ListBuilds(ctx context.Context, agentID string) ([]Build, error) // newest first

	// Deployments.
	CreateDeployment(ctx context.Context, d Deployment) error
	// UpdateDeployment writes Status, URL, Error, Restarts, UpdatedAt,
	// StopAt and RemovedAt.
	UpdateDeployment(ctx context.Context, d Deployment) error
	DeploymentByID(ctx context.Context, id string) (Deployment, error)
	ListDeployments(ctx context.Context, agentID string) ([]Deployment, error) // newest first
	// CurrentDeployments lists the agent's deployments that matter to a
	// lifecycle decision: live ones (starting, running) and failed ones not
	// yet cleaned up (RemovedAt nil), newest first. Served from an index, so
	// its cost does not grow with the agent's history.
	CurrentDeployments(ctx context.Context, agentID string) ([]Deployment, error)
	// DeploymentsOfVersions lists the agent's deployments of the given
	// versions (one page of version history), newest first.
	DeploymentsOfVersions(ctx context.Context, agentID string, versionIDs []string) ([]Deployment, error)
	// LiveDeployments lists every deployment, of every agent, whose status
	// is starting or running: what the runtime should be running.
	LiveDeployments(ctx context.Context) ([]Deployment, error)

	// Operations and the per-agent guard.

	// BeginOperation records op (status running; AgentName filled from the
	// agent when empty) and takes the agent's operation guard until
	// leaseUntil, in one transaction. If another
	// operation holds an unexpired guard it returns CodeOperationInProgress
	// with Error.OperationID naming that operation, and records nothing.
	// If op.IdempotencyKey is set and an operation of this agent with that
	// key started after since exists, it returns that operation and
	// existing=true, records nothing and takes no guard.
	BeginOperation(ctx context.Context, op Operation, leaseUntil, since time.Time) (existing Operation, found bool, err error)
	// RenewLease extends the guard held by operation opID.
	RenewLease(ctx context.Context, agentID, opID string, leaseUntil time.Time) error
	// Commit applies c in one transaction and releases the guard held by
	// c.Operation (if c.Operation is set). It is fenced: if c.Operation no
	// longer holds its agent's guard (lease expired and taken over, or
	// interrupted), it fails with CodeConflict and writes nothing.
	Commit(ctx context.Context, c Commit) error
	OperationByID(ctx context.Context, id string) (Operation, error)
	ListOperations(ctx context.Context, agentID string, limit int) ([]Operation, error) // newest first
	// InterruptOperations closes every running operation as interrupted and
	// releases every guard; it is called once at start-up of a single
	// server, or for operations whose lease expired. It returns what it
	// closed.
	InterruptOperations(ctx context.Context, leaseExpiredBefore time.Time) ([]Operation, error)
	// DeleteIdempotencyKeysBefore forgets idempotency keys of operations
	// started before t.
	DeleteIdempotencyKeysBefore(ctx context.Context, t time.Time) error

	Close() error
}

// Commit is the result of one lifecycle decision, written in one
// transaction: the active-version switch, version and deployment state
// changes, and the finished operation record.
type Commit struct {
	AgentID string
	// SetActive, when non-nil, makes *SetActive the agent's active version.
	// The commit fails with CodeConflict unless the agent's active version
	// is ExpectActive at commit time (optimistic check against lost updates).
	SetActive    *string
	ExpectActive string
	Versions     []VersionChange
	Deployments  []Deployment // full rows; UpdateDeployment semantics
	// Operation, when set, is written (status, versions, error, result,
	// finished time, duration) and its agent guard released.
	Operation *Operation
}

// VersionChange changes the mutable fields of one version.
type VersionChange struct {
	VersionID   string
	State       VersionState
	ActivatedAt *time.Time    // nil leaves it as it is
	Rollback    *RollbackInfo // nil leaves it as it is
}
