package main

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeCompute is a Compute Engine endpoint for tests: it speaks the REST
// v1 JSON API (cloud.google.com/compute/docs/reference/rest/v1) for the
// methods the plugin calls, with the request and response shapes of the
// API reference (instances.get, setTags, setLabels; firewalls.list, get,
// insert, update; zoneOperations.get, globalOperations.get; errors as
// {"error":{"code","message","errors":[{"reason",...}]}}), and keeps
// state: instances with their tags, labels and fingerprints, networks,
// firewall rules, operations. Request bodies are decoded strictly, so a
// field the reference does not name fails the call. The real SDK talks to
// it, so the SDK's encoding and parsing prove the shapes.
//
// With token set, every API call must carry it as a bearer token, and
// /token answers the OAuth 2.0 JWT bearer grant of a service account key
// whose signature checks with tokenKey.
//
// A mutating method answers with its operation RUNNING, and
// zoneOperations.get or globalOperations.get then finds it DONE, so the
// SDK's polling is used.
//
// Faults: throttle answers a method with 429 (or 403 rateLimitExceeded) a
// number of times; deny answers it with 403 forbidden; failOp makes an
// operation fail (DONE with httpErrorStatusCode and error.errors) and
// change nothing; beforeOnce runs a function on the state just before a
// method is carried out (a concurrent change).
type fakeCompute struct {
	t   *testing.T
	srv *httptest.Server

	token    string
	tokenKey *rsa.PublicKey

	mu        sync.Mutex
	n         int
	instances map[string]*fInstance            // project/zone/name
	networks  map[string]bool                  // projects/p/global/networks/n
	firewalls map[string]map[string]*fFirewall // project → name → rule
	ops       map[string]*fOperation           // project/zone-or-global/name

	calls     []string // methods called, in order, failures included
	throttles map[string]int
	throttle3 bool // throttle with 403 rateLimitExceeded instead of 429
	denied    map[string]bool
	before    map[string]func(f *fakeCompute)
	failOps   map[string]apiErr // operation type → how its next operation fails
	tokens    int               // token requests
}

const apiBase = "https://www.googleapis.com/compute/v1/"

type fInstance struct {
	project, zone, name string
	id                  uint64
	tags                []string
	tagFP               string
	labels              map[string]string
	labelFP             string
	nics                []fNIC
	sas                 []string
}

type fNIC struct {
	network, subnet, ip, ipv6 string
}

// fFirewall is the Firewall resource as the reference documents it.
type fFirewall struct {
	Kind                  string     `json:"kind,omitempty"`
	ID                    string     `json:"id,omitempty"`
	CreationTimestamp     string     `json:"creationTimestamp,omitempty"`
	Name                  string     `json:"name"`
	Description           string     `json:"description,omitempty"`
	Network               string     `json:"network,omitempty"`
	Priority              *int       `json:"priority,omitempty"`
	SourceRanges          []string   `json:"sourceRanges,omitempty"`
	DestinationRanges     []string   `json:"destinationRanges,omitempty"`
	SourceTags            []string   `json:"sourceTags,omitempty"`
	TargetTags            []string   `json:"targetTags,omitempty"`
	SourceServiceAccounts []string   `json:"sourceServiceAccounts,omitempty"`
	TargetServiceAccounts []string   `json:"targetServiceAccounts,omitempty"`
	Allowed               []fProto   `json:"allowed,omitempty"`
	Denied                []fProto   `json:"denied,omitempty"`
	Direction             string     `json:"direction,omitempty"`
	LogConfig             *fLog      `json:"logConfig,omitempty"`
	Disabled              bool       `json:"disabled"`
	SelfLink              string     `json:"selfLink,omitempty"`
	Params                *fFwParams `json:"params,omitempty"`
}

type fProto struct {
	IPProtocol string   `json:"IPProtocol"`
	Ports      []string `json:"ports,omitempty"`
}

type fLog struct {
	Enable   bool   `json:"enable"`
	Metadata string `json:"metadata,omitempty"`
}

type fFwParams struct {
	ResourceManagerTags map[string]string `json:"resourceManagerTags,omitempty"`
}

