//go:build !unix

package server

import "os"

// lockDataDir does not lock on systems without flock: one server per data
// dir is then up to whoever starts them.
func lockDataDir(string) (*os.File, error) { return nil, nil }
