// Package storetest is the acceptance suite every berth.Store implementation
// must pass. An implementation's tests call Run with a function that opens
// a fresh store:
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) berth.Store {
//			s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "berth.db"))
//			if err != nil {
//				t.Fatal(err)
//			}
//			return s
//		})
//	}
//
// The suite assumes times round-trip with microsecond precision and may come
// back in any location; it compares them with time.Equal semantics.
package storetest

import (
	"errors"
	"strings"
	"testing"

	"github.com/berthhq/berth"
)

// Run runs the acceptance suite against stores made by open, one fresh
// store per subtest. open must return a store that nothing else uses while
// the subtest runs (InterruptOperations acts on the whole store), preferably
// an empty one; Run closes it when the subtest ends, so open must not.
func Run(t *testing.T, open func(t *testing.T) berth.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s berth.Store)
	}{
		{"Users", testUsers},
		{"Agents", testAgents},
		{"AgentActiveVersion", testAgentActiveVersion},
		{"DeleteAgentCascades", testDeleteAgentCascades},
		{"DeleteAgentFenced", testDeleteAgentFenced},
		{"DeleteUnusedAgent", testDeleteUnusedAgent},
		{"Versions", testVersions},
		{"VersionLabels", testVersionLabels},
		{"VersionSemverOrder", testVersionSemverOrder},
		{"VersionPagination", testVersionPagination},
		{"RecentlyActive", testRecentlyActive},
		{"Builds", testBuilds},
		{"Deployments", testDeployments},
		{"LiveDeployments", testLiveDeployments},
		{"CurrentDeployments", testCurrentDeployments},
		{"OperationGuard", testOperationGuard},
		{"OperationLeaseExpiry", testOperationLeaseExpiry},
		{"CommitReleasesGuard", testCommitReleasesGuard},
		{"CommitByTakenOverOperation", testCommitByTakenOverOperation},
		{"RenewLease", testRenewLease},
		{"Idempotency", testIdempotency},
		{"CommitStaleExpectActive", testCommitStaleExpectActive},
		{"CommitAllOrNothing", testCommitAllOrNothing},
		{"ListOperations", testListOperations},
		{"InterruptAllOperations", testInterruptAllOperations},
		{"InterruptExpiredOperations", testInterruptExpiredOperations},
		{"ConcurrentSwitches", testConcurrentSwitches},
		{"DeleteUnusedAgentRace", testDeleteUnusedAgentRace},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close() = %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
}

// check fails the test now if err is not nil.
func check(t *testing.T, err error, call string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s = %v, want nil", call, err)
	}
}

// wantCode reports an error unless err is a *berth.Error with code want.
func wantCode(t *testing.T, err error, want berth.Code, call string) {
	t.Helper()
	var be *berth.Error
	if !errors.As(err, &be) {
		t.Errorf("%s = %v, want *berth.Error with code %q", call, err, want)
		return
	}
	if be.Code != want {
		t.Errorf("%s error code = %q (%v), want %q", call, be.Code, err, want)
	}
}

// wantInProgress reports an error unless err is CodeOperationInProgress
// naming holder.
func wantInProgress(t *testing.T, err error, holder, call string) {
	t.Helper()
	var be *berth.Error
	if !errors.As(err, &be) || be.Code != berth.CodeOperationInProgress {
		t.Errorf("%s = %v, want code %q", call, err, berth.CodeOperationInProgress)
		return
	}
	if be.OperationID != holder {
		t.Errorf("%s OperationID = %q, want the holder %q", call, be.OperationID, holder)
	}
	if !strings.Contains(be.Message, holder) {
		t.Errorf("%s message = %q, want it to name the holder %q", call, be.Message, holder)
	}
}
