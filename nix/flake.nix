{
  description = "mdc: network-boot role images, the mdc-agent package, and a NixOS module to run mdc";

  inputs = {
    # The release the images are built from.
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";
    # Only for the Go toolchain: go.mod asks for Go 1.26, newer than the
    # release ships. Drop this input once the release has go_1_26.
    nixpkgs-go.url = "github:NixOS/nixpkgs/nixos-unstable";
  };

  outputs =
    {
      self,
      nixpkgs,
      nixpkgs-go,
    }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      roles = [
        "ceph-osd"
        "ipfs"
        "nats"
      ];
      version = self.shortRev or self.dirtyShortRev or "dev";

      # buildGoModule of the release, with a Go new enough for go.mod.
      buildGoModuleFor =
        pkgs: pkgs.buildGoModule.override { go = nixpkgs-go.legacyPackages.${pkgs.stdenv.hostPlatform.system}.go_1_26; };

      # One NixOS netboot system: the base image, plus a role's module.
      image =
        system: role:
        lib.nixosSystem {
          modules = [
            { nixpkgs.hostPlatform = system; }
            { nixpkgs.overlays = [ self.overlays.default ]; }
            self.nixosModules.netboot-base
          ]
          ++ lib.optional (role != null) (./roles + "/${role}.nix");
        };
    in
    {
      overlays.default = final: _prev: {
        mdc-agent = final.callPackage ./pkgs/mdc-agent.nix {
          inherit version;
          buildGoModule = buildGoModuleFor final;
        };
        mdc = final.callPackage ./pkgs/mdc.nix {
          inherit version;
          buildGoModule = buildGoModuleFor final;
        };
      };

      nixosModules = {
        # The closed base image every role builds on (also usable alone).
        netboot-base = ./modules/netboot-base.nix;
        # services.mdc, with the package from this flake.
        mdc =
          { pkgs, ... }:
          {
            imports = [ ./modules/mdc.nix ];
            services.mdc.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.mdc;
          };
        default = self.nixosModules.mdc;
      }
      // lib.genAttrs (map (r: "role-${r}") roles) (name: ./roles + "/${lib.removePrefix "role-" name}.nix");

      # x86_64 systems by name; `nix build .#netboot-<role>` builds per system.
      nixosConfigurations = {
        base = image "x86_64-linux" null;
      }
      // lib.genAttrs roles (role: image "x86_64-linux" role);

      packages = lib.genAttrs systems (
        system:
        let
          pkgs = import nixpkgs {
            inherit system;
            overlays = [ self.overlays.default ];
          };
        in
        {
          inherit (pkgs) mdc mdc-agent;
          default = pkgs.mdc;
          netboot-base = (image system null).config.system.build.mdcNetboot;
        }
        // lib.listToAttrs (
          map (role: {
            name = "netboot-${role}";
            value = (image system role).config.system.build.mdcNetboot;
          }) roles
        )
      );

      formatter = lib.genAttrs systems (system: nixpkgs.legacyPackages.${system}.nixfmt-rfc-style);
    };
}
