package main

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeEC2 is an EC2 endpoint for tests: it speaks the EC2 Query protocol
// (a form-encoded POST with Action and Version=2016-11-15, an XML answer in
// the namespace of that version, errors as <Response><Errors>) for the
// actions the plugin calls, with the request and response shapes of the
// EC2 API reference, and keeps state: instances, network interfaces and
// their groups, security groups and their rules, tags, snapshots. The real
// SDK talks to it, so the SDK's parsing proves the shapes. The same server
// answers the Auto Scaling, Elastic Load Balancing v2 and IAM Query APIs,
// told apart by the request's Version (fakeservices_test.go).
//
// Faults: throttle answers an action with RequestLimitExceeded a number of
// times; deny answers it with UnauthorizedOperation; onModify can fail a
// ModifyNetworkInterfaceAttribute.
type fakeEC2 struct {
	t   *testing.T
	srv *httptest.Server

	mu        sync.Mutex
	n         int
	instances map[string]*fInstance
	enis      map[string]*fENI
	groups    map[string]*fGroup
	snapshots map[string]*fSnapshot
	tags      map[string]map[string]string // resource id → key → value

	calls []string              // every action called, in order, failures included
	moves map[string][][]string // interface → each group list set on it

	throttles map[string]int
	denied    map[string]bool

	svcState // Auto Scaling, ELBv2 and IAM (fakeservices_test.go)
	// onModify, when set, may fail ModifyNetworkInterfaceAttribute of an
	// interface to the given groups with an EC2 error.
	onModify func(eni string, groups []string) *ec2Error
}

type fInstance struct {
	id, vpc, subnet, state string
	enis                   []string
	volumes                []string
	disableAPITermination  bool
	profile                string // instance profile ARN, "" for none
}

type fENI struct {
	id, vpc, subnet, instance string
	device                    int
	ips, ipv6                 []string
	groups                    []string
}

type fGroup struct {
	id, name, desc, vpc string
	in, out             []fRule
}

// fRule is one permission element: one CIDR, group or prefix list.
type fRule struct {
	proto      string
	from, to   int
	cidr       string
	cidr6      string
	group      string
	prefixList string
	desc       string
}

func (r fRule) key() string {
	return fmt.Sprintf("%s/%d/%d/%s/%s/%s/%s", r.proto, r.from, r.to, r.cidr, r.cidr6, r.group, r.prefixList)
}

type fSnapshot struct {
	id, volume, desc string
}

type ec2Error struct {
	status        int
	code, message string
}

const (
	ec2Version = "2016-11-15"
	ec2NS      = "http://ec2.amazonaws.com/doc/2016-11-15/"
	testKeyID  = "AKIDCORDONTEST"
	ownerID    = "123456789012"
)

func newFakeEC2(t *testing.T) *fakeEC2 {
	t.Helper()
	f := &fakeEC2{
		t:         t,
		instances: map[string]*fInstance{},
		enis:      map[string]*fENI{},
		groups:    map[string]*fGroup{},
		snapshots: map[string]*fSnapshot{},
		tags:      map[string]map[string]string{},
		moves:     map[string][][]string{},
		throttles: map[string]int{},
		denied:    map[string]bool{},
		svcState:  newSvcState(),
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeEC2) id(prefix string) string {
	f.n++
	return fmt.Sprintf("%s-%017x", prefix, 0xc0de0000+f.n)
}

// addVPC adds a VPC with its default security group and returns the
// group's id.
func (f *fakeEC2) addVPC(vpc string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := &fGroup{id: f.id("sg"), name: "default", desc: "default VPC security group", vpc: vpc}
	g.out = []fRule{{proto: "-1", cidr: "0.0.0.0/0"}}
	f.groups[g.id] = g
	g.in = []fRule{{proto: "-1", group: g.id}}
	return g.id
}

func (f *fakeEC2) addGroup(vpc, name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := &fGroup{id: f.id("sg"), name: name, desc: name, vpc: vpc}
	g.in = []fRule{{proto: "tcp", from: 443, to: 443, cidr: "0.0.0.0/0"}}
	g.out = []fRule{{proto: "-1", cidr: "0.0.0.0/0"}}
	f.groups[g.id] = g
	return g.id
}

func (f *fakeEC2) deleteGroup(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.groups, id)
}

type eniSpec struct {
	ip     string
	ipv6   string
	groups []string
}

