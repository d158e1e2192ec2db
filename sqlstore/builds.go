package sqlstore

import (
	"context"

	"github.com/berthhq/berth"
)

const buildCols = `id, agent_id, version_id, version, status, logs, error_message, created_at, updated_at, finished_at`

// listBuildsSQL lists an agent's builds newest first; builds_agent_created
// serves it.
const listBuildsSQL = `SELECT ` + buildCols + ` FROM builds WHERE agent_id = $1 ORDER BY created_at DESC, id DESC`

func (s *Store) scanBuild(sc scanner) (berth.Build, error) {
	var b berth.Build
	err := sc.Scan(&b.ID, &b.AgentID, &b.VersionID, &b.Version, &b.Status, &b.Logs, &b.Error,
		timeCol{s.d, &b.CreatedAt}, timeCol{s.d, &b.UpdatedAt}, nullTimeCol{s.d, &b.FinishedAt})
	return b, err
}

// CreateBuild records b. The agent must exist (CodeNotFound); a clash on
// its ID is CodeConflict. Logs and Error are stored through Dialect.Text.
func (s *Store) CreateBuild(ctx context.Context, b berth.Build) error {
	_, err := s.write.ExecContext(ctx, `INSERT INTO builds (`+buildCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		b.ID, b.AgentID, b.VersionID, b.Version, string(b.Status), s.d.Text(b.Logs), s.d.Text(b.Error),
		s.d.Time(b.CreatedAt), s.d.Time(b.UpdatedAt), s.nullTime(b.FinishedAt))
	err = s.dbErr(err, "create build")
	err = conflict(err, "build %s already exists", b.ID)
	return missingRef(err, "agent %s not found", b.AgentID)
}

// UpdateBuild writes b's Status, Logs, Error, UpdatedAt and FinishedAt.
// Logs and Error are stored through Dialect.Text: a build's output may hold
// bytes the database cannot store, and its result must be recorded anyway.
func (s *Store) UpdateBuild(ctx context.Context, b berth.Build) error {
	return s.execOne(ctx, s.write, "update build", "build "+b.ID, `UPDATE builds
		SET status = $1, logs = $2, error_message = $3, updated_at = $4, finished_at = $5 WHERE id = $6`,
		string(b.Status), s.d.Text(b.Logs), s.d.Text(b.Error), s.d.Time(b.UpdatedAt), s.nullTime(b.FinishedAt), b.ID)
}

// BuildByID returns the build with the given ID.
func (s *Store) BuildByID(ctx context.Context, id string) (berth.Build, error) {
	b, err := s.scanBuild(s.read.QueryRowContext(ctx, `SELECT `+buildCols+` FROM builds WHERE id = $1`, id))
	if err != nil {
		return berth.Build{}, s.notFound(err, "read build", "build %s not found", id)
	}
	return b, nil
}

// ListBuilds lists the agent's builds, newest first.
func (s *Store) ListBuilds(ctx context.Context, agentID string) ([]berth.Build, error) {
	rows, err := s.read.QueryContext(ctx, listBuildsSQL, agentID)
	if err != nil {
		return nil, s.dbErr(err, "list builds")
	}
	return collect(s, rows, "list builds", s.scanBuild)
}
