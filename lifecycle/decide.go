// Package lifecycle is Berth's release engine: pure decisions (which version
// to roll back to, what to clean up, what the new state is) and the executor
// that applies them through a Store and a Runtime, plus the reconciler that
// makes the runtime match the store after a restart.
package lifecycle

import (
	"fmt"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"

	"github.com/berthhq/berth"
)

// TargetInput is everything ChooseTarget needs to decide.
type TargetInput struct {
	// Current is the agent's active version; nil if it has none.
	Current *berth.Version
	// Requested is the target_version the caller asked for ("" = default).
	Requested string
	// Explicit is the version labelled Requested; nil if none exists.
	Explicit *berth.Version
	// ExplicitBuilt reports whether Explicit's build succeeded.
	ExplicitBuilt bool
	// Recent is what Store.RecentlyActive returned: ready versions, most
	// recently active first.
	Recent []berth.Version
}

// ChooseTarget decides which version a rollback goes to.
//
// An explicit target may be any successfully built version other than the
// current one. Without one, the target is the last known good version: the
// most recently active version, other than the current one, that is neither
// failed nor rolled back. So two rollbacks from a bad 1.2.0 go to 1.1.0 and
// then 1.0.0, never back to 1.2.0.
func ChooseTarget(in TargetInput) (berth.Version, error) {
	if in.Current == nil {
		return berth.Version{}, berth.Errorf(berth.CodeNoRollbackTarget, "agent has no active version to roll back from")
	}
	if in.Requested != "" {
		switch {
		case in.Explicit == nil:
			return berth.Version{}, berth.Errorf(berth.CodeNotFound, "version %q not found", in.Requested)
		case in.Explicit.ID == in.Current.ID:
			return berth.Version{}, berth.Errorf(berth.CodeInvalid, "version %s is the current version", in.Explicit.Version)
		case !in.ExplicitBuilt || in.Explicit.State == berth.VersionBuilding:
			return berth.Version{}, berth.Errorf(berth.CodeInvalid, "version %s was never built successfully", in.Explicit.Version)
		}
		return *in.Explicit, nil
	}
	for _, v := range in.Recent {
		if v.ID == in.Current.ID || v.State != berth.VersionReady || v.ActivatedAt == nil {
			continue
		}
		return v, nil
	}
	return berth.Version{}, berth.Errorf(berth.CodeNoRollbackTarget,
		"no earlier good version to roll back to from %s (name one with target_version, or berth rollback --to)", in.Current.Version)
}

// FailedToClean returns the failed deployments whose runtime files have not
// been removed yet: what cleanup_failed removes.
func FailedToClean(ds []berth.Deployment) []berth.Deployment {
	var out []berth.Deployment
	for _, d := range ds {
		if d.Status == berth.DeploymentFailed && d.RemovedAt == nil {
			out = append(out, d)
		}
	}
	return out
}

// WarmDeployment returns a running deployment of version versionID to switch
// to; ok is false when the target must start cold.
func WarmDeployment(ds []berth.Deployment, versionID string) (d berth.Deployment, ok bool) {
	for _, d := range ds {
		if d.VersionID == versionID && d.Status == berth.DeploymentRunning && d.RemovedAt == nil {
			return d, true
		}
	}
	return berth.Deployment{}, false
}

// RollbackPlan is the outcome of a successful rollback, ready to commit.
type RollbackPlan struct {
	From, To berth.Version
	Target   berth.Deployment // the (now running) deployment of To
	Cleaned  []berth.Deployment
	// Failed are deployments that failed on the way (a standby that no
	// longer answered its probe), recorded as failed; those also in
	// Cleaned are recorded once, as removed.
	Failed []berth.Deployment
}

// RollbackCommit builds the one transaction that makes a rollback real:
// To becomes active, From becomes rolled_back carrying info, From's live
// deployments stay warm until graceUntil, the deployments that failed on
// the way are recorded, the cleaned ones marked removed, and op is closed.
func RollbackCommit(p RollbackPlan, deployments []berth.Deployment, info berth.RollbackInfo, now, graceUntil time.Time, op berth.Operation) berth.Commit {
	to := p.To.ID
	c := berth.Commit{
		AgentID:      p.To.AgentID,
		SetActive:    &to,
		ExpectActive: p.From.ID,
		Versions: []berth.VersionChange{
			{VersionID: p.From.ID, State: berth.VersionRolledBack, Rollback: &info},
			{VersionID: p.To.ID, State: berth.VersionReady, ActivatedAt: &now},
		},
		Operation: &op,
	}
	target := p.Target
	target.Status = berth.DeploymentRunning
	target.StopAt = nil
	target.UpdatedAt = now
	c.Deployments = append(c.Deployments, target)
	for _, d := range deployments {
		if d.VersionID == p.From.ID && d.Status.Live() {
			d.StopAt = &graceUntil
			d.UpdatedAt = now
			c.Deployments = append(c.Deployments, d)
		}
	}
	cleaned := make(map[string]bool, len(p.Cleaned))
	for _, d := range p.Cleaned {
		cleaned[d.ID] = true
		d.RemovedAt = &now
		d.UpdatedAt = now
		c.Deployments = append(c.Deployments, d)
	}
	for _, d := range p.Failed {
		if !cleaned[d.ID] {
			d.UpdatedAt = now
			c.Deployments = append(c.Deployments, d)
		}
	}
	return c
}

// Strategy is how an update replaces the running version.
type Strategy string