// addInstance adds a running instance with one interface per spec (device
// index in order) and the given EBS volumes; it returns the interfaces' ids.
func (f *fakeEC2) addInstance(id, vpc string, volumes []string, specs ...eniSpec) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := &fInstance{id: id, vpc: vpc, subnet: "subnet-0a1b2c3d4e5f60718", state: "running", volumes: volumes}
	var ids []string
	for i, s := range specs {
		e := &fENI{id: f.id("eni"), vpc: vpc, subnet: in.subnet, instance: id, device: i, ips: []string{s.ip}, groups: slices.Clone(s.groups)}
		if s.ipv6 != "" {
			e.ipv6 = []string{s.ipv6}
		}
		f.enis[e.id] = e
		in.enis = append(in.enis, e.id)
		ids = append(ids, e.id)
	}
	f.instances[id] = in
	return ids
}

func (f *fakeEC2) throttle(action string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.throttles[action] = n
}

func (f *fakeEC2) deny(action string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.denied[action] = true
}

func (f *fakeEC2) setModifyFault(fn func(eni string, groups []string) *ec2Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.onModify = fn
}

// setENIGroups changes an interface's groups behind the plugin's back.
func (f *fakeEC2) setENIGroups(eni string, groups ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.enis[eni].groups = groups
}

func (f *fakeEC2) eniGroups(eni string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.enis[eni].groups)
}

func (f *fakeEC2) eniMoves(eni string) [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.moves[eni])
}

func (f *fakeEC2) resetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
	f.moves = map[string][][]string{}
}

func (f *fakeEC2) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeEC2) count(action string) int {
	n := 0
	for _, c := range f.callList() {
		if c == action {
			n++
		}
	}
	return n
}

func (f *fakeEC2) resourceTags(id string) map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]string{}
	for k, v := range f.tags[id] {
		out[k] = v
	}
	return out
}

func (f *fakeEC2) groupByName(vpc, name string) *fGroup {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, g := range f.groups {
		if g.vpc == vpc && g.name == name {
			c := *g
			c.in, c.out = slices.Clone(g.in), slices.Clone(g.out)
			return &c
		}
	}
	return nil
}

func (f *fakeEC2) group(id string) *fGroup {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.groups[id]
	if g == nil {
		return nil
	}
	c := *g
	c.in, c.out = slices.Clone(g.in), slices.Clone(g.out)
	return &c
}

func (f *fakeEC2) snapshotList() []fSnapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fSnapshot
	for _, s := range f.snapshots {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b fSnapshot) int { return strings.Compare(a.volume, b.volume) })
	return out
}

func (f *fakeEC2) terminationProtected(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.instances[id].disableAPITermination
}

// --- protocol ---

func (f *fakeEC2) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		f.fail(w, &ec2Error{400, "InvalidAction", "EC2 Query requests are POSTed here"})
		return
	}
	if err := r.ParseForm(); err != nil {
		f.fail(w, &ec2Error{400, "MalformedQueryString", err.Error()})
		return
	}
	form := r.PostForm
	action := form.Get("Action")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, action)
	// Signature Version 4 with the test's static key, never a real one.
	if auth := r.Header.Get("Authorization"); !strings.HasPrefix(auth, "AWS4-HMAC-SHA256 Credential="+testKeyID+"/") {
		f.fail(w, &ec2Error{401, "AuthFailure", "AWS was not able to validate the provided access credentials"})
		return
	}
	version := form.Get("Version")
	if version != ec2Version {
		f.serveQuery(w, r, version, action, form)
		return
	}
	if n := f.throttles[action]; n > 0 {
		f.throttles[action] = n - 1
		f.fail(w, &ec2Error{503, "RequestLimitExceeded", "Request limit exceeded."})
		return
	}
	if f.denied[action] {
		f.fail(w, &ec2Error{403, "UnauthorizedOperation", fmt.Sprintf(
			"You are not authorized to perform this operation. User: arn:aws:iam::%s:user/cordon is not authorized to perform: ec2:%s because no identity-based policy allows the ec2:%s action",
			ownerID, action, action)})
		return
	}
	h := map[string]func(url.Values) (any, *ec2Error){
		"DescribeInstances":               f.describeInstances,
		"DescribeSecurityGroups":          f.describeSecurityGroups,
		"CreateSecurityGroup":             f.createSecurityGroup,
		"AuthorizeSecurityGroupIngress":   func(v url.Values) (any, *ec2Error) { return f.changeRules(v, false, true) },
		"AuthorizeSecurityGroupEgress":    func(v url.Values) (any, *ec2Error) { return f.changeRules(v, true, true) },
		"RevokeSecurityGroupIngress":      func(v url.Values) (any, *ec2Error) { return f.changeRules(v, false, false) },
		"RevokeSecurityGroupEgress":       func(v url.Values) (any, *ec2Error) { return f.changeRules(v, true, false) },
		"ModifyNetworkInterfaceAttribute": f.modifyNetworkInterfaceAttribute,
		"CreateTags":                      f.createTags,
		"DeleteTags":                      f.deleteTags,
		"CreateSnapshot":                  f.createSnapshot,
		"DescribeSnapshots":               f.describeSnapshots,
		"ModifyInstanceAttribute":         f.modifyInstanceAttribute,
	}[action]
	if h == nil {
		f.fail(w, &ec2Error{400, "InvalidAction", fmt.Sprintf("The action %s is not valid for this web service.", action)})
		return
	}
	body, e := h(form)
	if e != nil {
		f.fail(w, e)
		return
	}
	out, err := xml.Marshal(body)
	if err != nil {
		f.t.Errorf("fake EC2: marshal %s: %v", action, err)
		w.WriteHeader(500)
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(out)
}

