//go:build !ceph

package ceph

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestNewWithoutCeph(t *testing.T) {
	r, err := New(context.Background(), Config{ConfFile: "/etc/ceph/ceph.conf", Keyring: "/etc/ceph/ceph.client.admin.keyring"})
	if r != nil || !errors.Is(err, ErrNotCompiled) || !strings.Contains(err.Error(), "built without Ceph support (-tags ceph,pacific)") {
		t.Fatalf("New = %v, %v", r, err)
	}
}
