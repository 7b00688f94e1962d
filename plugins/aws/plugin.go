package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/cordon-ir/cordon/pkg/cloud"
)

// Version is the plugin's version, as Info reports it.
var Version = "dev"

// Options configure a Plugin.
type Options struct {
	// Logger receives one line per change made at AWS; nil discards.
	Logger *slog.Logger
	// Config loads the SDK configuration for a region ("" when the
	// instance names none). Nil loads it with config.LoadDefaultConfig:
	// the SDK's standard chain for credentials and region (environment,
	// shared profile, web identity, container or instance role).
	Config func(ctx context.Context, region string) (aws.Config, error)
	// Endpoint, when set, is the EC2 endpoint called instead of the
	// region's (a test server). The SDK's own AWS_ENDPOINT_URL_EC2 works
	// too.
	Endpoint string
	// AutoScalingEndpoint, ELBEndpoint and IAMEndpoint likewise replace
	// the Auto Scaling, Elastic Load Balancing (v2) and IAM endpoints
	// (options Detach and RevokeSessions); the SDK's
	// AWS_ENDPOINT_URL_AUTO_SCALING, AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2
	// and AWS_ENDPOINT_URL_IAM work too.
	AutoScalingEndpoint string
	ELBEndpoint         string
	IAMEndpoint         string
}

// Plugin is the AWS cloud layer: it implements cloud.Layer with EC2 security
// groups. It serializes Isolate and Release, so that two orders never race
// on the same group or instance tag.
type Plugin struct {
	log      *slog.Logger
	load     func(ctx context.Context, region string) (aws.Config, error)
	endpoint string
	asEP     string
	elbEP    string
	iamEP    string

	mu      sync.Mutex // serializes Isolate and Release
	cmu     sync.Mutex // guards clients
	clients map[string]*ec2.Client
	cfgs    map[string]aws.Config
}

var _ cloud.Layer = (*Plugin)(nil)

// New returns a Plugin; it calls nothing at AWS until asked.
func New(o Options) *Plugin {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	load := o.Config
	if load == nil {
		load = defaultConfig
	}
	return &Plugin{
		log:      log.With("component", "cloud-aws"),
		load:     load,
		endpoint: o.Endpoint,
		asEP:     o.AutoScalingEndpoint,
		elbEP:    o.ELBEndpoint,
		iamEP:    o.IAMEndpoint,
		clients:  map[string]*ec2.Client{},
		cfgs:     map[string]aws.Config{},
	}
}

// defaultConfig loads the SDK's standard chain, with more patience for
// throttling than the SDK's three attempts: a containment order should
// outlast a burst of RequestLimitExceeded.
func defaultConfig(ctx context.Context, region string) (aws.Config, error) {
	opts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = 6
				o.MaxBackoff = 5 * time.Second
			})
		}),
	}
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	}
	return config.LoadDefaultConfig(ctx, opts...)
}

