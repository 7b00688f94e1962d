//go:build !linux

package flowcut

import "errors"

var errNotLinux = errors.New("conntrack needs Linux")

// Available reports that conntrack cannot be reached outside Linux.
func Available() error { return errNotLinux }

// Cut fails outside Linux.
func Cut(v6 bool, keep func(Flow) bool) (uint64, error) { return 0, errNotLinux }
