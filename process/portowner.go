package process

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/berthhq/berth"
)

// maxPortAttempts is how many ports one Start tries when another process
// takes the port it chose before the agent listens on it.
const maxPortAttempts = 3

// errPortTaken marks (as the Err of a *berth.Error) a start that failed
// because a process outside the deployment listens on its port.
var errPortTaken = errors.New("port taken by another process")

// portHolder says who listens on a deployment's port.
type portHolder int

const (
	// holderUnknown: this system cannot tell (no /proc, or a process of
	// the deployment whose sockets cannot be read). Treated as the
	// deployment's own, which is what the runtime assumed before it could
	// check.
	holderUnknown portHolder = iota
	// holderNone: nothing listens on the port.
	holderNone
	// holderSelf: every socket listening there belongs to the deployment.
	holderSelf
	// holderOther: some socket listening there belongs to another process,
	// so a request to the port may reach it instead of the agent.
	holderOther
)

// whoListens reports who listens on d's port, given the process group of
// d's current process. The deployment's processes are those of that group
// and any that carry its BERTH_DEPLOYMENT_ID (an agent that left the group).
func (r *Runtime) whoListens(d *deployment, pgid int) portHolder {
	return portHolderOf(d.port, pgid, "BERTH_DEPLOYMENT_ID="+d.id)
}

// portTakenError is the error of a start that found another process
// listening on its port. output is what the agent printed, if anything.
func portTakenError(d *deployment, output string) *berth.Error {
	return &berth.Error{
		Code: berth.CodeUnavailable,
		Message: fmt.Sprintf("port %d of 127.0.0.1, given to deployment %s, is in use by another process%s",
			d.port, d.id, output),
		Err: errPortTaken,
	}
}

// portsTakenError is the error of a start that gave up after another
// process took every port it tried.
func portsTakenError(d *deployment, ports []int) *berth.Error {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(p)
	}
	return &berth.Error{
		Code: berth.CodeUnavailable,
		Message: fmt.Sprintf("deployment %s could not listen on a port: another process took each of the %d ports it was given (%s) "+
			"before the agent could listen on it", d.id, len(ports), strings.Join(s, ", ")),
		Err: errPortTaken,
	}
}
