package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// api is a small client of Berth's HTTP API, enough to drive the benches.
// Every request goes to base, a 127.0.0.1 URL.
type api struct {
	base  string
	token string
	hc    *http.Client
}

func newAPI(base string) *api {
	tr := &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 16,
		DisableCompression:  true,
	}
	return &api{base: strings.TrimRight(base, "/"), hc: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}
}

// close releases the client's idle connections.
func (a *api) close() { a.hc.CloseIdleConnections() }

// response is one answer with its client-side round trip.
type response struct {
	Status int
	Header http.Header
	Body   []byte
	RTT    time.Duration
}

// do sends one request and reads the whole answer. The round trip is from
// just before sending to the last byte of the body.
func (a *api) do(method, path string, body []byte, contentType string) (response, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, a.base+path, r)
	if err != nil {
		return response{}, err
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	start := time.Now()
	res, err := a.hc.Do(req)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	rtt := time.Since(start)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: read body: %w", method, path, err)
	}
	return response{Status: res.StatusCode, Header: res.Header, Body: b, RTT: rtt}, nil
}

// expect returns an error unless res has the wanted status.
func expect(res response, want int, what string) error {
	if res.Status != want {
		return fmt.Errorf("%s = %d %s, want %d", what, res.Status, truncate(res.Body, 400), want)
	}
	return nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// login exchanges an access key and secret for a token and keeps it.
func (a *api) login(key, secret string) error {
	b, _ := json.Marshal(map[string]string{"access_key": key, "access_secret": secret})
	res, err := a.do("POST", "/auth/users/login", b, "application/json")
	if err != nil {
		return err
	}
	if err := expect(res, http.StatusOK, "login"); err != nil {
		return err
	}
	var out struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(res.Body, &out); err != nil || out.Token == "" {
		return fmt.Errorf("login: no token in %s", truncate(res.Body, 200))
	}
	a.token = out.Token
	return nil
}

// deployed is the part of upload and update answers the benches use.
type deployed struct {
	AgentID    string `json:"agent_id"`
	Version    string `json:"version"`
	NewVersion string `json:"new_version"`
	Status     string `json:"status"`
}

func multipartBody(zip []byte, fields map[string]string) ([]byte, string) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range fields {
		_ = mw.WriteField(k, v) // writes to a bytes.Buffer cannot fail
	}
	fw, _ := mw.CreateFormFile("file", "agent.zip")
	_, _ = fw.Write(zip)
	_ = mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

// upload creates an agent from zip and waits until it runs.
func (a *api) upload(zip []byte) (deployed, error) {
	body, ct := multipartBody(zip, nil)
	res, err := a.do("POST", "/api/v1/agents/upload?wait=true", body, ct)
	if err != nil {
		return deployed{}, err
	}
	if err := expect(res, http.StatusOK, "upload"); err != nil {
		return deployed{}, err
	}
	var out struct{ Data deployed }
	if err := json.Unmarshal(res.Body, &out); err != nil {
		return deployed{}, fmt.Errorf("upload: %v", err)
	}
	return out.Data, nil
}

// update deploys a new version of agent with the given form fields and
// waits until it is active.
func (a *api) update(agent string, zip []byte, fields map[string]string) (deployed, response, error) {
	body, ct := multipartBody(zip, fields)
	res, err := a.do("PUT", "/api/v1/agents/"+agent+"/update?wait=true", body, ct)
	if err != nil {
		return deployed{}, res, err
	}
	if err := expect(res, http.StatusOK, "update "+agent); err != nil {
		return deployed{}, res, err
	}
	var out struct{ Data deployed }
	if err := json.Unmarshal(res.Body, &out); err != nil {
		return deployed{}, res, fmt.Errorf("update: %v", err)
	}
	return out.Data, res, nil
}

// rolledBack is one rollback answer, timed.
type rolledBack struct {
	To, From string
	Warm     bool
	// Server is the Server-Timing "rollback" figure: request to traffic
	// moved, measured inside the server. Ready is its "ready" part (the
	// probe when warm, the agent's start when cold).
	Server, Ready time.Duration
	RTT           time.Duration
}

// rollback rolls agent back to target ("" = last known good) and expects
// 200.
func (a *api) rollback(agent, target string) (rolledBack, error) {
	body := []byte("{}")
	if target != "" {
		body, _ = json.Marshal(map[string]string{"target_version": target, "reason": "bench"})
	}
	res, err := a.do("POST", "/api/v1/agents/"+agent+"/rollback", body, "application/json")
	if err != nil {
		return rolledBack{}, err
	}
	if err := expect(res, http.StatusOK, "rollback "+agent+" to "+target); err != nil {
		return rolledBack{}, err
	}
	var out struct {
		Data struct {
			To   string `json:"rolled_back_to"`
			From string `json:"rolled_back_from"`
			Warm bool   `json:"warm"`
		}
	}
	if err := json.Unmarshal(res.Body, &out); err != nil {
		return rolledBack{}, fmt.Errorf("rollback: %v", err)
	}
	st, err := parseServerTiming(res.Header.Get("Server-Timing"))
	if err != nil {
		return rolledBack{}, err
	}
	srv, ok := st["rollback"]
	if !ok {
		return rolledBack{}, fmt.Errorf("rollback answer has no Server-Timing rollback figure (header %q)", res.Header.Get("Server-Timing"))
	}
	return rolledBack{To: out.Data.To, From: out.Data.From, Warm: out.Data.Warm, Server: srv, Ready: st["ready"], RTT: res.RTT}, nil
}

// parseServerTiming reads a Server-Timing header such as
// "rollback;dur=3.125, ready;dur=0.402" into name → duration. Metrics
// without a dur parameter are left out.
func parseServerTiming(h string) (map[string]time.Duration, error) {
	out := map[string]time.Duration{}
	for _, metric := range strings.Split(h, ",") {
		parts := strings.Split(strings.TrimSpace(metric), ";")
		name := strings.TrimSpace(parts[0])
		if name == "" {
			continue
		}
		for _, p := range parts[1:] {
			k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(k), "dur") {
				continue
			}
			f, err := strconv.ParseFloat(strings.Trim(strings.TrimSpace(v), `"`), 64)
			if err != nil {
				return nil, fmt.Errorf("Server-Timing %q: bad dur %q", h, v)
			}
			out[name] = time.Duration(f * float64(time.Millisecond))
		}
	}
	return out, nil
}

// deploymentInfo is one entry of GET …/deployments.
type deploymentInfo struct {
	ID      string `json:"_id"`
	Version string `json:"version"`
	Status  string `json:"status"`
}

// deployments lists agent's deployments.
func (a *api) deployments(agent string) ([]deploymentInfo, error) {
	res, err := a.do("GET", "/api/v1/agents/"+agent+"/deployments", nil, "")
	if err != nil {
		return nil, err
	}
	if err := expect(res, http.StatusOK, "deployments"); err != nil {
		return nil, err
	}
	var out struct{ Data []deploymentInfo }
	if err := json.Unmarshal(res.Body, &out); err != nil {
		return nil, fmt.Errorf("deployments: %v", err)
	}
	return out.Data, nil
}

// live reports whether any deployment of version is starting or running.
func live(ds []deploymentInfo, version string) bool {
	for _, d := range ds {
		if d.Version == version && (d.Status == "running" || d.Status == "starting") {
			return true
		}
	}
	return false
}

// waitHealthy polls the public health check until it answers 200.
func waitHealthy(ctx context.Context, base string) error {
	c := &http.Client{Timeout: time.Second}
	for {
		res, err := c.Get(base + "/api/v1/healthcheck")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server at %s did not become healthy: %w", base, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
