package berth

import (
	"context"
	"io"
)

// Runtime runs deployments. The process runtime (child processes on local
// ports) and the Kubernetes runtime implement it and pass one acceptance
// suite.
type Runtime interface {
	// Start launches the deployment described by spec and returns once it
	// answers its health check with 2xx, or fails with CodeTargetUnhealthy /
	// CodeDeployFailed if it exits first or is not healthy within
	// spec.ReadyTimeout. A failed start leaves nothing running.
	Start(ctx context.Context, spec DeploymentSpec) (Instance, error)
	// Probe checks once that a running deployment answers its health check.
	Probe(ctx context.Context, deploymentID string) error
	// Stop stops a deployment gracefully. Stopping something not running
	// is not an error.
	Stop(ctx context.Context, deploymentID string) error
	// Remove stops a deployment and deletes its runtime files (its logs
	// stay). Removing something already gone is not an error.
	Remove(ctx context.Context, deploymentID string) error
	// Logs writes the deployment's captured output to w.
	Logs(ctx context.Context, deploymentID string, w io.Writer) error
	// Running lists the ids of deployments this runtime is running now.
	Running(ctx context.Context) ([]string, error)
	// Close releases the runtime's resources. The process runtime stops
	// its children (they cannot outlive the server); the Kubernetes runtime
	// leaves workloads to the cluster, where a restarted server finds them
	// through Running.
	Close() error
}

// DeploymentSpec is what a Runtime needs to start one deployment.
type DeploymentSpec struct {
	DeploymentID string
	AgentID      string
	AgentName    string
	Version      string
	// Dir is the version's unpacked package folder (the process's working
	// directory); the Kubernetes runtime uses Config.Image instead.
	Dir    string
	Config Config
}

// Instance is a started deployment.
type Instance struct {
	// URL is the base URL the proxy forwards to.
	URL string
}

// StatusFunc is called by a Runtime when a deployment's status changes on
// its own (it crashed, was restarted, or gave up). msg explains why.
type StatusFunc func(deploymentID string, status DeploymentStatus, restarts int, msg string)
