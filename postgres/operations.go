package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/berthhq/berth"
	"github.com/jackc/pgx/v5"
)

const opCols = `id, agent_id, kind, status, actor, reason, from_version, to_version, error_code, error_message,
	idempotency_key, result, result_status, started_at, finished_at, duration_ms`

func scanOp(row pgx.Row) (berth.Operation, error) {
	var op berth.Operation
	err := row.Scan(&op.ID, &op.AgentID, &op.Kind, &op.Status, &op.Actor, &op.Reason, &op.FromVersion,
		&op.ToVersion, &op.ErrorCode, &op.Error, nullStringCol{&op.IdempotencyKey}, rawCol{&op.Result},
		&op.ResultStatus, &op.StartedAt, &op.FinishedAt, &op.DurationMS)
	return op, err
}

// Leases are kept on the database's clock. Callers pass a lease end on
// their own clock (leaseUntil, leaseExpiredBefore); the store turns it into
// the time left, measured on the caller's clock just before the statement
// runs, and adds that to the database's clock. Replicas whose clocks are
// off by minutes therefore still agree on whether a lease has ended: only
// durations cross machines, and every comparison is against the one clock
// they share.
//
// The database's clock is statement_timestamp(), not now(): now() is frozen
// at the start of the transaction, and a transaction may wait on an agent's
// row lock for a while before it sets a lease. Within one statement the
// clock stands still, which lets an index serve "lease ended before" (the
// ever-moving clock_timestamp() could not), and errs only on the safe side:
// a statement that waited for a row lock judges that row's lease by the
// time it started, so sees it held a little longer.

// leaseExpr is the SQL for a lease end, given the seconds left as $n.
func leaseExpr(n int) string {
	return fmt.Sprintf("statement_timestamp() + make_interval(secs => $%d)", n)
}

// secondsLeft is how long after now, on this process's clock, t is (negative
// when t is past), in the seconds leaseExpr takes. The zero time saturates
// at about -292 years, which is still a valid timestamp.
func secondsLeft(t time.Time) float64 { return time.Until(t).Seconds() }

// agentLock reads the agent's guard and active version and locks its row
// until the transaction ends, so the agent's guard, its active pointer and
// what depends on them (the fence, ExpectActive, the one-holder rule)
// change one transaction at a time, across every replica. The lock is FOR
// NO KEY UPDATE rather than FOR UPDATE: it conflicts with itself and with
// updates of the row, but not with the key-share locks that inserting a
// version, build or deployment of the agent takes, which need not wait.
type agentLock struct {
	holder  string // the operation holding the guard, "" when free
	held    bool   // holder's lease has not ended on the database's clock
	current string // the active version ID, "" when none
}

