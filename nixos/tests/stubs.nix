# Stand-ins for the NixOS options and packages the module uses, for evaluating it offline with
# nixpkgs' lib alone (no nixpkgs, no NixOS). Shapes follow nixpkgs: systemd.services.<name>
# (description, wantedBy, after, wants, restartTriggers, script, serviceConfig),
# systemd.timers.<name> (wantedBy, timerConfig), containers.<name>
# (autoStart, privateNetwork, bindMounts.<path>.{hostPath, isReadOnly}, config),
# services.nats (enable, jetstream, settings), services.prometheus (enable, scrapeConfigs),
# assertions, environment.systemPackages, system.stateVersion.
{ lib, ... }:

let
  inherit (lib) mkOption types;
  freeform = types.submodule { freeformType = types.attrsOf types.anything; };
  # Derivations are plain attrsets here: what a test needs to see is their name and inputs.
  fakeDrv = name: attrs: { type = "derivation"; inherit name; outPath = "/nix/store/00000000000000000000000000000000-${name}"; } // attrs;
  pkgs = {
    formats.json = _: { type = types.attrsOf types.anything; };
    callPackage = _: _: fakeDrv "cim" { };
    runCommand = name: env: script: fakeDrv name { inherit env script; };
    writeShellScriptBin = name: text: fakeDrv name { inherit text; };
  };
in
{
  options = {
    assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };
    environment.systemPackages = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    system.stateVersion = mkOption { type = types.str; default = "25.05"; };
    systemd.services = mkOption { type = types.attrsOf freeform; default = { }; };
    systemd.timers = mkOption { type = types.attrsOf freeform; default = { }; };
    networking.hostName = mkOption { type = types.str; default = "nixos"; };
    services.nats = {
      enable = mkOption { type = types.bool; default = false; };
      serverName = mkOption { type = types.str; default = "nats"; };
      host = mkOption { type = types.str; default = "127.0.0.1"; };
      jetstream = mkOption { type = types.bool; default = false; };
      settings = mkOption { type = types.attrsOf types.anything; default = { }; };
    };
    services.prometheus = {
      enable = mkOption { type = types.bool; default = false; };
      scrapeConfigs = mkOption { type = types.listOf types.anything; default = [ ]; };
    };
    containers = mkOption {
      default = { };
      type = types.attrsOf (types.submodule {
        options = {
          autoStart = mkOption { type = types.bool; default = false; };
          privateNetwork = mkOption { type = types.bool; default = false; };
          bindMounts = mkOption {
            default = { };
            type = types.attrsOf (types.submodule {
              options = {
                hostPath = mkOption { type = types.nullOr types.str; default = null; };
                isReadOnly = mkOption { type = types.bool; default = true; };
              };
            });
          };
          config = mkOption { type = types.deferredModule; default = { }; };
        };
      });
    };
  };
  config._module.args.pkgs = pkgs;
}
