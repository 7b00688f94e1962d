//go:build !linux

package main

import "errors"

// conntrackTable stands in for the Linux conntrack table elsewhere.
type conntrackTable struct{}

var errNotLinux = errors.New("conntrack needs Linux")

func (conntrackTable) available() error { return errNotLinux }

func (conntrackTable) cut(family, func(flow) bool) (uint64, error) { return 0, errNotLinux }
