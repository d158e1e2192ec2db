package http

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth"
)

// Client is a Go client for Berth's HTTP API, the one the berth CLI uses.
// Every method returns a *berth.Error when the server refuses a request
// (its Code, Message and OperationID come from the error body), or when the
// server cannot be reached (CodeUnavailable).
//
// A Client is safe for concurrent use once configured.
type Client struct {
	// BaseURL is the server's base URL, such as http://127.0.0.1:8080.
	BaseURL string
	// Token is the bearer token sent with every request ("" sends none).
	Token string
	// HTTPClient sends the requests; nil means http.DefaultClient. Deploys
	// and rollbacks can take as long as a build, so bound calls with their
	// context rather than a client timeout.
	HTTPClient *http.Client
	// UserAgent is sent as the User-Agent header when set.
	UserAgent string
}

// NewClient returns a client for the server at baseURL that authenticates
// with token.
func NewClient(baseURL, token string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token}
}

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 1 << 20

// LoginResult is the answer to a login.
type LoginResult struct {
	Token       string `json:"token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	IsSuperUser bool   `json:"is_super_user"`
	UserID      string `json:"user_id"`
	Username    string `json:"username"`
}

// NewUser describes a user to register.
type NewUser struct {
	Username    string `json:"username"`
	Email       string `json:"email,omitempty"`
	IsSuperUser bool   `json:"is_super_user"`
}

// RegisteredUser is a registered user with its credentials. The access
// secret is shown this once; the server keeps only its hash.
type RegisteredUser struct {
	UserID       string `json:"user_id"`
	Username     string `json:"username"`
	Email        string `json:"email"`
	Role         string `json:"role"`
	Status       string `json:"status"`
	AccessKey    string `json:"access_key"`
	AccessSecret string `json:"access_secret"`
	CreatedOn    string `json:"created_on"`
}

// UploadOptions are the optional parts of an upload.
type UploadOptions struct {
	// AgentName, when set, must match the name in the package's
	// AgentCard.json.
	AgentName string
	// Description, when non-nil, replaces the card's description.
	Description *string
	// Wait makes the call return when the version is active or failed;
	// otherwise it returns once the version is recorded (Status
	// "building") and the caller follows the operation.
	Wait bool
	// IdempotencyKey makes a repeat of the same call return the first
	// answer and do nothing again.
	IdempotencyKey string
}

// UpdateOptions are the optional parts of an update.
type UpdateOptions struct {
	// Version is auto, patch, minor, major or an explicit x.y.z ("" =
	// auto).
	Version string
	// Strategy is "rolling" (default) or "blue-green".
	Strategy string
	// CleanupOld, when non-nil, sets cleanup_old (the server's default is
	// true).
	CleanupOld *bool
	// Description, when non-nil, replaces the agent's description.
	Description *string
	// Wait and IdempotencyKey are as in UploadOptions.
	Wait           bool
	IdempotencyKey string
}

// DeployResult is the answer to an upload or an update.
type DeployResult struct {
	AgentID   string `json:"agent_id"`
	AgentName string `json:"agent_name,omitempty"`
	// Version is the new version's label.
	Version string `json:"version"`
	// PreviousVersion is the version active before an update ("" for an
	// upload or an agent that had none).
	PreviousVersion string `json:"previous_version,omitempty"`
	BuildID         string `json:"build_id"`
	DeploymentID    string `json:"deployment_id"`
	OperationID     string `json:"operation_id"`
	UpdateStrategy  string `json:"update_strategy,omitempty"`
	// Status is "running" once active, "building" when the call did not
	// wait.
	Status             string   `json:"status"`
	URL                string   `json:"url,omitempty"`
	StoppedDeployments []string `json:"stopped_deployments,omitempty"`
}

// RollbackOptions are the optional parts of a rollback. The zero value rolls
// back to the last known good version and cleans up failed deployments.
type RollbackOptions struct {
	// TargetVersion is the version to go back to ("" = last known good).
	TargetVersion string
	// Reason is stored on the operation and on the version rolled back
	// from.
	Reason string
	// KeepFailed sends cleanup_failed=false: failed deployments are left as
	// they are.
	KeepFailed bool
	// DryRun answers what would happen and changes nothing.
	DryRun bool
	// NoWait returns as soon as the operation started (Status
	// "in_progress").
	NoWait bool
	// IdempotencyKey makes a repeat return the first answer.
	IdempotencyKey string
}

// RollbackResult is the answer to a rollback.
type RollbackResult struct {
	Message            string   `json:"message"`
	AgentID            string   `json:"agent_id"`
	RolledBackTo       string   `json:"rolled_back_to"`
	RolledBackFrom     string   `json:"rolled_back_from"`
	Status             string   `json:"status"`
	StatusCode         int      `json:"status_code"`
	OperationID        string   `json:"operation_id,omitempty"`
	CleanedDeployments []string `json:"cleaned_deployments"`
	DurationMS         int64    `json:"duration_ms"`
	// Warm reports that the target was already running: the switch was a
	// pointer swap.
	Warm bool `json:"warm"`
	// DryRun is set on a dry run; WouldClean then lists what a real
	// rollback would clean up.
	DryRun     bool     `json:"dry_run,omitempty"`
	WouldClean []string `json:"would_clean,omitempty"`
}

// VersionHistory is an agent's versions, newest first.
type VersionHistory struct {
	AgentID        string        `json:"agent_id"`
	AgentName      string        `json:"agent_name"`
	CurrentVersion string        `json:"current_version"`
	Versions       []VersionInfo `json:"versions"`
	// NextCursor fetches the next page (?cursor=); "" on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
	StatusCode int    `json:"status_code"`
	Message    string `json:"message"`
}

// VersionInfo is one entry of version history.
type VersionInfo struct {
	Version       string              `json:"version"`
	Status        berth.VersionStatus `json:"status"`
	CreatedAt     time.Time           `json:"created_at"`
	BuildIDs      []string            `json:"build_ids"`
	DeploymentIDs []string            `json:"deployment_ids"`
	GitCommit     *string             `json:"git_commit"`
	// RollbackInfo says who rolled back from this version, when and why.
	RollbackInfo *berth.RollbackInfo `json:"rollback_info"`
	ActivatedAt  *time.Time          `json:"activated_at"`
	Digest       string              `json:"digest"`
}

// DeploymentInfo is one deployment of an agent.
type DeploymentInfo struct {
	ID           string                 `json:"_id"`
	AgentID      string                 `json:"agent_id"`
	BuildID      string                 `json:"build_id"`
	Version      string                 `json:"version"`
	Namespace    string                 `json:"namespace"`
	Replicas     int                    `json:"replicas"`
	Status       berth.DeploymentStatus `json:"status"`
	ServiceURL   *string                `json:"service_url"`
	ErrorMessage string                 `json:"error_message,omitempty"`
	Restarts     int                    `json:"restarts"`
	Active       bool                   `json:"active"`
	StopAt       *time.Time             `json:"stop_at,omitempty"`
	RemovedAt    *time.Time             `json:"removed_at,omitempty"`
	CreatedAt    time.Time              `json:"created_at"`
	UpdatedAt    time.Time              `json:"updated_at"`
}

// BuildInfo is one build of an agent, with its log.
type BuildInfo struct {
	ID             string            `json:"_id"`
	AgentID        string            `json:"agent_id"`
	VersionTag     string            `json:"version_tag"`
	ImageReference string            `json:"image_reference"`
	Status         berth.BuildStatus `json:"status"`
	Logs           string            `json:"logs"`
	ErrorMessage   string            `json:"error_message,omitempty"`
	CreatedAt      time.Time         `json:"created_at"`
	UpdatedAt      time.Time         `json:"updated_at"`
	FinishedAt     *time.Time        `json:"finished_at,omitempty"`
}

// OperationInfo is one entry of an agent's audit trail.
type OperationInfo struct {
	ID          string                `json:"operation_id"`
	AgentID     string                `json:"agent_id"`
	AgentName   string                `json:"agent_name,omitempty"`
	Kind        berth.OperationKind   `json:"kind"`
	Status      berth.OperationStatus `json:"status"`
	Actor       string                `json:"actor"`
	Reason      string                `json:"reason"`
	FromVersion string                `json:"from_version"`
	ToVersion   string                `json:"to_version"`
	ErrorCode   berth.Code            `json:"error_code,omitempty"`
	Error       string                `json:"error,omitempty"`
	StartedAt   time.Time             `json:"started_at"`
	FinishedAt  *time.Time            `json:"finished_at"`
	DurationMS  int64                 `json:"duration_ms"`
}

// AgentSummary is one of the caller's agents.
type AgentSummary struct {
	AgentID        string   `json:"agent_id"`
	Name           string   `json:"name"`
	Description    string   `json:"description"`
	CurrentVersion string   `json:"current_version"`
	URL            string   `json:"url"`
	Tags           []string `json:"tags"`
	IconURL        *string  `json:"icon_url"`
}

// RegistryAgent is the part of a registry entry (an agent's public card)
// the client reads.
type RegistryAgent struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	URL         string    `json:"url"`
	Version     string    `json:"version"`
	OwnerID     string    `json:"owner_id"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// LogsOptions selects whose output Logs returns: the deployment named by
// DeploymentID, else the newest deployment of Version, else the newest
// deployment of the active version.
type LogsOptions struct {
	Version      string
	DeploymentID string
	// Offset skips the first Offset bytes of the log: pass the Size of
	// the previous answer to get only what was written since.
	Offset int64
}

// AgentLogs is a deployment's captured output.
type AgentLogs struct {
	// DeploymentID is the deployment the output belongs to.
	DeploymentID string `json:"deployment_id"`
	Output       []byte `json:"-"`
	// Size is the log's whole size when the answer ended (the next
	// Offset), or -1 if the server did not say. Below the Offset asked
	// for, the log was rotated or restarted since: ask again from 0.
	Size int64 `json:"-"`
}

// DownloadInfo describes a downloaded package.
type DownloadInfo struct {
	// Filename is the name the server suggests, such as
	// echo-agent-1.0.0.tar.gz.
	Filename string `json:"filename"`
	// Digest is the hex SHA-256 of the package as uploaded (the zip).
	Digest string `json:"digest"`
	// Bytes is how many bytes were written.
	Bytes int64 `json:"bytes"`
}

// Health is the server's health check answer.
type Health struct {
	Status  string `json:"status"`
	Version string `json:"version"`
}

// Health asks the server whether it is up.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.getData(ctx, "/api/v1/healthcheck", &h)
	return h, err
}

