package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeARM is an Azure Resource Manager endpoint for tests. It speaks the
// ARM REST JSON of the calls the plugin makes, with the request and
// response shapes of the Azure REST API reference: Virtual Machines - Get
// (Microsoft.Compute), Network Interfaces - Get and Create Or Update,
// Network Security Groups - Get and Create Or Update (Microsoft.Network),
// Tags - Update At Scope (Microsoft.Resources), the Azure-AsyncOperation
// status of a long-running Network operation, and the App Service managed
// identity token endpoint. It keeps state: VMs, NICs with their IP
// configurations, NSG association and tags, NSGs and their rules. The real
// SDK talks to it, over TLS (the SDK sends a bearer token over https only),
// so the SDK's parsing proves the shapes.
//
// Like ARM it checks the bearer token and the api-version, answers a
// missing resource 404 ResourceNotFound, a NIC PUT referring to an NSG
// that does not exist or is in another location 400
// InvalidResourceReference, and it refuses a NIC PUT that changes the
// NIC's IP configurations or other settings (the plugin must write the
// NIC as it read it, NSG and tags aside).
//
// Faults: throttle answers an action (an RBAC action name, such as
// Microsoft.Network/networkInterfaces/write) 429 with Retry-After a number
// of times; deny answers it 403 AuthorizationFailed, or, for a join
// action, a NIC PUT 403 LinkedAuthorizationFailed; onPutNIC can fail a NIC
// PUT outright or accept it and fail its long-running operation; async
// answers every PUT 201 with Azure-AsyncOperation instead of 200.
type fakeARM struct {
	t     *testing.T
	srv   *httptest.Server
	sub   string
	token string

	mu   sync.Mutex
	n    int
	rgs  map[string]bool // lower-case names
	vms  map[string]*fVM // by lower-case id
	nics map[string]*fNIC
	nsgs map[string]*fNSG
	ops  map[string]*fOp

	calls   []string            // every action called, in order, failures included
	nicPuts map[string][]string // NIC id → the NSG id each PUT set ("" for none)
	tokens  int                 // managed identity tokens issued

	throttles map[string]*fThrottle
	denied    map[string]bool
	async     bool
	onPutNIC  func(name, nsg string) *fFault
	msiHeader string
}

type fVM struct {
	id, name, rg, location, vmID string
	tags                         map[string]string
	nics                         []string
}

type fNIC struct {
	id, name, rg, location, vm string
	tags                       map[string]string
	nsg                        string
	ipconfigs                  []fIPConfig
	accelerated                bool
	dnsServers                 []string
	primary                    bool
	etag                       int
	state                      string
}

type fIPConfig struct {
	name, ip, version, subnet string
	primary                   bool
}

type fNSG struct {
	id, name, rg, location string
	tags                   map[string]string
	flush                  bool
	rules                  []jRule
	etag                   int
	state                  string
}

type fOp struct {
	id      string
	polls   int     // InProgress answers left
	failure *fFault // nil: Succeeded
	done    func()  // run when it ends
}

type fThrottle struct {
	n          int
	retryAfter string
}

// fFault is an ARM error answer; async makes it the failure of an
// accepted operation instead, the change applied.
type fFault struct {
	status        int
	code, message string
	async         bool
}

const (
	testSub      = "00000000-0000-4000-8000-0000c0d0e000"
	testToken    = "fake-arm-token-not-real"
	testLocation = "westeurope"
	nsgType      = "Microsoft.Network/networkSecurityGroups"
	nicType      = "Microsoft.Network/networkInterfaces"
	vmType       = "Microsoft.Compute/virtualMachines"
)

func newFakeARM(t *testing.T) *fakeARM {
	t.Helper()
	f := &fakeARM{
		t:         t,
		sub:       testSub,
		token:     testToken,
		rgs:       map[string]bool{},
		vms:       map[string]*fVM{},
		nics:      map[string]*fNIC{},
		nsgs:      map[string]*fNSG{},
		ops:       map[string]*fOp{},
		nicPuts:   map[string][]string{},
		throttles: map[string]*fThrottle{},
		denied:    map[string]bool{},
	}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeARM) guid() string {
	f.n++
	return fmt.Sprintf("0000c0de-0000-4000-8000-%012x", f.n)
}

func (f *fakeARM) resourceID(rg, typ, name string) string {
	return "/subscriptions/" + f.sub + "/resourceGroups/" + rg + "/providers/" + typ + "/" + name
}

// addNSG adds an NSG with one rule (HTTPS in) and returns its id.
func (f *fakeARM) addNSG(rg, name, location string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rgs[strings.ToLower(rg)] = true
	g := &fNSG{id: f.resourceID(rg, nsgType, name), name: name, rg: rg, location: location, tags: map[string]string{"team": "web"}}
	g.rules = []jRule{{Name: "allow-https", Properties: jRuleProps{Protocol: "Tcp", SourcePortRange: "*", DestinationPortRange: "443",
		SourceAddressPrefix: "Internet", DestinationAddressPrefix: "*", Access: "Allow", Priority: 300, Direction: "Inbound"}}}
	f.nsgs[strings.ToLower(g.id)] = g
	return g.id
}