func (f *fakeEC2) fail(w http.ResponseWriter, e *ec2Error) {
	type xErr struct {
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	}
	type xResp struct {
		XMLName   xml.Name `xml:"Response"`
		Errors    []xErr   `xml:"Errors>Error"`
		RequestID string   `xml:"RequestID"`
	}
	out, _ := xml.Marshal(xResp{Errors: []xErr{{e.code, e.message}}, RequestID: "req-" + strconv.Itoa(len(f.calls))})
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(e.status)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(out)
}

// Header starts every response: the action's element in the EC2
// namespace, and the request id.
type Header struct {
	XMLName   xml.Name
	Xmlns     string `xml:"xmlns,attr"`
	RequestID string `xml:"requestId"`
}

func (f *fakeEC2) header(action string) Header {
	return Header{XMLName: xml.Name{Local: action + "Response"}, Xmlns: ec2NS, RequestID: fmt.Sprintf("req-%d", len(f.calls))}
}

type xReturn struct {
	Header
	Return bool `xml:"return"`
}

type xTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

func (f *fakeEC2) tagSet(id string) []xTag {
	var out []xTag
	for k, v := range f.tags[id] {
		out = append(out, xTag{k, v})
	}
	slices.SortFunc(out, func(a, b xTag) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// list returns prefix.1, prefix.2, ... while present.
func list(v url.Values, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		k := prefix + "." + strconv.Itoa(i)
		if _, ok := v[k]; !ok {
			return out
		}
		out = append(out, v.Get(k))
	}
}

// members returns the indexes N for which some key starts with prefix.N.
func members(v url.Values, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		p := prefix + "." + strconv.Itoa(i)
		found := false
		for k := range v {
			if k == p || strings.HasPrefix(k, p+".") {
				found = true
				break
			}
		}
		if !found {
			return out
		}
		out = append(out, p)
	}
}

type filter struct {
	name   string
	values []string
}

func filters(v url.Values) []filter {
	var out []filter
	for _, p := range members(v, "Filter") {
		out = append(out, filter{v.Get(p + ".Name"), list(v, p+".Value")})
	}
	return out
}

func tagsFrom(v url.Values, prefix string) map[string]string {
	out := map[string]string{}
	for _, p := range members(v, prefix) {
		out[v.Get(p+".Key")] = v.Get(p + ".Value")
	}
	return out
}

func (f *fakeEC2) matchTags(id string, fl filter) (bool, bool) {
	if !strings.HasPrefix(fl.name, "tag:") {
		return false, false
	}
	v, ok := f.tags[id][strings.TrimPrefix(fl.name, "tag:")]
	return ok && slices.Contains(fl.values, v), true
}

// --- DescribeInstances ---

type xGroupID struct {
	GroupID   string `xml:"groupId"`
	GroupName string `xml:"groupName"`
}

type xPrivateIP struct {
	PrivateIPAddress string `xml:"privateIpAddress"`
	Primary          bool   `xml:"primary"`
}

type xIPv6 struct {
	IPv6Address string `xml:"ipv6Address"`
}

type xAttachment struct {
	AttachmentID     string `xml:"attachmentId"`
	DeviceIndex      int    `xml:"deviceIndex"`
	NetworkCardIndex int    `xml:"networkCardIndex"`
	Status           string `xml:"status"`
}

