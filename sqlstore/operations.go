package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berthhq/berth"
)

const opCols = `id, agent_id, agent_name, kind, status, actor, reason, from_version, to_version, error_code, error_message,
	idempotency_key, request_hash, result, result_status, started_at, finished_at, duration_ms`

// opColsO is opCols qualified with the alias o, for joins.
var opColsO = "o." + strings.ReplaceAll(opCols, ", ", ", o.")

// The index-served operation queries; see PlannedQueries.
const (
	idempotentOpSQL = `SELECT ` + opCols + ` FROM operations
		WHERE agent_id = $1 AND idempotency_key = $2 AND started_at > $3 ORDER BY started_at DESC LIMIT 1`
	listOpsSQL = `SELECT ` + opCols + ` FROM operations
		WHERE agent_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2`
	forgetKeysSQL = `UPDATE operations SET idempotency_key = NULL
		WHERE idempotency_key IS NOT NULL AND started_at < $1`
)

func (s *Store) scanOp(sc scanner) (berth.Operation, error) {
	var op berth.Operation
	err := s.scanOpAnd(sc, &op)
	return op, err
}

// scanOpAnd scans opCols into op, followed by the columns into extra.
func (s *Store) scanOpAnd(sc scanner, op *berth.Operation, extra ...any) error {
	return sc.Scan(append([]any{&op.ID, &op.AgentID, &op.AgentName, &op.Kind, &op.Status, &op.Actor, &op.Reason, &op.FromVersion,
		&op.ToVersion, &op.ErrorCode, &op.Error, nullStringCol{&op.IdempotencyKey}, &op.RequestHash, rawCol{&op.Result},
		&op.ResultStatus, timeCol{s.d, &op.StartedAt}, nullTimeCol{s.d, &op.FinishedAt}, &op.DurationMS}, extra...)...)
}

// Leases are kept on the dialect's lease clock (Dialect.LeaseExpr): in
// PostgreSQL the database's clock, so replicas whose clocks disagree still
// agree on whether a lease has ended; in SQLite, where one server owns the
// file, the process's clock.

// agentLock is an agent's guard and active version, read at the start of a
// write transaction with the row locked until the transaction ends
// (Dialect.LockClause), so the guard, the active pointer and what depends
// on them (the fence, ExpectActive, the one-holder rule) change one
// transaction at a time.
type agentLock struct {
	name    string // the agent's name
	holder  string // the operation holding the guard, "" when free
	held    bool   // holder's lease has not ended on the lease clock
	current string // the active version ID, "" when none
}

func (s *Store) lockAgent(ctx context.Context, tx *sql.Tx, agentID string) (agentLock, error) {
	var l agentLock
	err := tx.QueryRowContext(ctx, `SELECT name, lock_op_id, COALESCE(lock_until > `+s.d.LeaseExpr(2)+`, false), active_version_id
		FROM agents WHERE id = $1`+s.d.LockClause(), agentID, s.d.LeaseArg(time.Now())).
		Scan(&l.name, nullStringCol{&l.holder}, &l.held, nullStringCol{&l.current})
	if err != nil {
		return agentLock{}, s.notFound(err, "lock agent", "agent %s not found", agentID)
	}
	return l, nil
}

// notHolder is the CodeConflict error of an operation that no longer holds
// its agent's guard.
func notHolder(opID, agentID string) error {
	return &berth.Error{Code: berth.CodeConflict, OperationID: opID,
		Message: fmt.Sprintf("operation %s no longer holds the operation guard of agent %s", opID, agentID)}
}