// deleteNSG deletes an NSG, as ARM does only when nothing uses it.
func (f *fakeARM) deleteNSG(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nics {
		if strings.EqualFold(n.nsg, id) {
			f.t.Fatalf("fake ARM: NSG %s is in use by %s (InUseNetworkSecurityGroupCannotBeDeleted)", id, n.id)
		}
	}
	delete(f.nsgs, strings.ToLower(id))
}

type nicSpec struct {
	ip, ipv6    string
	nsg         string
	accelerated bool
	dnsServers  []string
	tags        map[string]string
}

// addVM adds a VM with one NIC per spec (the first primary); it returns
// the VM's id and the NICs' ids.
func (f *fakeARM) addVM(rg, name, location string, specs ...nicSpec) (string, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rgs[strings.ToLower(rg)] = true
	vm := &fVM{id: f.resourceID(rg, vmType, name), name: name, rg: rg, location: location, vmID: f.guid(), tags: map[string]string{"env": "prod"}}
	subnet := "/subscriptions/" + f.sub + "/resourceGroups/" + rg + "/providers/Microsoft.Network/virtualNetworks/vnet-1/subnets/default"
	for i, s := range specs {
		nicName := fmt.Sprintf("%s-nic-%d", name, i)
		n := &fNIC{id: f.resourceID(rg, nicType, nicName), name: nicName, rg: rg, location: location, vm: vm.id,
			tags: maps.Clone(s.tags), nsg: s.nsg, accelerated: s.accelerated, dnsServers: s.dnsServers, primary: i == 0, etag: 1, state: "Succeeded"}
		if n.tags == nil {
			n.tags = map[string]string{}
		}
		n.ipconfigs = append(n.ipconfigs, fIPConfig{name: "ipconfig1", ip: s.ip, version: "IPv4", subnet: subnet, primary: true})
		if s.ipv6 != "" {
			n.ipconfigs = append(n.ipconfigs, fIPConfig{name: "ipconfig-v6", ip: s.ipv6, version: "IPv6", subnet: subnet})
		}
		f.nics[strings.ToLower(n.id)] = n
		vm.nics = append(vm.nics, n.id)
	}
	f.vms[strings.ToLower(vm.id)] = vm
	return vm.id, slices.Clone(vm.nics)
}

func (f *fakeARM) throttle(action string, n int, retryAfter string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.throttles[action] = &fThrottle{n: n, retryAfter: retryAfter}
}

func (f *fakeARM) deny(action string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.denied[action] = true
}

func (f *fakeARM) allowAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.denied = map[string]bool{}
}

func (f *fakeARM) setAsync(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.async = on
}

func (f *fakeARM) setNICFault(fn func(name, nsg string) *fFault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.onPutNIC = fn
}

// setNICNSG changes a NIC's NSG behind the plugin's back.
func (f *fakeARM) setNICNSG(nic, nsg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nics[strings.ToLower(nic)].nsg = nsg
}

func (f *fakeARM) nicNSG(nic string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nics[strings.ToLower(nic)].nsg
}

func (f *fakeARM) nicTags(nic string) map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.nics[strings.ToLower(nic)].tags)
}

func (f *fakeARM) nicState(nic string) fNIC {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := *f.nics[strings.ToLower(nic)]
	n.tags = maps.Clone(n.tags)
	n.ipconfigs = slices.Clone(n.ipconfigs)
	return n
}

func (f *fakeARM) putsOf(nic string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.nicPuts[strings.ToLower(nic)])
}

func (f *fakeARM) vmTags(id string) map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.vms[strings.ToLower(id)].tags)
}

func (f *fakeARM) nsg(id string) *fNSG {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.nsgs[strings.ToLower(id)]
	if g == nil {
		return nil
	}
	c := *g
	c.tags = maps.Clone(g.tags)
	c.rules = slices.Clone(g.rules)
	return &c
}

// nsgsNamed returns the NSGs whose names start with prefix.
func (f *fakeARM) nsgsNamed(prefix string) []*fNSG {
	f.mu.Lock()
	var ids []string
	for _, g := range f.nsgs {
		if strings.HasPrefix(g.name, prefix) {
			ids = append(ids, g.id)
		}
	}
	f.mu.Unlock()
	slices.Sort(ids)
	var out []*fNSG
	for _, id := range ids {
		out = append(out, f.nsg(id))
	}
	return out
}

func (f *fakeARM) resetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
	f.nicPuts = map[string][]string{}
}

func (f *fakeARM) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeARM) count(action string) int {
	n := 0
	for _, c := range f.callList() {
		if c == action {
			n++
		}
	}
	return n
}

// --- protocol ---

