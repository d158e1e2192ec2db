package http

import (
	"net/http"
	"regexp"
	"strings"
)

var pathParam = regexp.MustCompile(`\{([a-z_]+)(\.\.\.)?\}`)

// OpenAPI returns the OpenAPI 3.1 document of Berth's routes. It is built
// from the same route table the server registers, so it cannot drift.
func (s *Server) OpenAPI() map[string]any {
	paths := map[string]map[string]any{}
	for _, rt := range s.routeTable() {
		p := pathParam.ReplaceAllString(rt.Pattern, "{$1}")
		if paths[p] == nil {
			paths[p] = map[string]any{}
		}
		var params []map[string]any
		for _, m := range pathParam.FindAllStringSubmatch(rt.Pattern, -1) {
			params = append(params, map[string]any{"name": m[1], "in": "path", "required": true, "schema": map[string]string{"type": "string"}})
		}
		op := map[string]any{
			"summary":      rt.Summary,
			"operationId":  strings.ToLower(rt.Method) + pathParam.ReplaceAllString(strings.ReplaceAll(rt.Pattern, "/", "_"), "$1"),
			"x-berth-auth": rt.Auth,
			"responses": map[string]any{
				"default": map[string]any{"description": "Error", "content": map[string]any{"application/json": map[string]any{"schema": map[string]string{"$ref": "#/components/schemas/Error"}}}},
			},
		}
		if len(params) > 0 {
			op["parameters"] = params
		}
		if rt.Auth != "public" {
			op["security"] = []map[string][]string{{"bearer": {}}}
		}
		paths[p][strings.ToLower(rt.Method)] = op
	}
	return map[string]any{
		"openapi": "3.1.0",
		"info":    map[string]string{"title": "Berth API", "version": s.cfg.Version},
		"paths":   paths,
		"components": map[string]any{
			"securitySchemes": map[string]any{"bearer": map[string]string{"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
			"schemas": map[string]any{
				"Error": map[string]any{
					"type":     "object",
					"required": []string{"status_code", "message", "detail", "code"},
					"properties": map[string]any{
						"status_code":  map[string]string{"type": "integer"},
						"message":      map[string]string{"type": "string"},
						"detail":       map[string]string{"type": "string"},
						"code":         map[string]string{"type": "string"},
						"operation_id": map[string]string{"type": "string"},
					},
				},
			},
		},
	}
}

func (s *Server) handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.OpenAPI())
}
