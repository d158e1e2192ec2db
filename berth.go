// Package berth holds Berth's domain: agents, their immutable versions,
// builds, deployments and the operations that change them, plus the two
// interfaces (Store and Runtime) that the embedded and scale-out backends
// implement.
package berth

import (
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	"github.com/google/uuid"
)

// nameRE is the slug an agent name must match.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidName reports whether s is a valid agent (or user) name: a slug that
// does not also read as an id. Routes such as /api/v1/agents/{agent_id}
// take an agent's id or its name, and try the id first, so an agent
// named like another agent's id (a UUID, which 32 hex digits also are)
// would be shadowed by it.
func ValidName(s string) bool {
	if !nameRE.MatchString(s) {
		return false
	}
	_, err := uuid.Parse(s)
	return err != nil
}

// User is an account that can log in with an access key and secret.
type User struct {
	ID          string
	Username    string
	Email       string
	AccessKey   string
	SecretHash  string // hex SHA-256 of the access secret; the secret itself is never stored
	IsSuperUser bool
	CreatedAt   time.Time
}

// Agent is a named service owned by a user. Its ActiveVersionID is the single
// version that receives traffic; it is empty until the first deploy succeeds.
type Agent struct {
	ID              string
	Name            string
	OwnerID         string
	Description     string
	Card            json.RawMessage // the latest A2A agent card (or registry entry)
	ActiveVersionID string
	ActiveVersion   string // label of ActiveVersionID, filled in by the store on reads
	CreatedAt       time.Time
	UpdatedAt       time.Time
}

// VersionState is the persisted lifecycle state of a version. What version
// history shows (VersionStatus) is derived from it and the agent's active
// pointer.
type VersionState string

// Version states.
const (
	// VersionBuilding: being built, started or health-checked; never served.
	VersionBuilding VersionState = "building"
	// VersionReady: built and became active at least once (it passed its
	// health gate); eligible as a rollback target.
	VersionReady VersionState = "ready"
	// VersionFailed: its build or first health check failed; never served.
	VersionFailed VersionState = "failed"
	// VersionRolledBack: was active, then a rollback moved away from it.
	VersionRolledBack VersionState = "rolled_back"
)

// VersionStatus is what version history shows for a version.
type VersionStatus string

// Version statuses as shown in version history (DESIGN §1).
const (
	StatusBuilding   VersionStatus = "building"
	StatusActive     VersionStatus = "active"
	StatusStandby    VersionStatus = "standby"
	StatusInactive   VersionStatus = "inactive"
	StatusFailed     VersionStatus = "failed"
	StatusRolledBack VersionStatus = "rolled_back"
)

// DisplayStatus derives the status version history shows for v, given the
// agent's active version id and whether v has a running deployment.
func DisplayStatus(v Version, activeVersionID string, running bool) VersionStatus {
	switch {
	case v.ID == activeVersionID:
		return StatusActive
	case v.State == VersionBuilding:
		return StatusBuilding
	case v.State == VersionFailed:
		return StatusFailed
	case v.State == VersionRolledBack:
		return StatusRolledBack
	case running:
		return StatusStandby
	default:
		return StatusInactive
	}
}

// Version is an immutable release of an agent. Only its State, ActivatedAt
// and Rollback change after it is created.
type Version struct {
	ID        string
	AgentID   string
	Version   string // semver label, e.g. "1.2.0"
	State     VersionState
	Config    Config          // the berth.json it runs with
	Card      json.RawMessage // its AgentCard.json
	Digest    string          // hex SHA-256 of the uploaded package
	BuildID   string
	CreatedAt time.Time
	// ActivatedAt is the last time this version became active; it orders
	// "most recently active" for the default rollback target.
	ActivatedAt *time.Time
	// Rollback describes the last rollback that moved away from this version.
	Rollback *RollbackInfo
}

// RollbackInfo records who rolled back from a version, when, and why.
type RollbackInfo struct {
	OperationID string    `json:"operation_id"`
	Reason      string    `json:"reason"`
	Actor       string    `json:"actor"`
	From        string    `json:"from"`
	To          string    `json:"to"`
	At          time.Time `json:"at"`
}