// fOperation is the Operation resource.
type fOperation struct {
	Kind          string `json:"kind"`
	ID            string `json:"id"`
	Name          string `json:"name"`
	Zone          string `json:"zone,omitempty"`
	OperationType string `json:"operationType"`
	TargetLink    string `json:"targetLink"`
	TargetID      string `json:"targetId,omitempty"`
	Status        string `json:"status"`
	User          string `json:"user"`
	Progress      int    `json:"progress"`
	InsertTime    string `json:"insertTime"`
	StartTime     string `json:"startTime"`
	EndTime       string `json:"endTime,omitempty"`
	SelfLink      string `json:"selfLink"`
	// A failed operation.
	HTTPErrorStatusCode int       `json:"httpErrorStatusCode,omitempty"`
	HTTPErrorMessage    string    `json:"httpErrorMessage,omitempty"`
	Error               *fOpError `json:"error,omitempty"`
}

type fOpError struct {
	Errors []fOpErrorItem `json:"errors"`
}

type fOpErrorItem struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type apiErr struct {
	code    int
	reason  string
	message string
}

func newFakeCompute(t *testing.T) *fakeCompute {
	t.Helper()
	f := &fakeCompute{
		t:         t,
		instances: map[string]*fInstance{},
		networks:  map[string]bool{},
		firewalls: map[string]map[string]*fFirewall{},
		ops:       map[string]*fOperation{},
		throttles: map[string]int{},
		denied:    map[string]bool{},
		before:    map[string]func(*fakeCompute){},
		failOps:   map[string]apiErr{},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCompute) fingerprint() string {
	f.n++
	return base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("fp%06d", f.n)))
}

func (f *fakeCompute) addNetwork(project, name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := "projects/" + project + "/global/networks/" + name
	f.networks[p] = true
	return apiBase + p
}

type nicSpec struct {
	network string // URL, as addNetwork returns it
	ip      string
	ipv6    string
}

func (f *fakeCompute) addInstance(project, zone, name string, tags []string, labels map[string]string, nics ...nicSpec) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := &fInstance{project: project, zone: zone, name: name, id: 4000000000000000000 + uint64(len(f.instances)),
		tags: slices.Clone(tags), labels: maps.Clone(labels), sas: []string{"web@" + project + ".iam.gserviceaccount.com"}}
	in.tagFP, in.labelFP = f.fingerprint(), f.fingerprint()
	for _, s := range nics {
		region := zone[:strings.LastIndexByte(zone, '-')]
		in.nics = append(in.nics, fNIC{network: s.network, subnet: apiBase + "projects/" + project + "/regions/" + region + "/subnetworks/sub", ip: s.ip, ipv6: s.ipv6})
	}
	f.instances[project+"/"+zone+"/"+name] = in
}

func (f *fakeCompute) instance(project, zone, name string) fInstance {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := *f.instances[project+"/"+zone+"/"+name]
	in.tags, in.labels = slices.Clone(in.tags), maps.Clone(in.labels)
	return in
}

// setTagsByHand changes an instance's tags behind the plugin's back.
func (f *fakeCompute) setTagsByHand(project, zone, name string, tags ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setTagsLocked(project, zone, name, tags...)
}

func (f *fakeCompute) setTagsLocked(project, zone, name string, tags ...string) {
	in := f.instances[project+"/"+zone+"/"+name]
	in.tags, in.tagFP = tags, f.fingerprint()
}

func (f *fakeCompute) rule(project, name string) *fFirewall {
	f.mu.Lock()
	defer f.mu.Unlock()
	fw := f.firewalls[project][name]
	if fw == nil {
		return nil
	}
	c := *fw
	return &c
}

// rules returns the project's rules whose names start with prefix.
func (f *fakeCompute) rules(project, prefix string) []fFirewall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fFirewall
	for name, fw := range f.firewalls[project] {
		if strings.HasPrefix(name, prefix) {
			out = append(out, *fw)
		}
	}
	slices.SortFunc(out, func(a, b fFirewall) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// putRule adds or replaces a rule behind the plugin's back.
func (f *fakeCompute) putRule(project string, fw fFirewall) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fw.Priority == nil {
		fw.Priority = ptr(1000)
	}
	if f.firewalls[project] == nil {
		f.firewalls[project] = map[string]*fFirewall{}
	}
	f.firewalls[project][fw.Name] = &fw
}

func (f *fakeCompute) deleteRule(project, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.firewalls[project], name)
}

func (f *fakeCompute) throttle(method string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.throttles[method] = n
}

