package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/policy"
)

// agentFixture is one mdc instance's store, policy engine and API.
type agentFixture struct {
	srv    *httptest.Server
	store  *events.Store
	engine *policy.Engine
	api    *Server
}

// newAgentInstance runs a store, a policy engine and the API on nc, as one
// mdc instance would; several may share one NATS.
func newAgentInstance(t testing.TB, ctx context.Context, nc *nats.Conn, policyYAML string, opts ...func(*AgentConfig)) *agentFixture {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	reg := prometheus.NewRegistry()
	metrics := events.NewMetrics(reg)
	l, err := events.OpenLog(ctx, nc, events.LogConfig{Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	store := events.NewStore(l, events.NewTable(nil, metrics), nil)
	p := policy.Hold()
	if policyYAML != "" {
		if p, err = policy.Parse([]byte(policyYAML), "test.yaml"); err != nil {
			t.Fatal(err)
		}
	}
	engine := policy.NewEngine(p, store, nil)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = store.Run(ctx) }()
	go func() { defer wg.Done(); _ = engine.Run(ctx) }()
	if err := store.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	acfg := AgentConfig{Policy: engine, Telemetry: l, Heartbeat: 5 * time.Second}
	for _, o := range opts {
		o(&acfg)
	}
	s := New(Config{Machines: store, Token: token, Reads: ReadLoopback, Registry: reg, Gatherer: reg, Version: "test",
		Agent: acfg})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		srv.Close()
		cancel()
		wg.Wait()
	})
	return &agentFixture{srv: srv, store: store, engine: engine, api: s}
}

func newAgentFixture(t testing.TB, policyYAML string, opts ...func(*AgentConfig)) *agentFixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := events.Connect(ctx, events.NATSConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); conn.Close() })
	return newAgentInstance(t, ctx, conn.NC, policyYAML, opts...)
}

