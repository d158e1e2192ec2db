package sqlite

import (
	"context"

	"github.com/berthhq/berth"
)

const buildCols = `id, agent_id, version_id, version, status, logs, error_message, created_at, updated_at, finished_at`

func scanBuild(sc interface{ Scan(...any) error }) (berth.Build, error) {
	var b berth.Build
	err := sc.Scan(&b.ID, &b.AgentID, &b.VersionID, &b.Version, &b.Status, &b.Logs, &b.Error,
		timeCol{&b.CreatedAt}, timeCol{&b.UpdatedAt}, nullTimeCol{&b.FinishedAt})
	return b, err
}

// CreateBuild records b. The agent must exist (CodeNotFound); a clash on
// its ID is CodeConflict.
func (s *Store) CreateBuild(ctx context.Context, b berth.Build) error {
	_, err := s.write.ExecContext(ctx, `INSERT INTO builds (`+buildCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		b.ID, b.AgentID, b.VersionID, b.Version, string(b.Status), b.Logs, b.Error,
		encTime(b.CreatedAt), encTime(b.UpdatedAt), encNullTime(b.FinishedAt))
	err = dbErr(err, "create build")
	err = conflict(err, "build %s already exists", b.ID)
	return missingRef(err, "agent %s not found", b.AgentID)
}

// UpdateBuild writes b's Status, Logs, Error, UpdatedAt and FinishedAt.
func (s *Store) UpdateBuild(ctx context.Context, b berth.Build) error {
	return execOne(ctx, s.write, "update build", "build "+b.ID, `UPDATE builds
		SET status = $1, logs = $2, error_message = $3, updated_at = $4, finished_at = $5 WHERE id = $6`,
		string(b.Status), b.Logs, b.Error, encTime(b.UpdatedAt), encNullTime(b.FinishedAt), b.ID)
}

// BuildByID returns the build with the given ID.
func (s *Store) BuildByID(ctx context.Context, id string) (berth.Build, error) {
	b, err := scanBuild(s.read.QueryRowContext(ctx, `SELECT `+buildCols+` FROM builds WHERE id = $1`, id))
	if err != nil {
		return berth.Build{}, notFound(err, "read build", "build %s not found", id)
	}
	return b, nil
}

// ListBuilds lists the agent's builds, newest first.
func (s *Store) ListBuilds(ctx context.Context, agentID string) ([]berth.Build, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+buildCols+` FROM builds
		WHERE agent_id = $1 ORDER BY created_at DESC, id DESC`, agentID)
	if err != nil {
		return nil, dbErr(err, "list builds")
	}
	return collect(rows, "list builds", scanBuild)
}
