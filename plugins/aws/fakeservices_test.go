package main

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The Auto Scaling, Elastic Load Balancing v2 and IAM parts of the fake:
// the AWS Query protocol of each (a form-encoded POST with Action and the
// API's Version; an XML answer <ActionResponse xmlns=…><ActionResult>…
// with lists as <member> elements and <ResponseMetadata><RequestId>;
// errors as <ErrorResponse><Error><Type><Code><Message>), with the shapes
// of each API reference, for the actions the plugin calls.
const (
	asVersion  = "2011-01-01"
	asNS       = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
	elbVersion = "2015-12-01"
	elbNS      = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"
	iamVersion = "2010-05-08"
	iamNS      = "https://iam.amazonaws.com/doc/2010-05-08/"
	// tgPageSize is the most target groups one DescribeTargetGroups page
	// holds here, small so that the plugin must follow NextMarker.
	tgPageSize = 2
)

type fASG struct {
	name      string
	desired   int
	instances []string
}

// fDetach is one DetachInstances call that succeeded.
type fDetach struct {
	group, instance string
	decrement       bool
}

type fTarget struct {
	id   string
	port int
}

type fTargetGroup struct {
	arn, name, vpc, typ string
	port                int
	targets             []fTarget
}

type fProfile struct {
	name, arn, role string
}

type svcState struct {
	asgs         map[string]*fASG
	detaches     []fDetach
	tgs          []*fTargetGroup
	profiles     map[string]*fProfile
	roles        map[string]bool
	rolePolicies map[string]map[string]string // role → policy name → document
	signedFor    map[string]string            // Version → credential scope of its last request
}

func newSvcState() svcState {
	return svcState{
		asgs:         map[string]*fASG{},
		profiles:     map[string]*fProfile{},
		roles:        map[string]bool{},
		rolePolicies: map[string]map[string]string{},
		signedFor:    map[string]string{},
	}
}

// addASG adds an Auto Scaling group holding the instances.
func (f *fakeEC2) addASG(name string, desired int, instances ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asgs[name] = &fASG{name: name, desired: desired, instances: instances}
}

func (f *fakeEC2) asg(name string) fASG {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := *f.asgs[name]
	g.instances = slices.Clone(g.instances)
	return g
}

func (f *fakeEC2) detachList() []fDetach {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.detaches)
}

// addTargetGroup adds a target group of type typ ("instance", "ip") and
// returns its ARN.
func (f *fakeEC2) addTargetGroup(name, vpc, typ string, port int, targets ...fTarget) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	arn := fmt.Sprintf("arn:aws:elasticloadbalancing:eu-west-1:%s:targetgroup/%s/%016x", ownerID, name, 0x73d0000+len(f.tgs))
	f.tgs = append(f.tgs, &fTargetGroup{arn: arn, name: name, vpc: vpc, typ: typ, port: port, targets: targets})
	return arn
}

func (f *fakeEC2) targets(arn string) []fTarget {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, tg := range f.tgs {
		if tg.arn == arn {
			return slices.Clone(tg.targets)
		}
	}
	return nil
}

// addProfile adds an instance profile holding role (none when ""), gives
// it to the instance, and returns the profile's ARN.
func (f *fakeEC2) addProfile(instance, name, role string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := &fProfile{name: name, arn: fmt.Sprintf("arn:aws:iam::%s:instance-profile/cordon-test/%s", ownerID, name), role: role}
	f.profiles[name] = p
	if role != "" {
		f.roles[role] = true
	}
	f.instances[instance].profile = p.arn
	return p.arn
}

func (f *fakeEC2) rolePolicy(role, name string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.rolePolicies[role][name]
	return d, ok
}

func (f *fakeEC2) scope(version string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.signedFor[version]
}

var scopeRE = regexp.MustCompile(`Credential=[^/]+/\d{8}/([^/]+/[^/]+)/aws4_request`)

