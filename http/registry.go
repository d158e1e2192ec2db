package http

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/berthhq/berth"
)

// registryEntry is Nasiko's registry item: the agent's A2A card fields plus
// its id, url and times. Card fields Berth does not model are kept as given.
type registryEntry map[string]any

func (s *Server) viewRegistry(a berth.Agent) registryEntry {
	e := registryEntry{}
	if len(a.Card) > 0 {
		_ = json.Unmarshal(a.Card, &e)
	}
	for k, def := range map[string]any{
		"protocolVersion": "0.2.9", "preferredTransport": "JSONRPC", "capabilities": map[string]any{},
		"securitySchemes": map[string]any{}, "security": []any{}, "defaultInputModes": []any{},
		"defaultOutputModes": []any{}, "skills": []any{}, "tags": []any{}, "signatures": []any{},
		"supportsAuthenticatedExtendedCard": false,
	} {
		if _, ok := e[k]; !ok {
			e[k] = def
		}
	}
	e["id"] = a.ID
	e["name"] = a.Name
	e["description"] = a.Description
	e["url"] = s.agentURL(a.Name)
	e["version"] = a.ActiveVersion
	e["owner_id"] = a.OwnerID
	e["created_at"] = a.CreatedAt
	e["updated_at"] = a.UpdatedAt
	return e
}

// registryRequest is the validated part of a registry create/upsert body;
// the whole body is kept as the agent's card.
type registryRequest struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

// parseRegistryBody reads a registry body: a JSON object with a valid name
// and a string description (other A2A card fields are kept as given).
func parseRegistryBody(w http.ResponseWriter, r *http.Request) (registryRequest, json.RawMessage, error) {
	var raw map[string]json.RawMessage
	if err := decodeJSON(w, r, &raw, false); err != nil {
		return registryRequest{}, nil, err
	}
	var req registryRequest
	for _, f := range []struct {
		key string
		dst *string
	}{{"name", &req.Name}, {"description", &req.Description}} {
		v, ok := raw[f.key]
		if !ok {
			continue
		}
		if err := json.Unmarshal(v, f.dst); err != nil {
			return req, nil, berth.Errorf(berth.CodeInvalidBody, "field %q must be a string", f.key)
		}
		if err := checkText(f.key, *f.dst, true); err != nil {
			return req, nil, err
		}
	}
	// Fields Berth owns are not taken from the body.
	for _, k := range []string{"id", "url", "owner_id", "created_at", "updated_at", "version"} {
		delete(raw, k)
	}
	card, _ := json.Marshal(raw)
	return req, card, nil
}

func (s *Server) handleRegistryCreate(w http.ResponseWriter, r *http.Request, u berth.User) {
	req, card, err := parseRegistryBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !berth.ValidName(req.Name) {
		s.writeError(w, r, berth.Errorf(berth.CodeInvalidBody, "name %q must match ^[a-z0-9][a-z0-9-]{0,62}$", req.Name))
		return
	}
	now := time.Now().UTC()
	a := berth.Agent{ID: uuid.NewString(), Name: req.Name, OwnerID: u.ID, Description: req.Description, Card: card, CreatedAt: now, UpdatedAt: now}
	if err := s.store.CreateAgent(r.Context(), a); err != nil {
		if berth.ErrorCode(err) == berth.CodeConflict {
			err = berth.Errorf(berth.CodeConflict, "agent %q already exists", a.Name)
		}
		s.writeError(w, r, err)
		return
	}
	writeData(w, http.StatusCreated, "Agent registered", s.viewRegistry(a))
}

