# Evaluates the module with a host configuration (`example`, plus `extra`) over the stand-ins
# in ./stubs.nix and returns what a test checks: failed assertions, the rendered configuration
# of every role, the secrets each role and container receives, units, containers, NATS and
# Prometheus settings. Run by tests/tests/nixos.rs:
#   nix-instantiate --eval --strict --json nixos/tests/contract.nix \
#     --arg lib 'import /path/to/nixpkgs/lib' --arg example ./nixos/examples/hub.nix
{ lib, example, extra ? { } }:

let
  evaluate = modules: lib.evalModules { modules = [ ./stubs.nix ] ++ modules; };
  host = (evaluate [ ../module.nix example extra ]).config;
  cim = host.services.cim-storage;
  # A container's own system, evaluated like the host.
  inside = c: (evaluate [ c.config ]).config;
  service = s: {
    restartTriggers = s.restartTriggers or [ ];
    execStart = s.serviceConfig.ExecStart or s.script;
    loadCredential = s.serviceConfig.LoadCredential;
    dynamicUser = s.serviceConfig.DynamicUser;
  };
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) host.assertions);
  renderedConfigs = cim.renderedConfigs;
  roleSecrets = cim.roleSecrets;
  hostServices = lib.mapAttrs (_: service) (lib.filterAttrs (n: _: lib.hasPrefix "cim-" n) host.systemd.services);
  containers = lib.mapAttrs
    (_: c: {
      inherit (c) autoStart privateNetwork;
      bindMounts = lib.mapAttrs (_: m: { inherit (m) hostPath isReadOnly; }) c.bindMounts;
      services = lib.mapAttrs (_: service) (inside c).systemd.services;
      timers = lib.mapAttrs (_: t: t.timerConfig) (inside c).systemd.timers;
    })
    host.containers;
  nats = host.services.nats;
  scrapeTargets = map (j: { inherit (j) job_name; targets = lib.concatMap (s: s.targets) j.static_configs; }) host.services.prometheus.scrapeConfigs;
  packages = map (p: p.name) host.environment.systemPackages;
}
