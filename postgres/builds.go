package postgres

import (
	"context"

	"github.com/berthhq/berth"
	"github.com/jackc/pgx/v5"
)

const buildCols = `id, agent_id, version_id, version, status, logs, error_message, created_at, updated_at, finished_at`

func scanBuild(row pgx.Row) (berth.Build, error) {
	var b berth.Build
	err := row.Scan(&b.ID, &b.AgentID, &b.VersionID, &b.Version, &b.Status, &b.Logs, &b.Error,
		&b.CreatedAt, &b.UpdatedAt, &b.FinishedAt)
	return b, err
}

// CreateBuild records b. The agent must exist (CodeNotFound); a clash on
// its ID is CodeConflict. Logs and Error are stored through cleanText.
func (s *Store) CreateBuild(ctx context.Context, b berth.Build) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO builds (`+buildCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		b.ID, b.AgentID, b.VersionID, b.Version, string(b.Status), cleanText(b.Logs), cleanText(b.Error),
		ts(b.CreatedAt), ts(b.UpdatedAt), nullTS(b.FinishedAt))
	err = dbErr(err, "create build")
	err = conflict(err, "build %s already exists", b.ID)
	return missingRef(err, "agent %s not found", b.AgentID)
}

// UpdateBuild writes b's Status, Logs, Error, UpdatedAt and FinishedAt.
// Logs and Error are stored through cleanText: a build's output may hold
// bytes PostgreSQL cannot store, and its result must be recorded anyway.
func (s *Store) UpdateBuild(ctx context.Context, b berth.Build) error {
	return execOne(ctx, s.pool, "update build", "build "+b.ID, `UPDATE builds
		SET status = $1, logs = $2, error_message = $3, updated_at = $4, finished_at = $5 WHERE id = $6`,
		string(b.Status), cleanText(b.Logs), cleanText(b.Error), ts(b.UpdatedAt), nullTS(b.FinishedAt), b.ID)
}

// BuildByID returns the build with the given ID.
func (s *Store) BuildByID(ctx context.Context, id string) (berth.Build, error) {
	b, err := scanBuild(s.pool.QueryRow(ctx, `SELECT `+buildCols+` FROM builds WHERE id = $1`, id))
	if err != nil {
		return berth.Build{}, notFound(err, "read build", "build %s not found", id)
	}
	return b, nil
}

// ListBuilds lists the agent's builds, newest first.
func (s *Store) ListBuilds(ctx context.Context, agentID string) ([]berth.Build, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+buildCols+` FROM builds
		WHERE agent_id = $1 ORDER BY created_at DESC, id DESC`, agentID)
	if err != nil {
		return nil, dbErr(err, "list builds")
	}
	return collect(rows, "list builds", scanBuild)
}
