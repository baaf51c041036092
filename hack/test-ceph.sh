#!/usr/bin/env bash
# test-ceph.sh: run the Ceph-tagged tests (the RADOS blob backend) against a
# real throwaway single-host Ceph from ../shared/ceph/ceph-up.sh, and always
# tear it down again. Extra arguments go to go test.
#
#   hack/test-ceph.sh                 go test -tags ceph,pacific ./images/blob/...
#   hack/test-ceph.sh -run RADOS -v
set -euo pipefail
cd "$(dirname "$0")/.."
ceph_dir=${CEPH_SHARED_DIR:-$(cd .. && pwd)/shared/ceph}
if [ ! -x "$ceph_dir/ceph-up.sh" ]; then
	echo "test-ceph: $ceph_dir/ceph-up.sh not found; shared/ must sit beside the checkout (or set CEPH_SHARED_DIR)" >&2
	exit 2
fi
for bin in ceph-mon ceph-osd ceph; do
	command -v "$bin" >/dev/null || { echo "test-ceph: $bin missing; run hack/install-deps.sh blob" >&2; exit 2; }
done
[ -f /usr/include/rados/librados.h ] || { echo "test-ceph: librados-dev missing; run hack/install-deps.sh blob" >&2; exit 2; }

# Our own cluster directory and ports, so a cluster someone else runs on the
# default ones is left alone.
export CEPH_TEST_DIR=${CEPH_TEST_DIR:-/tmp/mdc-ceph-test}
export CEPH_MON_V2_PORT=${CEPH_MON_V2_PORT:-3310} CEPH_MON_V1_PORT=${CEPH_MON_V1_PORT:-6799}
export CEPH_WAIT_HEALTH_OK=${CEPH_WAIT_HEALTH_OK:-0}
trap '"$ceph_dir/ceph-down.sh" >&2 || true' EXIT
eval "$("$ceph_dir/ceph-up.sh")"
go test -count=1 -tags ceph,pacific "$@" ./images/blob/...
