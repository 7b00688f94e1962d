package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azcloud "github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v6"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"

	"github.com/cordon-ir/cordon/pkg/cloud"
)

// Version is the plugin's version, as Info reports it.
var Version = "dev"

// Options configure a Plugin.
type Options struct {
	// Logger receives one line per change made at Azure; nil discards.
	Logger *slog.Logger
	// Credential authenticates to Azure Resource Manager. Nil uses
	// azidentity.NewDefaultAzureCredential: the SDK's standard chain
	// (environment, workload identity, managed identity, Azure CLI).
	Credential azcore.TokenCredential
	// ClientOptions configure the SDK's clients (transport, cloud, retry).
	// Nil, or a zero Retry, gets the plugin's retry policy: five retries,
	// honouring Retry-After up to a minute. Resource provider
	// registration is always off: the plugin registers nothing.
	ClientOptions *arm.ClientOptions
	// Endpoint, when set, is the Resource Manager endpoint called instead
	// of the cloud's (a test server).
	Endpoint string
	// PollFrequency is how often a long-running operation is polled when
	// Azure gives no Retry-After; zero means 2 s (the SDK's minimum is 1 s
	// outside tests).
	PollFrequency time.Duration
}

// Plugin is the Azure cloud layer: it implements cloud.Layer with a
// quarantine network security group on the VM's network interfaces. It
// serializes Isolate and Release, so that two orders never race on the
// same NIC or NSG.
type Plugin struct {
	log      *slog.Logger
	copts    arm.ClientOptions
	poll     time.Duration
	cred     azcore.TokenCredential
	credOnce sync.Once
	credErr  error

	mu      sync.Mutex // serializes Isolate and Release
	cmu     sync.Mutex // guards clients
	clients map[string]*clients
}

var _ cloud.Layer = (*Plugin)(nil)

// clients are the SDK clients of one subscription.
type clients struct {
	vms  *armcompute.VirtualMachinesClient
	nics *armnetwork.InterfacesClient
	nsgs *armnetwork.SecurityGroupsClient
	// arm is the bare pipeline, for the Tags API.
	arm *arm.Client
}

// New returns a Plugin; it calls nothing at Azure until asked.
func New(o Options) *Plugin {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var copts arm.ClientOptions
	if o.ClientOptions != nil {
		copts = *o.ClientOptions.Clone()
	}
	if r := copts.Retry; r.MaxRetries == 0 && r.RetryDelay == 0 && r.MaxRetryDelay == 0 && r.TryTimeout == 0 && r.StatusCodes == nil && r.ShouldRetry == nil {
		// A containment order should outlast a burst of throttling.
		copts.Retry = policy.RetryOptions{MaxRetries: 5, RetryDelay: time.Second, MaxRetryDelay: time.Minute}
	}
	copts.DisableRPRegistration = true
	if o.Endpoint != "" {
		cfg := copts.Cloud
		if len(cfg.Services) == 0 {
			cfg = azcloud.AzurePublic
		}
		svc := map[azcloud.ServiceName]azcloud.ServiceConfiguration{}
		for k, v := range cfg.Services {
			svc[k] = v
		}
		rm := svc[azcloud.ResourceManager]
		rm.Endpoint = o.Endpoint
		svc[azcloud.ResourceManager] = rm
		cfg.Services = svc
		copts.Cloud = cfg
	}
	poll := o.PollFrequency
	if poll == 0 {
		poll = 2 * time.Second
	}
	return &Plugin{
		log:     log.With("component", "cloud-azure"),
		copts:   copts,
		poll:    poll,
		cred:    o.Credential,
		clients: map[string]*clients{},
	}
}

// credential returns the configured credential, or the default chain,
// made once.
func (p *Plugin) credential() (azcore.TokenCredential, error) {
	p.credOnce.Do(func() {
		if p.cred != nil {
			return
		}
		p.cred, p.credErr = azidentity.NewDefaultAzureCredential(nil)
	})
	if p.credErr != nil {
		return nil, fmt.Errorf("%w: no usable Azure credential: %v", cloud.ErrDenied, p.credErr)
	}
	return p.cred, nil
}

