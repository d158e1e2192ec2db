package server_test

// Acceptance tests of deploying through the API: upload, the records it
// leaves (versions, deployments, builds, operations), download, logs,
// restart and delete.

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/berthtest"
)

// envelopeData decodes a success answer's data into v and checks the envelope.
func envelopeData(t *testing.T, what string, body []byte, status int, v any) {
	t.Helper()
	var env struct {
		Data       json.RawMessage `json:"data"`
		StatusCode int             `json:"status_code"`
		Message    string          `json:"message"`
	}
	mustJSON(t, body, &env)
	if env.StatusCode != status || env.Message == "" || len(env.Data) == 0 {
		t.Fatalf("%s = %s, want the success envelope with status_code %d", what, body, status)
	}
	mustJSON(t, env.Data, v)
}

func TestUploadServesThroughProxy(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	user := ts.register("uploader", false)
	st, body := ts.uploadRaw(user.Token, echo(t, "greeter", "1.0.0", map[string]string{"ECHO_GREETING": "hello from 1.0.0"}),
		map[string]string{"agent_name": "greeter", "description": "says hello"}, "?wait=true")
	if st != http.StatusOK {
		t.Fatalf("upload = %d %s, want 200", st, body)
	}
	var up struct {
		Success   bool   `json:"success"`
		AgentName string `json:"agent_name"`
		AgentID   string `json:"agent_id"`
		Version   string `json:"version"`
		Status    string `json:"status"`
		BuildID   string `json:"build_id"`
		DeployID  string `json:"deployment_id"`
		OpID      string `json:"operation_id"`
		URL       string `json:"url"`
	}
	envelopeData(t, "upload", body, http.StatusOK, &up)
	if !up.Success || up.AgentName != "greeter" || up.Version != "1.0.0" || up.Status != "running" || up.AgentID == "" ||
		up.BuildID == "" || up.DeployID == "" || up.OpID == "" || up.URL != ts.URL+"/agents/greeter/" {
		t.Errorf("upload data = %+v", up)
	}
	w := ts.whoami("greeter")
	if w.Name != "greeter" || w.Version != "1.0.0" || w.Greeting != "hello from 1.0.0" || w.AgentID != up.AgentID || w.DeploymentID != up.DeployID {
		t.Errorf("whoami through the proxy = %+v, want greeter 1.0.0 with its greeting, agent %s, deployment %s", w, up.AgentID, up.DeployID)
	}
	e, ok := ts.agentByName("greeter")
	if !ok || e["description"] != "says hello" || e["version"] != "1.0.0" || e["owner_id"] != user.UserID {
		t.Errorf("registry entry = %v, want the form's description, version 1.0.0, owned by the uploader", e)
	}

	// The uploader's agents (Nasiko's upload-agents).
	st, body = ts.get("/api/v1/user/upload-agents", user.Token)
	var mine []struct {
		AgentID    string `json:"agent_id"`
		AgentName  string `json:"agent_name"`
		UploadInfo struct {
			Status         string `json:"status"`
			CurrentVersion string `json:"current_version"`
			URL            string `json:"url"`
		} `json:"upload_info"`
	}
	envelopeData(t, "upload-agents", body, http.StatusOK, &mine)
	if len(mine) != 1 || mine[0].AgentID != up.AgentID || mine[0].AgentName != "greeter" || mine[0].UploadInfo.Status != "active" ||
		mine[0].UploadInfo.CurrentVersion != "1.0.0" || mine[0].UploadInfo.URL != up.URL {
		t.Errorf("upload-agents = %s", body)
	}
	// Nasiko's UploadInfoResponse requires upload_type and upload_status.
	var rawMine struct {
		Data []struct {
			UploadInfo map[string]json.RawMessage `json:"upload_info"`
		}
	}
	mustJSON(t, body, &rawMine)
	for _, k := range []string{"upload_type", "upload_status"} {
		if len(rawMine.Data) == 1 {
			if _, ok := rawMine.Data[0].UploadInfo[k]; !ok {
				t.Errorf("upload-agents upload_info has no %q (required by Nasiko's UploadInfoResponse): %s", k, body)
			}
		}
	}
	if st, body = ts.get("/api/v1/user/upload-agents", ts.Admin); !strings.Contains(string(body), `"data":[]`) {
		t.Errorf("admin's upload-agents = %d %s, want none (greeter is not the admin's)", st, body)
	}
	st, body = ts.get("/api/v1/user/upload-agents?limit=0", user.Token)
	wantError(t, "upload-agents ?limit=0", st, body, http.StatusBadRequest, "invalid")

	// The same name again is a conflict and changes nothing.
	before := ts.state(user.Token, "greeter")
	other := ts.register("uploader-two", false)
	for _, tok := range []string{user.Token, other.Token} {
		st, body = ts.uploadRaw(tok, light(t, "greeter", "2.0.0", nil), nil, "?wait=true")
		wantError(t, "upload of an existing name", st, body, http.StatusConflict, "conflict")
	}
	if after := ts.state(user.Token, "greeter"); after != before {
		t.Errorf("state after a conflicting upload = %+v, want %+v", after, before)
	}
	if w := ts.whoami("greeter"); w.Version != "1.0.0" {
		t.Errorf("whoami after a conflicting upload = %+v, want 1.0.0", w)
	}

	// A bad ?wait is refused before anything happens.
	st, body = ts.uploadRaw(user.Token, light(t, "waiter", "", nil), nil, "?wait=maybe")
	wantError(t, "upload ?wait=maybe", st, body, http.StatusBadRequest, "invalid")
	if _, ok := ts.agentByName("waiter"); ok {
		t.Errorf("upload with a bad ?wait created the agent")
	}
}

