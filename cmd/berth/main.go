// Command berth is Berth's control plane (berth serve) and its command-line
// client.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		os.Exit(exitCode(err))
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "berth",
		Short:         "Ship AI agents as versioned releases with instant, safe rollback",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(newServeCmd())
	addClientCommands(root)
	return root
}

// usageError marks errors in how berth was called (exit 2).
type usageError struct{ error }

func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailed
}

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}
