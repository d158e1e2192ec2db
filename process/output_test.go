package process

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLineRing(t *testing.T) {
	long := strings.Repeat("y", maxLineLen+10)
	tests := []struct {
		name   string
		writes []string
		want   []string
	}{
		{"empty", nil, nil},
		{"lines split across writes", []string{"a\nb", "c\n", "d"}, []string{"a", "bc", "d"}},
		{"keeps the last n", []string{"1\n2\n3\n4\n5\n"}, []string{"3", "4", "5"}},
		{"partial counts toward n", []string{"1\n2\n3\n4"}, []string{"2", "3", "4"}},
		{"crlf", []string{"a\r\n"}, []string{"a"}},
		{"long line cut", []string{long + "\nz\n"}, []string{long[:maxLineLen] + " [line truncated]", "z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newLineRing(3)
			for _, w := range tt.writes {
				if n, err := r.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if got := r.Lines(); !slices.Equal(got, tt.want) {
				t.Errorf("Lines() after %q = %q, want %q", tt.writes, got, tt.want)
			}
		})
	}
}

func TestTailBuffer(t *testing.T) {
	tests := []struct {
		name   string
		max    int
		writes []string
		want   string
	}{
		{"fits", 100, []string{"abc", "def"}, "abcdef"},
		{"exactly full", 6, []string{"abc", "def"}, "abcdef"},
		{"tail kept with marker", 40, []string{strings.Repeat("a", 50), "0123456789"}, truncatedMarker + "456789"},
		{"marker does not fit", 5, []string{"abcdefgh"}, "defgh"},
		{"many small writes", 40, slices.Repeat([]string{"0123456789"}, 20), truncatedMarker + "456789"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &tailBuffer{max: tt.max}
			for _, w := range tt.writes {
				b.Write([]byte(w))
			}
			got := string(b.Bytes())
			if got != tt.want {
				t.Errorf("Bytes() = %q, want %q", got, tt.want)
			}
			if len(got) > tt.max {
				t.Errorf("Bytes() has %d bytes, want at most %d", len(got), tt.max)
			}
		})
	}
}

func TestLogSinkRotates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.log")
	if err := os.WriteFile(path, []byte("old\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	s, err := openLogSink(path, 10)
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("0123456789abcdefghij")) // appends to "old\n", rotating twice
	s.Close()
	s.Write([]byte("dropped after close"))

	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got, want := read(path+".1"), "6789abcdef"; got != want {
		t.Errorf("rotated log = %q, want %q", got, want)
	}
	if got, want := read(path), "ghij"; got != want {
		t.Errorf("current log = %q, want %q", got, want)
	}
}

func TestBackoff(t *testing.T) {
	r := &Runtime{opts: Options{RestartBackoff: 100 * time.Millisecond, MaxRestartBackoff: time.Second}}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for streak, w := range want {
		if got := r.backoff(streak); got != w*time.Millisecond {
			t.Errorf("backoff(%d) = %v, want %v", streak, got, w*time.Millisecond)
		}
	}
	if got := r.backoff(1000); got != time.Second {
		t.Errorf("backoff(1000) = %v, want the cap %v", got, time.Second)
	}
}
