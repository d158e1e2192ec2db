package server_test

// Acceptance tests of the plain routes: health check, unknown routes, the
// OpenAPI document, the registry and the build/deployment record routes.

import (
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// openAPIDoc is the part of the OpenAPI document the tests read.
type openAPIDoc struct {
	OpenAPI string                                 `json:"openapi"`
	Paths   map[string]map[string]openAPIOperation `json:"paths"`
}

type openAPIOperation struct {
	Summary     string `json:"summary"`
	OperationID string `json:"operationId"`
	Auth        string `json:"x-berth-auth"`
	Parameters  []struct {
		Name string `json:"name"`
		In   string `json:"in"`
	} `json:"parameters"`
	Security []map[string][]string `json:"security"`
}

type docRoute struct{ method, path, auth string }

// routes lists the document's routes as "METHOD path", sorted.
func (d openAPIDoc) routes() []docRoute {
	var out []docRoute
	for p, ops := range d.Paths {
		for m, op := range ops {
			out = append(out, docRoute{strings.ToUpper(m), p, op.Auth})
		}
	}
	slices.SortFunc(out, func(a, b docRoute) int { return strings.Compare(a.method+" "+a.path, b.method+" "+b.path) })
	return out
}

func (ts *testServer) openAPI() openAPIDoc {
	ts.t.Helper()
	st, body := ts.get("/api/v1/openapi.json", "")
	if st != http.StatusOK {
		ts.t.Fatalf("GET /api/v1/openapi.json = %d %s", st, body)
	}
	var d openAPIDoc
	mustJSON(ts.t, body, &d)
	return d
}

var pathParamRE = regexp.MustCompile(`\{[a-z_]+\}`)

// fillPath replaces the path parameters of an OpenAPI path with values that
// name nothing.
func fillPath(p string) string {
	return pathParamRE.ReplaceAllStringFunc(p, func(m string) string {
		if strings.HasSuffix(m, "_name}") {
			return "no-such-agent"
		}
		return "00000000-0000-4000-8000-00000000dead"
	})
}

// isNoRoute reports whether a response is the catch-all "no route" 404.
// isNoRoute reports whether a response is the catch-all's: 404 for an
// unknown path, 405 for a known path with another method.
func isNoRoute(st int, body []byte) bool {
	var e errorBody
	_ = json.Unmarshal(body, &e)
	return (st == http.StatusNotFound && strings.HasPrefix(e.Message, "no route for ")) ||
		(st == http.StatusMethodNotAllowed && e.Code == "method_not_allowed")
}

func TestHealthAndUnknownRoutes(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	st, body := ts.get("/api/v1/healthcheck", "")
	if st != http.StatusOK {
		t.Fatalf("healthcheck = %d %s", st, body)
	}
	var h struct {
		Data       struct{ Status string }
		StatusCode int `json:"status_code"`
		Message    string
	}
	mustJSON(t, body, &h)
	if h.Data.Status != "healthy" || h.StatusCode != 200 || h.Message == "" {
		t.Errorf("healthcheck body = %s, want data.status healthy in the success envelope", body)
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/"},
		{"GET", "/api/v1/nope"},
		{"GET", "/api/v2/healthcheck"},
		{"POST", "/api/v1/agents"},
		{"GET", "/api/v1/healthcheck/extra"},
	} {
		st, hdr, body := ts.call(c.method, c.path, ts.Admin, nil, "", nil)
		wantError(t, c.method+" "+c.path, st, body, http.StatusNotFound, "not_found")
		if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s %s: Content-Type = %q, want JSON", c.method, c.path, ct)
		}
	}
	// A known path with another method is 405 naming the allowed ones.
	for _, c := range []struct{ method, path, allow string }{
		{"DELETE", "/api/v1/openapi.json", "GET"},
		{"PATCH", "/api/v1/registry", "POST"},
		{"GET", "/api/v1/agents/x/rollback", "POST"},
	} {
		st, hdr, body := ts.call(c.method, c.path, ts.Admin, nil, "", nil)
		wantError(t, c.method+" "+c.path, st, body, http.StatusMethodNotAllowed, "method_not_allowed")
		if got := hdr.Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow = %q, want %q", c.method, c.path, got, c.allow)
		}
	}
}

