package main

import (
	"archive/zip"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// ignoreFile is the file in a package folder that lists what deploy leaves
// out of the zip.
const ignoreFile = ".berthignore"

// ignoreRule is one pattern of a .berthignore.
type ignoreRule struct {
	// pattern is a path.Match pattern.
	pattern string
	// anchored rules match the path relative to the folder; the others
	// match a file or folder name at any depth.
	anchored bool
	// dirOnly rules (written with a trailing slash) match folders only.
	dirOnly bool
}

// ignoreRules is a parsed .berthignore.
type ignoreRules []ignoreRule

// parseIgnore reads .berthignore syntax, a simple subset of .gitignore:
//
//   - blank lines and lines starting with # are skipped;
//   - a pattern without a slash matches a file or folder name at any depth
//     (node_modules, *.log);
//   - a pattern with a slash matches the path from the package folder
//     (build/*.o, /secrets.json; a leading slash is optional);
//   - a trailing slash matches folders only (tmp/);
//   - *, ? and [...] work as in path.Match; an ignored folder is left out
//     with everything in it.
//
// Negation (!pattern) and ** are refused rather than half-supported, so a
// file is never shipped or dropped by a surprise.
func parseIgnore(r io.Reader) (ignoreRules, error) {
	var rules ignoreRules
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") {
			return nil, fmt.Errorf("%s line %d: negation (%q) is not supported", ignoreFile, n, line)
		}
		if strings.Contains(line, "**") {
			return nil, fmt.Errorf("%s line %d: ** is not supported; use a name pattern such as *.log to match at any depth", ignoreFile, n)
		}
		var rule ignoreRule
		if strings.HasSuffix(line, "/") {
			rule.dirOnly = true
			line = strings.TrimRight(line, "/")
		}
		if strings.Contains(line, "/") {
			rule.anchored = true
			line = strings.TrimPrefix(line, "/")
		}
		if line == "" {
			continue
		}
		if _, err := path.Match(line, ""); err != nil {
			return nil, fmt.Errorf("%s line %d: bad pattern %q: %v", ignoreFile, n, line, err)
		}
		rule.pattern = line
		rules = append(rules, rule)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", ignoreFile, err)
	}
	return rules, nil
}

// ignored reports whether rel (slash-separated, relative to the package
// folder) is left out.
func (rs ignoreRules) ignored(rel string, isDir bool) bool {
	for _, r := range rs {
		if r.dirOnly && !isDir {
			continue
		}
		subject := path.Base(rel)
		if r.anchored {
			subject = rel
		}
		if ok, _ := path.Match(r.pattern, subject); ok {
			return true
		}
	}
	return false
}

// packStats says what packDir put in the zip.
type packStats struct {
	Files   int
	Ignored int
}

// packDir zips the folder dir into w: its files at the zip's root, with
// their permission bits, leaving out .git and whatever .berthignore lists.
// Symbolic links and other special files are refused (packages hold only
// regular files and folders) unless ignored.
func packDir(dir string, w io.Writer) (packStats, error) {
	var st packStats
	rules := ignoreRules{{pattern: ".git", dirOnly: true}}
	f, err := os.Open(filepath.Join(dir, ignoreFile))
	switch {
	case err == nil:
		more, perr := parseIgnore(f)
		f.Close()
		if perr != nil {
			return st, perr
		}
		rules = append(rules, more...)
	case !errors.Is(err, fs.ErrNotExist):
		return st, err
	}

	zw := zip.NewWriter(w)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rules.ignored(rel, d.IsDir()) {
			st.Ignored++
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			hdr := &zip.FileHeader{Name: rel + "/", Method: zip.Store, Modified: info.ModTime()}
			hdr.SetMode(fs.ModeDir | 0o755)
			_, err := zw.CreateHeader(hdr)
			return err
		case d.Type()&fs.ModeSymlink != 0:
			return fmt.Errorf("%s is a symbolic link; packages hold only regular files and folders (copy the file in, or list it in %s)", rel, ignoreFile)
		case !d.Type().IsRegular():
			return fmt.Errorf("%s is not a regular file; list it in %s to leave it out", rel, ignoreFile)
		}
		hdr, err := zip.FileInfoHeader(info)
		if err != nil {
			return err
		}
		hdr.Name, hdr.Method = rel, zip.Deflate
		zf, err := zw.CreateHeader(hdr)
		if err != nil {
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		if _, err := io.Copy(zf, src); err != nil {
			return fmt.Errorf("read %s: %w", rel, err)
		}
		st.Files++
		return nil
	})
	if err != nil {
		return st, err
	}
	return st, zw.Close()
}
