package ceph

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

func TestNewSecret(t *testing.T) {
	a, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewSecret()
	if a == b {
		t.Fatal("two secrets are equal")
	}
	raw, err := base64.StdEncoding.DecodeString(a)
	if err != nil || len(raw) != 28 {
		t.Fatalf("secret %d bytes, %v; want 28 (ceph-authtool --gen-print-key's size)", len(raw), err)
	}
	if typ, n := binary.LittleEndian.Uint16(raw[0:]), binary.LittleEndian.Uint16(raw[10:]); typ != 1 || n != 16 {
		t.Fatalf("type %d, length %d; want AES (1), 16", typ, n)
	}
	if len(a) != 40 || !strings.HasPrefix(a, "AQ") {
		t.Fatalf("secret text %q does not look like a cephx key (AQ…, 40 chars)", a)
	}
}

func TestOSDUUID(t *testing.T) {
	d := machine.Disk{Name: "sdb", Serial: "S1"}
	u := OSDUUID("fsid", "525400000001", d)
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(u) {
		t.Fatalf("uuid %q is not an RFC 9562 version 8 uuid", u)
	}
	if OSDUUID("fsid", "525400000001", d) != u {
		t.Fatal("not stable")
	}
	renamed := d
	renamed.Name = "sdc"
	if OSDUUID("fsid", "525400000001", renamed) != u {
		t.Fatal("a disk with a serial changed uuid when its kernel name moved")
	}
	for name, other := range map[string]string{
		"other cluster": OSDUUID("fsid2", "525400000001", d),
		"other machine": OSDUUID("fsid", "525400000002", d),
		"other disk":    OSDUUID("fsid", "525400000001", machine.Disk{Name: "sdb", Serial: "S2"}),
		"no serial":     OSDUUID("fsid", "525400000001", machine.Disk{Name: "sdb"}),
	} {
		if other == u {
			t.Errorf("%s: same uuid", name)
		}
	}
}

func TestDisks(t *testing.T) {
	f := &machine.Facts{Disks: []machine.Disk{
		{Name: "sdc", SizeBytes: 20 << 30},
		{Name: "sr0", SizeBytes: 20 << 30, Removable: true},
		{Name: "sda", SizeBytes: 20 << 30},
		{Name: "sdd", SizeBytes: 1 << 30},
	}}
	var got []string
	for _, d := range Disks(f, 10<<30) {
		got = append(got, d.Name)
	}
	if diff := cmp.Diff([]string{"sda", "sdc"}, got); diff != "" {
		t.Fatal(diff)
	}
	if Disks(nil, 0) != nil {
		t.Fatal("nil facts")
	}
}