// Config is a version's berth.json: how to build and run it.
type Config struct {
	Run          []string          `json:"run,omitempty"`
	Build        []string          `json:"build,omitempty"`
	HealthPath   string            `json:"health_path,omitempty"`
	Env          map[string]string `json:"env,omitempty"`
	ReadyTimeout Duration          `json:"ready_timeout,omitempty"`
	Image        string            `json:"image,omitempty"`
}

// DefaultHealthPath is the health path used when berth.json names none.
const DefaultHealthPath = "/.well-known/agent.json"

// Duration is a time.Duration that reads and writes JSON as a Go duration
// string such as "30s".
type Duration time.Duration

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string such as "30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: %v", s, err)
	}
	if v < 0 {
		return fmt.Errorf("duration %q must not be negative", s)
	}
	*d = Duration(v)
	return nil
}

// BuildStatus is the state of a build.
type BuildStatus string

// Build statuses (Nasiko's BuildStatus enum).
const (
	BuildQueued   BuildStatus = "queued"
	BuildBuilding BuildStatus = "building"
	BuildSuccess  BuildStatus = "success"
	BuildFailed   BuildStatus = "failed"
)

// Build turns an uploaded package into a runnable version.
type Build struct {
	ID         string
	AgentID    string
	VersionID  string
	Version    string
	Status     BuildStatus
	Logs       string
	Error      string
	CreatedAt  time.Time
	UpdatedAt  time.Time
	FinishedAt *time.Time
}

// DeploymentStatus is the state of a deployment (Nasiko's DeploymentStatus).
type DeploymentStatus string

// Deployment statuses.
const (
	DeploymentStarting DeploymentStatus = "starting"
	DeploymentRunning  DeploymentStatus = "running"
	DeploymentFailed   DeploymentStatus = "failed"
	DeploymentStopped  DeploymentStatus = "stopped"
)

// Live reports whether a deployment in status s is meant to be running.
func (s DeploymentStatus) Live() bool {
	return s == DeploymentStarting || s == DeploymentRunning
}

// Deployment is one running instance of one version.
type Deployment struct {
	ID        string
	AgentID   string
	VersionID string
	Version   string
	BuildID   string // the build it runs; set at creation, never changed
	Status    DeploymentStatus
	URL       string // base URL the proxy forwards to, e.g. http://127.0.0.1:41234
	Error     string
	Restarts  int
	CreatedAt time.Time
	UpdatedAt time.Time
	// StopAt, when set on a live deployment, is when it must be stopped (the
	// grace period of a version rolled back from).
	StopAt *time.Time
	// RemovedAt is when cleanup removed its runtime files.
	RemovedAt *time.Time
}

// OperationKind names a lifecycle action.
type OperationKind string

// Operation kinds.
const (
	OpUpload       OperationKind = "upload"
	OpUpdate       OperationKind = "update"
	OpRollback     OperationKind = "rollback"
	OpAutoRollback OperationKind = "auto_rollback"
	OpCleanup      OperationKind = "cleanup"
	OpDelete       OperationKind = "delete"
)

// OperationStatus is the outcome of an operation.
type OperationStatus string

// Operation statuses.
const (
	OpRunning     OperationStatus = "running"
	OpSucceeded   OperationStatus = "succeeded"
	OpFailed      OperationStatus = "failed"
	OpInterrupted OperationStatus = "interrupted"
)

// Operation is one lifecycle action on one agent: the audit trail.
type Operation struct {
	ID      string
	AgentID string
	// AgentName is the agent's name when the operation began. The record
	// outlives the agent (deleting an agent keeps its operations), so the
	// trail still says which agent it was.
	AgentName      string
	Kind           OperationKind
	Status         OperationStatus
	Actor          string // username of the caller
	Reason         string
	FromVersion    string
	ToVersion      string
	ErrorCode      Code
	Error          string
	IdempotencyKey string
	// RequestHash identifies what was asked for under IdempotencyKey (see
	// lifecycle's request fingerprints): a later request with the same key
	// is a repeat only if it asks for the same thing.
	RequestHash string
	// Result is the response body returned to the caller, kept so that a
	// repeat with the same IdempotencyKey gets the same answer.
	Result       json.RawMessage
	ResultStatus int
	StartedAt    time.Time
	FinishedAt   *time.Time
	DurationMS   int64
}