// armError is ARM's error body.
type armError struct {
	status        int
	code, message string
	header        map[string]string
}

func (f *fakeARM) serve(w http.ResponseWriter, r *http.Request) {
	seg := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(seg) == 2 && seg[0] == "msi" && seg[1] == "token" {
		f.serveMSI(w, r)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var (
		action string
		h      func() (int, any, map[string]string, *armError)
	)
	is := func(i int, s string) bool { return len(seg) > i && strings.EqualFold(seg[i], s) }
	switch {
	case len(seg) == 8 && is(0, "subscriptions") && is(2, "providers") && is(3, "Microsoft.Network") && is(4, "locations") && is(6, "operations"):
		action = "Microsoft.Network/locations/operations/read"
		h = func() (int, any, map[string]string, *armError) { return f.operation(r, seg[7]) }
	case len(seg) == 12 && is(0, "subscriptions") && is(2, "resourceGroups") && is(4, "providers") &&
		is(8, "providers") && is(9, "Microsoft.Resources") && is(10, "tags") && is(11, "default"):
		action = "Microsoft.Resources/tags/write"
		if r.Method != http.MethodPatch {
			action = "Microsoft.Resources/tags/read"
		}
		scope := "/" + strings.Join(seg[:8], "/")
		h = func() (int, any, map[string]string, *armError) { return f.tagsAtScope(r, seg[1], seg[3], scope) }
	case len(seg) == 8 && is(0, "subscriptions") && is(2, "resourceGroups") && is(4, "providers"):
		typ := canonicalType(seg[5] + "/" + seg[6])
		verb := map[string]string{http.MethodGet: "read", http.MethodPut: "write", http.MethodDelete: "delete"}[r.Method]
		action = typ + "/" + verb
		h = func() (int, any, map[string]string, *armError) { return f.resource(r, seg[1], seg[3], typ, seg[7]) }
	default:
		action = r.Method + " " + r.URL.Path
		h = func() (int, any, map[string]string, *armError) {
			f.t.Errorf("fake ARM: unexpected call %s %s", r.Method, r.URL.Path)
			return 0, nil, nil, &armError{status: 400, code: "InvalidResourceType", message: "The resource type could not be found in the namespace."}
		}
	}
	f.calls = append(f.calls, action)
	if got := r.Header.Get("Authorization"); got != "Bearer "+f.token {
		f.fail(w, &armError{status: 401, code: "InvalidAuthenticationToken", message: "The access token is invalid."})
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		f.fail(w, &armError{status: 400, code: "MissingApiVersionParameter", message: "The api-version query parameter (?api-version=) is required for all requests."})
		return
	}
	if th := f.throttles[action]; th != nil && th.n > 0 {
		th.n--
		kind := "read"
		if !strings.HasSuffix(action, "/read") {
			kind = "write"
		}
		f.fail(w, &armError{status: 429, code: "SubscriptionRequestsThrottled",
			message: fmt.Sprintf("Number of '%s' requests for subscription '%s' actor 'cordon' exceeded. Please try again after '%s' seconds after additional tries.", kind, f.sub, th.retryAfter),
			header:  map[string]string{"Retry-After": th.retryAfter}})
		return
	}
	if f.denied[action] {
		f.fail(w, &armError{status: 403, code: "AuthorizationFailed", message: fmt.Sprintf(
			"The client 'c0de0000-0000-4000-8000-000000000001' with object id 'c0de0000-0000-4000-8000-000000000001' does not have authorization to perform action '%s' over scope '%s' or the scope is invalid. If access was recently granted, please refresh your credentials.",
			action, r.URL.Path)})
		return
	}
	status, body, header, e := h()
	if e != nil {
		f.fail(w, e)
		return
	}
	out, err := json.Marshal(body)
	if err != nil {
		f.t.Errorf("fake ARM: marshal: %v", err)
		w.WriteHeader(500)
		return
	}
	for k, v := range header {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("x-ms-request-id", f.guid())
	w.WriteHeader(status)
	_, _ = w.Write(out)
}

func (f *fakeARM) fail(w http.ResponseWriter, e *armError) {
	for k, v := range e.header {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("x-ms-failure-cause", "gateway")
	w.Header().Set("x-ms-request-id", f.guid())
	w.WriteHeader(e.status)
	out, _ := json.Marshal(map[string]any{"error": map[string]string{"code": e.code, "message": e.message}})
	_, _ = w.Write(out)
}

func canonicalType(t string) string {
	for _, c := range []string{vmType, nicType, nsgType} {
		if strings.EqualFold(t, c) {
			return c
		}
	}
	return t
}

func (f *fakeARM) notFound(sub, rg, typ, name string) *armError {
	switch {
	case sub != f.sub:
		return &armError{status: 404, code: "SubscriptionNotFound", message: fmt.Sprintf("The subscription '%s' could not be found.", sub)}
	case !f.rgs[strings.ToLower(rg)]:
		return &armError{status: 404, code: "ResourceGroupNotFound", message: fmt.Sprintf("Resource group '%s' could not be found.", rg)}
	}
	return &armError{status: 404, code: "ResourceNotFound", message: fmt.Sprintf(
		"The Resource '%s/%s' under resource group '%s' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix", typ, name, rg)}
}

func (f *fakeARM) resource(r *http.Request, sub, rg, typ, name string) (int, any, map[string]string, *armError) {
	id := strings.ToLower(f.resourceID(rg, typ, name))
	if sub != f.sub {
		return 0, nil, nil, f.notFound(sub, rg, typ, name)
	}
	switch {
	case typ == vmType && r.Method == http.MethodGet:
		vm := f.vms[id]
		if vm == nil {
			return 0, nil, nil, f.notFound(sub, rg, typ, name)
		}
		return 200, f.vmJSON(vm), nil, nil
	case typ == nicType && r.Method == http.MethodGet:
		n := f.nics[id]
		if n == nil {
			return 0, nil, nil, f.notFound(sub, rg, typ, name)
		}
		return 200, f.nicJSON(n), nil, nil
	case typ == nicType && r.Method == http.MethodPut:
		return f.putNIC(r, id)
	case typ == nsgType && r.Method == http.MethodGet:
		g := f.nsgs[id]
		if g == nil {
			return 0, nil, nil, f.notFound(sub, rg, typ, name)
		}
		return 200, f.nsgJSON(g), nil, nil
	case typ == nsgType && r.Method == http.MethodPut:
		return f.putNSG(r, sub, rg, name)
	}
	f.t.Errorf("fake ARM: unexpected %s of %s", r.Method, typ)
	return 0, nil, nil, &armError{status: 405, code: "MethodNotAllowed", message: "The requested method is not allowed."}
}

// accepted answers a PUT: 200 with the resource, or 201 with an
// Azure-AsyncOperation header to poll, the resource Updating until the
// operation ends.
func (f *fakeARM) accepted(location string, body func() any, setState func(string), failure *fFault) (int, any, map[string]string, *armError) {
	if !f.async && failure == nil {
		return 200, body(), nil, nil
	}
	op := &fOp{id: f.guid(), polls: 1, failure: failure}
	setState("Updating")
	op.done = func() {
		if failure != nil {
			setState("Failed")
		} else {
			setState("Succeeded")
		}
	}
	f.ops[op.id] = op
	h := map[string]string{
		"Azure-AsyncOperation": fmt.Sprintf("%s/subscriptions/%s/providers/Microsoft.Network/locations/%s/operations/%s?api-version=2024-05-01",
			f.srv.URL, f.sub, location, op.id),
	}
	return 201, body(), h, nil
}

// operation answers the status of a long-running operation
// (Azure-AsyncOperation): InProgress, then Succeeded or Failed.
func (f *fakeARM) operation(r *http.Request, id string) (int, any, map[string]string, *armError) {
	op := f.ops[id]
	if op == nil || r.Method != http.MethodGet {
		return 0, nil, nil, &armError{status: 404, code: "NotFound", message: "Operation " + id + " not found."}
	}
	out := map[string]any{"id": r.URL.Path, "name": id, "startTime": time.Now().UTC().Format(time.RFC3339Nano)}
	switch {
	case op.polls > 0:
		op.polls--
		out["status"] = "InProgress"
	case op.failure != nil:
		out["status"] = "Failed"
		out["error"] = map[string]string{"code": op.failure.code, "message": op.failure.message}
		op.done()
	default:
		out["status"] = "Succeeded"
		op.done()
	}
	return 200, out, nil, nil
}

// jNIC is the request body of Network Interfaces - Create Or Update, in
// the fields the fake checks.
type jNIC struct {
	Location   string             `json:"location"`
	Tags       map[string]*string `json:"tags"`
	Properties *struct {
		NetworkSecurityGroup *struct {
			ID string `json:"id"`
		} `json:"networkSecurityGroup"`
		IPConfigurations []struct {
			Name       string `json:"name"`
			Properties struct {
				PrivateIPAddress        string `json:"privateIPAddress"`
				PrivateIPAddressVersion string `json:"privateIPAddressVersion"`
				Primary                 bool   `json:"primary"`
				Subnet                  *struct {
					ID string `json:"id"`
				} `json:"subnet"`
			} `json:"properties"`
		} `json:"ipConfigurations"`
		EnableAcceleratedNetworking bool `json:"enableAcceleratedNetworking"`
		DNSSettings                 *struct {
			DNSServers []string `json:"dnsServers"`
		} `json:"dnsSettings"`
	} `json:"properties"`
}

func (f *fakeARM) putNIC(r *http.Request, id string) (int, any, map[string]string, *armError) {
	n := f.nics[id]
	if n == nil {
		// The plugin never creates a NIC.
		f.t.Errorf("fake ARM: PUT of a NIC that does not exist: %s", id)
		return 0, nil, nil, &armError{status: 400, code: "InvalidRequestFormat", message: "Cannot parse the request."}
	}
	var body jNIC
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Properties == nil {
		return 0, nil, nil, &armError{status: 400, code: "InvalidRequestFormat", message: fmt.Sprintf("Cannot parse the request: %v", err)}
	}
	if !strings.EqualFold(body.Location, n.location) {
		return 0, nil, nil, &armError{status: 400, code: "InvalidRequestFormat", message: "location " + body.Location + " does not match the NIC's " + n.location}
	}
	// The NIC as it was read: the same IP configurations and settings.
	var got []fIPConfig
	for _, c := range body.Properties.IPConfigurations {
		sub := ""
		if c.Properties.Subnet != nil {
			sub = c.Properties.Subnet.ID
		}
		got = append(got, fIPConfig{name: c.Name, ip: c.Properties.PrivateIPAddress, version: c.Properties.PrivateIPAddressVersion, subnet: sub, primary: c.Properties.Primary})
	}
	if !slices.Equal(got, n.ipconfigs) {
		f.t.Errorf("fake ARM: PUT %s changed the IP configurations: %+v, had %+v", n.name, got, n.ipconfigs)
		return 0, nil, nil, &armError{status: 400, code: "NetworkInterfaceIpConfigurationsChanged", message: "the fake refuses a change of IP configurations"}
	}
	var dns []string
	if body.Properties.DNSSettings != nil {
		dns = body.Properties.DNSSettings.DNSServers
	}
	if body.Properties.EnableAcceleratedNetworking != n.accelerated || !slices.Equal(dns, n.dnsServers) && len(dns)+len(n.dnsServers) > 0 {
		f.t.Errorf("fake ARM: PUT %s changed the NIC's settings: accelerated %t, DNS %v", n.name, body.Properties.EnableAcceleratedNetworking, dns)
		return 0, nil, nil, &armError{status: 400, code: "NetworkInterfaceSettingsChanged", message: "the fake refuses a change of NIC settings"}
	}
	nsg := ""
	if body.Properties.NetworkSecurityGroup != nil {
		nsg = body.Properties.NetworkSecurityGroup.ID
	}
	// Linked access checks: the subnet, and an NSG the NIC joins.
	if f.denied["Microsoft.Network/virtualNetworks/subnets/join/action"] {
		return 0, nil, nil, f.linkedDenied(n.id, "Microsoft.Network/virtualNetworks/subnets/join/action", n.ipconfigs[0].subnet)
	}
	if nsg != "" && !strings.EqualFold(nsg, n.nsg) && f.denied["Microsoft.Network/networkSecurityGroups/join/action"] {
		return 0, nil, nil, f.linkedDenied(n.id, "Microsoft.Network/networkSecurityGroups/join/action", nsg)
	}
	if nsg != "" {
		g := f.nsgs[strings.ToLower(nsg)]
		if g == nil || !strings.EqualFold(g.location, n.location) {
			return 0, nil, nil, &armError{status: 400, code: "InvalidResourceReference", message: fmt.Sprintf(
				"Resource %s referenced by resource %s was not found. Please make sure that the referenced resource exists, and that both resources are in the same region.", nsg, n.id)}
		}
		nsg = g.id
	}
	var fault *fFault
	if f.onPutNIC != nil {
		fault = f.onPutNIC(n.name, nsg)
	}
	if fault != nil && !fault.async {
		return 0, nil, nil, &armError{status: fault.status, code: fault.code, message: fault.message}
	}
	f.nicPuts[id] = append(f.nicPuts[id], nsg)
	n.nsg = nsg
	n.tags = map[string]string{}
	for k, v := range body.Tags {
		if v != nil {
			n.tags[k] = *v
		}
	}
	n.etag++
	return f.accepted(n.location, func() any { return f.nicJSON(n) }, func(s string) { n.state = s }, fault)
}

func (f *fakeARM) linkedDenied(id, action, scope string) *armError {
	return &armError{status: 403, code: "LinkedAuthorizationFailed", message: fmt.Sprintf(
		"The client 'c0de0000-0000-4000-8000-000000000001' with object id 'c0de0000-0000-4000-8000-000000000001' has permission to perform action 'Microsoft.Network/networkInterfaces/write' on scope '%s'; however, it does not have permission to perform action(s) '%s' on the linked scope(s) '%s' (respectively) or the linked scope(s) are invalid.",
		id, action, scope)}
}

// jNSG is the request body of Network Security Groups - Create Or Update.
type jNSG struct {
	Location   string             `json:"location"`
	Tags       map[string]*string `json:"tags"`
	Properties *struct {
		FlushConnection *bool   `json:"flushConnection"`
		SecurityRules   []jRule `json:"securityRules"`
	} `json:"properties"`
}

type jRule struct {
	Name       string     `json:"name"`
	Properties jRuleProps `json:"properties"`
}

type jRuleProps struct {
	Description                string   `json:"description,omitempty"`
	Protocol                   string   `json:"protocol"`
	SourcePortRange            string   `json:"sourcePortRange,omitempty"`
	DestinationPortRange       string   `json:"destinationPortRange,omitempty"`
	SourceAddressPrefix        string   `json:"sourceAddressPrefix,omitempty"`
	DestinationAddressPrefix   string   `json:"destinationAddressPrefix,omitempty"`
	SourcePortRanges           []string `json:"sourcePortRanges,omitempty"`
	DestinationPortRanges      []string `json:"destinationPortRanges,omitempty"`
	SourceAddressPrefixes      []string `json:"sourceAddressPrefixes,omitempty"`
	DestinationAddressPrefixes []string `json:"destinationAddressPrefixes,omitempty"`
	Access                     string   `json:"access"`
	Priority                   int      `json:"priority"`
	Direction                  string   `json:"direction"`
	ProvisioningState          string   `json:"provisioningState,omitempty"`
}

func (f *fakeARM) putNSG(r *http.Request, sub, rg, name string) (int, any, map[string]string, *armError) {
	if !f.rgs[strings.ToLower(rg)] {
		return 0, nil, nil, f.notFound(sub, rg, nsgType, name)
	}
	var body jNSG
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		return 0, nil, nil, &armError{status: 400, code: "InvalidRequestFormat", message: fmt.Sprintf("Cannot parse the request: %v", err)}
	}
	if body.Location == "" {
		return 0, nil, nil, &armError{status: 400, code: "LocationRequired", message: "The location property is required for this definition."}
	}
	if len(name) > 80 {
		return 0, nil, nil, &armError{status: 400, code: "InvalidResourceName", message: "Resource name " + name + " is invalid."}
	}
	var rules []jRule
	flush := false
	if body.Properties != nil {
		rules = body.Properties.SecurityRules
		flush = body.Properties.FlushConnection != nil && *body.Properties.FlushConnection
	}
	if e := checkRules(rules); e != nil {
		return 0, nil, nil, e
	}
	id := strings.ToLower(f.resourceID(rg, nsgType, name))
	g := f.nsgs[id]
	if g == nil {
		g = &fNSG{id: f.resourceID(rg, nsgType, name), name: name, rg: rg, location: body.Location}
		f.nsgs[id] = g
	} else if !strings.EqualFold(g.location, body.Location) {
		return 0, nil, nil, &armError{status: 400, code: "InvalidResourceLocation", message: fmt.Sprintf(
			"The resource '%s' already exists in location '%s' in resource group '%s'. A resource with the same name cannot be created in location '%s'.", name, g.location, rg, body.Location)}
	}
	g.tags = map[string]string{}
	for k, v := range body.Tags {
		if v != nil {
			g.tags[k] = *v
		}
	}
	g.flush = flush
	g.rules = rules
	for i := range g.rules {
		g.rules[i].Properties.ProvisioningState = "Succeeded"
	}
	g.etag++
	return f.accepted(g.location, func() any { return f.nsgJSON(g) }, func(s string) { g.state = s }, nil)
}

// checkRules checks security rules as ARM does: names unique, a valid
// protocol, access and direction, priorities from 100 to 4096 and unique
// per direction, ports and addresses given.
func checkRules(rules []jRule) *armError {
	bad := func(format string, a ...any) *armError {
		return &armError{status: 400, code: "SecurityRuleParameterContainsUnsupportedValue", message: fmt.Sprintf(format, a...)}
	}
	names := map[string]bool{}
	prios := map[string]bool{}
	for _, r := range rules {
		p := r.Properties
		if r.Name == "" || len(r.Name) > 80 || names[strings.ToLower(r.Name)] {
			return bad("Security rule name %q is missing, too long or not unique.", r.Name)
		}
		names[strings.ToLower(r.Name)] = true
		if !slices.Contains([]string{"Tcp", "Udp", "Icmp", "Esp", "Ah", "*"}, p.Protocol) {
			return bad("Security rule %s has invalid Protocol %q.", r.Name, p.Protocol)
		}
		if p.Access != "Allow" && p.Access != "Deny" {
			return bad("Security rule %s has invalid Access %q.", r.Name, p.Access)
		}
		if p.Direction != "Inbound" && p.Direction != "Outbound" {
			return bad("Security rule %s has invalid Direction %q.", r.Name, p.Direction)
		}
		if p.Priority < 100 || p.Priority > 4096 {
			return &armError{status: 400, code: "SecurityRuleInvalidPriority", message: fmt.Sprintf(
				"Security rule %s has invalid priority %d. Value provided: %d Allowed range 100-4096.", r.Name, p.Priority, p.Priority)}
		}
		k := p.Direction + "/" + strconv.Itoa(p.Priority)
		if prios[k] {
			return &armError{status: 400, code: "SecurityRuleConflict", message: fmt.Sprintf(
				"Security rule %s conflicts with another rule: rules cannot have the same Priority and Direction.", r.Name)}
		}
		prios[k] = true
		if (p.SourcePortRange == "") == (len(p.SourcePortRanges) == 0) || (p.DestinationPortRange == "") == (len(p.DestinationPortRanges) == 0) {
			return bad("Security rule %s must have exactly one of the port range and port ranges, both ways.", r.Name)
		}
		if (p.SourceAddressPrefix == "") == (len(p.SourceAddressPrefixes) == 0) || (p.DestinationAddressPrefix == "") == (len(p.DestinationAddressPrefixes) == 0) {
			return bad("Security rule %s must have exactly one of the address prefix and prefixes, both ways.", r.Name)
		}
	}
	return nil
}

// tagsAtScope is Tags - Update At Scope (PATCH, operation Merge, Replace
// or Delete) on a VM.
func (f *fakeARM) tagsAtScope(r *http.Request, sub, rg, scope string) (int, any, map[string]string, *armError) {
	vm := f.vms[strings.ToLower(scope)]
	if vm == nil || sub != f.sub {
		seg := strings.Split(strings.Trim(scope, "/"), "/")
		return 0, nil, nil, f.notFound(sub, rg, seg[5]+"/"+seg[6], seg[7])
	}
	if r.Method != http.MethodPatch {
		f.t.Errorf("fake ARM: unexpected %s of tags", r.Method)
		return 0, nil, nil, &armError{status: 405, code: "MethodNotAllowed", message: "The requested method is not allowed."}
	}
	var body struct {
		Operation  string `json:"operation"`
		Properties struct {
			Tags map[string]string `json:"tags"`
		} `json:"properties"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		return 0, nil, nil, &armError{status: 400, code: "InvalidRequestContent", message: err.Error()}
	}
	switch body.Operation {
	case "Merge":
		maps.Copy(vm.tags, body.Properties.Tags)
	case "Replace":
		vm.tags = maps.Clone(body.Properties.Tags)
	case "Delete":
		for k := range body.Properties.Tags {
			delete(vm.tags, k)
		}
	default:
		return 0, nil, nil, &armError{status: 400, code: "InvalidRequestContent", message: "operation must be Merge, Replace or Delete"}
	}
	return 200, map[string]any{
		"id":         scope + "/providers/Microsoft.Resources/tags/default",
		"name":       "default",
		"type":       "Microsoft.Resources/tags",
		"properties": map[string]any{"tags": vm.tags},
	}, nil, nil
}

// serveMSI is the App Service managed identity endpoint
// (IDENTITY_ENDPOINT, API version 2019-08-01): it checks the
// X-IDENTITY-HEADER secret and issues the test token.
func (f *fakeARM) serveMSI(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.msiHeader == "" || r.Header.Get("X-IDENTITY-HEADER") != f.msiHeader || r.URL.Query().Get("api-version") != "2019-08-01" {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"statusCode":400,"message":"Unable to load the proper Managed Identity.","correlationId":"c0de"}`))
		return
	}
	f.tokens++
	w.Header().Set("Content-Type", "application/json")
	out, _ := json.Marshal(map[string]string{
		"access_token": f.token,
		"expires_on":   strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10),
		"resource":     r.URL.Query().Get("resource"),
		"token_type":   "Bearer",
		"client_id":    "c0de0000-0000-4000-8000-000000000002",
	})
	_, _ = w.Write(out)
}

