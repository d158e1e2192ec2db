package server_test

// Acceptance tests of the "core" capability: bootstrap, login and the
// refusals of authentication and authorisation. Shared helpers of the
// api_*_test.go files live here too.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/berthhq/berth/artifact"
	"github.com/berthhq/berth/berthtest"
	"github.com/berthhq/berth/server"
)

// withMaxUpload bounds uploaded packages to n bytes.
func withMaxUpload(n int64) serverOption {
	return func(c *server.Config) { c.MaxUploadBytes = n }
}

// withLimits sets what an uploaded package may hold.
func withLimits(l artifact.Limits) serverOption {
	return func(c *server.Config) { c.Engine.Limits = l }
}

// withAdmin sets the bootstrap superuser's credentials (BERTH_ADMIN_*).
func withAdmin(key, secret string) serverOption {
	return func(c *server.Config) { c.AdminAccessKey, c.AdminAccessSecret = key, secret }
}

// startBare starts a server like startServer but does not log in with the
// credentials file (which does not exist when BERTH_ADMIN_* are set):
// ts.Admin is empty.
func startBare(t *testing.T, dataDir string, opts ...serverOption) *testServer {
	t.Helper()
	return openServer(t, dataDir, opts...)
}

// account is a registered user with its credentials and a token.
type account struct {
	UserID, Username, Key, Secret, Token string
}

// register registers a user through the API and logs it in.
func (ts *testServer) register(name string, super bool) account {
	ts.t.Helper()
	st, body := ts.do("POST", "/api/v1/user/register", ts.Admin,
		jsonBody(map[string]any{"username": name, "email": name + "@example.com", "is_super_user": super}), "application/json", nil)
	if st != http.StatusCreated {
		ts.t.Fatalf("register %s = %d %s, want 201", name, st, body)
	}
	var r struct {
		UserID       string `json:"user_id"`
		AccessKey    string `json:"access_key"`
		AccessSecret string `json:"access_secret"`
	}
	mustJSON(ts.t, body, &r)
	lr := ts.loginOK(r.AccessKey, r.AccessSecret)
	if lr.UserID != r.UserID {
		ts.t.Fatalf("login of %s: user_id = %q, register said %q", name, lr.UserID, r.UserID)
	}
	return account{UserID: r.UserID, Username: name, Key: r.AccessKey, Secret: r.AccessSecret, Token: lr.Token}
}

