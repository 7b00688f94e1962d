package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	compute "cloud.google.com/go/compute/apiv1"
	"cloud.google.com/go/compute/apiv1/computepb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"

	"github.com/cordon-ir/cordon/pkg/cloud"
)

// Version is the plugin's version, as Info reports it.
var Version = "dev"

// Options configure a Plugin.
type Options struct {
	// Logger receives one line per change made at Google Cloud; nil
	// discards.
	Logger *slog.Logger
	// Endpoint, when set, is the Compute Engine endpoint called instead of
	// https://compute.googleapis.com: a test server or a private endpoint.
	Endpoint string
	// Project is the project of an instance that names none; empty means
	// the instance must name it.
	Project string
	// ClientOptions are added to the SDK clients' own (tests use
	// option.WithoutAuthentication). Without them, the clients take
	// Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS,
	// gcloud's user or workload identity federation file, or the metadata
	// server's service account (GKE workload identity, a VM's account).
	ClientOptions []option.ClientOption
	// Retry bounds the retries of a call that Compute Engine refuses for
	// rate (HTTP 429, or 403 rateLimitExceeded); zero values take the
	// defaults (6 attempts, backoff from 500 ms up to 8 s).
	Retry Retry
}

// Retry is how a refused call is tried again.
type Retry struct {
	Attempts     int
	Initial, Max time.Duration
}

func (r Retry) withDefaults() Retry {
	if r.Attempts <= 0 {
		r.Attempts = 6
	}
	if r.Initial <= 0 {
		r.Initial = 500 * time.Millisecond
	}
	if r.Max <= 0 {
		r.Max = 8 * time.Second
	}
	return r
}

// Plugin is the Google Cloud layer: it implements cloud.Layer with VPC
// firewall rules that target a network tag. It serializes Isolate and
// Release, so that two orders never race on one instance's tags.
type Plugin struct {
	log      *slog.Logger
	endpoint string
	project  string
	copts    []option.ClientOption
	retry    Retry

	mu  sync.Mutex // serializes Isolate and Release
	cmu sync.Mutex // guards the clients
	c   *clients
}

// clients are the SDK's REST clients, made once. Each waits on its own
// operations (zone operations for instances, global ones for firewalls).
type clients struct {
	instances *compute.InstancesClient
	firewalls *compute.FirewallsClient
}

var _ cloud.Layer = (*Plugin)(nil)

// New returns a Plugin; it calls nothing at Google Cloud until asked.
func New(o Options) *Plugin {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{
		log:      log.With("component", "cloud-gcp"),
		endpoint: o.Endpoint,
		project:  o.Project,
		copts:    o.ClientOptions,
		retry:    o.Retry.withDefaults(),
	}
}

// clients makes the SDK clients on first use.
func (p *Plugin) clients(ctx context.Context) (*clients, error) {
	p.cmu.Lock()
	defer p.cmu.Unlock()
	if p.c != nil {
		return p.c, nil
	}
	// The SDK's own debug log (GOOGLE_SDK_GO_LOGGING_LEVEL) would write
	// request and response bodies, the token exchange's included, into
	// the controller's log: it is off here whatever the environment says.
	opts := []option.ClientOption{option.WithLogger(slog.New(slog.DiscardHandler))}
	if p.endpoint != "" {
		opts = append(opts, option.WithEndpoint(p.endpoint))
	}
	opts = append(opts, p.copts...)
	ic, err := compute.NewInstancesRESTClient(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("gcp client: %w", err)
	}
	fc, err := compute.NewFirewallsRESTClient(ctx, opts...)
	if err != nil {
		ic.Close()
		return nil, fmt.Errorf("gcp client: %w", err)
	}
	p.c = &clients{instances: ic, firewalls: fc}
	return p.c, nil
}

// Info names the plugin.
func (p *Plugin) Info(context.Context) (cloud.Info, error) {
	return cloud.Info{Name: "cordon-plugin-gcp", Version: Version, Provider: "gcp"}, nil
}

// ref locates an instance: its project, zone and name.
type ref struct {
	project, zone, name string
}

func (r ref) String() string {
	return "projects/" + r.project + "/zones/" + r.zone + "/instances/" + r.name
}