// --- resources as ARM returns them ---

func (f *fakeARM) vmJSON(vm *fVM) map[string]any {
	var refs []any
	for i, id := range vm.nics {
		refs = append(refs, map[string]any{"id": id, "properties": map[string]any{"primary": i == 0, "deleteOption": "Detach"}})
	}
	return map[string]any{
		"name":     vm.name,
		"id":       vm.id,
		"type":     vmType,
		"location": vm.location,
		"tags":     vm.tags,
		"properties": map[string]any{
			"vmId":            vm.vmID,
			"hardwareProfile": map[string]any{"vmSize": "Standard_D2s_v5"},
			"storageProfile": map[string]any{
				"osDisk": map[string]any{
					"osType": "Linux", "name": vm.name + "_OsDisk_1", "createOption": "FromImage", "caching": "ReadWrite",
					"managedDisk":  map[string]any{"id": f.resourceID(vm.rg, "Microsoft.Compute/disks", vm.name+"_OsDisk_1"), "storageAccountType": "Premium_LRS"},
					"deleteOption": "Delete", "diskSizeGB": 30,
				},
				"dataDisks": []any{},
			},
			"osProfile": map[string]any{
				"computerName": vm.name, "adminUsername": "azureuser",
				"linuxConfiguration": map[string]any{"disablePasswordAuthentication": true, "provisionVMAgent": true},
				"secrets":            []any{}, "allowExtensionOperations": true,
			},
			"networkProfile":    map[string]any{"networkInterfaces": refs},
			"provisioningState": "Succeeded",
			"timeCreated":       "2025-01-10T08:00:00.0000000+00:00",
		},
	}
}

