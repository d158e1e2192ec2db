package postgres

import (
	"context"

	"github.com/berthhq/berth"
	"github.com/jackc/pgx/v5"
)

const deploymentCols = `id, agent_id, version_id, version, build_id, status, url, error_message, restarts,
	created_at, updated_at, stop_at, removed_at`

func scanDeployment(row pgx.Row) (berth.Deployment, error) {
	var d berth.Deployment
	err := row.Scan(&d.ID, &d.AgentID, &d.VersionID, &d.Version, &d.BuildID, &d.Status, &d.URL, &d.Error, &d.Restarts,
		&d.CreatedAt, &d.UpdatedAt, &d.StopAt, &d.RemovedAt)
	return d, err
}

// CreateDeployment records d. The agent must exist (CodeNotFound); a clash
// on its ID is CodeConflict.
func (s *Store) CreateDeployment(ctx context.Context, d berth.Deployment) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO deployments (`+deploymentCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
		d.ID, d.AgentID, d.VersionID, d.Version, d.BuildID, string(d.Status), d.URL, cleanText(d.Error), d.Restarts,
		ts(d.CreatedAt), ts(d.UpdatedAt), nullTS(d.StopAt), nullTS(d.RemovedAt))
	err = dbErr(err, "create deployment")
	err = conflict(err, "deployment %s already exists", d.ID)
	return missingRef(err, "agent %s not found", d.AgentID)
}

// updateDeploymentSQL writes the mutable fields of a deployment.
const updateDeploymentSQL = `UPDATE deployments
	SET status = $1, url = $2, error_message = $3, restarts = $4, updated_at = $5, stop_at = $6, removed_at = $7`

// updateDeploymentArgs are the arguments of updateDeploymentSQL. Error
// quotes the agent's output, so it goes through cleanText.
func updateDeploymentArgs(d berth.Deployment) []any {
	return []any{string(d.Status), d.URL, cleanText(d.Error), d.Restarts, ts(d.UpdatedAt),
		nullTS(d.StopAt), nullTS(d.RemovedAt)}
}

// UpdateDeployment writes d's Status, URL, Error, Restarts, UpdatedAt,
// StopAt and RemovedAt.
func (s *Store) UpdateDeployment(ctx context.Context, d berth.Deployment) error {
	return execOne(ctx, s.pool, "update deployment", "deployment "+d.ID,
		updateDeploymentSQL+` WHERE id = $8`, append(updateDeploymentArgs(d), d.ID)...)
}

// DeploymentByID returns the deployment with the given ID.
func (s *Store) DeploymentByID(ctx context.Context, id string) (berth.Deployment, error) {
	d, err := scanDeployment(s.pool.QueryRow(ctx, `SELECT `+deploymentCols+` FROM deployments WHERE id = $1`, id))
	if err != nil {
		return berth.Deployment{}, notFound(err, "read deployment", "deployment %s not found", id)
	}
	return d, nil
}

// ListDeployments lists the agent's deployments, newest first.
func (s *Store) ListDeployments(ctx context.Context, agentID string) ([]berth.Deployment, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deploymentCols+` FROM deployments
		WHERE agent_id = $1 ORDER BY created_at DESC, id DESC`, agentID)
	if err != nil {
		return nil, dbErr(err, "list deployments")
	}
	return collect(rows, "list deployments", scanDeployment)
}

// LiveDeployments lists every deployment, of every agent, whose status is
// starting or running, oldest first. The statuses are literals so that the
// partial index deployments_live applies.
func (s *Store) LiveDeployments(ctx context.Context) ([]berth.Deployment, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deploymentCols+` FROM deployments
		WHERE status IN ('starting', 'running') ORDER BY created_at, id`)
	if err != nil {
		return nil, dbErr(err, "list live deployments")
	}
	return collect(rows, "list live deployments", scanDeployment)
}