func TestUploadAsync(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	st, body := ts.uploadRaw(ts.Admin, light(t, "later", "", map[string]string{"ECHO_GREETING": "eventually"}), nil, "")
	if st != http.StatusAccepted {
		t.Fatalf("async upload = %d %s, want 202", st, body)
	}
	var up deployResult
	envelopeData(t, "async upload", body, http.StatusAccepted, &up)
	if up.Status != "building" || up.Version != "1.0.0" || up.AgentID == "" || up.OperationID == "" {
		t.Errorf("async upload data = %s, want status building, version 1.0.0 (no card version) and ids", body)
	}
	var w berthtest.Whoami
	waitFor(t, "the async upload to serve through the proxy", 30*time.Second, func() bool {
		var err error
		w, err = berthtest.GetWhoami(t.Context(), ts.URL+"/agents/later")
		return err == nil
	})
	if w.Version != "1.0.0" || w.Greeting != "eventually" {
		t.Errorf("whoami = %+v, want 1.0.0 greeting eventually", w)
	}
	waitFor(t, "the upload operation to finish", 10*time.Second, func() bool {
		ops := ts.operations(ts.Admin, "later")
		return len(ops) == 1 && ops[0].Status == "succeeded"
	})
	if h := ts.history(ts.Admin, "later"); h.CurrentVersion != "1.0.0" || h.statuses()["1.0.0"] != "active" {
		t.Errorf("history after async upload = %+v", h)
	}
}

func TestUploadNameMismatch(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	before := dataListing(t, ts.DataDir)
	st, body := ts.uploadRaw(ts.Admin, light(t, "card-name", "1.0.0", nil), map[string]string{"agent_name": "form-name"}, "?wait=true")
	wantError(t, "upload with agent_name different from the card", st, body, http.StatusBadRequest, "invalid")
	for _, name := range []string{"card-name", "form-name"} {
		if _, ok := ts.agentByName(name); ok {
			t.Errorf("agent %s exists after a refused upload", name)
		}
	}
	if d := listingDiff(before, dataListing(t, ts.DataDir)); d != "" {
		t.Errorf("data dir changed: %s", d)
	}
}

func TestUploadSizeLimit(t *testing.T) {
	t.Parallel()
	pkg := light(t, "sized", "1.0.0", nil)
	limit := int64(len(pkg)) + 4<<10
	ts := startServer(t, "", withMaxUpload(limit))
	big := berthtest.Zip(t, map[string]string{
		"AgentCard.json": `{"name":"sized","version":"1.0.0"}`,
		"berth.json":     `{"run":["` + berthtest.EchoAgentBinary(t) + `"]}`,
		"padding.bin":    randomString(t, int(limit)),
	})
	before := dataListing(t, ts.DataDir)
	st, body := ts.uploadRaw(ts.Admin, big, nil, "?wait=true")
	wantError(t, fmt.Sprintf("upload of %d bytes with a %d-byte limit", len(big), limit), st, body, http.StatusRequestEntityTooLarge, "too_large")
	if want := fmt.Sprintf("limit of %d bytes (berth serve --max-upload-mb)", limit); !strings.Contains(string(body), want) {
		t.Errorf("too-large upload answer = %s, want it to name the limit and its setting (%q)", body, want)
	}
	if _, ok := ts.agentByName("sized"); ok {
		t.Errorf("agent exists after a too-large upload")
	}
	if d := listingDiff(before, dataListing(t, ts.DataDir)); d != "" {
		t.Errorf("data dir changed: %s", d)
	}
	// Under the limit is fine, on the same server.
	ts.upload(ts.Admin, pkg)
	if w := ts.whoami("sized"); w.Version != "1.0.0" {
		t.Errorf("whoami = %+v", w)
	}
	// An update is bounded the same way.
	bigger := berthtest.Zip(t, map[string]string{
		"AgentCard.json": `{"name":"sized","version":"2.0.0"}`,
		"berth.json":     `{"run":["` + berthtest.EchoAgentBinary(t) + `"]}`,
		"padding.bin":    randomString(t, int(limit)),
	})
	st, body = ts.updateRaw(ts.Admin, "sized", bigger, nil, "?wait=true", nil)
	wantError(t, "too-large update", st, body, http.StatusRequestEntityTooLarge, "too_large")
	if h := ts.history(ts.Admin, "sized"); len(h.Versions) != 1 {
		t.Errorf("versions after a too-large update = %+v, want only 1.0.0", h.Versions)
	}
}

