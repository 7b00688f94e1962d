package pluginproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
)

// Spec says which plugin executable to start and what it must serve.
type Spec struct {
	// Path is the executable.
	Path string
	// Name names the plugin in the log ("plugin.NAME").
	Name string
	// Handshake, PluginName and Plugin are the go-plugin handshake and the
	// one plugin the executable must serve.
	Handshake  plugin.HandshakeConfig
	PluginName string
	Plugin     plugin.Plugin
	// SHA256 pins the executable (see Pin); "" means no pin.
	SHA256 string
	// Env and SocketDir are passed to Command.
	Env       []string
	SocketDir string
	// StartTimeout bounds the handshake; 0 means 10 s.
	StartTimeout time.Duration
	// Log receives the plugin's log output; nil means os.Stderr.
	Log io.Writer
	// Logger, if set, takes the plugin's log output instead of Log, each
	// line a record with its fields as attributes (the plugin's lines then
	// reach the journal as the host's own do).
	Logger *slog.Logger
}

// StartError says that the executable ran but did not come up serving the
// plugin asked for: it exited, timed out, answered another handshake or
// served another plugin set. Stderr is the end of what the process wrote
// to its stderr, on one line (at most 1 KiB).
type StartError struct {
	Path   string
	Err    error
	Stderr string
}

func (e *StartError) Error() string {
	// go-plugin appends generic advice after a blank line ("This usually
	// means …"); keep its first paragraph, on one line.
	s, _, _ := strings.Cut(e.Err.Error(), "\nThis usually means")
	msg := "plugin " + e.Path + " did not start: " + strings.Join(strings.Fields(s), " ")
	if e.Stderr != "" {
		msg += "; stderr: " + e.Stderr
	}
	return msg
}

func (e *StartError) Unwrap() error { return e.Err }

// pluginLogger is go-plugin's logger for the plugin: text to log, or,
// with s.Logger, JSON lines turned into records of s.Logger.
func pluginLogger(s Spec, log io.Writer) hclog.Logger {
	opts := &hclog.LoggerOptions{Name: "plugin." + s.Name, Output: log, Level: hclog.Info}
	if s.Logger != nil {
		opts.Output = &slogWriter{log: s.Logger.With("plugin_name", s.Name)}
		opts.JSONFormat = true
		opts.DisableTime = true
		if s.Logger.Enabled(context.Background(), slog.LevelDebug) {
			opts.Level = hclog.Debug
		}
	}
	return hclog.New(opts)
}

// Start checks, starts and connects to the plugin s names, and dispenses
// the plugin it serves. Errors: a *NotFoundError when the executable is
// missing (from Check), Pin's error for a malformed pin,
// plugin.ErrChecksumsDoNotMatch (wrapped) when the executable does not
// match the pin, and a *StartError otherwise. On error no process is left.
func Start(s Spec) (*plugin.Client, any, error) {
	if err := Check(s.Path); err != nil {
		var nf *NotFoundError
		if errors.As(err, &nf) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("plugin %s: %w", s.Path, err)
	}
	secure, err := Pin(s.SHA256)
	if err != nil {
		return nil, nil, err
	}
	timeout := s.StartTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	log := s.Log
	if log == nil {
		log = os.Stderr
	}
	cmd, sock := Command(s.Path, s.Env, s.SocketDir)
	tail := &tailWriter{max: 1024}
	pc := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  s.Handshake,
		Plugins:          plugin.PluginSet{s.PluginName: s.Plugin},
		Cmd:              cmd,
		SecureConfig:     secure,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     timeout,
		UnixSocketConfig: sock,
		SkipHostEnv:      true, // cmd.Env already holds it
		Stderr:           tail,
		Logger:           pluginLogger(s, log),
	})
	rpc, err := pc.Client()
	if err != nil {
		// Kill waits for go-plugin's readers, so the tail is complete.
		pc.Kill()
		if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
			return nil, nil, fmt.Errorf("plugin %s: %w", s.Path, err)
		}
		return nil, nil, &StartError{Path: s.Path, Err: err, Stderr: tail.said()}
	}
	raw, err := rpc.Dispense(s.PluginName)
	if err != nil {
		pc.Kill()
		return nil, nil, &StartError{Path: s.Path, Err: err}
	}
	return pc, raw, nil
}

// tailWriter keeps the last max bytes written to it: the end of a plugin's
// stderr, for the error when it does not start.
type tailWriter struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	if over := len(w.b) - w.max; over > 0 {
		w.b = append(w.b[:0], w.b[over:]...)
	}
	return len(p), nil
}

// said returns the kept output on one line.
func (w *tailWriter) said() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(strings.Fields(string(w.b)), " ")
}