// wantRoutes is the API the server must serve, and nothing else.
var wantRoutes = []string{
	"DELETE /api/v1/registry/agent/{agent_id}",
	"GET /api/v1/agents/build/version-mapping",
	"GET /api/v1/agents/{agent_id}/builds",
	"GET /api/v1/agents/{agent_id}/deployments",
	"GET /api/v1/agents/{agent_id}/download",
	"GET /api/v1/agents/{agent_id}/logs",
	"GET /api/v1/agents/{agent_id}/operations",
	"GET /api/v1/agents/{agent_id}/operations/{operation_id}",
	"GET /api/v1/agents/{agent_id}/versions",
	"GET /api/v1/healthcheck",
	"GET /api/v1/openapi.json",
	"GET /api/v1/registry/agent/id/{agent_id}",
	"GET /api/v1/registry/agent/name/{agent_name}",
	"GET /api/v1/registry/user/agents",
	"GET /api/v1/user/upload-agents",
	"POST /api/v1/agents/build",
	"POST /api/v1/agents/deploy",
	"POST /api/v1/agents/upload",
	"POST /api/v1/agents/{agent_id}/rollback",
	"POST /api/v1/registry",
	"POST /api/v1/user/register",
	"POST /auth/users/login",
	"PUT /api/v1/agents/build/{build_id}/status",
	"PUT /api/v1/agents/deployment/{deployment_id}/status",
	"PUT /api/v1/agents/{agent_id}/update",
	"PUT /api/v1/registry/agent/{agent_name}",
}

func TestOpenAPIListsExactlyTheRoutes(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	doc := ts.openAPI()
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi = %q, want 3.x", doc.OpenAPI)
	}
	var got []string
	for _, r := range doc.routes() {
		got = append(got, r.method+" "+r.path)
	}
	if !slices.Equal(got, wantRoutes) {
		t.Errorf("OpenAPI routes =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantRoutes, "\n"))
	}

	opIDs := map[string]bool{}
	for p, ops := range doc.Paths {
		for m, op := range ops {
			what := strings.ToUpper(m) + " " + p
			if op.Summary == "" || op.OperationID == "" {
				t.Errorf("%s: summary %q, operationId %q; want both", what, op.Summary, op.OperationID)
			}
			if opIDs[op.OperationID] {
				t.Errorf("%s: operationId %q is not unique", what, op.OperationID)
			}
			opIDs[op.OperationID] = true
			var params []string
			for _, prm := range op.Parameters {
				if prm.In == "path" {
					params = append(params, "{"+prm.Name+"}")
				}
			}
			if want := pathParamRE.FindAllString(p, -1); !slices.Equal(params, want) {
				t.Errorf("%s: path parameters %v, want %v", what, params, want)
			}
			if (op.Auth == "public") != (len(op.Security) == 0) {
				t.Errorf("%s: x-berth-auth %q with security %v", what, op.Auth, op.Security)
			}
		}
	}
	for _, public := range []string{"GET /api/v1/healthcheck", "POST /auth/users/login", "GET /api/v1/registry/agent/name/{agent_name}", "GET /api/v1/openapi.json"} {
		for _, r := range doc.routes() {
			if r.method+" "+r.path == public && r.auth != "public" {
				t.Errorf("%s: x-berth-auth %q, want public", public, r.auth)
			}
		}
	}

	// Every documented route is served (with and without a token it never
	// falls through to the catch-all), and the methods a path does not
	// document are not.
	// Paths are compared as templates: Nasiko's document (which Berth
	// mirrors) has /api/v1/registry/agent/{agent_name} (PUT) and
	// /api/v1/registry/agent/{agent_id} (DELETE), one template.
	documented := map[string]map[string]bool{}
	for p, ops := range doc.Paths {
		tmpl := pathParamRE.ReplaceAllString(p, "{}")
		if documented[tmpl] == nil {
			documented[tmpl] = map[string]bool{}
		}
		for m := range ops {
			documented[tmpl][strings.ToUpper(m)] = true
		}
	}
	methods := []string{"GET", "POST", "PUT", "DELETE", "PATCH"}
	for p := range doc.Paths {
		path := fillPath(p)
		for _, m := range methods {
			documented := documented[pathParamRE.ReplaceAllString(p, "{}")][m]
			for _, tok := range []string{ts.Admin, ""} {
				st, _, body := ts.call(m, path, tok, strings.NewReader("{}"), "application/json", nil)
				if documented && isNoRoute(st, body) {
					t.Errorf("%s %s (documented) = %d %s: not served", m, path, st, body)
				}
				if !documented && !isNoRoute(st, body) {
					t.Errorf("%s %s (not documented) = %d %s, want the no-route 404 or 405", m, path, st, body)
				}
			}
		}
	}
	// The proxy is the one undocumented prefix.
	if st, body := ts.get("/agents/no-such-agent/x", ""); st != http.StatusNotFound || isNoRoute(st, body) {
		t.Errorf("GET /agents/no-such-agent/x = %d %s, want the proxy's 404", st, body)
	}
}

