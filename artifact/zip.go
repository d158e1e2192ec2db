package artifact

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"sort"
	"strings"
	"time"

	"github.com/berthhq/berth"
)

const (
	// maxNameBytes and maxElemBytes bound entry names: longer ones cannot
	// be created on common file systems, so they are refused up front with
	// a clear message instead of failing half-way through an unpack.
	maxNameBytes = 1024
	maxElemBytes = 255
	// maxMetaBytes bounds AgentCard.json and berth.json, which are read
	// into memory.
	maxMetaBytes = 1 << 20
)

// entry is one regular file of the package.
type entry struct {
	f    *zip.File
	name string // slash-separated, relative to the package root, cleaned
}

// perm is the only part of the zip's mode that is trusted: whether any
// executable bit is set.
func (e *entry) perm() fs.FileMode {
	if e.f.Mode()&0o111 != 0 {
		return 0o755
	}
	return 0o644
}

// archive is a zip whose structure has been validated by open.
type archive struct {
	lim      Limits
	files    []*entry          // regular files in zip order
	byName   map[string]*entry // files by name
	dirs     []string          // every directory (explicit or implied), sorted, parents first
	dirTimes map[string]time.Time
	// elsewhere lists files named like a metadata file that are not at the
	// package root, to explain a "missing" card.
	elsewhere map[string]string
	// inflater is reused across entries: a new flate reader allocates
	// tens of kilobytes, which dominates the cost of small files.
	inflater io.ReadCloser
}

// kind is what a path is known to be while entries are checked.
type kind int

const (
	kindFile       kind = iota + 1
	kindDir             // an explicit directory entry
	kindImpliedDir      // a directory implied by a deeper path
)

