# The cim workspace built from Cargo.lock: the binaries `cim-storage` (crate cim-tiering) and
# `cim-gateway` (crate cim-gateway). Called as `pkgs.callPackage ./package.nix { }` by the
# NixOS module and by the flake.
{ lib, rustPlatform, ... }:

let
  root = ../.;
  workspace = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "cim";
  inherit (workspace.workspace.package) version;

  # Only what cargo reads: the workspace manifest and lock file, every member crate (cargo loads
  # all members, tests/ included, even when building two packages), and the files the crates
  # include_str!: docs/example.toml (policies: Config::example()) and nixos/durations.json
  # (policies: the duration examples shared with the module's duration type; maybeMissing so that
  # the source set also evaluates on a tree that does not have it yet).
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../policies
      ../tiering
      ../gateway
      ../tests
      ../docs/example.toml
      (lib.fileset.maybeMissing ../nixos/durations.json)
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The two binaries only; the test kit's helper binaries (crate cim-tests) are not installed.
  cargoBuildFlags = [ "-p" "cim-tiering" "-p" "cim-gateway" ];

  # The test suite starts real servers (a 3-node nats-server cluster, a leaf node, Garage) on
  # loopback and runs the roles as separate processes: it cannot run in the build sandbox, and it
  # runs in the project's CI (scripts/test.sh) instead. The NixOS VM test (nixos/tests/vm.nix)
  # exercises the built binaries end to end.
  doCheck = false;

  meta = {
    description = "Tiered storage for NATS JetStream object stores: leaf node, hub cluster, S3";
    license = lib.licenses.asl20;
    mainProgram = "cim-storage";
    platforms = lib.platforms.linux;
  };
}
