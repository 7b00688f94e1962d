package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cordon-ir/cordon/pkg/firewall/proto"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// Handshake is shared by every Cordon host and plugin. ProtocolVersion changes
// when the Firewall service changes incompatibly; the magic cookie only keeps
// a plugin from being run by hand by mistake (it is not a security measure).
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "CORDON_PLUGIN",
	MagicCookieValue: "contain-7f1c1b0e-firewall",
}

// PluginName is the key of the Firewall plugin in go-plugin's plugin map.
const PluginName = "firewall"

// GRPCPlugin adapts a Firewall to go-plugin. Plugins set Impl; hosts leave it
// nil.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Firewall
}

// GRPCServer registers the Firewall service on the plugin's gRPC server.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterFirewallServer(s, &grpcServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a Firewall that calls the plugin over c.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &grpcClient{c: pb.NewFirewallClient(c)}, nil
}

// Serve runs impl as a go-plugin plugin; it is the whole main of a plugin
// binary and returns when the host closes the plugin.
func Serve(impl Firewall) {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugin.PluginSet{PluginName: &GRPCPlugin{Impl: impl}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}

// grpcServer is the plugin side: it decodes requests, calls the
// implementation and encodes errors as gRPC status codes.
type grpcServer struct {
	pb.UnimplementedFirewallServer
	impl Firewall
}

func (s *grpcServer) Info(ctx context.Context, _ *pb.InfoRequest) (*pb.InfoResponse, error) {
	i, err := s.impl.Info(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.InfoResponse{Name: i.Name, Version: i.Version, Capabilities: i.Capabilities}, nil
}

func (s *grpcServer) Isolate(ctx context.Context, r *pb.IsolateRequest) (*pb.IsolateResponse, error) {
	p, err := policyFromProto(r.GetPolicy())
	if err != nil {
		return nil, toStatus(err)
	}
	a, err := s.impl.Isolate(ctx, p, r.GetOrderId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.IsolateResponse{Digest: a.Digest, Rules: a.Rules, FlowsCut: a.FlowsCut}, nil
}

func (s *grpcServer) Release(ctx context.Context, r *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	n, err := s.impl.Release(ctx, r.GetOrderId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReleaseResponse{Removed: uint64(n)}, nil
}

func (s *grpcServer) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	st, err := s.impl.Status(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	r := &pb.StatusResponse{Isolated: st.Isolated, Digest: st.Digest, Rules: st.Rules, Partial: st.Partial}
	if st.Policy != nil {
		r.Policy = policyToProto(*st.Policy)
	}
	return r, nil
}

// grpcClient is the host side of the Firewall service.
type grpcClient struct{ c pb.FirewallClient }

func (c *grpcClient) Info(ctx context.Context) (Info, error) {
	r, err := c.c.Info(ctx, &pb.InfoRequest{})
	if err != nil {
		return Info{}, fromStatus(err)
	}
	return Info{Name: r.GetName(), Version: r.GetVersion(), Capabilities: r.GetCapabilities()}, nil
}

func (c *grpcClient) Isolate(ctx context.Context, p policy.Policy, orderID string) (Applied, error) {
	r, err := c.c.Isolate(ctx, &pb.IsolateRequest{Policy: policyToProto(p), OrderId: orderID})
	if err != nil {
		return Applied{}, fromStatus(err)
	}
	return Applied{Digest: r.GetDigest(), Rules: r.GetRules(), FlowsCut: r.GetFlowsCut()}, nil
}

func (c *grpcClient) Release(ctx context.Context, orderID string) (int, error) {
	r, err := c.c.Release(ctx, &pb.ReleaseRequest{OrderId: orderID})
	if err != nil {
		return 0, fromStatus(err)
	}
	return int(r.GetRemoved()), nil
}

func (c *grpcClient) Status(ctx context.Context) (Status, error) {
	r, err := c.c.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return Status{}, fromStatus(err)
	}
	st := Status{Isolated: r.GetIsolated(), Digest: r.GetDigest(), Rules: r.GetRules(), Partial: r.GetPartial()}
	if r.GetPolicy() != nil {
		p, err := policyFromProto(r.GetPolicy())
		if err != nil {
			return st, fmt.Errorf("plugin status: policy read back: %w", err)
		}
		st.Policy = &p
	}
	return st, nil
}

func policyToProto(p policy.Policy) *pb.Policy {
	out := &pb.Policy{}
	for _, e := range p.Controllers {
		out.Controllers = append(out.Controllers, &pb.Endpoint{Addr: e.Addr.String(), Port: uint32(e.Port)})
	}
	for _, a := range p.Allow {
		out.Allow = append(out.Allow, a.String())
	}
	for _, a := range p.DNS {
		out.Dns = append(out.Dns, a.String())
	}
	out.Dhcp = p.DHCP
	return out
}

func policyFromProto(in *pb.Policy) (policy.Policy, error) {
	var p policy.Policy
	for _, e := range in.GetControllers() {
		a, err := netip.ParseAddr(e.GetAddr())
		if err != nil {
			return p, fmt.Errorf("%w: controller address %q: %v", ErrInvalidPolicy, e.GetAddr(), err)
		}
		if e.GetPort() == 0 || e.GetPort() > 65535 {
			return p, fmt.Errorf("%w: controller port %d out of range", ErrInvalidPolicy, e.GetPort())
		}
		p.Controllers = append(p.Controllers, policy.Endpoint{Addr: a, Port: uint16(e.GetPort())})
	}
	for _, s := range in.GetAllow() {
		a, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("%w: allowlist entry %q: %v", ErrInvalidPolicy, s, err)
		}
		p.Allow = append(p.Allow, a)
	}
	for _, s := range in.GetDns() {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, fmt.Errorf("%w: DNS resolver %q: %v", ErrInvalidPolicy, s, err)
		}
		p.DNS = append(p.DNS, a)
	}
	p.DHCP = in.GetDhcp()
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("%w: %v", ErrInvalidPolicy, err)
	}
	return p, nil
}

