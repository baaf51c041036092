# mdc: the provisioning server and CLI (cmd/mdc), for services.mdc.
{
  lib,
  buildGoModule,
  version ? "dev",
}:
buildGoModule {
  pname = "mdc";
  inherit version;
  src = import ./source.nix { inherit lib; };
  vendorHash = import ./vendor-hash.nix;
  subPackages = [ "cmd/mdc" ];
  env.CGO_ENABLED = 0;
  ldflags = [
    "-s"
    "-w"
    "-X main.version=${version}"
  ];
  doCheck = false;
  meta = {
    description = "mdc: bare-metal provisioning for micro data centers";
    mainProgram = "mdc";
    platforms = lib.platforms.linux;
  };
}