var (
	// A Compute Engine resource name (RFC 1035), as instances are named.
	nameRE = regexp.MustCompile(`^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`)
	// A zone ("europe-west1-b") or a project id, domain-scoped ones too
	// ("example.com:proj").
	zoneRE    = regexp.MustCompile(`^[a-z][-a-z0-9]{0,62}$`)
	projectRE = regexp.MustCompile(`^([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$`)
)

// refOf checks the instance's name, zone and project; ErrInvalid when one
// is missing or malformed.
func (p *Plugin) refOf(inst cloud.Instance) (ref, error) {
	r := ref{project: inst.Project, zone: inst.Zone, name: inst.ID}
	if r.project == "" {
		r.project = p.project
	}
	switch {
	case !nameRE.MatchString(r.name):
		return r, fmt.Errorf("%w: %q is not a Compute Engine instance name", cloud.ErrInvalid, r.name)
	case !zoneRE.MatchString(r.zone):
		return r, fmt.Errorf("%w: instance %s: no zone, or a malformed one (%q)", cloud.ErrInvalid, r.name, r.zone)
	case r.project == "":
		return r, fmt.Errorf("%w: instance %s: no project: give the instance's project or set GOOGLE_CLOUD_PROJECT", cloud.ErrInvalid, r.name)
	case !projectRE.MatchString(r.project):
		return r, fmt.Errorf("%w: instance %s: malformed project %q", cloud.ErrInvalid, r.name, r.project)
	}
	return r, nil
}

// Lookup finds the instance and fills in its interfaces' names (nic0, …)
// and their internal addresses, IPv4 (networkIP) then IPv6 (ipv6Address),
// in interface order.
func (p *Plugin) Lookup(ctx context.Context, inst cloud.Instance) (cloud.Instance, error) {
	r, err := p.refOf(inst)
	if err != nil {
		return cloud.Instance{}, err
	}
	c, err := p.clients(ctx)
	if err != nil {
		return cloud.Instance{}, err
	}
	in, err := p.getInstance(ctx, c, r)
	if err != nil {
		return cloud.Instance{}, err
	}
	out := inst
	out.Provider, out.Project = "gcp", r.project
	out.PrivateIPs, out.Interfaces = nil, nil
	for _, n := range in.GetNetworkInterfaces() {
		out.Interfaces = append(out.Interfaces, n.GetName())
		for _, s := range []string{n.GetNetworkIP(), n.GetIpv6Address()} {
			if ip, err := netip.ParseAddr(s); err == nil {
				out.PrivateIPs = append(out.PrivateIPs, ip)
			}
		}
	}
	return out, nil
}

// getInstance reads the instance; ErrNotFound when Compute Engine has none
// of that name in that zone.
func (p *Plugin) getInstance(ctx context.Context, c *clients, r ref) (*computepb.Instance, error) {
	in, err := c.instances.Get(ctx, &computepb.GetInstanceRequest{Project: r.project, Zone: r.zone, Instance: r.name}, p.callOpts(true)...)
	if err != nil {
		return nil, apiError(err, "compute.instances.get", r.String())
	}
	return in, nil
}

// callOpts retry a call refused for rate, and a read also when the service
// is unavailable (a write that met a 503 may have been carried out).
func (p *Plugin) callOpts(read bool) []gax.CallOption {
	return []gax.CallOption{gax.WithRetry(func() gax.Retryer {
		return &retryer{
			left: p.retry.Attempts,
			read: read,
			bo:   gax.Backoff{Initial: p.retry.Initial, Max: p.retry.Max, Multiplier: 2},
		}
	})}
}

type retryer struct {
	left int // attempts left, the one that failed included
	read bool
	bo   gax.Backoff
}

func (r *retryer) Retry(err error) (time.Duration, bool) {
	if r.left <= 1 {
		return 0, false
	}
	code, _ := errorCode(err)
	if isThrottle(err) || (r.read && (code == 503 || code == 504)) {
		r.left--
		return r.bo.Pause(), true
	}
	return 0, false
}