// serveQuery answers a request for Auto Scaling, ELBv2 or IAM; f.mu is held.
func (f *fakeEC2) serveQuery(w http.ResponseWriter, r *http.Request, version, action string, form url.Values) {
	var ns, prefix string
	var handlers map[string]func(url.Values) (any, *ec2Error)
	switch version {
	case asVersion:
		ns, prefix = asNS, "autoscaling"
		handlers = map[string]func(url.Values) (any, *ec2Error){
			"DescribeAutoScalingInstances": f.describeAutoScalingInstances,
			"DetachInstances":              f.detachInstances,
		}
	case elbVersion:
		ns, prefix = elbNS, "elasticloadbalancing"
		handlers = map[string]func(url.Values) (any, *ec2Error){
			"DescribeTargetGroups": f.describeTargetGroups,
			"DescribeTargetHealth": f.describeTargetHealth,
			"DeregisterTargets":    f.deregisterTargets,
		}
	case iamVersion:
		ns, prefix = iamNS, "iam"
		handlers = map[string]func(url.Values) (any, *ec2Error){
			"GetInstanceProfile": f.getInstanceProfile,
			"PutRolePolicy":      f.putRolePolicy,
		}
	default:
		f.fail(w, &ec2Error{400, "InvalidParameterValue", fmt.Sprintf("unsupported Version %q", version)})
		return
	}
	// The credential scope, region/service, tells where the SDK signed for.
	if m := scopeRE.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		f.signedFor[version] = m[1]
	}
	if n := f.throttles[action]; n > 0 {
		f.throttles[action] = n - 1
		f.failQuery(w, ns, &ec2Error{400, "Throttling", "Rate exceeded"})
		return
	}
	if f.denied[action] {
		f.failQuery(w, ns, &ec2Error{403, "AccessDenied", fmt.Sprintf(
			"User: arn:aws:iam::%s:user/cordon is not authorized to perform: %s:%s because no identity-based policy allows the %s:%s action",
			ownerID, prefix, action, prefix, action)})
		return
	}
	h := handlers[action]
	if h == nil {
		f.failQuery(w, ns, &ec2Error{400, "InvalidAction", fmt.Sprintf("Could not find operation %s for version %s", action, version)})
		return
	}
	result, e := h(form)
	if e != nil {
		f.failQuery(w, ns, e)
		return
	}
	type resp struct {
		XMLName   xml.Name
		Xmlns     string `xml:"xmlns,attr"`
		Result    any
		RequestID string `xml:"ResponseMetadata>RequestId"`
	}
	out, err := xml.Marshal(resp{XMLName: xml.Name{Local: action + "Response"}, Xmlns: ns, Result: result, RequestID: f.requestID()})
	if err != nil {
		f.t.Errorf("fake %s: marshal %s: %v", prefix, action, err)
		w.WriteHeader(500)
		return
	}
	w.Header().Set("Content-Type", "text/xml")
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(out)
}

func (f *fakeEC2) requestID() string {
	return fmt.Sprintf("c0de0000-0000-4000-8000-%012d", len(f.calls))
}

func (f *fakeEC2) failQuery(w http.ResponseWriter, ns string, e *ec2Error) {
	type xErr struct {
		Type    string `xml:"Type"`
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	}
	type xResp struct {
		XMLName   xml.Name `xml:"ErrorResponse"`
		Xmlns     string   `xml:"xmlns,attr"`
		Error     xErr     `xml:"Error"`
		RequestID string   `xml:"RequestId"`
	}
	typ := "Sender"
	if e.status >= 500 {
		typ = "Receiver"
	}
	out, _ := xml.Marshal(xResp{Xmlns: ns, Error: xErr{typ, e.code, e.message}, RequestID: f.requestID()})
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(e.status)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(out)
}

// --- Auto Scaling ---

type xASInstance struct {
	InstanceID           string `xml:"InstanceId"`
	InstanceType         string `xml:"InstanceType"`
	AutoScalingGroupName string `xml:"AutoScalingGroupName"`
	AvailabilityZone     string `xml:"AvailabilityZone"`
	LifecycleState       string `xml:"LifecycleState"`
	HealthStatus         string `xml:"HealthStatus"`
	ProtectedFromScaleIn bool   `xml:"ProtectedFromScaleIn"`
}

type xDescribeAutoScalingInstancesResult struct {
	XMLName   xml.Name      `xml:"DescribeAutoScalingInstancesResult"`
	Instances []xASInstance `xml:"AutoScalingInstances>member"`
}

func (f *fakeEC2) describeAutoScalingInstances(v url.Values) (any, *ec2Error) {
	ids := list(v, "InstanceIds.member")
	out := xDescribeAutoScalingInstancesResult{Instances: []xASInstance{}}
	for _, id := range ids {
		for _, g := range f.asgs {
			if slices.Contains(g.instances, id) {
				out.Instances = append(out.Instances, xASInstance{id, "t3.micro", g.name, "eu-west-1a", "InService", "HEALTHY", false})
			}
		}
	}
	return out, nil
}

type xActivity struct {
	ActivityID           string `xml:"ActivityId"`
	AutoScalingGroupName string `xml:"AutoScalingGroupName"`
	Description          string `xml:"Description"`
	Cause                string `xml:"Cause"`
	StartTime            string `xml:"StartTime"`
	StatusCode           string `xml:"StatusCode"`
	Progress             int    `xml:"Progress"`
}

type xDetachInstancesResult struct {
	XMLName    xml.Name    `xml:"DetachInstancesResult"`
	Activities []xActivity `xml:"Activities>member"`
}