// toStatus maps an implementation error to a gRPC status so the host can
// branch on its kind.
func toStatus(err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, ErrInvalidPolicy):
		code = codes.InvalidArgument
	case errors.Is(err, ErrUnavailable):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrRulesChanged):
		code = codes.Aborted
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

// fromStatus maps a gRPC status back to the sentinel errors. An Unavailable
// code means the transport to the plugin broke, which for a local subprocess
// means it died.
func fromStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := st.Message()
	switch st.Code() {
	case codes.InvalidArgument:
		return &PluginError{Kind: ErrInvalidPolicy, Msg: msg}
	case codes.FailedPrecondition:
		return &PluginError{Kind: ErrUnavailable, Msg: msg}
	case codes.Unavailable:
		return &PluginError{Kind: ErrPluginCrashed, Msg: msg}
	case codes.Aborted:
		return &PluginError{Kind: ErrRulesChanged, Msg: msg}
	case codes.DeadlineExceeded:
		return &PluginError{Kind: context.DeadlineExceeded, Msg: msg}
	case codes.Canceled:
		return &PluginError{Kind: context.Canceled, Msg: msg}
	}
	return &PluginError{Msg: msg}
}

// PluginError is an error reported by a plugin. Kind, when set, is one of the
// sentinels of this package (or a context error) and is what errors.Is
// matches.
type PluginError struct {
	Kind error
	Msg  string
}

func (e *PluginError) Error() string {
	if e.Kind == ErrPluginCrashed {
		// The message is the transport's ("error reading from server:
		// EOF"); say what it means.
		return ErrPluginCrashed.Error() + ": " + e.Msg
	}
	return e.Msg
}

// Unwrap returns Kind.
func (e *PluginError) Unwrap() error { return e.Kind }
