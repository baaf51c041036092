# Role nats: a nats-server that joins the cluster mdc names. The server
# configuration, routes and the node's user JWT come at join time from mdc,
# never from the image; the node's key is made on the node (every image's
# mdc-nats-key.service) and only its public half leaves it.
{ pkgs, ... }:
{
  mdc.image.role = "nats";
  mdc.image.joinHook = pkgs.writeShellApplication {
    name = "mdc-join-nats";
    runtimeInputs = with pkgs; [
      nats-server
      jq
      curl
      coreutils
      util-linux # setsid
    ];
    # The hook the tests run against a real nats-server (cmd/mdc).
    text = builtins.readFile ../../roles/nats/join.sh;
  };

  environment.systemPackages = [ pkgs.nats-server ];

  # clients, cluster routes; monitoring stays on 127.0.0.1
  networking.firewall.allowedTCPPorts = [
    4222
    6222
  ];
}
