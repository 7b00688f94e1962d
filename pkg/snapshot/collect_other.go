//go:build !linux

package snapshot

import (
	"context"
	"os"
	"runtime"
	"time"
)

// The collectors read Linux's /proc; elsewhere Take still builds a signed
// bundle, with every artifact but the clock recording this error.
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

func collectConnections(context.Context) collected {
	return collected{records: []ConnectionRecord{}, errs: []string{errUnsupported}}
}

func collectProcesses(context.Context, time.Time) collected {
	return collected{records: []ProcessRecord{}, errs: []string{errUnsupported}}
}
