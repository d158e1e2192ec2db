package sqlstore

import (
	"testing"

	"github.com/berthhq/berth"
)

func TestParseLabel(t *testing.T) {
	tests := []struct {
		label string
		want  semverKey
		ok    bool
	}{
		{"0.0.0", semverKey{0, 0, 0}, true},
		{"1.10.3", semverKey{1, 10, 3}, true},
		{"9223372036854775807.0.0", semverKey{9223372036854775807, 0, 0}, true},
		{"9223372036854775808.0.0", semverKey{}, false},
		{"1.2", semverKey{}, false},
		{"v1.2.3", semverKey{}, false},
		{"1.2.3-beta", semverKey{}, false},
		{"1.2.3+meta", semverKey{}, false},
		{"1.02.3", semverKey{}, false},
		{"", semverKey{}, false},
	}
	for _, tc := range tests {
		got, err := parseLabel(tc.label)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseLabel(%q) = %v, %v; want %v, ok %v", tc.label, got, err, tc.want, tc.ok)
		}
		if err != nil && berth.ErrorCode(err) != berth.CodeInvalid {
			t.Errorf("parseLabel(%q) error code = %q, want %q", tc.label, berth.ErrorCode(err), berth.CodeInvalid)
		}
	}
}
