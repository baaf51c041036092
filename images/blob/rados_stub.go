//go:build !ceph

package blob

import "context"

// NewRADOS is the RADOS backend; this binary was built without the `ceph`
// tag, so it returns ErrNotCompiled.
func NewRADOS(ctx context.Context, cfg RADOSConfig, opts Options) (Store, error) {
	return nil, ErrNotCompiled
}
