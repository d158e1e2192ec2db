package sqlstore

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"github.com/berthhq/berth"
)

const deploymentCols = `id, agent_id, version_id, version, build_id, status, url, error_message, restarts,
	created_at, updated_at, stop_at, removed_at`

// liveDeploymentsSQL lists the live deployments oldest first. The statuses
// are literals so that the partial index deployments_live applies.
const liveDeploymentsSQL = `SELECT ` + deploymentCols + ` FROM deployments
	WHERE status IN ('starting', 'running') ORDER BY created_at, id`

// currentDeploymentsSQL lists an agent's live and not-yet-cleaned failed
// deployments; the condition is the partial index deployments_current's,
// literally, so that the index applies. It is sorted in Go: an ORDER BY
// would tempt the planner onto deployments_agent_created, which reads the
// agent's whole history.
const currentDeploymentsSQL = `SELECT ` + deploymentCols + ` FROM deployments
	WHERE agent_id = $1 AND (status IN ('starting', 'running') OR (status = 'failed' AND removed_at IS NULL))`

// deploymentsOfVersionSQL lists the deployments of one version (served by
// deployments_version); DeploymentsOfVersions repeats the IN list. The
// agent is checked in Go: with "agent_id = $1" in the query, SQLite's
// planner prefers the agent's whole-history index once the IN list grows.
const deploymentsOfVersionSQL = `SELECT ` + deploymentCols + ` FROM deployments
	WHERE version_id IN ($1)`

func (s *Store) scanDeployment(sc scanner) (berth.Deployment, error) {
	var d berth.Deployment
	err := sc.Scan(&d.ID, &d.AgentID, &d.VersionID, &d.Version, &d.BuildID, &d.Status, &d.URL, &d.Error, &d.Restarts,
		timeCol{s.d, &d.CreatedAt}, timeCol{s.d, &d.UpdatedAt}, nullTimeCol{s.d, &d.StopAt}, nullTimeCol{s.d, &d.RemovedAt})
	return d, err
}

// CreateDeployment records d. The agent must exist (CodeNotFound); a clash
// on its ID is CodeConflict.
func (s *Store) CreateDeployment(ctx context.Context, d berth.Deployment) error {
	_, err := s.write.ExecContext(ctx, `INSERT INTO deployments (`+deploymentCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
		d.ID, d.AgentID, d.VersionID, d.Version, d.BuildID, string(d.Status), d.URL, s.d.Text(d.Error), d.Restarts,
		s.d.Time(d.CreatedAt), s.d.Time(d.UpdatedAt), s.nullTime(d.StopAt), s.nullTime(d.RemovedAt))
	err = s.dbErr(err, "create deployment")
	err = conflict(err, "deployment %s already exists", d.ID)
	return missingRef(err, "agent %s not found", d.AgentID)
}

// updateDeploymentSQL writes the mutable fields of a deployment.
const updateDeploymentSQL = `UPDATE deployments
	SET status = $1, url = $2, error_message = $3, restarts = $4, updated_at = $5, stop_at = $6, removed_at = $7`

// updateDeploymentArgs are the arguments of updateDeploymentSQL. Error
// quotes the agent's output, so it goes through Dialect.Text.
func (s *Store) updateDeploymentArgs(d berth.Deployment) []any {
	return []any{string(d.Status), d.URL, s.d.Text(d.Error), d.Restarts, s.d.Time(d.UpdatedAt),
		s.nullTime(d.StopAt), s.nullTime(d.RemovedAt)}
}

// UpdateDeployment writes d's Status, URL, Error, Restarts, UpdatedAt,
// StopAt and RemovedAt.
func (s *Store) UpdateDeployment(ctx context.Context, d berth.Deployment) error {
	return s.execOne(ctx, s.write, "update deployment", "deployment "+d.ID,
		updateDeploymentSQL+` WHERE id = $8`, append(s.updateDeploymentArgs(d), d.ID)...)
}

// DeploymentByID returns the deployment with the given ID.
func (s *Store) DeploymentByID(ctx context.Context, id string) (berth.Deployment, error) {
	d, err := s.scanDeployment(s.read.QueryRowContext(ctx, `SELECT `+deploymentCols+` FROM deployments WHERE id = $1`, id))
	if err != nil {
		return berth.Deployment{}, s.notFound(err, "read deployment", "deployment %s not found", id)
	}
	return d, nil
}

// ListDeployments lists the agent's deployments, newest first.
func (s *Store) ListDeployments(ctx context.Context, agentID string) ([]berth.Deployment, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+deploymentCols+` FROM deployments
		WHERE agent_id = $1 ORDER BY created_at DESC, id DESC`, agentID)
	if err != nil {
		return nil, s.dbErr(err, "list deployments")
	}
	return collect(s, rows, "list deployments", s.scanDeployment)
}

// LiveDeployments lists every deployment, of every agent, whose status is
// starting or running, oldest first. The statuses are literals so that the
// partial index deployments_live applies.
func (s *Store) LiveDeployments(ctx context.Context) ([]berth.Deployment, error) {
	rows, err := s.read.QueryContext(ctx, liveDeploymentsSQL)
	if err != nil {
		return nil, s.dbErr(err, "list live deployments")
	}
	return collect(s, rows, "list live deployments", s.scanDeployment)
}

// CurrentDeployments lists the agent's live deployments and its failed ones
// not yet cleaned up, newest first.
func (s *Store) CurrentDeployments(ctx context.Context, agentID string) ([]berth.Deployment, error) {
	rows, err := s.read.QueryContext(ctx, currentDeploymentsSQL, agentID)
	if err != nil {
		return nil, s.dbErr(err, "list current deployments")
	}
	ds, err := collect(s, rows, "list current deployments", s.scanDeployment)
	sortNewestFirst(ds)
	return ds, err
}

// DeploymentsOfVersions lists the agent's deployments of versionIDs,
// newest first.
func (s *Store) DeploymentsOfVersions(ctx context.Context, agentID string, versionIDs []string) ([]berth.Deployment, error) {
	if len(versionIDs) == 0 {
		return nil, nil
	}
	args := make([]any, len(versionIDs))
	marks := make([]string, len(versionIDs))
	for i, id := range versionIDs {
		args[i] = id
		marks[i] = "$" + strconv.Itoa(i+1)
	}
	q := strings.Replace(deploymentsOfVersionSQL, "$1", strings.Join(marks, ", "), 1)
	rows, err := s.read.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, s.dbErr(err, "list deployments of versions")
	}
	ds, err := collect(s, rows, "list deployments of versions", s.scanDeployment)
	ds = slices.DeleteFunc(ds, func(d berth.Deployment) bool { return d.AgentID != agentID })
	sortNewestFirst(ds)
	return ds, err
}

// sortNewestFirst orders deployments as ListDeployments does.
func sortNewestFirst(ds []berth.Deployment) {
	slices.SortFunc(ds, func(a, b berth.Deployment) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
}