// open reads the zip's central directory and checks every entry's name,
// type, flags and declared size, and decides where the package root is. It
// reads no file contents.
func open(r io.ReaderAt, size int64, lim Limits) (*archive, error) {
	if size <= 0 {
		return nil, berth.Errorf(berth.CodeInvalid, "package is empty")
	}
	zr, err := zip.NewReader(r, size)
	// ErrInsecurePath (only returned under GODEBUG=zipinsecurepath=0) comes
	// with a usable reader; the checks below refuse those names themselves.
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return nil, &berth.Error{Code: berth.CodeInvalid, Message: "package is not a valid zip archive", Err: err}
	}
	if len(zr.File) > lim.MaxEntries {
		return nil, berth.Errorf(berth.CodeTooLarge, "package has %d entries, more than the %d allowed", len(zr.File), lim.MaxEntries)
	}

	type item struct {
		f    *zip.File
		name string
		dir  bool
	}
	var (
		items     []item
		kinds     = make(map[string]kind)
		times     = make(map[string]time.Time)
		total     uint64
		elsewhere = make(map[string]string)
	)
	for _, f := range zr.File {
		name, err := cleanName(f.Name)
		if err != nil {
			return nil, err
		}
		mode := f.Mode()
		if mode&fs.ModeSymlink != 0 {
			return nil, berth.Errorf(berth.CodeInvalid, "entry %q is a symbolic link; packages may only hold regular files and directories", f.Name)
		}
		isDir := mode.IsDir()
		if (isDir && mode&fs.ModeType != fs.ModeDir) || (!isDir && !mode.IsRegular()) {
			return nil, berth.Errorf(berth.CodeInvalid, "entry %q is not a regular file or directory (mode %v)", f.Name, mode)
		}
		if f.Flags&0x1 != 0 {
			return nil, berth.Errorf(berth.CodeInvalid, "entry %q is encrypted; encrypted packages are not supported", f.Name)
		}
		if isDir && f.UncompressedSize64 != 0 {
			return nil, berth.Errorf(berth.CodeInvalid, "directory entry %q has contents", f.Name)
		}
		if !isDir && f.Method != zip.Store && f.Method != zip.Deflate {
			return nil, berth.Errorf(berth.CodeInvalid, "entry %q uses unsupported compression method %d (only stored and deflated entries are supported)", f.Name, f.Method)
		}
		if name == "" {
			// "./" names the zip root itself.
			if !isDir {
				return nil, berth.Errorf(berth.CodeInvalid, "entry %q is not a valid file name", f.Name)
			}
			continue
		}
		if isJunk(name) {
			// Finder and Explorer litter; validated above, never unpacked.
			continue
		}

		// Duplicates: a path may be one file, or one directory that any
		// number of deeper paths imply. Anything else is ambiguous.
		if prev, ok := kinds[name]; ok {
			if isDir && prev == kindImpliedDir {
				kinds[name] = kindDir
			} else if isDir && prev == kindDir || !isDir && prev == kindFile {
				return nil, berth.Errorf(berth.CodeInvalid, "entry %q appears more than once", f.Name)
			} else {
				return nil, berth.Errorf(berth.CodeInvalid, "entry %q is both a file and a directory", f.Name)
			}
		} else if isDir {
			kinds[name] = kindDir
		} else {
			kinds[name] = kindFile
		}
		if isDir {
			times[name] = f.Modified
		}
		for p := parentDir(name); p != ""; p = parentDir(p) {
			switch kinds[p] {
			case kindFile:
				return nil, berth.Errorf(berth.CodeInvalid, "entry %q is both a file and a directory", p)
			case 0:
				kinds[p] = kindImpliedDir
			}
		}

		if !isDir {
			if f.UncompressedSize64 > uint64(lim.MaxFileBytes) {
				return nil, berth.Errorf(berth.CodeTooLarge, "entry %q unpacks to %d bytes, more than the %d allowed per file", f.Name, f.UncompressedSize64, lim.MaxFileBytes)
			}
			// Compare before adding: with huge declared sizes the sum
			// could wrap around.
			if f.UncompressedSize64 > uint64(lim.MaxUnpackedBytes)-total {
				return nil, berth.Errorf(berth.CodeTooLarge, "package unpacks to more than the %d bytes allowed", lim.MaxUnpackedBytes)
			}
			total += f.UncompressedSize64
		}
		items = append(items, item{f: f, name: name, dir: isDir})
	}

	// The root is the zip root, or its single top-level folder when every
	// entry is inside that folder.
	prefix := ""
	tops := make(map[string]bool)
	for _, it := range items {
		top, _, _ := strings.Cut(it.name, "/")
		tops[top] = true
	}
	if len(tops) == 1 {
		for top := range tops {
			if kinds[top] != kindFile {
				prefix = top + "/"
			}
		}
	}

	a := &archive{
		lim:       lim,
		byName:    make(map[string]*entry),
		dirTimes:  make(map[string]time.Time),
		elsewhere: elsewhere,
	}
	for name, k := range kinds {
		if k == kindFile || !strings.HasPrefix(name, prefix) {
			continue
		}
		rel := strings.TrimPrefix(name, prefix)
		a.dirs = append(a.dirs, rel)
		a.dirTimes[rel] = modTime(times[name])
	}
	sort.Strings(a.dirs)
	for _, it := range items {
		if it.dir {
			continue
		}
		rel := strings.TrimPrefix(it.name, prefix)
		e := &entry{f: it.f, name: rel}
		a.files = append(a.files, e)
		a.byName[rel] = e
		if base := pathBase(rel); (base == CardFile || base == ConfigFile) && rel != base {
			if _, ok := elsewhere[base]; !ok {
				elsewhere[base] = it.f.Name
			}
		}
	}
	return a, nil
}