func (f *fakeCompute) deny(method string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.denied[method] = true
}

func (f *fakeCompute) allow(method string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.denied, method)
}

// beforeOnce runs fn on the state, under the lock, just before method is
// next carried out.
func (f *fakeCompute) beforeOnce(method string, fn func(*fakeCompute)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.before[method] = fn
}

// failOp makes the next operation of kind ("insert", "setTags", …) fail
// as an operation does: DONE, with httpErrorStatusCode and error.errors.
func (f *fakeCompute) failOp(kind string, e apiErr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failOps[kind] = e
}

func (f *fakeCompute) resetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

func (f *fakeCompute) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeCompute) count(method string) int {
	n := 0
	for _, c := range f.callList() {
		if c == method {
			n++
		}
	}
	return n
}

func ptr[T any](v T) *T { return &v }

// --- protocol ---

var tokenPath = "/token"

func (f *fakeCompute) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == tokenPath {
		f.serveToken(w, r)
		return
	}
	method, args := route(r.Method, r.URL.Path)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, method)
	if method == "" {
		f.fail(w, apiErr{404, "notFound", fmt.Sprintf("no such method: %s %s", r.Method, r.URL.Path)})
		return
	}
	if f.token != "" && r.Header.Get("Authorization") != "Bearer "+f.token {
		f.fail(w, apiErr{401, "required", "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential."})
		return
	}
	if n := f.throttles[method]; n > 0 {
		f.throttles[method] = n - 1
		msg := "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' of service 'compute.googleapis.com' for consumer 'project_number:123456789012'."
		if f.throttle3 {
			f.fail(w, apiErr{403, "rateLimitExceeded", "Rate Limit Exceeded"})
		} else {
			f.fail(w, apiErr{429, "rateLimitExceeded", msg})
		}
		return
	}
	if f.denied[method] {
		f.fail(w, apiErr{403, "forbidden", fmt.Sprintf("Required '%s' permission for '%s'", permissionOf(method), strings.TrimPrefix(r.URL.Path, "/compute/v1/"))})
		return
	}
	if fn := f.before[method]; fn != nil {
		delete(f.before, method)
		fn(f)
	}
	var body any
	var e *apiErr
	switch method {
	case "compute.instances.get":
		body, e = f.getInstance(args)
	case "compute.instances.setTags":
		body, e = f.setTags(r, args)
	case "compute.instances.setLabels":
		body, e = f.setLabels(r, args)
	case "compute.firewalls.list":
		body, e = f.listFirewalls(r, args)
	case "compute.firewalls.get":
		body, e = f.getFirewall(args)
	case "compute.firewalls.insert":
		body, e = f.insertFirewall(r, args)
	case "compute.firewalls.update":
		body, e = f.updateFirewall(r, args)
	case "compute.zoneOperations.get":
		body, e = f.getOperation(args[0] + "/" + args[1] + "/" + args[2])
	case "compute.globalOperations.get":
		body, e = f.getOperation(args[0] + "//" + args[1])
	}
	if e != nil {
		f.fail(w, *e)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	if err := json.NewEncoder(w).Encode(body); err != nil {
		f.t.Errorf("fake compute: encode %s: %v", method, err)
	}
}

// permissionOf is the permission IAM names when it denies method.
func permissionOf(method string) string {
	switch method {
	case "compute.firewalls.insert":
		return "compute.firewalls.create"
	}
	return method
}

var routes = []struct {
	verb, method string
	re           *regexp.Regexp
}{
	{"GET", "compute.instances.get", regexp.MustCompile(`^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)$`)},
	{"POST", "compute.instances.setTags", regexp.MustCompile(`^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)/setTags$`)},
	{"POST", "compute.instances.setLabels", regexp.MustCompile(`^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)/setLabels$`)},
	{"GET", "compute.zoneOperations.get", regexp.MustCompile(`^/compute/v1/projects/([^/]+)/zones/([^/]+)/operations/([^/]+)$`)},
	{"GET", "compute.firewalls.list", regexp.MustCompile(`^/compute/v1/projects/([^/]+)/global/firewalls$`)},
	{"POST", "compute.firewalls.insert", regexp.MustCompile(`^/compute/v1/projects/([^/]+)/global/firewalls$`)},
	{"GET", "compute.firewalls.get", regexp.MustCompile(`^/compute/v1/projects/([^/]+)/global/firewalls/([^/]+)$`)},
	{"PUT", "compute.firewalls.update", regexp.MustCompile(`^/compute/v1/projects/([^/]+)/global/firewalls/([^/]+)$`)},
	{"GET", "compute.globalOperations.get", regexp.MustCompile(`^/compute/v1/projects/([^/]+)/global/operations/([^/]+)$`)},
}