// client returns the clients of a subscription, made once.
func (p *Plugin) client(sub string) (*clients, error) {
	p.cmu.Lock()
	defer p.cmu.Unlock()
	if c := p.clients[sub]; c != nil {
		return c, nil
	}
	cred, err := p.credential()
	if err != nil {
		return nil, err
	}
	c := &clients{}
	if c.vms, err = armcompute.NewVirtualMachinesClient(sub, cred, &p.copts); err != nil {
		return nil, fmt.Errorf("azure compute client: %w", err)
	}
	if c.nics, err = armnetwork.NewInterfacesClient(sub, cred, &p.copts); err != nil {
		return nil, fmt.Errorf("azure network client: %w", err)
	}
	if c.nsgs, err = armnetwork.NewSecurityGroupsClient(sub, cred, &p.copts); err != nil {
		return nil, fmt.Errorf("azure network client: %w", err)
	}
	if c.arm, err = arm.NewClient("cordon-plugin-azure", moduleVersion(), cred, &p.copts); err != nil {
		return nil, fmt.Errorf("azure client: %w", err)
	}
	p.clients[sub] = c
	return c, nil
}

// semverRE is what the SDK accepts as a module version (in the
// User-Agent it sends).
var semverRE = regexp.MustCompile(`^v\d+\.\d+\.\d+(?:-[a-zA-Z0-9_.-]+)?$`)

var notSemverRE = regexp.MustCompile(`[^a-zA-Z0-9_.-]`)

// moduleVersion is Version as the SDK accepts it: "dev" becomes
// "v0.0.0-dev".
func moduleVersion() string {
	if semverRE.MatchString(Version) {
		return Version
	}
	return "v0.0.0-" + notSemverRE.ReplaceAllString(Version, "-")
}

// Info names the plugin.
func (p *Plugin) Info(context.Context) (cloud.Info, error) {
	return cloud.Info{Name: "cordon-plugin-azure", Version: Version, Provider: "azure"}, nil
}

// Lookup finds the VM and fills in its private addresses and the ids of
// its network interfaces, in the VM's order (the primary NIC first).
func (p *Plugin) Lookup(ctx context.Context, inst cloud.Instance) (cloud.Instance, error) {
	vm, c, err := p.vm(ctx, inst.ID)
	if err != nil {
		return cloud.Instance{}, err
	}
	nics, err := p.nics(ctx, c, vm)
	if err != nil {
		return cloud.Instance{}, err
	}
	out := inst
	out.Provider = "azure"
	out.Region = vm.location
	out.PrivateIPs, out.Interfaces = nil, nil
	for _, n := range nics {
		out.Interfaces = append(out.Interfaces, n.id)
		if n.nic.Properties == nil {
			continue
		}
		for _, ipc := range n.nic.Properties.IPConfigurations {
			if ipc == nil || ipc.Properties == nil || ipc.Properties.PrivateIPAddress == nil {
				continue
			}
			if ip, err := netip.ParseAddr(*ipc.Properties.PrivateIPAddress); err == nil {
				out.PrivateIPs = append(out.PrivateIPs, ip)
			}
		}
	}
	return out, nil
}

// vmRef is a VM as Isolate, Release and Status need it.
type vmRef struct {
	id, sub, rg, name, location string
	tags                        map[string]*string
	nicIDs                      []string
}

