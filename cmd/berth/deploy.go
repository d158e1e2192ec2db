package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/artifact"
	berthhttp "github.com/berthhq/berth/http"
)

// pollInterval is how often deploy asks how the operation is going.
const pollInterval = 250 * time.Millisecond

// buildLogTail is how many lines of a failed build's log deploy prints.
const buildLogTail = 25

var labelRE = regexp.MustCompile(`^\d+\.\d+\.\d+$`)

// deployFlags are deploy's options.
type deployFlags struct {
	name, version, strategy, description string
	noWait, json                         bool
	timeout                              time.Duration
}

func newDeployCmd() *cobra.Command {
	var fl deployFlags
	cmd := &cobra.Command{
		Use:   "deploy DIR|ZIP",
		Short: "Deploy a folder or zip as a new agent or a new version of an existing one",
		Long: `Deploy an agent package: a folder (zipped on the fly) or a .zip, holding
AgentCard.json, berth.json and the agent's code.

If no agent of that name exists it is uploaded (its first version comes from
AgentCard.json's "version", default 1.0.0); otherwise a new version is deployed
with --version (auto, patch, minor, major or x.y.z; auto uses the card's version
when it is newer, else bumps the patch) and --strategy.

deploy shows progress (uploading, building, starting, health, live) and exits 0
only once the new version serves traffic. If the build or the health check
fails it prints why, with the build log or the process's last output, and exits
1; the version that was serving keeps serving.

A folder's .git and whatever its .berthignore lists are left out. .berthignore
takes one pattern per line: "name" or "*.log" matches at any depth, a pattern
with a slash ("build/*.o", "/secrets.json") matches from the folder, a trailing
slash ("tmp/") matches folders only, and # starts a comment. Negation (!) and **
are not supported. Symbolic links are refused.`,
		Example: `  berth deploy examples/echo-agent
  berth deploy examples/echo-agent --version minor --strategy blue-green
  berth deploy agent.zip --no-wait`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDeploy(cmd, args[0], fl)
		},
	}
	f := cmd.Flags()
	f.StringVar(&fl.name, "name", "", "agent name (default: the name in AgentCard.json, which it must match)")
	f.StringVar(&fl.version, "version", "auto", "new version: auto, patch, minor, major or x.y.z (updates only)")
	f.StringVar(&fl.strategy, "strategy", "rolling", "rolling (stop the old version) or blue-green (keep it warm for an instant rollback); updates only")
	f.StringVar(&fl.description, "description", "", "replace the agent's description")
	f.BoolVar(&fl.noWait, "no-wait", false, "return once the package is accepted, without waiting for it to go live")
	f.DurationVar(&fl.timeout, "timeout", 30*time.Minute, "how long to wait for the deploy to finish")
	f.BoolVar(&fl.json, "json", false, "print the result as JSON")
	return cmd
}

// preparedPackage is a zip ready to upload.
type preparedPackage struct {
	path    string
	size    int64
	meta    artifact.Package
	cleanup func()
}

// preparePackage zips a folder (or takes a zip as it is) and reads its
// metadata, so that a broken package is refused before anything is sent.
func preparePackage(src string, log io.Writer) (preparedPackage, error) {
	p := preparedPackage{path: src, cleanup: func() {}}
	fi, err := os.Stat(src)
	if err != nil {
		return p, fmt.Errorf("package: %w", err)
	}
	if fi.IsDir() {
		tmp, err := os.CreateTemp("", "berth-package-*.zip")
		if err != nil {
			return p, err
		}
		p.path = tmp.Name()
		p.cleanup = func() { os.Remove(tmp.Name()) }
		st, err := packDir(src, tmp)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			p.cleanup()
			return p, fmt.Errorf("package %s: %w", src, err)
		}
		fmt.Fprintf(log, "packed    %s: %d files", src, st.Files)
		if st.Ignored > 0 {
			fmt.Fprintf(log, " (%d left out by .git/%s)", st.Ignored, ignoreFile)
		}
		fmt.Fprintln(log)
	}
	f, err := os.Open(p.path)
	if err != nil {
		p.cleanup()
		return p, err
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		p.cleanup()
		return p, err
	}
	p.size = fi.Size()
	// The server applies its own limits; this check is about structure and
	// metadata, so it must not refuse what a generous server accepts.
	lim := artifact.Limits{MaxEntries: math.MaxInt, MaxUnpackedBytes: math.MaxInt64, MaxFileBytes: math.MaxInt64}
	p.meta, err = artifact.Inspect(f, p.size, lim)
	if err != nil {
		p.cleanup()
		return p, &berth.Error{Code: berth.ErrorCode(err), Message: "package " + src + ": " + berth.ErrorMessage(err), Err: err}
	}
	return p, nil
}

