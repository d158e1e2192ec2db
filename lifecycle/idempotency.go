package lifecycle

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/artifact"
)

// An Idempotency-Key names one request. A later request with the same key
// on the same agent is a repeat, answered with the first one's result and
// doing nothing again, only if it is the same request: the same kind of
// operation, from the same caller, asking for the same thing. Anything else
// reusing the key is refused with a conflict rather than answered with
// another request's result (which would tell a caller "rolled back to
// 1.0.0" when it asked for 1.1.0, and do nothing).

// requestHash fingerprints what a request of kind asks for: a hex SHA-256
// over its parts, each length-prefixed so that ("ab", "c") and ("a", "bc")
// differ.
func requestHash(kind berth.OperationKind, parts ...string) string {
	h := sha256.New()
	var n [8]byte
	for _, p := range append([]string{string(kind)}, parts...) {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// rollbackHash is the fingerprint of a rollback request: the target as
// asked for (not as resolved: a repeat of a default rollback resolves to
// another version once the first one ran), the reason and cleanup_failed.
// Wait and dry-run are how the answer is delivered, not what is asked.
func rollbackHash(req RollbackRequest) string {
	return requestHash(cmp.Or(req.kind, berth.OpRollback), req.Target, req.Reason, strconv.FormatBool(req.CleanupFailed))
}

// deployHash is the fingerprint of an upload or update: the package (by
// digest) and every option that changes what is deployed.
func deployHash(kind berth.OperationKind, req DeployRequest, pkg artifact.Package) string {
	desc := "\x00unset"
	if req.Description != nil {
		desc = "=" + *req.Description
	}
	return requestHash(kind, pkg.Digest, req.AgentName, req.Version, string(req.Strategy), strconv.FormatBool(req.CleanupOld), desc)
}

// sameRequest reports, as a CodeConflict error naming prev, why op (begun
// with prev's Idempotency-Key) is not a repeat of prev, or nil if it is.
// Operations recorded without a fingerprint (before there were any) are
// compared by kind and caller alone.
func sameRequest(prev, op berth.Operation) error {
	var why string
	switch {
	case prev.Kind != op.Kind:
		why = fmt.Sprintf("was used for a %s (operation %s), not a %s", prev.Kind, prev.ID, op.Kind)
	case prev.Actor != op.Actor:
		why = fmt.Sprintf("was used by another caller (operation %s)", prev.ID)
	case prev.RequestHash != "" && op.RequestHash != "" && prev.RequestHash != op.RequestHash:
		why = fmt.Sprintf("was used for a different %s request (operation %s); a repeat must send the same request", prev.Kind, prev.ID)
	default:
		return nil
	}
	return &berth.Error{Code: berth.CodeConflict, OperationID: prev.ID,
		Message: fmt.Sprintf("Idempotency-Key %q %s; use a new key for a new request", op.IdempotencyKey, why)}
}