// randomString returns n random bytes (incompressible) as a string.
func randomString(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHistoryDeploymentsBuildsOperations(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	user := ts.register("shapes", false)
	// Packages with folders, an executable and incompressible data, so
	// that download round-trips more than the two metadata files. (The
	// echo binary is run by path: zipping 6 MB under -race is slow.)
	pkg10 := richPackage(t, "shaped", "1.0.0", nil)
	pkg11 := richPackage(t, "shaped", "1.1.0", map[string]string{"ECHO_GREETING": "v11"})
	up := ts.upload(user.Token, pkg10)
	upd := ts.update(user.Token, "shaped", pkg11, map[string]string{"update_strategy": "blue-green"})
	if upd.NewVersion != "1.1.0" {
		t.Fatalf("update new_version = %q, want 1.1.0", upd.NewVersion)
	}

	// Version history, by name and by id: Nasiko's top-level shape.
	for _, ref := range []string{"shaped", up.AgentID} {
		st, body := ts.get("/api/v1/agents/"+ref+"/versions", user.Token)
		if st != http.StatusOK {
			t.Fatalf("versions(%s) = %d %s", ref, st, body)
		}
		var raw map[string]json.RawMessage
		mustJSON(t, body, &raw)
		for _, k := range []string{"agent_id", "current_version", "versions", "status_code", "message"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("versions(%s) has no %q: %s", ref, k, body)
			}
		}
		var vs []map[string]json.RawMessage
		mustJSON(t, raw["versions"], &vs)
		for _, v := range vs {
			for _, k := range []string{"version", "status", "created_at", "build_ids", "deployment_ids", "rollback_info"} {
				if _, ok := v[k]; !ok {
					t.Errorf("versions(%s) entry has no %q: %s", ref, k, body)
				}
			}
		}
	}
	h := ts.history(user.Token, "shaped")
	if h.AgentID != up.AgentID || h.CurrentVersion != "1.1.0" || h.StatusCode != 200 || h.Message == "" || len(h.Versions) != 2 {
		t.Fatalf("history = %+v", h)
	}
	v11, v10 := h.Versions[0], h.Versions[1]
	if v11.Version != "1.1.0" || v11.Status != "active" || v10.Version != "1.0.0" || v10.Status != "standby" {
		t.Errorf("versions = %+v, want 1.1.0 active then 1.0.0 standby (blue-green)", h.Versions)
	}
	for _, c := range []struct {
		v             versionEntry
		build, deploy string
	}{{v11, upd.BuildID, upd.DeploymentID}, {v10, up.BuildID, up.DeploymentID}} {
		if !slices.Equal(c.v.BuildIDs, []string{c.build}) || !slices.Equal(c.v.DeploymentIDs, []string{c.deploy}) || c.v.RollbackInfo != nil {
			t.Errorf("version %s = %+v, want build_ids [%s], deployment_ids [%s], rollback_info null", c.v.Version, c.v, c.build, c.deploy)
		}
		if _, err := time.Parse(time.RFC3339, c.v.CreatedAt); err != nil {
			t.Errorf("version %s created_at %q: %v", c.v.Version, c.v.CreatedAt, err)
		}
	}

	// Deployments.
	st, body := ts.get("/api/v1/agents/shaped/deployments", user.Token)
	if st != http.StatusOK {
		t.Fatalf("deployments = %d %s", st, body)
	}
	var ds []struct {
		ID         string  `json:"_id"`
		AgentID    string  `json:"agent_id"`
		BuildID    string  `json:"build_id"`
		Version    string  `json:"version"`
		Status     string  `json:"status"`
		ServiceURL *string `json:"service_url"`
		Active     bool    `json:"active"`
	}
	envelopeData(t, "deployments", body, http.StatusOK, &ds)
	want := map[string]struct {
		build, version string
		active         bool
	}{upd.DeploymentID: {upd.BuildID, "1.1.0", true}, up.DeploymentID: {up.BuildID, "1.0.0", false}}
	if len(ds) != 2 {
		t.Fatalf("deployments = %s, want 2", body)
	}
	for _, d := range ds {
		w, ok := want[d.ID]
		if !ok || d.AgentID != up.AgentID || d.BuildID != w.build || d.Version != w.version || d.Status != "running" || d.Active != w.active ||
			d.ServiceURL == nil || !strings.HasPrefix(*d.ServiceURL, "http://127.0.0.1:") {
			t.Errorf("deployment %+v, want %+v, running, with a local service_url", d, w)
			continue
		}
		// service_url is the deployment itself.
		got, err := berthtest.GetWhoami(t.Context(), *d.ServiceURL)
		if err != nil || got.DeploymentID != d.ID || got.Version != w.version {
			t.Errorf("whoami at service_url %s = %+v, %v; want deployment %s", *d.ServiceURL, got, err, d.ID)
		}
	}

	// Builds.
	st, body = ts.get("/api/v1/agents/shaped/builds", user.Token)
	if st != http.StatusOK {
		t.Fatalf("builds = %d %s", st, body)
	}
	var bs []map[string]json.RawMessage
	envelopeData(t, "builds", body, http.StatusOK, &bs)
	if len(bs) != 2 {
		t.Fatalf("builds = %s, want 2", body)
	}
	seen := map[string]string{}
	for _, b := range bs {
		var id, tag, status string
		var logs *string
		_ = json.Unmarshal(b["_id"], &id)
		_ = json.Unmarshal(b["version_tag"], &tag)
		_ = json.Unmarshal(b["status"], &status)
		_ = json.Unmarshal(b["logs"], &logs)
		if status != "success" || logs == nil {
			t.Errorf("build %s = status %q, logs %v; want success with a logs string", id, status, logs)
		}
		seen[id] = tag
	}
	if seen[up.BuildID] != "1.0.0" || seen[upd.BuildID] != "1.1.0" {
		t.Errorf("builds = %v, want %s → 1.0.0 and %s → 1.1.0", seen, up.BuildID, upd.BuildID)
	}

	// Operations: newest first, with actor and versions.
	ops := ts.operations(user.Token, "shaped")
	if len(ops) != 2 {
		t.Fatalf("operations = %+v, want 2", ops)
	}
	if o := ops[0]; o.Kind != "update" || o.Status != "succeeded" || o.Actor != "shapes" || o.FromVersion != "1.0.0" || o.ToVersion != "1.1.0" || o.ID != upd.OperationID {
		t.Errorf("newest operation = %+v, want the update 1.0.0 → 1.1.0 by shapes", o)
	}
	if o := ops[1]; o.Kind != "upload" || o.Status != "succeeded" || o.Actor != "shapes" || o.ToVersion != "1.0.0" || o.ID != up.OperationID {
		t.Errorf("oldest operation = %+v, want the upload of 1.0.0 by shapes", o)
	}
	st, body = ts.get("/api/v1/agents/shaped/operations/"+up.OperationID, user.Token)
	var one operationEntry
	envelopeData(t, "one operation", body, http.StatusOK, &one)
	if st != http.StatusOK || one.ID != up.OperationID || one.Kind != "upload" {
		t.Errorf("operation %s = %d %s", up.OperationID, st, body)
	}
	st, body = ts.get("/api/v1/agents/shaped/operations/00000000-0000-4000-8000-000000000000", user.Token)
	wantError(t, "unknown operation", st, body, http.StatusNotFound, "not_found")
	for _, q := range []string{"0", "-1", "x", "1001"} {
		st, body = ts.get("/api/v1/agents/shaped/operations?limit="+q, user.Token)
		wantError(t, "operations ?limit="+q, st, body, http.StatusBadRequest, "invalid")
	}

	// Another agent of the same owner does not see this one's operations or
	// deployments.
	st, body = ts.do("POST", "/api/v1/registry", user.Token, jsonBody(map[string]any{"name": "shaped-sibling"}), "application/json", nil)
	if st != http.StatusCreated {
		t.Fatalf("registry create = %d %s", st, body)
	}
	st, body = ts.get("/api/v1/agents/shaped-sibling/operations/"+up.OperationID, user.Token)
	wantError(t, "an operation through another agent", st, body, http.StatusNotFound, "not_found")
	st, body = ts.get("/api/v1/agents/shaped-sibling/logs?deployment_id="+up.DeploymentID, user.Token)
	wantError(t, "logs of a deployment through another agent", st, body, http.StatusNotFound, "not_found")

	// The update's greeting is what the proxy serves now.
	if w := ts.whoami("shaped"); w.Version != "1.1.0" || w.Greeting != "v11" {
		t.Errorf("whoami = %+v, want 1.1.0 with greeting v11", w)
	}

	// Unknown agents.
	for _, p := range []string{"versions", "deployments", "builds", "operations", "logs", "download"} {
		st, body := ts.get("/api/v1/agents/no-such-agent/"+p, user.Token)
		wantError(t, p+" of an unknown agent", st, body, http.StatusNotFound, "not_found")
	}

	t.Run("download", func(t *testing.T) {
		files := map[string]map[string]fileInfo{"1.0.0": zipFiles(t, pkg10), "1.1.0": zipFiles(t, pkg11)}
		for _, q := range []string{"?version=1.0.0", "?version=1.1.0", ""} {
			st, hdr, body := ts.call("GET", "/api/v1/agents/shaped/download"+q, user.Token, nil, "", nil)
			if st != http.StatusOK {
				t.Fatalf("download%s = %d %s", q, st, body)
			}
			if ct := hdr.Get("Content-Type"); ct != "application/gzip" {
				t.Errorf("download%s Content-Type = %q", q, ct)
			}
			got := tarGzFiles(t, body)
			want := files["1.1.0"]
			if q == "?version=1.0.0" {
				want = files["1.0.0"]
			}
			if len(got) != len(want) {
				t.Errorf("download%s files = %v, want %v", q, keys(got), keys(want))
			}
			for name, w := range want {
				if g, ok := got[name]; !ok || g.body != w.body || g.exec != w.exec {
					t.Errorf("download%s: %s differs from the uploaded package (present %v, exec %v/%v)", q, name, ok, g.exec, w.exec)
				}
			}
		}
		st, hdr, _ := ts.call("GET", "/api/v1/agents/shaped/download?version=1.0.0", user.Token, nil, "", nil)
		if sum := sha256.Sum256(pkg10); st != http.StatusOK || hdr.Get("X-Berth-Digest") != hex.EncodeToString(sum[:]) {
			t.Errorf("download X-Berth-Digest = %q, want the uploaded zip's sha256 %x", hdr.Get("X-Berth-Digest"), sum)
		}
		for _, q := range []string{"?version=9.9.9", "?version=nonsense"} {
			st, body := ts.get("/api/v1/agents/shaped/download"+q, user.Token)
			wantError(t, "download"+q, st, body, http.StatusNotFound, "not_found")
		}
	})

	t.Run("logs", func(t *testing.T) {
		var body []byte
		waitFor(t, "the echo agent's start line in its logs", 10*time.Second, func() bool {
			var st int
			st, body = ts.get("/api/v1/agents/shaped/logs", user.Token)
			return st == http.StatusOK && strings.Contains(string(body), "echo-agent listening") && strings.Contains(string(body), "version=1.1.0")
		})
		// Another version's and a named deployment's logs.
		st, body := ts.get("/api/v1/agents/shaped/logs?version=1.0.0", user.Token)
		if st != http.StatusOK || !strings.Contains(string(body), "version=1.0.0") {
			t.Errorf("logs of 1.0.0 = %d %s", st, body)
		}
		st, hdr, body := ts.call("GET", "/api/v1/agents/shaped/logs?deployment_id="+up.DeploymentID, user.Token, nil, "", nil)
		if st != http.StatusOK || hdr.Get("X-Berth-Deployment") != up.DeploymentID || !strings.Contains(string(body), "echo-agent listening") {
			t.Errorf("logs of deployment %s = %d %s", up.DeploymentID, st, body)
		}
		st, body = ts.get("/api/v1/agents/shaped/logs?version=4.0.0", user.Token)
		wantError(t, "logs of an unknown version", st, body, http.StatusNotFound, "not_found")
		// ?offset= skips what a follower already has.
		st, full := ts.get("/api/v1/agents/shaped/logs?version=1.0.0", user.Token)
		st2, rest := ts.get("/api/v1/agents/shaped/logs?version=1.0.0&offset=5", user.Token)
		if st != http.StatusOK || st2 != http.StatusOK || len(full) < 5 || !bytes.HasPrefix(rest, full[5:]) || len(rest) == 0 {
			// (The log may have grown between the two reads.)
			t.Errorf("logs from offset 5 = %d %q, want the log %q without its first 5 bytes", st2, rest, full)
		}
		for _, off := range []string{"-1", "abc", "1e3", "0x10", "99999999999999999999"} {
			st, body := ts.get("/api/v1/agents/shaped/logs?offset="+off, user.Token)
			wantError(t, "logs?offset="+off, st, body, http.StatusBadRequest, "invalid")
		}
	})
}

