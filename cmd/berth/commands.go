package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/berthhq/berth"
	berthhttp "github.com/berthhq/berth/http"
)

// agentRow is one line of `berth ls --json`.
type agentRow struct {
	AgentID        string `json:"agent_id"`
	Name           string `json:"name"`
	CurrentVersion string `json:"current_version"`
	Status         string `json:"status"`
	URL            string `json:"url"`
	Description    string `json:"description"`
}

func newLsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List your agents with their current version, status and URL",
		Args:  cobra.NoArgs,
	}
	asJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := session()
		if err != nil {
			return err
		}
		agents, err := cl.Agents(cmd.Context())
		if err != nil {
			return err
		}
		rows := make([]agentRow, 0, len(agents))
		for _, a := range agents {
			status := "active"
			if a.CurrentVersion == "" {
				status = "not_deployed"
			}
			rows = append(rows, agentRow{AgentID: a.AgentID, Name: a.Name, CurrentVersion: a.CurrentVersion,
				Status: status, URL: a.URL, Description: a.Description})
		}
		if *asJSON {
			return printJSON(cmd.OutOrStdout(), rows)
		}
		if len(rows) == 0 {
			fmt.Fprintln(cmd.OutOrStdout(), "no agents yet; deploy one with: berth deploy DIR")
			return nil
		}
		tw := newTable(cmd.OutOrStdout())
		fmt.Fprintln(tw, "NAME\tVERSION\tSTATUS\tURL")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, orDash(r.CurrentVersion), r.Status, r.URL)
		}
		return tw.Flush()
	}
	return cmd
}

func newVersionsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "versions NAME",
		Short: "Show an agent's version timeline: status, when, and who rolled back and why",
		Args:  cobra.ExactArgs(1),
	}
	asJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := session()
		if err != nil {
			return err
		}
		h, err := cl.Versions(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(cmd.OutOrStdout(), h)
		}
		tw := newTable(cmd.OutOrStdout())
		fmt.Fprintln(tw, "VERSION\tSTATUS\tCREATED\tLAST ACTIVE\tROLLED BACK")
		for _, v := range h.Versions {
			active := "-"
			if v.ActivatedAt != nil {
				active = fmtTime(*v.ActivatedAt)
			}
			rb := "-"
			if ri := v.RollbackInfo; ri != nil {
				rb = fmt.Sprintf("%s by %s → %s", fmtTime(ri.At), ri.Actor, ri.To)
				if ri.Reason != "" {
					rb += fmt.Sprintf(": %q", oneLine(ri.Reason, 60))
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.Version, v.Status, fmtTime(v.CreatedAt), active, rb)
		}
		return tw.Flush()
	}
	return cmd
}

func newRollbackCmd() *cobra.Command {
	var o berthhttp.RollbackOptions
	cmd := &cobra.Command{
		Use:   "rollback NAME",
		Short: "Roll an agent back to its last known good version (or --to a version)",
		Long: `Roll an agent back. Without --to it goes to the last known good version: the
most recently active version that is neither failed nor rolled back. Traffic
moves only once the target passes its health check; if it cannot, nothing
changes and rollback exits 1. Failed deployments are cleaned up unless
--keep-failed. --dry-run shows what would happen and changes nothing.`,
		Example: `  berth rollback echo-agent --reason "1.1.0 answers in the wrong language"
  berth rollback echo-agent --to 1.0.0 --dry-run`,
		Args: cobra.ExactArgs(1),
	}
	f := cmd.Flags()
	f.StringVar(&o.TargetVersion, "to", "", "version to roll back to (default: the last known good version)")
	f.StringVar(&o.Reason, "reason", "", "why; kept in the audit trail and version history")
	f.BoolVar(&o.KeepFailed, "keep-failed", false, "leave failed deployments in place instead of cleaning them up")
	f.BoolVar(&o.DryRun, "dry-run", false, "show what would happen and change nothing")
	asJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := session()
		if err != nil {
			return err
		}
		name := args[0]
		res, err := cl.Rollback(cmd.Context(), name, o)
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if *asJSON {
			return printJSON(out, res)
		}
		if res.DryRun {
			how := "cold: it would be started from its package and health-checked"
			if res.Warm {
				how = "warm standby: an instant switch after a health probe"
			}
			fmt.Fprintf(out, "dry run: would roll back %s %s → %s (%s)\n", name, res.RolledBackFrom, res.RolledBackTo, how)
			if !o.KeepFailed {
				fmt.Fprintf(out, "would clean up %d failed deployment(s)\n", len(res.WouldClean))
			}
			fmt.Fprintln(out, "nothing changed")
			return nil
		}
		fmt.Fprintf(out, "rolled back %s %s → %s in %d ms\n", name, res.RolledBackFrom, res.RolledBackTo, res.DurationMS)
		if !res.Warm {
			fmt.Fprintf(out, "%s was started from its package (no warm standby)\n", res.RolledBackTo)
		}
		if n := len(res.CleanedDeployments); n > 0 {
			fmt.Fprintf(out, "cleaned up %d failed deployment(s)\n", n)
		}
		return nil
	}
	return cmd
}

