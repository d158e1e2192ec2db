package artifact_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/artifact"
)

// fuzzLimits keep each fuzz iteration small.
var fuzzLimits = artifact.Limits{MaxEntries: 64, MaxUnpackedBytes: 1 << 20, MaxFileBytes: 256 << 10}

// FuzzInspect checks that arbitrary bytes never make Inspect panic or fail
// with anything but a validation error, and that whatever Inspect accepts
// unpacks, entirely inside the target folder, and converts to tar.gz.
func FuzzInspect(f *testing.F) {
	f.Add(buildZip(f, withMeta("", exe("bin/agent", "#!/bin/sh\n"), dir("empty/"), file("a/b.txt", "b"))...))
	f.Add(buildZip(f, append([]zent{dir("pkg/")}, withMeta("pkg/", file("pkg/x", "x"), file("__MACOSX/pkg/._x", "j"))...)...))
	f.Add(pkg(f, `{"name": "a"}`, `{"run": ["./a"]}`))
	f.Add(buildZip(f, withMeta("", file("../x", "x"))...))
	f.Add(buildZip(f, withMeta("", zent{name: "bomb", body: strings.Repeat("\x00", 64<<10), declared: 3})...))
	f.Add(buildZip(f, withMeta("", zent{name: "l", body: "/", mode: fs.ModeSymlink | 0o777})...))
	f.Add([]byte("PK\x05\x06" + strings.Repeat("\x00", 18)))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		p, err := artifact.Inspect(r, int64(len(b)), fuzzLimits)
		if err != nil {
			if c := berth.ErrorCode(err); c != berth.CodeInvalid && c != berth.CodeTooLarge {
				t.Fatalf("Inspect error code = %q (%v), want invalid or too_large", c, err)
			}
			return
		}
		if !berth.ValidName(p.Name) || len(p.Config.Run) == 0 || !strings.HasPrefix(p.Config.HealthPath, "/") || len(p.Digest) != 64 {
			t.Fatalf("Inspect accepted an invalid package: %+v", p)
		}

		parent := t.TempDir()
		target := filepath.Join(parent, "v")
		if err := artifact.Unpack(r, int64(len(b)), target, fuzzLimits); err != nil {
			t.Fatalf("Inspect accepted the package but Unpack = %v", err)
		}
		err = filepath.WalkDir(target, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(target, path)
			if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				t.Errorf("unpacked %q is outside %q", path, target)
			}
			if !d.IsDir() && !d.Type().IsRegular() {
				t.Errorf("unpacked %q has type %v, want a regular file or directory", path, d.Type())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if entries, _ := os.ReadDir(parent); len(entries) != 1 {
			t.Errorf("Unpack left %d entries in the parent, want 1", len(entries))
		}
		if _, err := os.Stat(filepath.Join(target, artifact.CardFile)); err != nil {
			t.Errorf("unpacked package has no card: %v", err)
		}
		if err := artifact.ZipToTarGz(io.Discard, r, int64(len(b))); err != nil {
			t.Errorf("Inspect accepted the package but ZipToTarGz = %v", err)
		}
	})
}

// FuzzConfig checks that ParseConfig never panics, fails only with
// CodeInvalid, and that what it accepts is valid and survives a JSON round
// trip unchanged.
func FuzzConfig(f *testing.F) {
	f.Add(`{"run": ["./agent"]}`)
	f.Add(`{"run": ["sh", "-c", "exec x"], "build": ["make"], "health_path": "/h?x=1", "env": {"A": "b"}, "ready_timeout": "1m", "image": "r/i:1"}`)
	f.Add(`{"run": [], "env": {"PORT": "1"}}`)
	f.Add(`{"run": ["x"], "ready_timeout": "-1s", "extra": 1}`)
	f.Add(`null`)
	f.Add(`[`)

	f.Fuzz(func(t *testing.T, s string) {
		c, err := artifact.ParseConfig([]byte(s))
		if err != nil {
			var be *berth.Error
			if !errors.As(err, &be) || be.Code != berth.CodeInvalid || !strings.HasPrefix(be.Message, "berth.json") {
				t.Fatalf("ParseConfig error = %#v, want a CodeInvalid *berth.Error about berth.json", err)
			}
			return
		}
		if len(c.Run) == 0 || !strings.HasPrefix(c.HealthPath, "/") || c.ReadyTimeout < 0 || c.ReadyTimeout > berth.Duration(artifact.MaxReadyTimeout) {
			t.Fatalf("ParseConfig(%q) accepted an invalid config: %+v", s, c)
		}
		for k := range c.Env {
			if k == "PORT" || strings.HasPrefix(k, "BERTH_") {
				t.Fatalf("ParseConfig(%q) accepted env %q", s, k)
			}
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("marshalling %+v: %v", c, err)
		}
		again, err := artifact.ParseConfig(b)
		if err != nil {
			t.Fatalf("ParseConfig(%s) (round trip of %q) = %v", b, s, err)
		}
		if !reflect.DeepEqual(again, c) {
			t.Fatalf("round trip of %q = %+v, want %+v", s, again, c)
		}
	})
}
