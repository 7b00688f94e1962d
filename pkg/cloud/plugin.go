package cloud

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/cordon-ir/cordon/pkg/cloud/proto"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// Handshake is shared by the controller and every cloud plugin.
// ProtocolVersion changes when the Cloud service changes incompatibly. The
// cookie key is the firewall plugins' one but the value differs, so a
// firewall plugin started as a cloud plugin (or the reverse) exits at the
// handshake instead of being dispensed; it is not a security measure.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "CORDON_PLUGIN",
	MagicCookieValue: "contain-4d2a9e63-cloud",
}

// PluginName is the key of the Cloud plugin in go-plugin's plugin map.
const PluginName = "cloud"

// GRPCPlugin adapts a Layer to go-plugin. Plugins set Impl; hosts leave it
// nil.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Layer
}

// GRPCServer registers the Cloud service on the plugin's gRPC server.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterCloudServer(s, &grpcServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a Layer that calls the plugin over c.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &grpcClient{c: pb.NewCloudClient(c)}, nil
}

// Serve runs impl as a go-plugin plugin; it is the whole main of a plugin
// binary and returns when the controller closes the plugin.
func Serve(impl Layer) {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugin.PluginSet{PluginName: &GRPCPlugin{Impl: impl}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}

// grpcServer is the plugin side: it decodes requests, calls the
// implementation and encodes errors as gRPC status codes. A request that
// does not decode (an address that does not parse, a policy that does not
// validate) is ErrInvalid and never reaches the implementation.
type grpcServer struct {
	pb.UnimplementedCloudServer
	impl Layer
}

func (s *grpcServer) Info(ctx context.Context, _ *pb.InfoRequest) (*pb.InfoResponse, error) {
	i, err := s.impl.Info(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.InfoResponse{Name: i.Name, Version: i.Version, Provider: i.Provider}, nil
}

func (s *grpcServer) Lookup(ctx context.Context, r *pb.LookupRequest) (*pb.LookupResponse, error) {
	inst, err := requestInstance(r.GetInstance())
	if err != nil {
		return nil, toStatus(err)
	}
	found, err := s.impl.Lookup(ctx, inst)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.LookupResponse{Instance: instanceToProto(found)}, nil
}

func (s *grpcServer) Isolate(ctx context.Context, r *pb.IsolateRequest) (*pb.IsolateResponse, error) {
	inst, err := requestInstance(r.GetInstance())
	if err != nil {
		return nil, toStatus(err)
	}
	p, err := policyFromProto(r.GetPolicy())
	if err != nil {
		return nil, toStatus(fmt.Errorf("%w: %v", ErrInvalid, err))
	}
	a, err := s.impl.Isolate(ctx, inst, p, optionsFromProto(r.GetOptions()), r.GetOrderId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.IsolateResponse{Applied: appliedToProto(a)}, nil
}

func (s *grpcServer) Release(ctx context.Context, r *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	inst, err := requestInstance(r.GetInstance())
	if err != nil {
		return nil, toStatus(err)
	}
	a, err := s.impl.Release(ctx, inst, r.GetOrderId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReleaseResponse{Applied: appliedToProto(a)}, nil
}

func (s *grpcServer) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	inst, err := requestInstance(r.GetInstance())
	if err != nil {
		return nil, toStatus(err)
	}
	st, err := s.impl.Status(ctx, inst)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.StatusResponse{Isolated: st.Isolated, State: st.State, Partial: st.Partial}
	// A zero Since (unknown) crosses as an absent timestamp and comes back
	// zero; any other comes back as the same instant in UTC.
	if !st.Since.IsZero() {
		out.Since = timestamppb.New(st.Since)
	}
	return out, nil
}

// requestInstance decodes the instance of a request; a malformed one is
// ErrInvalid.
func requestInstance(in *pb.Instance) (Instance, error) {
	inst, err := instanceFromProto(in)
	if err != nil {
		return inst, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return inst, nil
}

// grpcClient is the controller side of the Cloud service.
type grpcClient struct{ c pb.CloudClient }

func (c *grpcClient) Info(ctx context.Context) (Info, error) {
	r, err := c.c.Info(ctx, &pb.InfoRequest{})
	if err != nil {
		return Info{}, fromStatus(err)
	}
	return Info{Name: r.GetName(), Version: r.GetVersion(), Provider: r.GetProvider()}, nil
}

func (c *grpcClient) Lookup(ctx context.Context, inst Instance) (Instance, error) {
	r, err := c.c.Lookup(ctx, &pb.LookupRequest{Instance: instanceToProto(inst)})
	if err != nil {
		return Instance{}, fromStatus(err)
	}
	found, err := instanceFromProto(r.GetInstance())
	if err != nil {
		return Instance{}, fmt.Errorf("plugin lookup: malformed answer: %v", err)
	}
	return found, nil
}

func (c *grpcClient) Isolate(ctx context.Context, inst Instance, p policy.Policy, o Options, orderID string) (Applied, error) {
	r, err := c.c.Isolate(ctx, &pb.IsolateRequest{
		Instance: instanceToProto(inst),
		Policy:   policyToProto(p),
		Options:  optionsToProto(o),
		OrderId:  orderID,
	})
	if err != nil {
		return Applied{}, fromStatus(err)
	}
	return appliedFromProto(r.GetApplied()), nil
}

func (c *grpcClient) Release(ctx context.Context, inst Instance, orderID string) (Applied, error) {
	r, err := c.c.Release(ctx, &pb.ReleaseRequest{Instance: instanceToProto(inst), OrderId: orderID})
	if err != nil {
		return Applied{}, fromStatus(err)
	}
	return appliedFromProto(r.GetApplied()), nil
}

func (c *grpcClient) Status(ctx context.Context, inst Instance) (Status, error) {
	r, err := c.c.Status(ctx, &pb.StatusRequest{Instance: instanceToProto(inst)})
	if err != nil {
		return Status{}, fromStatus(err)
	}
	st := Status{Isolated: r.GetIsolated(), State: r.GetState(), Partial: r.GetPartial()}
	if ts := r.GetSince(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return Status{}, fmt.Errorf("plugin status: malformed answer: since: %v", err)
		}
		st.Since = ts.AsTime()
	}
	return st, nil
}

func instanceToProto(i Instance) *pb.Instance {
	out := &pb.Instance{
		Provider:   i.Provider,
		Id:         i.ID,
		Region:     i.Region,
		Zone:       i.Zone,
		Project:    i.Project,
		Interfaces: i.Interfaces,
	}
	for _, a := range i.PrivateIPs {
		out.PrivateIps = append(out.PrivateIps, a.String())
	}
	return out
}

func instanceFromProto(in *pb.Instance) (Instance, error) {
	i := Instance{
		Provider:   in.GetProvider(),
		ID:         in.GetId(),
		Region:     in.GetRegion(),
		Zone:       in.GetZone(),
		Project:    in.GetProject(),
		Interfaces: in.GetInterfaces(),
	}
	for _, s := range in.GetPrivateIps() {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return i, fmt.Errorf("instance %q: private address %q: %v", i.ID, s, err)
		}
		i.PrivateIPs = append(i.PrivateIPs, a)
	}
	return i, nil
}

func optionsToProto(o Options) *pb.Options {
	return &pb.Options{
		Snapshot:              o.Snapshot,
		Tag:                   o.Tag,
		TerminationProtection: o.TerminationProtection,
		Detach:                o.Detach,
		RevokeSessions:        o.RevokeSessions,
		Incident:              o.Incident,
	}
}

func optionsFromProto(in *pb.Options) Options {
	return Options{
		Snapshot:              in.GetSnapshot(),
		Tag:                   in.GetTag(),
		TerminationProtection: in.GetTerminationProtection(),
		Detach:                in.GetDetach(),
		RevokeSessions:        in.GetRevokeSessions(),
		Incident:              in.GetIncident(),
	}
}

func appliedToProto(a Applied) *pb.Applied {
	return &pb.Applied{State: a.State, Notes: a.Notes}
}

func appliedFromProto(in *pb.Applied) Applied {
	return Applied{State: in.GetState(), Notes: in.GetNotes()}
}

func policyToProto(p policy.Policy) *pb.Policy {
	out := &pb.Policy{Dhcp: p.DHCP}
	for _, e := range p.Controllers {
		out.Controllers = append(out.Controllers, &pb.Endpoint{Addr: e.Addr.String(), Port: uint32(e.Port)})
	}
	for _, a := range p.Allow {
		out.Allow = append(out.Allow, a.String())
	}
	for _, a := range p.DNS {
		out.Dns = append(out.Dns, a.String())
	}
	return out
}

// policyFromProto decodes and validates a policy.
func policyFromProto(in *pb.Policy) (policy.Policy, error) {
	p := policy.Policy{DHCP: in.GetDhcp()}
	for _, e := range in.GetControllers() {
		a, err := netip.ParseAddr(e.GetAddr())
		if err != nil {
			return p, fmt.Errorf("controller address %q: %v", e.GetAddr(), err)
		}
		if e.GetPort() == 0 || e.GetPort() > 65535 {
			return p, fmt.Errorf("controller port %d out of range", e.GetPort())
		}
		p.Controllers = append(p.Controllers, policy.Endpoint{Addr: a, Port: uint16(e.GetPort())})
	}
	for _, s := range in.GetAllow() {
		a, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("allowlist entry %q: %v", s, err)
		}
		p.Allow = append(p.Allow, a)
	}
	for _, s := range in.GetDns() {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, fmt.Errorf("DNS resolver %q: %v", s, err)
		}
		p.DNS = append(p.DNS, a)
	}
	if err := p.Validate(); err != nil {
		return p, err
	}
	return p, nil
}

// toStatus maps an implementation error to a gRPC status so the controller
// can branch on its kind. The first sentinel err wraps decides.
func toStatus(err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrDenied):
		code = codes.PermissionDenied
	case errors.Is(err, ErrThrottled):
		code = codes.ResourceExhausted
	case errors.Is(err, ErrInvalid):
		code = codes.InvalidArgument
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
	var kind error
	switch st.Code() {
	case codes.NotFound:
		kind = ErrNotFound
	case codes.PermissionDenied:
		kind = ErrDenied
	case codes.ResourceExhausted:
		kind = ErrThrottled
	case codes.InvalidArgument:
		kind = ErrInvalid
	case codes.Unavailable:
		kind = ErrPluginCrashed
	case codes.DeadlineExceeded:
		kind = context.DeadlineExceeded
	case codes.Canceled:
		kind = context.Canceled
	}
	return &PluginError{Kind: kind, Msg: msg}
}

// PluginError is an error reported by a plugin. Kind, when set, is one of the
// sentinels of this package (or a context error) and is what errors.Is
// matches; Msg is the plugin's message.
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
