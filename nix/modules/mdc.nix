# services.mdc: run the mdc server (`mdc serve`) on NixOS.
# Secrets are passed only as file paths (never inline: the Nix store is
# world-readable); systemd hands them to mdc as credentials, so the files
# can stay root-only.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.mdc;
  inherit (lib) mkOption types;
  optStr =
    description:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      inherit description;
    };
  secretFile =
    description:
    mkOption {
      # A string, not a path: a path literal would be copied into the store.
      type = types.nullOr (types.strMatching "/.+");
      default = null;
      example = "/run/secrets/mdc-netbox-token";
      description = description + " Read through systemd's LoadCredential, so it may be readable by root only.";
    };
  port = addr: lib.toInt (lib.last (lib.splitString ":" addr));

  settingsFormat = pkgs.formats.yaml { };
  configFile = settingsFormat.generate "mdc.yaml" cfg.settings;
  # Keys that hold secrets; mdc takes them only from files.
  secretKeys = [
    "token"
    "admin-token"
    "netbox-token"
    "nats-seed"
    "bmc-password"
  ];

  flag = name: value: lib.optionals (value != null) [ "--${name}=${toString value}" ];
  args =
    [ "serve" ]
    ++ flag "config" (if cfg.settings == { } then null else configFile)
    ++ flag "data-dir" cfg.dataDir
    ++ flag "http-addr" cfg.httpAddr
    ++ flag "advertise-addr" cfg.advertiseAddr
    ++ flag "interface" cfg.interface
    ++ flag "dhcp-mode" cfg.dhcpMode
    ++ flag "dhcp-range" cfg.dhcpRange
    ++ flag "dhcp-router" cfg.dhcpRouter
    ++ flag "dhcp-dns" (if cfg.dhcpDNS == [ ] then null else lib.concatStringsSep "," cfg.dhcpDNS)
    ++ flag "dhcp-lease-time" cfg.dhcpLeaseTime
    ++ flag "tftp-addr" cfg.tftpAddr
    ++ flag "ipxe-dir" cfg.ipxeDir
    ++ flag "uefi-bootfile" cfg.uefiBootfile
    ++ flag "nats-url" cfg.natsURL
    ++ flag "nats-creds" (if cfg.natsCredsFile == null then null else "%d/nats-creds")
    ++ flag "nats-listen" cfg.natsListen
    ++ flag "netbox-url" cfg.netboxURL
    ++ flag "netbox-token-file" (if cfg.netboxTokenFile == null then null else "%d/netbox-token")
    ++ flag "log-level" cfg.logLevel
    ++ cfg.extraArgs;