func runDeploy(cmd *cobra.Command, src string, fl deployFlags) error {
	ver := strings.TrimPrefix(fl.version, "v")
	switch {
	case ver == "auto", ver == "patch", ver == "minor", ver == "major", labelRE.MatchString(ver):
	default:
		return usagef("--version must be auto, patch, minor, major or x.y.z, not %q", fl.version)
	}
	if fl.strategy != "rolling" && fl.strategy != "blue-green" {
		return usagef("--strategy must be rolling or blue-green, not %q", fl.strategy)
	}
	if fl.name != "" && !berth.ValidName(fl.name) {
		return usagef("--name %q is not a valid agent name (lowercase letters, digits and dashes)", fl.name)
	}
	cl, err := session()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	if fl.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, fl.timeout)
		defer cancel()
	}
	out, log := cmd.OutOrStdout(), cmd.ErrOrStderr()

	pkg, err := preparePackage(src, log)
	if err != nil {
		return err
	}
	defer pkg.cleanup()
	name := pkg.meta.Name
	if fl.name != "" && fl.name != name {
		return berth.Errorf(berth.CodeInvalid, "the package is for agent %q (the name in AgentCard.json), not %q", name, fl.name)
	}

	// The registry's lookup by name is public: it tells upload from update.
	existing, err := cl.AgentByName(ctx, name)
	isNew := berth.ErrorCode(err) == berth.CodeNotFound
	if err != nil && !isNew {
		return err
	}
	if isNew && (ver != "auto" || fl.strategy != "rolling") {
		fmt.Fprintf(log, "note      %s is a new agent: --version and --strategy apply to updates; its first version comes from AgentCard.json\n", name)
	}

	f, err := os.Open(pkg.path)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(log, "uploading %s: %s to %s\n", name, humanBytes(pkg.size), cl.BaseURL)
	var desc *string
	if cmd.Flags().Changed("description") {
		desc = &fl.description
	}
	var res berthhttp.DeployResult
	if isNew {
		res, err = cl.Upload(ctx, f, berthhttp.UploadOptions{AgentName: name, Description: desc})
	} else {
		res, err = cl.Update(ctx, name, f, berthhttp.UpdateOptions{Version: ver, Strategy: fl.strategy, Description: desc})
		res.AgentName, res.URL = name, existing.URL
	}
	if err != nil {
		return err
	}
	if res.PreviousVersion != "" {
		fmt.Fprintf(log, "accepted  %s %s (from %s; operation %s)\n", name, res.Version, res.PreviousVersion, res.OperationID)
	} else {
		fmt.Fprintf(log, "accepted  %s %s (operation %s)\n", name, res.Version, res.OperationID)
	}
	if fl.noWait {
		return report(out, fl.json, res, fmt.Sprintf("deploying %s %s in the background; follow it with: berth ops %s", name, res.Version, name))
	}

	start := time.Now()
	if err := follow(ctx, cl, res, pkg.meta.Config, log); err != nil {
		return err
	}
	res.Status = "running"
	return report(out, fl.json, res, fmt.Sprintf("live      %s %s at %s (%s)", name, res.Version, res.URL, time.Since(start).Round(100*time.Millisecond)))
}

// report prints a deploy's outcome: res as JSON, or line.
func report(w io.Writer, asJSON bool, res berthhttp.DeployResult, line string) error {
	if asJSON {
		return printJSON(w, res)
	}
	_, err := fmt.Fprintln(w, line)
	return err
}

// stage is how far a deploy got, in order.
type stage int

const (
	stageUploaded stage = iota
	stageBuilding
	stageStarting
	stageLive
)

