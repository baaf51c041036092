# mdc-agent: the static binary that runs on booted nodes (cmd/mdc-agent).
# buildGoModule must come with a Go at least as new as go.mod's `go` line
# (the flake passes one).
{
  lib,
  buildGoModule,
  version ? "dev",
}:
buildGoModule {
  pname = "mdc-agent";
  inherit version;
  src = import ./source.nix { inherit lib; };
  vendorHash = import ./vendor-hash.nix;
  subPackages = [ "cmd/mdc-agent" ];
  # Static: the agent must run in any image, including the Debian test image.
  env.CGO_ENABLED = 0;
  ldflags = [
    "-s"
    "-w"
    "-X main.version=${version}"
  ];
  # The tests need root, QEMU and network namespaces: make test runs them.
  doCheck = false;
  meta = {
    description = "mdc node agent: facts, check-in, role config, join";
    mainProgram = "mdc-agent";
    platforms = lib.platforms.linux;
  };
}
