# Sets the module's options from a TOML configuration file (by default docs/example.toml),
# key by key, so that every key the file documents must exist as an option: a key added to the
# schema (and to docs/example.toml) but not to the module fails this evaluation, naming it.
# Returns the module's rendered operator configuration; tests/tests/nixos.rs checks that `cim`
# reads it back as the same configuration as the TOML file.
{ lib, file ? ../../docs/example.toml }:

let
  toml = builtins.fromTOML (builtins.readFile file);
  # snake_case (file) → camelCase (options): force_path_style → forcePathStyle.
  camel = key:
    let parts = lib.splitString "_" key;
    in lib.concatStrings ([ (builtins.head parts) ] ++ map
      (p: lib.toUpper (builtins.substring 0 1 p) + builtins.substring 1 (-1) p)
      (builtins.tail parts));
  byOptionNames = lib.mapAttrs' (k: v: lib.nameValuePair (camel k) v);
  nats = toml.nats;
  options = {
    services.cim-storage = {
      enable = true;
      nats = byOptionNames (builtins.removeAttrs nats [ "credentials_file" ]);
      operator.natsCredentialsFile = nats.credentials_file or null;
      tiers = lib.mapAttrs (_: byOptionNames) (toml.tiers or { });
      policies = lib.listToAttrs (map (p: lib.nameValuePair p.name (builtins.removeAttrs p [ "name" ])) (toml.policy or [ ]));
      settings = builtins.removeAttrs toml [ "nats" "tiers" "policy" ];
    };
  };
  evaluated = lib.evalModules { modules = [ ./stubs.nix ../module.nix options ]; };
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) evaluated.config.assertions);
  operator = evaluated.config.services.cim-storage.renderedConfigs.operator;
}