// Login exchanges an access key and secret for a token. It does not change
// c.Token.
func (c *Client) Login(ctx context.Context, accessKey, accessSecret string) (LoginResult, error) {
	var out LoginResult
	body := map[string]string{"access_key": accessKey, "access_secret": accessSecret}
	err := c.doJSON(ctx, http.MethodPost, "/auth/users/login", body, &out)
	return out, err
}

// Register creates a user (superusers only) and returns its credentials.
func (c *Client) Register(ctx context.Context, u NewUser) (RegisteredUser, error) {
	var out RegisteredUser
	err := c.doJSON(ctx, http.MethodPost, "/api/v1/user/register", u, &out)
	return out, err
}

// Upload creates a new agent from a package (a zip) and deploys its first
// version.
func (c *Client) Upload(ctx context.Context, pkg io.Reader, o UploadOptions) (DeployResult, error) {
	fields := map[string]string{}
	if o.AgentName != "" {
		fields["agent_name"] = o.AgentName
	}
	if o.Description != nil {
		fields["description"] = *o.Description
	}
	var out DeployResult
	err := c.sendPackage(ctx, http.MethodPost, "/api/v1/agents/upload"+waitQuery(o.Wait), pkg, fields, o.IdempotencyKey, &out)
	return out, err
}

// Update deploys a new version of agent (an id or a name) from a package.
func (c *Client) Update(ctx context.Context, agent string, pkg io.Reader, o UpdateOptions) (DeployResult, error) {
	fields := map[string]string{}
	if o.Version != "" {
		fields["version"] = o.Version
	}
	if o.Strategy != "" {
		fields["update_strategy"] = o.Strategy
	}
	if o.CleanupOld != nil {
		fields["cleanup_old"] = strconv.FormatBool(*o.CleanupOld)
	}
	if o.Description != nil {
		fields["description"] = *o.Description
	}
	// The update answer names the new version new_version; DeployResult
	// calls it version, like the upload answer.
	var raw struct {
		DeployResult
		NewVersion      string  `json:"new_version"`
		PreviousVersion *string `json:"previous_version"`
	}
	err := c.sendPackage(ctx, http.MethodPut, c.agentPath(agent, "update")+waitQuery(o.Wait), pkg, fields, o.IdempotencyKey, &raw)
	out := raw.DeployResult
	out.Version = raw.NewVersion
	if raw.PreviousVersion != nil {
		out.PreviousVersion = *raw.PreviousVersion
	}
	return out, err
}