// vm parses a VM resource id and reads the VM: ErrInvalid for an id of
// another form, ErrNotFound when Azure has no such VM.
func (p *Plugin) vm(ctx context.Context, id string) (vmRef, *clients, error) {
	rid, err := arm.ParseResourceID(id)
	if err != nil || !strings.EqualFold(rid.ResourceType.String(), "Microsoft.Compute/virtualMachines") ||
		rid.SubscriptionID == "" || rid.ResourceGroupName == "" || rid.Name == "" {
		return vmRef{}, nil, fmt.Errorf("%w: instance id %q is not a VM resource id (/subscriptions/…/resourceGroups/…/providers/Microsoft.Compute/virtualMachines/…)",
			cloud.ErrInvalid, id)
	}
	c, err := p.client(rid.SubscriptionID)
	if err != nil {
		return vmRef{}, nil, err
	}
	resp, err := c.vms.Get(ctx, rid.ResourceGroupName, rid.Name, nil)
	if err != nil {
		return vmRef{}, nil, apiError("Microsoft.Compute/virtualMachines/read", "get VM "+rid.Name, err)
	}
	v := vmRef{id: id, sub: rid.SubscriptionID, rg: rid.ResourceGroupName, name: rid.Name, tags: resp.Tags}
	if resp.ID != nil {
		v.id = *resp.ID
	}
	if resp.Location != nil {
		v.location = *resp.Location
	}
	if pr := resp.Properties; pr != nil && pr.NetworkProfile != nil {
		var primary []string
		for _, r := range pr.NetworkProfile.NetworkInterfaces {
			if r == nil || r.ID == nil {
				continue
			}
			if r.Properties != nil && r.Properties.Primary != nil && *r.Properties.Primary {
				primary = append(primary, *r.ID)
			} else {
				v.nicIDs = append(v.nicIDs, *r.ID)
			}
		}
		v.nicIDs = append(primary, v.nicIDs...)
	}
	return v, c, nil
}

// nicRef is one of the VM's network interfaces as read.
type nicRef struct {
	id, rg, name string
	nic          armnetwork.Interface
}

// nsgID is the id of the NIC's NSG, "" when it has none.
func (n nicRef) nsgID() string {
	if pr := n.nic.Properties; pr != nil && pr.NetworkSecurityGroup != nil && pr.NetworkSecurityGroup.ID != nil {
		return *pr.NetworkSecurityGroup.ID
	}
	return ""
}

