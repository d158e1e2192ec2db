// Package http serves Berth's HTTP API (compatible with the Nasiko
// platform's lifecycle API) and provides the Go client the CLI uses.
package http

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/berthhq/berth"
)

// statusOf is the one table mapping error codes to HTTP statuses.
var statusOf = map[berth.Code]int{
	berth.CodeInvalid:             http.StatusBadRequest,
	berth.CodeInvalidBody:         http.StatusUnprocessableEntity,
	berth.CodeUnauthorized:        http.StatusUnauthorized,
	berth.CodeForbidden:           http.StatusForbidden,
	berth.CodeNotFound:            http.StatusNotFound,
	berth.CodeMethodNotAllowed:    http.StatusMethodNotAllowed,
	berth.CodeConflict:            http.StatusConflict,
	berth.CodeNoRollbackTarget:    http.StatusConflict,
	berth.CodeOperationInProgress: http.StatusConflict,
	berth.CodeTargetUnhealthy:     http.StatusConflict,
	berth.CodeBuildFailed:         http.StatusUnprocessableEntity,
	berth.CodeDeployFailed:        http.StatusConflict,
	berth.CodeTooLarge:            http.StatusRequestEntityTooLarge,
	berth.CodeInsufficientStorage: http.StatusInsufficientStorage,
	berth.CodeUnavailable:         http.StatusServiceUnavailable,
	berth.CodeInternal:            http.StatusInternalServerError,
}

// StatusOf returns the HTTP status for an error code.
func StatusOf(c berth.Code) int {
	if s, ok := statusOf[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// ErrorBody is the body of every error response. Detail repeats Message for
// clients written against FastAPI.
type ErrorBody struct {
	StatusCode  int        `json:"status_code"`
	Message     string     `json:"message"`
	Detail      string     `json:"detail"`
	Code        berth.Code `json:"code"`
	OperationID string     `json:"operation_id,omitempty"`
}

// envelope is the success shape: {"data": …, "status_code": N, "message": "…"}.
type envelope struct {
	Data       any    `json:"data"`
	StatusCode int    `json:"status_code"`
	Message    string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		http.Error(w, `{"status_code":500,"message":"encode response","detail":"encode response","code":"internal"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func writeData(w http.ResponseWriter, status int, message string, data any) {
	writeJSON(w, status, envelope{Data: data, StatusCode: status, Message: message})
}

// writeError writes err in the error shape. Internal errors are logged and
// shown to the caller without their cause.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := berth.ErrorCode(err)
	status := StatusOf(code)
	body := ErrorBody{StatusCode: status, Code: code, Message: berth.ErrorMessage(err)}
	var be *berth.Error
	if errors.As(err, &be) {
		body.OperationID = be.OperationID
	}
	switch {
	case code == berth.CodeUnavailable || code == berth.CodeInsufficientStorage:
		// Conditions of the environment (a locked database, a full disk,
		// no free port) that clear up by themselves: worth a warning,
		// not an error page for a bug.
		s.log.Warn("request refused for now", "method", r.Method, "path", r.URL.Path, "code", code, "err", err)
	case status >= 500:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "code", code, "err", err)
	}
	body.Detail = body.Message
	if code == berth.CodeUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="berth"`)
	}
	writeJSON(w, status, body)
}

// maxJSONBody bounds JSON request bodies.
const maxJSONBody = 1 << 20

// decodeJSON strictly decodes a JSON object body into v: unknown fields,
// wrong types, trailing data and oversize bodies are refused with
// CodeInvalidBody (CodeTooLarge for size). An empty body leaves v as it is
// when allowEmpty.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxJSONBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return berth.Errorf(berth.CodeTooLarge, "request body is larger than %d bytes", maxJSONBody)
		}
		return berth.Errorf(berth.CodeInvalidBody, "read request body: %v", err)
	}
	return DecodeStrict(body, v, allowEmpty)
}

// DecodeStrict decodes one JSON object from body into v, refusing unknown
// fields, wrong types and trailing data with CodeInvalidBody.
func DecodeStrict(body []byte, v any, allowEmpty bool) error {
	if len(bytes.TrimSpace(body)) == 0 {
		if allowEmpty {
			return nil
		}
		return berth.Errorf(berth.CodeInvalidBody, "request body is empty; a JSON object is required")
	}
	if trimmed := bytes.TrimSpace(body); trimmed[0] != '{' {
		return berth.Errorf(berth.CodeInvalidBody, "request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return berth.Errorf(berth.CodeInvalidBody, "invalid JSON body: %s", describeJSONError(err))
	}
	if dec.More() {
		return berth.Errorf(berth.CodeInvalidBody, "invalid JSON body: unexpected data after the object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return berth.Errorf(berth.CodeInvalidBody, "invalid JSON body: unexpected data after the object")
	}
	return nil
}

func describeJSONError(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s, not %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "unexpected end of JSON"
	}
	return err.Error()
}

func jsonKind(k string) string {
	switch k {
	case "bool":
		return "a boolean"
	case "string":
		return "a string"
	case "int", "int64", "float64":
		return "a number"
	case "slice":
		return "an array"
	}
	return "a " + k
}
