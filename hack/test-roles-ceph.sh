#!/usr/bin/env bash
# test-roles-ceph.sh: run the ceph-osd role's tests (roles/ceph, -tags
# ceph,pacific) against a real throwaway single-host Ceph from
# ../shared/ceph/ceph-up.sh, in which the real ceph-osd creates and starts an
# OSD from what the role serves; always tears the cluster down again. Extra
# arguments go to go test.
#
#   hack/test-roles-ceph.sh               go test -tags ceph,pacific ./roles/ceph/...
#   hack/test-roles-ceph.sh -run Wrong -v
set -euo pipefail
cd "$(dirname "$0")/.."
ceph_dir=${CEPH_SHARED_DIR:-$(cd .. && pwd)/shared/ceph}
if [ ! -x "$ceph_dir/ceph-up.sh" ]; then
	echo "test-roles-ceph: $ceph_dir/ceph-up.sh not found; shared/ must sit beside the checkout (or set CEPH_SHARED_DIR)" >&2
	exit 2
fi
for bin in ceph-mon ceph-mgr ceph-osd ceph; do
	command -v "$bin" >/dev/null || { echo "test-roles-ceph: $bin missing; run hack/install-deps.sh roles-ceph" >&2; exit 2; }
done
[ -f /usr/include/rados/librados.h ] || { echo "test-roles-ceph: librados-dev missing; run hack/install-deps.sh roles-ceph" >&2; exit 2; }

# Our own directory and ports (hack/test-ceph.sh uses /tmp/mdc-ceph-test and
# 3310/6799), so both can run at once. Retire needs the mgr (safe-to-destroy,
# purge), so wait until it is active and the PGs are clean.
export CEPH_TEST_DIR=${CEPH_TEST_DIR:-/tmp/mdc-roles-ceph-test}
export CEPH_MON_V2_PORT=${CEPH_MON_V2_PORT:-3320} CEPH_MON_V1_PORT=${CEPH_MON_V1_PORT:-6798}
export CEPH_WAIT_HEALTH_OK=${CEPH_WAIT_HEALTH_OK:-1}
trap '"$ceph_dir/ceph-down.sh" >&2 || true' EXIT
eval "$("$ceph_dir/ceph-up.sh")"
go test -count=1 -timeout 5m -tags ceph,pacific "$@" ./roles/ceph/...