// richPackage is light plus a folder tree, an executable script and 256 KiB
// of random data.
func richPackage(t *testing.T, name, version string, env map[string]string) []byte {
	t.Helper()
	files := zipFiles(t, light(t, name, version, env))
	z := map[string]string{
		"bin/":              "",
		"bin/tool.sh":       "#!/bin/sh\necho tool\n",
		"data/nested/x.bin": randomString(t, 256<<10),
		"README.md":         "# " + name + " " + version + "\n",
	}
	for n, f := range files {
		z[n] = f.body
	}
	return berthtest.ZipWithModes(t, z, map[string]fs.FileMode{"bin/tool.sh": 0o755})
}

type fileInfo struct {
	body string
	exec bool
}

func keys(m map[string]fileInfo) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// zipFiles reads the regular files of a zip.
func zipFiles(t *testing.T, b []byte) map[string]fileInfo {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]fileInfo{}
	for _, f := range zr.File {
		if f.FileInfo().IsDir() {
			continue
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[f.Name] = fileInfo{string(data), f.Mode()&0o111 != 0}
	}
	return out
}

// tarGzFiles reads the regular files of a tar.gz.
func tarGzFiles(t *testing.T, b []byte) map[string]fileInfo {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("download is not gzip: %v", err)
	}
	tr := tar.NewReader(zr)
	out := map[string]fileInfo{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("download is not a valid tar: %v", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = fileInfo{string(data), h.Mode&0o111 != 0}
	}
	return out
}