func (f *fakeEC2) detachInstances(v url.Values) (any, *ec2Error) {
	name := v.Get("AutoScalingGroupName")
	dec, ok := v["ShouldDecrementDesiredCapacity"]
	if !ok {
		return nil, &ec2Error{400, "ValidationError", "1 validation error detected: Value null at 'shouldDecrementDesiredCapacity' failed to satisfy constraint: Member must not be null"}
	}
	g := f.asgs[name]
	if g == nil {
		return nil, &ec2Error{400, "ValidationError", "AutoScalingGroup name not found - AutoScalingGroup " + name + " not found"}
	}
	out := xDetachInstancesResult{}
	for _, id := range list(v, "InstanceIds.member") {
		i := slices.Index(g.instances, id)
		if i < 0 {
			return nil, &ec2Error{400, "ValidationError", fmt.Sprintf("The instance %s is not part of Auto Scaling group %s.", id, name)}
		}
		g.instances = slices.Delete(g.instances, i, i+1)
		decrement := dec[0] == "true"
		if decrement {
			g.desired--
		}
		f.detaches = append(f.detaches, fDetach{name, id, decrement})
		out.Activities = append(out.Activities, xActivity{
			ActivityID: fmt.Sprintf("c0de%04d-0000-4000-8000-000000000000", len(f.detaches)), AutoScalingGroupName: name,
			Description: "Detaching EC2 instance: " + id, Cause: "an instance was detached by a user request",
			StartTime: "2026-01-01T00:00:00Z", StatusCode: "InProgress", Progress: 50,
		})
	}
	return out, nil
}

// --- Elastic Load Balancing v2 ---

type xTargetGroup struct {
	TargetGroupArn   string   `xml:"TargetGroupArn"`
	TargetGroupName  string   `xml:"TargetGroupName"`
	Protocol         string   `xml:"Protocol"`
	Port             int      `xml:"Port"`
	VpcID            string   `xml:"VpcId"`
	HealthCheckPath  string   `xml:"HealthCheckPath"`
	TargetType       string   `xml:"TargetType"`
	IPAddressType    string   `xml:"IpAddressType"`
	LoadBalancerArns []string `xml:"LoadBalancerArns>member"`
}

type xDescribeTargetGroupsResult struct {
	XMLName      xml.Name       `xml:"DescribeTargetGroupsResult"`
	TargetGroups []xTargetGroup `xml:"TargetGroups>member"`
	NextMarker   string         `xml:"NextMarker,omitempty"`
}

func (f *fakeEC2) describeTargetGroups(v url.Values) (any, *ec2Error) {
	start := 0
	if m := v.Get("Marker"); m != "" {
		n, err := strconv.Atoi(m)
		if err != nil || n < 0 || n > len(f.tgs) {
			return nil, &ec2Error{400, "ValidationError", "Invalid marker"}
		}
		start = n
	}
	size := tgPageSize
	if ps := v.Get("PageSize"); ps != "" {
		if n, err := strconv.Atoi(ps); err == nil && n < size {
			size = n
		}
	}
	out := xDescribeTargetGroupsResult{TargetGroups: []xTargetGroup{}}
	end := min(start+size, len(f.tgs))
	for _, tg := range f.tgs[start:end] {
		out.TargetGroups = append(out.TargetGroups, xTargetGroup{
			TargetGroupArn: tg.arn, TargetGroupName: tg.name, Protocol: "HTTP", Port: tg.port, VpcID: tg.vpc,
			HealthCheckPath: "/", TargetType: tg.typ, IPAddressType: "ipv4",
			LoadBalancerArns: []string{fmt.Sprintf("arn:aws:elasticloadbalancing:eu-west-1:%s:loadbalancer/app/web/50dc6c495c0c9188", ownerID)},
		})
	}
	if end < len(f.tgs) {
		out.NextMarker = strconv.Itoa(end)
	}
	return out, nil
}

func (f *fakeEC2) targetGroup(arn string) (*fTargetGroup, *ec2Error) {
	for _, tg := range f.tgs {
		if tg.arn == arn {
			return tg, nil
		}
	}
	return nil, &ec2Error{400, "TargetGroupNotFound", fmt.Sprintf("Target groups '%s' not found", arn)}
}

type xTarget struct {
	ID   string `xml:"Id"`
	Port int    `xml:"Port"`
}

type xTargetHealthDescription struct {
	Target          xTarget `xml:"Target"`
	HealthCheckPort string  `xml:"HealthCheckPort"`
	State           string  `xml:"TargetHealth>State"`
}

type xDescribeTargetHealthResult struct {
	XMLName      xml.Name                   `xml:"DescribeTargetHealthResult"`
	Descriptions []xTargetHealthDescription `xml:"TargetHealthDescriptions>member"`
}