// registryData decodes a registry entry answer.
func registryData(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var r struct {
		Data       map[string]any
		StatusCode int `json:"status_code"`
	}
	mustJSON(t, body, &r)
	if r.Data == nil {
		t.Fatalf("registry answer %s has no data", body)
	}
	return r.Data
}

func TestRegistryRoutes(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	alice := ts.register("reg-alice", false)
	bob := ts.register("reg-bob", false)

	// Create. Fields Berth owns are not taken from the body.
	st, body := ts.do("POST", "/api/v1/registry", alice.Token, jsonBody(map[string]any{
		"name": "reg-one", "description": "first", "skills": []map[string]string{{"id": "s1", "name": "Skill"}},
		"owner_id": bob.UserID, "id": "not-an-id", "version": "9.9.9", "url": "http://evil.example",
	}), "application/json", nil)
	if st != http.StatusCreated {
		t.Fatalf("registry create = %d %s, want 201", st, body)
	}
	one := registryData(t, body)
	id, _ := one["id"].(string)
	if id == "" || id == "not-an-id" || one["name"] != "reg-one" || one["description"] != "first" || one["owner_id"] != alice.UserID ||
		one["version"] != "" || !strings.HasSuffix(one["url"].(string), "/agents/reg-one/") {
		t.Errorf("created entry = %v, want id, name, description, the caller as owner, no version, the proxy url", one)
	}
	if skills, _ := one["skills"].([]any); len(skills) != 1 {
		t.Errorf("created entry skills = %v, want the card's one skill kept", one["skills"])
	}
	st, body = ts.do("POST", "/api/v1/registry", bob.Token, jsonBody(map[string]any{"name": "reg-one"}), "application/json", nil)
	wantError(t, "create an existing name", st, body, http.StatusConflict, "conflict")

	// Get by name is public; by id needs a token.
	st, body = ts.get("/api/v1/registry/agent/name/reg-one", "")
	if st != http.StatusOK || registryData(t, body)["id"] != id {
		t.Errorf("get by name without a token = %d %s, want 200 with id %s", st, body, id)
	}
	st, body = ts.get("/api/v1/registry/agent/name/no-such-agent", "")
	wantError(t, "get unknown name", st, body, http.StatusNotFound, "not_found")
	st, body = ts.get("/api/v1/registry/agent/id/"+id, alice.Token)
	if st != http.StatusOK || registryData(t, body)["name"] != "reg-one" {
		t.Errorf("get by id = %d %s, want 200 reg-one", st, body)
	}
	st, body = ts.get("/api/v1/registry/agent/id/"+id, "")
	wantError(t, "get by id without a token", st, body, http.StatusUnauthorized, "unauthorized")
	st, body = ts.get("/api/v1/registry/agent/id/00000000-0000-4000-8000-000000000000", alice.Token)
	wantError(t, "get unknown id", st, body, http.StatusNotFound, "not_found")

	// Upsert: creates a missing name, updates an existing one (owner only).
	st, body = ts.do("PUT", "/api/v1/registry/agent/reg-two", bob.Token, jsonBody(map[string]any{"description": "bob's"}), "application/json", nil)
	if st != http.StatusCreated || registryData(t, body)["owner_id"] != bob.UserID {
		t.Fatalf("upsert new = %d %s, want 201 owned by bob", st, body)
	}
	st, body = ts.do("PUT", "/api/v1/registry/agent/reg-one", alice.Token, jsonBody(map[string]any{"name": "reg-one", "description": "second"}), "application/json", nil)
	if st != http.StatusOK {
		t.Fatalf("upsert existing = %d %s, want 200", st, body)
	}
	if got := registryData(t, body); got["description"] != "second" || got["id"] != id {
		t.Errorf("upsert existing = %v, want description second, same id", got)
	}
	if e, _ := ts.agentByName("reg-one"); e["description"] != "second" {
		t.Errorf("after upsert, get by name = %v, want description second", e)
	}
	st, body = ts.do("PUT", "/api/v1/registry/agent/reg-one", bob.Token, jsonBody(map[string]any{"description": "bob was here"}), "application/json", nil)
	wantError(t, "upsert of another user's agent", st, body, http.StatusForbidden, "forbidden")
	st, body = ts.do("PUT", "/api/v1/registry/agent/reg-one", alice.Token, jsonBody(map[string]any{"name": "reg-other"}), "application/json", nil)
	wantError(t, "upsert with a different name in the body", st, body, http.StatusUnprocessableEntity, "invalid_body")
	st, body = ts.do("PUT", "/api/v1/registry/agent/Not_A_Name", alice.Token, jsonBody(map[string]any{}), "application/json", nil)
	wantError(t, "upsert of an invalid name", st, body, http.StatusBadRequest, "invalid")

	// My agents: only the caller's.
	names := func(tok string) []string {
		t.Helper()
		st, body := ts.get("/api/v1/registry/user/agents", tok)
		if st != http.StatusOK {
			t.Fatalf("my agents = %d %s", st, body)
		}
		var r struct {
			Data []struct {
				AgentID string `json:"agent_id"`
				Name    string `json:"name"`
			}
		}
		mustJSON(t, body, &r)
		var out []string
		for _, a := range r.Data {
			out = append(out, a.Name)
		}
		return out
	}
	if got := names(alice.Token); !slices.Equal(got, []string{"reg-one"}) {
		t.Errorf("alice's agents = %v, want [reg-one]", got)
	}
	if got := names(bob.Token); !slices.Equal(got, []string{"reg-two"}) {
		t.Errorf("bob's agents = %v, want [reg-two]", got)
	}

	// Malformed bodies.
	for _, c := range []struct{ name, method, path, body string }{
		{"create: not JSON", "POST", "/api/v1/registry", `{"name":`},
		{"create: array", "POST", "/api/v1/registry", `[{"name":"reg-x"}]`},
		{"create: empty", "POST", "/api/v1/registry", ``},
		{"create: null", "POST", "/api/v1/registry", `null`},
		{"create: name not a string", "POST", "/api/v1/registry", `{"name":5}`},
		{"create: name null", "POST", "/api/v1/registry", `{"name":null}`},
		{"create: description not a string", "POST", "/api/v1/registry", `{"name":"reg-x","description":{"a":1}}`},
		{"create: invalid name", "POST", "/api/v1/registry", `{"name":"Reg X"}`},
		{"create: no name", "POST", "/api/v1/registry", `{"description":"x"}`},
		{"create: trailing data", "POST", "/api/v1/registry", `{"name":"reg-x"} {"name":"reg-y"}`},
		{"upsert: not JSON", "PUT", "/api/v1/registry/agent/reg-x", `nope`},
		{"upsert: name not a string", "PUT", "/api/v1/registry/agent/reg-x", `{"name":["reg-x"]}`},
		{"upsert: trailing data", "PUT", "/api/v1/registry/agent/reg-x", `{}x`},
	} {
		st, body := ts.do(c.method, c.path, alice.Token, strings.NewReader(c.body), "application/json", nil)
		wantError(t, c.name, st, body, http.StatusUnprocessableEntity, "invalid_body")
	}
	if _, ok := ts.agentByName("reg-x"); ok {
		t.Errorf("a malformed request created reg-x")
	}

	// Delete: owner only, then it is gone.
	st, body = ts.do("DELETE", "/api/v1/registry/agent/"+id, bob.Token, nil, "", nil)
	wantError(t, "delete by another user", st, body, http.StatusForbidden, "forbidden")
	st, body = ts.do("DELETE", "/api/v1/registry/agent/"+id, alice.Token, nil, "", nil)
	if st != http.StatusOK {
		t.Fatalf("delete = %d %s, want 200", st, body)
	}
	if _, ok := ts.agentByName("reg-one"); ok {
		t.Errorf("reg-one still in the registry after delete")
	}
	st, body = ts.do("DELETE", "/api/v1/registry/agent/"+id, alice.Token, nil, "", nil)
	wantError(t, "delete twice", st, body, http.StatusNotFound, "not_found")
	if got := names(alice.Token); len(got) != 0 {
		t.Errorf("alice's agents after delete = %v, want none", got)
	}
}

