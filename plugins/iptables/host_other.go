//go:build !linux

package main

import "errors"

// hostIPv6Addr cannot tell outside Linux; callers then take the host as
// having IPv6.
func hostIPv6Addr() (string, error) { return "", errors.New("needs Linux") }

// legacyTablesInUse finds none outside Linux.
func legacyTablesInUse() string { return "" }
