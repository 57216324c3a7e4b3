# The module's duration type against the shared examples in ../durations.json, through the
# module itself (a policy's `after`): returns the examples it gets wrong (both lists empty when
# the Nix side agrees with the list; the Rust side is tested against the same list).
{ lib }:

let
  examples = builtins.fromJSON (builtins.readFile ../durations.json);
  accepts = after:
    let
      evaluated = lib.evalModules {
        modules = [
          ./stubs.nix
          ../module.nix
          {
            services.cim-storage = {
              enable = true;
              nats.url = "nats://127.0.0.1:4222";
              tiers.a = { kind = "jetstream"; domain = "a"; };
              tiers.b = { kind = "jetstream"; domain = "b"; };
              policies.p = { buckets = [ "*" ]; from = "a"; to = "b"; action = "copy"; inherit after; };
            };
          }
        ];
      };
    in
    (builtins.tryEval (builtins.deepSeq evaluated.config.services.cim-storage.renderedConfigs true)).success;
in
{
  validRejected = lib.filter (s: !accepts s) examples.valid;
  invalidAccepted = lib.filter accepts examples.invalid;
}
