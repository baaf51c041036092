// Package ceph is the ceph-osd role: machines that join an existing Ceph
// cluster as OSD hosts, one OSD per data disk (docs/roles-ceph.md).
//
// mdc holds the admin credentials of the cluster. For each eligible disk
// of a machine it pre-registers an OSD with `osd new` (a uuid derived from
// the cluster, the machine and the disk, and a fresh cephx secret), and
// serves the node ceph.conf (fsid, mon_host, the CRUSH host), one keyring
// per OSD (0600) and a join configuration naming id, uuid and keyring per
// disk. The node can create exactly these OSDs and nothing else. The
// cluster is the source of truth: the mapping machine → OSDs is kept in the
// mon's config-key store, so any mdc instance can verify or retire.
//
// The go-ceph code is compiled only with -tags ceph,pacific; without the
// tag New returns ErrNotCompiled and the rest of the package still builds.
package ceph

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// Name is the role's name as machines carry it.
const Name = "ceph-osd"

// ErrNotCompiled is New's error in a binary built without the ceph tag.
var ErrNotCompiled = errors.New("roles/ceph: built without Ceph support (-tags ceph,pacific)")

// Paths on the node.
const (
	ConfPath      = "/etc/ceph/ceph.conf"
	keyringFormat = "/etc/ceph/ceph.osd.%d.keyring" // the first place Ceph looks for osd.N's key
)

// Defaults of Config.
const (
	DefaultUser         = "admin"
	DefaultTimeout      = 30 * time.Second
	DefaultMinDiskBytes = 10 << 30
	DefaultUpGrace      = 10 * time.Minute
)

