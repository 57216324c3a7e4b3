# A hub node (hub1 of three): a NATS cluster node in JetStream domain "hub" with a leafnode
# listener, and, in their own containers, the storage manager (one per host; enable it on one
# or more hub nodes: one leads, the others stand by) and the S3 upload role. Prometheus on the
# host scrapes both.
_:

{
  imports = [ ./common.nix ];

  services.cim-storage = {
    hostNats = {
      role = "hub";
      clusterRoutes = [ "nats-route://hub1:6222" "nats-route://hub2:6222" "nats-route://hub3:6222" ];
    };
    containers.enable = true;
    roles = {
      manager = {
        enable = true;
        natsCredentialsFile = "/run/secrets/cim-manager.creds";
      };
      upload = {
        enable = true;
        natsCredentialsFile = "/run/secrets/cim-upload.creds";
      };
    };
    operator.natsCredentialsFile = "/run/secrets/cim-operator.creds";
  };

  services.prometheus.enable = true;
}
