//go:build !ceph

package ceph

import "context"

// New is the ceph-osd role; this binary was built without the ceph tag, so
// it returns ErrNotCompiled.
func New(ctx context.Context, cfg Config) (*Role, error) { return nil, ErrNotCompiled }
