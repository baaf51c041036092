# system.build.mdcNetboot: the directory `mdc images import` reads.
#
#   bzImage                     the kernel (Image on aarch64), as netboot.ipxe names it
#   initrd                      NixOS stage 1 plus the squashfs'd store
#   netboot.ipxe                NixOS's netboot script: its kernel line gives
#                               init= and the kernel parameters
#   nix-support/mdc-image.json  the same facts for programs, plus role and system
#
# The files are copied, not linked, and the output may reference no other
# store path: so the output's NAR holds every byte mdc serves, and one
# .narinfo signature covers the whole image (docs/nix.md).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  kernelFile = pkgs.stdenv.hostPlatform.linux-kernel.target;
  # The image is self-contained (the system is inside the initrd), so the
  # path of init is a name to boot, not a dependency of this output.
  init = builtins.unsafeDiscardStringContext "${config.system.build.toplevel}/init";
  params = [
    "init=${init}"
    "initrd=initrd"
  ]
  ++ config.boot.kernelParams;
  # The same script netboot.nix writes; ${cmdline} is for iPXE.
  ipxe = ''
    #!ipxe
    # Use the cmdline variable to allow the user to specify custom kernel params
    # when chainloading this script from other iPXE scripts like netboot.xyz
    kernel ${kernelFile} ${lib.concatStringsSep " " params} ''${cmdline}
    initrd initrd
    boot
  '';
  imageMeta = {
    format = 1;
    name = "${config.mdc.image.role}-${config.system.nixos.label}";
    role = config.mdc.image.role;
    system = pkgs.stdenv.hostPlatform.system;
    nixos = config.system.nixos.label;
    kernel = kernelFile;
    initrd = "initrd";
    inherit init;
    cmdline = lib.concatStringsSep " " params;
  };
in
{
  system.build.mdcNetboot =
    pkgs.runCommand "netboot-${config.mdc.image.role}"
      {
        # Not "meta": mkDerivation keeps that name for package metadata.
        passAsFile = [
          "netbootIpxe"
          "mdcImageJson"
        ];
        netbootIpxe = ipxe;
        mdcImageJson = builtins.toJSON imageMeta;
        allowedReferences = [ ];
      }
      ''
        mkdir -p $out/nix-support
        cp ${config.system.build.kernel}/${config.system.boot.loader.kernelFile} $out/${kernelFile}
        cp ${config.system.build.netbootRamdisk}/initrd $out/initrd
        cp "$netbootIpxePath" $out/netboot.ipxe
        cp "$mdcImageJsonPath" $out/nix-support/mdc-image.json
        chmod 0444 $out/${kernelFile} $out/initrd $out/netboot.ipxe $out/nix-support/mdc-image.json
      '';
}