func route(verb, path string) (string, []string) {
	for _, rt := range routes {
		if m := rt.re.FindStringSubmatch(path); m != nil && rt.verb == verb {
			return rt.method, m[1:]
		}
	}
	return "", nil
}

// fail answers with the API's error format.
func (f *fakeCompute) fail(w http.ResponseWriter, e apiErr) {
	type item struct {
		Message string `json:"message"`
		Domain  string `json:"domain"`
		Reason  string `json:"reason"`
	}
	domain := "global"
	if e.reason == "rateLimitExceeded" {
		domain = "usageLimits"
	}
	body := map[string]any{"error": map[string]any{
		"code":    e.code,
		"message": e.message,
		"errors":  []item{{e.message, domain, e.reason}},
	}}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(e.code)
	_ = json.NewEncoder(w).Encode(body)
}

// decode reads a request body strictly: a field the reference does not
// name is an error, as a misnamed field would be lost at the real API.
func decode(r *http.Request, v any) *apiErr {
	d := json.NewDecoder(r.Body)
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return &apiErr{400, "parseError", "Invalid JSON payload received. " + err.Error()}
	}
	return nil
}

func notFound(what string) *apiErr {
	return &apiErr{404, "notFound", fmt.Sprintf("The resource '%s' was not found", what)}
}

func invalid(field, msg string) *apiErr {
	return &apiErr{400, "invalid", fmt.Sprintf("Invalid value for field '%s': %s", field, msg)}
}

func now() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000-07:00") }

// operation records a finished operation and returns it, as a mutating
// method answers.
func (f *fakeCompute) operation(project, zone, kind, target string) *fOperation {
	f.n++
	op := &fOperation{
		Kind: "compute#operation", ID: strconv.Itoa(7000000 + f.n), Name: fmt.Sprintf("operation-%d-%x", f.n, 0x5eed0000+f.n),
		OperationType: kind, TargetLink: target, Status: "DONE", User: "cordon@proj.iam.gserviceaccount.com", Progress: 100,
		InsertTime: now(), StartTime: now(), EndTime: now(),
	}
	key := project + "//" + op.Name
	base := apiBase + "projects/" + project + "/global/operations/"
	if zone != "" {
		op.Zone = apiBase + "projects/" + project + "/zones/" + zone
		key = project + "/" + zone + "/" + op.Name
		base = op.Zone + "/operations/"
	}
	op.SelfLink = base + op.Name
	if e, ok := f.failOps[kind]; ok {
		delete(f.failOps, kind)
		op.HTTPErrorStatusCode, op.HTTPErrorMessage = e.code, http.StatusText(e.code)
		op.Error = &fOpError{Errors: []fOpErrorItem{{Code: e.reason, Message: e.message}}}
	}
	f.ops[key] = op
	// The method answers while the operation runs; operations.get finds
	// it done.
	running := *op
	running.Status, running.Progress, running.EndTime = "RUNNING", 0, ""
	running.HTTPErrorStatusCode, running.HTTPErrorMessage, running.Error = 0, "", nil
	return &running
}

func (f *fakeCompute) getOperation(key string) (any, *apiErr) {
	op := f.ops[key]
	if op == nil {
		return nil, notFound(key)
	}
	return op, nil
}

// --- instances ---

func (f *fakeCompute) lookup(args []string) (*fInstance, *apiErr) {
	in := f.instances[args[0]+"/"+args[1]+"/"+args[2]]
	if in == nil {
		return nil, notFound("projects/" + args[0] + "/zones/" + args[1] + "/instances/" + args[2])
	}
	return in, nil
}

func (in *fInstance) selfLink() string {
	return apiBase + "projects/" + in.project + "/zones/" + in.zone + "/instances/" + in.name
}

