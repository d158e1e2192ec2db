package main

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"
)

// echoAgentDir is the example agent's folder relative to the module root.
const echoAgentDir = "examples/echo-agent"

// moduleRoot returns the directory of Berth's go.mod, found by walking up
// from the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run the bench from the Berth module")
		}
		dir = parent
	}
}

// goBuild builds the package pkg (relative to the module root) into out,
// stripped, as the example packages ship it.
func goBuild(pkg, out string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./"+pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./%s: %v\n%s", pkg, err, b)
	}
	return nil
}

// agentKit makes packages of the real example agent: its AgentCard.json and
// berth.json from examples/echo-agent, with the build step replaced by a
// prebuilt binary so that deploying costs no compile (the binary is what the
// build command would produce).
type agentKit struct {
	bin    []byte         // the prebuilt echo agent
	card   map[string]any // examples/echo-agent/AgentCard.json
	config map[string]any // examples/echo-agent/berth.json without "build"
}

// newAgentKit builds (or reads, when binPath is set) the echo agent and
// loads the example's card and config.
func newAgentKit(workDir, binPath string) (*agentKit, error) {
	if binPath == "" {
		binPath = filepath.Join(workDir, "echo-agent")
		if err := goBuild(echoAgentDir, binPath); err != nil {
			return nil, err
		}
	}
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return nil, err
	}
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	k := &agentKit{bin: bin}
	for name, dst := range map[string]*map[string]any{"AgentCard.json": &k.card, "berth.json": &k.config} {
		b, err := os.ReadFile(filepath.Join(root, echoAgentDir, name))
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(b, dst); err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
	}
	// The binary is shipped prebuilt, so the build step (go build) goes.
	delete(k.config, "build")
	return k, nil
}

// pkg returns a zip of the example agent named name with card version
// version ("" leaves the card's own).
func (k *agentKit) pkg(name, version string) ([]byte, error) {
	card := make(map[string]any, len(k.card))
	for key, v := range k.card {
		card[key] = v
	}
	card["name"] = name
	if version != "" {
		card["version"] = version
	}
	cardJSON, err := json.MarshalIndent(card, "", "  ")
	if err != nil {
		return nil, err
	}
	cfgJSON, err := json.MarshalIndent(k.config, "", "  ")
	if err != nil {
		return nil, err
	}
	return zipFiles(map[string][]byte{
		"AgentCard.json": cardJSON,
		"berth.json":     cfgJSON,
		"echo-agent":     k.bin,
	}, map[string]fs.FileMode{"echo-agent": 0o755})
}

// zipFiles returns a zip of files (name → contents) with the given modes
// (default 0644). Files over 1 MiB are stored, not deflated: compressing
// the agent binary for every upload would only measure the compressor.
func zipFiles(files map[string][]byte, modes map[string]fs.FileMode) ([]byte, error) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, n := range names {
		h := &zip.FileHeader{Name: n, Method: zip.Deflate, Modified: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
		if len(files[n]) > 1<<20 {
			h.Method = zip.Store
		}
		mode, ok := modes[n]
		if !ok {
			mode = 0o644
		}
		h.SetMode(mode)
		w, err := zw.CreateHeader(h)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(files[n]); err != nil {
			return nil, err
		}
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