func TestVersionHistoryPagination(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, light(t, "paged", "1.0.0", nil))
	for _, v := range []string{"1.1.0", "1.2.0", "2.0.0", "2.0.1"} {
		ts.update(ts.Admin, "paged", light(t, "paged", v, nil), nil)
	}
	want := []string{"2.0.1", "2.0.0", "1.2.0", "1.1.0", "1.0.0"}

	var got []string
	cursor := ""
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatalf("pagination does not end: %v", got)
		}
		path := "/api/v1/agents/paged/versions?limit=2"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		st, body := ts.get(path, ts.Admin)
		if st != http.StatusOK {
			t.Fatalf("GET %s = %d %s", path, st, body)
		}
		var h history
		mustJSON(t, body, &h)
		if len(h.Versions) == 0 || len(h.Versions) > 2 {
			t.Fatalf("GET %s: %d versions, want 1 or 2", path, len(h.Versions))
		}
		if h.CurrentVersion != "2.0.1" {
			t.Errorf("GET %s: current_version = %q on every page, want 2.0.1", path, h.CurrentVersion)
		}
		for _, v := range h.Versions {
			got = append(got, v.Version)
		}
		if h.NextCursor == "" {
			break
		}
		cursor = h.NextCursor
	}
	if !slices.Equal(got, want) {
		t.Errorf("paged versions = %v, want %v (newest first, no duplicates)", got, want)
	}
	if h := ts.history(ts.Admin, "paged"); h.NextCursor != "" || len(h.Versions) != 5 {
		t.Errorf("unpaged history = %d versions, next_cursor %q; want all 5 and no cursor", len(h.Versions), h.NextCursor)
	}
	for _, q := range []string{"limit=0", "limit=-2", "limit=two", "limit=501", "limit=", "cursor=not-a-version"} {
		st, body := ts.get("/api/v1/agents/paged/versions?"+q, ts.Admin)
		if q == "limit=" {
			// An empty limit is the default.
			if st != http.StatusOK {
				t.Errorf("versions?%s = %d %s, want 200", q, st, body)
			}
			continue
		}
		wantError(t, "versions?"+q, st, body, http.StatusBadRequest, "invalid")
	}
}

