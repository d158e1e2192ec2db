package http

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/lifecycle"
)

// Engine is the part of the release engine the API drives.
type Engine interface {
	Upload(ctx context.Context, actor berth.User, req lifecycle.DeployRequest) (lifecycle.DeployResult, error)
	Update(ctx context.Context, actor berth.User, a berth.Agent, req lifecycle.DeployRequest) (lifecycle.DeployResult, error)
	Rollback(ctx context.Context, actor berth.User, a berth.Agent, req lifecycle.RollbackRequest) (lifecycle.RollbackResult, error)
	Delete(ctx context.Context, actor berth.User, a berth.Agent) error
	PackagePath(agentID, label string) string
}

// Config configures the API server.
type Config struct {
	// MaxUploadBytes bounds an uploaded package (413 beyond it).
	MaxUploadBytes int64
	// TempDir is where uploads are spooled; it should be on the data
	// directory's file system so that keeping a package is a rename.
	TempDir string
	// PublicURL is the base URL agents are reached at, e.g.
	// http://127.0.0.1:8080 (used for registry "url" fields).
	PublicURL string
	// Version is Berth's own version, shown by the health check.
	Version string
}

// Server is Berth's HTTP API.
type Server struct {
	cfg     Config
	store   berth.Store
	engine  Engine
	runtime berth.Runtime
	tokens  *Tokens
	proxy   http.Handler
	log     *slog.Logger
	mux     *http.ServeMux
}

// NewServer returns the API server. proxy serves /agents/{name}/….
func NewServer(cfg Config, store berth.Store, engine Engine, rt berth.Runtime, tokens *Tokens, proxy http.Handler, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	if cfg.MaxUploadBytes <= 0 {
		cfg.MaxUploadBytes = 256 << 20
	}
	if tokens.TTL <= 0 {
		tokens.TTL = 24 * time.Hour
	}
	s := &Server{cfg: cfg, store: store, engine: engine, runtime: rt, tokens: tokens, proxy: proxy, log: log, mux: http.NewServeMux()}
	s.routes()
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// route is one API route; the table is also the source of the OpenAPI
// document, so the two cannot drift.
type route struct {
	Method, Pattern, Summary string
	Auth                     string // "public", "user", "owner", "superuser"
	handler                  http.HandlerFunc
}

func (s *Server) routeTable() []route {
	return []route{
		{"GET", "/api/v1/healthcheck", "Health check", "public", s.handleHealth},
		{"POST", "/auth/users/login", "Log in with an access key and secret", "public", s.handleLogin},
		{"POST", "/api/v1/user/register", "Register a user (superuser)", "superuser", s.authed(s.handleRegister)},
		{"GET", "/api/v1/user/upload-agents", "Agents the caller uploaded", "user", s.authed(s.handleUploadAgents)},

		{"POST", "/api/v1/agents/upload", "Upload a new agent package", "user", s.authed(s.handleUpload)},
		{"PUT", "/api/v1/agents/{agent_id}/update", "Deploy a new version", "owner", s.authed(s.handleUpdate)},
		{"POST", "/api/v1/agents/{agent_id}/rollback", "Roll back to an earlier version", "owner", s.authed(s.handleRollback)},
		{"GET", "/api/v1/agents/{agent_id}/versions", "Version history", "owner", s.authed(s.handleVersions)},
		{"GET", "/api/v1/agents/{agent_id}/deployments", "Deployments", "owner", s.authed(s.handleDeployments)},
		{"GET", "/api/v1/agents/{agent_id}/builds", "Builds", "owner", s.authed(s.handleBuilds)},
		{"GET", "/api/v1/agents/{agent_id}/operations", "Audit trail", "owner", s.authed(s.handleOperations)},
		{"GET", "/api/v1/agents/{agent_id}/operations/{operation_id}", "One operation", "owner", s.authed(s.handleOperation)},
		{"GET", "/api/v1/agents/{agent_id}/logs", "Agent output", "owner", s.authed(s.handleLogs)},
		{"GET", "/api/v1/agents/{agent_id}/download", "Download a version's package (tar.gz)", "owner", s.authed(s.handleDownload)},

		{"POST", "/api/v1/agents/build", "Create a build record", "owner", s.authed(s.handleCreateBuild)},
		{"PUT", "/api/v1/agents/build/{build_id}/status", "Update a build record", "owner", s.authed(s.handleBuildStatus)},
		{"POST", "/api/v1/agents/deploy", "Create a deployment record", "owner", s.authed(s.handleCreateDeployment)},
		{"PUT", "/api/v1/agents/deployment/{deployment_id}/status", "Update a deployment record", "owner", s.authed(s.handleDeploymentStatus)},
		{"GET", "/api/v1/agents/build/version-mapping", "Map a semantic version to its image", "owner", s.authed(s.handleVersionMapping)},

		{"POST", "/api/v1/registry", "Create a registry entry", "user", s.authed(s.handleRegistryCreate)},
		{"PUT", "/api/v1/registry/agent/{agent_name}", "Create or update a registry entry by name", "owner", s.authed(s.handleRegistryUpsert)},
		{"GET", "/api/v1/registry/agent/name/{agent_name}", "Registry entry by name", "public", s.handleRegistryByName},
		{"GET", "/api/v1/registry/agent/id/{agent_id}", "Registry entry by id", "user", s.authed(s.handleRegistryByID)},
		{"GET", "/api/v1/registry/user/agents", "The caller's agents", "user", s.authed(s.handleMyAgents)},
		{"DELETE", "/api/v1/registry/agent/{agent_id}", "Delete an agent and everything it runs", "owner", s.authed(s.handleDelete)},

		{"GET", "/api/v1/openapi.json", "This API's OpenAPI document", "public", s.handleOpenAPI},
	}
}

func (s *Server) routes() {
	for _, rt := range s.routeTable() {
		s.mux.HandleFunc(rt.Method+" "+rt.Pattern, rt.handler)
	}
	if s.proxy != nil {
		s.mux.Handle("/agents/{name}", s.proxy)
		s.mux.Handle("/agents/{name}/{path...}", s.proxy)
	}
	s.mux.HandleFunc("/", s.handleNoRoute)
}

// handleNoRoute answers requests no route matched: 405 naming the allowed
// methods when the path exists with other methods, else 404.
func (s *Server) handleNoRoute(w http.ResponseWriter, r *http.Request) {
	var allowed []string
	for _, m := range []string{"GET", "POST", "PUT", "DELETE"} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "/" && pattern != "" {
			allowed = append(allowed, m)
		}
	}
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		s.writeError(w, r, berth.Errorf(berth.CodeMethodNotAllowed, "%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allowed, ", ")))
		return
	}
	s.writeError(w, r, berth.Errorf(berth.CodeNotFound, "no route for %s %s", r.Method, r.URL.Path))
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeData(w, http.StatusOK, "healthy", map[string]string{"status": "healthy", "version": s.cfg.Version})
}
