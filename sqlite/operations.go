package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berthhq/berth"
)

const opCols = `id, agent_id, kind, status, actor, reason, from_version, to_version, error_code, error_message,
	idempotency_key, result, result_status, started_at, finished_at, duration_ms`

// opColsO is opCols qualified with the alias o, for joins.
var opColsO = "o." + strings.ReplaceAll(opCols, ", ", ", o.")

func scanOp(sc interface{ Scan(...any) error }) (berth.Operation, error) {
	var op berth.Operation
	err := sc.Scan(&op.ID, &op.AgentID, &op.Kind, &op.Status, &op.Actor, &op.Reason, &op.FromVersion,
		&op.ToVersion, &op.ErrorCode, &op.Error, nullStringCol{&op.IdempotencyKey}, rawCol{&op.Result},
		&op.ResultStatus, timeCol{&op.StartedAt}, nullTimeCol{&op.FinishedAt}, &op.DurationMS)
	return op, err
}

// now is the store's clock for lease checks and interruption times, at the
// precision the store keeps.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// BeginOperation records op as running and takes the agent's operation
// guard until leaseUntil, in one transaction; see berth.Store. A zero
// op.StartedAt is set to now. The guard counts as held while its lease ends
// after the store's clock.
func (s *Store) BeginOperation(ctx context.Context, op berth.Operation, leaseUntil, since time.Time) (berth.Operation, bool, error) {
	if op.StartedAt.IsZero() {
		op.StartedAt = now()
	}
	op.Status = berth.OpRunning
	var (
		existing berth.Operation
		found    bool
	)
	err := s.inTx(ctx, "begin operation", func(tx *sql.Tx) error {
		// IMMEDIATE already holds the write lock, so nothing read below can
		// change before this transaction commits.
		var holder string
		var holderUntil *time.Time
		err := tx.QueryRowContext(ctx, `SELECT lock_op_id, lock_until FROM agents WHERE id = $1`, op.AgentID).
			Scan(nullStringCol{&holder}, nullTimeCol{&holderUntil})
		if err != nil {
			return notFound(err, "begin operation", "agent %s not found", op.AgentID)
		}

		// A repeat of a request answers with the first attempt, even while
		// that attempt still holds the guard.
		if op.IdempotencyKey != "" {
			prev, err := scanOp(tx.QueryRowContext(ctx, `SELECT `+opCols+` FROM operations
				WHERE agent_id = $1 AND idempotency_key = $2 AND started_at > $3
				ORDER BY started_at DESC LIMIT 1`, op.AgentID, op.IdempotencyKey, encTime(since)))
			switch {
			case err == nil:
				existing, found = prev, true
				return nil
			case !errors.Is(err, sql.ErrNoRows):
				return err
			}
		}

		if holder != "" && holderUntil != nil && holderUntil.After(time.Now()) {
			var kind string
			// The kind only makes the message friendlier; a holder row that
			// is somehow gone must not hide the conflict.
			if err := tx.QueryRowContext(ctx, `SELECT kind FROM operations WHERE id = $1`, holder).Scan(&kind); err != nil {
				if !errors.Is(err, sql.ErrNoRows) {
					return err
				}
				kind = "unknown"
			}
			return &berth.Error{
				Code:        berth.CodeOperationInProgress,
				OperationID: holder,
				Message:     fmt.Sprintf("operation %s (%s) is in progress on this agent", holder, kind),
			}
		}

		if _, err := tx.ExecContext(ctx, `INSERT INTO operations (`+opCols+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
			op.ID, op.AgentID, string(op.Kind), string(op.Status), op.Actor, op.Reason, op.FromVersion, op.ToVersion,
			string(op.ErrorCode), op.Error, encNullString(op.IdempotencyKey), encRaw(op.Result), op.ResultStatus,
			encTime(op.StartedAt), encNullTime(op.FinishedAt), op.DurationMS); err != nil {
			return conflict(dbErr(err, "begin operation"), "operation %s already exists", op.ID)
		}
		_, err = tx.ExecContext(ctx, `UPDATE agents SET lock_op_id = $1, lock_until = $2 WHERE id = $3`,
			op.ID, encTime(leaseUntil), op.AgentID)
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
func (s *Store) RenewLease(ctx context.Context, agentID, opID string, leaseUntil time.Time) error {
	return s.inTx(ctx, "renew lease", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE agents SET lock_until = $1 WHERE id = $2 AND lock_op_id = $3`,
			encTime(leaseUntil), agentID, opID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM agents WHERE id = $1`, agentID).Scan(&one); err != nil {
			return notFound(err, "renew lease", "agent %s not found", agentID)
		}
		return &berth.Error{
			Code:        berth.CodeConflict,
			OperationID: opID,
			Message:     fmt.Sprintf("operation %s no longer holds the operation guard of agent %s", opID, agentID),
		}
	})
}

// Commit applies c in one transaction; see berth.Commit. The agent is
// c.AgentID (or, when that is empty, c.Operation.AgentID). Every version,
// deployment and the operation must belong to that agent and exist
// (CodeNotFound otherwise); SetActive must name one of its versions or be
// "" to clear the pointer. The agent's guard is released only if
// c.Operation still holds it. On any error nothing is written.
func (s *Store) Commit(ctx context.Context, c berth.Commit) error {
	agentID := c.AgentID
	if agentID == "" && c.Operation != nil {
		agentID = c.Operation.AgentID
	}
	if agentID == "" {
		return berth.Errorf(berth.CodeInvalid, "commit names no agent")
	}
	// Encode before taking the write lock.
	rollbacks := make([]any, len(c.Versions))
	for i, vc := range c.Versions {
		var err error
		if rollbacks[i], err = encJSON(vc.Rollback); err != nil {
			return &berth.Error{Code: berth.CodeInvalid, Message: "rollback info cannot be encoded", Err: err}
		}
	}

	return s.inTx(ctx, "commit", func(tx *sql.Tx) error {
		// Fencing: an operation that no longer holds the guard (its lease
		// expired and another took over, or it was interrupted) must not
		// write anything, however late it finishes.
		if op := c.Operation; op != nil {
			var holder string
			err := tx.QueryRowContext(ctx, `SELECT lock_op_id FROM agents WHERE id = $1`, agentID).Scan(nullStringCol{&holder})
			if err != nil {
				return notFound(err, "commit", "agent %s not found", agentID)
			}
			if holder != op.ID {
				return &berth.Error{Code: berth.CodeConflict, OperationID: op.ID,
					Message: fmt.Sprintf("operation %s no longer holds the operation guard of agent %s", op.ID, agentID)}
			}
		}
		if c.SetActive != nil {
			if err := setActive(ctx, tx, agentID, *c.SetActive, c.ExpectActive); err != nil {
				return err
			}
		}
		for i, vc := range c.Versions {
			// An empty State leaves the state as it is, like a nil
			// ActivatedAt or Rollback.
			err := execOne(ctx, tx, "commit", fmt.Sprintf("version %s of agent %s", vc.VersionID, agentID),
				`UPDATE versions SET state = COALESCE(NULLIF($1, ''), state),
					activated_at = COALESCE($2, activated_at), rollback_info = COALESCE($3, rollback_info)
				WHERE id = $4 AND agent_id = $5`,
				string(vc.State), encNullTime(vc.ActivatedAt), rollbacks[i], vc.VersionID, agentID)
			if err != nil {
				return err
			}
		}
		for _, d := range c.Deployments {
			err := execOne(ctx, tx, "commit", fmt.Sprintf("deployment %s of agent %s", d.ID, agentID),
				updateDeploymentSQL+` WHERE id = $8 AND agent_id = $9`, append(updateDeploymentArgs(d), d.ID, agentID)...)
			if err != nil {
				return err
			}
		}
		if op := c.Operation; op != nil {
			err := execOne(ctx, tx, "commit", fmt.Sprintf("operation %s of agent %s", op.ID, agentID),
				`UPDATE operations SET status = $1, reason = $2, from_version = $3, to_version = $4,
					error_code = $5, error_message = $6, result = $7, result_status = $8,
					finished_at = $9, duration_ms = $10
				WHERE id = $11 AND agent_id = $12`,
				string(op.Status), op.Reason, op.FromVersion, op.ToVersion, string(op.ErrorCode), op.Error,
				encRaw(op.Result), op.ResultStatus, encNullTime(op.FinishedAt), op.DurationMS, op.ID, agentID)
			if err != nil {
				return err
			}
			// The fence above made sure op holds the guard.
			if _, err := tx.ExecContext(ctx, `UPDATE agents SET lock_op_id = NULL, lock_until = NULL
				WHERE id = $1 AND lock_op_id = $2`, agentID, op.ID); err != nil {
				return err
			}
		}
		return nil
	})
}

// setActive switches the agent's active version to target ("" clears it)
// if it is still expect, within tx.
func setActive(ctx context.Context, tx *sql.Tx, agentID, target, expect string) error {
	var current string
	err := tx.QueryRowContext(ctx, `SELECT active_version_id FROM agents WHERE id = $1`, agentID).
		Scan(nullStringCol{&current})
	if err != nil {
		return notFound(err, "commit", "agent %s not found", agentID)
	}
	if current != expect {
		return berth.Errorf(berth.CodeConflict,
			"the active version of agent %s changed concurrently (expected %q, found %q)", agentID, expect, current)
	}
	if target != "" {
		var owner string
		err := tx.QueryRowContext(ctx, `SELECT agent_id FROM versions WHERE id = $1`, target).Scan(&owner)
		if err != nil {
			return notFound(err, "commit", "version %s not found", target)
		}
		if owner != agentID {
			return berth.Errorf(berth.CodeInvalid, "version %s does not belong to agent %s", target, agentID)
		}
	}
	_, err = tx.ExecContext(ctx, `UPDATE agents SET active_version_id = $1 WHERE id = $2`, encNullString(target), agentID)
	return err
}

// OperationByID returns the operation with the given ID.
func (s *Store) OperationByID(ctx context.Context, id string) (berth.Operation, error) {
	op, err := scanOp(s.read.QueryRowContext(ctx, `SELECT `+opCols+` FROM operations WHERE id = $1`, id))
	if err != nil {
		return berth.Operation{}, notFound(err, "read operation", "operation %s not found", id)
	}
	return op, nil
}

// ListOperations lists up to limit (default 50 when limit <= 0) of the
// agent's operations, newest first.
func (s *Store) ListOperations(ctx context.Context, agentID string, limit int) ([]berth.Operation, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+opCols+` FROM operations
		WHERE agent_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2`, agentID, pageSize(limit))
	if err != nil {
		return nil, dbErr(err, "list operations")
	}
	return collect(rows, "list operations", scanOp)
}

