# The hash of the Go module dependencies (buildGoModule's vendorHash), shared
# by mdc and mdc-agent. It cannot be computed offline. After go.mod or go.sum
# change, build once: Nix stops with "hash mismatch ... got: sha256-...";
# put that value here (see docs/nix.md).
"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
