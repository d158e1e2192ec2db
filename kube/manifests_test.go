package kube_test

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/berthhq/berth/kube"
)

const manifestDir = "../deploy/kubernetes"

// manifests decodes, strictly, every object in the manifest files the
// kustomization lists, and checks that it lists every manifest file.
func manifests(t *testing.T) []runtime.Object {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(manifestDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	files, _ := filepath.Glob(filepath.Join(manifestDir, "*.yaml"))
	for _, f := range files {
		if base := filepath.Base(f); base != "kustomization.yaml" && !slices.Contains(k.Resources, base) {
			t.Errorf("kustomization.yaml does not list %s", base)
		}
	}
	decode := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	sep := regexp.MustCompile(`(?m)^---\s*$`)
	var objs []runtime.Object
	for _, name := range k.Resources {
		b, err := os.ReadFile(filepath.Join(manifestDir, name))
		if err != nil {
			t.Fatalf("kustomization.yaml lists %s: %v", name, err)
		}
		for _, doc := range sep.Split(string(b), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj, _, err := decode.Decode([]byte(doc), nil, nil)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			objs = append(objs, obj)
		}
	}
	return objs
}

func stripComments(doc string) string {
	var b strings.Builder
	for line := range strings.Lines(doc) {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// TestManifests checks that the manifests hang together: Berth runs as the
// service account its Role is bound to, that Role is in the namespace
// Berth manages, and it allows every API call the runtime makes.
func TestManifests(t *testing.T) {
	var (
		dep     *appsv1.Deployment
		role    *rbacv1.Role
		binding *rbacv1.RoleBinding
		sa      *corev1.ServiceAccount
		svc     *corev1.Service
	)
	for _, obj := range manifests(t) {
		switch o := obj.(type) {
		case *appsv1.Deployment:
			dep = o
		case *rbacv1.Role:
			role = o
		case *rbacv1.RoleBinding:
			binding = o
		case *corev1.ServiceAccount:
			sa = o
		case *corev1.Service:
			svc = o
		}
	}
	if dep == nil || role == nil || binding == nil || sa == nil || svc == nil {
		t.Fatalf("manifests lack a Deployment, Role, RoleBinding, ServiceAccount or Service")
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e
	}
	if got := env["BERTH_RUNTIME"].Value; got != "kubernetes" {
		t.Errorf("BERTH_RUNTIME = %q, want kubernetes", got)
	}
	agentsNS := env["BERTH_KUBE_NAMESPACE"].Value
	if role.Namespace != agentsNS || binding.Namespace != agentsNS {
		t.Errorf("Role in %q, RoleBinding in %q; want both in the agents' namespace %q", role.Namespace, binding.Namespace, agentsNS)
	}
	if e := env["BERTH_DATABASE_URL"]; e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		t.Errorf("BERTH_DATABASE_URL = %+v, want it from a Secret", e)
	}
	if got := dep.Spec.Template.Spec.ServiceAccountName; got != sa.Name || dep.Namespace != sa.Namespace {
		t.Errorf("Berth runs as %s/%s, want the ServiceAccount %s/%s", dep.Namespace, got, sa.Namespace, sa.Name)
	}
	if len(binding.Subjects) != 1 || binding.Subjects[0].Name != sa.Name || binding.Subjects[0].Namespace != sa.Namespace ||
		binding.RoleRef.Kind != "Role" || binding.RoleRef.Name != role.Name {
		t.Errorf("RoleBinding %+v does not bind Role %s to %s/%s", binding, role.Name, sa.Namespace, sa.Name)
	}
	if sel := svc.Spec.Selector["app.kubernetes.io/name"]; sel == "" || sel != dep.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Errorf("Service selector %v does not select Berth's pods %v", svc.Spec.Selector, dep.Spec.Template.Labels)
	}

	// Every call the runtime and router make must be allowed.
	c := newCluster(t)
	rt := c.runtime(t, nil)
	router := rt.Router(kube.RouterOptions{DrainDelay: 1})
	ctx := ctxFor(t)
	inst := mustStart(t, rt, spec("dep-1", "1.0.0", imageHealthy))
	inst2 := mustStart(t, rt, spec("dep-2", "2.0.0", imageHealthy))
	router.Route("echo", inst.URL)(ctx)
	router.Route("echo", inst2.URL)(ctx)
	rt.Probe(ctx, "dep-1")
	rt.Logs(ctx, "dep-1", io.Discard)
	rt.Running(ctx)
	rt.Stop(ctx, "dep-1")
	mustStart(t, rt, spec("dep-1", "1.0.0", imageHealthy)) // the update of a stopped one
	rt.Start(ctx, spec("dep-3", "3.0.0", imageExit))
	rt.Remove(ctx, "dep-3")
	rt.Remove(ctx, "dep-9") // unknown: lists Services
	router.Unroute("echo")
	for _, a := range c.cs.Actions() {
		if a.GetNamespace() != rt.Namespace() {
			continue
		}
		res := a.GetResource().Resource
		if sub := a.GetSubresource(); sub != "" {
			res += "/" + sub
		}
		if !allows(role, a.GetResource().Group, res, a.GetVerb()) {
			t.Errorf("the runtime calls %s %s, which Role %s does not allow", a.GetVerb(), res, role.Name)
		}
	}
}

func allows(role *rbacv1.Role, group, resource, verb string) bool {
	for _, r := range role.Rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			return true
		}
	}
	return false
}