// errorCode is the HTTP status and the first error reason Compute Engine
// answered with; zero when err is not an answer of the API.
func errorCode(err error) (int, string) {
	var ge *googleapi.Error
	if !errors.As(err, &ge) {
		return 0, ""
	}
	reason := ""
	if len(ge.Errors) > 0 {
		reason = ge.Errors[0].Reason
	}
	return ge.Code, reason
}

// isThrottle: Compute Engine refuses for rate with 429, or with 403 and
// reason rateLimitExceeded or userRateLimitExceeded (the API's error
// reasons, cloud.google.com/compute/docs/api/errors).
func isThrottle(err error) bool {
	code, reason := errorCode(err)
	return code == 429 || (code == 403 && (reason == "rateLimitExceeded" || reason == "userRateLimitExceeded"))
}

// permissions are the IAM permissions each method needs (IAM.md).
var permissions = map[string]string{
	"compute.instances.get":        "compute.instances.get",
	"compute.instances.setTags":    "compute.instances.setTags",
	"compute.instances.setLabels":  "compute.instances.setLabels",
	"compute.firewalls.list":       "compute.firewalls.list",
	"compute.firewalls.insert":     "compute.firewalls.create and compute.networks.updatePolicy",
	"compute.firewalls.update":     "compute.firewalls.update and compute.networks.updatePolicy",
	"compute.zoneOperations.get":   "compute.zoneOperations.get",
	"compute.globalOperations.get": "compute.globalOperations.get",
}

// apiError wraps an SDK error with the cloud sentinel a caller branches
// on, naming the API method, the permission it needs when denied, and the
// resource; the SDK's text (status, the API's message and reason)
// follows. The original stays reachable with errors.As.
func apiError(err error, method, resource string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	code, _ := errorCode(err)
	var sentinel error
	what := method
	switch {
	case isThrottle(err):
		sentinel = cloud.ErrThrottled
	case code == 401 || code == 403:
		sentinel = cloud.ErrDenied
		what = fmt.Sprintf("%s on %s, which needs %s", method, resource, permissions[method])
	case code == 404 && strings.HasPrefix(method, "compute.instances."):
		sentinel = cloud.ErrNotFound
		what = method + " " + resource
	case code == 400:
		sentinel = cloud.ErrInvalid
	}
	if sentinel == nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%w (%s): %w", sentinel, what, err)
}

// wait waits for a zonal or global operation to finish and returns its
// error, if it has one. An operation the API answers as DONE already is
// not polled.
func (p *Plugin) wait(ctx context.Context, op *compute.Operation, method, resource string) error {
	if !op.Done() {
		if err := op.Wait(ctx, p.callOpts(true)...); err != nil && !op.Done() {
			// The poll itself failed.
			poll := "compute.globalOperations.get"
			if op.Proto().GetZone() != "" {
				poll = "compute.zoneOperations.get"
			}
			return apiError(err, poll, resource)
		}
	}
	return opError(op.Proto(), method, resource)
}

// opError is the error of a finished operation, nil when it succeeded.
// An operation that failed for a quota (QUOTA_EXCEEDED, the number of
// firewall rules of a project, say) is not a denial even though its HTTP
// status is 403.
func opError(pr *computepb.Operation, method, resource string) error {
	code := int(pr.GetHttpErrorStatusCode())
	errs := pr.GetError().GetErrors()
	if len(errs) == 0 && (code == 0 || code/100 == 2) {
		return nil
	}
	var msgs []string
	quota := false
	for _, e := range errs {
		msgs = append(msgs, e.GetCode()+": "+e.GetMessage())
		quota = quota || e.GetCode() == "QUOTA_EXCEEDED"
	}
	ge := &googleapi.Error{Code: code, Message: strings.TrimPrefix(pr.GetHttpErrorMessage()+": "+strings.Join(msgs, "; "), ": ")}
	if quota {
		return fmt.Errorf("%s on %s: quota exceeded: %w", method, resource, ge)
	}
	return apiError(ge, method, resource)
}

// envEndpoint is the endpoint override of main: CORDON_GCP_ENDPOINT, for
// tests and private endpoints (Private Service Connect), used only when set.
func envEndpoint() string { return os.Getenv("CORDON_GCP_ENDPOINT") }
