{
  description = "cim: tiered storage for NATS JetStream object stores (leaf node, hub cluster, S3)";

  # No flake.lock is committed: it cannot be generated offline, where this project is developed.
  # The first `nix flake lock` (or any `nix build`/`nix flake check` on this flake) creates it;
  # commit it then to pin nixpkgs.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      # f receives each system's name and package set.
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
      # The same expression the NixOS module uses for its default package.
      cimPackage = pkgs: pkgs.callPackage ./nixos/package.nix { };
    in
    {
      packages = forAllSystems (_system: pkgs: rec {
        cim = cimPackage pkgs;
        default = cim;
      });

      # `pkgs.cim-storage`, for configurations that take nixpkgs with overlays.
      overlays.default = final: _prev: {
        cim-storage = cimPackage final;
      };

      # A path (not an imported module), so the flake-evaluation test can compare it with the
      # module the contract test exercises.
      nixosModules.default = ./nixos/module.nix;

      devShells = forAllSystems (_system: pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            # The end-to-end tests' servers (scripts/install-tools.sh pins the versions it
            # installs elsewhere: nats-server 2.15.1, Garage 2.5.0).
            nats-server
            garage
            natscli
            # scripts/nix-checks.sh
            nixpkgs-fmt
            deadnix
            # The documented hand-restore procedure (docs/s3-format.md) and its test.
            awscli2
            zstd
            jq
          ];
        };
      });

      formatter = forAllSystems (_system: pkgs: pkgs.nixpkgs-fmt);

      checks = forAllSystems (system: pkgs: {
        package = self.packages.${system}.default;
        # Needs KVM: `nix build .#checks.x86_64-linux.vm -L`.
        vm = import ./nixos/tests/vm.nix { inherit pkgs self; };
      });
    };
}