// boot records a network boot of id as the boot script does: discovered if
// new, then commissioning_started or provisioning_started carrying the hash
// of a fresh token, which it returns.
func (f *agentFixture) boot(t testing.TB, id machine.ID, mode agentapi.Mode) string {
	t.Helper()
	ctx := context.Background()
	tok, stored := machine.NewBootToken()
	_, _, err := f.store.Update(ctx, id, func(cur machine.Machine) (machine.Event, error) {
		if cur.State != machine.Absent {
			return machine.Event{}, errSkip
		}
		return machine.NewEvent(id, machine.Discovered, "test", machine.DiscoveredData{Via: "dhcp"})
	})
	if err != nil && err != errSkip {
		t.Fatal(err)
	}
	_, _, err = f.store.Update(ctx, id, func(cur machine.Machine) (machine.Event, error) {
		if mode == agentapi.ModeCommissioning {
			return machine.NewEvent(id, machine.CommissioningStarted, "test",
				machine.CommissioningBootData{ImageData: machine.ImageData{Image: "commission-1"}, BootToken: stored})
		}
		return machine.NewEvent(id, machine.ProvisioningStarted, "test", machine.ProvisioningBootData{
			ProvisioningStartedData: machine.ProvisioningStartedData{Role: cur.Role, Image: cur.Role + "-img"}, BootToken: stored})
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// call sends an agent request; tok "" sends no Authorization.
func (f *agentFixture) call(t *testing.T, method, path string, id machine.ID, tok, body string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, f.srv.URL+path, rd)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if id != "" {
		req.Header.Set(agentapi.HeaderMachine, id.MAC())
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// ok calls and decodes a 200 answer into v.
func (f *agentFixture) ok(t *testing.T, method, path string, id machine.ID, tok, body string, v any) {
	t.Helper()
	code, b := f.call(t, method, path, id, tok, body)
	if code != 200 {
		t.Fatalf("%s %s: %d %s", method, path, code, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s %s: %v in %s", method, path, err, b)
	}
}

func errCode(t *testing.T, b []byte) string {
	t.Helper()
	var e agentapi.Error
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("error body is not JSON: %s", b)
	}
	return e.Error.Code
}

func (f *agentFixture) types(t *testing.T, id machine.ID) []machine.EventType {
	t.Helper()
	h, err := f.store.History(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []machine.EventType
	for _, e := range h {
		out = append(out, e.Type)
	}
	return out
}

const qemuFacts = `{"vendor":"QEMU","product":"Standard PC (Q35 + ICH9, 2009)","uuid":"c0ffee00-0000-4000-8000-000000000001",
 "boot_mode":"uefi","cpu_model":"QEMU Virtual CPU version 2.5+","cpus":2,"memory_bytes":1073741824,
 "disks":[{"name":"vda","size_bytes":4294967296,"serial":"disk-a"},{"name":"vdb","size_bytes":2147483648,"serial":"disk-b"}],
 "nics":[{"name":"eth0","mac":"52:54:00:a6:00:01","driver":"virtio_net","carrier":true}]}`

const testPolicy = `
rules:
  - role: test
default: hold
roles:
  test:
    evidence: [kernel, hook]
    heartbeat: 2s
    config: {greeting: hello}
    files:
      - {path: /etc/mdc/motd, mode: "0644", content: "hello\n"}
`

func TestAgentCommissioningToJoined(t *testing.T) {
	f := newAgentFixture(t, testPolicy)
	id := machine.MustParseID("52:54:00:a6:00:01")
	tok := f.boot(t, id, agentapi.ModeCommissioning)

	var ans agentapi.Answer
	f.ok(t, "POST", agentapi.PathFacts, id, tok, qemuFacts, &ans)
	if ans.Action != agentapi.ActionReboot || ans.Role != "test" || ans.Event == nil || ans.Event.Type != machine.FactsReported {
		t.Fatalf("facts answer %+v", ans)
	}
	if !strings.Contains(ans.Reason, "rule test") {
		t.Errorf("reason %q does not name the rule", ans.Reason)
	}
	m, _ := f.store.Get(id)
	if m.State != machine.Provisioning || m.Role != "test" || m.Facts == nil || m.Facts.MemoryBytes != 1<<30 || len(m.Facts.Disks) != 2 {
		t.Fatalf("machine after facts: %+v", m)
	}
	// A retry (the answer was lost) records nothing more and says the same.
	var again agentapi.Answer
	f.ok(t, "POST", agentapi.PathFacts, id, tok, qemuFacts, &again)
	if again.Action != ans.Action || *again.Event != *ans.Event {
		t.Fatalf("retried facts: %+v, first %+v", again, ans)
	}
	want := []machine.EventType{machine.Discovered, machine.CommissioningStarted, machine.FactsReported, machine.RoleAssigned}
	if got := f.types(t, id); !slices.Equal(got, want) {
		t.Fatalf("history %v, want %v", got, want)
	}
	h, _ := f.store.History(context.Background(), id)
	var assigned policy.AssignedData
	_ = json.Unmarshal(h[3].Data, &assigned)
	if h[3].Source != "mdc/policy" || assigned.By != "policy" || assigned.Rule != "test" || assigned.FactsSeq != h[2].Seq {
		t.Errorf("role_assigned %s %s", h[3].Source, h[3].Data)
	}
	var hb agentapi.Answer
	f.ok(t, "POST", agentapi.PathHeartbeat, id, tok, `{"phase":"waiting"}`, &hb)
	if hb.Action != agentapi.ActionReboot || hb.Role != "test" {
		t.Fatalf("heartbeat before the reboot: %+v", hb)
	}

	// The reboot into the role image: a new boot, a new token.
	rtok := f.boot(t, id, agentapi.ModeRole)
	code, b := f.call(t, "POST", agentapi.PathBooted, id, tok, `{"kernel":"6.1.0-test"}`)
	if code != 403 || errCode(t, b) != agentapi.CodeStaleToken {
		t.Fatalf("the commissioning boot's token after the reboot: %d %s", code, b)
	}
	var rec agentapi.Recorded
	f.ok(t, "POST", agentapi.PathBooted, id, rtok, `{"kernel":"6.1.0-test"}`, &rec)
	if rec.State != machine.Running || rec.Event.Type != machine.Booted {
		t.Fatalf("booted: %+v", rec)
	}
	var rec2 agentapi.Recorded
	f.ok(t, "POST", agentapi.PathBooted, id, rtok, `{"kernel":"6.1.0-test"}`, &rec2)
	if rec2.Event != rec.Event {
		t.Fatalf("retried booted stored another event: %+v vs %+v", rec2.Event, rec.Event)
	}
	m, _ = f.store.Get(id)
	if m.Image != "test-img" {
		t.Errorf("image %q: an empty image in booted means the one mdc served", m.Image)
	}

	var rc agentapi.RoleConfig
	f.ok(t, "GET", agentapi.PathConfig, id, rtok, "", &rc)
	if rc.Role != "test" || rc.Machine != id || rc.Join.Hook != "/etc/mdc/join" || !slices.Equal(rc.Evidence, []string{"kernel", "hook"}) ||
		len(rc.Files) != 1 || rc.Files[0].Path != "/etc/mdc/motd" || rc.HeartbeatSeconds != 2 || !jsonEqual(rc.Config, `{"greeting":"hello"}`) {
		t.Fatalf("role config %+v", rc)
	}

	code, b = f.call(t, "POST", agentapi.PathJoined, id, rtok, `{"evidence":{"kernel":"6.1.0-test"}}`)
	if code != 400 || !strings.Contains(string(b), "hook") {
		t.Fatalf("joined without the evidence the role wants: %d %s", code, b)
	}
	f.ok(t, "POST", agentapi.PathJoined, id, rtok, `{"evidence":{"kernel":"6.1.0-test","hook":"test"}}`, &rec)
	if rec.State != machine.StJoined {
		t.Fatalf("joined: %+v", rec)
	}
	f.ok(t, "POST", agentapi.PathJoined, id, rtok, `{"evidence":{"kernel":"6.1.0-test","hook":"test"}}`, &rec2)
	if rec2.Event != rec.Event {
		t.Fatal("retried joined stored another event")
	}
	f.ok(t, "POST", agentapi.PathHeartbeat, id, rtok, `{"phase":"joined","status":"ok"}`, &hb)
	if hb.Action != agentapi.ActionNone || hb.HeartbeatSeconds != 2 {
		t.Fatalf("heartbeat of a joined node: %+v", hb)
	}
	want = append(want, machine.ProvisioningStarted, machine.Booted, machine.Joined)
	if got := f.types(t, id); !slices.Equal(got, want) {
		t.Fatalf("history %v, want %v", got, want)
	}
	h, _ = f.store.History(context.Background(), id)
	var jd machine.JoinedData
	_ = json.Unmarshal(h[len(h)-1].Data, &jd)
	if jd.Role != "test" || jd.Evidence["hook"] != "test" {
		t.Errorf("joined data %s", h[len(h)-1].Data)
	}

	// Heartbeats go to telemetry (published asynchronously).
	deadline := time.Now().Add(5 * time.Second)
	for {
		tel, err := f.store.Telemetry(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		var phases []string
		for _, e := range tel {
			var d AgentSeenData
			_ = json.Unmarshal(e.Data, &d)
			if e.Type == machine.AgentSeen {
				phases = append(phases, d.Phase)
			}
		}
		if slices.Contains(phases, "joined") && slices.Contains(phases, "waiting") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent_seen phases %v", phases)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The node reboots: a new role boot, back to joined without commissioning.
	rtok2 := f.boot(t, id, agentapi.ModeRole)
	f.ok(t, "POST", agentapi.PathBooted, id, rtok2, `{"kernel":"6.1.0-test"}`, &rec)
	f.ok(t, "POST", agentapi.PathJoined, id, rtok2, `{"evidence":{"kernel":"6.1.0-test","hook":"test"}}`, &rec)
	if rec.State != machine.StJoined || rec.Event == rec2.Event {
		t.Fatalf("joined after a reboot: %+v", rec)
	}
}

func TestAgentRefusesTokens(t *testing.T) {
	f := newAgentFixture(t, testPolicy)
	a, b := machine.MustParseID("525400b00001"), machine.MustParseID("525400b00002")
	tokA := f.boot(t, a, agentapi.ModeCommissioning)
	tokB := f.boot(t, b, agentapi.ModeCommissioning)
	c := machine.MustParseID("525400b00003")
	if _, _, err := f.store.Update(context.Background(), c, func(machine.Machine) (machine.Event, error) {
		return machine.NewEvent(c, machine.Discovered, "test", machine.DiscoveredData{Via: "dhcp"})
	}); err != nil {
		t.Fatal(err)
	}
	before, _ := f.store.LastSeq(context.Background())

	tests := map[string]struct {
		id       machine.ID
		tok      string
		status   int
		code     string
		mentions string
	}{
		"no token":                {a, "", 401, CodeUnauthorized, "mdc.token"},
		"no machine header":       {"", tokA, 401, CodeUnauthorized, "Mdc-Machine"},
		"another machine's token": {a, tokB, 403, agentapi.CodeTokenRefused, string(a)},
		"the admin token":         {a, token, 403, agentapi.CodeTokenRefused, "current boot"},
		"unknown machine":         {"525400b00009", tokA, 403, agentapi.CodeNoBoot, "not known"},
		"never booted":            {c, tokA, 403, agentapi.CodeNoBoot, "no current boot"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			code, body := f.call(t, "POST", agentapi.PathFacts, tc.id, tc.tok, qemuFacts)
			if code != tc.status || errCode(t, body) != tc.code || !strings.Contains(string(body), tc.mentions) {
				t.Fatalf("%d %s, want %d %s mentioning %q", code, body, tc.status, tc.code, tc.mentions)
			}
		})
	}
	if after, _ := f.store.LastSeq(context.Background()); after != before {
		t.Fatalf("refused requests appended %d events", after-before)
	}

	// The other kind of boot's requests.
	code, body := f.call(t, "POST", agentapi.PathBooted, a, tokA, `{}`)
	if code != 409 || errCode(t, body) != agentapi.CodeWrongMode {
		t.Fatalf("booted from a commissioning boot: %d %s", code, body)
	}
	code, body = f.call(t, "GET", agentapi.PathConfig, a, tokA, "")
	if code != 409 || errCode(t, body) != agentapi.CodeWrongMode {
		t.Fatalf("config for a commissioning boot: %d %s", code, body)
	}

	// A failed machine's boot is over: its token goes with it.
	if _, _, err := f.store.Update(context.Background(), a, func(machine.Machine) (machine.Event, error) {
		return machine.NewEvent(a, machine.Failed, "test", machine.FailedData{Reason: "timed out"})
	}); err != nil {
		t.Fatal(err)
	}
	code, body = f.call(t, "POST", agentapi.PathHeartbeat, a, tokA, "")
	if code != 403 || errCode(t, body) != agentapi.CodeNoBoot || !strings.Contains(string(body), "timed out") {
		t.Fatalf("heartbeat of a failed machine: %d %s", code, body)
	}
}

func TestAgentHeldThenAssigned(t *testing.T) {
	f := newAgentFixture(t, "default: hold\nheld: poweroff\n")
	id := machine.MustParseID("525400c00001")
	tok := f.boot(t, id, agentapi.ModeCommissioning)
	var ans agentapi.Answer
	f.ok(t, "POST", agentapi.PathFacts, id, tok, strings.Replace(qemuFacts, "52:54:00:a6:00:01", id.MAC(), 1), &ans)
	if ans.Action != agentapi.ActionPoweroff || !strings.Contains(ans.Reason, "mdc machines assign") {
		t.Fatalf("held: %+v", ans)
	}
	if m, _ := f.store.Get(id); m.State != machine.Ready {
		t.Fatalf("state %s, want ready", m.State)
	}
	// An operator assigns a role; the agent's next heartbeat says reboot.
	req, _ := http.NewRequest("POST", f.srv.URL+"/api/v1/machines/"+string(id)+"/assign", strings.NewReader(`{"role":"nats"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("assign: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	f.ok(t, "POST", agentapi.PathHeartbeat, id, tok, `{"phase":"waiting"}`, &ans)
	if ans.Action != agentapi.ActionReboot || ans.Role != "nats" {
		t.Fatalf("heartbeat after assign: %+v", ans)
	}
}

// Two mdc instances on one NATS give "first 3" exactly three machines,
// whatever order the facts of eight machines reach them in.
func TestPolicyFirstAcrossInstances(t *testing.T) {
	const pol = `
rules:
  - {name: storage, role: ceph-osd, min_disks: 3}
  - {name: nats, role: nats, first: 3}
  - {role: ipfs}
`
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := events.Connect(ctx, events.NATSConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); conn.Close() })
	inst := []*agentFixture{newAgentInstance(t, ctx, conn.NC, pol), newAgentInstance(t, ctx, conn.NC, pol)}

	const n = 8
	ids := make([]machine.ID, n)
	toks := make([]string, n)
	for i := range ids {
		ids[i] = machine.MustParseID(fmt.Sprintf("525400d000%02x", i+1))
		toks[i] = inst[0].boot(t, ids[i], agentapi.ModeCommissioning)
	}
	var wg sync.WaitGroup
	answers := make([]agentapi.Answer, n)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			facts := strings.Replace(qemuFacts, "52:54:00:a6:00:01", ids[i].MAC(), 1)
			f := inst[i%2]
			f.ok(t, "POST", agentapi.PathFacts, ids[i], toks[i], facts, &answers[i])
		}()
	}
	wg.Wait()
	count := map[string]int{}
	for i, a := range answers {
		if a.Action != agentapi.ActionReboot {
			t.Errorf("%s: %+v", ids[i], a)
		}
		count[a.Role]++
	}
	if count["nats"] != 3 || count["ipfs"] != 5 {
		t.Fatalf("roles %v, want 3 nats and 5 ipfs", count)
	}
	// Both instances' stores agree, and so do their engines.
	last, _ := inst[0].store.LastSeq(ctx)
	for _, f := range inst {
		if err := f.store.Table.WaitFor(ctx, last); err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		for _, m := range f.store.List(events.Filter{}) {
			got[m.Role]++
		}
		if got["nats"] != 3 || got["ipfs"] != 5 {
			t.Errorf("an instance's table has roles %v", got)
		}
		if h := f.engine.Holders(); h["nats"] != 3 {
			t.Errorf("an engine counts %v", h)
		}
	}
	// The nats machines are the first three whose facts the log holds.
	var factsOrder []machine.ID
	_ = inst[0].store.Follow(ctx, 1, "", func(e machine.Event, pending uint64) error {
		if e.Type == machine.FactsReported {
			factsOrder = append(factsOrder, e.Machine)
		}
		if pending == 0 {
			return io.EOF
		}
		return nil
	})
	for i, id := range factsOrder {
		m, _ := inst[1].store.Get(id)
		if want := map[bool]string{true: "nats", false: "ipfs"}[i < 3]; m.Role != want {
			t.Errorf("machine %s, facts #%d: role %s, want %s", id, i+1, m.Role, want)
		}
	}
	// A retired nats machine gives up its place: the next machine gets it.
	first := factsOrder[0]
	if _, _, err := inst[0].store.Update(ctx, first, func(machine.Machine) (machine.Event, error) {
		return machine.NewEvent(first, machine.Retired, "test", machine.RetiredData{Reason: "test"})
	}); err != nil {
		t.Fatal(err)
	}
	extra := machine.MustParseID("525400d000ff")
	tok := inst[1].boot(t, extra, agentapi.ModeCommissioning)
	var ans agentapi.Answer
	inst[1].ok(t, "POST", agentapi.PathFacts, extra, tok, strings.Replace(qemuFacts, "52:54:00:a6:00:01", extra.MAC(), 1), &ans)
	if ans.Role != "nats" {
		t.Fatalf("after a nats machine retired, the next got %+v", ans)
	}
}

func jsonEqual(a []byte, b string) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal([]byte(b), &y) == nil && fmt.Sprint(x) == fmt.Sprint(y)
}

// Agent requests come from the rack network: whatever their headers and
// bodies, the answer is JSON, and only a 200 appends anything.
func FuzzAgentRequest(f *testing.F) {
	fx := newAgentFixture(f, testPolicy)
	id := machine.MustParseID("525400f00001")
	tok := fx.boot(f, id, agentapi.ModeCommissioning)
	paths := []string{agentapi.PathFacts, agentapi.PathBooted, agentapi.PathConfig, agentapi.PathJoined, agentapi.PathHeartbeat}
	f.Add(uint8(0), id.MAC(), tok, qemuFacts)
	f.Add(uint8(4), string(id), tok, `{"phase":"waiting","status":"x"}`)
	f.Add(uint8(3), string(id), tok, `{"evidence":{"kernel":"1","hook":"2"}}`)
	f.Add(uint8(1), "52:54:00:f0:00:02", "nope", `{"image":"x"}`)
	f.Add(uint8(0), string(id), tok, `{"nics":[{"name":"e","mac":"zz"}]}`)
	h := fx.srv.Config.Handler
	f.Fuzz(func(t *testing.T, p uint8, mach, token, body string) {
		before, _ := fx.store.LastSeq(context.Background())
		method := "POST"
		path := paths[int(p)%len(paths)]
		if path == agentapi.PathConfig {
			method = "GET"
		}
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if strings.ContainsAny(mach, "\r\n\x00") || strings.ContainsAny(token, "\r\n\x00") {
			return // not a valid HTTP header value; net/http would refuse it
		}
		req.Header.Set(agentapi.HeaderMachine, mach)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			var e agentapi.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code == "" {
				t.Fatalf("%d answer is not a JSON error: %q", rec.Code, rec.Body)
			}
			if after, _ := fx.store.LastSeq(context.Background()); after != before {
				t.Fatalf("a %d answer (%s) appended %d events", rec.Code, e.Error.Code, after-before)
			}
		}
	})
}