in
{
  options.services.mdc = {
    enable = lib.mkEnableOption "mdc, bare-metal provisioning for a micro data center";

    package = mkOption {
      type = types.package;
      description = "The mdc package (the flake's nixosModules.mdc sets it to its own build).";
    };

    dataDir = mkOption {
      type = types.str;
      default = "/var/lib/mdc";
      description = "Event log, blobs, tokens (mode 0700, owned by the mdc user).";
    };

    httpAddr = mkOption {
      type = types.str;
      default = ":8080";
      description = "HTTP listen address: boot scripts, blobs, API, dashboard, metrics.";
    };
    advertiseAddr = optStr "IP address machines reach mdc at (default: mdc picks the interface's address).";
    interface = optStr "Network interface facing the machines; DHCP and TFTP bind to it.";

    dhcpMode = mkOption {
      type = types.nullOr (
        types.enum [
          "off"
          "proxy"
          "full"
        ]
      );
      default = null;
      description = "proxy: answer PXE only, next to an existing DHCP server; full: hand out leases from dhcpRange; null: mdc's default.";
    };
    dhcpRange = optStr "Lease range START-END for dhcpMode full, e.g. 10.0.0.100-10.0.0.199.";
    dhcpRouter = optStr "Router handed out in full mode.";
    dhcpDNS = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "DNS servers handed out in full mode.";
    };
    dhcpLeaseTime = optStr "Lease time in full mode, e.g. 1h.";

    tftpAddr = optStr "TFTP listen address (default: mdc's).";
    ipxeDir = optStr "Directory with the iPXE binaries (default: mdc's).";
    uefiBootfile = optStr "iPXE binary name for UEFI clients.";

    natsURL = optStr "An existing NATS cluster for the event log (default: embedded nats-server).";
    natsCredsFile = secretFile "NATS credentials file for natsURL.";
    natsListen = optStr "Address the embedded nats-server listens on, for other mdc instances.";

    netboxURL = optStr "NetBox to keep the inventory in (default: embedded inventory).";
    netboxTokenFile = secretFile "File holding the NetBox API token.";

    logLevel = mkOption {
      type = types.nullOr (
        types.enum [
          "debug"
          "info"
          "warn"
          "error"
        ]
      );
      default = null;
      description = "Log level (default: mdc's).";
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = {
        nix-trusted-key = [ "mdc-images-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
        require-signed = true;
      };
      description = ''
        Further mdc configuration, written to a YAML file in the Nix store
        and passed with --config (flags above win). World-readable: secrets
        have no place here, only paths to them.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Further arguments to mdc serve.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open HTTP, TFTP (69/udp) and, unless dhcpMode is off, DHCP (67/udp, 4011/udp for proxy PXE).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = !(lib.any (k: cfg.settings ? ${k}) secretKeys);
        message = "services.mdc.settings holds a secret (${lib.concatStringsSep ", " secretKeys}): the Nix store is world-readable; use the *File options.";
      }
      {
        assertion = cfg.dhcpMode != "full" || cfg.dhcpRange != null;
        message = "services.mdc.dhcpMode = \"full\" needs services.mdc.dhcpRange.";
      }
    ];

    environment.systemPackages = [ cfg.package ]; # the CLI, for operators

    # A fixed user rather than DynamicUser: the data directory (event log,
    # blobs, tokens) must stay owned by mdc across upgrades and moves.
    users.users.mdc = {
      isSystemUser = true;
      group = "mdc";
      home = cfg.dataDir;
    };
    users.groups.mdc = { };
    systemd.tmpfiles.rules = lib.mkIf (cfg.dataDir != "/var/lib/mdc") [
      "d ${cfg.dataDir} 0700 mdc mdc - -"
    ];

    systemd.services.mdc = {
      description = "mdc provisioning server";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      serviceConfig = {
        ExecStart = "${lib.getExe cfg.package} ${lib.escapeShellArgs args}";
        Restart = "on-failure";
        RestartSec = "5s";
        User = "mdc";
        Group = "mdc";
        StateDirectory = lib.mkIf (cfg.dataDir == "/var/lib/mdc") "mdc";
        StateDirectoryMode = "0700";
        ReadWritePaths = [ cfg.dataDir ];
        LoadCredential =
          lib.optional (cfg.netboxTokenFile != null) "netbox-token:${cfg.netboxTokenFile}"
          ++ lib.optional (cfg.natsCredsFile != null) "nats-creds:${cfg.natsCredsFile}";
        # DHCP and TFTP: low ports, raw sockets, binding to one interface.
        AmbientCapabilities = [
          "CAP_NET_BIND_SERVICE"
          "CAP_NET_RAW"
        ];
        CapabilityBoundingSet = [
          "CAP_NET_BIND_SERVICE"
          "CAP_NET_RAW"
        ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
          "AF_NETLINK"
          "AF_PACKET"
        ];
        RestrictNamespaces = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        UMask = "0077";
      };
    };

    networking.firewall = lib.mkIf cfg.openFirewall {
      allowedTCPPorts = [ (port cfg.httpAddr) ];
      allowedUDPPorts = [
        69
      ]
      ++ lib.optionals (cfg.dhcpMode != "off") [
        67
        4011
      ];
    };
  };
}
