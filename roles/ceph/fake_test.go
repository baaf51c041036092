package ceph

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// fakeCluster is a stand-in for the mons and mgr, holding the state the
// role's commands read and change, and answering as pacific does (the
// JSON shapes were taken from a real 16.2.15 cluster; `osd purge` is a mgr
// command there and the mon answers EINVAL). The real cluster is tested in
// rados_test.go.
type fakeCluster struct {
	mu       sync.Mutex
	fsid     string
	osds     map[int]*fakeOSD
	keys     map[string]string // entity -> key
	caps     map[string]string // entity -> mon cap
	kv       map[string]string
	hosts    map[string]bool // CRUSH host buckets
	storing  map[int]bool    // OSDs that still hold PGs
	cmds     []string
	failNext map[string]syscall.Errno
}

type fakeOSD struct {
	uuid          string
	isNew, up, in bool
	host          string
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{fsid: "82130bfe-99bf-457a-8384-3aa6a4e567e6", osds: map[int]*fakeOSD{}, keys: map[string]string{},
		caps: map[string]string{}, kv: map[string]string{}, hosts: map[string]bool{}, storing: map[int]bool{},
		failNext: map[string]syscall.Errno{}}
}

func (f *fakeCluster) close() {}

func fail(prefix string, e syscall.Errno, status string) error {
	return &CommandError{Prefix: prefix, Errno: e, Status: status}
}

func idArg(cmd map[string]any) int {
	switch v := cmd["id"].(type) {
	case int:
		return v
	case float64:
		return int(v)
	}
	return -1
}

func (f *fakeCluster) mgr(cmd map[string]any) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := cmd["prefix"].(string)
	f.cmds = append(f.cmds, "mgr "+p)
	switch p {
	case "osd safe-to-destroy":
		out := struct {
			Safe   []int `json:"safe_to_destroy"`
			Active []int `json:"active"`
			Miss   []int `json:"missing_stats"`
			Stored []int `json:"stored_pgs"`
		}{[]int{}, []int{}, []int{}, []int{}}
		for _, s := range cmd["ids"].([]string) {
			id, _ := strconv.Atoi(s)
			if f.storing[id] {
				out.Stored = append(out.Stored, id)
			} else {
				out.Safe = append(out.Safe, id)
			}
		}
		return json.Marshal(out)
	case "osd purge":
		id := idArg(cmd)
		o, ok := f.osds[id]
		if !ok {
			return nil, nil // purging a gone OSD succeeds
		}
		if o.up {
			return nil, fail(p, syscall.EBUSY, fmt.Sprintf("osd.%d is not `down`.", id))
		}
		f.remove(id)
		return nil, nil
	}
	return nil, fail(p, syscall.EINVAL, "unknown mgr command")
}

func (f *fakeCluster) remove(id int) {
	delete(f.osds, id)
	delete(f.keys, fmt.Sprintf("osd.%d", id))
}