// cleanName checks a zip entry name and returns it cleaned, relative to the
// zip root and without a trailing slash ("" for the root itself).
func cleanName(name string) (string, error) {
	bad := func(why string) error {
		return berth.Errorf(berth.CodeInvalid, "entry %q %s", name, why)
	}
	switch {
	case name == "":
		return "", berth.Errorf(berth.CodeInvalid, "package has an entry with an empty name")
	case len(name) > maxNameBytes:
		return "", bad(fmt.Sprintf("has a name longer than %d bytes", maxNameBytes))
	case strings.IndexByte(name, 0) >= 0:
		return "", bad("has a NUL byte in its name")
	case strings.IndexByte(name, '\\') >= 0:
		return "", bad("has a backslash in its name; zip paths must use forward slashes")
	case strings.HasPrefix(name, "/"):
		return "", bad("is an absolute path; entries must stay inside the package root")
	case len(name) >= 2 && name[1] == ':' && isASCIILetter(name[0]):
		return "", bad("is a Windows drive path; entries must stay inside the package root")
	case strings.IndexFunc(name, isControl) >= 0:
		return "", bad("has a control character in its name")
	}
	var elems []string
	for _, el := range strings.Split(strings.TrimSuffix(name, "/"), "/") {
		switch {
		case el == "..":
			return "", bad("escapes the package root (\"..\" in its path)")
		case el == "":
			return "", bad("has an empty path element")
		case el == ".":
			// Tolerated: some tools write "./name".
			continue
		case len(el) > maxElemBytes:
			return "", bad(fmt.Sprintf("has a path element longer than %d bytes", maxElemBytes))
		}
		elems = append(elems, el)
	}
	return strings.Join(elems, "/"), nil
}

// isJunk reports whether a cleaned path is operating-system litter that is
// ignored: macOS resource forks and folder metadata, Windows thumbnails.
func isJunk(name string) bool {
	top, _, _ := strings.Cut(name, "/")
	if top == "__MACOSX" {
		return true
	}
	switch pathBase(name) {
	case ".DS_Store", "Thumbs.db", "desktop.ini":
		return true
	}
	return false
}

func isASCIILetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// parentDir returns the parent of a cleaned relative path, "" at the top.
func parentDir(name string) string {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return ""
	}
	return name[:i]
}

func pathBase(name string) string { return name[strings.LastIndexByte(name, '/')+1:] }

// walk calls fn for every file in zip order with a reader of its contents
// that enforces the limits, the declared size and the checksum. A reader
// error is a *berth.Error; fn should return it unchanged. Whatever fn leaves
// unread is drained and checked too.
func (a *archive) walk(fn func(e *entry, r io.Reader) error) error {
	var total int64
	for _, e := range a.files {
		r, err := a.openEntry(e, total)
		if err != nil {
			return err
		}
		err = fn(e, r)
		if err == nil {
			_, err = io.Copy(io.Discard, r)
		}
		if err != nil {
			return err
		}
		total += r.n
	}
	return nil
}

// openEntry opens e for reading; used is how many bytes earlier files have
// unpacked to, which counts against MaxUnpackedBytes.
func (a *archive) openEntry(e *entry, used int64) (*entryReader, error) {
	raw, err := e.f.OpenRaw()
	if err != nil {
		return nil, &berth.Error{Code: berth.CodeInvalid, Message: fmt.Sprintf("entry %q is corrupt", e.f.Name), Err: err}
	}
	er := &entryReader{e: e, crc: crc32.NewIEEE()}
	// Decompress by hand rather than with zip.File.Open so that the byte
	// count, not the header, decides when a file is too large: Open stops
	// at the declared size and reports a format error, which would hide a
	// zip bomb behind a generic "corrupt" message.
	switch e.f.Method {
	case zip.Store:
		er.src = raw
	case zip.Deflate:
		if a.inflater == nil {
			a.inflater = flate.NewReader(raw)
		} else if err := a.inflater.(flate.Resetter).Reset(raw, nil); err != nil {
			return nil, &berth.Error{Code: berth.CodeInternal, Message: "resetting decompressor", Err: err}
		}
		er.src = a.inflater
	default:
		return nil, berth.Errorf(berth.CodeInvalid, "entry %q uses unsupported compression method %d", e.f.Name, e.f.Method)
	}
	er.budget = a.lim.MaxFileBytes
	er.perFile = true
	if left := a.lim.MaxUnpackedBytes - used; left < er.budget {
		er.budget, er.perFile = left, false
	}
	er.lim = a.lim
	return er, nil
}

