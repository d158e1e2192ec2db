package berth

import (
	"errors"
	"fmt"
	"syscall"
)

// Code classifies an Error. The HTTP layer maps each code to one status.
type Code string

// Error codes.
const (
	CodeInvalid             Code = "invalid"
	CodeInvalidBody         Code = "invalid_body"
	CodeUnauthorized        Code = "unauthorized"
	CodeForbidden           Code = "forbidden"
	CodeNotFound            Code = "not_found"
	CodeMethodNotAllowed    Code = "method_not_allowed"
	CodeConflict            Code = "conflict"
	CodeNoRollbackTarget    Code = "no_rollback_target"
	CodeOperationInProgress Code = "operation_in_progress"
	CodeTargetUnhealthy     Code = "target_unhealthy"
	CodeBuildFailed         Code = "build_failed"
	CodeDeployFailed        Code = "deploy_failed"
	CodeTooLarge            Code = "too_large"
	CodeInsufficientStorage Code = "insufficient_storage"
	CodeUnavailable         Code = "unavailable"
	CodeInternal            Code = "internal"
)

// Error is Berth's one error type. Message is safe to show to API callers.
type Error struct {
	Code    Code
	Message string
	// OperationID names the operation the error is about, e.g. the one in
	// progress for CodeOperationInProgress or the failed attempt.
	OperationID string
	// Err is the underlying cause, for logs; never shown to callers.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with code c and a formatted message.
func Errorf(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, or
// CodeInternal if there is none (and "" for a nil err).
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrorMessage returns the caller-safe message of err.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// StorageError classifies a failure to write the data directory: a full
// disk (or quota) is CodeInsufficientStorage, anything else internal.
func StorageError(err error) *Error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return &Error{Code: CodeInsufficientStorage, Message: "the server's data directory is full", Err: err}
	}
	return &Error{Code: CodeInternal, Message: "storage error", Err: err}
}
