# Role ceph-osd: the node's data disks become OSDs of the cluster mdc names.
# The cluster's fsid, monitors and each OSD's own key come at join time from
# mdc (role configuration), never from the image.
{ config, pkgs, ... }:
{
  mdc.image.role = "ceph-osd";
  mdc.image.joinHook = pkgs.writeShellApplication {
    name = "mdc-join-ceph-osd";
    runtimeInputs = with pkgs; [
      ceph
      jq
      coreutils
      gnused
      util-linux # blkid, setsid
    ];
    # The hook the tests run against a real Ceph cluster (roles/ceph).
    text = builtins.readFile ../../roles/ceph/join.sh;
  };

  environment.systemPackages = [
    pkgs.ceph
    pkgs.lvm2
  ];
  services.lvm.enable = true;
  boot.initrd.kernelModules = [ "dm-mod" ];

  # Fixed ids: OSD data on disk is owned by ceph and outlives the image.
  users.users.ceph = {
    isSystemUser = true;
    uid = config.ids.uids.ceph;
    group = "ceph";
    home = "/var/lib/ceph";
  };
  users.groups.ceph.gid = config.ids.gids.ceph;

  networking.firewall.allowedTCPPortRanges = [
    {
      from = 6800;
      to = 7300;
    }
  ];
}