func (f *fakeARM) nicJSON(n *fNIC) map[string]any {
	var ipcs []any
	for _, c := range n.ipconfigs {
		ipcs = append(ipcs, map[string]any{
			"name": c.name,
			"id":   n.id + "/ipConfigurations/" + c.name,
			"etag": fmt.Sprintf(`W/"%d"`, n.etag),
			"type": "Microsoft.Network/networkInterfaces/ipConfigurations",
			"properties": map[string]any{
				"provisioningState":         "Succeeded",
				"privateIPAddress":          c.ip,
				"privateIPAllocationMethod": "Dynamic",
				"privateIPAddressVersion":   c.version,
				"subnet":                    map[string]any{"id": c.subnet},
				"primary":                   c.primary,
			},
		})
	}
	dns := n.dnsServers
	if dns == nil {
		dns = []string{}
	}
	props := map[string]any{
		"provisioningState":           n.state,
		"resourceGuid":                "c0de0000-0000-4000-8000-" + fmt.Sprintf("%012x", len(n.name)),
		"ipConfigurations":            ipcs,
		"dnsSettings":                 map[string]any{"dnsServers": dns, "appliedDnsServers": []string{}, "internalDomainNameSuffix": "c0de.ax.internal.cloudapp.net"},
		"macAddress":                  "00-0D-3A-C0-DE-01",
		"enableAcceleratedNetworking": n.accelerated,
		"vnetEncryptionSupported":     false,
		"enableIPForwarding":          false,
		"primary":                     n.primary,
		"virtualMachine":              map[string]any{"id": n.vm},
		"hostedWorkloads":             []any{},
		"tapConfigurations":           []any{},
		"nicType":                     "Standard",
		"allowPort25Out":              true,
		"auxiliaryMode":               "None",
		"auxiliarySku":                "None",
	}
	if n.nsg != "" {
		props["networkSecurityGroup"] = map[string]any{"id": n.nsg}
	}
	return map[string]any{
		"name":       n.name,
		"id":         n.id,
		"etag":       fmt.Sprintf(`W/"%d"`, n.etag),
		"type":       nicType,
		"location":   n.location,
		"tags":       n.tags,
		"properties": props,
	}
}