// Config is what the role needs: admin access to an existing cluster.
type Config struct {
	// ConfFile is the cluster's ceph.conf as mdc sees it (mon addresses);
	// required.
	ConfFile string
	// Keyring holds the key of client.<User>; required. User needs
	// mon 'allow *' (osd new, auth get/del, config-key) and mgr 'allow *'
	// (safe-to-destroy, purge): in practice client.admin.
	Keyring string
	// User is the cephx user without "client."; default admin.
	User string
	// Timeout bounds each mon and mgr command; default 30s.
	Timeout time.Duration
	// MinDiskBytes: smaller disks do not become OSDs; default 10 GiB.
	MinDiskBytes uint64
	// UpGrace is how long Verify answers ErrNotYet for an OSD that is not
	// up and in under its host before it fails the join; default 10m.
	UpGrace time.Duration
	// Log defaults to discard. Secrets never reach it.
	Log *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.User == "" {
		c.User = DefaultUser
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MinDiskBytes == 0 {
		c.MinDiskBytes = DefaultMinDiskBytes
	}
	if c.UpGrace <= 0 {
		c.UpGrace = DefaultUpGrace
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c
}

// JoinConfig is the role's Config JSON, handed to the node's join hook.
type JoinConfig struct {
	Cluster string `json:"cluster"` // "ceph": the conf and keyring file names
	FSID    string `json:"fsid"`
	Conf    string `json:"conf"` // ConfPath
	// Host is the CRUSH host bucket the OSDs put themselves under (the
	// conf's crush_location says so too).
	Host string    `json:"host"`
	OSDs []JoinOSD `json:"osds"`
}

// JoinOSD is one OSD the node creates: ceph-osd --mkfs -i ID --osd-uuid
// UUID --keyring Keyring on Disk, then starts it.
type JoinOSD struct {
	ID        int    `json:"id"`
	UUID      string `json:"uuid"`
	Disk      string `json:"disk"`             // kernel name, e.g. sdb
	Serial    string `json:"serial,omitempty"` // to find the disk if names moved
	SizeBytes uint64 `json:"size_bytes"`
	Keyring   string `json:"keyring"` // the file holding osd.ID's secret (0600)
	// Evidence is the key the hook reports: the first 16 hex digits of
	// SHA-256 over the key text in the keyring it used.
	Evidence string `json:"evidence"`
}

// EvidenceKey is the evidence the join hook reports for OSD id: which key
// it used, as KeyFingerprint of it.
func EvidenceKey(id int) string { return fmt.Sprintf("osd.%d.key", id) }

// KeyFingerprint names a cephx key without revealing it: the first 16 hex
// digits of SHA-256 over its base64 text.
func KeyFingerprint(key string) string {
	s := sha256.Sum256([]byte(strings.TrimSpace(key)))
	return hex.EncodeToString(s[:8])
}

// record is what the mon's config-key store keeps per machine.
type record struct {
	Host string      `json:"host"`
	OSDs []recordOSD `json:"osds"`
}

type recordOSD struct {
	ID   int    `json:"id"`
	UUID string `json:"uuid"`
	Disk string `json:"disk"`
}

func recordKey(id machine.ID) string { return "mdc/ceph-osd/" + string(id) }

// cluster is the slice of librados the role uses; the ceph-tagged build
// implements it with go-ceph.
type cluster interface {
	// mon sends a mon command (JSON) with an optional input buffer.
	mon(cmd map[string]any, in []byte) ([]byte, error)
	// mgr sends a mgr command (JSON).
	mgr(cmd map[string]any) ([]byte, error)
	close()
}

// CommandError is a mon or mgr command the cluster refused.
type CommandError struct {
	Prefix string
	Errno  syscall.Errno
	Status string // the cluster's own words
}

func (e *CommandError) Error() string {
	s := fmt.Sprintf("ceph %s: %v", e.Prefix, e.Errno)
	if e.Status != "" {
		s += ": " + strings.TrimSpace(e.Status)
	}
	return s
}

// Is lets errors.Is(err, syscall.ENOENT) see through.
func (e *CommandError) Is(target error) bool { return target == e.Errno }

// Role is the ceph-osd role. Its methods are safe for concurrent use.
type Role struct {
	cfg Config
	c   cluster
	now func() time.Time

	mu    sync.Mutex
	since map[machine.ID]time.Time // first Verify that found the node not joined
}

var _ roles.Role = (*Role)(nil)

func newRole(cfg Config, c cluster) *Role {
	return &Role{cfg: cfg.withDefaults(), c: c, now: time.Now, since: make(map[machine.ID]time.Time)}
}

// Name implements roles.Role.
func (r *Role) Name() string { return Name }

// Close drops the cluster connection.
func (r *Role) Close() { r.c.close() }

func (r *Role) mon(ctx context.Context, cmd map[string]any, in []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return r.c.mon(cmd, in)
}

// Disks lists the disks of facts that become OSDs: not removable, at least
// minBytes, sorted by name.
func Disks(f *machine.Facts, minBytes uint64) []machine.Disk {
	if f == nil {
		return nil
	}
	var out []machine.Disk
	for _, d := range f.Disks {
		if d.Removable || d.SizeBytes < minBytes || d.Name == "" {
			continue
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// OSDUUID is the uuid of the OSD on disk d of machine id in cluster fsid:
// stable, so that a repeated Configure finds the OSD it registered, and
// distinct per cluster, machine and disk (the serial if known, else the
// name).
func OSDUUID(fsid string, id machine.ID, d machine.Disk) string {
	which := "name:" + d.Name
	if d.Serial != "" {
		which = "serial:" + d.Serial
	}
	s := sha256.Sum256([]byte("mdc ceph-osd\x00" + fsid + "\x00" + string(id) + "\x00" + which))
	u := s[:16]
	u[6] = u[6]&0x0f | 0x80 // version 8: custom (RFC 9562)
	u[8] = u[8]&0x3f | 0x80 // variant RFC 4122
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// HostName is the CRUSH host bucket of machine m: its name, else mdc-<id>,
// in the characters CRUSH allows.
func HostName(m machine.Machine) string {
	n := m.Name
	if n == "" {
		n = "mdc-" + string(m.ID)
	}
	b := []byte(n)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			b[i] = '-'
		}
	}
	return string(b)
}

// NewSecret returns a fresh cephx secret, as ceph-authtool --gen-print-key
// makes it: base64 of type 1 (AES), the creation time, and 16 random bytes.
func NewSecret() (string, error) {
	var b [28]byte
	now := time.Now()
	binary.LittleEndian.PutUint16(b[0:], 1)
	binary.LittleEndian.PutUint32(b[2:], uint32(now.Unix()))
	binary.LittleEndian.PutUint32(b[6:], uint32(now.Nanosecond()))
	binary.LittleEndian.PutUint16(b[10:], 16)
	if _, err := rand.Read(b[12:]); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b[:]), nil
}

func keyring(id int, secret string) string {
	return fmt.Sprintf("[osd.%d]\n\tkey = %s\n", id, secret)
}

// nodeConf is the cluster's minimal conf plus where the node's OSDs go in
// CRUSH.
func nodeConf(minimal, host string) string {
	c := strings.TrimRight(minimal, "\n") + "\n"
	return c + "[osd]\n\tcrush_location = root=default host=" + host + "\n"
}

// fsidOf reads the fsid out of a conf.
func fsidOf(conf string) string {
	for _, l := range strings.Split(conf, "\n") {
		k, v, ok := strings.Cut(l, "=")
		if ok && strings.ReplaceAll(strings.TrimSpace(k), " ", "_") == "fsid" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// osdDump is the part of `osd dump` the role reads.
type osdDump struct {
	FSID string `json:"fsid"`
	OSDs []struct {
		OSD   int      `json:"osd"`
		UUID  string   `json:"uuid"`
		Up    int      `json:"up"`
		In    int      `json:"in"`
		State []string `json:"state"`
	} `json:"osds"`
}

// osdTree is the part of `osd tree` the role reads.
type osdTree struct {
	Nodes []treeNode `json:"nodes"`
	Stray []treeNode `json:"stray"`
}

type treeNode struct {
	ID       int    `json:"id"`
	Name     string `json:"name"`
	Type     string `json:"type"`
	Children []int  `json:"children"`
	Status   string `json:"status"`
}

// osdState is what the cluster says about one OSD.
type osdState struct {
	exists, isNew, up, in bool
	parent                string // the CRUSH bucket holding it, "" if none
	parentType            string
}

// osdStates reads `osd dump` and `osd tree` JSON into states by OSD id.
func osdStates(dumpJSON, treeJSON []byte) (map[int]osdState, error) {
	var d osdDump
	if err := json.Unmarshal(dumpJSON, &d); err != nil {
		return nil, fmt.Errorf("osd dump: %w", err)
	}
	var t osdTree
	if len(treeJSON) > 0 {
		if err := json.Unmarshal(treeJSON, &t); err != nil {
			return nil, fmt.Errorf("osd tree: %w", err)
		}
	}
	out := make(map[int]osdState, len(d.OSDs))
	for _, o := range d.OSDs {
		out[o.OSD] = osdState{exists: true, isNew: slices.Contains(o.State, "new"), up: o.Up == 1, in: o.In == 1}
	}
	for _, n := range t.Nodes {
		if n.ID >= 0 {
			continue
		}
		for _, c := range n.Children {
			if s, ok := out[c]; ok && c >= 0 {
				s.parent, s.parentType = n.Name, n.Type
				out[c] = s
			}
		}
	}
	return out, nil
}

// uuids maps OSD uuids in `osd dump` JSON to ids.
func uuids(dumpJSON []byte) (map[string]int, error) {
	var d osdDump
	if err := json.Unmarshal(dumpJSON, &d); err != nil {
		return nil, fmt.Errorf("osd dump: %w", err)
	}
	out := make(map[string]int, len(d.OSDs))
	for _, o := range d.OSDs {
		out[o.UUID] = o.OSD
	}
	return out, nil
}

// authKey reads the key and mon cap out of `auth get` JSON.
func authKey(b []byte) (key, monCap string, err error) {
	var a []struct {
		Key  string            `json:"key"`
		Caps map[string]string `json:"caps"`
	}
	if err := json.Unmarshal(b, &a); err != nil || len(a) == 0 {
		return "", "", fmt.Errorf("auth get: unreadable answer")
	}
	return a[0].Key, a[0].Caps["mon"], nil
}

// minimalConf asks the cluster for its minimal conf (fsid, mon_host).
func (r *Role) minimalConf(ctx context.Context) (conf, fsid string, err error) {
	b, err := r.mon(ctx, map[string]any{"prefix": "config generate-minimal-conf"}, nil)
	if err != nil {
		return "", "", err
	}
	conf = string(b)
	if fsid = fsidOf(conf); fsid == "" {
		return "", "", errors.New("ceph config generate-minimal-conf: no fsid in the answer")
	}
	return conf, fsid, nil
}

func (r *Role) dump(ctx context.Context) ([]byte, error) {
	return r.mon(ctx, map[string]any{"prefix": "osd dump", "format": "json"}, nil)
}

func (r *Role) tree(ctx context.Context) ([]byte, error) {
	return r.mon(ctx, map[string]any{"prefix": "osd tree", "format": "json"}, nil)
}

// readRecord returns the machine's record; ok is false when it has none.
func (r *Role) readRecord(ctx context.Context, id machine.ID) (rec record, ok bool, err error) {
	b, err := r.mon(ctx, map[string]any{"prefix": "config-key get", "key": recordKey(id)}, nil)
	if errors.Is(err, syscall.ENOENT) {
		return record{}, false, nil
	}
	if err != nil {
		return record{}, false, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return record{}, false, fmt.Errorf("config-key %s: %w", recordKey(id), err)
	}
	return rec, true, nil
}

func (r *Role) writeRecord(ctx context.Context, id machine.ID, rec record) error {
	b, _ := json.Marshal(rec)
	_, err := r.mon(ctx, map[string]any{"prefix": "config-key set", "key": recordKey(id), "val": string(b)}, nil)
	return err
}

// Configure implements roles.Role: it registers (or finds again) one OSD
// per eligible disk and serves ceph.conf, the OSD keyrings and the join
// configuration.
func (r *Role) Configure(ctx context.Context, m machine.Machine, report map[string]string, c *agentapi.RoleConfig) error {
	disks := Disks(m.Facts, r.cfg.MinDiskBytes)
	if len(disks) == 0 {
		return fmt.Errorf("ceph-osd: machine %s has no disk for an OSD (facts list none that is not removable and at least %d bytes)", m.ID, r.cfg.MinDiskBytes)
	}
	r.mu.Lock() // one registration at a time: osd new must not race itself
	defer r.mu.Unlock()
	minimal, fsid, err := r.minimalConf(ctx)
	if err != nil {
		return fmt.Errorf("ceph-osd: %w", err)
	}
	dump, err := r.dump(ctx)
	if err != nil {
		return fmt.Errorf("ceph-osd: %w", err)
	}
	byUUID, err := uuids(dump)
	if err != nil {
		return fmt.Errorf("ceph-osd: %w", err)
	}
	rec, _, err := r.readRecord(ctx, m.ID)
	if err != nil {
		return fmt.Errorf("ceph-osd: %w", err)
	}
	host := HostName(m)
	rec.Host = host
	jc := JoinConfig{Cluster: "ceph", FSID: fsid, Conf: ConfPath, Host: host}
	files := []agentapi.File{{Path: ConfPath, Mode: "0644", Content: nodeConf(minimal, host)}}
	var evidence []string
	for _, d := range disks {
		uuid := OSDUUID(fsid, m.ID, d)
		id, secret, err := r.register(ctx, uuid, byUUID)
		if err != nil {
			return fmt.Errorf("ceph-osd: machine %s disk %s: %w", m.ID, d.Name, err)
		}
		if !slices.ContainsFunc(rec.OSDs, func(o recordOSD) bool { return o.UUID == uuid }) {
			rec.OSDs = append(rec.OSDs, recordOSD{ID: id, UUID: uuid, Disk: d.Name})
		}
		kr := fmt.Sprintf(keyringFormat, id)
		files = append(files, agentapi.File{Path: kr, Mode: "0600", Content: keyring(id, secret)})
		jc.OSDs = append(jc.OSDs, JoinOSD{ID: id, UUID: uuid, Disk: d.Name, Serial: d.Serial, SizeBytes: d.SizeBytes,
			Keyring: kr, Evidence: EvidenceKey(id)})
		evidence = append(evidence, EvidenceKey(id))
	}
	if err := r.writeRecord(ctx, m.ID, rec); err != nil {
		return fmt.Errorf("ceph-osd: record machine %s's OSDs: %w", m.ID, err)
	}
	raw, err := json.Marshal(jc)
	if err != nil {
		return err
	}
	c.Files = append(c.Files, files...)
	c.Config = raw
	c.Evidence = append(c.Evidence, evidence...)
	r.cfg.Log.Info("ceph-osd configured", "machine", m.ID, "host", host, "osds", len(jc.OSDs))
	return nil
}

// register returns the OSD of uuid and its secret, creating both if the
// cluster has no such OSD yet.
func (r *Role) register(ctx context.Context, uuid string, byUUID map[string]int) (int, string, error) {
	if id, ok := byUUID[uuid]; ok {
		b, err := r.mon(ctx, map[string]any{"prefix": "auth get", "entity": fmt.Sprintf("osd.%d", id), "format": "json"}, nil)
		if errors.Is(err, syscall.ENOENT) {
			return 0, "", fmt.Errorf("osd.%d exists but its key was removed (revoked): retire the machine before configuring it again", id)
		}
		if err != nil {
			return 0, "", err
		}
		key, _, err := authKey(b)
		return id, key, err
	}
	secret, err := NewSecret()
	if err != nil {
		return 0, "", err
	}
	in, _ := json.Marshal(map[string]string{"cephx_secret": secret})
	b, err := r.mon(ctx, map[string]any{"prefix": "osd new", "uuid": uuid, "format": "json"}, in)
	if errors.Is(err, syscall.EEXIST) {
		// Another mdc registered this uuid since our osd dump: use its OSD.
		dump, derr := r.dump(ctx)
		if derr != nil {
			return 0, "", derr
		}
		now, derr := uuids(dump)
		if derr != nil {
			return 0, "", derr
		}
		if _, ok := now[uuid]; ok {
			return r.register(ctx, uuid, now)
		}
	}
	if err != nil {
		return 0, "", err
	}
	var out struct {
		OSDID *int `json:"osdid"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.OSDID == nil {
		// Older answers are the bare id.
		id, aerr := strconv.Atoi(strings.TrimSpace(string(b)))
		if aerr != nil {
			return 0, "", fmt.Errorf("osd new: unreadable answer")
		}
		return id, secret, nil
	}
	r.cfg.Log.Info("ceph-osd registered an OSD", "osd", *out.OSDID, "uuid", uuid)
	return *out.OSDID, secret, nil
}

// osdsOf returns the OSDs mdc registered for m that the cluster still
// has: the record, and (without one) the uuids its disks would have.
func (r *Role) osdsOf(ctx context.Context, m machine.Machine, dump []byte) (rec record, ok bool, err error) {
	rec, ok, err = r.readRecord(ctx, m.ID)
	if err != nil || ok {
		return rec, ok, err
	}
	var d osdDump
	if err := json.Unmarshal(dump, &d); err != nil {
		return rec, false, fmt.Errorf("osd dump: %w", err)
	}
	byUUID, _ := uuids(dump)
	rec.Host = HostName(m)
	for _, dk := range Disks(m.Facts, 0) {
		u := OSDUUID(d.FSID, m.ID, dk)
		if id, found := byUUID[u]; found {
			rec.OSDs = append(rec.OSDs, recordOSD{ID: id, UUID: u, Disk: dk.Name})
		}
	}
	return rec, false, nil
}

// Verify implements roles.Role: joined is every OSD of the machine up and
// in, under its host bucket, with the key mdc minted for it.
func (r *Role) Verify(ctx context.Context, m machine.Machine, evidence map[string]string) error {
	rec, ok, err := r.readRecord(ctx, m.ID)
	if err != nil {
		return fmt.Errorf("%w: ceph-osd: cannot ask the cluster: %v", roles.ErrNotYet, err)
	}
	if !ok || len(rec.OSDs) == 0 {
		return fmt.Errorf("ceph-osd: the cluster has no OSDs registered for machine %s (never configured, or retired)", m.ID)
	}
	dump, err := r.dump(ctx)
	if err != nil {
		return fmt.Errorf("%w: ceph-osd: cannot ask the cluster: %v", roles.ErrNotYet, err)
	}
	tree, err := r.tree(ctx)
	if err != nil {
		return fmt.Errorf("%w: ceph-osd: cannot ask the cluster: %v", roles.ErrNotYet, err)
	}
	states, err := osdStates(dump, tree)
	if err != nil {
		return fmt.Errorf("ceph-osd: %w", err)
	}
	byUUID, _ := uuids(dump)
	var waiting []string
	for _, o := range rec.OSDs {
		name := fmt.Sprintf("osd.%d", o.ID)
		if id, found := byUUID[o.UUID]; !found || id != o.ID {
			return fmt.Errorf("ceph-osd: %s (uuid %s, disk %s) is no longer in the OSD map: it was purged; retire the machine and provision it again", name, o.UUID, o.Disk)
		}
		b, err := r.mon(ctx, map[string]any{"prefix": "auth get", "entity": name, "format": "json"}, nil)
		if errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("ceph-osd: %s's cephx key was removed from the cluster (revoked): the OSD cannot authenticate; retire the machine and provision it again", name)
		}
		if err != nil {
			return fmt.Errorf("%w: ceph-osd: auth get %s: %v", roles.ErrNotYet, name, err)
		}
		key, monCap, err := authKey(b)
		if err != nil {
			return fmt.Errorf("ceph-osd: %s: %w", name, err)
		}
		if got := evidence[EvidenceKey(o.ID)]; got != "" && got != KeyFingerprint(key) {
			return fmt.Errorf("ceph-osd: the node used a key for %s that is not the cluster's (fingerprint %s, want %s): the OSD cannot authenticate", name, got, KeyFingerprint(key))
		}
		if !strings.Contains(monCap, "profile osd") {
			return fmt.Errorf("ceph-osd: %s's key lacks the mon cap 'allow profile osd' (it has %q): the OSD cannot boot", name, monCap)
		}
		s := states[o.ID]
		switch {
		case s.isNew:
			waiting = append(waiting, name+" has never booted")
		case !s.up:
			waiting = append(waiting, name+" is down")
		case !s.in:
			waiting = append(waiting, name+" is out")
		case s.parentType != "host" || s.parent != rec.Host:
			where := s.parentType + " " + s.parent
			if s.parent == "" {
				where = "no CRUSH bucket"
			}
			waiting = append(waiting, fmt.Sprintf("%s is under %s, not host %s", name, where, rec.Host))
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(waiting) == 0 {
		delete(r.since, m.ID)
		return nil
	}
	first, seen := r.since[m.ID]
	if !seen {
		first = r.now()
		r.since[m.ID] = first
	}
	why := strings.Join(waiting, "; ")
	if wait := r.now().Sub(first); wait > r.cfg.UpGrace {
		return fmt.Errorf("ceph-osd: not joined after %s: %s (is ceph-osd running on the node, and can it reach and authenticate to the mons?)", wait.Round(time.Second), why)
	}
	return fmt.Errorf("%w: %s", roles.ErrNotYet, why)
}
