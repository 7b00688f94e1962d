//go:build !linux

package snapshot

import (
	"context"
	"os"
	"runtime"
	"time"
)

// The collectors read Linux's /proc; elsewhere Take still builds a signed
// bundle, with every artifact but the clock and host recording this error.
var errUnsupported = "not supported on " + runtime.GOOS

func collectClock() (ClockRecord, []rawFile, []string) {
	now := time.Now()
	zone, off := now.Zone()
	return ClockRecord{
		SystemTime:       now.UTC(),
		SystemTimeUnixNS: now.UnixNano(),
		Timezone:         zone,
		UTCOffsetSeconds: off,
		TZ:               os.Getenv("TZ"),
	}, nil, []string{"monotonic and boot clocks: " + errUnsupported}
}

func readIdentity() (Identity, []rawFile, []string) {
	h, _ := os.Hostname()
	return Identity{Hostname: h}, nil, []string{"machine-id, boot_id, kernel: " + errUnsupported}
}

func collectHost(name string) (HostRecord, []rawFile, []string) {
	id, raws, errs := readIdentity()
	return HostRecord{Name: name, Identity: id, OSRelease: map[string]string{}, DMI: map[string]string{}}, raws, errs
}

func (c *collection) run() {
	for _, s := range sources[2:] {
		a := c.art[s.name]
		a.errorf("%s", errUnsupported)
		a.close()
	}
}

// WarmHashes does nothing where executables are not hashed.
func WarmHashes(context.Context) {}

// CloudIdentity knows no cloud outside Linux.
func CloudIdentity() (provider, instanceID string) { return "", "" }