// Update strategies.
const (
	// Rolling stops the previous version once its in-flight requests drain.
	Rolling Strategy = "rolling"
	// BlueGreen keeps the previous version running, warm, as standby.
	BlueGreen Strategy = "blue-green"
)

// ParseStrategy parses an update_strategy form value ("" = rolling).
func ParseStrategy(s string) (Strategy, error) {
	switch Strategy(s) {
	case "", Rolling:
		return Rolling, nil
	case BlueGreen, "bluegreen", "blue_green":
		return BlueGreen, nil
	}
	return "", berth.Errorf(berth.CodeInvalid, "update_strategy must be %q or %q, not %q", Rolling, BlueGreen, s)
}

// Retire decides which live deployments to stop after version activeID
// became active through an update. previousID is the version that was
// active before. Under Rolling the previous version's deployments stop; under
// BlueGreen they stay as standby. With cleanupOld, only the standby newest
// live versions other than the active one are kept running (deployments in
// their rollback grace period are left to expire on their own).
func Retire(ds []berth.Deployment, versions map[string]berth.Version, activeID, previousID string, strategy Strategy, cleanupOld bool, standby int) []berth.Deployment {
	keep := map[string]bool{activeID: true}
	if strategy == BlueGreen && previousID != "" {
		keep[previousID] = true
	}
	if !cleanupOld {
		// Leave every standby alone; only a rolling update's previous
		// version goes.
		var out []berth.Deployment
		for _, d := range ds {
			if d.Status.Live() && strategy == Rolling && d.VersionID == previousID && d.VersionID != activeID {
				out = append(out, d)
			}
		}
		return out
	}
	// Rank the live non-active versions newest first and keep `standby` of
	// them (the previous version counts first under blue-green).
	kept := 0
	if strategy == BlueGreen && previousID != "" && previousID != activeID {
		kept = 1
	}
	type cand struct {
		id string
		v  *semver.Version
	}
	var cands []cand
	seen := map[string]bool{}
	for _, d := range ds {
		if !d.Status.Live() || keep[d.VersionID] || seen[d.VersionID] || d.StopAt != nil {
			continue
		}
		seen[d.VersionID] = true
		sv, err := semver.StrictNewVersion(versions[d.VersionID].Version)
		if err != nil {
			sv = semver.New(0, 0, 0, "", "")
		}
		cands = append(cands, cand{d.VersionID, sv})
	}
	// Newest first; the candidate lists are tiny, so insertion sort is fine.
	for i := 1; i < len(cands); i++ {
		for j := i; j > 0 && cands[j].v.GreaterThan(cands[j-1].v); j-- {
			cands[j], cands[j-1] = cands[j-1], cands[j]
		}
	}
	for _, c := range cands {
		if c.id == previousID && strategy == Rolling {
			continue // a rolling update always stops the previous version
		}
		if kept < standby {
			keep[c.id] = true
			kept++
		}
	}
	var out []berth.Deployment
	for _, d := range ds {
		if d.Status.Live() && !keep[d.VersionID] && d.StopAt == nil {
			out = append(out, d)
		}
	}
	return out
}

// Bump kinds accepted as an update's version.
const (
	BumpAuto  = "auto"
	BumpPatch = "patch"
	BumpMinor = "minor"
	BumpMajor = "major"
)

// NextVersion decides the label of a new version. highest is the agent's
// highest existing label ("" if it has none); requested is the update's
// version field (auto/patch/minor/major/x.y.z, "" = auto); cardVersion is
// the package's AgentCard version ("" if absent).
//
// auto uses the card's version when it is greater than every existing one,
// and otherwise bumps the patch. An explicit version must be greater than
// every existing one (409 otherwise: labels are never reused).
func NextVersion(highest, requested, cardVersion string) (string, error) {
	req := strings.TrimSpace(requested)
	if req == "" {
		req = BumpAuto
	}
	if highest == "" {
		switch req {
		case BumpAuto, BumpPatch, BumpMinor, BumpMajor:
			if cardVersion != "" {
				return cardVersion, nil
			}
			return "1.0.0", nil
		}
		v, err := parseLabel(req)
		if err != nil {
			return "", err
		}
		return v.String(), nil
	}
	hi, err := semver.StrictNewVersion(highest)
	if err != nil {
		return "", fmt.Errorf("stored version %q is not semver: %w", highest, err)
	}
	switch req {
	case BumpAuto:
		if cardVersion != "" {
			if cv, err := semver.StrictNewVersion(cardVersion); err == nil && cv.GreaterThan(hi) {
				return cv.String(), nil
			}
		}
		return hi.IncPatch().String(), nil
	case BumpPatch:
		return hi.IncPatch().String(), nil
	case BumpMinor:
		return hi.IncMinor().String(), nil
	case BumpMajor:
		return hi.IncMajor().String(), nil
	}
	v, err := parseLabel(req)
	if err != nil {
		return "", err
	}
	if !v.GreaterThan(hi) {
		return "", berth.Errorf(berth.CodeConflict, "version %s must be greater than every existing version (highest is %s); labels are never reused", v, hi)
	}
	return v.String(), nil
}

// parseLabel parses an explicit MAJOR.MINOR.PATCH label.
func parseLabel(s string) (*semver.Version, error) {
	v, err := semver.StrictNewVersion(s)
	if err != nil || v.Prerelease() != "" || v.Metadata() != "" {
		return nil, berth.Errorf(berth.CodeInvalid, "version must be auto, patch, minor, major or MAJOR.MINOR.PATCH, not %q", s)
	}
	return v, nil
}
