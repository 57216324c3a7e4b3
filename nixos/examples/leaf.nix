# A leaf host: its own NATS server with JetStream in domain "leaf", linked to the hub by a
# leafnode connection, and the leaf-mirroring role in its own container.
_:

{
  imports = [ ./common.nix ];

  services.cim-storage = {
    hostNats = {
      role = "leaf";
      hubLeafnodeUrls = [ "nats-leaf://hub1:7422" "nats-leaf://hub2:7422" "nats-leaf://hub3:7422" ];
    };
    containers.enable = true;
    roles.mirror = {
      enable = true;
      natsCredentialsFile = "/run/secrets/cim-mirror.creds";
    };
  };
}
