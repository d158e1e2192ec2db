package http

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/artifact"
	"github.com/berthhq/berth/lifecycle"
)

// agentFor resolves the {agent_id} path value (an id or a name) to an agent
// the caller may manage.
func (s *Server) agentFor(r *http.Request, u berth.User, ref string) (berth.Agent, error) {
	a, err := s.lookupAgent(r, ref)
	if err != nil {
		return a, err
	}
	return a, mayManage(u, a)
}

func (s *Server) lookupAgent(r *http.Request, ref string) (berth.Agent, error) {
	if _, err := uuid.Parse(ref); err == nil {
		a, err := s.store.AgentByID(r.Context(), ref)
		if err == nil || berth.ErrorCode(err) != berth.CodeNotFound {
			return a, err
		}
	}
	if !berth.ValidName(ref) {
		return berth.Agent{}, berth.Errorf(berth.CodeNotFound, "agent %q not found", ref)
	}
	a, err := s.store.AgentByName(r.Context(), ref)
	if berth.ErrorCode(err) == berth.CodeNotFound {
		return a, berth.Errorf(berth.CodeNotFound, "agent %q not found", ref)
	}
	return a, err
}

// boolParam parses an optional boolean form value ("" = def).
func boolParam(v string, def bool, name string) (bool, error) {
	if v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return def, berth.Errorf(berth.CodeInvalid, "%s must be true or false, not %q", name, v)
	}
	return b, nil
}

// queryParams parses r's query string for a route that takes only the
// parameters accepted. A malformed query, a parameter the route does not
// take and one given twice are refused with CodeInvalid: on a mutating
// route a typo such as ?dryrun=true, silently ignored, would turn a dry run
// into the real thing.
func queryParams(r *http.Request, accepted ...string) (url.Values, error) {
	// url.Values from r.URL.Query() silently drops what it cannot parse
	// (a bad %-escape, a ';'), which is as dangerous as an unknown name.
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, berth.Errorf(berth.CodeInvalid, "malformed query string: %v", err)
	}
	// In name order, so that the answer does not vary between requests.
	for _, name := range slices.Sorted(maps.Keys(q)) {
		vs := q[name]
		if !slices.Contains(accepted, name) {
			return nil, berth.Errorf(berth.CodeInvalid, "unknown query parameter %q; %s", name, acceptedParams(accepted))
		}
		if len(vs) > 1 {
			return nil, berth.Errorf(berth.CodeInvalid, "query parameter %q is given %d times; give it once", name, len(vs))
		}
	}
	return q, nil
}

// acceptedParams describes the query parameters a route takes.
func acceptedParams(accepted []string) string {
	if len(accepted) == 0 {
		return "this route takes no query parameters"
	}
	return "accepted: " + strings.Join(slices.Sorted(slices.Values(accepted)), ", ")
}

// boolQuery parses the optional boolean query parameter name of q (def
// when absent). A parameter given without a value (?dry_run) is refused
// rather than read as absent: whoever typed it meant something by it.
func boolQuery(q url.Values, name string, def bool) (bool, error) {
	vs, ok := q[name]
	if !ok {
		return def, nil
	}
	if len(vs) == 0 || vs[0] == "" {
		return def, berth.Errorf(berth.CodeInvalid, "%s needs a value: %s=true or %s=false", name, name, name)
	}
	return boolParam(vs[0], def, name)
}

// deployForm is the multipart form of upload and update.
type deployForm struct {
	zipPath string
	fields  map[string]string
}

