package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
)

func TestExampleFileLoads(t *testing.T) {
	p, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, r := range p.Rules {
		rules = append(rules, fmt.Sprintf("%s→%s first=%d disks=%d/%d", r.Name, r.Role, r.First, r.MinDisks, r.MinDiskSize))
	}
	want := []string{"storage→ceph-osd first=0 disks=2/100000000000", "nats→nats first=3 disks=0/0", "ipfs→ipfs first=0 disks=0/0"}
	if d := cmp.Diff(want, rules); d != "" {
		t.Errorf("rules (-want +got):\n%s", d)
	}
	test := p.Spec("test")
	if test.Join != "/etc/mdc/join" || test.Heartbeat != 10*time.Second || len(test.Files) != 1 || test.Files[0].Mode != "0644" ||
		string(test.Config) != `{"greeting":"hello","peers":["a","b"]}` {
		t.Errorf("role test: %+v", test)
	}
	if p.Default != "" || p.Held != agentapi.ActionWait {
		t.Errorf("default %q held %q", p.Default, p.Held)
	}
	if none := p.Spec("none"); none.Join != "" {
		t.Errorf("join: none gives hook %q", none.Join)
	}
	if d := p.Spec("unlisted"); d.Join != DefaultJoinHook || d.Heartbeat != DefaultHeartbeat {
		t.Errorf("defaults of an unlisted role: %+v", d)
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	tests := map[string]struct{ yaml, want string }{
		"unknown top key":    {"rules: []\ncolour: red\n", `line 2: unknown key "colour" (here: rules, default, held, roles)`},
		"unknown rule key":   {"rules:\n  - role: nats\n    frist: 3\n", `line 3: unknown key "frist" (here: name, role, first`},
		"unknown role key":   {"roles:\n  test:\n    joins: /x\n", `line 3: unknown key "joins"`},
		"unknown file key":   {"roles:\n  test:\n    files:\n      - {path: /etc/x, mode: \"0644\", owner: root}\n", `line 4: unknown key "owner" (here: path, mode, content)`},
		"bad role":           {"rules:\n  - role: nats\n  - role: Ceph OSD\n", "line 3: rule 2: role \"Ceph OSD\""},
		"duplicate names":    {"rules:\n  - role: nats\n  - {role: nats, first: 2}\n", `line 3: a rule called "nats" is already on line 2`},
		"bad size":           {"rules:\n  - {role: osd, min_disk_size: 10 bananas}\n", `line 2: rule osd: min_disk_size: "10 bananas": unknown unit "bananas"`},
		"negative":           {"rules:\n  - {role: nats, first: -1}\n", "line 2: rule nats: first, min_disks and min_cpus are counts"},
		"boot mode":          {"rules:\n  - {role: x, boot_mode: efi}\n", `line 2: rule x: boot_mode "efi": want uefi or bios`},
		"bad machine":        {"rules:\n  - {role: x, machines: [nope]}\n", `line 2: rule x: machines: bad MAC address "nope"`},
		"bad default":        {"rules: []\ndefault: Not A Role\n", `line 2: default "Not A Role"`},
		"bad held":           {"default: hold\nheld: sleep\n", `line 2: held "sleep": what the agent of a held machine does: wait or poweroff`},
		"file outside roots": {"roles:\n  x:\n    files:\n      - {path: /usr/bin/evil, mode: \"0755\", content: x}\n", "line 4: role x: file \"/usr/bin/evil\": files go under /etc, /run, /var/lib"},
		"file dotdot":        {"roles:\n  x:\n    files:\n      - {path: /etc/../usr/x, mode: \"0644\"}\n", "want a clean absolute path"},
		"setuid":             {"roles:\n  x:\n    files:\n      - {path: /etc/x, mode: \"4755\"}\n", `mode "4755": want octal permissions up to 0777`},
		"no mode":            {"roles:\n  x:\n    files:\n      - {path: /etc/x}\n", "mode is required"},
		"relative join":      {"roles:\n  x:\n    join: join.sh\n", `line 2: role x: join "join.sh": an absolute path in the image, or none`},
		"config not a map":   {"roles:\n  x:\n    config: [1, 2]\n", "line 3: role x: config must be a map"},
		"heartbeat":          {"roles:\n  x:\n    heartbeat: 2h\n", `line 2: role x: heartbeat "2h": a duration from 1s to 1h`},
		"empty":              {"", "empty; to hold every machine"},
		"two documents":      {"default: hold\n---\ndefault: x\n", "more than one YAML document"},
		"wrong type":         {"rules:\n  - {role: nats, first: three}\n", "line 2: cannot unmarshal"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "p.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "role policy p.yaml: ") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{
		"": 0, "512": 512, "100G": 100e9, "100GB": 100e9, "64GiB": 64 << 30, "1.5T": 1.5e12, "2Ti": 2 << 40, "8 MiB": 8 << 20, "1k": 1000,
	} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"G", "-1G", "1.2.3G", "12 parsecs"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

var (
	twoDisks = machine.Facts{Vendor: "Supermicro", Product: "SYS-1029U", BootMode: "uefi", CPUs: 32, MemoryBytes: 128 << 30,
		Disks: []machine.Disk{{Name: "sda", SizeBytes: 480e9}, {Name: "nvme0n1", SizeBytes: 3.84e12}, {Name: "sdb", SizeBytes: 32e9, Removable: true}}}
	small = machine.Facts{Vendor: "QEMU", Product: "Standard PC (Q35 + ICH9, 2009)", BootMode: "bios", CPUs: 2, MemoryBytes: 1 << 30,
		Disks: []machine.Disk{{Name: "vda", SizeBytes: 4 << 30}}}
)

func TestEvaluate(t *testing.T) {
	p, err := Parse([]byte(`
rules:
  - {name: pinned, role: special, machines: ["52:54:00:00:00:99"]}
  - {name: storage, role: ceph-osd, min_disks: 2, min_disk_size: 100G}
  - {name: big, role: compute, min_cpus: 16, min_memory: 64GiB, vendor: "super*", boot_mode: uefi}
  - {name: nats, role: nats, first: 2, product: "standard pc*"}
default: hold
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	id := machine.MustParseID("525400000001")
	tests := map[string]struct {
		id     machine.ID
		facts  machine.Facts
		taken  int
		role   string
		reason string
	}{
		"pinned machine":       {"525400000099", small, 0, "special", "rule pinned: machine 525400000099"},
		"two big disks":        {id, twoDisks, 0, "ceph-osd", "rule storage: 2 disks ≥ 2"},
		"one disk, first free": {id, small, 1, "nats", "rule nats: product \"Standard PC (Q35 + ICH9, 2009)\", first 2: place 2"},
		"first full":           {id, small, 2, "", "no rule matched (full: nats (first 2: all taken)); held in ready"},
		"storage before big":   {id, machine.Facts{Vendor: "Supermicro", BootMode: "uefi", CPUs: 32, MemoryBytes: 128 << 30}, 0, "compute", "rule big: 32 CPUs ≥ 16, memory 128GiB ≥ 64GiB, vendor \"Supermicro\", boot mode uefi"},
		"nothing matches":      {id, machine.Facts{Product: "Other"}, 0, "", "no rule matched; held in ready: assign a role with mdc machines assign 525400000001 ROLE"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d := p.Evaluate(tc.id, tc.facts, func(string) int { return tc.taken })
			if d.Role != tc.role || !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("got %+v, want role %q with reason containing %q", d, tc.role, tc.reason)
			}
		})
	}
	p.Default = "ipfs"
	if d := p.Evaluate(id, machine.Facts{}, func(string) int { return 0 }); d.Role != "ipfs" || !strings.Contains(d.Reason, "default role is ipfs") {
		t.Errorf("default: %+v", d)
	}
}

// ev builds a stored event.
func ev(t *testing.T, seq uint64, id string, typ machine.EventType, data any) machine.Event {
	t.Helper()
	e, err := machine.NewEvent(machine.MustParseID(id), typ, "test", data)
	if err != nil {
		t.Fatal(err)
	}
	e.Seq = seq
	return e
}

// The engine's answer for a machine depends only on the log before its facts.
func TestEngineReplay(t *testing.T) {
	p, err := Parse([]byte("rules:\n  - {name: nats, role: nats, first: 2}\ndefault: ipfs\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(p, nil, nil)
	decide := func(id string, seq uint64) string {
		t.Helper()
		role, data, _, err := e.Decide(context.Background(), machine.MustParseID(id), seq)
		if err != nil {
			t.Fatal(err)
		}
		if role != "" {
			b, _ := json.Marshal(data)
			var a AssignedData
			_ = json.Unmarshal(b, &a)
			if a.By != By || a.Role != role || a.FactsSeq != seq {
				t.Fatalf("assignment data %s", b)
			}
		}
		return role
	}
	seq := uint64(0)
	next := func() uint64 { seq++; return seq }
	facts := func(id string) uint64 {
		s := next()
		e.Apply(ev(t, s, id, machine.FactsReported, small))
		return s
	}
	a, b, c := "525400000001", "525400000002", "525400000003"
	sa, sb, sc := facts(a), facts(b), facts(c)
	if got := []string{decide(a, sa), decide(b, sb), decide(c, sc)}; fmt.Sprint(got) != "[nats nats ipfs]" {
		t.Fatalf("roles %v", got)
	}
	// a reports again (re-commissioned): it keeps its place.
	if s := facts(a); decide(a, s) != "nats" {
		t.Fatal("a machine lost its place by reporting again")
	}
	// An operator gives b another role: its place is free for the next.
	e.Apply(ev(t, next(), b, machine.RoleAssigned, machine.RoleAssignedData{Role: "ceph-osd", By: "operator"}))
	d := "525400000004"
	if s := facts(d); decide(d, s) != "nats" {
		t.Fatal("a place an operator freed was not taken")
	}
	// a is retired: c, reporting again, gets its place.
	e.Apply(ev(t, next(), a, machine.Retired, machine.RetiredData{}))
	if s := facts(c); decide(c, s) != "nats" {
		t.Fatal("a retired machine's place was not freed")
	}
	if h := e.Holders(); h["nats"] != 2 {
		t.Fatalf("holders %v", h)
	}
	// What the log says the policy assigned is the truth, even when the
	// policy replayed now would count otherwise.
	f := "525400000006"
	e.Apply(ev(t, next(), f, machine.RoleAssigned, AssignedData{RoleAssignedData: machine.RoleAssignedData{Role: "nats", By: By}, Rule: "nats"}))
	if h := e.Holders(); h["nats"] != 3 {
		t.Fatalf("a recorded assignment was not counted: %v", e.Holders())
	}
	g := "525400000007"
	if s := facts(g); decide(g, s) != "ipfs" {
		t.Fatal("a full rule took another machine")
	}

	// Decide waits for the replay to reach the facts.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, _, err := e.Decide(ctx, machine.MustParseID(g), seq+1); err == nil {
		t.Fatal("Decide answered for facts the replay has not reached")
	}
	done := make(chan string)
	want := seq + 1
	go func() {
		role, _, _, _ := e.Decide(context.Background(), machine.MustParseID(g), want)
		done <- role
	}()
	time.Sleep(20 * time.Millisecond)
	e.Apply(ev(t, next(), g, machine.FactsReported, small))
	if role := <-done; role != "ipfs" {
		t.Fatalf("after waiting: %q", role)
	}
}

func TestRoleConfig(t *testing.T) {
	p, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(p, nil, nil)
	m := machine.Machine{ID: "525400000001", Name: "n1", Image: "test-1"}
	c, _ := e.RoleConfig(m, "test")
	if c.Machine != m.ID || c.Name != "n1" || c.Role != "test" || c.Image != "test-1" || c.Join.Hook != "/etc/mdc/join" ||
		c.Join.TimeoutSeconds != 120 || c.HeartbeatSeconds != 10 || len(c.Evidence) != 2 {
		t.Fatalf("%+v", c)
	}
	c, _ = e.RoleConfig(m, "unlisted")
	if string(c.Config) != "{}" || c.Join.Hook != DefaultJoinHook {
		t.Fatalf("unlisted: %+v", c)
	}
}

func TestHoldPolicy(t *testing.T) {
	p := Hold()
	d := p.Evaluate("525400000001", twoDisks, func(string) int { return 0 })
	if d.Role != "" || p.Held != agentapi.ActionWait {
		t.Fatalf("%+v", d)
	}
	if _, err := os.Stat("testdata/example.yaml"); err != nil {
		t.Fatal(err)
	}
}
