package server_test

// Hostile and malformed uploads: each is refused with a clear 4xx and
// leaves nothing behind.

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"hash/crc32"
	"io"
	"io/fs"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/artifact"
	"github.com/berthhq/berth/berthtest"
)

// zent is one entry of a hand-made zip.
type zent struct {
	name string
	body string
	mode fs.FileMode // 0 = 0644 regular file
	// raw, when set, is written as the entry's already-compressed data with
	// hdr as given (CreateRaw), to forge headers.
	raw []byte
	hdr *zip.FileHeader
}

// makeZip writes entries in order.
func makeZip(t *testing.T, entries ...zent) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		if e.hdr != nil {
			w, err := zw.CreateRaw(e.hdr)
			if err != nil {
				t.Fatalf("zip entry %q: %v", e.hdr.Name, err)
			}
			if _, err := w.Write(e.raw); err != nil {
				t.Fatal(err)
			}
			continue
		}
		h := &zip.FileHeader{Name: e.name, Method: zip.Deflate, Modified: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		h.SetMode(mode)
		if mode.IsDir() {
			h.Method = zip.Store
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatalf("zip entry %q: %v", e.name, err)
		}
		if _, err := io.WriteString(w, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// deflated returns the raw deflate stream of b.
func deflated(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	fw, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(b)
	fw.Close()
	return buf.Bytes()
}

func TestHostilePackagesAreRefused(t *testing.T) {
	t.Parallel()
	lim := artifact.Limits{MaxEntries: 16, MaxFileBytes: 1 << 20, MaxUnpackedBytes: 2 << 20}
	ts := startServer(t, "", withLimits(lim))
	bin := berthtest.EchoAgentBinary(t)
	card := func(name string) zent {
		return zent{name: "AgentCard.json", body: `{"name":"` + name + `","version":"9.0.0"}`}
	}
	cfg := zent{name: "berth.json", body: `{"run":["` + bin + `"]}`}
	// The bombs' compressed data is made once: deflating megabytes under
	// the race detector is slow.
	zeros := make([]byte, 4<<20)
	bomb := deflated(t, zeros)
	mega := deflated(t, zeros[:1<<20])
	rawEntry := func(name string, plain []byte, raw []byte, declared int) zent {
		return zent{hdr: &zip.FileHeader{Name: name, Method: zip.Deflate, UncompressedSize64: uint64(declared),
			CompressedSize64: uint64(len(raw)), CRC32: crc32.ChecksumIEEE(plain)}, raw: raw}
	}

	cases := []struct {
		name   string
		pkg    func(agent string) []byte
		status int
		code   string
	}{
		{"zip slip", func(a string) []byte { return makeZip(t, card(a), cfg, zent{name: "../evil.txt", body: "x"}) }, 400, "invalid"},
		{"nested zip slip", func(a string) []byte { return makeZip(t, card(a), cfg, zent{name: "sub/../../evil.txt", body: "x"}) }, 400, "invalid"},
		{"absolute path", func(a string) []byte { return makeZip(t, card(a), cfg, zent{name: "/tmp/berth-evil.txt", body: "x"}) }, 400, "invalid"},
		{"windows drive path", func(a string) []byte { return makeZip(t, card(a), cfg, zent{name: "C:/evil.txt", body: "x"}) }, 400, "invalid"},
		{"backslash path", func(a string) []byte { return makeZip(t, card(a), cfg, zent{name: `..\evil.txt`, body: "x"}) }, 400, "invalid"},
		{"symlink", func(a string) []byte {
			return makeZip(t, card(a), cfg, zent{name: "passwd", body: "/etc/passwd", mode: fs.ModeSymlink | 0o777})
		}, 400, "invalid"},
		{"symlinked directory", func(a string) []byte {
			return makeZip(t, card(a), cfg, zent{name: "etc", body: "/etc", mode: fs.ModeSymlink | 0o777}, zent{name: "etc/evil", body: "x"})
		}, 400, "invalid"},
		{"device file", func(a string) []byte {
			return makeZip(t, card(a), cfg, zent{name: "null", body: "", mode: fs.ModeDevice | fs.ModeCharDevice | 0o666})
		}, 400, "invalid"},
		{"duplicate entry", func(a string) []byte {
			return makeZip(t, card(a), cfg, zent{name: "a.txt", body: "1"}, zent{name: "a.txt", body: "2"})
		}, 400, "invalid"},
		{"too many entries", func(a string) []byte {
			es := []zent{card(a), cfg}
			for i := range lim.MaxEntries {
				es = append(es, zent{name: "f" + strings.Repeat("x", i), body: "x"})
			}
			return makeZip(t, es...)
		}, 413, "too_large"},
		{"zip bomb (declared size)", func(a string) []byte {
			return makeZip(t, card(a), cfg, rawEntry("bomb.bin", zeros, bomb, len(zeros)))
		}, 413, "too_large"},
		{"zip bomb (lying header)", func(a string) []byte {
			return makeZip(t, card(a), cfg, rawEntry("bomb.bin", zeros[:100], bomb, 100))
		}, 413, "too_large"},
		{"zip bomb (many files)", func(a string) []byte {
			es := []zent{card(a), cfg}
			for _, n := range []string{"a.bin", "b.bin", "c.bin"} {
				es = append(es, rawEntry(n, zeros[:1<<20], mega, 1<<20))
			}
			return makeZip(t, es...)
		}, 413, "too_large"},
		{"encrypted entry", func(a string) []byte {
			return makeZip(t, card(a), cfg, zent{hdr: &zip.FileHeader{Name: "secret.txt", Method: zip.Store, Flags: 0x1,
				UncompressedSize64: 4, CompressedSize64: 4, CRC32: crc32.ChecksumIEEE([]byte("abcd"))}, raw: []byte("abcd")})
		}, 400, "invalid"},
		{"unsupported compression", func(a string) []byte {
			return makeZip(t, card(a), cfg, zent{hdr: &zip.FileHeader{Name: "b.txt", Method: 12,
				UncompressedSize64: 4, CompressedSize64: 4, CRC32: crc32.ChecksumIEEE([]byte("abcd"))}, raw: []byte("abcd")})
		}, 400, "invalid"},
		{"checksum mismatch", func(a string) []byte {
			return makeZip(t, card(a), cfg, zent{hdr: &zip.FileHeader{Name: "c.txt", Method: zip.Store,
				UncompressedSize64: 4, CompressedSize64: 4, CRC32: crc32.ChecksumIEEE([]byte("abcd"))}, raw: []byte("abce")})
		}, 400, "invalid"},
		{"missing AgentCard.json", func(a string) []byte { return makeZip(t, cfg, zent{name: "main.py", body: "x"}) }, 400, "invalid"},
		{"AgentCard.json not JSON", func(a string) []byte { return makeZip(t, zent{name: "AgentCard.json", body: "{name: " + a}, cfg) }, 400, "invalid"},
		{"AgentCard.json is an array", func(a string) []byte { return makeZip(t, zent{name: "AgentCard.json", body: `["` + a + `"]`}, cfg) }, 400, "invalid"},
		{"AgentCard.json without name", func(a string) []byte {
			return makeZip(t, zent{name: "AgentCard.json", body: `{"version":"9.0.0"}`}, cfg)
		}, 400, "invalid"},
		{"AgentCard.json name not a slug", func(a string) []byte {
			return makeZip(t, zent{name: "AgentCard.json", body: `{"name":"Bad Name/` + a + `"}`}, cfg)
		}, 400, "invalid"},
		{"AgentCard.json bad version", func(a string) []byte {
			return makeZip(t, zent{name: "AgentCard.json", body: `{"name":"` + a + `","version":"v9"}`}, cfg)
		}, 400, "invalid"},
		{"AgentCard.json is a directory", func(a string) []byte {
			return makeZip(t, zent{name: "AgentCard.json/", mode: fs.ModeDir | 0o755}, cfg)
		}, 400, "invalid"},
		{"metadata not at the root", func(a string) []byte {
			return makeZip(t, zent{name: "one/AgentCard.json", body: `{"name":"` + a + `"}`}, zent{name: "one/berth.json", body: cfg.body}, zent{name: "two/x", body: "x"})
		}, 400, "invalid"},
		{"missing berth.json", func(a string) []byte { return makeZip(t, card(a)) }, 400, "invalid"},
		{"berth.json not JSON", func(a string) []byte { return makeZip(t, card(a), zent{name: "berth.json", body: "run: ./agent"}) }, 400, "invalid"},
		{"berth.json unknown field", func(a string) []byte {
			return makeZip(t, card(a), zent{name: "berth.json", body: `{"run":["` + bin + `"],"runn":["x"]}`})
		}, 400, "invalid"},
		{"berth.json run not a list", func(a string) []byte {
			return makeZip(t, card(a), zent{name: "berth.json", body: `{"run":"` + bin + `"}`})
		}, 400, "invalid"},
		{"berth.json without run", func(a string) []byte { return makeZip(t, card(a), zent{name: "berth.json", body: `{"env":{"A":"b"}}`}) }, 400, "invalid"},
		{"berth.json sets PORT", func(a string) []byte {
			return makeZip(t, card(a), zent{name: "berth.json", body: `{"run":["` + bin + `"],"env":{"PORT":"1"}}`})
		}, 400, "invalid"},
		{"berth.json bad health_path", func(a string) []byte {
			return makeZip(t, card(a), zent{name: "berth.json", body: `{"run":["` + bin + `"],"health_path":"http://evil/"}`})
		}, 400, "invalid"},
		{"not a zip", func(a string) []byte { return []byte("this is not a zip file, it is " + a) }, 400, "invalid"},
		{"empty file", func(a string) []byte { return []byte{} }, 400, "invalid"},
		{"truncated zip", func(a string) []byte {
			z := light(t, a, "9.0.0", nil)
			return z[:len(z)/2]
		}, 400, "invalid"},
	}

	base := ts.upload(ts.Admin, light(t, "base", "1.0.0", nil))
	baseOps := len(ts.operations(ts.Admin, "base"))
	baseState := ts.state(ts.Admin, "base")
	before := dataListing(t, ts.DataDir)

	check := func(t *testing.T, what string) {
		t.Helper()
		if _, ok := ts.agentByName("hostile"); ok {
			t.Errorf("%s: agent hostile exists afterwards", what)
		}
		if d := listingDiff(before, dataListing(t, ts.DataDir)); d != "" {
			t.Errorf("%s: data dir changed: %s", what, d)
		}
		if got := ts.state(ts.Admin, "base"); got != baseState {
			t.Errorf("%s: base agent state = %+v, want %+v", what, got, baseState)
		}
		if got := len(ts.operations(ts.Admin, "base")); got != baseOps {
			t.Errorf("%s: base agent has %d operations, want %d", what, got, baseOps)
		}
	}
	for _, c := range cases {
		st, body := ts.uploadRaw(ts.Admin, c.pkg("hostile"), nil, "?wait=true")
		wantError(t, "upload: "+c.name, st, body, c.status, c.code)
		check(t, "upload: "+c.name)

		st, body = ts.updateRaw(ts.Admin, "base", c.pkg("base"), nil, "?wait=true", nil)
		wantError(t, "update: "+c.name, st, body, c.status, c.code)
		check(t, "update: "+c.name)
	}

	// Malformed requests.
	multi := func(parts ...[2]string) (io.Reader, string) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		for _, p := range parts {
			if p[0] == "file" {
				fw, _ := mw.CreateFormFile("file", "agent.zip")
				fw.Write([]byte(p[1]))
				continue
			}
			mw.WriteField(p[0], p[1])
		}
		mw.Close()
		return &buf, mw.FormDataContentType()
	}
	good := string(light(t, "hostile", "1.0.0", nil))
	for _, c := range []struct {
		name string
		body func() (io.Reader, string)
	}{
		{"missing file part", func() (io.Reader, string) { return multi([2]string{"agent_name", "hostile"}) }},
		{"two file parts", func() (io.Reader, string) { return multi([2]string{"file", good}, [2]string{"file", good}) }},
		{"unknown form field", func() (io.Reader, string) { return multi([2]string{"file", good}, [2]string{"colour", "red"}) }},
		{"JSON body", func() (io.Reader, string) { return strings.NewReader(`{"file":"x"}`), "application/json" }},
		{"raw zip body", func() (io.Reader, string) { return strings.NewReader(good), "application/zip" }},
		{"no content type", func() (io.Reader, string) { return strings.NewReader(good), "" }},
		{"multipart without boundary", func() (io.Reader, string) { return strings.NewReader(good), "multipart/form-data" }},
		{"broken multipart", func() (io.Reader, string) {
			return strings.NewReader("--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc"), "multipart/form-data; boundary=xyz"
		}},
	} {
		for _, target := range []string{"/api/v1/agents/upload?wait=true", "/api/v1/agents/base/update?wait=true"} {
			body, ct := c.body()
			method := "POST"
			if strings.Contains(target, "update") {
				method = "PUT"
			}
			st, b := ts.do(method, target, ts.Admin, body, ct, nil)
			wantError(t, method+" "+c.name, st, b, http.StatusUnprocessableEntity, "invalid_body")
			check(t, method+" "+c.name)
		}
	}

	// The base agent kept serving throughout.
	if w := ts.whoami("base"); w.Version != "1.0.0" || w.AgentID != base.AgentID {
		t.Errorf("base whoami = %+v, want 1.0.0", w)
	}

	// Positive control: the same construction with nothing hostile is
	// accepted, so each refusal above was caused by what its case changed.
	ts.update(ts.Admin, "base", makeZip(t, card("base"), cfg, zent{name: "sub/ok.txt", body: "ok"}), nil)
	if w := ts.whoami("base"); w.Version != "9.0.0" {
		t.Errorf("base whoami after the control update = %+v, want 9.0.0", w)
	}
}
