package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/berthhq/berth"
)

// apiError turns an error from the Kubernetes API into a *berth.Error whose
// message says what Berth was doing. The API server's own text goes into
// the message only for validation errors, which are about the version's own
// config (an env var name the cluster rejects, say); everything else is
// kept in Err for the logs.
func (r *Runtime) apiError(err error, format string, args ...any) *berth.Error {
	msg := fmt.Sprintf(format, args...)
	e := &berth.Error{Message: msg, Err: err}
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		e.Code = berth.CodeUnavailable
	case apierrors.IsNotFound(err):
		e.Code = berth.CodeNotFound
	case apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err):
		e.Code = berth.CodeConflict
	case apierrors.IsInvalid(err) || apierrors.IsBadRequest(err):
		e.Code = berth.CodeDeployFailed
		var se apierrors.APIStatus
		if errors.As(err, &se) && se.Status().Message != "" {
			e.Message = msg + ": " + se.Status().Message
		}
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		e.Code = berth.CodeInternal
		e.Message = msg + fmt.Sprintf(": the Kubernetes API refused; check Berth's access to namespace %s", r.opts.Namespace)
	default:
		// Timeouts, throttling, an unreachable API server: try again later.
		e.Code = berth.CodeUnavailable
	}
	return e
}

// retriable reports whether a failed API call may succeed if repeated.
func retriable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	switch {
	case apierrors.IsConflict(err), apierrors.IsServerTimeout(err), apierrors.IsTimeout(err),
		apierrors.IsTooManyRequests(err), apierrors.IsServiceUnavailable(err), apierrors.IsInternalError(err):
		return true
	case apierrors.IsNotFound(err), apierrors.IsAlreadyExists(err), apierrors.IsInvalid(err), apierrors.IsBadRequest(err),
		apierrors.IsForbidden(err), apierrors.IsUnauthorized(err), apierrors.IsMethodNotSupported(err):
		return false
	}
	// Not an API status at all: a network error on the way to the server
	// is worth another try; Berth's own verdicts are not.
	var se apierrors.APIStatus
	var be *berth.Error
	if errors.As(err, &se) || errors.As(err, &be) {
		return false
	}
	var ne net.Error
	var ue *url.Error
	return errors.As(err, &ne) || errors.As(err, &ue) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
