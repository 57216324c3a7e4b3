# The VM test's cim nodes (./vm.nix), evaluated through the module over the stand-ins of
# ./stubs.nix: the VM test cannot run without KVM, but its use of services.cim-storage is checked
# on every run (tests/tests/nixos.rs renders and checks these configurations). Options the VM
# test sets that only NixOS knows (Garage, VM sizes, firewall, /etc) are accepted here unchecked.
{ lib }:

let
  fake = name: { type = "derivation"; inherit name; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
  vmTest = import ./vm.nix {
    pkgs = {
      inherit lib;
      natscli = fake "natscli";
      garage_2 = fake "garage";
      # The test's arguments, as runNixOSTest receives them.
      testers.runNixOSTest = args: args;
    };
    self.nixosModules.default = ../module.nix;
  };
  # What the VM test sets outside the module and the stand-ins.
  nixosOnly = { lib, ... }: {
    options = {
      environment.etc = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      networking.firewall = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      services.garage = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      virtualisation = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
    };
  };
  node = name: (lib.evalModules {
    modules = [ ./stubs.nix nixosOnly vmTest.defaults vmTest.nodes.${name} { networking.hostName = name; } ];
  }).config;
  summary = name:
    let config = node name;
    in {
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      inherit (config.services.cim-storage) renderedConfigs;
      services = builtins.attrNames config.systemd.services;
      nats = config.services.nats.settings;
    };
in
lib.genAttrs [ "leaf" "hub1" "hub2" ] summary
