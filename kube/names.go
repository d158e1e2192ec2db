package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

// Labels and annotations Berth puts on the objects it manages.
const (
	// LabelManagedBy is ManagedBy on every object Berth creates; Running
	// and every lookup select on it, so nothing else in the namespace is
	// ever touched.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedBy is the value of LabelManagedBy.
	ManagedBy = "berth"
	// LabelAgent is the agent's name.
	LabelAgent = "app.kubernetes.io/name"
	// LabelVersion is the version label, made label-safe (the exact label
	// is in AnnotationVersion).
	LabelVersion = "app.kubernetes.io/version"
	// LabelAgentID is the agent's id.
	LabelAgentID = "berth.dev/agent-id"
	// LabelDeploymentID is the Berth deployment id; a version's pods and
	// Services select on it.
	LabelDeploymentID = "berth.dev/deployment-id"
	// LabelComponent tells the two kinds of Berth Service apart:
	// ComponentDeployment (one per deployment) and ComponentAgent (one per
	// agent, selecting its active deployment).
	LabelComponent = "berth.dev/component"
	// ComponentDeployment and ComponentAgent are the values of
	// LabelComponent.
	ComponentDeployment = "deployment"
	ComponentAgent      = "agent"
	// AnnotationVersion holds the exact version label.
	AnnotationVersion = "berth.dev/version"
	// AnnotationLastError holds why the deployment's last start failed;
	// Logs shows it once the pods that printed the details are gone.
	AnnotationLastError = "berth.dev/last-error"
)

const (
	// containerName names the agent's container in every pod.
	containerName = "agent"
	// portName names the container port and the Services' target port, so
	// that the agent Service reaches whichever version it selects.
	portName = "http"
	// servicePort is the port of every Berth Service, so instance URLs need
	// no port.
	servicePort = 80
	// maxNameLen is the longest DNS label, which a Service name must be.
	maxNameLen = 63
	// hashLen is how many hex digits of a SHA-256 make a name unique.
	hashLen = 8
)

// labelValueRE is what a Kubernetes label value may look like (non-empty).
var labelValueRE = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)

// validLabelValue reports whether s can be used as a label value as is.
func validLabelValue(s string) bool { return labelValueRE.MatchString(s) }

// shortHash returns the first hashLen hex digits of s's SHA-256.
func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:hashLen]
}

// dnsPart lowercases s and turns every run of characters a DNS label cannot
// hold (such as the dots of "1.2.0") into one dash.
func dnsPart(s string) string {
	var b strings.Builder
	dash := false
	for _, c := range strings.ToLower(s) {
		if ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') {
			b.WriteRune(c)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimRight(b.String(), "-")
}

// dnsName joins "berth" and the DNS-safe forms of parts with dashes, and
// appends "-" + a hash of unique when unique is set. A result longer than a
// DNS label is cut and given a hash of what was cut, so distinct inputs keep
// distinct names. The result always starts with a letter (as Service names
// must) and ends with a letter or digit.
func dnsName(unique string, parts ...string) string {
	words := []string{"berth"}
	for _, p := range parts {
		if d := dnsPart(p); d != "" {
			words = append(words, d)
		}
	}
	base := strings.Join(words, "-")
	suffix := ""
	if unique != "" {
		suffix = "-" + shortHash(unique)
	}
	if len(base)+len(suffix) > maxNameLen {
		keep := maxNameLen - len(suffix) - 1 - hashLen
		base = strings.TrimRight(base[:keep], "-") + "-" + shortHash(base)
	}
	return base + suffix
}

// deploymentName names the Kubernetes Deployment and Service of one Berth
// deployment: berth-<agent>-<version>-<hash of the deployment id>. The id
// part keeps two deployments of one version apart (a cold restart while a
// failed standby of the same version still exists, say).
func deploymentName(agent, version, deploymentID string) string {
	return dnsName(deploymentID, agent, version)
}

// AgentServiceName returns the name of agent's Service: berth-<agent>,
// reachable inside the cluster at <name>.<namespace>.svc.
func AgentServiceName(agent string) string { return dnsName("", agent) }

// labelValue makes s usable as a label value: characters a label value
// cannot hold become dashes, the ends are trimmed to letters or digits and
// the length is capped.
func labelValue(s string) string {
	if validLabelValue(s) {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if !(('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || c == '-' || c == '_' || c == '.') {
			b[i] = '-'
		}
	}
	out := string(b)
	if len(out) > maxNameLen {
		out = out[:maxNameLen]
	}
	return strings.TrimFunc(out, func(r rune) bool {
		return !(('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9'))
	})
}