func TestHostName(t *testing.T) {
	for name, want := range map[string]string{
		"":               "mdc-525400000001",
		"rack1-n03":      "rack1-n03",
		"n 3/ä":          "n-3---",
		"osd.host_1.lab": "osd.host_1.lab",
	} {
		if got := HostName(machine.Machine{ID: "525400000001", Name: name}); got != want {
			t.Errorf("HostName(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestKeyFingerprint(t *testing.T) {
	k := "AQD+aA9rQyZgBRAAjDzG/nxGn9fNZ7F4CviGvA=="
	f := KeyFingerprint(k)
	if len(f) != 16 || KeyFingerprint(k+"\n") != f || KeyFingerprint("AQD+aA9rQyZgBRAAjDzG/nxGn9fNZ7F4CviGvB==") == f {
		t.Fatalf("fingerprint %q", f)
	}
}

// From a pacific 16.2.15 cluster (trimmed): osd.1 up and in under host
// node-exp, osd.2 registered with osd new and never booted.
const (
	realDump = `{"epoch":15,"fsid":"82130bfe-99bf-457a-8384-3aa6a4e567e6","osds":[
{"osd":0,"uuid":"56764882-bc3f-4bd4-bf73-a162534ee2a0","up":1,"in":1,"weight":1,"state":["exists","up"]},
{"osd":1,"uuid":"7f809114-b9ed-866e-a089-94fa6ddcb47c","up":1,"in":1,"weight":1,"state":["exists","up"]},
{"osd":2,"uuid":"6d0f0f14-436c-8878-ab32-1a1ebb9aae12","up":0,"in":1,"weight":1,"state":["exists","new"]}],
"osd_xinfo":[{"osd":0,"down_stamp":"0.000000"}]}`
	realTree = `{"nodes":[{"id":-1,"name":"default","type":"root","type_id":11,"children":[-5,-3]},
{"id":-5,"name":"node-exp","type":"host","type_id":1,"pool_weights":{},"children":[1]},
{"id":1,"device_class":"hdd","name":"osd.1","type":"osd","type_id":0,"crush_weight":0.0002,"depth":2,"exists":1,"status":"up","reweight":1,"primary_affinity":1},
{"id":-3,"name":"vm","type":"host","type_id":1,"pool_weights":{},"children":[0]},
{"id":0,"device_class":"hdd","name":"osd.0","type":"osd","type_id":0,"crush_weight":0.00099,"depth":2,"exists":1,"status":"up","reweight":1,"primary_affinity":1}],"stray":[]}`
)

func TestOSDStates(t *testing.T) {
	got, err := osdStates([]byte(realDump), []byte(realTree))
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]osdState{
		0: {exists: true, up: true, in: true, parent: "vm", parentType: "host"},
		1: {exists: true, up: true, in: true, parent: "node-exp", parentType: "host"},
		2: {exists: true, isNew: true, in: true},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(osdState{})); diff != "" {
		t.Fatal(diff)
	}
}

// FuzzOSDStates: the mons' answers are network input.
func FuzzOSDStates(f *testing.F) {
	f.Add([]byte(realDump), []byte(realTree))
	f.Add([]byte(`{"osds":[{"osd":-1}]}`), []byte(`{"nodes":[{"id":-1,"children":[-1,0,5]}]}`))
	f.Fuzz(func(t *testing.T, dump, tree []byte) {
		osdStates(dump, tree)
		uuids(dump)
		authKey(dump)
		fsidOf(string(tree))
	})
}

// fakeRole is a role on the fake cluster with a clock the test moves.
func fakeRole(t *testing.T) (*Role, *fakeCluster, *time.Time) {
	f := newFakeCluster()
	r := newRole(Config{ConfFile: "x", Keyring: "y", MinDiskBytes: 1 << 30, UpGrace: time.Minute}, f)
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	r.now = func() time.Time { return now }
	return r, f, &now
}

func fakeMachine() machine.Machine {
	return machine.Machine{ID: "525400000001", Name: "n1", Role: Name, Facts: &machine.Facts{Disks: []machine.Disk{
		{Name: "sdb", Serial: "B", SizeBytes: 4 << 30}, {Name: "sda", Serial: "A", SizeBytes: 4 << 30},
		{Name: "sr0", SizeBytes: 4 << 30, Removable: true}}}}
}

func configureFake(t *testing.T, r *Role, m machine.Machine) (agentapi.RoleConfig, JoinConfig) {
	t.Helper()
	rc := agentapi.RoleConfig{Machine: m.ID, Role: Name, Join: agentapi.Join{Hook: "/etc/mdc/join"}}
	if err := r.Configure(context.Background(), m, nil, &rc); err != nil {
		t.Fatal(err)
	}
	var jc JoinConfig
	if err := json.Unmarshal(rc.Config, &jc); err != nil {
		t.Fatal(err)
	}
	return rc, jc
}

func keyIn(t *testing.T, rc agentapi.RoleConfig, path string) string {
	for _, f := range rc.Files {
		if f.Path == path {
			_, k, _ := strings.Cut(f.Content, "key = ")
			return strings.TrimSpace(k)
		}
	}
	t.Fatalf("no file %s", path)
	return ""
}

func TestConfigure(t *testing.T) {
	r, f, _ := fakeRole(t)
	m := fakeMachine()
	rc, jc := configureFake(t, r, m)
	want := JoinConfig{Cluster: "ceph", FSID: f.fsid, Conf: "/etc/ceph/ceph.conf", Host: "n1", OSDs: []JoinOSD{
		{ID: 0, UUID: OSDUUID(f.fsid, m.ID, m.Facts.Disks[1]), Disk: "sda", Serial: "A", SizeBytes: 4 << 30, Keyring: "/etc/ceph/ceph.osd.0.keyring", Evidence: "osd.0.key"},
		{ID: 1, UUID: OSDUUID(f.fsid, m.ID, m.Facts.Disks[0]), Disk: "sdb", Serial: "B", SizeBytes: 4 << 30, Keyring: "/etc/ceph/ceph.osd.1.keyring", Evidence: "osd.1.key"},
	}}
	if diff := cmp.Diff(want, jc); diff != "" {
		t.Fatalf("join config (-want +got):\n%s", diff)
	}
	var modes []string
	for _, fl := range rc.Files {
		modes = append(modes, fl.Path+" "+fl.Mode)
	}
	if diff := cmp.Diff([]string{"/etc/ceph/ceph.conf 0644", "/etc/ceph/ceph.osd.0.keyring 0600", "/etc/ceph/ceph.osd.1.keyring 0600"}, modes); diff != "" {
		t.Fatal(diff)
	}
	conf := rc.Files[0].Content
	for _, s := range []string{"fsid = " + f.fsid, "mon_host = [v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]", "[osd]", "crush_location = root=default host=n1"} {
		if !strings.Contains(conf, s) {
			t.Errorf("ceph.conf lacks %q:\n%s", s, conf)
		}
	}
	if diff := cmp.Diff([]string{"osd.0.key", "osd.1.key"}, rc.Evidence); diff != "" {
		t.Fatal(diff)
	}
	if rc.Join.Hook != "/etc/mdc/join" {
		t.Fatal("Configure changed the join hook")
	}
	// The served keys are the cluster's, and Config carries none.
	for _, o := range jc.OSDs {
		if k := keyIn(t, rc, o.Keyring); k != f.keys["osd."+itoa(o.ID)] || k == "" {
			t.Fatalf("served key of osd.%d is not the cluster's", o.ID)
		}
		if strings.Contains(string(rc.Config), keyIn(t, rc, o.Keyring)) {
			t.Fatal("the join config carries a secret")
		}
	}
	// Again (an agent retrying): same OSDs and keys, nothing new registered.
	rc2, jc2 := configureFake(t, r, m)
	if diff := cmp.Diff(jc, jc2); diff != "" {
		t.Fatal(diff)
	}
	if diff := cmp.Diff(rc.Files, rc2.Files); diff != "" {
		t.Fatal(diff)
	}
	if len(f.osds) != 2 {
		t.Fatalf("%d OSDs after two Configures, want 2", len(f.osds))
	}
	// Another mdc registered the uuid after this one's osd dump: osd new
	// answers EEXIST, and the OSD and key already there are used.
	id, key, err := r.register(context.Background(), jc.OSDs[1].UUID, map[string]int{})
	if err != nil || id != 1 || key != f.keys["osd.1"] {
		t.Fatalf("register of a uuid registered meanwhile = %d, %v; want osd.1 and its key", id, err)
	}
	// Another machine gets other OSDs.
	m2 := fakeMachine()
	m2.ID, m2.Name = "525400000002", ""
	_, jc3 := configureFake(t, r, m2)
	if jc3.OSDs[0].ID != 2 || jc3.Host != "mdc-525400000002" {
		t.Fatalf("second machine: %+v", jc3)
	}
	// A revoked key is not re-minted behind the operator's back.
	delete(f.keys, "osd.0")
	err = r.Configure(context.Background(), m, nil, &agentapi.RoleConfig{})
	if err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("Configure with a revoked key = %v", err)
	}
	// No disk, no OSD.
	err = r.Configure(context.Background(), machine.Machine{ID: "525400000003"}, nil, &agentapi.RoleConfig{})
	if err == nil || !strings.Contains(err.Error(), "no disk") {
		t.Fatalf("Configure without disks = %v", err)
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestVerify(t *testing.T) {
	r, f, now := fakeRole(t)
	m := fakeMachine()
	ctx := context.Background()
	if err := r.Verify(ctx, m, nil); err == nil || errors.Is(err, roles.ErrNotYet) {
		t.Fatalf("Verify before Configure = %v, want a failure", err)
	}
	rc, jc := configureFake(t, r, m)
	ev := map[string]string{}
	for _, o := range jc.OSDs {
		ev[o.Evidence] = KeyFingerprint(keyIn(t, rc, o.Keyring))
	}
	notYet := func(what string, want string) {
		t.Helper()
		err := r.Verify(ctx, m, ev)
		if !errors.Is(err, roles.ErrNotYet) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: Verify = %v, want ErrNotYet saying %q", what, err, want)
		}
	}
	notYet("registered", "osd.0 has never booted; osd.1 has never booted")
	f.boot(0, "n1")
	notYet("one booted", "osd.1 has never booted")
	f.boot(1, "elsewhere")
	notYet("wrong host", "osd.1 is under host elsewhere, not host n1")
	f.set(1, func(o *fakeOSD) { o.host = "n1" })
	if err := r.Verify(ctx, m, ev); err != nil {
		t.Fatalf("all up and in under n1: %v", err)
	}
	// Down, then for longer than UpGrace.
	f.set(1, func(o *fakeOSD) { o.up = false })
	notYet("down", "osd.1 is down")
	*now = now.Add(2 * time.Minute)
	if err := r.Verify(ctx, m, ev); err == nil || errors.Is(err, roles.ErrNotYet) || !strings.Contains(err.Error(), "not joined after 2m0s: osd.1 is down") {
		t.Fatalf("down for 2m = %v", err)
	}
	f.set(1, func(o *fakeOSD) { o.up = true })
	if err := r.Verify(ctx, m, ev); err != nil {
		t.Fatal(err)
	}
	f.set(1, func(o *fakeOSD) { o.in = false })
	notYet("out", "osd.1 is out")
	f.set(1, func(o *fakeOSD) { o.in = true })
	// The node's key is not the cluster's.
	wrong := map[string]string{"osd.0.key": ev["osd.0.key"], "osd.1.key": "0000000000000000"}
	if err := r.Verify(ctx, m, wrong); err == nil || errors.Is(err, roles.ErrNotYet) || !strings.Contains(err.Error(), "osd.1 that is not the cluster's") {
		t.Fatalf("wrong key = %v", err)
	}
	// Caps taken away.
	f.caps["osd.1"] = "allow r"
	if err := r.Verify(ctx, m, ev); err == nil || !strings.Contains(err.Error(), "lacks the mon cap") {
		t.Fatalf("caps = %v", err)
	}
	f.caps["osd.1"] = "allow profile osd"
	// Revoked.
	delete(f.keys, "osd.1")
	if err := r.Verify(ctx, m, ev); err == nil || errors.Is(err, roles.ErrNotYet) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked = %v", err)
	}
	// The cluster cannot be asked: not yet, not failed.
	f.failNext["osd dump"] = 110 // ETIMEDOUT
	if err := r.Verify(ctx, m, ev); !errors.Is(err, roles.ErrNotYet) {
		t.Fatalf("mon timeout = %v, want ErrNotYet", err)
	}
}

func TestRetire(t *testing.T) {
	r, f, _ := fakeRole(t)
	m := fakeMachine()
	ctx := context.Background()
	_, jc := configureFake(t, r, m)
	f.boot(0, "n1") // osd.1 never booted
	f.storing[0] = true
	err := r.Retire(ctx, m)
	if !errors.Is(err, roles.ErrNotYet) || !strings.Contains(err.Error(), "data is moving off") {
		t.Fatalf("Retire with data = %v", err)
	}
	if f.osds[0].in || f.osds[1].in {
		t.Fatal("not marked out")
	}
	f.storing[0] = false
	if err := r.Retire(ctx, m); !errors.Is(err, roles.ErrNotYet) || !strings.Contains(err.Error(), "osd.0 is still up") {
		t.Fatalf("Retire while up = %v", err)
	}
	if _, ok := f.keys["osd.0"]; !ok {
		t.Fatal("key deleted while the OSD still runs")
	}
	f.set(0, func(o *fakeOSD) { o.up = false })
	if err := r.Retire(ctx, m); err != nil {
		t.Fatal(err)
	}
	if len(f.osds) != 0 || len(f.keys) != 0 || f.hosts["n1"] || len(f.kv) != 0 {
		t.Fatalf("left: osds %v keys %v hosts %v kv %v", f.osds, f.keys, f.hosts, f.kv)
	}
	if err := r.Retire(ctx, m); err != nil {
		t.Fatalf("second Retire: %v", err)
	}
	// The freed ids go to another machine; a third Retire of m (say with
	// its record lost) must not touch them.
	m2 := fakeMachine()
	m2.ID = "525400000002"
	_, jc2 := configureFake(t, r, m2)
	if jc2.OSDs[0].ID != jc.OSDs[0].ID {
		t.Fatalf("ids not reused: %d", jc2.OSDs[0].ID)
	}
	if err := r.Retire(ctx, m); err != nil {
		t.Fatal(err)
	}
	if len(f.osds) != 2 || len(f.keys) != 2 {
		t.Fatalf("Retire of a retired machine touched another's OSDs: %v %v", f.osds, f.keys)
	}
	// Without its record, Retire finds the machine's OSDs by their uuids.
	delete(f.kv, recordKey(m2.ID))
	if err := r.Retire(ctx, m2); err != nil {
		t.Fatal(err)
	}
	if len(f.osds) != 0 || len(f.keys) != 0 {
		t.Fatalf("Retire without a record left %v %v", f.osds, f.keys)
	}
}