func (f *fakeEC2) describeTargetHealth(v url.Values) (any, *ec2Error) {
	tg, e := f.targetGroup(v.Get("TargetGroupArn"))
	if e != nil {
		return nil, e
	}
	out := xDescribeTargetHealthResult{Descriptions: []xTargetHealthDescription{}}
	for _, t := range tg.targets {
		out.Descriptions = append(out.Descriptions, xTargetHealthDescription{xTarget{t.id, t.port}, strconv.Itoa(t.port), "healthy"})
	}
	return out, nil
}

type xDeregisterTargetsResult struct {
	XMLName xml.Name `xml:"DeregisterTargetsResult"`
}

func (f *fakeEC2) deregisterTargets(v url.Values) (any, *ec2Error) {
	tg, e := f.targetGroup(v.Get("TargetGroupArn"))
	if e != nil {
		return nil, e
	}
	ps := members(v, "Targets.member")
	if len(ps) == 0 {
		return nil, &ec2Error{400, "ValidationError", "Targets must not be empty"}
	}
	for _, p := range ps {
		id, port := v.Get(p+".Id"), v.Get(p+".Port")
		i := slices.IndexFunc(tg.targets, func(t fTarget) bool {
			return t.id == id && (port == "" || strconv.Itoa(t.port) == port)
		})
		if i < 0 {
			return nil, &ec2Error{400, "InvalidTarget", fmt.Sprintf("The following targets are not registered in target group '%s': '%s'", tg.arn, id)}
		}
		tg.targets = slices.Delete(tg.targets, i, i+1)
	}
	return xDeregisterTargetsResult{}, nil
}

// --- IAM ---

type xRole struct {
	Path                     string `xml:"Path"`
	RoleName                 string `xml:"RoleName"`
	RoleID                   string `xml:"RoleId"`
	Arn                      string `xml:"Arn"`
	CreateDate               string `xml:"CreateDate"`
	AssumeRolePolicyDocument string `xml:"AssumeRolePolicyDocument"`
}

type xInstanceProfile struct {
	Path                string  `xml:"Path"`
	InstanceProfileName string  `xml:"InstanceProfileName"`
	InstanceProfileID   string  `xml:"InstanceProfileId"`
	Arn                 string  `xml:"Arn"`
	CreateDate          string  `xml:"CreateDate"`
	Roles               []xRole `xml:"Roles>member"`
}

type xGetInstanceProfileResult struct {
	XMLName         xml.Name         `xml:"GetInstanceProfileResult"`
	InstanceProfile xInstanceProfile `xml:"InstanceProfile"`
}

func (f *fakeEC2) getInstanceProfile(v url.Values) (any, *ec2Error) {
	name := v.Get("InstanceProfileName")
	p := f.profiles[name]
	if p == nil {
		return nil, &ec2Error{404, "NoSuchEntity", fmt.Sprintf("Instance Profile %s cannot be found.", name)}
	}
	out := xGetInstanceProfileResult{InstanceProfile: xInstanceProfile{
		Path: "/cordon-test/", InstanceProfileName: p.name, InstanceProfileID: "AIPA" + strings.ToUpper(p.name),
		Arn: p.arn, CreateDate: "2026-01-01T00:00:00Z", Roles: []xRole{},
	}}
	if p.role != "" {
		trust := url.QueryEscape(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}`)
		out.InstanceProfile.Roles = append(out.InstanceProfile.Roles, xRole{
			Path: "/", RoleName: p.role, RoleID: "AROA" + strings.ToUpper(p.role), Arn: fmt.Sprintf("arn:aws:iam::%s:role/%s", ownerID, p.role),
			CreateDate: "2026-01-01T00:00:00Z", AssumeRolePolicyDocument: trust,
		})
	}
	return out, nil
}

var policyNameRE = regexp.MustCompile(`^[\w+=,.@-]{1,128}$`)

func (f *fakeEC2) putRolePolicy(v url.Values) (any, *ec2Error) {
	role, name, doc := v.Get("RoleName"), v.Get("PolicyName"), v.Get("PolicyDocument")
	if !f.roles[role] {
		return nil, &ec2Error{404, "NoSuchEntity", fmt.Sprintf("The role with name %s cannot be found.", role)}
	}
	if !policyNameRE.MatchString(name) {
		return nil, &ec2Error{400, "ValidationError", "The specified value for policyName is invalid."}
	}
	if !json.Valid([]byte(doc)) {
		return nil, &ec2Error{400, "MalformedPolicyDocument", "Syntax errors in policy."}
	}
	if f.rolePolicies[role] == nil {
		f.rolePolicies[role] = map[string]string{}
	}
	f.rolePolicies[role][name] = doc
	return nil, nil
}
