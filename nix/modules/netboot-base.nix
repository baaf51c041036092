# The base of every mdc role image: NixOS netboot with root on tmpfs, the
# Nix store read-only inside the initrd, no ssh, no Nix, no way to change the
# system at run time. Everything per machine (its id, a token minted for
# this boot, the role's keys) arrives at boot, from mdc, on the kernel
# command line and through the agent; nothing per machine is built in.
{
  config,
  lib,
  pkgs,
  modulesPath,
  ...
}:
let
  cfg = config.mdc.image;
in
{
  imports = [
    "${modulesPath}/installer/netboot/netboot.nix"
    "${modulesPath}/profiles/minimal.nix"
    ./netboot-dir.nix
  ];

  options.mdc.image = {
    role = lib.mkOption {
      type = lib.types.strMatching "[a-z][a-z0-9-]*";
      default = "base";
      description = "The mdc role this image boots into; recorded in /etc/mdc/role and in the image metadata.";
    };
    joinHook = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = null;
      description = ''
        Program the agent runs to join the role's cluster, installed as
        /etc/mdc/join. It gets the role configuration from mdc as a JSON file
        (first argument, also MDC_ROLE_CONFIG), kept under /run (tmpfs);
        exit status 0 means joined.
      '';
    };
    agentPackage = lib.mkOption {
      type = lib.types.package;
      default = pkgs.mdc-agent;
      defaultText = lib.literalExpression "pkgs.mdc-agent";
      description = "The mdc-agent package.";
    };
  };

  config = {
    # No package manager at run time: no Nix, no nixos-rebuild, no channels.
    nix.enable = false;
    system.disableInstallerTools = true;
    # netboot.nix registers the store in Nix's database at boot, which would
    # pull Nix into the image; there is no Nix to use that database.
    boot.postBootCommands = lib.mkForce "";

    # No remote logins; the agent is the only way in, and it only reports.
    services.openssh.enable = lib.mkForce false;
    users.mutableUsers = false;
    users.users.root.hashedPassword = "!";
    # Nobody logs in, by design; NixOS would otherwise refuse the config.
    users.allowNoPasswordLogin = true;
    security.sudo.enable = false;

    # mdc's boot tests watch the serial console.
    boot.kernelParams = [
      "console=tty0"
      "console=ttyS0,115200"
      "panic=30"
    ];

    networking.hostName = ""; # from DHCP
    networking.useNetworkd = true;
    networking.useDHCP = true;
    networking.firewall.enable = lib.mkDefault true;

    environment.etc."mdc/role".text = cfg.role + "\n";
    environment.etc."mdc/join" = lib.mkIf (cfg.joinHook != null) {
      source = lib.getExe cfg.joinHook;
      mode = "0555";
    };

    # The agent: reads mdc.url, mdc.machine, mdc.token and mdc.mode from
    # /proc/cmdline (mdc adds them at boot), reports facts, checks in,
    # fetches the role configuration and runs /etc/mdc/join.
    systemd.services.mdc-agent = {
      description = "mdc node agent";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # Booted without mdc (e.g. by hand in QEMU): nothing to talk to.
      unitConfig.ConditionKernelCommandLine = "mdc.url";
      # Tools the agent reads facts with and the join hooks expect.
      path = with pkgs; [
        coreutils
        util-linux
        iproute2
        ethtool
        pciutils
        dmidecode
        smartmontools
        nvme-cli
        systemd
        jq
      ];
      environment = {
        MDC_JOIN_HOOK = "/etc/mdc/join";
        MDC_RUN_DIR = "/run/mdc";
      };
      serviceConfig = {
        ExecStart = lib.getExe cfg.agentPackage;
        Restart = "on-failure";
        RestartSec = "5s";
        # Role configuration (keys, swarm secrets) lives here, in RAM only.
        RuntimeDirectory = "mdc";
        RuntimeDirectoryMode = "0700";
        # Kept across the agent's restarts: report.json, made once per boot
        # before the agent (mdc-nats-key), must outlive a crash of it.
        RuntimeDirectoryPreserve = "restart";
      };
    };

    # Every machine gets NATS credentials of its own from mdc: its user
    # nkey is made here, the seed stays on the node, and the agent reports
    # the public key (/run/mdc/report.json) with its configuration request.
    systemd.services.mdc-nats-key = {
      description = "Make this node's NATS user key for mdc";
      wantedBy = [ "mdc-agent.service" ];
      before = [ "mdc-agent.service" ];
      unitConfig.ConditionKernelCommandLine = "mdc.url";
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

    systemd.network.wait-online.anyInterface = true;

    documentation.enable = false;
    system.stateVersion = lib.mkDefault "25.05";
  };
}