// BeginOperation records op as running and takes the agent's operation
// guard until leaseUntil, in one transaction; see berth.Store. A zero
// op.StartedAt is set to now, and an empty op.AgentName to the agent's
// name. The guard counts as held while its lease has
// not ended on the lease clock.
func (s *Store) BeginOperation(ctx context.Context, op berth.Operation, leaseUntil, since time.Time) (berth.Operation, bool, error) {
	if op.StartedAt.IsZero() {
		op.StartedAt = Now()
	}
	op.Status = berth.OpRunning
	var (
		existing berth.Operation
		found    bool
	)
	err := s.inTx(ctx, "begin operation", func(tx *sql.Tx) error {
		// Once the agent is locked, no other transaction can take the guard
		// or begin an operation on it until this one ends, and each
		// statement below sees what the previous holder committed.
		l, err := s.lockAgent(ctx, tx, op.AgentID)
		if err != nil {
			return err
		}

		// A repeat of a request answers with the first attempt, even while
		// that attempt still holds the guard.
		if op.IdempotencyKey != "" {
			prev, err := s.scanOp(tx.QueryRowContext(ctx, idempotentOpSQL, op.AgentID, op.IdempotencyKey, s.d.Time(since)))
			switch {
			case err == nil:
				existing, found = prev, true
				return nil
			case !errors.Is(err, sql.ErrNoRows):
				return err
			}
		}

		if l.holder != "" && l.held {
			var kind string
			// The kind only makes the message friendlier; a holder row that
			// is somehow gone must not hide the conflict.
			if err := tx.QueryRowContext(ctx, `SELECT kind FROM operations WHERE id = $1`, l.holder).Scan(&kind); err != nil {
				if !errors.Is(err, sql.ErrNoRows) {
					return err
				}
				kind = "unknown"
			}
			return &berth.Error{
				Code:        berth.CodeOperationInProgress,
				OperationID: l.holder,
				Message:     fmt.Sprintf("operation %s (%s) is in progress on this agent", l.holder, kind),
			}
		}

		// The name is kept with the record, which outlives the agent.
		if op.AgentName == "" {
			op.AgentName = l.name
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO operations (`+opCols+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)`,
			op.ID, op.AgentID, op.AgentName, string(op.Kind), string(op.Status), op.Actor, s.d.Text(op.Reason), op.FromVersion, op.ToVersion,
			string(op.ErrorCode), s.d.Text(op.Error), nullString(op.IdempotencyKey), op.RequestHash, rawArg(op.Result), op.ResultStatus,
			s.d.Time(op.StartedAt), s.nullTime(op.FinishedAt), op.DurationMS); err != nil {
			return conflict(s.dbErr(err, "begin operation"), "operation %s already exists", op.ID)
		}
		// The lease argument is computed now, after any wait for the lock.
		_, err = tx.ExecContext(ctx, `UPDATE agents SET lock_op_id = $1, lock_until = `+s.d.LeaseExpr(2)+` WHERE id = $3`,
			op.ID, s.d.LeaseArg(leaseUntil), op.AgentID)
		return err
	})
	if err != nil {
		return berth.Operation{}, false, err
	}
	return existing, found, nil
}

// RenewLease moves the end of the guard lease held by opID to leaseUntil.
// It fails with CodeConflict (OperationID set to opID) when opID no longer
// holds the agent's guard, and CodeNotFound when the agent does not exist.
// It renews a lease that has ended as long as nobody took the guard over
// (or interrupted opID) meanwhile.
func (s *Store) RenewLease(ctx context.Context, agentID, opID string, leaseUntil time.Time) error {
	return s.inTx(ctx, "renew lease", func(tx *sql.Tx) error {
		l, err := s.lockAgent(ctx, tx, agentID)
		if err != nil {
			return err
		}
		if l.holder != opID {
			return notHolder(opID, agentID)
		}
		_, err = tx.ExecContext(ctx, `UPDATE agents SET lock_until = `+s.d.LeaseExpr(1)+` WHERE id = $2`,
			s.d.LeaseArg(leaseUntil), agentID)
		return err
	})
}

// Commit applies c in one transaction; see berth.Commit. The agent is
// c.AgentID (or, when that is empty, c.Operation.AgentID); it is locked
// first, so the fence and the ExpectActive check hold until the commit
// ends. The agent must exist, and every version, deployment and the
// operation must belong to it and exist (CodeNotFound otherwise);
// SetActive must name one of its versions or be "" to clear the pointer.
// The agent's guard is released only if c.Operation still holds it. On any
// error nothing is written.
func (s *Store) Commit(ctx context.Context, c berth.Commit) error {
	agentID := c.AgentID
	if agentID == "" && c.Operation != nil {
		agentID = c.Operation.AgentID
	}
	if agentID == "" {
		return berth.Errorf(berth.CodeInvalid, "commit names no agent")
	}
	// Encode before taking the lock.
	rollbacks := make([]any, len(c.Versions))
	for i, vc := range c.Versions {
		var err error
		if rollbacks[i], err = jsonArg(vc.Rollback); err != nil {
			return &berth.Error{Code: berth.CodeInvalid, Message: "rollback info cannot be encoded", Err: err}
		}
	}

	return s.inTx(ctx, "commit", func(tx *sql.Tx) error {
		l, err := s.lockAgent(ctx, tx, agentID)
		if err != nil {
			return err
		}
		// Fencing: an operation that no longer holds the guard (its lease
		// expired and another took over, or it was interrupted) must not
		// write anything, however late it finishes.
		if op := c.Operation; op != nil && l.holder != op.ID {
			return notHolder(op.ID, agentID)
		}
		if c.SetActive != nil {
			if err := s.setActive(ctx, tx, agentID, *c.SetActive, c.ExpectActive, l.current); err != nil {
				return err
			}
		}
		for i, vc := range c.Versions {
			// An empty State leaves the state as it is, like a nil
			// ActivatedAt or Rollback.
			err := s.execOne(ctx, tx, "commit", fmt.Sprintf("version %s of agent %s", vc.VersionID, agentID),
				`UPDATE versions SET state = COALESCE(NULLIF($1, ''), state),
					activated_at = COALESCE($2, activated_at), rollback_info = COALESCE($3, rollback_info)
				WHERE id = $4 AND agent_id = $5`,
				string(vc.State), s.nullTime(vc.ActivatedAt), rollbacks[i], vc.VersionID, agentID)
			if err != nil {
				return err
			}
		}
		for _, d := range c.Deployments {
			err := s.execOne(ctx, tx, "commit", fmt.Sprintf("deployment %s of agent %s", d.ID, agentID),
				updateDeploymentSQL+` WHERE id = $8 AND agent_id = $9`, append(s.updateDeploymentArgs(d), d.ID, agentID)...)
			if err != nil {
				return err
			}
		}
		if op := c.Operation; op != nil {
			if err := s.closeOp(ctx, tx, "commit", agentID, op); err != nil {
				return err
			}
			// The fence above made sure op holds the guard, and the lock
			// that nobody took it since.
			if _, err := tx.ExecContext(ctx, `UPDATE agents SET lock_op_id = NULL, lock_until = NULL WHERE id = $1`,
				agentID); err != nil {
				return err
			}
		}
		return nil
	})
}

// closeOp writes op's closing fields (status, versions, error, result,
// finished time, duration) within tx. op must be agentID's (CodeNotFound
// otherwise).
func (s *Store) closeOp(ctx context.Context, tx *sql.Tx, action, agentID string, op *berth.Operation) error {
	return s.execOne(ctx, tx, action, fmt.Sprintf("operation %s of agent %s", op.ID, agentID),
		`UPDATE operations SET status = $1, reason = $2, from_version = $3, to_version = $4,
			error_code = $5, error_message = $6, result = $7, result_status = $8,
			finished_at = $9, duration_ms = $10
		WHERE id = $11 AND agent_id = $12`,
		string(op.Status), s.d.Text(op.Reason), op.FromVersion, op.ToVersion, string(op.ErrorCode), s.d.Text(op.Error),
		rawArg(op.Result), op.ResultStatus, s.nullTime(op.FinishedAt), op.DurationMS, op.ID, agentID)
}

// setActive switches the agent's active version from current to target
// ("" clears it) if current is what the caller expects, within tx, which
// holds the agent's lock.
func (s *Store) setActive(ctx context.Context, tx *sql.Tx, agentID, target, expect, current string) error {
	if current != expect {
		return berth.Errorf(berth.CodeConflict,
			"the active version of agent %s changed concurrently (expected %q, found %q)", agentID, expect, current)
	}
	if target != "" {
		var owner string
		err := tx.QueryRowContext(ctx, `SELECT agent_id FROM versions WHERE id = $1`, target).Scan(&owner)
		if err != nil {
			return s.notFound(err, "commit", "version %s not found", target)
		}
		if owner != agentID {
			return berth.Errorf(berth.CodeInvalid, "version %s does not belong to agent %s", target, agentID)
		}
	}
	_, err := tx.ExecContext(ctx, `UPDATE agents SET active_version_id = $1 WHERE id = $2`, nullString(target), agentID)
	return err
}

// OperationByID returns the operation with the given ID.
func (s *Store) OperationByID(ctx context.Context, id string) (berth.Operation, error) {
	op, err := s.scanOp(s.read.QueryRowContext(ctx, `SELECT `+opCols+` FROM operations WHERE id = $1`, id))
	if err != nil {
		return berth.Operation{}, s.notFound(err, "read operation", "operation %s not found", id)
	}
	return op, nil
}

// ListOperations lists up to limit (default 50 when limit <= 0) of the
// agent's operations, newest first. It reads operations alone, so it also
// lists the trail of an agent that has been deleted.
func (s *Store) ListOperations(ctx context.Context, agentID string, limit int) ([]berth.Operation, error) {
	rows, err := s.read.QueryContext(ctx, listOpsSQL, agentID, pageSize(limit))
	if err != nil {
		return nil, s.dbErr(err, "list operations")
	}
	return collect(s, rows, "list operations", s.scanOp)
}

// InterruptOperations closes running operations as interrupted (finished
// now) and releases their guards, in one transaction, and returns them
// oldest first.
//
// A zero leaseExpiredBefore closes every running operation and releases
// every guard: the start-up of the only server, when nothing can still be
// running. (With several replicas sharing a PostgreSQL database that is not
// so: a replica starting up must pass a time, or it interrupts the others'
// work.) Otherwise it closes the running operations whose guard lease ended
// before leaseExpiredBefore, and those that no longer hold their agent's
// guard at all (taken over after their lease expired), and releases the
// guards whose lease ended before leaseExpiredBefore. "Before
// leaseExpiredBefore" is on the lease clock, like every lease.
//
// The guards to release are locked first (in ID order, so that two
// replicas sweeping at once cannot deadlock), so an operation renewing or
// committing at the same moment either wins, and is left alone, or is
// fenced off.
func (s *Store) InterruptOperations(ctx context.Context, leaseExpiredBefore time.Time) ([]berth.Operation, error) {
	var closed []berth.Operation
	err := s.inTx(ctx, "interrupt operations", func(tx *sql.Tx) error {
		guards, err := s.expiredGuards(ctx, tx, leaseExpiredBefore)
		if err != nil {
			return err
		}
		// Every running operation, with whether it holds its agent's guard.
		rows, err := tx.QueryContext(ctx, runningOpsSQL)
		if err != nil {
			return err
		}
		var holds []bool
		running, err := collect(s, rows, "interrupt operations", func(sc scanner) (berth.Operation, error) {
			var op berth.Operation
			var holder string
			err := s.scanOpAnd(sc, &op, nullStringCol{&holder})
			holds = append(holds, holder == op.ID)
			return op, err
		})
		if err != nil {
			return err
		}

		at := Now()
		// Empty, not nil, like every list the store returns.
		closed = []berth.Operation{}
		for i, op := range running {
			// Closed are the expired holders (their agents are locked
			// above) and the operations that lost the guard: neither can
			// write again, so closing them races nobody. A holder whose
			// lease is current is left running.
			if holds[i] && !guards.holders[op.ID] {
				continue
			}
			op.Status = berth.OpInterrupted
			op.FinishedAt = &at
			op.DurationMS = max(0, at.Sub(op.StartedAt).Milliseconds())
			// Another replica sweeping at the same moment may have closed
			// it first; then it is that sweep's to report.
			res, err := tx.ExecContext(ctx, `UPDATE operations SET status = $1, finished_at = $2, duration_ms = $3
				WHERE id = $4 AND status = 'running'`, string(op.Status), s.d.Time(at), op.DurationMS, op.ID)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 1 {
				closed = append(closed, op)
			}
		}
		for _, id := range guards.agents {
			if _, err := tx.ExecContext(ctx, `UPDATE agents SET lock_op_id = NULL, lock_until = NULL WHERE id = $1`,
				id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return closed, nil
}

// runningOpsSQL selects every running operation, oldest first, with its
// agent's guard holder. operations_running serves it. The join is an outer
// one because operations outlive their agent: one left running when its
// agent was deleted (a DeleteAgent without an operation) holds no guard and
// is closed like any operation that lost it.
var runningOpsSQL = `SELECT ` + opColsO + `, a.lock_op_id FROM operations o LEFT JOIN agents a ON a.id = o.agent_id
	WHERE o.status = 'running' ORDER BY o.started_at, o.id`

// expiredGuardsSQL selects and locks the guards whose lease ended before
// $1 (on the lease clock), in agent ID order.
func expiredGuardsSQL(d Dialect) string {
	return `SELECT id, lock_op_id FROM agents WHERE lock_op_id IS NOT NULL AND lock_until < ` + d.LeaseExpr(1) +
		` ORDER BY id` + d.LockClause()
}

// guardSet is the guards InterruptOperations releases.
type guardSet struct {
	agents  []string        // the agents whose guard is released, in ID order
	holders map[string]bool // the operations holding them
}

// expiredGuards locks and returns the guards whose lease ended before
// leaseExpiredBefore, or every guard when it is zero.
func (s *Store) expiredGuards(ctx context.Context, tx *sql.Tx, leaseExpiredBefore time.Time) (guardSet, error) {
	var (
		rows *sql.Rows
		err  error
	)
	if leaseExpiredBefore.IsZero() {
		rows, err = tx.QueryContext(ctx, `SELECT id, lock_op_id FROM agents WHERE lock_op_id IS NOT NULL ORDER BY id`+
			s.d.LockClause())
	} else {
		rows, err = tx.QueryContext(ctx, expiredGuardsSQL(s.d), s.d.LeaseArg(leaseExpiredBefore))
	}
	if err != nil {
		return guardSet{}, err
	}
	defer rows.Close()
	g := guardSet{holders: map[string]bool{}}
	for rows.Next() {
		var agentID, holder string
		if err := rows.Scan(&agentID, &holder); err != nil {
			return guardSet{}, err
		}
		g.agents = append(g.agents, agentID)
		g.holders[holder] = true
	}
	return g, rows.Err()
}

// DeleteIdempotencyKeysBefore forgets the idempotency keys of operations
// started before t; the operations themselves stay.
func (s *Store) DeleteIdempotencyKeysBefore(ctx context.Context, t time.Time) error {
	_, err := s.write.ExecContext(ctx, forgetKeysSQL, s.d.Time(t))
	return s.dbErr(err, "delete idempotency keys")
}