func (f *fakeCompute) getInstance(args []string) (any, *apiErr) {
	in, e := f.lookup(args)
	if e != nil {
		return nil, e
	}
	type nic struct {
		Kind        string `json:"kind"`
		Network     string `json:"network"`
		Subnetwork  string `json:"subnetwork"`
		NetworkIP   string `json:"networkIP"`
		IPv6Address string `json:"ipv6Address,omitempty"`
		Name        string `json:"name"`
		StackType   string `json:"stackType"`
		Fingerprint string `json:"fingerprint"`
	}
	type tags struct {
		Items       []string `json:"items,omitempty"`
		Fingerprint string   `json:"fingerprint"`
	}
	type sa struct {
		Email  string   `json:"email"`
		Scopes []string `json:"scopes"`
	}
	type instance struct {
		Kind              string            `json:"kind"`
		ID                string            `json:"id"`
		CreationTimestamp string            `json:"creationTimestamp"`
		Name              string            `json:"name"`
		Tags              tags              `json:"tags"`
		MachineType       string            `json:"machineType"`
		Status            string            `json:"status"`
		Zone              string            `json:"zone"`
		NetworkInterfaces []nic             `json:"networkInterfaces"`
		ServiceAccounts   []sa              `json:"serviceAccounts"`
		SelfLink          string            `json:"selfLink"`
		Labels            map[string]string `json:"labels,omitempty"`
		LabelFingerprint  string            `json:"labelFingerprint"`
	}
	out := instance{
		Kind: "compute#instance", ID: strconv.FormatUint(in.id, 10), CreationTimestamp: "2026-01-05T09:12:44.123-08:00",
		Name: in.name, Tags: tags{in.tags, in.tagFP},
		MachineType: apiBase + "projects/" + in.project + "/zones/" + in.zone + "/machineTypes/e2-standard-2",
		Status:      "RUNNING", Zone: apiBase + "projects/" + in.project + "/zones/" + in.zone,
		SelfLink: in.selfLink(), Labels: in.labels, LabelFingerprint: in.labelFP,
	}
	for i, n := range in.nics {
		stack := "IPV4_ONLY"
		if n.ipv6 != "" {
			stack = "IPV4_IPV6"
		}
		out.NetworkInterfaces = append(out.NetworkInterfaces, nic{"compute#networkInterface", n.network, n.subnet, n.ip, n.ipv6,
			"nic" + strconv.Itoa(i), stack, "nicfp" + strconv.Itoa(i)})
	}
	for _, s := range in.sas {
		out.ServiceAccounts = append(out.ServiceAccounts, sa{s, []string{"https://www.googleapis.com/auth/cloud-platform"}})
	}
	return out, nil
}

var (
	tagRE        = regexp.MustCompile(`^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`)
	labelKeyRE   = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)
	labelValueRE = regexp.MustCompile(`^[a-z0-9_-]{0,63}$`)
)

// setTags: the body is a Tags resource; the fingerprint must be the
// current one (412 conditionNotMet otherwise).
func (f *fakeCompute) setTags(r *http.Request, args []string) (any, *apiErr) {
	in, e := f.lookup(args)
	if e != nil {
		return nil, e
	}
	var req struct {
		Items       []string `json:"items"`
		Fingerprint *string  `json:"fingerprint"`
	}
	if e := decode(r, &req); e != nil {
		return nil, e
	}
	if req.Fingerprint == nil {
		return nil, invalid("resource.tags.fingerprint", "a fingerprint is required")
	}
	if *req.Fingerprint != in.tagFP {
		return nil, &apiErr{412, "conditionNotMet", "Supplied fingerprint does not match current metadata fingerprint."}
	}
	if len(req.Items) > 64 {
		return nil, invalid("resource.tags.items", "at most 64 tags")
	}
	for _, t := range req.Items {
		if !tagRE.MatchString(t) {
			return nil, invalid("resource.tags.items", fmt.Sprintf("%q must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'", t))
		}
	}
	if _, fail := f.failOps["setTags"]; !fail {
		in.tags, in.tagFP = req.Items, f.fingerprint()
	}
	return f.operation(in.project, in.zone, "setTags", in.selfLink()), nil
}