// client returns the EC2 client for a region, made once.
func (p *Plugin) client(ctx context.Context, region string) (*ec2.Client, error) {
	p.cmu.Lock()
	defer p.cmu.Unlock()
	if c := p.clients[region]; c != nil {
		return c, nil
	}
	cfg, err := p.load(ctx, region)
	if err != nil {
		return nil, fmt.Errorf("aws config: %w", err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("%w: no AWS region: give the instance's region or set AWS_REGION", cloud.ErrInvalid)
	}
	c := ec2.NewFromConfig(cfg, func(o *ec2.Options) {
		if p.endpoint != "" {
			o.BaseEndpoint = aws.String(p.endpoint)
		}
	})
	p.clients[region] = c
	p.cfgs[region] = cfg
	return c, nil
}

// config returns the SDK configuration client loaded for a region; client
// must have succeeded for it first.
func (p *Plugin) config(region string) aws.Config {
	p.cmu.Lock()
	defer p.cmu.Unlock()
	return p.cfgs[region]
}

// Info names the plugin.
func (p *Plugin) Info(context.Context) (cloud.Info, error) {
	return cloud.Info{Name: "cordon-plugin-aws", Version: Version, Provider: "aws"}, nil
}

// Lookup finds the instance and fills in its private addresses and the ids
// of its network interfaces, in attachment order.
func (p *Plugin) Lookup(ctx context.Context, inst cloud.Instance) (cloud.Instance, error) {
	c, err := p.client(ctx, inst.Region)
	if err != nil {
		return cloud.Instance{}, err
	}
	in, err := describeInstance(ctx, c, inst.ID)
	if err != nil {
		return cloud.Instance{}, err
	}
	out := inst
	out.Provider = "aws"
	out.PrivateIPs, out.Interfaces = nil, nil
	for _, n := range interfaces(in) {
		out.Interfaces = append(out.Interfaces, aws.ToString(n.NetworkInterfaceId))
		for _, a := range n.PrivateIpAddresses {
			if ip, err := netip.ParseAddr(aws.ToString(a.PrivateIpAddress)); err == nil {
				out.PrivateIPs = append(out.PrivateIPs, ip)
			}
		}
		for _, a := range n.Ipv6Addresses {
			if ip, err := netip.ParseAddr(aws.ToString(a.Ipv6Address)); err == nil {
				out.PrivateIPs = append(out.PrivateIPs, ip)
			}
		}
	}
	return out, nil
}

// describeInstance returns the instance, or ErrNotFound when EC2 has no
// such instance or it is terminated.
func describeInstance(ctx context.Context, c *ec2.Client, id string) (types.Instance, error) {
	if id == "" {
		return types.Instance{}, fmt.Errorf("%w: no instance id", cloud.ErrInvalid)
	}
	out, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return types.Instance{}, apiError(err)
	}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			if aws.ToString(in.InstanceId) != id {
				continue
			}
			if in.State != nil && (in.State.Name == types.InstanceStateNameTerminated || in.State.Name == types.InstanceStateNameShuttingDown) {
				return types.Instance{}, fmt.Errorf("%w: %s is %s", cloud.ErrNotFound, id, in.State.Name)
			}
			return in, nil
		}
	}
	return types.Instance{}, fmt.Errorf("%w: %s", cloud.ErrNotFound, id)
}

// interfaces returns the instance's network interfaces by device index.
func interfaces(in types.Instance) []types.InstanceNetworkInterface {
	ns := slices.Clone(in.NetworkInterfaces)
	slices.SortStableFunc(ns, func(a, b types.InstanceNetworkInterface) int {
		return int(deviceIndex(a)) - int(deviceIndex(b))
	})
	return ns
}

func deviceIndex(n types.InstanceNetworkInterface) int32 {
	if n.Attachment == nil {
		return 0
	}
	return aws.ToInt32(n.Attachment.NetworkCardIndex)*1000 + aws.ToInt32(n.Attachment.DeviceIndex)
}

func groupIDs(gs []types.GroupIdentifier) []string {
	ids := make([]string, 0, len(gs))
	for _, g := range gs {
		ids = append(ids, aws.ToString(g.GroupId))
	}
	return ids
}

// sameSet reports whether a and b hold the same ids, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// apiError wraps an SDK error with the cloud sentinel a caller branches on,
// naming the EC2 action; the SDK's own text (status, request id, the
// provider's code and message) follows. The original stays reachable with
// errors.As.
func apiError(err error) error {
	return serviceError("ec2", err)
}

// serviceError is apiError for the service whose IAM prefix is svc
// ("autoscaling", "elasticloadbalancing", "iam").
func serviceError(svc string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	op := svc
	var oe *smithy.OperationError
	if errors.As(err, &oe) {
		op = oe.Operation()
	}
	var sentinel error
	switch code := errorCode(err); {
	case code == "UnauthorizedOperation" || code == "AccessDenied" || code == "AccessDeniedException" ||
		code == "AuthFailure" || code == "OptInRequired":
		sentinel = cloud.ErrDenied
	case isThrottle(code):
		sentinel = cloud.ErrThrottled
	case code == "InvalidInstanceID.NotFound" || code == "InvalidNetworkInterfaceID.NotFound" || code == "NoSuchEntity":
		sentinel = cloud.ErrNotFound
	case strings.HasSuffix(code, ".Malformed") || code == "InvalidParameterValue" ||
		code == "InvalidParameterCombination" || code == "RulesPerSecurityGroupLimitExceeded" ||
		code == "SecurityGroupLimitExceeded" || code == "InvalidInstanceID":
		sentinel = cloud.ErrInvalid
	}
	if sentinel == nil {
		return fmt.Errorf("%s:%s: %w", svc, op, err)
	}
	return fmt.Errorf("%w (%s:%s): %w", sentinel, svc, op, err)
}

func isThrottle(code string) bool {
	_, ok := retry.DefaultThrottleErrorCodes[code]
	return ok
}

// errorCode is the EC2 error code in err, "" when there is none.
func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}
