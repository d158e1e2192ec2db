package sqlstore

import (
	"context"
	"database/sql"

	"github.com/berthhq/berth"
)

// agentSelect reads agents with the label of their active version.
const agentSelect = `SELECT a.id, a.name, a.owner_id, a.description, a.card, a.active_version_id, v.version,
	a.created_at, a.updated_at
FROM agents a LEFT JOIN versions v ON v.id = a.active_version_id`

// listAgentsOfSQL lists an owner's agents by name; agents_owner_name
// serves it.
const listAgentsOfSQL = agentSelect + ` WHERE a.owner_id = $1 ORDER BY a.name`

func (s *Store) scanAgent(sc scanner) (berth.Agent, error) {
	var a berth.Agent
	err := sc.Scan(&a.ID, &a.Name, &a.OwnerID, &a.Description, rawCol{&a.Card},
		nullStringCol{&a.ActiveVersionID}, nullStringCol{&a.ActiveVersion},
		timeCol{s.d, &a.CreatedAt}, timeCol{s.d, &a.UpdatedAt})
	return a, err
}

// CreateAgent records a. Its ActiveVersionID is ignored: an agent starts
// without an active version, which only Commit sets. A clash on ID or Name
// is CodeConflict; an OwnerID naming no user is CodeNotFound.
func (s *Store) CreateAgent(ctx context.Context, a berth.Agent) error {
	_, err := s.write.ExecContext(ctx, `INSERT INTO agents
		(id, name, owner_id, description, card, active_version_id, lock_op_id, lock_until, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, NULL, NULL, NULL, $6, $7)`,
		a.ID, a.Name, a.OwnerID, a.Description, rawArg(a.Card), s.d.Time(a.CreatedAt), s.d.Time(a.UpdatedAt))
	err = s.dbErr(err, "create agent")
	err = conflict(err, "an agent named %q (or with id %s) already exists", a.Name, a.ID)
	return missingRef(err, "owner %s not found", a.OwnerID)
}

// AgentByID returns the agent with the given ID.
func (s *Store) AgentByID(ctx context.Context, id string) (berth.Agent, error) {
	a, err := s.scanAgent(s.read.QueryRowContext(ctx, agentSelect+` WHERE a.id = $1`, id))
	if err != nil {
		return berth.Agent{}, s.notFound(err, "read agent", "agent %s not found", id)
	}
	return a, nil
}

// AgentByName returns the agent with the given name.
func (s *Store) AgentByName(ctx context.Context, name string) (berth.Agent, error) {
	a, err := s.scanAgent(s.read.QueryRowContext(ctx, agentSelect+` WHERE a.name = $1`, name))
	if err != nil {
		return berth.Agent{}, s.notFound(err, "read agent", "agent %q not found", name)
	}
	return a, nil
}

// ListAgents lists the agents of ownerID ordered by name, or every agent
// when ownerID is "".
func (s *Store) ListAgents(ctx context.Context, ownerID string) ([]berth.Agent, error) {
	var (
		rows *sql.Rows
		err  error
	)
	// Two statements rather than "$1 = '' OR owner_id = $1": a cached plan
	// for the combined form could not use agents_owner_name. PostgreSQL's
	// name column has collation "C", so names sort by their bytes in both
	// databases.
	if ownerID == "" {
		rows, err = s.read.QueryContext(ctx, agentSelect+` ORDER BY a.name`)
	} else {
		rows, err = s.read.QueryContext(ctx, listAgentsOfSQL, ownerID)
	}
	if err != nil {
		return nil, s.dbErr(err, "list agents")
	}
	return collect(s, rows, "list agents", s.scanAgent)
}

// UpdateAgentMeta writes a's Description and Card, and its UpdatedAt when
// that is set; the name, owner and active version are left alone.
func (s *Store) UpdateAgentMeta(ctx context.Context, a berth.Agent) error {
	var updated any
	if !a.UpdatedAt.IsZero() {
		updated = s.d.Time(a.UpdatedAt)
	}
	return s.execOne(ctx, s.write, "update agent", "agent "+a.ID,
		`UPDATE agents SET description = $1, card = $2, updated_at = COALESCE($3, updated_at) WHERE id = $4`,
		a.Description, rawArg(a.Card), updated, a.ID)
}

// DeleteAgent deletes the agent; its versions, builds and deployments go
// with it (ON DELETE CASCADE), its operations stay (the audit trail). If op
// is not nil it is closed in the same transaction, fenced as in Commit: op
// must belong to the agent (CodeInvalid otherwise) and hold its guard
// (CodeConflict otherwise, deleting nothing). The agent's row is locked
// first, so no operation can begin on it until the delete commits.
func (s *Store) DeleteAgent(ctx context.Context, id string, op *berth.Operation) error {
	if op != nil && op.AgentID != id {
		return berth.Errorf(berth.CodeInvalid, "operation %s is not an operation of agent %s", op.ID, id)
	}
	return s.inTx(ctx, "delete agent", func(tx *sql.Tx) error {
		l, err := s.lockAgent(ctx, tx, id)
		if err != nil {
			return err
		}
		if op != nil {
			// Fencing, as in Commit: an operation that lost the guard must
			// not delete what its successor is working on.
			if l.holder != op.ID {
				return notHolder(op.ID, id)
			}
			if err := s.closeOp(ctx, tx, "delete agent", id, op); err != nil {
				return err
			}
		}
		// The guard goes with the row.
		return s.execOne(ctx, tx, "delete agent", "agent "+id, `DELETE FROM agents WHERE id = $1`, id)
	})
}

// agentHasOpsSQL says whether any operation was ever recorded for an agent;
// operations_agent_started serves it.
const agentHasOpsSQL = `SELECT EXISTS (SELECT 1 FROM operations WHERE agent_id = $1)`

// DeleteUnusedAgent deletes the agent only if no operation was ever
// recorded for it: an agent whose upload never began. It returns
// CodeNotFound if there is no such agent and CodeConflict, deleting
// nothing, if it has operations.
func (s *Store) DeleteUnusedAgent(ctx context.Context, id string) error {
	return s.inTx(ctx, "delete unused agent", func(tx *sql.Tx) error {
		// Lock the agent's row first, as BeginOperation does before it
		// records an operation: the check below then sees every operation
		// committed before the lock, and none can begin until the delete
		// commits. (One DELETE ... WHERE NOT EXISTS would not do on
		// PostgreSQL: its subquery reads a snapshot taken before waiting
		// for a concurrent BeginOperation, and the cascade would then
		// delete the operation that BeginOperation committed.)
		if _, err := s.lockAgent(ctx, tx, id); err != nil {
			return err
		}
		var used bool
		if err := tx.QueryRowContext(ctx, agentHasOpsSQL, id).Scan(&used); err != nil {
			return err
		}
		if used {
			return berth.Errorf(berth.CodeConflict, "agent %s has operations; it is in use", id)
		}
		return s.execOne(ctx, tx, "delete unused agent", "agent "+id, `DELETE FROM agents WHERE id = $1`, id)
	})
}
