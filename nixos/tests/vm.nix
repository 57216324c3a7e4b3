# NixOS VM test of the whole chain: a leaf host, a 3-node hub cluster and Garage as the S3
# (Wasabi) stand-in, all configured through services.cim-storage. An object written on the leaf
# moves leaf -> hub -> S3 (both policies "move" after "0s"), then `cim-gateway restore` brings it
# back into the hub and its bytes are compared.
#
# Needs Nix with KVM (it cannot run where this project is developed; scripts/nix-checks.sh only
# evaluates it through the flake with stand-ins):
#   nix build .#checks.x86_64-linux.vm -L
#   nix run .#checks.x86_64-linux.vm.driverInteractive   # a Python shell with the VMs
{ pkgs, self }:

let
  inherit (pkgs) lib;

  hubs = [ "hub1" "hub2" "hub3" ];

  # The object-store bucket the test writes, and the object.
  bucket = "sensors";
  object = "reports/data.bin";

  # Garage: the S3 bucket and a fixed key (imported, so every node knows it in advance).
  garage = {
    region = "garage";
    bucket = "cim-archive";
    keyId = "GK0123456789abcdef01234567";
    secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  };

  # A run-time path, never a store path (the module asserts it). Written on hub1 only: only the
  # upload role and the operator commands there read S3. (Through environment.etc, so the test
  # key does sit in hub1's store; a real deployment uses its secrets manager.)
  s3CredentialsEtc = "cim-test/s3-credentials";
  s3CredentialsFile = "/etc/${s3CredentialsEtc}";

  # What every node running cim shares: one configuration of tiers and policies.
  cimNode = { config, ... }: {
    imports = [ self.nixosModules.default ];

    services.cim-storage = {
      enable = true;
      nats.url = lib.concatMapStringsSep "," (h: "nats://${h}:4222") hubs;
      nats.replicas = 3;
      tiers = {
        leaf = {
          kind = "jetstream";
          url = "nats://leaf:4222";
          domain = "leaf";
          replicas = 1;
          role = "leaf";
        };
        hub = {
          kind = "jetstream";
          domain = "hub";
          replicas = 3;
        };
        s3 = {
          kind = "s3";
          endpoint = "http://s3:3900";
          inherit (garage) region bucket;
          flavor = "garage";
          forcePathStyle = true;
          credentialsFile = s3CredentialsFile;
        };
      };
      policies = {
        leaf-to-hub = {
          buckets = [ bucket ];
          from = "leaf";
          to = "hub";
          action = "move";
          after = "0s";
        };
        hub-to-s3 = {
          buckets = [ bucket ];
          from = "hub";
          to = "s3";
          action = "move";
          after = "0s";
        };
      };
      settings.manager.interval = "1s";
      # Roles run as host services here, to keep the VMs light.
      containers.enable = false;
    };

    # The module's hostNats settings add the domain, cluster and leafnode parts; these are the
    # basics of services.nats (mkDefault: the module's own values win where it sets them).
    services.nats = {
      enable = lib.mkDefault true;
      jetstream = lib.mkDefault true;
      serverName = lib.mkDefault config.networking.hostName;
      host = lib.mkDefault "0.0.0.0";
    };

    environment.systemPackages = [ pkgs.natscli ];
  };

  hubNode = {
    imports = [ cimNode ];
    services.cim-storage.hostNats = {
      role = "hub";
      domain = "hub";
      clusterName = "hub";
      clusterRoutes = map (h: "nats://${h}:6222") hubs;
      leafnodePort = 7422;
    };
  };