func (f *fakeCluster) mon(cmd map[string]any, in []byte) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := cmd["prefix"].(string)
	f.cmds = append(f.cmds, p)
	if e, ok := f.failNext[p]; ok {
		delete(f.failNext, p)
		return nil, fail(p, e, "injected")
	}
	entity, _ := cmd["entity"].(string)
	key, _ := cmd["key"].(string)
	switch p {
	case "config generate-minimal-conf":
		return []byte("# minimal ceph.conf for " + f.fsid + "\n[global]\n\tfsid = " + f.fsid +
			"\n\tmon_host = [v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]\n"), nil
	case "osd dump":
		type o struct {
			OSD   int      `json:"osd"`
			UUID  string   `json:"uuid"`
			Up    int      `json:"up"`
			In    int      `json:"in"`
			State []string `json:"state"`
		}
		d := struct {
			FSID string `json:"fsid"`
			OSDs []o    `json:"osds"`
		}{FSID: f.fsid, OSDs: []o{}}
		for _, id := range f.ids() {
			x := f.osds[id]
			st := []string{"exists"}
			if x.isNew {
				st = append(st, "new")
			}
			if x.up {
				st = append(st, "up")
			}
			d.OSDs = append(d.OSDs, o{id, x.uuid, b2i(x.up), b2i(x.in), st})
		}
		return json.Marshal(d)
	case "osd tree":
		t := osdTree{Nodes: []treeNode{{ID: -1, Name: "default", Type: "root"}}, Stray: []treeNode{}}
		hosts := make([]string, 0, len(f.hosts))
		for h := range f.hosts {
			hosts = append(hosts, h)
		}
		sort.Strings(hosts)
		for i, h := range hosts {
			n := treeNode{ID: -2 - i, Name: h, Type: "host", Children: []int{}}
			for _, id := range f.ids() {
				if f.osds[id].host == h {
					n.Children = append(n.Children, id)
				}
			}
			t.Nodes[0].Children = append(t.Nodes[0].Children, n.ID)
			t.Nodes = append(t.Nodes, n)
		}
		for _, id := range f.ids() {
			x := f.osds[id]
			n := treeNode{ID: id, Name: fmt.Sprintf("osd.%d", id), Type: "osd", Status: "down"}
			if x.up {
				n.Status = "up"
			}
			if x.host == "" {
				t.Stray = append(t.Stray, n)
			} else {
				t.Nodes = append(t.Nodes, n)
			}
		}
		return json.Marshal(t)
	case "osd new":
		uuid := cmd["uuid"].(string)
		var sec struct {
			Secret string `json:"cephx_secret"`
		}
		json.Unmarshal(in, &sec)
		for _, id := range f.ids() {
			if f.osds[id].uuid == uuid {
				if f.keys[fmt.Sprintf("osd.%d", id)] != sec.Secret {
					return nil, fail(p, syscall.EEXIST, fmt.Sprintf("entity osd.%d exists but key does not match", id))
				}
				return []byte(fmt.Sprintf(`{"osdid":%d}`, id)), nil
			}
		}
		id := 0
		for f.osds[id] != nil {
			id++
		}
		f.osds[id] = &fakeOSD{uuid: uuid, isNew: true, in: true}
		f.keys[fmt.Sprintf("osd.%d", id)] = sec.Secret
		f.caps[fmt.Sprintf("osd.%d", id)] = "allow profile osd"
		return []byte(fmt.Sprintf(`{"osdid":%d}`, id)), nil
	case "auth get":
		k, ok := f.keys[entity]
		if !ok {
			return nil, fail(p, syscall.ENOENT, "failed to find "+entity+" in keyring")
		}
		return json.Marshal([]map[string]any{{"entity": entity, "key": k, "caps": map[string]string{"mon": f.caps[entity], "osd": "allow *"}}})
	case "auth del":
		if _, ok := f.keys[entity]; !ok {
			return nil, fail(p, syscall.ENOENT, "failed to find "+entity+" in keyring")
		}
		delete(f.keys, entity)
		return nil, nil
	case "config-key get":
		v, ok := f.kv[key]
		if !ok {
			return nil, fail(p, syscall.ENOENT, "")
		}
		return []byte(v), nil
	case "config-key set":
		f.kv[key] = cmd["val"].(string)
		return nil, nil
	case "config-key ls":
		keys := make([]string, 0, len(f.kv))
		for k := range f.kv {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return json.Marshal(keys)
	case "config-key rm":
		delete(f.kv, key)
		return nil, nil
	case "osd out":
		for _, s := range cmd["ids"].([]string) {
			id, _ := strconv.Atoi(s)
			if o, ok := f.osds[id]; ok {
				o.in = false
			}
		}
		return nil, nil
	case "osd purge-new":
		id := idArg(cmd)
		o, ok := f.osds[id]
		if !ok {
			return nil, fail(p, syscall.ENOENT, "")
		}
		if !o.isNew {
			return nil, fail(p, syscall.EPERM, "osd is not new")
		}
		f.remove(id)
		return nil, nil
	case "osd crush remove":
		name := cmd["name"].(string)
		if !f.hosts[name] {
			return nil, fail(p, syscall.ENOENT, "")
		}
		delete(f.hosts, name)
		return nil, nil
	case "osd purge":
		return nil, fail(p, syscall.EINVAL, "")
	}
	return nil, fail(p, syscall.EINVAL, "unknown command "+strings.TrimSpace(p))
}

func (f *fakeCluster) ids() []int {
	ids := make([]int, 0, len(f.osds))
	for id := range f.osds {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	return ids
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// boot is what a node's ceph-osd does on first start with the right key:
// the OSD comes up, in, under its conf's CRUSH host.
func (f *fakeCluster) boot(id int, host string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := f.osds[id]
	o.isNew, o.up, o.host = false, true, host
	f.hosts[host] = true
}

func (f *fakeCluster) set(id int, fn func(o *fakeOSD)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.osds[id])
}
