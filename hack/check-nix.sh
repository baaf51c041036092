#!/usr/bin/env bash
# check-nix.sh: the offline checks of the flake in nix/ (make test runs it).
# Nix cannot build NixOS here (no nixpkgs, no network), so this checks what
# can be checked without them:
#   - every .nix file parses (nix-instantiate --parse, Debian's nix-bin);
#   - the flake's shape: pinned inputs, the outputs function's arguments,
#     every module and package file is a function;
#   - every shell script under nix/ (the role join hooks) passes bash -n
#     and shellcheck, as writeShellApplication will demand at build time.
# Nix runs against a dummy store with config and state in a temp dir: it
# touches nothing on the host (no /nix, no ~/.cache/nix).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in nix-instantiate shellcheck; do
	if ! command -v "$tool" >/dev/null; then
		echo "check-nix: $tool not found; install the packages in hack/deps/nix.txt: hack/install-deps.sh nix" >&2
		exit 1
	fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/conf" "$tmp/state" "$tmp/home" "$tmp/cache"
printf 'experimental-features = nix-command\nbuild-users-group =\n' >"$tmp/conf/nix.conf"
export NIX_CONF_DIR=$tmp/conf NIX_STATE_DIR=$tmp/state HOME=$tmp/home XDG_CACHE_HOME=$tmp/cache NIX_PATH=
nixi() { nix-instantiate --store dummy:// "$@"; }

fail=0
mapfile -t files < <(find nix -name '*.nix' | sort)
if [ "${#files[@]}" -eq 0 ]; then
	echo "check-nix: no .nix files under nix/" >&2
	exit 1
fi
for f in "${files[@]}"; do
	if nixi --parse "$f" >/dev/null 2>"$tmp/err"; then
		echo "check-nix: parse ok  $f"
	else
		echo "check-nix: parse FAILED  $f" >&2
		cat "$tmp/err" >&2
		fail=1
	fi
done
[ "$fail" -eq 0 ] || exit 1

# The flake's shape, evaluated without nixpkgs.
shape='
let
  flake = import ./nix/flake.nix;
  isFn = f: builtins.isFunction (import f);
  modules = [ ./nix/modules/netboot-base.nix ./nix/modules/netboot-dir.nix ./nix/modules/mdc.nix
              ./nix/roles/ceph-osd.nix ./nix/roles/ipfs.nix ./nix/roles/nats.nix
              ./nix/pkgs/mdc-agent.nix ./nix/pkgs/mdc.nix ./nix/pkgs/source.nix ];
  vendorHash = import ./nix/pkgs/vendor-hash.nix;
  checks = {
    "nixpkgs is pinned to the nixos-25.05 release branch" = flake.inputs.nixpkgs.url == "github:NixOS/nixpkgs/nixos-25.05";
    "outputs takes self, nixpkgs, nixpkgs-go" = builtins.attrNames (builtins.functionArgs flake.outputs) == [ "nixpkgs" "nixpkgs-go" "self" ];
    "every module and package file is a function" = builtins.all isFn modules;
    "vendorHash is an SRI sha256" = builtins.match "sha256-[A-Za-z0-9+/]{43}=" vendorHash != null;
  };
  failed = builtins.filter (name: !checks.${name}) (builtins.attrNames checks);
in
  if failed == [ ] then builtins.attrNames checks else throw "failed: ${builtins.concatStringsSep "; " failed}"
'
if out=$(nixi --eval --strict --json -E "$shape" 2>"$tmp/err"); then
	echo "check-nix: flake shape ok: $out"
else
	echo "check-nix: flake shape FAILED" >&2
	cat "$tmp/err" >&2
	exit 1
fi

mapfile -t scripts < <({ find nix -name '*.sh'; ls roles/*/join.sh; } | sort)
for s in "${scripts[@]}"; do
	if bash -n "$s" && shellcheck --shell=bash "$s"; then
		echo "check-nix: shell ok  $s"
	else
		echo "check-nix: shell FAILED  $s" >&2
		fail=1
	fi
done
exit "$fail"