// readDeployForm streams a multipart upload: the "file" part is spooled to
// a temp file (bounded by MaxUploadBytes), the other parts are small fields.
func (s *Server) readDeployForm(w http.ResponseWriter, r *http.Request, allowed ...string) (deployForm, error) {
	var f deployForm
	ct, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "multipart/form-data" || params["boundary"] == "" {
		return f, berth.Errorf(berth.CodeInvalidBody, "request must be multipart/form-data with a \"file\" part holding the agent zip")
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxUploadBytes+1<<20)
	mr := multipart.NewReader(r.Body, params["boundary"])
	f.fields = map[string]string{}
	ok := map[string]bool{"file": true}
	for _, a := range allowed {
		ok[a] = true
	}
	fail := func(err error) (deployForm, error) {
		if f.zipPath != "" {
			os.Remove(f.zipPath)
		}
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return deployForm{}, tooLarge(s.cfg.MaxUploadBytes)
		}
		return deployForm{}, err
	}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(wrapBody(err, "read multipart body"))
		}
		name := p.FormName()
		if !ok[name] {
			p.Close()
			return fail(berth.Errorf(berth.CodeInvalidBody, "unknown form field %q", name))
		}
		if name == "file" {
			if f.zipPath != "" {
				return fail(berth.Errorf(berth.CodeInvalidBody, "more than one \"file\" part"))
			}
			path, err := s.spool(p)
			if err != nil {
				return fail(err)
			}
			f.zipPath = path
			continue
		}
		v, err := io.ReadAll(io.LimitReader(p, 64<<10+1))
		if err != nil {
			return fail(wrapBody(err, "read form field "+name))
		}
		if len(v) > 64<<10 {
			return fail(berth.Errorf(berth.CodeInvalidBody, "form field %q is too long", name))
		}
		f.fields[name] = string(v)
	}
	if f.zipPath == "" {
		return fail(berth.Errorf(berth.CodeInvalidBody, "missing \"file\" part (the agent zip)"))
	}
	return f, nil
}

// wrapBody classifies an error reading a request body: over the size limit
// is CodeTooLarge, anything else a malformed body.
func wrapBody(err error, what string) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return berth.Errorf(berth.CodeTooLarge, "request body is larger than %d bytes", mbe.Limit)
	}
	return berth.Errorf(berth.CodeInvalidBody, "%s: %v", what, err)
}

