//go:build ceph

package ceph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"syscall"

	"github.com/ceph/go-ceph/rados"
)

// New connects to the cluster cfg names as client.<User>.
func New(ctx context.Context, cfg Config) (*Role, error) {
	if cfg.ConfFile == "" || cfg.Keyring == "" {
		return nil, errors.New("roles/ceph: the cluster's ceph.conf and an admin keyring are required")
	}
	cfg = cfg.withDefaults()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	conn, err := rados.NewConnWithUser(cfg.User)
	if err != nil {
		return nil, fmt.Errorf("roles/ceph: %w", err)
	}
	if err := conn.ReadConfigFile(cfg.ConfFile); err != nil {
		return nil, fmt.Errorf("roles/ceph: read %s: %w", cfg.ConfFile, err)
	}
	secs := strconv.Itoa(max(1, int(cfg.Timeout.Seconds())))
	for k, v := range map[string]string{"keyring": cfg.Keyring, "rados_mon_op_timeout": secs,
		"rados_osd_op_timeout": secs, "client_mount_timeout": secs} {
		if err := conn.SetConfigOption(k, v); err != nil {
			return nil, fmt.Errorf("roles/ceph: set %s: %w", k, err)
		}
	}
	if err := conn.Connect(); err != nil {
		return nil, fmt.Errorf("roles/ceph: connect as client.%s with %s and %s: %w; check the mon addresses and the keyring",
			cfg.User, cfg.ConfFile, cfg.Keyring, err)
	}
	return newRole(cfg, radosCluster{conn}), nil
}

type radosCluster struct{ conn *rados.Conn }

func (c radosCluster) mon(cmd map[string]any, in []byte) ([]byte, error) {
	b, _ := json.Marshal(cmd)
	out, status, err := c.conn.MonCommandWithInputBuffer(b, in)
	return out, commandError(cmd, status, err)
}

func (c radosCluster) mgr(cmd map[string]any) ([]byte, error) {
	b, _ := json.Marshal(cmd)
	out, status, err := c.conn.MgrCommand([][]byte{b})
	return out, commandError(cmd, status, err)
}

func (c radosCluster) close() { c.conn.Shutdown() }

// commandError turns go-ceph's negative errno into a CommandError.
func commandError(cmd map[string]any, status string, err error) error {
	if err == nil {
		return nil
	}
	prefix, _ := cmd["prefix"].(string)
	var coded interface{ ErrorCode() int }
	if errors.As(err, &coded) {
		n := coded.ErrorCode()
		if n < 0 {
			n = -n
		}
		return &CommandError{Prefix: prefix, Errno: syscall.Errno(n), Status: status}
	}
	return fmt.Errorf("ceph %s: %w", prefix, err)
}