in
pkgs.testers.runNixOSTest {
  name = "cim-storage";

  defaults = {
    # The nodes talk NATS (4222 client, 6222 cluster, 7422 leafnode) and S3 (3900).
    networking.firewall.enable = false;
  };

  nodes = {
    leaf = {
      imports = [ cimNode ];
      services.cim-storage = {
        roles.mirror.enable = true;
        hostNats = {
          role = "leaf";
          domain = "leaf";
          # The module gives the remote deny_imports/deny_exports [ "$O.>" ].
          hubLeafnodeUrls = map (h: "nats://${h}:7422") hubs;
        };
      };
    };

    hub1 = {
      imports = [ hubNode ];
      services.cim-storage.roles = {
        manager.enable = true;
        upload.enable = true;
      };
      environment.etc.${s3CredentialsEtc}.text = ''
        [default]
        aws_access_key_id = ${garage.keyId}
        aws_secret_access_key = ${garage.secret}
      '';
    };
    hub2 = hubNode;
    hub3 = hubNode;

    s3 = { config, ... }: {
      services.garage = {
        enable = true;
        package = pkgs.garage_2;
        settings = {
          replication_factor = 1;
          db_engine = "sqlite";
          rpc_bind_addr = "[::]:3901";
          rpc_public_addr = "127.0.0.1:3901";
          # A test secret; real deployments use rpc_secret_file or the environment file.
          rpc_secret = "5c1915fa04d0b6739675c61bf5907eb0fe3d9c69850c83820f51b4d25d13868c";
          s3_api = {
            s3_region = garage.region;
            api_bind_addr = "[::]:3900";
          };
        };
      };
      # Garage refuses to start with less than 1 GiB free.
      virtualisation.diskSize = 2048;

      # One-node layout, the bucket, and the key the cim nodes were given.
      systemd.services.garage-setup = {
        description = "Garage layout, bucket and key for the cim VM test";
        after = [ "garage.service" ];
        requires = [ "garage.service" ];
        wantedBy = [ "multi-user.target" ];
        path = [ config.services.garage.package ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          until garage status >/dev/null 2>&1; do sleep 1; done
          # Once per VM: the bucket exists only after a complete set-up.
          if ! garage bucket info ${garage.bucket} >/dev/null 2>&1; then
            node="$(garage node id -q | cut -d@ -f1)"
            garage layout assign -z dc1 -c 1G "$node"
            garage layout apply --version 1
            garage key import --yes -n cim ${garage.keyId} ${garage.secret}
            garage bucket create ${garage.bucket}
            garage bucket allow --read --write --owner ${garage.bucket} --key cim
          fi
        '';
      };
    };
  };

  testScript = ''
    start_all()

    with subtest("S3: Garage is up with its bucket and key"):
        s3.wait_for_unit("garage-setup.service")
        s3.wait_for_open_port(3900)

    with subtest("NATS: the hub cluster has JetStream, the leaf reaches it over its leafnode link"):
        for hub in [hub1, hub2, hub3]:
            hub.wait_for_unit("nats.service")
        # JetStream API answers once the cluster has elected its meta leader.
        hub1.wait_until_succeeds("nats --server nats://127.0.0.1:4222 stream ls", timeout=300)
        leaf.wait_for_unit("nats.service")
        leaf.wait_until_succeeds("nats --server nats://127.0.0.1:4222 stream ls", timeout=300)
        # Domain hub answers on the leaf: the leafnode link is up.
        leaf.wait_until_succeeds(
            "nats --server nats://127.0.0.1:4222 --js-domain hub stream ls", timeout=300
        )

    with subtest("cim roles run"):
        hub1.wait_for_unit("cim-manager.service")
        hub1.wait_for_unit("cim-upload.service")
        leaf.wait_for_unit("cim-mirror.service")

    with subtest("an object written on the leaf moves to S3"):
        leaf.succeed("head -c 3000000 /dev/urandom > /tmp/object.bin")
        digest = leaf.succeed("sha256sum /tmp/object.bin").split()[0]
        leaf.succeed("nats --server nats://127.0.0.1:4222 object add ${bucket} --replicas 1")
        leaf.succeed(
            "nats --server nats://127.0.0.1:4222 object put ${bucket} /tmp/object.bin --name ${object}"
        )
        # The host wrapper already points at the operator configuration.
        hub1.wait_until_succeeds(
            "cim-gateway list --bucket ${bucket} --json | ${pkgs.jq}/bin/jq -e '.objects[] | select(.name == \"${object}\")'", timeout=300
        )
        # Both policies move: neither JetStream tier keeps a copy.
        leaf.wait_until_fails(
            "nats --server nats://127.0.0.1:4222 object info ${bucket} ${object}", timeout=120
        )
        hub1.wait_until_fails(
            "nats --server nats://127.0.0.1:4222 object info ${bucket} ${object}", timeout=120
        )

    with subtest("restore from S3 brings back the same bytes, into the hub"):
        # Stop the roles first, or the move policy would evict the restored object again.
        hub1.succeed("systemctl stop cim-manager.service cim-upload.service")
        leaf.succeed("systemctl stop cim-mirror.service")
        hub1.succeed("cim-gateway restore --bucket ${bucket} --all")
        hub1.succeed(
            "nats --server nats://127.0.0.1:4222 object get ${bucket} ${object} -O /tmp/restored.bin"
        )
        restored = hub1.succeed("sha256sum /tmp/restored.bin").split()[0]
        assert restored == digest, f"restored sha256 {restored}, written {digest}"
        # Restore wrote into the hub's own stream, not over the leafnode link into the leaf.
        leaf.fail("nats --server nats://127.0.0.1:4222 object info ${bucket} ${object}")
  '';
}