type xENI struct {
	NetworkInterfaceID string       `xml:"networkInterfaceId"`
	SubnetID           string       `xml:"subnetId"`
	VpcID              string       `xml:"vpcId"`
	OwnerID            string       `xml:"ownerId"`
	Status             string       `xml:"status"`
	PrivateIPAddress   string       `xml:"privateIpAddress"`
	Attachment         xAttachment  `xml:"attachment"`
	Groups             []xGroupID   `xml:"groupSet>item"`
	PrivateIPs         []xPrivateIP `xml:"privateIpAddressesSet>item"`
	IPv6               []xIPv6      `xml:"ipv6AddressesSet>item"`
	InterfaceType      string       `xml:"interfaceType"`
}

type xEBS struct {
	VolumeID string `xml:"volumeId"`
	Status   string `xml:"status"`
}

type xBlockDevice struct {
	DeviceName string `xml:"deviceName"`
	EBS        xEBS   `xml:"ebs"`
}

type xState struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type xInstance struct {
	InstanceID       string         `xml:"instanceId"`
	ImageID          string         `xml:"imageId"`
	State            xState         `xml:"instanceState"`
	InstanceType     string         `xml:"instanceType"`
	SubnetID         string         `xml:"subnetId"`
	VpcID            string         `xml:"vpcId"`
	PrivateIPAddress string         `xml:"privateIpAddress"`
	Groups           []xGroupID     `xml:"groupSet>item"`
	BlockDevices     []xBlockDevice `xml:"blockDeviceMapping>item"`
	ENIs             []xENI         `xml:"networkInterfaceSet>item"`
	Tags             []xTag         `xml:"tagSet>item"`
	Profile          *xProfileRef   `xml:"iamInstanceProfile,omitempty"`
}

type xProfileRef struct {
	Arn string `xml:"arn"`
	ID  string `xml:"id"`
}

type xReservation struct {
	ReservationID string      `xml:"reservationId"`
	OwnerID       string      `xml:"ownerId"`
	Instances     []xInstance `xml:"instancesSet>item"`
}

type xDescribeInstances struct {
	Header
	Reservations []xReservation `xml:"reservationSet>item"`
}

var instanceIDRE = regexp.MustCompile(`^i-[0-9a-f]{8}([0-9a-f]{9})?$`)

func (f *fakeEC2) groupIDs(ids []string) []xGroupID {
	var out []xGroupID
	for _, id := range ids {
		name := ""
		if g := f.groups[id]; g != nil {
			name = g.name
		}
		out = append(out, xGroupID{id, name})
	}
	return out
}

