package kube

import (
	"maps"
	"math"
	"slices"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/berthhq/berth"
)

// plan is everything about one Start worked out before the cluster is
// touched.
type plan struct {
	spec         berth.DeploymentSpec
	id           string
	name         string // of the Deployment and of its Service
	url          string
	healthPath   string
	readyTimeout time.Duration
	dep          *appsv1.Deployment
}

// selectorFor selects the pods of one Berth deployment. It is the
// Deployment's (immutable) selector, its Service's selector and, while the
// deployment is active, the agent Service's selector.
func selectorFor(deploymentID string) map[string]string {
	return map[string]string{LabelManagedBy: ManagedBy, LabelDeploymentID: deploymentID}
}

// labelsFor are the labels of a deployment's Deployment, pods and Service.
func labelsFor(spec berth.DeploymentSpec) map[string]string {
	l := selectorFor(spec.DeploymentID)
	l[LabelAgent] = spec.AgentName
	if v := labelValue(spec.Version); v != "" {
		l[LabelVersion] = v
	}
	if v := labelValue(spec.AgentID); v != "" {
		l[LabelAgentID] = v
	}
	return l
}

// seconds rounds d up to whole seconds, at least min.
func seconds(d time.Duration, min int64) int64 {
	s := int64(math.Ceil(d.Seconds()))
	if s < min {
		return min
	}
	return s
}

// deployment builds the Kubernetes Deployment of p.
func (r *Runtime) deployment(p *plan) *appsv1.Deployment {
	spec := p.spec
	labels := labelsFor(spec)
	replicas := r.opts.Replicas
	// The kube deadline only marks the Deployment as failed for kubectl
	// users; Start keeps its own clock, which also covers a deadline that
	// rounds up to whole seconds.
	progress := int32(min(seconds(p.readyTimeout, 1), math.MaxInt32))
	grace := seconds(r.opts.StopTimeout, 0)
	history := int32(1)
	falseVal := false

	// The version's env first, then what Berth sets, which wins (as in the
	// process runtime).
	fixed := map[string]string{
		"PORT":                strconv.Itoa(int(r.opts.ContainerPort)),
		"BERTH_AGENT_ID":      spec.AgentID,
		"BERTH_AGENT_NAME":    spec.AgentName,
		"BERTH_AGENT_VERSION": spec.Version,
		"BERTH_DEPLOYMENT_ID": spec.DeploymentID,
	}
	var env []corev1.EnvVar
	for _, k := range slices.Sorted(maps.Keys(spec.Config.Env)) {
		if _, ok := fixed[k]; !ok {
			env = append(env, corev1.EnvVar{Name: k, Value: spec.Config.Env[k]})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(fixed)) {
		env = append(env, corev1.EnvVar{Name: k, Value: fixed[k]})
	}

	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{
			Name:        p.name,
			Namespace:   r.opts.Namespace,
			Labels:      labels,
			Annotations: map[string]string{AnnotationVersion: spec.Version},
		},
		Spec: appsv1.DeploymentSpec{
			Replicas:                &replicas,
			Selector:                &metav1.LabelSelector{MatchLabels: selectorFor(spec.DeploymentID)},
			ProgressDeadlineSeconds: &progress,
			// A Berth deployment's template only changes when a stopped
			// deployment is started again; old ReplicaSets are clutter.
			RevisionHistoryLimit: &history,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      labels,
					Annotations: map[string]string{AnnotationVersion: spec.Version},
				},
				Spec: corev1.PodSpec{
					// Agents do not talk to the Kubernetes API, and with
					// hundreds of Services in the namespace the service
					// link variables would swamp their environment.
					AutomountServiceAccountToken:  &falseVal,
					EnableServiceLinks:            &falseVal,
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{
						Name:  containerName,
						Image: spec.Config.Image,
						Ports: []corev1.ContainerPort{{
							Name:          portName,
							ContainerPort: r.opts.ContainerPort,
							Protocol:      corev1.ProtocolTCP,
						}},
						Env: env,
						ReadinessProbe: &corev1.Probe{
							ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
								Path: p.healthPath,
								Port: intstr.FromString(portName),
							}},
							PeriodSeconds:    int32(seconds(r.opts.ProbePeriod, 1)),
							TimeoutSeconds:   int32(seconds(r.opts.ProbeTimeout, 1)),
							SuccessThreshold: 1,
							FailureThreshold: 3,
						},
					}},
				},
			},
		},
	}
}

// service builds the Service of deployment name; owner, when it has a UID,
// makes the cluster delete the Service with its Deployment.
func (r *Runtime) service(p *plan, owner *appsv1.Deployment) *corev1.Service {
	labels := labelsFor(p.spec)
	labels[LabelComponent] = ComponentDeployment
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name:        p.name,
			Namespace:   r.opts.Namespace,
			Labels:      labels,
			Annotations: map[string]string{AnnotationVersion: p.spec.Version},
		},
		Spec: serviceSpec(selectorFor(p.id)),
	}
	if owner != nil && owner.UID != "" {
		svc.OwnerReferences = []metav1.OwnerReference{{
			APIVersion: "apps/v1",
			Kind:       "Deployment",
			Name:       owner.Name,
			UID:        owner.UID,
		}}
	}
	return svc
}

// serviceSpec is the spec of every Berth Service: port 80 to the pods'
// "http" port.
func serviceSpec(selector map[string]string) corev1.ServiceSpec {
	return corev1.ServiceSpec{
		Type:     corev1.ServiceTypeClusterIP,
		Selector: selector,
		Ports: []corev1.ServicePort{{
			Name:       portName,
			Port:       servicePort,
			TargetPort: intstr.FromString(portName),
			Protocol:   corev1.ProtocolTCP,
		}},
	}
}

// serviceURL is the in-cluster base URL of Service name.
func (r *Runtime) serviceURL(name string) string {
	return "http://" + name + "." + r.opts.Namespace + ".svc." + r.opts.ClusterDomain
}

// ours reports whether obj was made by Berth for deploymentID.
func ours(obj metav1.Object, deploymentID string) bool {
	l := obj.GetLabels()
	return l[LabelManagedBy] == ManagedBy && l[LabelDeploymentID] == deploymentID
}

// replicasOf is a Deployment's desired replica count (nil means 1, as the
// API server defaults it).
func replicasOf(d *appsv1.Deployment) int32 {
	if d.Spec.Replicas == nil {
		return 1
	}
	return *d.Spec.Replicas
}