func (p *Plugin) nics(ctx context.Context, c *clients, vm vmRef) ([]nicRef, error) {
	out := make([]nicRef, 0, len(vm.nicIDs))
	for _, id := range vm.nicIDs {
		n, err := p.nic(ctx, c, id)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

func (p *Plugin) nic(ctx context.Context, c *clients, id string) (nicRef, error) {
	rid, err := arm.ParseResourceID(id)
	if err != nil {
		return nicRef{}, fmt.Errorf("%w: network interface id %q: %v", cloud.ErrInvalid, id, err)
	}
	resp, err := c.nics.Get(ctx, rid.ResourceGroupName, rid.Name, nil)
	if err != nil {
		return nicRef{}, apiError("Microsoft.Network/networkInterfaces/read", "get network interface "+rid.Name, err)
	}
	return nicRef{id: id, rg: rid.ResourceGroupName, name: rid.Name, nic: resp.Interface}, nil
}

// putNIC writes a NIC and waits for Azure to finish. changed is false
// only when Azure refused the request outright, so that the NIC is as it
// was; on any other error its state is unknown.
func (p *Plugin) putNIC(ctx context.Context, c *clients, n nicRef, nic armnetwork.Interface) (changed bool, err error) {
	poller, err := c.nics.BeginCreateOrUpdate(ctx, n.rg, n.name, nic, nil)
	if err != nil {
		var re *azcore.ResponseError
		refused := errors.As(err, &re) && re.StatusCode >= 400 && re.StatusCode < 500
		return !refused, apiError("Microsoft.Network/networkInterfaces/write", "update network interface "+n.name, err)
	}
	if _, err := poller.PollUntilDone(ctx, pollOptions(p.poll)); err != nil {
		return true, apiError("Microsoft.Network/networkInterfaces/write", "update network interface "+n.name+" (long-running operation)", err)
	}
	return true, nil
}

func pollOptions(d time.Duration) *runtime.PollUntilDoneOptions {
	return &runtime.PollUntilDoneOptions{Frequency: d}
}

// lastName is the last segment of a resource id, "" for "".
func lastName(id string) string {
	return id[strings.LastIndexByte(id, '/')+1:]
}

// apiErr is an Azure error: the sentinel a caller branches on, the RBAC
// action and the call, and Azure's code and message, kept short (the
// SDK's own text holds the whole response); Unwrap reaches both the
// sentinel and the SDK's *azcore.ResponseError.
type apiErr struct {
	kind   error
	action string
	call   string
	status int
	code   string
	msg    string
	err    error
}

func (e *apiErr) Error() string {
	var b strings.Builder
	if e.kind != nil {
		b.WriteString(e.kind.Error())
		b.WriteString(": ")
	}
	fmt.Fprintf(&b, "%s (%s): ", e.call, e.action)
	switch {
	case e.status >= 400:
		fmt.Fprintf(&b, "%d %s", e.status, e.code)
	case e.code != "":
		// A long-running operation that Azure accepted, then failed.
		fmt.Fprintf(&b, "operation failed: %s", e.code)
	default:
		b.WriteString(e.err.Error())
		return b.String()
	}
	if e.msg != "" {
		b.WriteString(": " + e.msg)
	}
	return b.String()
}

func (e *apiErr) Unwrap() []error {
	if e.kind == nil {
		return []error{e.err}
	}
	return []error{e.kind, e.err}
}

// actionRE finds the permission an AuthorizationFailed or
// LinkedAuthorizationFailed message names; the last one is the missing
// one ("has permission to perform action 'A' …; however, it does not have
// permission to perform action(s) 'B'").
var actionRE = regexp.MustCompile(`perform action(?:\(s\))? '([^']+)'`)

// apiError wraps an SDK error with the cloud sentinel a caller branches
// on: 404 is ErrNotFound, 401 and 403 ErrDenied (naming the permission
// Azure says is missing, else action), 429 after the SDK's retries
// ErrThrottled, 400 ErrInvalid. A credential that cannot get a token is
// ErrDenied too.
func apiError(action, call string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", call, err)
	}
	e := &apiErr{action: action, call: call, err: err}
	var re *azcore.ResponseError
	var af *azidentity.AuthenticationFailedError
	var ar *azidentity.AuthenticationRequiredError
	switch {
	case errors.As(err, &re):
		e.status, e.code = re.StatusCode, re.ErrorCode
		msg := errorMessage(re.RawResponse)
		switch {
		case re.StatusCode == http.StatusNotFound:
			e.kind = cloud.ErrNotFound
		case re.StatusCode == http.StatusUnauthorized || re.StatusCode == http.StatusForbidden:
			e.kind = cloud.ErrDenied
			if m := actionRE.FindAllStringSubmatch(msg, -1); len(m) > 0 {
				e.action = m[len(m)-1][1]
			}
		case re.StatusCode == http.StatusTooManyRequests:
			e.kind = cloud.ErrThrottled
		case re.StatusCode == http.StatusBadRequest:
			e.kind = cloud.ErrInvalid
		}
		if len(msg) > 400 {
			msg = msg[:400] + "…"
		}
		e.msg = msg
	case errors.As(err, &af), errors.As(err, &ar):
		e.kind = cloud.ErrDenied
	}
	return e
}

// errorMessage is the message of an ARM error body
// ({"error":{"code":…,"message":…}}), on one line.
func errorMessage(resp *http.Response) string {
	if resp == nil {
		return ""
	}
	b, err := runtime.Payload(resp)
	if err != nil {
		return ""
	}
	var body struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &body) != nil {
		return ""
	}
	return strings.Join(strings.Fields(body.Error.Message), " ")
}

// isStatus reports whether err is an Azure answer with that status.
func isStatus(err error, status int) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == status
}

// isCode reports whether err is an Azure answer with that error code.
func isCode(err error, code string) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && strings.EqualFold(re.ErrorCode, code)
}
