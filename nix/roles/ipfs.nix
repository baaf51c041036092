# Role ipfs: a kubo node in the private swarm mdc names. The swarm key and
# the bootstrap peers come at join time from mdc, never from the image.
{ pkgs, ... }:
{
  mdc.image.role = "ipfs";
  mdc.image.joinHook = pkgs.writeShellApplication {
    name = "mdc-join-ipfs";
    runtimeInputs = with pkgs; [
      kubo
      jq
      curl
      iproute2
      coreutils
      util-linux # setsid
    ];
    # The hook the tests run against real kubo daemons (roles/ipfs).
    text = builtins.readFile ../../roles/ipfs/join.sh;
  };

  environment.systemPackages = [ pkgs.kubo ];

  networking.firewall.allowedTCPPorts = [ 4001 ];
  networking.firewall.allowedUDPPorts = [ 4001 ];
}