func waitQuery(wait bool) string {
	if wait {
		return "?wait=true"
	}
	return "?wait=false"
}

// Rollback rolls agent (an id or a name) back, by default to its last known
// good version. A refusal is a *berth.Error with the codes of DESIGN §4,
// such as CodeNoRollbackTarget or CodeTargetUnhealthy.
func (c *Client) Rollback(ctx context.Context, agent string, o RollbackOptions) (RollbackResult, error) {
	body := map[string]any{}
	if o.TargetVersion != "" {
		body["target_version"] = o.TargetVersion
	}
	if o.Reason != "" {
		body["reason"] = o.Reason
	}
	if o.KeepFailed {
		body["cleanup_failed"] = false
	}
	q := url.Values{}
	if o.DryRun {
		q.Set("dry_run", "true")
	}
	if o.NoWait {
		q.Set("wait", "false")
	}
	path := c.agentPath(agent, "rollback")
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	b, _ := json.Marshal(body)
	req, err := c.newRequest(ctx, http.MethodPost, path, bytes.NewReader(b))
	if err != nil {
		return RollbackResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	if o.IdempotencyKey != "" {
		req.Header.Set("Idempotency-Key", o.IdempotencyKey)
	}
	var out RollbackResult
	err = c.send(req, &envelopeOf{Data: &out})
	return out, err
}

// Versions returns agent's whole version history, newest first, following
// the server's pages.
func (c *Client) Versions(ctx context.Context, agent string) (VersionHistory, error) {
	var out VersionHistory
	cursor := ""
	for {
		q := url.Values{"limit": {"500"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		var page struct {
			VersionHistory
			NextCursor string `json:"next_cursor"`
		}
		if err := c.doJSON(ctx, http.MethodGet, c.agentPath(agent, "versions")+"?"+q.Encode(), nil, &page); err != nil {
			return VersionHistory{}, err
		}
		if cursor == "" {
			out = page.VersionHistory
			out.Versions = append([]VersionInfo{}, page.Versions...)
		} else {
			out.Versions = append(out.Versions, page.Versions...)
		}
		// A cursor that does not move would loop forever.
		if page.NextCursor == "" || page.NextCursor == cursor {
			return out, nil
		}
		cursor = page.NextCursor
	}
}

// Deployments returns agent's deployments, newest first.
func (c *Client) Deployments(ctx context.Context, agent string) ([]DeploymentInfo, error) {
	var out []DeploymentInfo
	err := c.getData(ctx, c.agentPath(agent, "deployments"), &out)
	return out, err
}

// Builds returns agent's builds with their logs, newest first.
func (c *Client) Builds(ctx context.Context, agent string) ([]BuildInfo, error) {
	var out []BuildInfo
	err := c.getData(ctx, c.agentPath(agent, "builds"), &out)
	return out, err
}

// Operations returns agent's audit trail, newest first: at most limit
// entries (0 = the server's default).
func (c *Client) Operations(ctx context.Context, agent string, limit int) ([]OperationInfo, error) {
	path := c.agentPath(agent, "operations")
	if limit > 0 {
		path += "?limit=" + strconv.Itoa(limit)
	}
	var out []OperationInfo
	err := c.getData(ctx, path, &out)
	return out, err
}

// Operation returns one operation of agent.
func (c *Client) Operation(ctx context.Context, agent, operationID string) (OperationInfo, error) {
	var out OperationInfo
	err := c.getData(ctx, c.agentPath(agent, "operations", operationID), &out)
	return out, err
}

// Logs returns the captured output of one of agent's deployments (see
// LogsOptions).
func (c *Client) Logs(ctx context.Context, agent string, o LogsOptions) (AgentLogs, error) {
	q := url.Values{}
	if o.Version != "" {
		q.Set("version", o.Version)
	}
	if o.DeploymentID != "" {
		q.Set("deployment_id", o.DeploymentID)
	}
	if o.Offset > 0 {
		q.Set("offset", strconv.FormatInt(o.Offset, 10))
	}
	path := c.agentPath(agent, "logs")
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	req, err := c.newRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return AgentLogs{}, err
	}
	resp, err := c.roundTrip(req)
	if err != nil {
		return AgentLogs{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return AgentLogs{}, c.transportError(req, err)
	}
	size := int64(-1)
	// The trailer is there once the body was read to its end.
	if v, err := strconv.ParseInt(resp.Trailer.Get(LogSizeTrailer), 10, 64); err == nil && v >= 0 {
		size = v
	}
	return AgentLogs{DeploymentID: resp.Header.Get("X-Berth-Deployment"), Output: b, Size: size}, nil
}

// Agents returns the caller's agents.
func (c *Client) Agents(ctx context.Context) ([]AgentSummary, error) {
	var out []AgentSummary
	err := c.getData(ctx, "/api/v1/registry/user/agents", &out)
	return out, err
}

// AgentByName returns the public registry entry of the agent called name;
// a *berth.Error with CodeNotFound if there is none. It needs no token.
func (c *Client) AgentByName(ctx context.Context, name string) (RegistryAgent, error) {
	var out RegistryAgent
	err := c.getData(ctx, "/api/v1/registry/agent/name/"+url.PathEscape(name), &out)
	return out, err
}

// Download writes the package of agent's version ("" = the active one) to
// w as a tar.gz.
func (c *Client) Download(ctx context.Context, agent, version string, w io.Writer) (DownloadInfo, error) {
	path := c.agentPath(agent, "download")
	if version != "" {
		path += "?version=" + url.QueryEscape(version)
	}
	req, err := c.newRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return DownloadInfo{}, err
	}
	resp, err := c.roundTrip(req)
	if err != nil {
		return DownloadInfo{}, err
	}
	defer resp.Body.Close()
	info := DownloadInfo{Digest: resp.Header.Get("X-Berth-Digest")}
	if _, params, err := mime.ParseMediaType(resp.Header.Get("Content-Disposition")); err == nil {
		info.Filename = params["filename"]
	}
	info.Bytes, err = io.Copy(w, resp.Body)
	if err != nil {
		return info, c.transportError(req, err)
	}
	return info, nil
}

// agentPath is /api/v1/agents/{agent}/{rest…}, each part path-escaped.
func (c *Client) agentPath(agent string, rest ...string) string {
	p := "/api/v1/agents/" + url.PathEscape(agent)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

// envelopeOf decodes the success envelope {"data": …}.
type envelopeOf struct {
	Data any `json:"data"`
}

// getData GETs path and decodes the envelope's data into out.
func (c *Client) getData(ctx context.Context, path string, out any) error {
	return c.doJSON(ctx, http.MethodGet, path, nil, &envelopeOf{Data: out})
}

// doJSON sends body (nil = none) as JSON and decodes the answer into out.
func (c *Client) doJSON(ctx context.Context, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return &berth.Error{Code: berth.CodeInvalid, Message: "encode request body", Err: err}
		}
		r = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, r)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(req, out)
}

// sendPackage streams a multipart form (fields, then the zip as "file") and
// decodes the envelope's data into out.
func (c *Client) sendPackage(ctx context.Context, method, path string, pkg io.Reader, fields map[string]string, idemKey string, out any) error {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(writeForm(mw, pkg, fields))
	}()
	// However the request ends, stop the writer and wait for it, so that
	// pkg is not read after this returns.
	defer func() {
		pr.Close()
		<-done
	}()
	req, err := c.newRequest(ctx, method, path, pr)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	// Let the server refuse (bad token, unknown agent) before the package
	// is sent: the transport waits for "100 Continue" before the body.
	req.Header.Set("Expect", "100-continue")
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	return c.send(req, &envelopeOf{Data: out})
}