func TestRestartBringsBackTheActiveVersion(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ts := startServer(t, dir)
	user := ts.register("restarter", false)
	ts.upload(user.Token, light(t, "phoenix", "1.0.0", nil))
	ts.update(user.Token, "phoenix", light(t, "phoenix", "1.1.0", map[string]string{"ECHO_GREETING": "reborn"}), map[string]string{"update_strategy": "blue-green"})
	before := ts.whoami("phoenix")
	var urls []string
	for _, d := range ts.deployments(user.Token, "phoenix") {
		if d.ServiceURL != nil {
			urls = append(urls, *d.ServiceURL)
		}
	}
	if len(urls) != 2 {
		t.Fatalf("service urls = %v, want the active and the standby deployment's", urls)
	}
	ts.Close()
	for _, u := range urls {
		if !refuses(t, u) {
			t.Errorf("%s still accepts connections after a graceful shutdown", u)
		}
	}
	if err := syscall.Kill(before.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill(%d, 0) after shutdown = %v, want ESRCH (the agent process is gone)", before.PID, err)
	}

	ts2 := startServer(t, dir)
	after := ts2.whoami("phoenix")
	if after.Version != "1.1.0" || after.Greeting != "reborn" || after.AgentID != before.AgentID {
		t.Errorf("whoami after restart = %+v, want 1.1.0 reborn of agent %s", after, before.AgentID)
	}
	tok := ts2.loginOK(user.Key, user.Secret).Token
	if h := ts2.history(tok, "phoenix"); h.CurrentVersion != "1.1.0" || h.statuses()["1.1.0"] != "active" || h.statuses()["1.0.0"] != "standby" {
		t.Errorf("history after restart = %+v, want 1.1.0 active and 1.0.0 a warm standby again", h)
	}
	// Both deployments run again, each answering as its own version.
	for _, d := range ts2.deployments(tok, "phoenix") {
		if d.Status != "running" || d.ServiceURL == nil {
			t.Errorf("deployment after restart = %+v, want running", d)
			continue
		}
		w, err := berthtest.GetWhoami(t.Context(), *d.ServiceURL)
		if err != nil || w.DeploymentID != d.ID || w.Version != d.Version {
			t.Errorf("whoami at %s = %+v, %v; want deployment %s of %s", *d.ServiceURL, w, err, d.ID, d.Version)
		}
	}
	// The old token still works: the signing secret survived the restart.
	if st, body := ts2.get("/api/v1/registry/user/agents", user.Token); st != http.StatusOK {
		t.Errorf("token from before the restart = %d %s, want 200", st, body)
	}
}

func TestDeleteAgent(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	user := ts.register("deleter", false)
	up := ts.upload(user.Token, light(t, "doomed", "1.0.0", nil))
	ts.update(user.Token, "doomed", light(t, "doomed", "1.1.0", nil), map[string]string{"update_strategy": "blue-green"})
	keep := ts.upload(user.Token, light(t, "survivor", "1.0.0", nil))
	ds := ts.deployments(user.Token, "doomed")
	var urls []string
	for _, d := range ds {
		if d.ServiceURL != nil && d.Status == "running" {
			urls = append(urls, *d.ServiceURL)
		}
	}
	if len(urls) != 2 {
		t.Fatalf("running deployments = %+v, want 2 (blue-green)", ds)
	}
	for _, p := range []string{"packages", "versions"} {
		if _, err := os.Stat(filepath.Join(ts.DataDir, p, up.AgentID)); err != nil {
			t.Fatalf("before delete: %v", err)
		}
	}

	st, body := ts.do("DELETE", "/api/v1/registry/agent/"+up.AgentID, user.Token, nil, "", nil)
	if st != http.StatusOK {
		t.Fatalf("delete = %d %s", st, body)
	}
	for _, u := range urls {
		if !refuses(t, u) {
			t.Errorf("deployment at %s still accepts connections after delete", u)
		}
	}
	st, body = ts.get("/agents/doomed/whoami", "")
	wantError(t, "the proxy after delete", st, body, http.StatusNotFound, "not_found")
	for _, p := range []string{"versions", "deployments", "operations"} {
		st, body = ts.get("/api/v1/agents/doomed/"+p, user.Token)
		wantError(t, p+" after delete", st, body, http.StatusNotFound, "not_found")
		st, body = ts.get("/api/v1/agents/"+up.AgentID+"/"+p, user.Token)
		wantError(t, p+" by id after delete", st, body, http.StatusNotFound, "not_found")
	}
	if _, ok := ts.agentByName("doomed"); ok {
		t.Errorf("registry still has doomed")
	}
	for _, p := range []string{"packages", "versions"} {
		if _, err := os.Stat(filepath.Join(ts.DataDir, p, up.AgentID)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s/%s after delete: stat = %v, want not to exist", p, up.AgentID, err)
		}
	}
	// Nothing under run/ (deployment folders, process-group records) names a
	// deployment of the deleted agent.
	for _, p := range dataListing(t, ts.DataDir, "packages", "versions", "tmp", "run") {
		for _, d := range ds {
			if strings.Contains(p, d.ID) {
				t.Errorf("%s is left after delete", p)
			}
		}
	}
	// The other agent is untouched, and the name can be used again.
	if w := ts.whoami("survivor"); w.AgentID != keep.AgentID {
		t.Errorf("survivor whoami = %+v", w)
	}
	again := ts.upload(user.Token, light(t, "doomed", "", nil))
	if again.AgentID == up.AgentID || again.Version != "1.0.0" {
		t.Errorf("re-upload after delete = %+v, want a new agent at 1.0.0", again)
	}
	if w := ts.whoami("doomed"); w.AgentID != again.AgentID {
		t.Errorf("whoami after re-upload = %+v, want agent %s", w, again.AgentID)
	}
}

