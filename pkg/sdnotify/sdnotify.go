// Package sdnotify tells systemd how a daemon of Cordon's is doing, through
// the notification socket of sd_notify(3) (go-systemd's daemon package):
// that it is ready (Type=notify units), what it is doing (STATUS=), and
// that it is alive (WatchdogSec=).
//
// Outside systemd (NOTIFY_SOCKET unset) every call does nothing, so the
// daemons run the same by hand and in tests.
package sdnotify

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Ready tells systemd that the daemon has started (READY=1) and sets the
// status line systemctl status shows. It reports whether systemd was told.
func Ready(status string) (bool, error) {
	return daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS="+status)
}

// Status sets the status line systemctl status shows.
func Status(status string) {
	daemon.SdNotify(false, "STATUS="+status)
}

// Stopping tells systemd the daemon is shutting down (STOPPING=1).
func Stopping() {
	daemon.SdNotify(false, daemon.SdNotifyStopping)
}

// Watchdog keeps systemd's watchdog fed (WATCHDOG=1) every third of the
// interval systemd asks for (WATCHDOG_USEC, set from the unit's
// WatchdogSec=) on which healthy returns nil within that third. While it
// fails or does not answer, Watchdog does not feed the watchdog and logs
// why (once): if that lasts the whole interval, systemd kills the daemon
// and, with Restart=, starts it again. Watchdog returns when ctx ends, at
// once when systemd set no watchdog.
func Watchdog(ctx context.Context, log *slog.Logger, healthy func(context.Context) error) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog settings not understood; not feeding it", "err", err)
		return
	}
	if interval <= 0 {
		return
	}
	every := interval / 3
	log.Debug("feeding systemd's watchdog", "interval", interval)
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hctx, cancel := context.WithTimeout(ctx, every)
		err := healthy(hctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !failing {
				log.Error("unhealthy: not feeding systemd's watchdog, which restarts the daemon if this lasts", "err", err, "interval", interval)
			}
			failing = true
			continue
		}
		if failing {
			log.Info("healthy again: feeding systemd's watchdog")
			failing = false
		}
		daemon.SdNotify(false, daemon.SdNotifyWatchdog)
	}
}
