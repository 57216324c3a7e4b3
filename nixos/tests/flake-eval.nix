# Evaluates the flake's outputs with stand-in inputs, offline and without nixpkgs: nixpkgs' lib
# is real, its package sets are small stand-ins (derivations as plain attrsets that keep their
# arguments). Run by scripts/nix-checks.sh:
#   nix-instantiate --eval --strict --json --readonly-mode nixos/tests/flake-eval.nix \
#     --arg nixpkgsLib /path/to/nixpkgs/lib
# Returns the checks that hold, and the VM test's Python script (nix-checks.sh compiles it);
# throws naming every check that does not hold.
{ nixpkgsLib }:

let
  lib = import nixpkgsLib;
  systems = [ "x86_64-linux" "aarch64-linux" ];

  # A derivation stand-in: enough for `nix flake check`-style shape checks, and it keeps what it
  # was built from.
  stubDrv = name: extra: { type = "derivation"; inherit name; outPath = "/stub/${name}"; } // extra;

  # The tools the devShell should offer (nixpkgs attribute names).
  shellTools = [
    "cargo"
    "rustc"
    "clippy"
    "rustfmt"
    "nats-server"
    "garage"
    "nixpkgs-fmt"
    "deadnix"
    "awscli2"
    "zstd"
    "jq"
  ];

  pkgsFor = system: lib.fix (pkgs:
    lib.genAttrs (shellTools ++ [ "natscli" "garage_2" "installShellFiles" ]) (n: stubDrv n { })
    // {
      inherit lib system;
      stdenv.hostPlatform.system = system;
      callPackage = lib.callPackageWith pkgs;
      rustPlatform.buildRustPackage = args: stubDrv "${args.pname}-${args.version}" { inherit args; };
      mkShell = args: stubDrv "shell" { inherit args; };
      testers.runNixOSTest = test: stubDrv "vm-test-${test.name}" { inherit test; };
    });

  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs systems pkgsFor;
  };

  # `self` is the outputs themselves (plus what Nix adds to a flake's self), as Nix passes it.
  outputs = (import ../../flake.nix).outputs { inherit self nixpkgs; };
  self = outputs // { outPath = ../..; };

  sys = "x86_64-linux";
  package = outputs.packages.${sys}.default;
  shellPackages = map (p: p.name) outputs.devShells.${sys}.default.args.packages;
  overlaid = outputs.overlays.default nixpkgs.legacyPackages.${sys} { };
  vm = outputs.checks.${sys}.vm.test;

  checks = [
    {
      what = "nixosModules.default is nixos/module.nix (the module the contract test evaluates)";
      ok = outputs.nixosModules.default == ../module.nix;
    }
    {
      what = "packages.<system>.{default,cim} for x86_64-linux and aarch64-linux";
      ok = lib.all (s: outputs.packages.${s} ? default && outputs.packages.${s} ? cim) systems;
    }
    {
      what = "packages.default builds nixos/package.nix: cim, version from Cargo.toml";
      ok = package.args.pname == "cim"
        && package.args.version == (lib.importTOML ../../Cargo.toml).workspace.package.version;
    }
    {
      what = "packages.default builds only cim-tiering and cim-gateway, from Cargo.lock, no check";
      ok = package.args.cargoBuildFlags == [ "-p" "cim-tiering" "-p" "cim-gateway" ]
        && package.args.cargoLock.lockFile == ../../Cargo.lock
        && !package.args.doCheck;
    }
    {
      what = "packages.default: meta (description, license, mainProgram cim-storage)";
      ok = package.args.meta.mainProgram == "cim-storage"
        && package.args.meta.license.spdxId == "Apache-2.0"
        && package.args.meta.description != "";
    }
    {
      what = "overlays.default adds pkgs.cim-storage, the same package";
      ok = overlaid.cim-storage.name == package.name;
    }
    {
      what = "formatter.<system> is nixpkgs-fmt";
      ok = lib.all (s: outputs.formatter.${s}.name == "nixpkgs-fmt") systems;
    }
    {
      what = "devShells.<system>.default offers ${lib.concatStringsSep ", " shellTools}";
      ok = lib.all (s: outputs.devShells.${s} ? default) systems
        && lib.all (t: lib.elem t shellPackages) shellTools;
    }
    {
      what = "checks.<system>.package is packages.<system>.default";
      ok = lib.all (s: outputs.checks.${s}.package.name == outputs.packages.${s}.default.name) systems;
    }
    {
      what = "checks.<system>.vm is the VM test: nodes leaf, hub1..hub3, s3 and a test script";
      ok = lib.attrNames vm.nodes == [ "hub1" "hub2" "hub3" "leaf" "s3" ]
        && lib.isString vm.testScript;
    }
  ];

  failed = lib.filter (c: !c.ok) checks;
in
if failed == [ ]
then {
  checks = map (c: c.what) checks;
  vmTestScript = vm.testScript;
}
else throw "flake outputs: ${toString (lib.length failed)} check(s) failed:\n  ${lib.concatMapStringsSep "\n  " (c: c.what) failed}"
