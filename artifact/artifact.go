// Package artifact reads agent packages (DESIGN.md §2): zip files whose root,
// or whose single top-level folder, holds AgentCard.json, berth.json and the
// agent's code.
//
// Packages come from users and are treated as hostile. Every entry is checked
// before anything is written: paths must stay inside the package root, only
// regular files and directories are allowed, names must be unique, and entry
// counts and unpacked sizes are bounded by Limits. Sizes declared in the zip
// are checked up front but never trusted: bytes are counted while they are
// decompressed, so a zip bomb is stopped as soon as it exceeds a limit.
package artifact

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/berthhq/berth"
)

// Limits bounds what a package may unpack to. A zero or negative field means
// the DefaultLimits value for that field.
type Limits struct {
	// MaxEntries is the most zip entries (files, directories and ignored
	// junk such as __MACOSX/) a package may have.
	MaxEntries int
	// MaxUnpackedBytes is the most bytes all files together may unpack to.
	MaxUnpackedBytes int64
	// MaxFileBytes is the most bytes a single file may unpack to.
	MaxFileBytes int64
}

// DefaultLimits returns the limits used when none are configured: 10,000
// entries, 512 MiB unpacked in total and 256 MiB per file.
func DefaultLimits() Limits {
	return Limits{
		MaxEntries:       10_000,
		MaxUnpackedBytes: 512 << 20,
		MaxFileBytes:     256 << 20,
	}
}

// withDefaults fills unset fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxEntries <= 0 {
		l.MaxEntries = d.MaxEntries
	}
	if l.MaxUnpackedBytes <= 0 {
		l.MaxUnpackedBytes = d.MaxUnpackedBytes
	}
	if l.MaxFileBytes <= 0 {
		l.MaxFileBytes = d.MaxFileBytes
	}
	return l
}

// noLimits is used where the package was validated before (ZipToTarGz on a
// stored package): the structure is still checked, sizes are not capped.
var noLimits = Limits{
	MaxEntries:       math.MaxInt,
	MaxUnpackedBytes: math.MaxInt64,
	MaxFileBytes:     math.MaxInt64,
}

// Names of the two metadata files every package holds at its root.
const (
	CardFile   = "AgentCard.json"
	ConfigFile = "berth.json"
)

// Package is what Inspect learns about a valid package.
type Package struct {
	// Card is the AgentCard.json document as given (a JSON object).
	Card json.RawMessage
	// Name is the card's name, a valid agent slug.
	Name string
	// Version is the card's version (plain MAJOR.MINOR.PATCH), or "" if the
	// card has none.
	Version string
	// Description is the card's description, or "".
	Description string
	// Config is the parsed berth.json, with HealthPath defaulted to
	// berth.DefaultHealthPath.
	Config berth.Config
	// Digest is the hex SHA-256 of the zip bytes.
	Digest string
}

// Inspect validates the package held in the size bytes of r without writing
// anything, and returns its metadata. Every file is decompressed (and
// discarded) so that a package Inspect accepts also unpacks. Hostile or
// malformed packages get a *berth.Error with CodeInvalid, or CodeTooLarge
// when they exceed lim.
func Inspect(r io.ReaderAt, size int64, lim Limits) (Package, error) {
	a, err := open(r, size, lim.withDefaults())
	if err != nil {
		return Package{}, err
	}
	p, err := a.readMeta()
	if err != nil {
		return Package{}, err
	}
	if err := a.walk(func(e *entry, r io.Reader) error {
		_, err := io.Copy(io.Discard, r)
		return err
	}); err != nil {
		return Package{}, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		return Package{}, &berth.Error{Code: berth.CodeInternal, Message: "reading package", Err: err}
	}
	p.Digest = hex.EncodeToString(h.Sum(nil))
	return p, nil
}