// entryReader decompresses one entry, counting bytes against a budget and
// checking size and CRC-32 against the central directory at the end.
type entryReader struct {
	e       *entry
	src     io.Reader
	crc     hash.Hash32
	n       int64 // bytes produced so far
	budget  int64 // most bytes this entry may produce
	perFile bool  // whether budget is the per-file limit (for the message)
	lim     Limits
	err     error // sticky
}

func (r *entryReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	// Never ask the decompressor for more than one byte past the budget:
	// that is enough to know the budget is exceeded.
	if rem := r.budget - r.n; rem < int64(len(p))-1 {
		p = p[:rem+1]
	}
	n, err := r.src.Read(p)
	r.n += int64(n)
	r.crc.Write(p[:n])
	if r.n > r.budget {
		if r.perFile {
			r.err = berth.Errorf(berth.CodeTooLarge, "entry %q unpacks to more than the %d bytes allowed per file (its header claims %d)", r.e.f.Name, r.lim.MaxFileBytes, r.e.f.UncompressedSize64)
		} else {
			r.err = berth.Errorf(berth.CodeTooLarge, "package unpacks to more than the %d bytes allowed (at entry %q, whose header claims %d)", r.lim.MaxUnpackedBytes, r.e.f.Name, r.e.f.UncompressedSize64)
		}
		return 0, r.err
	}
	switch {
	case err == io.EOF:
		if uint64(r.n) != r.e.f.UncompressedSize64 {
			r.err = berth.Errorf(berth.CodeInvalid, "entry %q unpacks to %d bytes but its header declares %d", r.e.f.Name, r.n, r.e.f.UncompressedSize64)
			return 0, r.err
		}
		// Like archive/zip, a zero CRC in the directory means "not
		// recorded" (streamed entries whose descriptor was lost).
		if r.e.f.CRC32 != 0 && r.crc.Sum32() != r.e.f.CRC32 {
			r.err = berth.Errorf(berth.CodeInvalid, "entry %q is corrupt (checksum mismatch)", r.e.f.Name)
			return 0, r.err
		}
		r.err = io.EOF
		return n, io.EOF
	case err != nil:
		r.err = &berth.Error{Code: berth.CodeInvalid, Message: fmt.Sprintf("entry %q is corrupt", r.e.f.Name), Err: err}
		return 0, r.err
	}
	return n, nil
}

// readMeta reads and validates AgentCard.json and berth.json.
func (a *archive) readMeta() (Package, error) {
	card, err := a.readSmall(CardFile)
	if err != nil {
		return Package{}, err
	}
	cfgBytes, err := a.readSmall(ConfigFile)
	if err != nil {
		return Package{}, err
	}
	p, err := parseCard(card)
	if err != nil {
		return Package{}, err
	}
	if p.Config, err = ParseConfig(cfgBytes); err != nil {
		return Package{}, err
	}
	return p, nil
}

// readSmall reads a metadata file at the package root.
func (a *archive) readSmall(name string) ([]byte, error) {
	e, ok := a.byName[name]
	if !ok {
		for _, d := range a.dirs {
			if d == name {
				return nil, berth.Errorf(berth.CodeInvalid, "%s is a directory; it must be a file at the package root", name)
			}
		}
		if other, ok := a.elsewhere[name]; ok {
			return nil, berth.Errorf(berth.CodeInvalid, "package has no %s at its root (found %q; it must be at the zip root or in its single top-level folder)", name, other)
		}
		return nil, berth.Errorf(berth.CodeInvalid, "package has no %s at its root", name)
	}
	if e.f.UncompressedSize64 > maxMetaBytes {
		return nil, berth.Errorf(berth.CodeTooLarge, "%s is %d bytes, more than the %d allowed", name, e.f.UncompressedSize64, maxMetaBytes)
	}
	lim := a.lim
	lim.MaxFileBytes = min(lim.MaxFileBytes, maxMetaBytes)
	small := &archive{lim: lim}
	r, err := small.openEntry(e, 0)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