func TestRefusedUpdatesLeaveNothing(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, light(t, "strict", "1.0.0", nil))
	ts.update(ts.Admin, "strict", light(t, "strict", "1.1.0", nil), nil)
	before := dataListing(t, ts.DataDir)
	state := ts.state(ts.Admin, "strict")
	ops := len(ts.operations(ts.Admin, "strict"))
	for _, c := range []struct {
		name   string
		pkg    []byte
		fields map[string]string
		query  string
		status int
		code   string
	}{
		{"existing version", light(t, "strict", "", nil), map[string]string{"version": "1.1.0"}, "?wait=true", 409, "conflict"},
		{"lower version", light(t, "strict", "", nil), map[string]string{"version": "1.0.5"}, "?wait=true", 409, "conflict"},
		{"card version of an existing one, explicit", light(t, "strict", "1.0.0", nil), map[string]string{"version": "1.0.0"}, "?wait=true", 409, "conflict"},
		{"version not semver", light(t, "strict", "", nil), map[string]string{"version": "latest"}, "?wait=true", 400, "invalid"},
		{"version with v", light(t, "strict", "", nil), map[string]string{"version": "v2.0.0"}, "?wait=true", 400, "invalid"},
		{"pre-release", light(t, "strict", "", nil), map[string]string{"version": "2.0.0-rc.1"}, "?wait=true", 400, "invalid"},
		{"unknown strategy", light(t, "strict", "", nil), map[string]string{"update_strategy": "canary"}, "?wait=true", 400, "invalid"},
		{"bad cleanup_old", light(t, "strict", "", nil), map[string]string{"cleanup_old": "perhaps"}, "?wait=true", 400, "invalid"},
		{"bad wait", light(t, "strict", "", nil), nil, "?wait=perhaps", 400, "invalid"},
		{"name mismatch", light(t, "other-agent", "2.0.0", nil), nil, "?wait=true", 400, "invalid"},
		{"unknown form field", light(t, "strict", "", nil), map[string]string{"agent_name": "strict"}, "?wait=true", 422, "invalid_body"},
	} {
		st, body := ts.updateRaw(ts.Admin, "strict", c.pkg, c.fields, c.query, nil)
		wantError(t, "update: "+c.name, st, body, c.status, c.code)
		if d := listingDiff(before, dataListing(t, ts.DataDir)); d != "" {
			t.Errorf("update: %s: data dir changed: %s", c.name, d)
		}
		if got := ts.state(ts.Admin, "strict"); got != state {
			t.Errorf("update: %s: state = %+v, want %+v", c.name, got, state)
		}
		if got := len(ts.operations(ts.Admin, "strict")); got != ops {
			t.Errorf("update: %s: %d operations, want %d", c.name, got, ops)
		}
	}
	if _, ok := ts.agentByName("other-agent"); ok {
		t.Errorf("a refused update created other-agent")
	}
	if w := ts.whoami("strict"); w.Version != "1.1.0" {
		t.Errorf("whoami = %+v, want 1.1.0", w)
	}
}

// TestShutdownDuringAsyncUpload stops the server right after an async
// upload was accepted: after a restart the agent is in a final state, no
// operation is left running and the agent accepts the next update (its
// guard is not stuck).
func TestShutdownDuringAsyncUpload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ts := startServer(t, dir)
	st, body := ts.uploadRaw(ts.Admin, light(t, "interrupted", "1.0.0", nil), nil, "")
	if st != http.StatusAccepted {
		t.Fatalf("async upload = %d %s", st, body)
	}
	ts.Close()

	ts2 := startServer(t, dir)
	h := ts2.history(ts2.Admin, "interrupted")
	if len(h.Versions) != 1 {
		t.Fatalf("history after restart = %+v, want 1 version", h)
	}
	switch s := h.Versions[0].Status; s {
	case "active":
		if w := ts2.whoami("interrupted"); w.Version != "1.0.0" {
			t.Errorf("whoami = %+v, want 1.0.0", w)
		}
	case "failed":
	default:
		t.Errorf("version 1.0.0 after restart is %q, want active or failed", s)
	}
	for _, o := range ts2.operations(ts2.Admin, "interrupted") {
		if o.Status == "running" {
			t.Errorf("operation %+v still running after restart", o)
		}
	}
	up := ts2.update(ts2.Admin, "interrupted", light(t, "interrupted", "1.1.0", nil), nil)
	if up.NewVersion != "1.1.0" {
		t.Errorf("update after restart = %+v", up)
	}
	if w := ts2.whoami("interrupted"); w.Version != "1.1.0" {
		t.Errorf("whoami after the update = %+v, want 1.1.0", w)
	}
}

func TestConcurrentUploadsOfOneName(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	const n = 4
	type result struct {
		st   int
		body []byte
	}
	results := make(chan result, n)
	pkgs := make([][]byte, n)
	for i := range pkgs {
		pkgs[i] = light(t, "racer", "1.0.0", map[string]string{"ECHO_GREETING": fmt.Sprint(i)})
	}
	for i := range n {
		go func() {
			body, ct := multipartBody(t, pkgs[i], nil)
			req, _ := http.NewRequest("POST", ts.URL+"/api/v1/agents/upload?wait=true", body)
			req.Header.Set("Authorization", "Bearer "+ts.Admin)
			req.Header.Set("Content-Type", ct)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				results <- result{0, []byte(err.Error())}
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			results <- result{resp.StatusCode, b}
		}()
	}
	ok := 0
	for range n {
		r := <-results
		switch r.st {
		case http.StatusOK:
			ok++
		case http.StatusConflict:
			wantError(t, "a losing concurrent upload", r.st, r.body, http.StatusConflict, "conflict")
		default:
			t.Errorf("concurrent upload = %d %s, want 200 or 409", r.st, r.body)
		}
	}
	if ok != 1 {
		t.Fatalf("%d concurrent uploads of one name succeeded, want exactly 1", ok)
	}
	h := ts.history(ts.Admin, "racer")
	if len(h.Versions) != 1 || h.CurrentVersion != "1.0.0" {
		t.Errorf("history = %+v, want one version", h)
	}
	// Only the winner's files exist.
	for _, p := range dataListing(t, ts.DataDir, "packages", "versions") {
		if !strings.Contains(p, h.AgentID) {
			t.Errorf("%s is left by a losing upload", p)
		}
	}
	if tmp := dataListing(t, ts.DataDir, "tmp"); len(tmp) != 0 {
		t.Errorf("tmp/ holds %v after the uploads", tmp)
	}
	if w := ts.whoami("racer"); w.AgentID != h.AgentID {
		t.Errorf("whoami = %+v, want agent %s", w, h.AgentID)
	}
}