func lockAgent(ctx context.Context, tx pgx.Tx, agentID string) (agentLock, error) {
	var l agentLock
	err := tx.QueryRow(ctx, `SELECT lock_op_id, COALESCE(lock_until > statement_timestamp(), false), active_version_id
		FROM agents WHERE id = $1 FOR NO KEY UPDATE`, agentID).
		Scan(nullStringCol{&l.holder}, &l.held, nullStringCol{&l.current})
	if err != nil {
		return agentLock{}, notFound(err, "lock agent", "agent %s not found", agentID)
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
// op.StartedAt is set to now. The guard counts as held while its lease has
// not ended on the database's clock.
func (s *Store) BeginOperation(ctx context.Context, op berth.Operation, leaseUntil, since time.Time) (berth.Operation, bool, error) {
	if op.StartedAt.IsZero() {
		op.StartedAt = now()
	}
	op.Status = berth.OpRunning
	var (
		existing berth.Operation
		found    bool
	)
	err := s.inTx(ctx, "begin operation", func(tx pgx.Tx) error {
		// Once the row is locked, no other transaction can take the guard
		// or begin an operation on this agent until this one ends, and each
		// statement below sees what the previous holder committed.
		l, err := lockAgent(ctx, tx, op.AgentID)
		if err != nil {
			return err
		}

		// A repeat of a request answers with the first attempt, even while
		// that attempt still holds the guard.
		if op.IdempotencyKey != "" {
			prev, err := scanOp(tx.QueryRow(ctx, `SELECT `+opCols+` FROM operations
				WHERE agent_id = $1 AND idempotency_key = $2 AND started_at > $3
				ORDER BY started_at DESC LIMIT 1`, op.AgentID, op.IdempotencyKey, ts(since)))
			switch {
			case err == nil:
				existing, found = prev, true
				return nil
			case !errors.Is(err, pgx.ErrNoRows):
				return err
			}
		}

		if l.holder != "" && l.held {
			var kind string
			// The kind only makes the message friendlier; a holder row that
			// is somehow gone must not hide the conflict.
			if err := tx.QueryRow(ctx, `SELECT kind FROM operations WHERE id = $1`, l.holder).Scan(&kind); err != nil {
				if !errors.Is(err, pgx.ErrNoRows) {
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

		if _, err := tx.Exec(ctx, `INSERT INTO operations (`+opCols+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
			op.ID, op.AgentID, string(op.Kind), string(op.Status), op.Actor, op.Reason, op.FromVersion, op.ToVersion,
			string(op.ErrorCode), cleanText(op.Error), nullString(op.IdempotencyKey), rawArg(op.Result), op.ResultStatus,
			ts(op.StartedAt), nullTS(op.FinishedAt), op.DurationMS); err != nil {
			return conflict(dbErr(err, "begin operation"), "operation %s already exists", op.ID)
		}
		// The time left is measured now, after any wait for the row lock.
		_, err = tx.Exec(ctx, `UPDATE agents SET lock_op_id = $1, lock_until = `+leaseExpr(2)+` WHERE id = $3`,
			op.ID, secondsLeft(leaseUntil), op.AgentID)
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
// Like the SQLite store it renews a lease that has ended as long as nobody
// took the guard over (or interrupted opID) meanwhile.
func (s *Store) RenewLease(ctx context.Context, agentID, opID string, leaseUntil time.Time) error {
	return s.inTx(ctx, "renew lease", func(tx pgx.Tx) error {
		l, err := lockAgent(ctx, tx, agentID)
		if err != nil {
			return err
		}
		if l.holder != opID {
			return notHolder(opID, agentID)
		}
		_, err = tx.Exec(ctx, `UPDATE agents SET lock_until = `+leaseExpr(1)+` WHERE id = $2`,
			secondsLeft(leaseUntil), agentID)
		return err
	})
}

// Commit applies c in one transaction; see berth.Commit. The agent is
// c.AgentID (or, when that is empty, c.Operation.AgentID); its row is locked
// first, so the fence and the ExpectActive check hold until the commit
// ends. Every version, deployment and the operation must belong to that
// agent and exist (CodeNotFound otherwise); SetActive must name one of its
// versions or be "" to clear the pointer. The agent's guard is released
// only if c.Operation still holds it. On any error nothing is written.
func (s *Store) Commit(ctx context.Context, c berth.Commit) error {
	agentID := c.AgentID
	if agentID == "" && c.Operation != nil {
		agentID = c.Operation.AgentID
	}
	if agentID == "" {
		return berth.Errorf(berth.CodeInvalid, "commit names no agent")
	}
	// Encode before taking the row lock.
	rollbacks := make([]any, len(c.Versions))
	for i, vc := range c.Versions {
		var err error
		if rollbacks[i], err = jsonArg(vc.Rollback); err != nil {
			return &berth.Error{Code: berth.CodeInvalid, Message: "rollback info cannot be encoded", Err: err}
		}
	}

	return s.inTx(ctx, "commit", func(tx pgx.Tx) error {
		l, err := lockAgent(ctx, tx, agentID)
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
			if err := setActive(ctx, tx, agentID, *c.SetActive, c.ExpectActive, l.current); err != nil {
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
				string(vc.State), nullTS(vc.ActivatedAt), rollbacks[i], vc.VersionID, agentID)
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
				string(op.Status), op.Reason, op.FromVersion, op.ToVersion, string(op.ErrorCode), cleanText(op.Error),
				rawArg(op.Result), op.ResultStatus, nullTS(op.FinishedAt), op.DurationMS, op.ID, agentID)
			if err != nil {
				return err
			}
			// The fence above made sure op holds the guard, and the row
			// lock that nobody took it since.
			if _, err := tx.Exec(ctx, `UPDATE agents SET lock_op_id = NULL, lock_until = NULL WHERE id = $1`,
				agentID); err != nil {
				return err
			}
		}
		return nil
	})
}

// setActive switches the agent's active version from current to target
// ("" clears it) if current is what the caller expects, within tx, which
// holds the agent's row lock.
func setActive(ctx context.Context, tx pgx.Tx, agentID, target, expect, current string) error {
	if current != expect {
		return berth.Errorf(berth.CodeConflict,
			"the active version of agent %s changed concurrently (expected %q, found %q)", agentID, expect, current)
	}
	if target != "" {
		var owner string
		err := tx.QueryRow(ctx, `SELECT agent_id FROM versions WHERE id = $1`, target).Scan(&owner)
		if err != nil {
			return notFound(err, "commit", "version %s not found", target)
		}
		if owner != agentID {
			return berth.Errorf(berth.CodeInvalid, "version %s does not belong to agent %s", target, agentID)
		}
	}
	_, err := tx.Exec(ctx, `UPDATE agents SET active_version_id = $1 WHERE id = $2`, nullString(target), agentID)
	return err
}

// OperationByID returns the operation with the given ID.
func (s *Store) OperationByID(ctx context.Context, id string) (berth.Operation, error) {
	op, err := scanOp(s.pool.QueryRow(ctx, `SELECT `+opCols+` FROM operations WHERE id = $1`, id))
	if err != nil {
		return berth.Operation{}, notFound(err, "read operation", "operation %s not found", id)
	}
	return op, nil
}

// ListOperations lists up to limit (default 50 when limit <= 0) of the
// agent's operations, newest first.
func (s *Store) ListOperations(ctx context.Context, agentID string, limit int) ([]berth.Operation, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+opCols+` FROM operations
		WHERE agent_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2`, agentID, pageSize(limit))
	if err != nil {
		return nil, dbErr(err, "list operations")
	}
	return collect(rows, "list operations", scanOp)
}

// interruptSet is the SQL that closes operations as interrupted at $1 and
// returns them; the caller appends the WHERE clause.
const interruptSet = `UPDATE operations o SET status = 'interrupted', finished_at = $1,
		duration_ms = GREATEST(0, trunc(EXTRACT(EPOCH FROM ($1::timestamptz - o.started_at)) * 1000))::bigint
	`

// interruptReturning returns the closed operations' columns.
var interruptReturning = ` RETURNING o.` + strings.ReplaceAll(opCols, ", ", ", o.")

// InterruptOperations closes running operations as interrupted (finished
// now) and releases their guards, in one transaction, and returns them
// oldest first.
//
// A zero leaseExpiredBefore closes every running operation and releases
// every guard: the start-up of the only server, when nothing can still be
// running. (With several replicas sharing the database that is not so: a
// replica starting up must pass a time, or it interrupts the others' work.)
// Otherwise it closes the running operations whose guard lease ended before
// leaseExpiredBefore, and those that no longer hold their agent's guard at
// all (taken over after their lease expired), and releases the guards whose
// lease ended before leaseExpiredBefore. "Before leaseExpiredBefore" is on
// the database's clock, like every lease; see leaseExpr.
//
// The guards to release are locked first (in ID order, so that two
// replicas sweeping at once cannot deadlock), so an operation renewing or
// committing at the same moment either wins, and is left alone, or is
// fenced off.
func (s *Store) InterruptOperations(ctx context.Context, leaseExpiredBefore time.Time) ([]berth.Operation, error) {
	var closed []berth.Operation
	err := s.inTx(ctx, "interrupt operations", func(tx pgx.Tx) error {
		all := leaseExpiredBefore.IsZero()
		var (
			rows pgx.Rows
			err  error
		)
		if all {
			rows, err = tx.Query(ctx, `SELECT id, lock_op_id FROM agents
				WHERE lock_op_id IS NOT NULL ORDER BY id FOR NO KEY UPDATE`)
		} else {
			rows, err = tx.Query(ctx, `SELECT id, lock_op_id FROM agents
				WHERE lock_op_id IS NOT NULL AND lock_until < `+leaseExpr(1)+`
				ORDER BY id FOR NO KEY UPDATE`, secondsLeft(leaseExpiredBefore))
		}
		if err != nil {
			return err
		}
		var agentIDs, holders []string
		var agentID, holder string
		_, err = pgx.ForEachRow(rows, []any{&agentID, &holder}, func() error {
			agentIDs, holders = append(agentIDs, agentID), append(holders, holder)
			return nil
		})
		if err != nil {
			return err
		}

		at := now()
		if all {
			rows, err = tx.Query(ctx, interruptSet+`WHERE o.status = 'running'`+interruptReturning, at)
		} else {
			// Expired holders (their agents are locked above) and
			// operations that lost the guard: neither can write again, so
			// closing them races nobody.
			rows, err = tx.Query(ctx, interruptSet+`WHERE o.status = 'running' AND (o.id = ANY($2)
				OR NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = o.agent_id AND a.lock_op_id = o.id))`+
				interruptReturning, at, holders)
		}
		if err != nil {
			return err
		}
		if closed, err = collect(rows, "interrupt operations", scanOp); err != nil {
			return err
		}
		if len(agentIDs) > 0 {
			_, err = tx.Exec(ctx, `UPDATE agents SET lock_op_id = NULL, lock_until = NULL WHERE id = ANY($1)`, agentIDs)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(closed, func(a, b berth.Operation) int {
		return cmp.Or(a.StartedAt.Compare(b.StartedAt), strings.Compare(a.ID, b.ID))
	})
	return closed, nil
}

// DeleteIdempotencyKeysBefore forgets the idempotency keys of operations
// started before t; the operations themselves stay.
func (s *Store) DeleteIdempotencyKeysBefore(ctx context.Context, t time.Time) error {
	_, err := s.pool.Exec(ctx, `UPDATE operations SET idempotency_key = NULL
		WHERE idempotency_key IS NOT NULL AND started_at < $1`, ts(t))
	return dbErr(err, "delete idempotency keys")
}
