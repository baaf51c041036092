package ceph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// Retire implements roles.Role: mark the machine's OSDs out; once they
// hold no data and are down, purge them (osdmap, CRUSH, key), drop the
// empty host bucket and the record. While data is draining or an OSD is
// still up it returns an error wrapping roles.ErrNotYet: call again.
func (r *Role) Retire(ctx context.Context, m machine.Machine) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.since, m.ID)
	dump, err := r.dump(ctx)
	if err != nil {
		return fmt.Errorf("ceph-osd: retire %s: %w", m.ID, err)
	}
	rec, hasRecord, err := r.osdsOf(ctx, m, dump)
	if err != nil {
		return fmt.Errorf("ceph-osd: retire %s: %w", m.ID, err)
	}
	states, err := osdStates(dump, nil)
	if err != nil {
		return fmt.Errorf("ceph-osd: retire %s: %w", m.ID, err)
	}
	byUUID, _ := uuids(dump)
	var live []int // still in the map under the uuid mdc gave them
	for _, o := range rec.OSDs {
		if id, ok := byUUID[o.UUID]; ok && id == o.ID {
			live = append(live, o.ID)
		}
	}
	var notYet []string
	var booted []int
	for _, id := range live {
		s := states[id]
		if s.in {
			if _, err := r.mon(ctx, map[string]any{"prefix": "osd out", "ids": []string{strconv.Itoa(id)}}, nil); err != nil {
				return fmt.Errorf("ceph-osd: retire %s: osd out %d: %w", m.ID, id, err)
			}
			r.cfg.Log.Info("ceph-osd marked out", "machine", m.ID, "osd", id)
		}
		if !s.isNew {
			booted = append(booted, id)
		}
	}
	if len(booted) > 0 {
		safe, why, err := r.safeToDestroy(ctx, booted)
		if err != nil {
			return fmt.Errorf("ceph-osd: retire %s: %w", m.ID, err)
		}
		if !safe {
			return fmt.Errorf("%w: ceph-osd: retire %s: %s; marked out, data is moving off: retire again later", roles.ErrNotYet, m.ID, why)
		}
	}
	for _, id := range live {
		if states[id].up {
			notYet = append(notYet, fmt.Sprintf("osd.%d is still up", id))
		}
	}
	if len(notYet) > 0 {
		return fmt.Errorf("%w: ceph-osd: retire %s: %s: its data is safe; stop ceph-osd on the node (power it off) and retire again", roles.ErrNotYet, m.ID, strings.Join(notYet, ", "))
	}
	for _, id := range live {
		if err := r.purge(ctx, id, states[id].isNew); err != nil {
			return fmt.Errorf("ceph-osd: retire %s: %w", m.ID, err)
		}
		r.cfg.Log.Info("ceph-osd purged", "machine", m.ID, "osd", id)
	}
	for _, o := range rec.OSDs {
		if _, reused := states[o.ID]; reused && !slices.Contains(live, o.ID) {
			continue // purged earlier and the id went to another OSD: its key is not ours
		}
		// purge removes the key too; this catches one left by a partial purge.
		_, err := r.mon(ctx, map[string]any{"prefix": "auth del", "entity": fmt.Sprintf("osd.%d", o.ID)}, nil)
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("ceph-osd: retire %s: auth del osd.%d: %w", m.ID, o.ID, err)
		}
	}
	if err := r.removeEmptyHost(ctx, rec.Host); err != nil {
		return fmt.Errorf("ceph-osd: retire %s: %w", m.ID, err)
	}
	if hasRecord {
		_, err := r.mon(ctx, map[string]any{"prefix": "config-key rm", "key": recordKey(m.ID)}, nil)
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("ceph-osd: retire %s: config-key rm: %w", m.ID, err)
		}
	}
	return nil
}

// safeToDestroy asks the mgr whether ids hold no data that is not
// elsewhere.
func (r *Role) safeToDestroy(ctx context.Context, ids []int) (bool, string, error) {
	if err := ctx.Err(); err != nil {
		return false, "", err
	}
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	b, err := r.c.mgr(map[string]any{"prefix": "osd safe-to-destroy", "ids": s, "format": "json"})
	var ce *CommandError
	if errors.As(err, &ce) && (ce.Errno == syscall.EBUSY || ce.Errno == syscall.EAGAIN) {
		return false, strings.TrimSpace(ce.Status), nil
	}
	if err != nil {
		return false, "", err
	}
	var out struct {
		Safe    []int `json:"safe_to_destroy"`
		Active  []int `json:"active"`
		Missing []int `json:"missing_stats"`
		Stored  []int `json:"stored_pgs"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return false, "", fmt.Errorf("osd safe-to-destroy: unreadable answer")
	}
	for _, id := range ids {
		if !slices.Contains(out.Safe, id) {
			return false, fmt.Sprintf("osd.%d is not safe to destroy yet (active %v, missing stats %v, storing PGs %v)", id, out.Active, out.Missing, out.Stored), nil
		}
	}
	return true, "", nil
}

// purge removes an OSD from the osdmap, CRUSH and auth. A never-booted OSD
// goes with the mon's purge-new; a booted one with osd purge, a mgr
// command in pacific (the mon answers EINVAL), so the mon is asked first
// for releases where it moved back.
func (r *Role) purge(ctx context.Context, id int, isNew bool) error {
	if isNew {
		_, err := r.mon(ctx, map[string]any{"prefix": "osd purge-new", "id": id, "yes_i_really_mean_it": true}, nil)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		// Otherwise it booted meanwhile: purge it the ordinary way.
	}
	cmd := map[string]any{"prefix": "osd purge", "id": id, "yes_i_really_mean_it": true}
	_, err := r.mon(ctx, cmd, nil)
	if errors.Is(err, syscall.EINVAL) {
		r.cfg.Log.Debug("ceph-osd: the mon refused osd purge, asking the mgr", "osd", id, "err", err)
		if err = ctx.Err(); err == nil {
			_, err = r.c.mgr(cmd)
		}
	}
	if err == nil || errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return err
}

// removeEmptyHost removes host's CRUSH bucket once no OSD is under it.
func (r *Role) removeEmptyHost(ctx context.Context, host string) error {
	b, err := r.tree(ctx)
	if err != nil {
		return err
	}
	var t osdTree
	if err := json.Unmarshal(b, &t); err != nil {
		return fmt.Errorf("osd tree: %w", err)
	}
	for _, n := range t.Nodes {
		if n.Type == "host" && n.Name == host && len(n.Children) == 0 {
			_, err := r.mon(ctx, map[string]any{"prefix": "osd crush remove", "name": host}, nil)
			if err != nil && !errors.Is(err, syscall.ENOENT) {
				return fmt.Errorf("osd crush remove %s: %w", host, err)
			}
		}
	}
	return nil
}