// TestUploadFolderedPackage uploads a zip whose files sit in one top-level
// folder (as zipping a folder usually makes), with OS litter beside it.
func TestUploadFolderedPackage(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	inner := zipFiles(t, light(t, "foldered", "1.0.0", map[string]string{"ECHO_GREETING": "from a folder"}))
	files := map[string]string{"foldered/": "", "foldered/lib/": "", "foldered/lib/util.txt": "util", "__MACOSX/._AgentCard.json": "junk"}
	for n, f := range inner {
		files["foldered/"+n] = f.body
	}
	ts.upload(ts.Admin, berthtest.Zip(t, files))
	if w := ts.whoami("foldered"); w.Version != "1.0.0" || w.Greeting != "from a folder" {
		t.Errorf("whoami = %+v", w)
	}
	st, body := ts.get("/api/v1/agents/foldered/download", ts.Admin)
	if st != http.StatusOK {
		t.Fatalf("download = %d %s", st, body)
	}
	got := tarGzFiles(t, body)
	want := []string{"AgentCard.json", "berth.json", "lib/util.txt"}
	if k := keys(got); !slices.Equal(k, want) {
		t.Errorf("downloaded files = %v, want %v (relative to the package root, without litter)", k, want)
	}
}

func TestOversizeJSONBodies(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	huge := `{"name":"big","description":"` + strings.Repeat("x", 2<<20) + `"}`
	for _, c := range []struct{ method, path, token string }{
		{"POST", "/auth/users/login", ""},
		{"POST", "/api/v1/registry", ts.Admin},
		{"PUT", "/api/v1/registry/agent/big", ts.Admin},
		{"POST", "/api/v1/user/register", ts.Admin},
		{"POST", "/api/v1/agents/build", ts.Admin},
		{"POST", "/api/v1/agents/big/rollback", ts.Admin},
	} {
		st, body := ts.do(c.method, c.path, c.token, strings.NewReader(huge), "application/json", nil)
		wantError(t, c.method+" "+c.path+" with a 2 MiB body", st, body, http.StatusRequestEntityTooLarge, "too_large")
	}
	if _, ok := ts.agentByName("big"); ok {
		t.Errorf("an oversize body created an agent")
	}
}

// TestUploadIdempotencyKey retries an upload with the same Idempotency-Key,
// as a client does after a timeout: the retry gets the first answer and
// nothing happens again.
func TestUploadIdempotencyKey(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	user := ts.register("idem-user", false)
	pkg := light(t, "idem", "1.0.0", nil)
	key := http.Header{"Idempotency-Key": {"upload-idem-1"}}
	var first deployResult
	for i := range 2 {
		body, ct := multipartBody(t, pkg, nil)
		st, b := ts.do("POST", "/api/v1/agents/upload?wait=true", user.Token, body, ct, key)
		if st != http.StatusOK {
			t.Fatalf("upload #%d with Idempotency-Key = %d %s, want 200 (the first answer)", i+1, st, b)
		}
		var r deployResult
		envelopeData(t, "upload", b, http.StatusOK, &r)
		if i == 0 {
			first = r
		} else if r != first {
			t.Errorf("repeated upload = %+v, want the first answer %+v", r, first)
		}
	}
	if ops := ts.operations(user.Token, "idem"); len(ops) != 1 {
		t.Errorf("operations = %+v, want the one upload", ops)
	}
	// Another caller using the same key is not answered with this upload.
	other := ts.register("idem-other", false)
	body, ct := multipartBody(t, pkg, nil)
	st, b := ts.do("POST", "/api/v1/agents/upload?wait=true", other.Token, body, ct, key)
	wantError(t, "another user's upload with the same key", st, b, http.StatusConflict, "conflict")
}

// A graceful shutdown lets a request already in flight through the proxy
// finish, closes idle keep-alive connections, and stops accepting.
func TestShutdownDrainsProxiedRequests(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	ts.upload(ts.Admin, echo(t, "draining", "1.0.0", nil))

	idle, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idleBR := bufio.NewReader(idle)
	_, _ = io.WriteString(idle, "GET /agents/draining/whoami HTTP/1.1\r\nHost: berth\r\n\r\n")
	if res, err := http.ReadResponse(idleBR, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("warm-up request: %v %v", res, err)
	} else {
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}

	busy, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, _ = io.WriteString(busy, "GET /agents/draining/slow?ms=700 HTTP/1.1\r\nHost: berth\r\n\r\n")
	time.Sleep(100 * time.Millisecond) // the request is with the agent now

	closed := make(chan struct{})
	go func() {
		ts.Close()
		close(closed)
	}()
	_ = busy.SetReadDeadline(time.Now().Add(20 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil {
		t.Fatalf("in-flight request during shutdown: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Errorf("in-flight request during shutdown = %d %q, want 200", res.StatusCode, body)
	}
	_ = idle.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := idleBR.Read(make([]byte, 1)); err == nil {
		t.Errorf("idle keep-alive connection: read %d bytes, want it closed by the shutdown", n)
	}
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after the last request")
	}
	if c, err := net.DialTimeout("tcp", strings.TrimPrefix(ts.URL, "http://"), time.Second); err == nil {
		c.Close()
		t.Error("still accepting connections after shutdown")
	}
}