// InterruptOperations closes running operations as interrupted (finished
// now) and releases their guards, in one transaction, and returns them
// oldest first.
//
// A zero leaseExpiredBefore closes every running operation and releases
// every guard: the start-up of the only server, when nothing can still be
// running. Otherwise it closes the running operations whose guard lease
// ended before leaseExpiredBefore, and those that no longer hold their
// agent's guard at all (taken over after their lease expired), and releases
// the guards whose lease ended before leaseExpiredBefore.
func (s *Store) InterruptOperations(ctx context.Context, leaseExpiredBefore time.Time) ([]berth.Operation, error) {
	var closed []berth.Operation
	err := s.inTx(ctx, "interrupt operations", func(tx *sql.Tx) error {
		var (
			rows *sql.Rows
			err  error
		)
		all := leaseExpiredBefore.IsZero()
		if all {
			rows, err = tx.QueryContext(ctx, `SELECT `+opCols+` FROM operations
				WHERE status = 'running' ORDER BY started_at, id`)
		} else {
			rows, err = tx.QueryContext(ctx, `SELECT `+opColsO+` FROM operations o JOIN agents a ON a.id = o.agent_id
				WHERE o.status = 'running'
					AND (a.lock_op_id IS NULL OR a.lock_op_id <> o.id OR a.lock_until IS NULL OR a.lock_until < $1)
				ORDER BY o.started_at, o.id`, encTime(leaseExpiredBefore))
		}
		if err != nil {
			return err
		}
		if closed, err = collect(rows, "interrupt operations", scanOp); err != nil {
			return err
		}
		at := now()
		for i := range closed {
			op := &closed[i]
			op.Status = berth.OpInterrupted
			op.FinishedAt = &at
			op.DurationMS = max(0, at.Sub(op.StartedAt).Milliseconds())
			if _, err := tx.ExecContext(ctx, `UPDATE operations SET status = $1, finished_at = $2, duration_ms = $3
				WHERE id = $4`, string(op.Status), encTime(at), op.DurationMS, op.ID); err != nil {
				return err
			}
		}
		if all {
			_, err = tx.ExecContext(ctx, `UPDATE agents SET lock_op_id = NULL, lock_until = NULL
				WHERE lock_op_id IS NOT NULL`)
		} else {
			_, err = tx.ExecContext(ctx, `UPDATE agents SET lock_op_id = NULL, lock_until = NULL
				WHERE lock_op_id IS NOT NULL AND lock_until < $1`, encTime(leaseExpiredBefore))
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return closed, nil
}

// DeleteIdempotencyKeysBefore forgets the idempotency keys of operations
// started before t; the operations themselves stay.
func (s *Store) DeleteIdempotencyKeysBefore(ctx context.Context, t time.Time) error {
	_, err := s.write.ExecContext(ctx, `UPDATE operations SET idempotency_key = NULL
		WHERE idempotency_key IS NOT NULL AND started_at < $1`, encTime(t))
	return dbErr(err, "delete idempotency keys")
}
