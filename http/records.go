package http

import (
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
)

// The build and deployment record routes exist for Nasiko compatibility
// (external build systems report into them). Nasiko leaves them open;
// Berth requires the agent's owner or a superuser, and never lets a record
// write change which deployment serves traffic.

type createBuildBody struct {
	AgentID        string  `json:"agent_id"`
	VersionTag     string  `json:"version_tag"`
	ImageReference string  `json:"image_reference"`
	Status         string  `json:"status"`
	Logs           *string `json:"logs"`
	GithubURL      *string `json:"github_url"`
	CommitHash     *string `json:"commit_hash"`
	K8sJobName     *string `json:"k8s_job_name"`
}

// parseBuildStatus parses a build status; "" means def, or is refused
// when def is "" too.
func parseBuildStatus(s string, def berth.BuildStatus) (berth.BuildStatus, error) {
	if s == "" {
		if def == "" {
			return "", berth.Errorf(berth.CodeInvalidBody, "status is required")
		}
		return def, nil
	}
	switch st := berth.BuildStatus(s); st {
	case berth.BuildQueued, berth.BuildBuilding, berth.BuildSuccess, berth.BuildFailed:
		return st, nil
	}
	return "", berth.Errorf(berth.CodeInvalidBody, "status must be queued, building, success or failed, not %q", s)
}

