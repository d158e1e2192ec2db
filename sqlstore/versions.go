package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"math"

	"github.com/Masterminds/semver/v3"
	"github.com/berthhq/berth"
)

const versionCols = `id, agent_id, version, state, config, card, digest, build_id, created_at, activated_at, rollback_info`

// semverOrder orders versions newest semver first; versions_semver serves it.
const semverOrder = ` ORDER BY major DESC, minor DESC, patch DESC`

// The index-served version queries; see PlannedQueries.
const (
	listVersionsSQL     = `SELECT ` + versionCols + ` FROM versions WHERE agent_id = $1` + semverOrder + ` LIMIT $2`
	listVersionsNextSQL = `SELECT ` + versionCols + ` FROM versions
		WHERE agent_id = $1 AND (major, minor, patch) < ($2, $3, $4)` + semverOrder + ` LIMIT $5`
	highestVersionSQL = `SELECT ` + versionCols + ` FROM versions WHERE agent_id = $1` + semverOrder + ` LIMIT 1`
	recentlyActiveSQL = `SELECT ` + versionCols + ` FROM versions
		WHERE agent_id = $1 AND state = $2 AND activated_at IS NOT NULL ORDER BY activated_at DESC LIMIT $3`
)

func (s *Store) scanVersion(sc scanner) (berth.Version, error) {
	var v berth.Version
	err := sc.Scan(&v.ID, &v.AgentID, &v.Version, &v.State, jsonValCol[berth.Config]{&v.Config}, rawCol{&v.Card},
		&v.Digest, &v.BuildID, timeCol{s.d, &v.CreatedAt}, nullTimeCol{s.d, &v.ActivatedAt},
		jsonCol[berth.RollbackInfo]{&v.Rollback})
	return v, err
}

// semverKey is a label's numeric parts, stored beside it so the database
// orders versions by semver rather than by text ("1.10.0" after "1.9.0").
type semverKey struct{ major, minor, patch int64 }

// parseLabel parses a plain MAJOR.MINOR.PATCH label (no "v", pre-release or
// build metadata, no leading zeros). Anything else is CodeInvalid.
func parseLabel(label string) (semverKey, error) {
	v, err := semver.StrictNewVersion(label)
	if err != nil || v.Prerelease() != "" || v.Metadata() != "" || v.Original() != label ||
		v.Major() > math.MaxInt64 || v.Minor() > math.MaxInt64 || v.Patch() > math.MaxInt64 {
		return semverKey{}, berth.Errorf(berth.CodeInvalid, "version %q is not a MAJOR.MINOR.PATCH label", label)
	}
	return semverKey{int64(v.Major()), int64(v.Minor()), int64(v.Patch())}, nil
}

// CreateVersion records v. Its label must be MAJOR.MINOR.PATCH
// (CodeInvalid otherwise) and unused for the agent (CodeConflict); the
// agent must exist (CodeNotFound).
func (s *Store) CreateVersion(ctx context.Context, v berth.Version) error {
	key, err := parseLabel(v.Version)
	if err != nil {
		return err
	}
	config, err := json.Marshal(v.Config)
	if err != nil {
		return &berth.Error{Code: berth.CodeInvalid, Message: "version config cannot be encoded", Err: err}
	}
	rollback, err := jsonArg(v.Rollback)
	if err != nil {
		return &berth.Error{Code: berth.CodeInvalid, Message: "version rollback info cannot be encoded", Err: err}
	}
	_, err = s.write.ExecContext(ctx, `INSERT INTO versions
		(id, agent_id, version, major, minor, patch, state, config, card, digest, build_id, created_at, activated_at, rollback_info)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
		v.ID, v.AgentID, v.Version, key.major, key.minor, key.patch, string(v.State), string(config), rawArg(v.Card),
		v.Digest, v.BuildID, s.d.Time(v.CreatedAt), s.nullTime(v.ActivatedAt), rollback)
	err = s.dbErr(err, "create version")
	err = conflict(err, "version %s of agent %s already exists", v.Version, v.AgentID)
	return missingRef(err, "agent %s not found", v.AgentID)
}

// VersionByID returns the version with the given ID.
func (s *Store) VersionByID(ctx context.Context, id string) (berth.Version, error) {
	v, err := s.scanVersion(s.read.QueryRowContext(ctx, `SELECT `+versionCols+` FROM versions WHERE id = $1`, id))
	if err != nil {
		return berth.Version{}, s.notFound(err, "read version", "version %s not found", id)
	}
	return v, nil
}

// VersionByLabel returns the agent's version labelled label.
func (s *Store) VersionByLabel(ctx context.Context, agentID, label string) (berth.Version, error) {
	v, err := s.scanVersion(s.read.QueryRowContext(ctx,
		`SELECT `+versionCols+` FROM versions WHERE agent_id = $1 AND version = $2`, agentID, label))
	if err != nil {
		return berth.Version{}, s.notFound(err, "read version", "version %s of agent %s not found", label, agentID)
	}
	return v, nil
}

// ListVersions returns up to limit (default 50 when limit <= 0) of the
// agent's versions, newest semver first, after the version labelled cursor
// ("" for the first page), and the cursor of the next page ("" on the last).
// It seeks on versions_semver (a row-value comparison, which a B-tree
// serves), so a page costs the same at any depth. A cursor that is not a
// label is CodeInvalid; one that names no version still pages from where
// that label would sort.
func (s *Store) ListVersions(ctx context.Context, agentID string, limit int, cursor string) ([]berth.Version, string, error) {
	n := pageSize(limit)
	var (
		rows *sql.Rows
		err  error
	)
	// One row more than the page tells whether there is a next page.
	if cursor == "" {
		rows, err = s.read.QueryContext(ctx, listVersionsSQL, agentID, n+1)
	} else {
		key, perr := parseLabel(cursor)
		if perr != nil {
			return nil, "", berth.Errorf(berth.CodeInvalid, "invalid cursor %q", cursor)
		}
		rows, err = s.read.QueryContext(ctx, listVersionsNextSQL, agentID, key.major, key.minor, key.patch, n+1)
	}
	if err != nil {
		return nil, "", s.dbErr(err, "list versions")
	}
	vs, err := collect(s, rows, "list versions", s.scanVersion)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(vs) > n {
		vs = vs[:n]
		next = vs[n-1].Version
	}
	return vs, next, nil
}

// HighestVersion returns the agent's version with the highest semver label,
// in any state, or CodeNotFound when it has none.
func (s *Store) HighestVersion(ctx context.Context, agentID string) (berth.Version, error) {
	v, err := s.scanVersion(s.read.QueryRowContext(ctx, highestVersionSQL, agentID))
	if err != nil {
		return berth.Version{}, s.notFound(err, "read version", "agent %s has no versions", agentID)
	}
	return v, nil
}

// RecentlyActive returns up to limit (default 50 when limit <= 0) of the
// agent's ready versions that have been active, most recently activated
// first. versions_recently_active serves both the filter and the order.
func (s *Store) RecentlyActive(ctx context.Context, agentID string, limit int) ([]berth.Version, error) {
	rows, err := s.read.QueryContext(ctx, recentlyActiveSQL, agentID, string(berth.VersionReady), pageSize(limit))
	if err != nil {
		return nil, s.dbErr(err, "list recently active versions")
	}
	return collect(s, rows, "list recently active versions", s.scanVersion)
}
