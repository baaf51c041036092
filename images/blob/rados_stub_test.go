//go:build !ceph

package blob

import (
	"context"
	"errors"
	"testing"
)

func TestRADOSNotCompiled(t *testing.T) {
	_, err := New(context.Background(), Config{Backend: BackendRADOS, RADOS: RADOSConfig{Pool: "p"}}, Options{})
	if !errors.Is(err, ErrNotCompiled) {
		t.Fatalf("New(rados) without the ceph tag: %v, want ErrNotCompiled", err)
	}
}