// setLabels: the body is an InstancesSetLabelsRequest.
func (f *fakeCompute) setLabels(r *http.Request, args []string) (any, *apiErr) {
	in, e := f.lookup(args)
	if e != nil {
		return nil, e
	}
	var req struct {
		Labels           map[string]string `json:"labels"`
		LabelFingerprint *string           `json:"labelFingerprint"`
	}
	if e := decode(r, &req); e != nil {
		return nil, e
	}
	if req.LabelFingerprint == nil {
		return nil, invalid("labelFingerprint", "a fingerprint is required")
	}
	if *req.LabelFingerprint != in.labelFP {
		return nil, &apiErr{412, "conditionNotMet", "Labels fingerprint either invalid or resource labels have changed"}
	}
	if len(req.Labels) > 64 {
		return nil, invalid("labels", "at most 64 labels")
	}
	for k, v := range req.Labels {
		if !labelKeyRE.MatchString(k) || !labelValueRE.MatchString(v) {
			return nil, invalid("labels", fmt.Sprintf("%q: %q is not a valid label", k, v))
		}
	}
	if _, fail := f.failOps["setLabels"]; !fail {
		in.labels, in.labelFP = req.Labels, f.fingerprint()
	}
	return f.operation(in.project, in.zone, "setLabels", in.selfLink()), nil
}

// --- firewalls ---

const pageSize = 4

// listFirewalls answers pages of pageSize rules in name order
// (maxResults, pageToken, nextPageToken), so the SDK's paging is used.
func (f *fakeCompute) listFirewalls(r *http.Request, args []string) (any, *apiErr) {
	project := args[0]
	if r.URL.Query().Get("filter") != "" {
		return nil, invalid("filter", "the fake does not filter")
	}
	names := slices.Sorted(maps.Keys(f.firewalls[project]))
	start := 0
	if tok := r.URL.Query().Get("pageToken"); tok != "" {
		var err error
		if start, err = strconv.Atoi(tok); err != nil || start > len(names) {
			return nil, invalid("pageToken", tok)
		}
	}
	size := pageSize
	if m, err := strconv.Atoi(r.URL.Query().Get("maxResults")); err == nil && m > 0 && m < size {
		size = m
	}
	end := min(start+size, len(names))
	type list struct {
		Kind          string       `json:"kind"`
		ID            string       `json:"id"`
		Items         []*fFirewall `json:"items,omitempty"`
		NextPageToken string       `json:"nextPageToken,omitempty"`
		SelfLink      string       `json:"selfLink"`
	}
	out := list{Kind: "compute#firewallList", ID: "projects/" + project + "/global/firewalls", SelfLink: apiBase + "projects/" + project + "/global/firewalls"}
	for _, n := range names[start:end] {
		out.Items = append(out.Items, f.firewalls[project][n])
	}
	if end < len(names) {
		out.NextPageToken = strconv.Itoa(end)
	}
	return out, nil
}

func (f *fakeCompute) getFirewall(args []string) (any, *apiErr) {
	fw := f.firewalls[args[0]][args[1]]
	if fw == nil {
		return nil, notFound("projects/" + args[0] + "/global/firewalls/" + args[1])
	}
	return fw, nil
}

var fwNameRE = regexp.MustCompile(`^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`)