func TestRecordRoutes(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	alice := ts.register("rec-alice", false)
	bob := ts.register("rec-bob", false)
	up := ts.upload(alice.Token, light(t, "rec-agent", "1.0.0", nil))
	ds := ts.deployments(alice.Token, "rec-agent")
	if len(ds) != 1 {
		t.Fatalf("deployments = %+v, want 1", ds)
	}
	active := ds[0]

	// dataOf checks status and decodes the envelope's data.
	dataOf := func(what string, st int, body []byte, want int) map[string]any {
		t.Helper()
		if st != want {
			t.Fatalf("%s = %d %s, want %d", what, st, body, want)
		}
		var r struct{ Data map[string]any }
		mustJSON(t, body, &r)
		return r.Data
	}

	// Builds: create as the owner and as a superuser.
	var buildIDs []string
	for who, tok := range map[string]string{"owner": alice.Token, "superuser": ts.Admin} {
		st, body := ts.do("POST", "/api/v1/agents/build", tok, jsonBody(map[string]any{
			"agent_id": up.AgentID, "version_tag": "v1.0.0", "status": "success", "logs": "built by CI", "image_reference": "reg/x:1",
		}), "application/json", nil)
		b := dataOf("create build as "+who, st, body, http.StatusCreated)
		if b["_id"] == "" || b["agent_id"] != up.AgentID || b["version_tag"] != "1.0.0" || b["status"] != "success" || b["logs"] != "built by CI" {
			t.Errorf("created build = %v", b)
		}
		buildIDs = append(buildIDs, b["_id"].(string))
	}
	st, body := ts.do("PUT", "/api/v1/agents/build/"+buildIDs[0]+"/status", alice.Token, jsonBody(map[string]any{"status": "failed", "error_message": "flaky"}), "application/json", nil)
	if b := dataOf("build status", st, body, http.StatusOK); b["status"] != "failed" || b["error_message"] != "flaky" {
		t.Errorf("updated build = %v, want failed with the error message", b)
	}
	st, body = ts.do("PUT", "/api/v1/agents/build/00000000-0000-4000-8000-000000000000/status", alice.Token, jsonBody(map[string]any{"status": "failed"}), "application/json", nil)
	wantError(t, "status of an unknown build", st, body, http.StatusNotFound, "not_found")
	st, body = ts.do("POST", "/api/v1/agents/build", alice.Token, jsonBody(map[string]any{"agent_id": up.AgentID, "version_tag": "7.0.0"}), "application/json", nil)
	wantError(t, "build of an unknown version", st, body, http.StatusNotFound, "not_found")

	// Deployment records: only stopped/failed can be recorded.
	st, body = ts.do("POST", "/api/v1/agents/deploy", alice.Token, jsonBody(map[string]any{"agent_id": "rec-agent", "build_id": up.BuildID, "status": "stopped", "service_url": "http://example.invalid"}), "application/json", nil)
	rec := dataOf("create deployment record", st, body, http.StatusCreated)
	if rec["_id"] == "" || rec["status"] != "stopped" || rec["agent_id"] != up.AgentID || rec["build_id"] != up.BuildID || rec["active"] != false {
		t.Errorf("created deployment record = %v", rec)
	}
	// A deployment recorded for a later build record of the same version.
	st, body = ts.do("POST", "/api/v1/agents/deploy", alice.Token, jsonBody(map[string]any{"agent_id": "rec-agent", "build_id": buildIDs[1], "status": "failed"}), "application/json", nil)
	rec2 := dataOf("create deployment record of a recorded build", st, body, http.StatusCreated)
	if rec2["build_id"] != buildIDs[1] {
		t.Errorf("created deployment record build_id = %v, want %s", rec2["build_id"], buildIDs[1])
	}
	// Every deployment, the engine's and the recorded ones, reads back with
	// the build it was made from, whatever build records were added later.
	wantBuild := map[string]string{active.ID: up.BuildID, rec["_id"].(string): up.BuildID, rec2["_id"].(string): buildIDs[1]}
	st, body = ts.get("/api/v1/agents/rec-agent/deployments", alice.Token)
	var listed struct {
		Data []struct {
			ID      string `json:"_id"`
			BuildID string `json:"build_id"`
		}
	}
	mustJSON(t, body, &listed)
	if st != http.StatusOK || len(listed.Data) != 3 {
		t.Fatalf("deployments = %d %s, want 3", st, body)
	}
	for _, d := range listed.Data {
		if d.BuildID != wantBuild[d.ID] {
			t.Errorf("deployment %s build_id = %q in the list (builds of its version: %s, %v), want %q (the build it was made from)",
				d.ID, d.BuildID, up.BuildID, buildIDs, wantBuild[d.ID])
		}
	}
	st, body = ts.do("POST", "/api/v1/agents/deploy", alice.Token, jsonBody(map[string]any{"agent_id": "rec-agent", "build_id": up.BuildID, "status": "running"}), "application/json", nil)
	wantError(t, "record a running deployment", st, body, http.StatusBadRequest, "invalid")
	st, body = ts.do("POST", "/api/v1/agents/deploy", ts.Admin, jsonBody(map[string]any{"agent_id": "rec-agent", "build_id": "00000000-0000-4000-8000-000000000000"}), "application/json", nil)
	wantError(t, "deployment of an unknown build", st, body, http.StatusNotFound, "not_found")
	st, body = ts.do("PUT", "/api/v1/agents/deployment/"+rec["_id"].(string)+"/status", alice.Token, jsonBody(map[string]any{"status": "failed", "error_message": "gone"}), "application/json", nil)
	if d := dataOf("deployment record status", st, body, http.StatusOK); d["status"] != "failed" {
		t.Errorf("updated deployment record = %v, want failed", d)
	}

	// The active deployment cannot be marked stopped or failed by a record.
	for _, status := range []string{"stopped", "failed"} {
		st, body = ts.do("PUT", "/api/v1/agents/deployment/"+active.ID+"/status", ts.Admin, jsonBody(map[string]any{"status": status}), "application/json", nil)
		wantError(t, "mark the active deployment "+status, st, body, http.StatusConflict, "conflict")
	}
	if w := ts.whoami("rec-agent"); w.Version != "1.0.0" || w.DeploymentID != active.ID {
		t.Errorf("whoami after refused record writes = %+v, want the active deployment %s", w, active.ID)
	}

	// Version mapping.
	st, body = ts.get("/api/v1/agents/build/version-mapping?agent_id="+up.AgentID+"&semantic_version=1.0.0", alice.Token)
	if st != http.StatusOK {
		t.Fatalf("version mapping = %d %s", st, body)
	}
	var vm struct {
		AgentID         string `json:"agent_id"`
		SemanticVersion string `json:"semantic_version"`
		ImageTag        string `json:"image_tag"`
		Timestamp       int64  `json:"timestamp"`
	}
	mustJSON(t, body, &vm)
	if vm.AgentID != up.AgentID || vm.SemanticVersion != "1.0.0" || !strings.HasPrefix(vm.ImageTag, "sha256:") || vm.Timestamp <= 0 {
		t.Errorf("version mapping = %s", body)
	}
	for _, q := range []string{"", "?agent_id=" + up.AgentID, "?semantic_version=1.0.0"} {
		st, body = ts.get("/api/v1/agents/build/version-mapping"+q, alice.Token)
		wantError(t, "version mapping "+q, st, body, http.StatusBadRequest, "invalid")
	}
	st, body = ts.get("/api/v1/agents/build/version-mapping?agent_id="+up.AgentID+"&semantic_version=3.0.0", alice.Token)
	wantError(t, "version mapping of an unknown version", st, body, http.StatusNotFound, "not_found")

	// Auth: no token is 401, another user is 403 (also checked with every
	// route in TestForeignAgentIsForbidden).
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/api/v1/agents/build", `{"agent_id":"rec-agent","version_tag":"1.0.0"}`},
		{"PUT", "/api/v1/agents/build/" + up.BuildID + "/status", `{"status":"failed"}`},
		{"POST", "/api/v1/agents/deploy", `{"agent_id":"rec-agent","build_id":"` + up.BuildID + `"}`},
		{"PUT", "/api/v1/agents/deployment/" + active.ID + "/status", `{"status":"stopped"}`},
		{"GET", "/api/v1/agents/build/version-mapping?agent_id=rec-agent&semantic_version=1.0.0", ``},
	} {
		st, body := ts.do(c.method, c.path, "", strings.NewReader(c.body), "application/json", nil)
		wantError(t, c.method+" "+c.path+" without a token", st, body, http.StatusUnauthorized, "unauthorized")
		st, body = ts.do(c.method, c.path, bob.Token, strings.NewReader(c.body), "application/json", nil)
		wantError(t, c.method+" "+c.path+" by another user", st, body, http.StatusForbidden, "forbidden")
	}

	// Malformed input.
	for _, c := range []struct{ name, method, path, body string }{
		{"build: not JSON", "POST", "/api/v1/agents/build", `{`},
		{"build: unknown field", "POST", "/api/v1/agents/build", `{"agent_id":"rec-agent","version_tag":"1.0.0","colour":"red"}`},
		{"build: wrong type", "POST", "/api/v1/agents/build", `{"agent_id":"rec-agent","version_tag":1}`},
		{"build: missing version_tag", "POST", "/api/v1/agents/build", `{"agent_id":"rec-agent"}`},
		{"build: bad status", "POST", "/api/v1/agents/build", `{"agent_id":"rec-agent","version_tag":"1.0.0","status":"done"}`},
		{"build status: empty", "PUT", "/api/v1/agents/build/" + up.BuildID + "/status", ``},
		{"build status: missing status", "PUT", "/api/v1/agents/build/" + up.BuildID + "/status", `{}`},
		{"build status: bad status", "PUT", "/api/v1/agents/build/" + up.BuildID + "/status", `{"status":"exploded"}`},
		{"build status: logs not a string", "PUT", "/api/v1/agents/build/" + up.BuildID + "/status", `{"status":"failed","logs":[1]}`},
		{"deploy: not JSON", "POST", "/api/v1/agents/deploy", `[]`},
		{"deploy: missing build_id", "POST", "/api/v1/agents/deploy", `{"agent_id":"rec-agent"}`},
		{"deploy: replicas not a number", "POST", "/api/v1/agents/deploy", `{"agent_id":"rec-agent","build_id":"` + up.BuildID + `","replicas":"two"}`},
		{"deploy: bad status", "POST", "/api/v1/agents/deploy", `{"agent_id":"rec-agent","build_id":"` + up.BuildID + `","status":"sleeping"}`},
		{"deployment status: missing status", "PUT", "/api/v1/agents/deployment/" + active.ID + "/status", `{"agent_id":"rec-agent"}`},
		{"deployment status: unknown field", "PUT", "/api/v1/agents/deployment/" + active.ID + "/status", `{"status":"stopped","force":true}`},
	} {
		st, body := ts.do(c.method, c.path, alice.Token, strings.NewReader(c.body), "application/json", nil)
		wantError(t, c.name, st, body, http.StatusUnprocessableEntity, "invalid_body")
	}
	if w := ts.whoami("rec-agent"); w.DeploymentID != active.ID {
		t.Errorf("whoami at the end = %+v, want the active deployment %s", w, active.ID)
	}
}