func (s *Server) handleRegistryUpsert(w http.ResponseWriter, r *http.Request, u berth.User) {
	name := r.PathValue("agent_name")
	if !berth.ValidName(name) {
		s.writeError(w, r, berth.Errorf(berth.CodeInvalid, "agent name %q must match ^[a-z0-9][a-z0-9-]{0,62}$", name))
		return
	}
	req, card, err := parseRegistryBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Name != "" && req.Name != name {
		s.writeError(w, r, berth.Errorf(berth.CodeInvalidBody, "name %q in the body does not match %q in the path", req.Name, name))
		return
	}
	a, err := s.store.AgentByName(r.Context(), name)
	switch {
	case berth.ErrorCode(err) == berth.CodeNotFound:
		now := time.Now().UTC()
		a = berth.Agent{ID: uuid.NewString(), Name: name, OwnerID: u.ID, Description: req.Description, Card: card, CreatedAt: now, UpdatedAt: now}
		if err := s.store.CreateAgent(r.Context(), a); err != nil {
			s.writeError(w, r, err)
			return
		}
		writeData(w, http.StatusCreated, "Agent registered", s.viewRegistry(a))
		return
	case err != nil:
		s.writeError(w, r, err)
		return
	}
	if err := mayManage(u, a); err != nil {
		s.writeError(w, r, err)
		return
	}
	a.Description, a.Card, a.UpdatedAt = req.Description, card, time.Now().UTC()
	if err := s.store.UpdateAgentMeta(r.Context(), a); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeData(w, http.StatusOK, "Agent updated", s.viewRegistry(a))
}

func (s *Server) handleRegistryByName(w http.ResponseWriter, r *http.Request) {
	a, err := s.lookupAgent(r, r.PathValue("agent_name"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeData(w, http.StatusOK, "Agent found", s.viewRegistry(a))
}

func (s *Server) handleRegistryByID(w http.ResponseWriter, r *http.Request, u berth.User) {
	a, err := s.lookupAgent(r, r.PathValue("agent_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeData(w, http.StatusOK, "Agent found", s.viewRegistry(a))
}

func cardStrings(card json.RawMessage) (icon *string, tags []string) {
	var c struct {
		IconURL *string  `json:"iconUrl"`
		Tags    []string `json:"tags"`
	}
	_ = json.Unmarshal(card, &c)
	if c.Tags == nil {
		c.Tags = []string{}
	}
	return c.IconURL, c.Tags
}

func (s *Server) handleMyAgents(w http.ResponseWriter, r *http.Request, u berth.User) {
	as, err := s.store.ListAgents(r.Context(), u.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]AgentSummary, 0, len(as))
	for _, a := range as {
		icon, tags := cardStrings(a.Card)
		out = append(out, AgentSummary{AgentID: a.ID, Name: a.Name, IconURL: icon, Tags: tags, Description: a.Description,
			CurrentVersion: a.ActiveVersion, URL: s.agentURL(a.Name)})
	}
	writeData(w, http.StatusOK, "Agents", out)
}

type uploadInfo struct {
	UploadType     string    `json:"upload_type"`
	UploadStatus   string    `json:"upload_status"`
	Status         string    `json:"status"`
	CurrentVersion string    `json:"current_version"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
	URL            string    `json:"url"`
}

type uploadAgent struct {
	AgentID     string     `json:"agent_id"`
	AgentName   string     `json:"agent_name"`
	IconURL     *string    `json:"icon_url"`
	UploadInfo  uploadInfo `json:"upload_info"`
	Tags        []string   `json:"tags"`
	Description string     `json:"description"`
}

func (s *Server) handleUploadAgents(w http.ResponseWriter, r *http.Request, u berth.User) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			s.writeError(w, r, berth.Errorf(berth.CodeInvalid, "limit must be a positive number"))
			return
		}
		limit = n
	}
	as, err := s.store.ListAgents(r.Context(), u.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]uploadAgent, 0, len(as))
	for _, a := range as {
		if len(out) == limit {
			break
		}
		icon, tags := cardStrings(a.Card)
		status := "active"
		if a.ActiveVersionID == "" {
			status = "not_deployed"
		}
		out = append(out, uploadAgent{AgentID: a.ID, AgentName: a.Name, IconURL: icon, Tags: tags, Description: a.Description,
			UploadInfo: uploadInfo{UploadType: "zip", UploadStatus: status, Status: status, CurrentVersion: a.ActiveVersion, CreatedAt: a.CreatedAt, UpdatedAt: a.UpdatedAt,
				URL: s.agentURL(a.Name)}})
	}
	writeData(w, http.StatusOK, "Uploaded agents", out)
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request, u berth.User) {
	// A typo such as ?dry_run=true must not delete for real.
	if _, err := queryParams(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	a, err := s.agentFor(r, u, r.PathValue("agent_id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.engine.Delete(r.Context(), u, a); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeData(w, http.StatusOK, "Agent "+a.Name+" and all its resources were deleted",
		map[string]any{"success": true, "message": "deleted", "agent_id": a.ID, "agent_name": a.Name})
}
