package kube

import (
	"errors"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berthhq/berth"
)

// Client-side rate limits. client-go's defaults (5 requests a second) are
// meant for controllers with informers; the runtime polls starting
// deployments and probes every agent at start-up, so it needs more.
const (
	clientQPS   = 50
	clientBurst = 100
)

// Connection is how Connect reached the cluster.
type Connection struct {
	// Client is a clientset for the cluster.
	Client kubernetes.Interface
	// InCluster reports that the in-cluster service account config was
	// used: Berth runs in a pod, so Service URLs are reachable from it
	// (see Options.CheckHTTP).
	InCluster bool
	// Namespace is the namespace the kubeconfig's context names (or, in a
	// pod, the pod's own); callers use it when none was configured.
	Namespace string
}

// Connect finds the cluster the way kubectl does: the kubeconfig files
// named by KUBECONFIG if it is set; otherwise the in-cluster config when
// running in a pod; otherwise ~/.kube/config.
func Connect() (Connection, error) {
	var c Connection
	var cfg *rest.Config
	if os.Getenv("KUBECONFIG") == "" {
		ic, err := rest.InClusterConfig()
		switch {
		case err == nil:
			cfg, c.InCluster = ic, true
		case !errors.Is(err, rest.ErrNotInCluster):
			return c, &berth.Error{Code: berth.CodeUnavailable, Message: "cannot read the in-cluster Kubernetes config", Err: err}
		}
	}
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{})
	if ns, _, err := loader.Namespace(); err == nil {
		// In a pod this reads the service account's namespace file.
		c.Namespace = ns
	}
	if cfg == nil {
		var err error
		if cfg, err = loader.ClientConfig(); err != nil {
			return c, &berth.Error{Code: berth.CodeUnavailable,
				Message: "cannot find a Kubernetes cluster: set KUBECONFIG, or run Berth in a pod", Err: err}
		}
	}
	cfg.QPS, cfg.Burst = clientQPS, clientBurst
	cfg.UserAgent = "berth"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return c, &berth.Error{Code: berth.CodeUnavailable, Message: "cannot create a Kubernetes client", Err: err}
	}
	c.Client = cs
	return c, nil
}