// loginResp is the login answer.
type loginResp struct {
	Token       string `json:"token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	IsSuperUser bool   `json:"is_super_user"`
	UserID      string `json:"user_id"`
	Username    string `json:"username"`
}

// loginOK logs in and expects 200.
func (ts *testServer) loginOK(key, secret string) loginResp {
	ts.t.Helper()
	st, body := ts.do("POST", "/auth/users/login", "", jsonBody(map[string]string{"access_key": key, "access_secret": secret}), "application/json", nil)
	if st != http.StatusOK {
		ts.t.Fatalf("login(%q) = %d %s, want 200", key, st, body)
	}
	var r loginResp
	mustJSON(ts.t, body, &r)
	return r
}

// adminCreds reads the credentials file of ts's data dir.
func adminCreds(t *testing.T, dataDir string) server.AdminCredentials {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, server.AdminCredentialsFile))
	if err != nil {
		t.Fatalf("read admin credentials: %v", err)
	}
	var c server.AdminCredentials
	mustJSON(t, b, &c)
	return c
}

// call sends one request and returns the status, headers and body.
func (ts *testServer) call(method, path, token string, body io.Reader, contentType string, header http.Header) (int, http.Header, []byte) {
	ts.t.Helper()
	req, err := http.NewRequest(method, ts.URL+path, body)
	if err != nil {
		ts.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		ts.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

// get is a GET with a token.
func (ts *testServer) get(path, token string) (int, []byte) {
	ts.t.Helper()
	return ts.do("GET", path, token, nil, "", nil)
}

// wantError checks that a response is the error shape with status and code.
func wantError(t testing.TB, what string, st int, body []byte, status int, code string) errorBody {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("%s = %d %s, want a JSON error body (%d %s): %v", what, st, body, status, code, err)
	}
	var keys map[string]json.RawMessage
	_ = json.Unmarshal(body, &keys)
	for _, k := range []string{"status_code", "message", "detail", "code"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("%s: error body %s has no %q", what, body, k)
		}
	}
	if st != status || e.StatusCode != status || e.Code != code || e.Message == "" || e.Detail != e.Message {
		t.Fatalf("%s = %d %s, want %d with code %q, status_code %d and detail = message", what, st, body, status, code, status)
	}
	return e
}

// dataListing lists what the data dir's package folders hold (relative
// paths), to check that a refused request leaves nothing behind: packages/,
// versions/ and tmp/, or the folders named.
func dataListing(t *testing.T, dataDir string, folders ...string) []string {
	t.Helper()
	if len(folders) == 0 {
		folders = []string{"packages", "versions", "tmp"}
	}
	var out []string
	for _, sub := range folders {
		root := filepath.Join(dataDir, sub)
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			if p != root {
				rel, _ := filepath.Rel(dataDir, p)
				out = append(out, rel)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("listing %s: %v", root, err)
		}
	}
	slices.Sort(out)
	return out
}

// listingDiff describes how listing after differs from before ("" if not).
func listingDiff(before, after []string) string {
	var added, removed []string
	for _, p := range after {
		if !slices.Contains(before, p) {
			added = append(added, p)
		}
	}
	for _, p := range before {
		if !slices.Contains(after, p) {
			removed = append(removed, p)
		}
	}
	if len(added) == 0 && len(removed) == 0 {
		return ""
	}
	return fmt.Sprintf("added %v, removed %v", added, removed)
}

// refuses reports whether nothing listens at the host of rawURL any more.
func refuses(t *testing.T, rawURL string) bool {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("parse %q: %v", rawURL, err)
	}
	c, err := net.DialTimeout("tcp", u.Host, 2*time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// light returns a small echo-agent package that runs the prebuilt binary
// by its absolute path, for tests that need many versions but not the
// binary inside the package.
func light(t *testing.T, name, version string, env map[string]string) []byte {
	t.Helper()
	bin := berthtest.EchoAgentBinary(t)
	card := map[string]any{"name": name, "description": "light echo"}
	if version != "" {
		card["version"] = version
	}
	cfg := map[string]any{"run": []string{bin}}
	if env != nil {
		cfg["env"] = env
	}
	cb, _ := json.Marshal(card)
	fb, _ := json.Marshal(cfg)
	return berthtest.Zip(t, map[string]string{"AgentCard.json": string(cb), "berth.json": string(fb)})
}

// agentByName reads the public registry entry of name; ok is false on 404.
func (ts *testServer) agentByName(name string) (entry map[string]any, ok bool) {
	ts.t.Helper()
	st, body := ts.get("/api/v1/registry/agent/name/"+name, "")
	if st == http.StatusNotFound {
		wantError(ts.t, "registry get "+name, st, body, http.StatusNotFound, "not_found")
		return nil, false
	}
	if st != http.StatusOK {
		ts.t.Fatalf("registry get %s = %d %s", name, st, body)
	}
	var r struct{ Data map[string]any }
	mustJSON(ts.t, body, &r)
	return r.Data, true
}

func TestBootstrapWritesCredentialsOnce(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ts := startServer(t, dir)
	path := filepath.Join(dir, server.AdminCredentialsFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("%s mode = %v, want 0600", server.AdminCredentialsFile, perm)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	creds := adminCreds(t, dir)
	if creds.AccessKey == "" || creds.AccessSecret == "" || creds.Username == "" {
		t.Fatalf("credentials file = %s, want username, access_key and access_secret", before)
	}
	lr := ts.loginOK(creds.AccessKey, creds.AccessSecret)
	if !lr.IsSuperUser {
		t.Errorf("login with the bootstrap credentials: is_super_user = false, want true")
	}
	// The bootstrap superuser can do superuser things.
	ts.register("bootstrap-check", false)
	ts.Close()

	ts2 := startServer(t, dir)
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("second start rewrote %s:\nbefore %s\nafter  %s", server.AdminCredentialsFile, before, after)
	}
	fi2, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(fi, fi2) || !fi2.ModTime().Equal(fi.ModTime()) {
		t.Errorf("second start replaced %s (inode or mtime changed)", server.AdminCredentialsFile)
	}
	// Two users: the one superuser and the one registered above.
	n, err := ts2.srv.Store().CountUsers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("users after a second start = %d, want 2 (no second admin)", n)
	}
	if lr := ts2.loginOK(creds.AccessKey, creds.AccessSecret); !lr.IsSuperUser {
		t.Errorf("old credentials after restart: is_super_user = false")
	}
}

func TestBootstrapFromConfiguredCredentials(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const key, secret = "bk_configured_admin_key", "configured-admin-secret-0123456789abcdef"
	ts := startBare(t, dir, withAdmin(key, secret))
	if _, err := os.Stat(filepath.Join(dir, server.AdminCredentialsFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat %s = %v, want it not to exist when BERTH_ADMIN_* are set", server.AdminCredentialsFile, err)
	}
	lr := ts.loginOK(key, secret)
	if !lr.IsSuperUser || lr.TokenType != "bearer" {
		t.Errorf("login with configured credentials = %+v, want a superuser bearer token", lr)
	}
	ts.Admin = lr.Token
	ts.register("configured-check", false)

	// A wrong secret for the configured key is refused.
	st, body := ts.do("POST", "/auth/users/login", "", jsonBody(map[string]string{"access_key": key, "access_secret": secret + "x"}), "application/json", nil)
	wantError(t, "login with a wrong secret", st, body, http.StatusUnauthorized, "unauthorized")
	ts.Close()

	// A restart with the same settings neither writes the file nor adds a
	// second superuser.
	ts2 := startBare(t, dir, withAdmin(key, secret))
	if _, err := os.Stat(filepath.Join(dir, server.AdminCredentialsFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after restart: stat %s = %v, want it not to exist", server.AdminCredentialsFile, err)
	}
	if n, err := ts2.srv.Store().CountUsers(context.Background()); err != nil || n != 2 {
		t.Errorf("CountUsers after restart = %d, %v; want 2", n, err)
	}
	ts2.loginOK(key, secret)
}

func TestLogin(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	creds := adminCreds(t, ts.DataDir)
	user := ts.register("login-user", false)

	t.Run("good", func(t *testing.T) {
		for _, c := range []struct {
			name, key, secret string
			super             bool
		}{
			{"admin", creds.AccessKey, creds.AccessSecret, true},
			{"user", user.Key, user.Secret, false},
		} {
			lr := ts.loginOK(c.key, c.secret)
			if lr.Token == "" || lr.TokenType != "bearer" || lr.ExpiresIn <= 0 || lr.IsSuperUser != c.super || lr.UserID == "" {
				t.Errorf("login(%s) = %+v, want a bearer token, expires_in > 0, is_super_user %v, user_id", c.name, lr, c.super)
			}
			// The token works.
			if st, body := ts.get("/api/v1/registry/user/agents", lr.Token); st != http.StatusOK {
				t.Errorf("my agents with the %s token = %d %s, want 200", c.name, st, body)
			}
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, c := range []struct {
			name, body, ct string
			status         int
			code           string
		}{
			{"bad secret", `{"access_key":"` + user.Key + `","access_secret":"wrong"}`, "application/json", 401, "unauthorized"},
			{"other user's secret", `{"access_key":"` + user.Key + `","access_secret":"` + creds.AccessSecret + `"}`, "application/json", 401, "unauthorized"},
			{"unknown key", `{"access_key":"bk_nobody","access_secret":"` + user.Secret + `"}`, "application/json", 401, "unauthorized"},
			{"malformed JSON", `{"access_key":`, "application/json", 422, "invalid_body"},
			{"not an object", `["a","b"]`, "application/json", 422, "invalid_body"},
			{"unknown field", `{"access_key":"` + user.Key + `","access_secret":"` + user.Secret + `","admin":true}`, "application/json", 422, "invalid_body"},
			{"wrong type", `{"access_key":123,"access_secret":"x"}`, "application/json", 422, "invalid_body"},
			{"trailing data", `{"access_key":"` + user.Key + `","access_secret":"` + user.Secret + `"} {}`, "application/json", 422, "invalid_body"},
			{"empty body", ``, "application/json", 422, "invalid_body"},
			{"missing secret", `{"access_key":"` + user.Key + `"}`, "application/json", 422, "invalid_body"},
			{"null", `null`, "application/json", 422, "invalid_body"},
		} {
			st, body := ts.do("POST", "/auth/users/login", "", strings.NewReader(c.body), c.ct, nil)
			wantError(t, "login("+c.name+")", st, body, c.status, c.code)
		}
	})
}

// b64 is base64url without padding of v's JSON.
func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestAuthRefusals(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	user := ts.register("auth-user", false)
	secretBytes, err := os.ReadFile(filepath.Join(ts.DataDir, "jwt-secret"))
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte(strings.TrimSpace(string(secretBytes)))
	now := time.Now()
	claims := func(sub string, exp time.Time, iss string) jwt.MapClaims {
		c := jwt.MapClaims{"sub": sub, "iat": now.Add(-time.Hour).Unix(), "iss": iss}
		if !exp.IsZero() {
			c["exp"] = exp.Unix()
		}
		return c
	}
	sign := func(m jwt.SigningMethod, key []byte, c jwt.Claims) string {
		t.Helper()
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	valid := claims(user.UserID, now.Add(time.Hour), "berth")
	const path = "/api/v1/registry/user/agents"

	// Positive control: a token crafted the same way as the refused ones
	// below, with the right secret, algorithm, issuer and expiry, works. So
	// each refusal is caused by the one thing it changes.
	if st, body := ts.get(path, sign(jwt.SigningMethodHS256, secret, valid)); st != http.StatusOK {
		t.Fatalf("hand-signed valid token = %d %s, want 200", st, body)
	}

	none := b64(map[string]string{"alg": "none", "typ": "JWT"}) + "." + b64(valid) + "."
	noneUpper := b64(map[string]string{"alg": "None", "typ": "JWT"}) + "." + b64(valid) + "."
	for _, c := range []struct {
		name   string
		header []string // Authorization values; nil = none
	}{
		{"no header", nil},
		{"empty header", []string{""}},
		{"basic", []string{"Basic eDp5"}},
		{"basic x", []string{"Basic x"}},
		{"bearer alone", []string{"Bearer"}},
		{"bearer garbage", []string{"Bearer garbage"}},
		{"bearer three dots", []string{"Bearer a.b.c"}},
		{"token without scheme", []string{user.Token}},
		{"alg none", []string{"Bearer " + none}},
		{"alg None", []string{"Bearer " + noneUpper}},
		{"wrong secret", []string{"Bearer " + sign(jwt.SigningMethodHS256, []byte("another-secret-of-at-least-32-bytes!!"), valid)}},
		{"HS384 with the right secret", []string{"Bearer " + sign(jwt.SigningMethodHS384, secret, valid)}},
		{"expired", []string{"Bearer " + sign(jwt.SigningMethodHS256, secret, claims(user.UserID, now.Add(-time.Minute), "berth"))}},
		{"no exp", []string{"Bearer " + sign(jwt.SigningMethodHS256, secret, claims(user.UserID, time.Time{}, "berth"))}},
		{"wrong issuer", []string{"Bearer " + sign(jwt.SigningMethodHS256, secret, claims(user.UserID, now.Add(time.Hour), "nasiko"))}},
		{"unknown subject", []string{"Bearer " + sign(jwt.SigningMethodHS256, secret, claims("6f1c0000-0000-4000-8000-000000000000", now.Add(time.Hour), "berth"))}},
		{"empty subject", []string{"Bearer " + sign(jwt.SigningMethodHS256, secret, claims("", now.Add(time.Hour), "berth"))}},
		{"tampered payload", []string{"Bearer " + tamper(t, user.Token)}},
	} {
		h := http.Header{}
		if c.header != nil {
			h["Authorization"] = c.header
		}
		st, hdr, body := ts.call("GET", path, "", nil, "", h)
		wantError(t, c.name, st, body, http.StatusUnauthorized, "unauthorized")
		if got := hdr.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
			t.Errorf("%s: WWW-Authenticate = %q, want a Bearer challenge", c.name, got)
		}
	}
}

// tamper swaps the subject of a signed token for another one, keeping the
// signature.
func tamper(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q is not a JWS", token)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	mustJSON(t, raw, &c)
	c["sub"] = "00000000-0000-4000-8000-000000000001"
	parts[1] = b64(c)
	return strings.Join(parts, ".")
}

// TestEveryProtectedRouteNeedsAToken calls every route the OpenAPI document
// marks as not public without a token.
func TestEveryProtectedRouteNeedsAToken(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	doc := ts.openAPI()
	n := 0
	for _, r := range doc.routes() {
		if r.auth == "public" {
			continue
		}
		n++
		st, hdr, body := ts.call(r.method, fillPath(r.path), "", strings.NewReader("{}"), "application/json", nil)
		wantError(t, r.method+" "+r.path+" without a token", st, body, http.StatusUnauthorized, "unauthorized")
		if hdr.Get("WWW-Authenticate") == "" {
			t.Errorf("%s %s: no WWW-Authenticate header on 401", r.method, r.path)
		}
	}
	if n < 20 {
		t.Errorf("only %d protected routes in the OpenAPI document, want the whole API", n)
	}
}

func TestForeignAgentIsForbidden(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	alice := ts.register("alice", false)
	bob := ts.register("bob", false)
	up := ts.upload(alice.Token, light(t, "alice-agent", "1.0.0", nil))
	ops := ts.operations(alice.Token, "alice-agent")
	before := ts.state(alice.Token, "alice-agent")
	ds := ts.deployments(alice.Token, "alice-agent")
	if len(ds) != 1 {
		t.Fatalf("deployments = %+v, want 1", ds)
	}

	small := berthtest.Zip(t, map[string]string{
		"AgentCard.json": `{"name":"alice-agent","version":"2.0.0"}`,
		"berth.json":     `{"run":["sh","-c","sleep 60"]}`,
	})
	type req struct {
		name, method, path, body, ct string
	}
	mp, mct := multipartBody(t, small, map[string]string{"version": "2.0.0"})
	mpBytes, _ := io.ReadAll(mp)
	for _, ref := range []string{up.AgentID, "alice-agent"} {
		for _, c := range []req{
			{"versions", "GET", "/api/v1/agents/" + ref + "/versions", "", ""},
			{"deployments", "GET", "/api/v1/agents/" + ref + "/deployments", "", ""},
			{"builds", "GET", "/api/v1/agents/" + ref + "/builds", "", ""},
			{"operations", "GET", "/api/v1/agents/" + ref + "/operations", "", ""},
			{"operation", "GET", "/api/v1/agents/" + ref + "/operations/" + ops[0].ID, "", ""},
			{"logs", "GET", "/api/v1/agents/" + ref + "/logs", "", ""},
			{"download", "GET", "/api/v1/agents/" + ref + "/download?version=1.0.0", "", ""},
			{"update", "PUT", "/api/v1/agents/" + ref + "/update?wait=true", string(mpBytes), mct},
			{"rollback", "POST", "/api/v1/agents/" + ref + "/rollback", `{"target_version":"1.0.0"}`, "application/json"},
			{"rollback dry run", "POST", "/api/v1/agents/" + ref + "/rollback?dry_run=true", ``, "application/json"},
			{"delete", "DELETE", "/api/v1/registry/agent/" + ref, "", ""},
			{"registry upsert", "PUT", "/api/v1/registry/agent/alice-agent", `{"name":"alice-agent","description":"mine now"}`, "application/json"},
			{"create build record", "POST", "/api/v1/agents/build", `{"agent_id":"` + ref + `","version_tag":"1.0.0"}`, "application/json"},
			{"create deployment record", "POST", "/api/v1/agents/deploy", `{"agent_id":"` + ref + `","build_id":"` + up.BuildID + `"}`, "application/json"},
			{"build status", "PUT", "/api/v1/agents/build/" + up.BuildID + "/status", `{"status":"failed"}`, "application/json"},
			{"deployment status", "PUT", "/api/v1/agents/deployment/" + ds[0].ID + "/status", `{"status":"stopped"}`, "application/json"},
			{"version mapping", "GET", "/api/v1/agents/build/version-mapping?agent_id=" + ref + "&semantic_version=1.0.0", "", ""},
		} {
			var body io.Reader
			if c.body != "" {
				body = strings.NewReader(c.body)
			}
			st, b := ts.do(c.method, c.path, bob.Token, body, c.ct, nil)
			wantError(t, "bob: "+c.name+" of "+ref, st, b, http.StatusForbidden, "forbidden")
		}
	}
	// Registering users is for superusers only.
	st, b := ts.do("POST", "/api/v1/user/register", bob.Token, jsonBody(map[string]any{"username": "mallory"}), "application/json", nil)
	wantError(t, "register by a non-superuser", st, b, http.StatusForbidden, "forbidden")
	st, b = ts.do("POST", "/api/v1/user/register", bob.Token, jsonBody(map[string]any{"username": "mallory", "is_super_user": true}), "application/json", nil)
	wantError(t, "register of a superuser by a non-superuser", st, b, http.StatusForbidden, "forbidden")

	// Nothing changed for alice, and her agent still answers.
	if after := ts.state(alice.Token, "alice-agent"); after != before {
		t.Errorf("state after bob's attempts = %+v, want %+v", after, before)
	}
	if got := ts.operations(alice.Token, "alice-agent"); len(got) != len(ops) {
		t.Errorf("operations after bob's attempts = %d, want %d", len(got), len(ops))
	}
	if w := ts.whoami("alice-agent"); w.Version != "1.0.0" {
		t.Errorf("whoami = %+v, want 1.0.0", w)
	}
	if e, ok := ts.agentByName("alice-agent"); !ok || e["description"] == "mine now" || e["owner_id"] != alice.UserID {
		t.Errorf("registry entry after bob's upsert = %v, want alice's unchanged", e)
	}
	// The owner and a superuser may.
	for who, tok := range map[string]string{"owner": alice.Token, "superuser": ts.Admin} {
		if st, b := ts.get("/api/v1/agents/alice-agent/versions", tok); st != http.StatusOK {
			t.Errorf("versions as %s = %d %s, want 200", who, st, b)
		}
	}
}

func TestRegister(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "")
	st, body := ts.do("POST", "/api/v1/user/register", ts.Admin, jsonBody(map[string]any{"username": "reg-user", "email": "u@example.com"}), "application/json", nil)
	if st != http.StatusCreated {
		t.Fatalf("register = %d %s", st, body)
	}
	var r struct {
		UserID, Username, Email, Role, Status string
		AccessKey                             string `json:"access_key"`
		AccessSecret                          string `json:"access_secret"`
	}
	mustJSON(t, body, &r)
	if r.Username != "reg-user" || r.Role != "user" || r.AccessKey == "" || r.AccessSecret == "" || r.AccessKey == r.AccessSecret {
		t.Errorf("register = %s", body)
	}
	if lr := ts.loginOK(r.AccessKey, r.AccessSecret); lr.IsSuperUser || lr.Username != "reg-user" {
		t.Errorf("login of the registered user = %+v", lr)
	}

	// A registered superuser may register others; its users may not.
	super := ts.register("reg-super", true)
	if lr := ts.loginOK(super.Key, super.Secret); !lr.IsSuperUser {
		t.Errorf("registered superuser logs in with is_super_user false")
	}
	st, body = ts.do("POST", "/api/v1/user/register", super.Token, jsonBody(map[string]any{"username": "reg-by-super"}), "application/json", nil)
	if st != http.StatusCreated {
		t.Errorf("register by a registered superuser = %d %s", st, body)
	}

	for _, c := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"duplicate", `{"username":"reg-user"}`, 409, "conflict"},
		{"duplicate of admin", `{"username":"admin"}`, 409, "conflict"},
		{"invalid username", `{"username":"Reg User"}`, 422, "invalid_body"},
		{"empty username", `{"username":""}`, 422, "invalid_body"},
		{"bad email", `{"username":"reg-x","email":"not-an-email"}`, 422, "invalid_body"},
		{"unknown field", `{"username":"reg-x","role":"superuser"}`, 422, "invalid_body"},
		{"wrong type", `{"username":"reg-x","is_super_user":"yes"}`, 422, "invalid_body"},
		{"not JSON", `username=reg-x`, 422, "invalid_body"},
	} {
		st, body := ts.do("POST", "/api/v1/user/register", ts.Admin, strings.NewReader(c.body), "application/json", nil)
		wantError(t, "register: "+c.name, st, body, c.status, c.code)
	}
	if n, err := ts.srv.Store().CountUsers(context.Background()); err != nil || n != 4 {
		t.Errorf("users = %d, %v; want 4 (admin, reg-user, reg-super, reg-by-super)", n, err)
	}
}

func TestTokenLifetimeAndSecretFiles(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", func(c *server.Config) { c.TokenTTL = 90 * time.Minute })
	creds := adminCreds(t, ts.DataDir)
	lr := ts.loginOK(creds.AccessKey, creds.AccessSecret)
	if lr.ExpiresIn != int64((90 * time.Minute).Seconds()) {
		t.Errorf("expires_in = %d, want %d", lr.ExpiresIn, int64((90 * time.Minute).Seconds()))
	}
	parts := strings.Split(lr.Token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Exp, Iat int64
		Sub, Iss string
	}
	mustJSON(t, raw, &c)
	if c.Exp-c.Iat != lr.ExpiresIn || c.Sub != lr.UserID || c.Iss != "berth" {
		t.Errorf("token claims = %+v, want exp-iat = expires_in %d, sub %s, iss berth", c, lr.ExpiresIn, lr.UserID)
	}
	for _, name := range []string{"jwt-secret", server.AdminCredentialsFile} {
		fi, err := os.Stat(filepath.Join(ts.DataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s mode = %v, want no access for group and others", name, fi.Mode().Perm())
		}
	}
}

func TestBootstrapRefusesHalfConfiguredAdmin(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ key, secret string }{{"bk_only_key", ""}, {"", "only-a-secret"}} {
		dir := t.TempDir()
		cfg := server.Config{Addr: "127.0.0.1:0", DataDir: dir, AdminAccessKey: c.key, AdminAccessSecret: c.secret,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		srv, err := server.Open(context.Background(), cfg)
		if err == nil {
			srv.Close()
			t.Errorf("Open with key %q and secret %q succeeded, want an error", c.key, c.secret)
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, server.AdminCredentialsFile)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open with a half-configured admin wrote %s (stat %v)", server.AdminCredentialsFile, err)
		}
	}
}