// spool copies an uploaded file to a temp file of at most MaxUploadBytes.
// A failure to read the body is the client's; a failure to write the file
// is the server's (a full disk is 507).
func (s *Server) spool(src io.Reader) (string, error) {
	if err := os.MkdirAll(s.cfg.TempDir, 0o755); err != nil {
		return "", berth.StorageError(err)
	}
	f, err := os.CreateTemp(s.cfg.TempDir, "upload-*.zip")
	if err != nil {
		return "", berth.StorageError(err)
	}
	dst := &recordingWriter{w: f}
	n, err := io.Copy(dst, io.LimitReader(src, s.cfg.MaxUploadBytes+1))
	if cerr := f.Close(); dst.err == nil && cerr != nil {
		dst.err = cerr
	}
	switch {
	case dst.err != nil:
		err = berth.StorageError(dst.err)
	case err != nil:
		err = wrapBody(err, "read uploaded file")
	case n > s.cfg.MaxUploadBytes:
		err = tooLarge(s.cfg.MaxUploadBytes)
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// recordingWriter remembers its writer's error, so that a copy's failure
// can be told apart from its reader's.
type recordingWriter struct {
	w   io.Writer
	err error
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	n, err := r.w.Write(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

// uploadItem is Nasiko's AgentUploadItemResponse plus Berth's ids.
type uploadItem struct {
	Success                bool     `json:"success"`
	AgentName              string   `json:"agent_name"`
	Status                 string   `json:"status"`
	CapabilitiesGenerated  bool     `json:"capabilities_generated"`
	OrchestrationTriggered bool     `json:"orchestration_triggered"`
	ValidationErrors       []string `json:"validation_errors"`
	Version                string   `json:"version"`
	AgentID                string   `json:"agent_id"`
	BuildID                string   `json:"build_id"`
	DeploymentID           string   `json:"deployment_id"`
	OperationID            string   `json:"operation_id"`
	URL                    string   `json:"url"`
}

func (s *Server) agentURL(name string) string {
	return strings.TrimRight(s.cfg.PublicURL, "/") + "/agents/" + name + "/"
}

func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request, u berth.User) {
	q, err := queryParams(r, "wait")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	wait, err := boolQuery(q, "wait", false)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	form, err := s.readDeployForm(w, r, "agent_name", "description")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	req := lifecycle.DeployRequest{
		ZipPath:        form.zipPath,
		AgentName:      strings.TrimSpace(form.fields["agent_name"]),
		Async:          !wait,
		IdempotencyKey: r.Header.Get("Idempotency-Key"),
	}
	if d, ok := form.fields["description"]; ok {
		if err := checkText("description", d, true); err != nil {
			s.writeError(w, r, err)
			return
		}
		req.Description = &d
	}
	res, err := s.engine.Upload(r.Context(), u, req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status, msg := http.StatusOK, "Agent deployed"
	if res.Status != "running" {
		status, msg = http.StatusAccepted, "Agent upload accepted; building"
	}
	writeData(w, status, msg, uploadItem{
		Success: true, AgentName: res.AgentName, Status: res.Status, Version: res.Version, ValidationErrors: []string{},
		AgentID: res.AgentID, BuildID: res.BuildID, DeploymentID: res.DeploymentID, OperationID: res.OperationID,
		URL: s.agentURL(res.AgentName),
	})
}

// updateData is Nasiko's AgentUpdateResponse plus Berth's operation id.
type updateData struct {
	Message         string   `json:"message"`
	AgentID         string   `json:"agent_id"`
	NewVersion      string   `json:"new_version"`
	PreviousVersion *string  `json:"previous_version"`
	BuildID         string   `json:"build_id"`
	DeploymentID    string   `json:"deployment_id"`
	UpdateStrategy  string   `json:"update_strategy"`
	Status          string   `json:"status"`
	StatusCode      int      `json:"status_code"`
	OperationID     string   `json:"operation_id"`
	Stopped         []string `json:"stopped_deployments"`
}

func (s *Server) handleUpdate(w http.ResponseWriter, r *http.Request, u berth.User) {
	// The query first, as rollback does: a malformed request is refused
	// the same way whatever the agent.
	q, err := queryParams(r, "wait")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	wait, err := boolQuery(q, "wait", false)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	a, err := s.agentFor(r, u, r.PathValue("agent_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	form, err := s.readDeployForm(w, r, "version", "update_strategy", "cleanup_old", "description")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	req, err := updateRequest(form, !wait, r.Header.Get("Idempotency-Key"))
	if err != nil {
		os.Remove(form.zipPath)
		s.writeError(w, r, err)
		return
	}
	res, err := s.engine.Update(r.Context(), u, a, req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status, msg := http.StatusOK, "Agent updated"
	if res.Status != "running" {
		status, msg = http.StatusAccepted, "Agent update accepted; building"
	}
	var prev *string
	if res.PreviousVersion != "" {
		prev = &res.PreviousVersion
	}
	writeData(w, status, msg, updateData{
		Message: msg, AgentID: res.AgentID, NewVersion: res.Version, PreviousVersion: prev,
		BuildID: res.BuildID, DeploymentID: res.DeploymentID, UpdateStrategy: string(res.Strategy),
		Status: res.Status, StatusCode: status, OperationID: res.OperationID, Stopped: nonNil(res.Stopped),
	})
}

// updateRequest turns an update form into an engine request.
func updateRequest(form deployForm, async bool, idempotencyKey string) (lifecycle.DeployRequest, error) {
	strategy, err := lifecycle.ParseStrategy(form.fields["update_strategy"])
	if err != nil {
		return lifecycle.DeployRequest{}, err
	}
	cleanup, err := boolParam(form.fields["cleanup_old"], true, "cleanup_old")
	if err != nil {
		return lifecycle.DeployRequest{}, err
	}
	req := lifecycle.DeployRequest{
		ZipPath:        form.zipPath,
		Version:        form.fields["version"],
		Strategy:       strategy,
		CleanupOld:     cleanup,
		Async:          async,
		IdempotencyKey: idempotencyKey,
	}
	if d, ok := form.fields["description"]; ok {
		if err := checkText("description", d, true); err != nil {
			return lifecycle.DeployRequest{}, err
		}
		req.Description = &d
	}
	return req, nil
}

// RollbackBody is the rollback request body. Every field is optional;
// target_version and reason may be null (as omitted), cleanup_failed may
// not (openapi.json types it as a plain boolean).
type RollbackBody struct {
	TargetVersion *string `json:"target_version"`
	CleanupFailed *bool   `json:"cleanup_failed"`
	Reason        *string `json:"reason"`
}

// Limits of the rollback body's strings, in bytes.
const (
	maxTargetVersion = 128
	maxReason        = 4096
)

// ParseRollbackBody strictly parses a rollback request body into a request
// (empty body = all defaults). Beyond DecodeStrict's rules it refuses a
// null cleanup_failed, an empty or over-long target_version, an over-long
// reason, control characters in target_version, and control characters
// other than tab, newline and carriage return in reason; all with
// CodeInvalidBody.
func ParseRollbackBody(body []byte) (lifecycle.RollbackRequest, error) {
	var b RollbackBody
	if err := DecodeStrict(body, &b, true); err != nil {
		return lifecycle.RollbackRequest{}, err
	}
	if b.CleanupFailed == nil && cleanupFailedIsNull(body) {
		// A *bool cannot tell null from absent, and null must not quietly
		// mean the destructive default.
		return lifecycle.RollbackRequest{}, berth.Errorf(berth.CodeInvalidBody,
			"cleanup_failed must be true or false, not null; omit it for the default (true)")
	}
	req := lifecycle.RollbackRequest{CleanupFailed: true}
	if b.TargetVersion != nil {
		req.Target = strings.TrimSpace(*b.TargetVersion)
		if req.Target == "" {
			return req, berth.Errorf(berth.CodeInvalidBody, "target_version must not be empty; omit it for the last known good version")
		}
		if len(req.Target) > maxTargetVersion {
			return req, berth.Errorf(berth.CodeInvalidBody, "target_version is longer than %d bytes", maxTargetVersion)
		}
		// A version label (MAJOR.MINOR.PATCH) has no control characters,
		// not even whitespace ones; anything else that is not a label is
		// left to the lookup, which answers 404 as for any unknown one.
		if err := checkText("target_version", req.Target, false); err != nil {
			return req, err
		}
	}
	if b.CleanupFailed != nil {
		req.CleanupFailed = *b.CleanupFailed
	}
	if b.Reason != nil {
		if len(*b.Reason) > maxReason {
			return req, berth.Errorf(berth.CodeInvalidBody, "reason is longer than %d bytes", maxReason)
		}
		// Free text may span lines; other control characters (a NUL
		// above all, which PostgreSQL refuses in text) may not.
		if err := checkText("reason", *b.Reason, true); err != nil {
			return req, err
		}
		req.Reason = *b.Reason
	}
	return req, nil
}

// cleanupFailedIsNull reports whether body, an object DecodeStrict
// accepted, gives cleanup_failed as null (the last one, if given twice, as
// the decoder does).
func cleanupFailedIsNull(body []byte) bool {
	var raw struct {
		CleanupFailed json.RawMessage `json:"cleanup_failed"`
	}
	if len(bytes.TrimSpace(body)) == 0 || json.Unmarshal(body, &raw) != nil {
		return false
	}
	return string(raw.CleanupFailed) == "null"
}

// tooLarge is the error of an upload over the server's limit.
func tooLarge(limit int64) error {
	size := fmt.Sprintf("%d bytes", limit)
	if limit%(1<<20) == 0 {
		size = fmt.Sprintf("%d MiB", limit>>20)
	}
	return berth.Errorf(berth.CodeTooLarge, "upload is larger than this server's limit of %s (berth serve --max-upload-mb)", size)
}

// checkText refuses, with CodeInvalidBody naming field, invalid UTF-8 and
// control characters (C0, DEL, C1); multiline allows tab, newline and
// carriage return.
func checkText(field, s string, multiline bool) error {
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			// encoding/json already turns invalid UTF-8 into U+FFFD; this
			// keeps the rule whatever the string came from.
			return berth.Errorf(berth.CodeInvalidBody, "%s is not valid UTF-8 (at byte %d)", field, i)
		case multiline && (r == '\t' || r == '\n' || r == '\r'):
		case unicode.IsControl(r) && multiline:
			return berth.Errorf(berth.CodeInvalidBody,
				"%s must not contain control characters other than tab, newline and carriage return (found %U at byte %d)", field, r, i)
		case unicode.IsControl(r):
			return berth.Errorf(berth.CodeInvalidBody, "%s must not contain control characters (found %U at byte %d)", field, r, i)
		}
		i += n
	}
	return nil
}

func (s *Server) handleRollback(w http.ResponseWriter, r *http.Request, u berth.User) {
	q, err := queryParams(r, "wait", "dry_run")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	wait, err := boolQuery(q, "wait", true)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	dry, err := boolQuery(q, "dry_run", false)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxJSONBody))
	if err != nil {
		s.writeError(w, r, wrapBody(err, "read request body"))
		return
	}
	// Parse the body before looking anything up: a malformed request is
	// refused the same way whatever the agent.
	req, err := ParseRollbackBody(body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	a, err := s.agentFor(r, u, r.PathValue("agent_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	req.DryRun, req.Async, req.IdempotencyKey = dry, !wait, r.Header.Get("Idempotency-Key")
	res, err := s.engine.Rollback(r.Context(), u, a, req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	d := RollbackResult{
		AgentID: res.AgentID, RolledBackTo: res.To, RolledBackFrom: res.From, OperationID: res.OperationID,
		CleanedDeployments: nonNil(res.Cleaned), DurationMS: res.DurationMS, Warm: res.Warm,
	}
	switch {
	case res.DryRun:
		d.Message, d.Status, d.StatusCode, d.DryRun = "Rollback dry run: nothing changed", "dry_run", http.StatusOK, true
		d.WouldClean, d.CleanedDeployments = nonNil(res.Cleaned), []string{}
	case res.Pending:
		d.Message, d.Status, d.StatusCode = "Rollback accepted", "in_progress", http.StatusAccepted
		d.CleanedDeployments = []string{}
	default:
		d.Message, d.Status, d.StatusCode = "Rollback successful", "running", http.StatusOK
		// Server-Timing carries sub-millisecond figures for clients and
		// benchmarks; duration_ms keeps the page's integer.
		w.Header().Set("Server-Timing", fmt.Sprintf("rollback;dur=%.3f, ready;dur=%.3f",
			float64(res.Duration.Microseconds())/1000, float64(res.ReadyWait.Microseconds())/1000))
	}
	writeData(w, d.StatusCode, d.Message, d)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (s *Server) handleVersions(w http.ResponseWriter, r *http.Request, u berth.User) {
	a, err := s.agentFor(r, u, r.PathValue("agent_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	limit := 50
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			s.writeError(w, r, berth.Errorf(berth.CodeInvalid, "limit must be a number from 1 to 500"))
			return
		}
		limit = n
	}
	vs, next, err := s.store.ListVersions(r.Context(), a.ID, limit, r.URL.Query().Get("cursor"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ids := make([]string, len(vs))
	for i, v := range vs {
		ids[i] = v.ID
	}
	ds, err := s.store.DeploymentsOfVersions(r.Context(), a.ID, ids)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	running := map[string]bool{}
	deps := map[string][]string{}
	for _, d := range ds {
		deps[d.VersionID] = append(deps[d.VersionID], d.ID)
		if d.Status.Live() {
			running[d.VersionID] = true
		}
	}
	out := VersionHistory{AgentID: a.ID, AgentName: a.Name, CurrentVersion: a.ActiveVersion, Versions: []VersionInfo{},
		NextCursor: next, StatusCode: http.StatusOK, Message: "Version history"}
	for _, v := range vs {
		vi := VersionInfo{
			Version: v.Version, Status: berth.DisplayStatus(v, a.ActiveVersionID, running[v.ID]), CreatedAt: v.CreatedAt,
			BuildIDs: []string{}, DeploymentIDs: nonNil(deps[v.ID]), RollbackInfo: v.Rollback, ActivatedAt: v.ActivatedAt,
			Digest: v.Digest,
		}
		if v.BuildID != "" {
			vi.BuildIDs = []string{v.BuildID}
		}
		out.Versions = append(out.Versions, vi)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) viewDeployment(a berth.Agent, d berth.Deployment) DeploymentInfo {
	v := DeploymentInfo{
		ID: d.ID, AgentID: d.AgentID, BuildID: d.BuildID, Version: d.Version, Namespace: "local", Replicas: 1, Status: d.Status,
		ErrorMessage: d.Error, Restarts: d.Restarts, StopAt: d.StopAt, RemovedAt: d.RemovedAt,
		CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt,
		Active: d.VersionID == a.ActiveVersionID && d.Status == berth.DeploymentRunning,
	}
	if d.URL != "" {
		u := d.URL
		v.ServiceURL = &u
	}
	return v
}

func (s *Server) handleDeployments(w http.ResponseWriter, r *http.Request, u berth.User) {
	a, err := s.agentFor(r, u, r.PathValue("agent_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ds, err := s.store.ListDeployments(r.Context(), a.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]DeploymentInfo, 0, len(ds))
	for _, d := range ds {
		out = append(out, s.viewDeployment(a, d))
	}
	writeData(w, http.StatusOK, "Deployments", out)
}

func viewBuild(b berth.Build, image string) BuildInfo {
	return BuildInfo{ID: b.ID, AgentID: b.AgentID, VersionTag: b.Version, ImageReference: image, Status: b.Status,
		Logs: b.Logs, ErrorMessage: b.Error, CreatedAt: b.CreatedAt, UpdatedAt: b.UpdatedAt, FinishedAt: b.FinishedAt}
}

func (s *Server) handleBuilds(w http.ResponseWriter, r *http.Request, u berth.User) {
	a, err := s.agentFor(r, u, r.PathValue("agent_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	bs, err := s.store.ListBuilds(r.Context(), a.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]BuildInfo, 0, len(bs))
	for _, b := range bs {
		out = append(out, viewBuild(b, "local://"+a.Name+"/"+b.Version))
	}
	writeData(w, http.StatusOK, "Builds", out)
}

func viewOperation(o berth.Operation) OperationInfo {
	return OperationInfo{ID: o.ID, AgentID: o.AgentID, AgentName: o.AgentName, Kind: o.Kind, Status: o.Status, Actor: o.Actor, Reason: o.Reason,
		FromVersion: o.FromVersion, ToVersion: o.ToVersion, ErrorCode: o.ErrorCode, Error: o.Error,
		StartedAt: o.StartedAt, FinishedAt: o.FinishedAt, DurationMS: o.DurationMS}
}

func (s *Server) handleOperations(w http.ResponseWriter, r *http.Request, u berth.User) {
	ref := r.PathValue("agent_id")
	a, err := s.agentFor(r, u, ref)
	// A deleted agent's operations outlive it (the audit trail), stored
	// under its ID. Only a superuser may read them: whether the caller
	// owned the agent went with its row, so an owner of a deleted agent
	// cannot, and anyone else gets the same 404 as for an agent that never
	// existed. Only an ID reaches them; a name may belong to a newer agent.
	deleted := false
	if id, perr := uuid.Parse(ref); perr == nil && u.IsSuperUser && berth.ErrorCode(err) == berth.CodeNotFound {
		a, err, deleted = berth.Agent{ID: id.String()}, nil, true
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.writeError(w, r, berth.Errorf(berth.CodeInvalid, "limit must be a number from 1 to 1000"))
			return
		}
		limit = n
	}
	ops, err := s.store.ListOperations(r.Context(), a.ID, limit)
	if err == nil && deleted && len(ops) == 0 {
		err = berth.Errorf(berth.CodeNotFound, "agent %q not found", ref)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]OperationInfo, 0, len(ops))
	for _, o := range ops {
		out = append(out, viewOperation(o))
	}
	writeData(w, http.StatusOK, "Operations", out)
}

func (s *Server) handleOperation(w http.ResponseWriter, r *http.Request, u berth.User) {
	a, err := s.agentFor(r, u, r.PathValue("agent_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	o, err := s.store.OperationByID(r.Context(), r.PathValue("operation_id"))
	if err == nil && o.AgentID != a.ID {
		err = berth.Errorf(berth.CodeNotFound, "operation %q not found", r.PathValue("operation_id"))
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeData(w, http.StatusOK, "Operation", viewOperation(o))
}

// LogSizeTrailer is the trailer of a logs response that gives the log's
// size in bytes when the response ended: the offset to ask for next to get
// only what was written since. A size below the offset asked for means the
// log was rotated (or the deployment restarted its log) in between.
const LogSizeTrailer = "X-Berth-Log-Size"

// handleLogs writes a deployment's captured output: the one named by
// deployment_id, else the newest of version (default: the active version),
// from byte offset on (default 0).
func (s *Server) handleLogs(w http.ResponseWriter, r *http.Request, u berth.User) {
	a, err := s.agentFor(r, u, r.PathValue("agent_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	var offset int64
	if v := q.Get("offset"); v != "" {
		offset, err = strconv.ParseInt(v, 10, 64)
		if err != nil || offset < 0 {
			s.writeError(w, r, berth.Errorf(berth.CodeInvalid, "offset must be a byte count (a non-negative integer), not %q", v))
			return
		}
	}
	ds, err := s.store.ListDeployments(r.Context(), a.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	want, version := q.Get("deployment_id"), q.Get("version")
	if version == "" {
		version = a.ActiveVersion
	}
	var pick *berth.Deployment
	for i := range ds {
		d := &ds[i]
		if (want != "" && d.ID == want) || (want == "" && d.Version == version) {
			pick = d
			break // newest first
		}
	}
	if pick == nil {
		s.writeError(w, r, berth.Errorf(berth.CodeNotFound, "no deployment of %s matches", a.Name))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Berth-Deployment", pick.ID)
	w.Header().Set("Trailer", LogSizeTrailer)
	// The runtimes stream the whole log (the process runtime from its
	// files, Kubernetes from the pod's log API); what comes before offset
	// is read here but not sent, so a follower's poll costs the network
	// only what is new.
	sw := &skipWriter{w: w, skip: offset}
	if err := s.runtime.Logs(r.Context(), pick.ID, sw); err != nil {
		s.log.Warn("read logs", "deployment", pick.ID, "err", err)
		return
	}
	w.Header().Set(LogSizeTrailer, strconv.FormatInt(sw.seen, 10))
}

// skipWriter drops the first skip bytes written to it and passes the rest
// on to w, counting all of them in seen.
type skipWriter struct {
	w    io.Writer
	skip int64
	seen int64
}

func (s *skipWriter) Write(b []byte) (int, error) {
	n := len(b)
	s.seen += int64(n)
	if s.skip >= int64(n) {
		s.skip -= int64(n)
		return n, nil
	}
	b = b[s.skip:]
	s.skip = 0
	if _, err := s.w.Write(b); err != nil {
		return 0, err
	}
	return n, nil
}

func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request, u berth.User) {
	a, err := s.agentFor(r, u, r.PathValue("agent_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	label := r.URL.Query().Get("version")
	if label == "" {
		label = a.ActiveVersion
	}
	if label == "" {
		if v, err := s.store.HighestVersion(r.Context(), a.ID); err == nil {
			label = v.Version
		}
	}
	v, err := s.store.VersionByLabel(r.Context(), a.ID, label)
	if err != nil {
		if berth.ErrorCode(err) == berth.CodeNotFound {
			err = berth.Errorf(berth.CodeNotFound, "version %q of %s not found", label, a.Name)
		}
		s.writeError(w, r, err)
		return
	}
	f, err := os.Open(s.engine.PackagePath(a.ID, v.Version))
	if err != nil {
		s.writeError(w, r, berth.Errorf(berth.CodeNotFound, "the package of %s %s is not available", a.Name, v.Version))
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/gzip")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s-%s.tar.gz"`, a.Name, v.Version))
	w.Header().Set("X-Berth-Digest", v.Digest)
	if err := artifact.ZipToTarGz(w, f, st.Size()); err != nil {
		s.log.Warn("download", "agent", a.Name, "version", v.Version, "err", err)
	}
}
