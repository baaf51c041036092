# Role nats: a nats-server in the cluster mdc names, with JetStream.
# Server name and routes come at join time from mdc, never from the image.
{ pkgs, ... }:
{
  mdc.image.role = "nats";
  mdc.image.joinHook = pkgs.writeShellApplication {
    name = "mdc-join-nats";
    runtimeInputs = with pkgs; [
      nats-server
      jq
      coreutils
      systemd
    ];
    text = builtins.readFile ./nats-join.sh;
  };

  environment.systemPackages = [ pkgs.nats-server ];

  # clients, cluster routes, monitoring
  networking.firewall.allowedTCPPorts = [
    4222
    6222
    8222
  ];
}