// Unpack extracts the package root into dir, which must not exist yet; its
// parent must exist. It applies the same checks as Inspect. Extraction goes
// into a temporary sibling of dir that is renamed to dir at the end, so dir
// appears complete or not at all, and a failed Unpack leaves nothing behind.
// Files are written 0755 if any executable bit is set in the zip and 0644
// otherwise, directories 0755; nothing else of the zip's modes is used.
func Unpack(r io.ReaderAt, size int64, dir string, lim Limits) error {
	if _, err := os.Lstat(dir); err == nil {
		return berth.Errorf(berth.CodeConflict, "unpack target %s already exists", dir)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return &berth.Error{Code: berth.CodeInternal, Message: "checking unpack target", Err: err}
	}
	a, err := open(r, size, lim.withDefaults())
	if err != nil {
		return err
	}
	// Validate the metadata before creating anything, so that the common
	// failures (bad card, bad config) never touch the file system.
	if _, err := a.readMeta(); err != nil {
		return err
	}

	tmp, err := os.MkdirTemp(filepath.Dir(dir), "."+filepath.Base(dir)+".unpack-*")
	if err != nil {
		return writeError(err)
	}
	if err := a.extract(tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	// MkdirTemp creates the folder 0700; the version folder is an ordinary
	// 0755 directory like the ones inside it.
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return writeError(err)
	}
	// The rename must not reach the disk before what it names: after a
	// power loss dir is complete or absent, never a folder of empty files.
	if err := a.syncDirs(tmp); err != nil {
		os.RemoveAll(tmp)
		return writeError(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, statErr := os.Lstat(dir); statErr == nil {
			// Another Unpack to the same folder finished first.
			return &berth.Error{Code: berth.CodeConflict, Message: fmt.Sprintf("unpack target %s already exists", dir), Err: err}
		}
		return writeError(err)
	}
	// And the rename itself, or a power loss could undo it after the
	// version was recorded as unpacked.
	if err := syncDir(filepath.Dir(dir)); err != nil {
		os.RemoveAll(dir)
		return writeError(err)
	}
	return nil
}

// extract writes the package's directories and files under tmp. os.Root
// confines every operation to tmp, a second line of defence behind the path
// checks done by open.
func (a *archive) extract(tmp string) error {
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return writeError(err)
	}
	defer root.Close()
	for _, d := range a.dirs {
		if err := root.Mkdir(d, 0o755); err != nil {
			return writeError(err)
		}
		// Mkdir is subject to the umask; the mode must not depend on it.
		if err := root.Chmod(d, 0o755); err != nil {
			return writeError(err)
		}
	}
	return a.walk(func(e *entry, r io.Reader) error {
		perm := e.perm()
		// O_EXCL: open already rejected duplicates, but nothing may ever
		// overwrite a file that was written before.
		f, err := root.OpenFile(e.name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if err != nil {
			return writeError(err)
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			if isBerthError(err) {
				return err
			}
			return writeError(err)
		}
		if err := f.Chmod(perm); err != nil {
			f.Close()
			return writeError(err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return writeError(err)
		}
		if err := f.Close(); err != nil {
			return writeError(err)
		}
		return nil
	})
}

// syncDirs fsyncs the directories extract created under tmp, deepest
// first, then tmp itself, so their entries are on disk before tmp is
// renamed into place.
func (a *archive) syncDirs(tmp string) error {
	for i := len(a.dirs) - 1; i >= 0; i-- {
		if err := syncDir(filepath.Join(tmp, filepath.FromSlash(a.dirs[i]))); err != nil {
			return err
		}
	}
	return syncDir(tmp)
}

// syncDir fsyncs the directory at path.
func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ZipToTarGz writes the files of the package in the size bytes of r, with
// paths relative to the package root, to w as a gzip-compressed tar archive
// (for the download route). Directories come first, then files in zip order.
// The package's structure is checked as by Inspect, but its metadata and
// sizes are not: it is meant for packages that were validated when they were
// uploaded. An error found while streaming leaves w holding a truncated
// archive.
func ZipToTarGz(w io.Writer, r io.ReaderAt, size int64) error {
	a, err := open(r, size, noLimits)
	if err != nil {
		return err
	}
	zw := gzip.NewWriter(w)
	tw := tar.NewWriter(zw)
	for _, d := range a.dirs {
		hdr := &tar.Header{
			Typeflag: tar.TypeDir,
			Name:     d + "/",
			Mode:     0o755,
			ModTime:  a.dirTimes[d],
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return streamError(err)
		}
	}
	err = a.walk(func(e *entry, r io.Reader) error {
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     e.name,
			Mode:     int64(e.perm()),
			Size:     int64(e.f.UncompressedSize64),
			ModTime:  modTime(e.f.Modified),
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return streamError(err)
		}
		if _, err := io.Copy(tw, r); err != nil {
			if isBerthError(err) {
				return err
			}
			return streamError(err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return streamError(err)
	}
	if err := zw.Close(); err != nil {
		return streamError(err)
	}
	return nil
}

// modTime returns t for a tar header, or the Unix epoch when the zip entry
// has no usable time (tar cannot represent times before 1970 in its basic
// format, and such a time means "unknown" anyway).
func modTime(t time.Time) time.Time {
	if t.Before(time.Unix(0, 0)) {
		return time.Unix(0, 0).UTC()
	}
	return t
}

// writeError classifies a failure to write unpacked files.
func writeError(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return &berth.Error{Code: berth.CodeInsufficientStorage, Message: "not enough disk space to unpack the package", Err: err}
	}
	return &berth.Error{Code: berth.CodeInternal, Message: "unpacking package", Err: err}
}

// streamError classifies a failure to write the tar.gz stream.
func streamError(err error) error {
	return &berth.Error{Code: berth.CodeInternal, Message: "writing package archive", Err: err}
}

// isBerthError reports whether err already carries a *berth.Error (a
// validation failure raised while reading), which must reach the caller
// unchanged rather than be reclassified as a write failure.
func isBerthError(err error) bool {
	var be *berth.Error
	return errors.As(err, &be)
}