func (f *fakeARM) nsgJSON(g *fNSG) map[string]any {
	var rules []any
	for _, r := range g.rules {
		rules = append(rules, map[string]any{
			"name":       r.Name,
			"id":         g.id + "/securityRules/" + r.Name,
			"etag":       fmt.Sprintf(`W/"%d"`, g.etag),
			"type":       nsgType + "/securityRules",
			"properties": r.Properties,
		})
	}
	if rules == nil {
		rules = []any{}
	}
	def := func(name, dir, access, src, dst string, prio int) any {
		return map[string]any{
			"name": name, "id": g.id + "/defaultSecurityRules/" + name, "type": nsgType + "/defaultSecurityRules",
			"properties": jRuleProps{Description: name, Protocol: "*", SourcePortRange: "*", DestinationPortRange: "*",
				SourceAddressPrefix: src, DestinationAddressPrefix: dst, Access: access, Priority: prio, Direction: dir, ProvisioningState: "Succeeded"},
		}
	}
	var nics []any
	for _, n := range f.nics {
		if strings.EqualFold(n.nsg, g.id) {
			nics = append(nics, map[string]any{"id": n.id})
		}
	}
	state := g.state
	if state == "" {
		state = "Succeeded"
	}
	props := map[string]any{
		"provisioningState": state,
		"resourceGuid":      "c0de0000-0000-4000-8000-" + fmt.Sprintf("%012x", len(g.name)),
		"securityRules":     rules,
		"defaultSecurityRules": []any{
			def("AllowVnetInBound", "Inbound", "Allow", "VirtualNetwork", "VirtualNetwork", 65000),
			def("AllowAzureLoadBalancerInBound", "Inbound", "Allow", "AzureLoadBalancer", "*", 65001),
			def("DenyAllInBound", "Inbound", "Deny", "*", "*", 65500),
			def("AllowVnetOutBound", "Outbound", "Allow", "VirtualNetwork", "VirtualNetwork", 65000),
			def("AllowInternetOutBound", "Outbound", "Allow", "*", "Internet", 65001),
			def("DenyAllOutBound", "Outbound", "Deny", "*", "*", 65500),
		},
	}
	props["flushConnection"] = g.flush
	if nics != nil {
		props["networkInterfaces"] = nics
	}
	return map[string]any{
		"name":       g.name,
		"id":         g.id,
		"etag":       fmt.Sprintf(`W/"%d"`, g.etag),
		"type":       nsgType,
		"location":   g.location,
		"tags":       g.tags,
		"properties": props,
	}
}