func newOpsCmd() *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "ops NAME",
		Short: "Show an agent's audit trail: every upload, update and rollback, who, why, and the outcome",
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().IntVar(&limit, "limit", 50, "most entries to show, newest first")
	asJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if limit < 1 || limit > 1000 {
			return usagef("--limit must be from 1 to 1000")
		}
		cl, err := session()
		if err != nil {
			return err
		}
		ops, err := cl.Operations(cmd.Context(), args[0], limit)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(cmd.OutOrStdout(), ops)
		}
		tw := newTable(cmd.OutOrStdout())
		fmt.Fprintln(tw, "STARTED\tKIND\tSTATUS\tACTOR\tFROM\tTO\tTOOK\tREASON / ERROR")
		for _, o := range ops {
			detail := o.Reason
			if o.Status == berth.OpFailed || o.Status == berth.OpInterrupted {
				detail = fmt.Sprintf("[%s] %s", o.ErrorCode, o.Error)
				if o.Reason != "" {
					detail = o.Reason + " — " + detail
				}
			}
			took := "-"
			if o.FinishedAt != nil {
				took = (time.Duration(o.DurationMS) * time.Millisecond).String()
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", fmtTime(o.StartedAt), o.Kind, o.Status, orDash(o.Actor),
				orDash(o.FromVersion), orDash(o.ToVersion), took, orDash(oneLine(detail, 80)))
		}
		return tw.Flush()
	}
	return cmd
}

// logsJSON is `berth logs --json`.
type logsJSON struct {
	Agent        string `json:"agent"`
	DeploymentID string `json:"deployment_id"`
	Output       string `json:"output"`
}

func newLogsCmd() *cobra.Command {
	var o berthhttp.LogsOptions
	var followFlag bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print an agent's output (the active version's, or --version's)",
		Long: `Print what an agent's process wrote to stdout and stderr: the newest deployment
of --version, by default of the active version. --follow keeps polling and
prints new output as it comes, following the active version across updates
and rollbacks when --version is not given; stop it with Ctrl-C.`,
		Args: cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&o.Version, "version", "", "version whose newest deployment to show (default: the active version)")
	cmd.Flags().BoolVarP(&followFlag, "follow", "f", false, "keep printing new output")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "how often --follow polls")
	asJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if followFlag && *asJSON {
			return usagef("--follow and --json cannot be used together")
		}
		if interval <= 0 {
			return usagef("--interval must be positive")
		}
		cl, err := session()
		if err != nil {
			return err
		}
		name, ctx, out := args[0], cmd.Context(), cmd.OutOrStdout()
		logs, err := cl.Logs(ctx, name, o)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(out, logsJSON{Agent: name, DeploymentID: logs.DeploymentID, Output: string(logs.Output)})
		}
		if _, err := out.Write(logs.Output); err != nil || !followFlag {
			return err
		}
		// Follow: each poll asks only for what is past the end of the
		// last answer (the log's size, sent as a trailer).
		dep, offset := logs.DeploymentID, next(0, logs)
		waiting := false // the server is unreachable; told once
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(interval):
			}
			q := o
			q.Offset = offset
			logs, err := cl.Logs(ctx, name, q)
			if err == nil && (logs.DeploymentID != dep || logs.Size >= 0 && logs.Size < offset) {
				// A new deployment (an update or a rollback moved the
				// active version) or a rotated log: the offset means
				// nothing there, so start over from its beginning.
				if logs.DeploymentID != dep {
					fmt.Fprintf(cmd.ErrOrStderr(), "--- now deployment %s ---\n", logs.DeploymentID)
				} else {
					fmt.Fprintln(cmd.ErrOrStderr(), "--- the log was rotated; from its start again ---")
				}
				dep, offset, q.Offset = logs.DeploymentID, 0, 0
				logs, err = cl.Logs(ctx, name, q)
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if berth.ErrorCode(err) == berth.CodeUnavailable {
					// Say so once, not every poll; a server restarting
					// (or briefly busy) is worth waiting for.
					if !waiting {
						fmt.Fprintf(cmd.ErrOrStderr(), "--- %s; retrying every %s ---\n", berth.ErrorMessage(err), interval)
						waiting = true
					}
					continue
				}
				return err
			}
			if waiting {
				fmt.Fprintln(cmd.ErrOrStderr(), "--- reconnected ---")
				waiting = false
			}
			if _, err := out.Write(logs.Output); err != nil {
				return err
			}
			offset = next(offset, logs)
		}
	}
	return cmd
}

// next is the offset to follow a log from after answer logs to a request
// from offset: the log's size, or (if the server could not say, as when
// reading the log failed part way) the end of what was received.
func next(offset int64, logs berthhttp.AgentLogs) int64 {
	if logs.Size >= 0 {
		return logs.Size
	}
	return offset + int64(len(logs.Output))
}

func newUsersCmd() *cobra.Command {
	users := groupCommand("users", "Manage users (superusers only)")
	var email string
	var super bool
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a user and print its access key and secret (shown only once)",
		Args:  cobra.ExactArgs(1),
	}
	create.Flags().StringVar(&email, "email", "", "the user's email address")
	create.Flags().BoolVar(&super, "superuser", false, "make the user a superuser (may manage every agent and user)")
	asJSON := jsonFlag(create)
	create.RunE = func(cmd *cobra.Command, args []string) error {
		if !berth.ValidName(args[0]) {
			return usagef("user name %q must be lowercase letters, digits and dashes", args[0])
		}
		cl, err := session()
		if err != nil {
			return err
		}
		u, err := cl.Register(cmd.Context(), berthhttp.NewUser{Username: args[0], Email: email, IsSuperUser: super})
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if *asJSON {
			return printJSON(out, u)
		}
		fmt.Fprintf(out, "created %s %s\n", u.Role, u.Username)
		fmt.Fprintf(out, "access key:    %s\n", u.AccessKey)
		fmt.Fprintf(out, "access secret: %s\n", u.AccessSecret)
		fmt.Fprintln(out, "The secret is shown only this once; the server keeps only its hash.")
		fmt.Fprintf(out, "Log in with: berth login --server %s --access-key %s --access-secret <secret>\n", cl.BaseURL, u.AccessKey)
		return nil
	}
	users.AddCommand(create)
	return users
}