// follow polls the deploy's operation until it ends, printing each stage
// as it is reached. A failed deploy is returned as the server's error, after
// the build log's tail when the build failed.
func follow(ctx context.Context, cl *berthhttp.Client, res berthhttp.DeployResult, cfg berth.Config, log io.Writer) error {
	shown := stageUploaded
	show := func(upTo stage) {
		for s := shown + 1; s <= upTo; s++ {
			switch s {
			case stageBuilding:
				if len(cfg.Build) > 0 {
					fmt.Fprintf(log, "building  %s\n", shellJoin(cfg.Build))
				} else {
					fmt.Fprintln(log, "building  (no build command)")
				}
			case stageStarting:
				fmt.Fprintf(log, "starting  %s\n", shellJoin(cfg.Run))
				timeout := "the server's default timeout"
				if cfg.ReadyTimeout > 0 {
					timeout = time.Duration(cfg.ReadyTimeout).String()
				}
				fmt.Fprintf(log, "health    waiting for GET %s to answer 2xx (up to %s)\n", cfg.HealthPath, timeout)
			}
		}
		if upTo > shown {
			shown = upTo
		}
	}
	agent := res.AgentID
	for {
		op, err := cl.Operation(ctx, agent, res.OperationID)
		switch {
		case err != nil && berth.ErrorCode(err) == berth.CodeUnavailable && ctx.Err() == nil:
			// The server may be restarting; it finishes or interrupts
			// the operation either way, so keep asking.
		case err != nil:
			return waitError(ctx, res, err)
		case op.Status == berth.OpSucceeded:
			show(stageStarting)
			return nil
		case op.Status == berth.OpFailed || op.Status == berth.OpInterrupted:
			if op.ErrorCode == berth.CodeDeployFailed || op.ErrorCode == berth.CodeTargetUnhealthy {
				// It failed while starting: show that it got that far.
				show(stageStarting)
			}
			return deployFailure(ctx, cl, res, op, log)
		default:
			if b, ok := findBuild(ctx, cl, agent, res.BuildID); ok {
				switch b.Status {
				case berth.BuildQueued, berth.BuildBuilding:
					show(stageBuilding)
				case berth.BuildSuccess:
					show(stageStarting)
				}
			}
		}
		select {
		case <-ctx.Done():
			return waitError(ctx, res, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// waitError explains that deploy stopped waiting, not that the deploy
// stopped.
func waitError(ctx context.Context, res berthhttp.DeployResult, err error) error {
	if ctx.Err() != nil {
		return &berth.Error{Code: berth.CodeUnavailable, OperationID: res.OperationID,
			Message: fmt.Sprintf("stopped waiting (%v); the deploy of %s %s continues on the server: berth ops %s", ctx.Err(), res.AgentName, res.Version, res.AgentName)}
	}
	return err
}

func findBuild(ctx context.Context, cl *berthhttp.Client, agent, buildID string) (berthhttp.BuildInfo, bool) {
	bs, err := cl.Builds(ctx, agent)
	if err != nil {
		return berthhttp.BuildInfo{}, false
	}
	for _, b := range bs {
		if b.ID == buildID {
			return b, true
		}
	}
	return berthhttp.BuildInfo{}, false
}

// deployFailure prints what the server knows about a failed deploy and
// returns its error.
func deployFailure(ctx context.Context, cl *berthhttp.Client, res berthhttp.DeployResult, op berthhttp.OperationInfo, log io.Writer) error {
	code := op.ErrorCode
	if code == "" {
		code = berth.CodeInternal
	}
	msg := op.Error
	if op.Status == berth.OpInterrupted {
		msg = "the server stopped before the deploy finished"
	}
	if code == berth.CodeBuildFailed {
		if b, ok := findBuild(ctx, cl, res.AgentID, res.BuildID); ok && strings.TrimSpace(b.Logs) != "" {
			fmt.Fprintf(log, "build log (last %d lines):\n", buildLogTail)
			for _, line := range lastLines(b.Logs, buildLogTail) {
				fmt.Fprintf(log, "  | %s\n", line)
			}
		}
	}
	keep := "nothing was serving yet"
	if res.PreviousVersion != "" {
		keep = res.PreviousVersion + " keeps serving"
	}
	return &berth.Error{Code: code, OperationID: op.ID,
		Message: fmt.Sprintf("deploy of %s %s failed (%s): %s", res.AgentName, res.Version, keep, msg)}
}

// shellJoin writes argv as a shell would need it typed, so that a
// command shown in progress reads as the command that runs.
func shellJoin(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
		}) < 0 {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) []string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// humanBytes formats n as "12.3 KiB (12345 bytes)".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB (%d bytes)", float64(n)/float64(div), "KMGTPE"[exp], n)
}