func (s *Server) handleCreateBuild(w http.ResponseWriter, r *http.Request, u berth.User) {
	var body createBuildBody
	if err := decodeJSON(w, r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	if body.AgentID == "" || body.VersionTag == "" {
		s.writeError(w, r, berth.Errorf(berth.CodeInvalidBody, "agent_id and version_tag are required"))
		return
	}
	st, err := parseBuildStatus(body.Status, berth.BuildQueued)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	a, err := s.agentFor(r, u, body.AgentID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	v, err := s.store.VersionByLabel(r.Context(), a.ID, strings.TrimPrefix(body.VersionTag, "v"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	now := time.Now().UTC()
	b := berth.Build{ID: uuid.NewString(), AgentID: a.ID, VersionID: v.ID, Version: v.Version, Status: st, CreatedAt: now, UpdatedAt: now}
	if body.Logs != nil {
		b.Logs = *body.Logs
	}
	if st == berth.BuildSuccess || st == berth.BuildFailed {
		b.FinishedAt = &now
	}
	if err := s.store.CreateBuild(r.Context(), b); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeData(w, http.StatusCreated, "Build record created", viewBuild(b, body.ImageReference))
}

type buildStatusBody struct {
	AgentID        string  `json:"agent_id"`
	Status         string  `json:"status"`
	Logs           *string `json:"logs"`
	ErrorMessage   *string `json:"error_message"`
	GithubURL      *string `json:"github_url"`
	VersionTag     *string `json:"version_tag"`
	ImageReference *string `json:"image_reference"`
	K8sJobName     *string `json:"k8s_job_name"`
}

func (s *Server) handleBuildStatus(w http.ResponseWriter, r *http.Request, u berth.User) {
	var body buildStatusBody
	if err := decodeJSON(w, r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := parseBuildStatus(body.Status, "")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	b, err := s.store.BuildByID(r.Context(), r.PathValue("build_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	a, err := s.managedAgent(r, u, b.AgentID)
	if err == nil && body.AgentID != "" && body.AgentID != a.ID && body.AgentID != a.Name {
		err = berth.Errorf(berth.CodeInvalidBody, "build %s does not belong to agent %q", b.ID, body.AgentID)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	now := time.Now().UTC()
	b.Status, b.UpdatedAt = st, now
	if body.Logs != nil {
		b.Logs = *body.Logs
	}
	if body.ErrorMessage != nil {
		b.Error = *body.ErrorMessage
	}
	if st == berth.BuildSuccess || st == berth.BuildFailed {
		b.FinishedAt = &now
	}
	if err := s.store.UpdateBuild(r.Context(), b); err != nil {
		s.writeError(w, r, err)
		return
	}
	img := ""
	if body.ImageReference != nil {
		img = *body.ImageReference
	}
	writeData(w, http.StatusOK, "Build status updated", viewBuild(b, img))
}

type createDeploymentBody struct {
	AgentID    string  `json:"agent_id"`
	BuildID    string  `json:"build_id"`
	Namespace  *string `json:"namespace"`
	Replicas   *int    `json:"replicas"`
	Status     string  `json:"status"`
	ServiceURL *string `json:"service_url"`
}

// parseRecordDeploymentStatus accepts the statuses a record write may set:
// Berth starts deployments itself (update, rollback), so records can only
// say a deployment is stopped or failed.
func parseRecordDeploymentStatus(s string, def berth.DeploymentStatus) (berth.DeploymentStatus, error) {
	if s == "" {
		if def == "" {
			return "", berth.Errorf(berth.CodeInvalidBody, "status is required")
		}
		return def, nil
	}
	switch st := berth.DeploymentStatus(s); st {
	case berth.DeploymentStopped, berth.DeploymentFailed:
		return st, nil
	case berth.DeploymentStarting, berth.DeploymentRunning:
		return "", berth.Errorf(berth.CodeInvalid, "Berth starts deployments itself; deploy with update or rollback instead of recording status %q", s)
	}
	return "", berth.Errorf(berth.CodeInvalidBody, "status must be starting, running, stopped or failed, not %q", s)
}

func (s *Server) handleCreateDeployment(w http.ResponseWriter, r *http.Request, u berth.User) {
	var body createDeploymentBody
	if err := decodeJSON(w, r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	if body.AgentID == "" || body.BuildID == "" {
		s.writeError(w, r, berth.Errorf(berth.CodeInvalidBody, "agent_id and build_id are required"))
		return
	}
	st, err := parseRecordDeploymentStatus(body.Status, berth.DeploymentStopped)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	a, err := s.agentFor(r, u, body.AgentID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	b, err := s.store.BuildByID(r.Context(), body.BuildID)
	if err == nil && b.AgentID != a.ID {
		err = berth.Errorf(berth.CodeNotFound, "build %q not found for agent %s", body.BuildID, a.Name)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	now := time.Now().UTC()
	d := berth.Deployment{ID: uuid.NewString(), AgentID: a.ID, VersionID: b.VersionID, Version: b.Version, BuildID: b.ID, Status: st, CreatedAt: now, UpdatedAt: now}
	if body.ServiceURL != nil {
		d.URL = *body.ServiceURL
	}
	if err := s.store.CreateDeployment(r.Context(), d); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeData(w, http.StatusCreated, "Deployment record created", s.viewDeployment(a, d))
}

type deploymentStatusBody struct {
	AgentID           string  `json:"agent_id"`
	BuildID           *string `json:"build_id"`
	Status            string  `json:"status"`
	ServiceURL        *string `json:"service_url"`
	K8sDeploymentName *string `json:"k8s_deployment_name"`
	Namespace         *string `json:"namespace"`
	ErrorMessage      *string `json:"error_message"`
}

func (s *Server) handleDeploymentStatus(w http.ResponseWriter, r *http.Request, u berth.User) {
	var body deploymentStatusBody
	if err := decodeJSON(w, r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := parseRecordDeploymentStatus(body.Status, "")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	d, err := s.store.DeploymentByID(r.Context(), r.PathValue("deployment_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	a, err := s.managedAgent(r, u, d.AgentID)
	if err == nil && d.VersionID == a.ActiveVersionID && d.Status.Live() {
		err = berth.Errorf(berth.CodeConflict, "deployment %s serves the active version; roll back or update instead", d.ID)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	wasLive := d.Status.Live()
	d.Status, d.UpdatedAt, d.StopAt = st, time.Now().UTC(), nil
	if body.ErrorMessage != nil {
		d.Error = *body.ErrorMessage
	}
	if err := s.store.UpdateDeployment(r.Context(), d); err != nil {
		s.writeError(w, r, err)
		return
	}
	if wasLive {
		if err := s.runtime.Stop(r.Context(), d.ID); err != nil {
			s.log.Warn("stop deployment", "deployment", d.ID, "err", err)
		}
	}
	writeData(w, http.StatusOK, "Deployment status updated", s.viewDeployment(a, d))
}

type versionMapping struct {
	AgentID         string `json:"agent_id"`
	SemanticVersion string `json:"semantic_version"`
	ImageTag        string `json:"image_tag"`
	Timestamp       int64  `json:"timestamp"`
	StatusCode      int    `json:"status_code"`
	Message         string `json:"message"`
}

func (s *Server) handleVersionMapping(w http.ResponseWriter, r *http.Request, u berth.User) {
	q := r.URL.Query()
	if q.Get("agent_id") == "" || q.Get("semantic_version") == "" {
		s.writeError(w, r, berth.Errorf(berth.CodeInvalid, "agent_id and semantic_version are required query parameters"))
		return
	}
	a, err := s.agentFor(r, u, q.Get("agent_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	v, err := s.store.VersionByLabel(r.Context(), a.ID, strings.TrimPrefix(q.Get("semantic_version"), "v"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	tag := v.Config.Image
	if tag == "" {
		tag = "sha256:" + v.Digest
	}
	writeJSON(w, http.StatusOK, versionMapping{AgentID: a.ID, SemanticVersion: v.Version, ImageTag: tag,
		Timestamp: v.CreatedAt.Unix(), StatusCode: http.StatusOK, Message: "Version mapping"})
}

// managedAgent loads the agent a record belongs to and checks that u may
// manage it.
func (s *Server) managedAgent(r *http.Request, u berth.User, agentID string) (berth.Agent, error) {
	a, err := s.store.AgentByID(r.Context(), agentID)
	if err != nil {
		return a, err
	}
	return a, mayManage(u, a)
}
