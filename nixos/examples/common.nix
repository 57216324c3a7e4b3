# What every host of one deployment shares: the tiers, the policies and the control plane.
# Imported by ./hub.nix and ./leaf.nix (which import the module itself through the flake:
# `imports = [ cim.nixosModules.default ./common.nix ];`).
_:

{
  services.cim-storage = {
    enable = true;
    # The hub cluster, as every host reaches it.
    nats.url = "nats://hub1:4222,nats://hub2:4222,nats://hub3:4222";

    tiers = {
      leaf = {
        kind = "jetstream";
        url = "nats://leaf1:4222";
        domain = "leaf";
        # An edge leaf node: a policy that sends data into it is rejected.
        role = "leaf";
      };
      hub = {
        kind = "jetstream";
        domain = "hub";
        replicas = 3;
      };
      wasabi = {
        kind = "s3";
        region = "eu-central-2";
        bucket = "cim-archive";
        prefix = "prod/";
        flavor = "wasabi";
        retention = "90d";
        # A secret outside the store, e.g. from sops-nix or agenix.
        credentialsFile = "/run/secrets/wasabi-credentials";
      };
    };

    policies = {
      edge-to-cluster = {
        buckets = [ "sensors-*" "logs" ];
        from = "leaf";
        to = "hub";
        action = "move";
        after = "10m";
      };
      cluster-to-wasabi = {
        buckets = [ "*" ];
        from = "hub";
        to = "wasabi";
        action = "move";
        after = "30d";
      };
    };

    settings = {
      work.concurrency = 2;
    };
  };
}
