package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/berthhq/berth"
)

func TestDeploymentName(t *testing.T) {
	long := strings.Repeat("a", 63)
	tests := []struct {
		agent, version, id string
		wantPrefix         string
	}{
		{"echo", "1.2.0", "d1", "berth-echo-1-2-0-"},
		{"echo", "1.2.0-rc.1+build.7", "d1", "berth-echo-1-2-0-rc-1-build-7-"},
		{"7up", "1.0.0", "d1", "berth-7up-1-0-0-"},
		{long, "1.0.0", "d1", "berth-aaaa"},
		{long, "10.20.30-" + long, "d1", "berth-aaaa"},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		got := deploymentName(tt.agent, tt.version, tt.id)
		if errs := validation.IsDNS1035Label(got); len(errs) > 0 {
			t.Errorf("deploymentName(%q, %q, %q) = %q, not a DNS-1035 label: %v", tt.agent, tt.version, tt.id, got, errs)
		}
		if !strings.HasPrefix(got, tt.wantPrefix) {
			t.Errorf("deploymentName(%q, %q, %q) = %q, want prefix %q", tt.agent, tt.version, tt.id, got, tt.wantPrefix)
		}
		if seen[got] {
			t.Errorf("deploymentName(%q, %q, %q) = %q, given to another input too", tt.agent, tt.version, tt.id, got)
		}
		seen[got] = true
		if again := deploymentName(tt.agent, tt.version, tt.id); again != got {
			t.Errorf("deploymentName is not deterministic: %q then %q", got, again)
		}
	}
	// Two deployments of one version get two names.
	if a, b := deploymentName("echo", "1.0.0", "d1"), deploymentName("echo", "1.0.0", "d2"); a == b {
		t.Errorf("deploymentName gives deployments d1 and d2 of one version the same name %q", a)
	}
	// Names cut short still differ when what was cut differs.
	if a, b := deploymentName(long, "1.0.0-"+long+"x", "d1"), deploymentName(long, "1.0.0-"+long+"y", "d1"); a == b {
		t.Errorf("deploymentName gives different long versions the same name %q", a)
	}
}

func TestAgentServiceName(t *testing.T) {
	for _, agent := range []string{"echo", "7up", "a-b", strings.Repeat("x", 63)} {
		got := AgentServiceName(agent)
		if errs := validation.IsDNS1035Label(got); len(errs) > 0 {
			t.Errorf("AgentServiceName(%q) = %q, not a DNS-1035 label: %v", agent, got, errs)
		}
		if len(agent) < 50 && got != "berth-"+agent {
			t.Errorf("AgentServiceName(%q) = %q, want berth-%s", agent, got, agent)
		}
	}
	if a, b := AgentServiceName(strings.Repeat("x", 62)+"a"), AgentServiceName(strings.Repeat("x", 62)+"b"); a == b {
		t.Errorf("AgentServiceName gives two long names the same Service %q", a)
	}
}

func TestLabelValue(t *testing.T) {
	tests := []struct{ in, want string }{
		{"1.2.0", "1.2.0"},
		{"1.2.0+build.7", "1.2.0-build.7"},
		{"-x-", "x"},
		{"é1", "1"},
		{strings.Repeat("v", 70), strings.Repeat("v", 63)},
	}
	for _, tt := range tests {
		got := labelValue(tt.in)
		if got != tt.want {
			t.Errorf("labelValue(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if errs := content.IsLabelValue(got); len(errs) > 0 {
			t.Errorf("labelValue(%q) = %q, not a label value: %v", tt.in, got, errs)
		}
	}
	for _, id := range []string{"6f1c2d3e-0000-4000-8000-000000000001", "rtt-0123abcd", "A.b_c"} {
		if !validLabelValue(id) {
			t.Errorf("validLabelValue(%q) = false, want true", id)
		}
	}
	for _, id := range []string{"", "-a", "a-", "a/b", strings.Repeat("a", 64)} {
		if validLabelValue(id) {
			t.Errorf("validLabelValue(%q) = true, want false", id)
		}
	}
}

func TestAPIError(t *testing.T) {
	rt, err := New(Options{Client: fake.NewClientset(), Namespace: "agents"})
	if err != nil {
		t.Fatal(err)
	}
	gr := schema.GroupResource{Group: "apps", Resource: "deployments"}
	invalid := apierrors.NewInvalid(schema.GroupKind{Group: "apps", Kind: "Deployment"}, "x",
		field.ErrorList{field.Invalid(field.NewPath("spec", "template", "spec", "containers").Index(0).Child("env").Index(0).Child("name"), "1BAD", "must be a C identifier")})
	tests := []struct {
		name      string
		err       error
		code      berth.Code
		inMessage string
		retry     bool
	}{
		{"not found", apierrors.NewNotFound(gr, "x"), berth.CodeNotFound, "doing", false},
		{"exists", apierrors.NewAlreadyExists(gr, "x"), berth.CodeConflict, "doing", false},
		{"conflict", apierrors.NewConflict(gr, "x", errors.New("changed")), berth.CodeConflict, "doing", true},
		{"invalid", invalid, berth.CodeDeployFailed, "1BAD", false},
		{"forbidden", apierrors.NewForbidden(gr, "x", errors.New("rbac")), berth.CodeInternal, "namespace agents", false},
		{"unavailable", apierrors.NewServiceUnavailable("busy"), berth.CodeUnavailable, "doing", true},
		{"throttled", apierrors.NewTooManyRequests("slow down", 1), berth.CodeUnavailable, "doing", true},
		{"timeout", apierrors.NewTimeoutError("slow", 1), berth.CodeUnavailable, "doing", true},
		{"network", &url.Error{Op: "Get", URL: "https://k8s", Err: &net.OpError{Op: "dial", Err: errors.New("refused")}}, berth.CodeUnavailable, "doing", true},
		{"eof", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), berth.CodeUnavailable, "doing", true},
		{"canceled", fmt.Errorf("get: %w", context.Canceled), berth.CodeUnavailable, "doing", false},
		{"berth error", berth.Errorf(berth.CodeInvalid, "no"), berth.CodeUnavailable, "doing", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := rt.apiError(tt.err, "doing %s", "it")
			if e.Code != tt.code {
				t.Errorf("apiError(%v).Code = %q, want %q", tt.err, e.Code, tt.code)
			}
			if !strings.Contains(e.Message, tt.inMessage) {
				t.Errorf("apiError(%v).Message = %q, want it to contain %q", tt.err, e.Message, tt.inMessage)
			}
			if !errors.Is(e, tt.err) {
				t.Errorf("apiError(%v) does not wrap its cause", tt.err)
			}
			if got := retriable(tt.err); got != tt.retry {
				t.Errorf("retriable(%v) = %v, want %v", tt.err, got, tt.retry)
			}
		})
	}
}

func TestServiceName(t *testing.T) {
	rt, err := New(Options{Client: fake.NewClientset(), Namespace: "agents"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		url, want string
		ok        bool
	}{
		{"http://berth-echo-1-0-0-abcd1234.agents.svc.cluster.local", "berth-echo-1-0-0-abcd1234", true},
		{"http://berth-echo.agents.svc.cluster.local:80/", "berth-echo", true},
		{"http://berth-echo.other.svc.cluster.local", "", false},
		{"http://berth-echo.agents.svc", "", false},
		{"http://127.0.0.1:8080", "", false},
		{"%", "", false},
	}
	for _, tt := range tests {
		got, err := rt.serviceName(tt.url)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("serviceName(%q) = %q, %v; want %q, ok %v", tt.url, got, err, tt.want, tt.ok)
		}
	}
}
