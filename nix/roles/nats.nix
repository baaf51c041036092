# Role nats: a nats-server that joins the cluster mdc names. The server
# configuration, routes and the node's user JWT come at join time from mdc,
# never from the image; the node's key is made on the node (nats-key.sh)
# and only its public half leaves it.
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

  systemd.services.mdc-nats-key = {
    description = "Make this node's NATS user key for mdc";
    wantedBy = [ "mdc-agent.service" ];
    before = [ "mdc-agent.service" ];
    path = with pkgs; [
      nkeys # nk
      jq
      coreutils
    ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
    };
    script = builtins.readFile ./nats-key.sh;
  };

  environment.systemPackages = [ pkgs.nats-server ];

  # clients, cluster routes; monitoring stays on 127.0.0.1
  networking.firewall.allowedTCPPorts = [
    4222
    6222
  ];
}