func (f *fakeEC2) describeInstances(v url.Values) (any, *ec2Error) {
	ids := list(v, "InstanceId")
	for _, id := range ids {
		if !instanceIDRE.MatchString(id) {
			return nil, &ec2Error{400, "InvalidInstanceID.Malformed", fmt.Sprintf("Invalid id: %q", id)}
		}
	}
	var missing []string
	for _, id := range ids {
		if f.instances[id] == nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return nil, &ec2Error{400, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance IDs '%s' do not exist", strings.Join(missing, ", "))}
	}
	out := xDescribeInstances{Header: f.header("DescribeInstances")}
	for _, id := range ids {
		in := f.instances[id]
		x := xInstance{
			InstanceID: in.id, ImageID: "ami-0abcdef1234567890", InstanceType: "t3.micro",
			State: xState{16, in.state}, SubnetID: in.subnet, VpcID: in.vpc, Tags: f.tagSet(id),
		}
		if in.profile != "" {
			x.Profile = &xProfileRef{in.profile, "AIPA" + strings.ToUpper(in.id[2:])}
		}
		for i, vol := range in.volumes {
			x.BlockDevices = append(x.BlockDevices, xBlockDevice{fmt.Sprintf("/dev/xvd%c", 'a'+i), xEBS{vol, "attached"}})
		}
		for _, eid := range in.enis {
			e := f.enis[eid]
			xe := xENI{
				NetworkInterfaceID: e.id, SubnetID: e.subnet, VpcID: e.vpc, OwnerID: ownerID, Status: "in-use",
				PrivateIPAddress: e.ips[0], Attachment: xAttachment{"eni-attach-" + e.id[4:], e.device, 0, "attached"},
				Groups: f.groupIDs(e.groups), InterfaceType: "interface",
			}
			for i, ip := range e.ips {
				xe.PrivateIPs = append(xe.PrivateIPs, xPrivateIP{ip, i == 0})
			}
			for _, ip := range e.ipv6 {
				xe.IPv6 = append(xe.IPv6, xIPv6{ip})
			}
			if e.device == 0 {
				x.PrivateIPAddress = e.ips[0]
				x.Groups = xe.Groups
			}
			x.ENIs = append(x.ENIs, xe)
		}
		out.Reservations = append(out.Reservations, xReservation{"r-" + in.id[2:], ownerID, []xInstance{x}})
	}
	return out, nil
}

// --- security groups ---

type xRange struct {
	CidrIP      string `xml:"cidrIp"`
	Description string `xml:"description,omitempty"`
}

type xRange6 struct {
	CidrIPv6    string `xml:"cidrIpv6"`
	Description string `xml:"description,omitempty"`
}

type xPair struct {
	GroupID string `xml:"groupId"`
	UserID  string `xml:"userId"`
}

type xPrefixList struct {
	PrefixListID string `xml:"prefixListId"`
}

type xPermission struct {
	IPProtocol  string        `xml:"ipProtocol"`
	FromPort    *int          `xml:"fromPort,omitempty"`
	ToPort      *int          `xml:"toPort,omitempty"`
	Groups      []xPair       `xml:"groups>item"`
	IPRanges    []xRange      `xml:"ipRanges>item"`
	IPv6Ranges  []xRange6     `xml:"ipv6Ranges>item"`
	PrefixLists []xPrefixList `xml:"prefixListIds>item"`
}

type xSecurityGroup struct {
	OwnerID     string        `xml:"ownerId"`
	GroupID     string        `xml:"groupId"`
	GroupName   string        `xml:"groupName"`
	Description string        `xml:"groupDescription"`
	VpcID       string        `xml:"vpcId"`
	Ingress     []xPermission `xml:"ipPermissions>item"`
	Egress      []xPermission `xml:"ipPermissionsEgress>item"`
	Tags        []xTag        `xml:"tagSet>item"`
}

type xDescribeSecurityGroups struct {
	Header
	Groups []xSecurityGroup `xml:"securityGroupInfo>item"`
}

// permissions renders rules as EC2 does: one item per protocol and port
// range, holding its CIDRs, groups and prefix lists.
func permissions(rules []fRule) []xPermission {
	var out []xPermission
	idx := map[string]int{}
	for _, r := range rules {
		k := fmt.Sprintf("%s/%d/%d", r.proto, r.from, r.to)
		i, ok := idx[k]
		if !ok {
			p := xPermission{IPProtocol: r.proto}
			if r.proto != "-1" {
				from, to := r.from, r.to
				p.FromPort, p.ToPort = &from, &to
			}
			out = append(out, p)
			i = len(out) - 1
			idx[k] = i
		}
		p := &out[i]
		switch {
		case r.cidr != "":
			p.IPRanges = append(p.IPRanges, xRange{r.cidr, r.desc})
		case r.cidr6 != "":
			p.IPv6Ranges = append(p.IPv6Ranges, xRange6{r.cidr6, r.desc})
		case r.group != "":
			p.Groups = append(p.Groups, xPair{r.group, ownerID})
		case r.prefixList != "":
			p.PrefixLists = append(p.PrefixLists, xPrefixList{r.prefixList})
		}
	}
	return out
}

func (f *fakeEC2) describeSecurityGroups(v url.Values) (any, *ec2Error) {
	ids := list(v, "GroupId")
	for _, id := range ids {
		if f.groups[id] == nil {
			return nil, &ec2Error{400, "InvalidGroup.NotFound", fmt.Sprintf("The security group '%s' does not exist", id)}
		}
	}
	fls := filters(v)
	out := xDescribeSecurityGroups{Header: f.header("DescribeSecurityGroups")}
	var keys []string
	for id := range f.groups {
		keys = append(keys, id)
	}
	slices.Sort(keys)
next:
	for _, id := range keys {
		g := f.groups[id]
		if len(ids) > 0 && !slices.Contains(ids, id) {
			continue
		}
		for _, fl := range fls {
			var ok bool
			switch fl.name {
			case "vpc-id":
				ok = slices.Contains(fl.values, g.vpc)
			case "group-name":
				ok = slices.Contains(fl.values, g.name)
			case "group-id":
				ok = slices.Contains(fl.values, g.id)
			default:
				var known bool
				if ok, known = f.matchTags(id, fl); !known {
					f.t.Errorf("fake EC2: DescribeSecurityGroups filter %q not supported", fl.name)
				}
			}
			if !ok {
				continue next
			}
		}
		out.Groups = append(out.Groups, xSecurityGroup{
			OwnerID: ownerID, GroupID: g.id, GroupName: g.name, Description: g.desc, VpcID: g.vpc,
			Ingress: permissions(g.in), Egress: permissions(g.out), Tags: f.tagSet(id),
		})
	}
	return out, nil
}

type xCreateSecurityGroup struct {
	Header
	Return  bool   `xml:"return"`
	GroupID string `xml:"groupId"`
	Tags    []xTag `xml:"tagSet>item"`
}

func (f *fakeEC2) createSecurityGroup(v url.Values) (any, *ec2Error) {
	name, desc, vpc := v.Get("GroupName"), v.Get("GroupDescription"), v.Get("VpcId")
	if name == "" || desc == "" || vpc == "" {
		return nil, &ec2Error{400, "MissingParameter", "GroupName, GroupDescription and VpcId are required"}
	}
	if strings.HasPrefix(name, "sg-") || len(name) > 255 || len(desc) > 255 {
		return nil, &ec2Error{400, "InvalidParameterValue", "Invalid value for group name or description"}
	}
	if strings.ContainsAny(desc, "'\"\\") {
		return nil, &ec2Error{400, "InvalidParameterValue", "Invalid characters in group description"}
	}
	for _, g := range f.groups {
		if g.vpc == vpc && g.name == name {
			return nil, &ec2Error{400, "InvalidGroup.Duplicate", fmt.Sprintf("The security group '%s' already exists for VPC '%s'", name, vpc)}
		}
	}
	g := &fGroup{id: f.id("sg"), name: name, desc: desc, vpc: vpc}
	// A new group allows all outbound IPv4 traffic.
	g.out = []fRule{{proto: "-1", cidr: "0.0.0.0/0"}}
	f.groups[g.id] = g
	for _, p := range members(v, "TagSpecification") {
		if rt := v.Get(p + ".ResourceType"); rt != "security-group" {
			return nil, &ec2Error{400, "InvalidParameterValue", fmt.Sprintf("'%s' is not a valid taggable resource type for this operation", rt)}
		}
		for k, val := range tagsFrom(v, p+".Tag") {
			f.setTag(g.id, k, val)
		}
	}
	return xCreateSecurityGroup{Header: f.header("CreateSecurityGroup"), Return: true, GroupID: g.id, Tags: f.tagSet(g.id)}, nil
}

func parseRules(v url.Values) ([]fRule, *ec2Error) {
	var out []fRule
	for _, p := range members(v, "IpPermissions") {
		proto := v.Get(p + ".IpProtocol")
		var from, to int
		if proto != "-1" {
			var err1, err2 error
			from, err1 = strconv.Atoi(v.Get(p + ".FromPort"))
			to, err2 = strconv.Atoi(v.Get(p + ".ToPort"))
			if err1 != nil || err2 != nil {
				return nil, &ec2Error{400, "InvalidParameterValue", "FromPort and ToPort are required for " + proto}
			}
		}
		base := fRule{proto: proto, from: from, to: to}
		for _, q := range members(v, p+".IpRanges") {
			r := base
			r.cidr, r.desc = v.Get(q+".CidrIp"), v.Get(q+".Description")
			out = append(out, r)
		}
		for _, q := range members(v, p+".Ipv6Ranges") {
			r := base
			r.cidr6, r.desc = v.Get(q+".CidrIpv6"), v.Get(q+".Description")
			out = append(out, r)
		}
		for _, q := range members(v, p+".Groups") {
			r := base
			r.group = v.Get(q + ".GroupId")
			out = append(out, r)
		}
		for _, q := range members(v, p+".PrefixListIds") {
			r := base
			r.prefixList = v.Get(q + ".PrefixListId")
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		return nil, &ec2Error{400, "MissingParameter", "No IpPermissions given"}
	}
	return out, nil
}

type xRevoke struct {
	Header
	Return  bool          `xml:"return"`
	Unknown []xPermission `xml:"unknownIpPermissionSet>item"`
}

// changeRules authorizes (add) or revokes rules. As EC2 does, an
// authorization that duplicates a rule fails as a whole, and a revocation
// of rules that do not exist succeeds, listing them as unknown.
func (f *fakeEC2) changeRules(v url.Values, egress, add bool) (any, *ec2Error) {
	g := f.groups[v.Get("GroupId")]
	if g == nil {
		return nil, &ec2Error{400, "InvalidGroup.NotFound", fmt.Sprintf("The security group '%s' does not exist", v.Get("GroupId"))}
	}
	rules, e := parseRules(v)
	if e != nil {
		return nil, e
	}
	set := &g.in
	action := "Ingress"
	if egress {
		set, action = &g.out, "Egress"
	}
	has := func(r fRule) int {
		return slices.IndexFunc(*set, func(x fRule) bool { return x.key() == r.key() })
	}
	if add {
		for _, r := range rules {
			if has(r) >= 0 {
				return nil, &ec2Error{400, "InvalidPermission.Duplicate", fmt.Sprintf("the specified rule \"peer: %s%s, %s\" already exists", r.cidr, r.cidr6, r.proto)}
			}
		}
		*set = append(*set, rules...)
		return xReturn{Header: f.header("AuthorizeSecurityGroup" + action), Return: true}, nil
	}
	var unknown []fRule
	for _, r := range rules {
		if i := has(r); i >= 0 {
			*set = slices.Delete(*set, i, i+1)
		} else {
			unknown = append(unknown, r)
		}
	}
	return xRevoke{Header: f.header("RevokeSecurityGroup" + action), Return: true, Unknown: permissions(unknown)}, nil
}

// --- interfaces, tags, instances, snapshots ---

func (f *fakeEC2) modifyNetworkInterfaceAttribute(v url.Values) (any, *ec2Error) {
	e := f.enis[v.Get("NetworkInterfaceId")]
	if e == nil {
		return nil, &ec2Error{400, "InvalidNetworkInterfaceID.NotFound", fmt.Sprintf("The networkInterface ID '%s' does not exist", v.Get("NetworkInterfaceId"))}
	}
	groups := list(v, "SecurityGroupId")
	if len(groups) == 0 {
		return nil, &ec2Error{400, "InvalidParameterCombination", "No attribute specified"}
	}
	for _, id := range groups {
		if g := f.groups[id]; g == nil || g.vpc != e.vpc {
			return nil, &ec2Error{400, "InvalidGroup.NotFound", fmt.Sprintf("The security group '%s' does not exist in VPC '%s'", id, e.vpc)}
		}
	}
	if f.onModify != nil {
		if err := f.onModify(e.id, groups); err != nil {
			return nil, err
		}
	}
	e.groups = groups
	f.moves[e.id] = append(f.moves[e.id], slices.Clone(groups))
	return xReturn{Header: f.header("ModifyNetworkInterfaceAttribute"), Return: true}, nil
}

func (f *fakeEC2) exists(id string) *ec2Error {
	switch {
	case strings.HasPrefix(id, "i-") && f.instances[id] != nil,
		strings.HasPrefix(id, "sg-") && f.groups[id] != nil,
		strings.HasPrefix(id, "snap-") && f.snapshots[id] != nil:
		return nil
	case strings.HasPrefix(id, "i-"):
		return &ec2Error{400, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id)}
	}
	return &ec2Error{400, "InvalidID", fmt.Sprintf("The ID '%s' is not valid", id)}
}

func (f *fakeEC2) setTag(id, k, v string) {
	if f.tags[id] == nil {
		f.tags[id] = map[string]string{}
	}
	f.tags[id][k] = v
}

func (f *fakeEC2) createTags(v url.Values) (any, *ec2Error) {
	ids := list(v, "ResourceId")
	tags := tagsFrom(v, "Tag")
	for _, id := range ids {
		if e := f.exists(id); e != nil {
			return nil, e
		}
	}
	for k, val := range tags {
		if len(k) > 128 || len(val) > 256 || strings.HasPrefix(k, "aws:") {
			return nil, &ec2Error{400, "InvalidParameterValue", fmt.Sprintf("Tag %q is not valid", k)}
		}
	}
	for _, id := range ids {
		for k, val := range tags {
			f.setTag(id, k, val)
		}
		if len(f.tags[id]) > 50 {
			return nil, &ec2Error{400, "TagLimitExceeded", "The maximum number of Tags for a resource has been reached."}
		}
	}
	return xReturn{Header: f.header("CreateTags"), Return: true}, nil
}

func (f *fakeEC2) deleteTags(v url.Values) (any, *ec2Error) {
	ids := list(v, "ResourceId")
	for _, id := range ids {
		if e := f.exists(id); e != nil {
			return nil, e
		}
	}
	for _, id := range ids {
		for _, p := range members(v, "Tag") {
			k := v.Get(p + ".Key")
			if want, ok := v[p+".Value"]; ok && f.tags[id][k] != want[0] {
				continue
			}
			delete(f.tags[id], k)
		}
	}
	return xReturn{Header: f.header("DeleteTags"), Return: true}, nil
}

func (f *fakeEC2) modifyInstanceAttribute(v url.Values) (any, *ec2Error) {
	in := f.instances[v.Get("InstanceId")]
	if in == nil {
		return nil, &ec2Error{400, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", v.Get("InstanceId"))}
	}
	val, ok := v["DisableApiTermination.Value"]
	if !ok {
		f.t.Errorf("fake EC2: ModifyInstanceAttribute without DisableApiTermination.Value: %v", v)
		return nil, &ec2Error{400, "InvalidParameterCombination", "only DisableApiTermination is supported here"}
	}
	in.disableAPITermination = val[0] == "true"
	return xReturn{Header: f.header("ModifyInstanceAttribute"), Return: true}, nil
}

type xSnapshot struct {
	SnapshotID  string `xml:"snapshotId"`
	VolumeID    string `xml:"volumeId"`
	Status      string `xml:"status"`
	StartTime   string `xml:"startTime"`
	Progress    string `xml:"progress"`
	OwnerID     string `xml:"ownerId"`
	VolumeSize  int    `xml:"volumeSize"`
	Description string `xml:"description"`
	Encrypted   bool   `xml:"encrypted"`
	Tags        []xTag `xml:"tagSet>item"`
}

type xCreateSnapshot struct {
	Header
	xSnapshot
}

type xDescribeSnapshots struct {
	Header
	Snapshots []xSnapshot `xml:"snapshotSet>item"`
}

func (f *fakeEC2) xsnap(s *fSnapshot) xSnapshot {
	return xSnapshot{
		SnapshotID: s.id, VolumeID: s.volume, Status: "pending", StartTime: time.Unix(1767225600, 0).UTC().Format(time.RFC3339),
		Progress: "0%", OwnerID: ownerID, VolumeSize: 8, Description: s.desc, Tags: f.tagSet(s.id),
	}
}

func (f *fakeEC2) createSnapshot(v url.Values) (any, *ec2Error) {
	vol := v.Get("VolumeId")
	found := false
	for _, in := range f.instances {
		found = found || slices.Contains(in.volumes, vol)
	}
	if !found {
		return nil, &ec2Error{400, "InvalidVolume.NotFound", fmt.Sprintf("The volume '%s' does not exist.", vol)}
	}
	s := &fSnapshot{id: f.id("snap"), volume: vol, desc: v.Get("Description")}
	f.snapshots[s.id] = s
	for _, p := range members(v, "TagSpecification") {
		if rt := v.Get(p + ".ResourceType"); rt != "snapshot" {
			return nil, &ec2Error{400, "InvalidParameterValue", fmt.Sprintf("'%s' is not a valid taggable resource type for this operation", rt)}
		}
		for k, val := range tagsFrom(v, p+".Tag") {
			f.setTag(s.id, k, val)
		}
	}
	return xCreateSnapshot{Header: f.header("CreateSnapshot"), xSnapshot: f.xsnap(s)}, nil
}

func (f *fakeEC2) describeSnapshots(v url.Values) (any, *ec2Error) {
	if owners := list(v, "Owner"); len(owners) > 0 && !slices.Contains(owners, "self") && !slices.Contains(owners, ownerID) {
		return xDescribeSnapshots{Header: f.header("DescribeSnapshots")}, nil
	}
	fls := filters(v)
	out := xDescribeSnapshots{Header: f.header("DescribeSnapshots")}
	var ids []string
	for id := range f.snapshots {
		ids = append(ids, id)
	}
	slices.Sort(ids)
next:
	for _, id := range ids {
		s := f.snapshots[id]
		for _, fl := range fls {
			var ok bool
			if fl.name == "volume-id" {
				ok = slices.Contains(fl.values, s.volume)
			} else {
				var known bool
				if ok, known = f.matchTags(id, fl); !known {
					f.t.Errorf("fake EC2: DescribeSnapshots filter %q not supported", fl.name)
				}
			}
			if !ok {
				continue next
			}
		}
		out.Snapshots = append(out.Snapshots, f.xsnap(s))
	}
	return out, nil
}
