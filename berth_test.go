package berth

import "testing"

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"echo-agent", true},
		{"a", true},
		{"0agent", true},
		{"", false},
		{"-agent", false},
		{"Agent", false},
		{"agent_1", false},
		{"a" + string(make([]byte, 63)), false},
		// Shaped like an agent id, which routes try first.
		{"8f14e45f-ceea-467f-a0e6-d4a6b9d4f2c1", false},
		{"8f14e45fceea467fa0e6d4a6b9d4f2c1", false},
		// Hex, but not an id's length.
		{"deadbeef", true},
	}
	for _, tt := range tests {
		if got := ValidName(tt.name); got != tt.want {
			t.Errorf("ValidName(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}
