package artifact_test

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// zent is one entry of a zip built by a test. Entries are written raw, so
// tests control exactly what the central directory says.
type zent struct {
	name string
	body string
	// mode is the entry's mode; zero means 0644, or a 0755 directory for
	// names ending in "/".
	mode fs.FileMode
	// method is the compression method; zero means deflate for files.
	method uint16
	// declared, when non-zero, is the uncompressed size the header claims
	// instead of the real one.
	declared uint64
	// flags are extra general-purpose flag bits (0x1: encrypted).
	flags uint16
	// badCRC records a wrong checksum.
	badCRC bool
	// unixMode, when non-zero, is written as the entry's raw Unix mode
	// (st_mode), for combinations SetMode cannot express.
	unixMode uint32
}

// file and dir are shorthands for ordinary entries.
func file(name, body string) zent { return zent{name: name, body: body} }
func exe(name, body string) zent  { return zent{name: name, body: body, mode: 0o755} }
func dir(name string) zent        { return zent{name: name} }

func buildZip(t testing.TB, ents ...zent) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range ents {
		isDir := strings.HasSuffix(e.name, "/")
		hdr := &zip.FileHeader{Name: e.name, Modified: time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC), Flags: e.flags}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if isDir {
				mode = fs.ModeDir | 0o755
			}
		}
		hdr.SetMode(mode)
		if e.unixMode != 0 {
			hdr.ExternalAttrs = e.unixMode << 16
		}
		hdr.Method = e.method
		if hdr.Method == 0 && !isDir {
			hdr.Method = zip.Deflate
		}
		data := []byte(e.body)
		if hdr.Method == zip.Deflate {
			var c bytes.Buffer
			fw, err := flate.NewWriter(&c, flate.BestSpeed)
			if err != nil {
				t.Fatal(err)
			}
			fw.Write(data)
			fw.Close()
			data = c.Bytes()
		}
		hdr.CRC32 = crc32.ChecksumIEEE([]byte(e.body))
		if e.badCRC {
			hdr.CRC32 ^= 0xdeadbeef
		}
		hdr.CompressedSize64 = uint64(len(data))
		hdr.UncompressedSize64 = uint64(len(e.body))
		if e.declared != 0 {
			hdr.UncompressedSize64 = e.declared
		}
		w, err := zw.CreateRaw(hdr)
		if err != nil {
			t.Fatalf("zip entry %q: %v", e.name, err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatalf("zip entry %q: %v", e.name, err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

const (
	goodCard   = `{"name": "support-bot", "version": "1.2.0", "description": "Answers questions.", "skills": [{"id": "qa"}]}`
	goodConfig = `{"run": ["./bin/agent"], "env": {"LOG_LEVEL": "info"}, "ready_timeout": "30s"}`
)

// withMeta returns a good card and config in folder prefix plus extra.
func withMeta(prefix string, extra ...zent) []zent {
	return append([]zent{file(prefix+"AgentCard.json", goodCard), file(prefix+"berth.json", goodConfig)}, extra...)
}

// pkg builds a package at the zip root with the given card and config.
func pkg(t testing.TB, card, config string, extra ...zent) []byte {
	t.Helper()
	return buildZip(t, append([]zent{file("AgentCard.json", card), file("berth.json", config)}, extra...)...)
}

// snapshot describes everything under dir (names, types, modes, sizes) so
// that tests can check a failed Unpack changed nothing.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		size := fi.Size()
		if fi.IsDir() {
			size = 0 // directory sizes vary by file system
		}
		m[rel] = fmt.Sprintf("%v %d", fi.Mode(), size)
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return m
}

// readTree returns path → "file <mode> <contents>" or "dir" for everything
// under dir.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			m[rel] = "dir " + fi.Mode().Perm().String()
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			m[rel] = "file " + fi.Mode().Perm().String() + " " + string(b)
		default:
			m[rel] = "other " + fi.Mode().String()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading %s: %v", dir, err)
	}
	return m
}
