// Command berth is Berth's control plane (berth serve) and its command-line
// client (login, deploy, ls, versions, rollback, ops, logs, users).
//
// Exit codes: 0 success, 1 the server refused or the operation failed, 2 the
// command was called wrongly (unknown command, bad flag or arguments).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/berthhq/berth"
)

// Exit codes.
const (
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes berth with args and returns its exit code.
func run(args []string, stdout, stderr io.Writer) int {
	// Ctrl-C cancels what a client command waits for; serve has its own
	// handling of the same signals.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	printError(stderr, cmd, err)
	return exitCode(err)
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "berth",
		Short: "Ship AI agents as versioned releases with instant, safe rollback",
		Long: `Berth ships AI agents as versioned releases and rolls them back instantly and safely.

Run the control plane with "berth serve"; everything else is a client of it.
Start with "berth login", then "berth deploy DIR".`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// Without this an unknown subcommand would not reach our usage
		// handling (see groupCommand).
		Args: noSubcommand,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newServeCmd())
	addClientCommands(root)
	wrapArgs(root)
	return root
}

// wrapArgs makes every command's argument validation a usage error (exit
// 2), whoever wrote the validator.
func wrapArgs(c *cobra.Command) {
	if v := c.Args; v != nil {
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := v(cmd, args); err != nil {
				var ue usageError
				if errors.As(err, &ue) {
					return err
				}
				return usageError{err}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		wrapArgs(sub)
	}
}

// noSubcommand is the Args of a command that only groups subcommands: any
// argument is an unknown subcommand.
func noSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return nil
}

// groupCommand returns a command that only holds subcommands; run alone it
// prints its help.
func groupCommand(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  noSubcommand,
		RunE:  func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
}

// usageError marks errors in how berth was called (exit 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

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

// printError writes err for a person: the server's message and code, the
// operation it concerns, and what to do next where that is clear.
func printError(w io.Writer, cmd *cobra.Command, err error) {
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(w, "berth: %v\n", ue.error)
		path := "berth"
		if cmd != nil {
			path = cmd.CommandPath()
		}
		fmt.Fprintf(w, "Run '%s --help' for usage.\n", path)
		return
	}
	var be *berth.Error
	if !errors.As(err, &be) {
		fmt.Fprintf(w, "berth: %v\n", err)
		return
	}
	// Messages can quote a process's or a build's last lines: the code
	// goes on the first line, the quoted output below it, set off.
	first, rest, _ := strings.Cut(strings.TrimRight(be.Message, "\n"), "\n")
	fmt.Fprintf(w, "berth: %s [%s]\n", first, be.Code)
	if rest != "" {
		for _, line := range strings.Split(rest, "\n") {
			fmt.Fprintf(w, "  | %s\n", line)
		}
	}
	if be.OperationID != "" {
		fmt.Fprintf(w, "operation: %s\n", be.OperationID)
	}
	// A refused login needs other credentials, not another login.
	if be.Code == berth.CodeUnauthorized && (cmd == nil || cmd.Name() != "login") {
		fmt.Fprintln(w, "Log in again: berth login --server URL --access-key KEY --access-secret SECRET")
	}
}
