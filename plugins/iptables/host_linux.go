package main

import (
	"errors"
	"io/fs"
	"os"
)

// ifInet6 lists the host's IPv6 addresses; it is absent when the kernel has
// no IPv6 (or it is disabled at boot). It is per network namespace.
const ifInet6 = "/proc/net/if_inet6"

// hostIPv6Addr returns an IPv6 address of the host other than loopback, or ""
// when it has none.
func hostIPv6Addr() (string, error) {
	data, err := os.ReadFile(ifInet6)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return firstIPv6(data), nil
}
