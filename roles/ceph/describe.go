package ceph

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

var _ roles.Describer = (*Role)(nil)

// maxDescribed bounds the machine records Describe reads (one mon command
// each).
const maxDescribed = 1000

// Describe asks the cluster for its fsid, monitors and OSD map, and lists
// the machines mdc registered OSDs for (the records in the mon's
// config-key store) with their OSDs' states. No key is read. A mon
// command takes no context, so the commands run aside: ctx ending returns
// at once, and a stuck command still ends at Config.Timeout.
func (r *Role) Describe(ctx context.Context) (roles.Status, error) {
	type answer struct {
		st  roles.Status
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		st, err := r.describe(ctx)
		ch <- answer{st, err}
	}()
	select {
	case a := <-ch:
		return a.st, a.err
	case <-ctx.Done():
		return roles.Status{Name: Name}, fmt.Errorf("ceph-osd: the cluster did not answer in time: %w", ctx.Err())
	}
}

func (r *Role) describe(ctx context.Context) (roles.Status, error) {
	st := roles.Status{Name: Name}
	conf, fsid, err := r.minimalConf(ctx)
	if err != nil {
		return st, fmt.Errorf("ceph-osd: %w", err)
	}
	st.Settings = map[string]string{
		"fsid":           fsid,
		"mon_host":       confValue(conf, "mon_host"),
		"user":           "client." + r.cfg.User,
		"crush_location": "root=default host=<machine name>",
		"min_disk_bytes": strconv.FormatUint(r.cfg.MinDiskBytes, 10),
		"up_grace":       r.cfg.UpGrace.String(),
	}
	dump, err := r.dump(ctx)
	if err != nil {
		return st, fmt.Errorf("ceph-osd: %w", err)
	}
	tree, err := r.tree(ctx)
	if err != nil {
		return st, fmt.Errorf("ceph-osd: %w", err)
	}
	states, err := osdStates(dump, tree)
	if err != nil {
		return st, fmt.Errorf("ceph-osd: %w", err)
	}
	upIn := 0
	for _, s := range states {
		if s.up && s.in {
			upIn++
		}
	}
	ids, err := r.recordIDs(ctx)
	if err != nil {
		return st, fmt.Errorf("ceph-osd: %w", err)
	}
	mdcOSDs := 0
	for _, id := range ids {
		rec, ok, err := r.readRecord(ctx, id)
		if err != nil {
			return st, fmt.Errorf("ceph-osd: %w", err)
		}
		if !ok {
			continue // retired meanwhile
		}
		var parts []string
		for _, o := range rec.OSDs {
			s, found := states[o.ID]
			word := "up, in"
			switch {
			case !found:
				word = "gone from the map"
			case s.isNew:
				word = "never booted"
			case !s.up:
				word = "down"
			case !s.in:
				word = "out"
			case s.parentType != "host" || s.parent != rec.Host:
				word = "up, not under its host"
			}
			if found {
				mdcOSDs++
			}
			parts = append(parts, fmt.Sprintf("osd.%d %s (%s)", o.ID, o.Disk, word))
		}
		st.Members = append(st.Members, roles.Member{Machine: id, Detail: "host " + rec.Host + ": " + strings.Join(parts, ", ")})
	}
	short := fsid
	if len(short) > 8 {
		short = short[:8] + "…"
	}
	st.Summary = fmt.Sprintf("Ceph cluster %s: %d of %d OSDs up and in; mdc machines hold %d OSDs on %d hosts",
		short, upIn, len(states), mdcOSDs, len(st.Members))
	return st, nil
}

// recordIDs lists the machines that have a record, sorted.
func (r *Role) recordIDs(ctx context.Context) ([]machine.ID, error) {
	b, err := r.mon(ctx, map[string]any{"prefix": "config-key ls", "format": "json"}, nil)
	if err != nil {
		return nil, err
	}
	var keys []string
	if err := json.Unmarshal(b, &keys); err != nil {
		return nil, fmt.Errorf("config-key ls: %w", err)
	}
	var ids []machine.ID
	for _, k := range keys {
		rest, ok := strings.CutPrefix(k, recordKey(""))
		if !ok {
			continue
		}
		if id, err := machine.ParseID(rest); err == nil && recordKey(id) == k {
			ids = append(ids, id)
		}
		if len(ids) == maxDescribed {
			break
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids, nil
}

// confValue reads key (spaces or underscores) out of a conf.
func confValue(conf, key string) string {
	for _, l := range strings.Split(conf, "\n") {
		k, v, ok := strings.Cut(l, "=")
		if ok && strings.ReplaceAll(strings.TrimSpace(k), " ", "_") == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