// checkFirewall validates a rule as the API does, and fills in what it
// fills in.
func (f *fakeCompute) checkFirewall(project string, fw *fFirewall) *apiErr {
	if !fwNameRE.MatchString(fw.Name) {
		return invalid("resource.name", fmt.Sprintf("%q does not match RFC 1035", fw.Name))
	}
	if fw.Network == "" {
		fw.Network = apiBase + "projects/" + project + "/global/networks/default"
	}
	n, err := parseNetwork(fw.Network)
	if err != nil || !f.networks[n.path()] {
		return notFound(strings.TrimPrefix(fw.Network, apiBase))
	}
	if n.project != project {
		return invalid("resource.network", "the network must be in the rule's project")
	}
	fw.Network = apiBase + n.path()
	if fw.Priority == nil {
		fw.Priority = ptr(1000)
	}
	if *fw.Priority < 0 || *fw.Priority > 65535 {
		return invalid("resource.priority", strconv.Itoa(*fw.Priority))
	}
	if fw.Direction == "" {
		fw.Direction = "INGRESS"
	}
	if fw.Direction != "INGRESS" && fw.Direction != "EGRESS" {
		return invalid("resource.direction", fw.Direction)
	}
	if (len(fw.Allowed) == 0) == (len(fw.Denied) == 0) {
		return invalid("resource", "exactly one of allowed and denied must be given")
	}
	if fw.Direction == "INGRESS" && len(fw.DestinationRanges) > 0 || fw.Direction == "EGRESS" && len(fw.SourceRanges) > 0 {
		return invalid("resource", "source ranges are for ingress rules, destination ranges for egress rules")
	}
	for _, field := range []struct {
		name   string
		ranges []string
	}{{"sourceRanges", fw.SourceRanges}, {"destinationRanges", fw.DestinationRanges}} {
		fam := map[bool]bool{}
		for _, s := range field.ranges {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return invalid("resource."+field.name, s)
			}
			fam[p.Addr().Is6()] = true
		}
		if len(fam) > 1 {
			return invalid("resource."+field.name, "a rule can have IPv4 or IPv6 ranges, not both")
		}
	}
	for _, p := range append(slices.Clone(fw.Allowed), fw.Denied...) {
		switch p.IPProtocol {
		case "all", "icmp", "esp", "ah", "sctp", "ipip":
			if len(p.Ports) > 0 {
				return invalid("resource.allowed[].ports", "ports only with tcp, udp and sctp")
			}
		case "tcp", "udp":
		default:
			return invalid("resource.allowed[].IPProtocol", p.IPProtocol)
		}
	}
	for _, t := range fw.TargetTags {
		if !tagRE.MatchString(t) {
			return invalid("resource.targetTags", t)
		}
	}
	fw.Kind = "compute#firewall"
	fw.SelfLink = apiBase + "projects/" + project + "/global/firewalls/" + fw.Name
	return nil
}

func (f *fakeCompute) insertFirewall(r *http.Request, args []string) (any, *apiErr) {
	project := args[0]
	var fw fFirewall
	if e := decode(r, &fw); e != nil {
		return nil, e
	}
	if e := f.checkFirewall(project, &fw); e != nil {
		return nil, e
	}
	if f.firewalls[project][fw.Name] != nil {
		return nil, &apiErr{409, "alreadyExists", fmt.Sprintf("The resource 'projects/%s/global/firewalls/%s' already exists", project, fw.Name)}
	}
	if _, fail := f.failOps["insert"]; fail {
		return f.operation(project, "", "insert", fw.SelfLink), nil
	}
	f.n++
	fw.ID, fw.CreationTimestamp = strconv.Itoa(9000000+f.n), now()
	if f.firewalls[project] == nil {
		f.firewalls[project] = map[string]*fFirewall{}
	}
	f.firewalls[project][fw.Name] = &fw
	return f.operation(project, "", "insert", fw.SelfLink), nil
}

// updateFirewall replaces a rule (PUT); the network cannot change.
func (f *fakeCompute) updateFirewall(r *http.Request, args []string) (any, *apiErr) {
	project, name := args[0], args[1]
	cur := f.firewalls[project][name]
	if cur == nil {
		return nil, notFound("projects/" + project + "/global/firewalls/" + name)
	}
	var fw fFirewall
	if e := decode(r, &fw); e != nil {
		return nil, e
	}
	if fw.Name != name {
		return nil, invalid("resource.name", "the name cannot change")
	}
	if e := f.checkFirewall(project, &fw); e != nil {
		return nil, e
	}
	if fw.Network != cur.Network {
		return nil, invalid("resource.network", "the network cannot change")
	}
	if _, fail := f.failOps["update"]; !fail {
		fw.ID, fw.CreationTimestamp = cur.ID, cur.CreationTimestamp
		f.firewalls[project][name] = &fw
	}
	return f.operation(project, "", "update", fw.SelfLink), nil
}

// --- OAuth 2.0 ---

// serveToken answers the JWT bearer grant (RFC 7523) that a service
// account key makes, after checking the assertion's RS256 signature.
func (f *fakeCompute) serveToken(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.tokens++
	f.mu.Unlock()
	fail := func(msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant", "error_description": msg})
	}
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		fail("grant_type")
		return
	}
	parts := strings.Split(r.PostForm.Get("assertion"), ".")
	if len(parts) != 3 || f.tokenKey == nil {
		fail("assertion")
		return
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		fail("signature encoding")
		return
	}
	h := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(f.tokenKey, crypto.SHA256, h[:], sig); err != nil {
		fail("signature")
		return
	}
	claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if !bytes.Contains(claims, []byte(`"scope"`)) {
		fail("no scope")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": f.token, "token_type": "Bearer", "expires_in": 3600})
}