func writeForm(mw *multipart.Writer, pkg io.Reader, fields map[string]string) error {
	for k, v := range fields {
		if err := mw.WriteField(k, v); err != nil {
			return err
		}
	}
	fw, err := mw.CreateFormFile("file", "agent.zip")
	if err != nil {
		return err
	}
	if _, err := io.Copy(fw, pkg); err != nil {
		return err
	}
	return mw.Close()
}

func (c *Client) newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	base := strings.TrimRight(c.BaseURL, "/")
	if base == "" {
		return nil, berth.Errorf(berth.CodeInvalid, "no server URL configured")
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return nil, &berth.Error{Code: berth.CodeInvalid, Message: fmt.Sprintf("invalid server URL %q", c.BaseURL), Err: err}
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	return req, nil
}

// send runs req and decodes a 2xx JSON answer into out (nil = discard).
func (c *Client) send(req *http.Request, out any) error {
	resp, err := c.roundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return &berth.Error{Code: berth.CodeUnavailable,
			Message: fmt.Sprintf("%s %s: the server's answer (HTTP %d) is not the JSON expected", req.Method, req.URL.Path, resp.StatusCode), Err: err}
	}
	return nil
}

// roundTrip sends req and turns a non-2xx answer into a *berth.Error. On
// success the caller closes the body.
func (c *Client) roundTrip(req *http.Request) (*http.Response, error) {
	hc := c.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, c.transportError(req, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return nil, decodeError(resp.StatusCode, b)
}

func (c *Client) transportError(req *http.Request, err error) error {
	if ctxErr := req.Context().Err(); ctxErr != nil {
		return &berth.Error{Code: berth.CodeUnavailable, Message: fmt.Sprintf("%s %s: %v", req.Method, req.URL.Path, ctxErr), Err: err}
	}
	return &berth.Error{Code: berth.CodeUnavailable, Message: fmt.Sprintf("cannot reach the Berth server at %s: %v", c.BaseURL, rootCause(err)), Err: err}
}

// rootCause drops the url.Error wrapping, whose text repeats the URL.
func rootCause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// decodeError turns an error answer into a *berth.Error: the server's code,
// message and operation id when the body is Berth's error shape, else a
// code that fits the HTTP status.
func decodeError(status int, body []byte) *berth.Error {
	var eb ErrorBody
	if json.Unmarshal(body, &eb) == nil && eb.Code != "" {
		msg := eb.Message
		if msg == "" {
			msg = eb.Detail
		}
		return &berth.Error{Code: eb.Code, Message: msg, OperationID: eb.OperationID}
	}
	// Not Berth's shape: a proxy in between, or not a Berth server.
	text := strings.TrimSpace(string(body))
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	msg := fmt.Sprintf("the server answered HTTP %d %s", status, http.StatusText(status))
	if text != "" {
		msg += ": " + text
	}
	return &berth.Error{Code: codeForStatus(status), Message: msg}
}

// codeForStatus is the inverse of the status table for answers that carry
// no code.
func codeForStatus(status int) berth.Code {
	switch status {
	case http.StatusBadRequest:
		return berth.CodeInvalid
	case http.StatusUnauthorized:
		return berth.CodeUnauthorized
	case http.StatusForbidden:
		return berth.CodeForbidden
	case http.StatusNotFound:
		return berth.CodeNotFound
	case http.StatusConflict:
		return berth.CodeConflict
	case http.StatusRequestEntityTooLarge:
		return berth.CodeTooLarge
	case http.StatusUnprocessableEntity:
		return berth.CodeInvalidBody
	case http.StatusInsufficientStorage:
		return berth.CodeInsufficientStorage
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return berth.CodeUnavailable
	}
	return berth.CodeInternal
}
