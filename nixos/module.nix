# NixOS module: services.cim-storage.
#
# Tiers and policies are typed options (the NixOS manual describes them and a typo fails
# evaluation with the option's path); everything else goes through the freeform `settings`.
# Each enabled role gets its own configuration file, rendered with builtins.toJSON and checked
# at build time by `cim-storage check-config`: a role's file names only the secrets that role
# needs. Secrets are run-time paths (never copied into the store), handed to the units through
# systemd credentials (LoadCredential), so the units can run as dynamic users.
#
# With `containers.enable`, every enabled role runs in its own nixos-container (`cim-<role>`),
# sharing the host's network (NATS and Prometheus on the host reach it on 127.0.0.1), with its
# secrets bind-mounted read-only.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types;

  cfg = config.services.cim-storage;

  # One grammar for durations, shared with the Rust parser (policies/src/config): see
  # nixos/durations.json and its test in both languages.
  durations = builtins.fromJSON (builtins.readFile ./durations.json);
  duration = types.strMatching durations.regex // {
    description = "duration such as \"10m\", \"30d\" or \"1h 30m\"";
  };

  # A secret: a path read at run time. A path value would be copied into the world-readable
  # store, so only strings are accepted, and store paths are refused by an assertion.
  secretPath = types.nullOr types.str;

  roleNames = [ "manager" "mirror" "upload" "serve" ];

  # What each role runs, and its unit's name.
  roleCommands = {
    manager = "cim-storage run";
    mirror = "cim-storage mirror";
    upload = "cim-gateway upload";
    serve = "cim-gateway serve";
  };
  defaultMetricsPorts = { manager = 9464; mirror = 9465; upload = 9466; serve = 9467; };

  tierOptions = {
    options = {
      kind = mkOption {
        type = types.enum [ "jetstream" "s3" ];
        description = ''
          `jetstream`: an object-store domain on a NATS server (a leaf, or the hub cluster).
          `s3`: an S3-compatible bucket (Wasabi in production).
        '';
      };
      url = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "nats://10.0.0.5:4222";
        description = "JetStream tiers: the NATS URL(s) of the tier's servers; default `nats.url`.";
      };
      domain = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "leaf";
        description = "JetStream tiers (required): the tier's JetStream domain.";
      };
      replicas = mkOption {
        type = types.nullOr (types.ints.between 1 5);
        default = null;
        description = "JetStream tiers: replicas of buckets created there (default 1).";
      };
      role = mkOption {
        type = types.nullOr (types.enum [ "leaf" "cluster" ]);
        default = null;
        example = "leaf";
        description = "JetStream tiers: `leaf` (an edge leaf node) or `cluster` (the default); a policy that sends data into a leaf is rejected.";
      };
      endpoint = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://s3.eu-central-2.wasabisys.com";
        description = ''
          S3 tiers: endpoint URL. Required unless `flavor` is `aws` or `wasabi`.
        '';
      };
      region = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "eu-central-2";
        description = "S3 tiers (required): the region.";
      };
      bucket = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "cim-archive";
        description = "S3 tiers (required): the S3 bucket.";
      };
      prefix = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "prod/";
        description = "S3 tiers: key prefix inside the bucket (default none).";
      };
      flavor = mkOption {
        type = types.nullOr (types.enum [ "aws" "wasabi" "garage" "minio" "other" ]);
        default = null;
        description = "S3 tiers: which S3 implementation (default `other`).";
      };
      forcePathStyle = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "S3 tiers: path-style addressing (default true, except for `aws`).";
      };
      verify = mkOption {
        type = types.nullOr (types.enum [ "md5" "crc32c" "read-back" ]);
        default = null;
        description = ''
          S3 tiers: how an uploaded blob is proven stored before it counts as verified:
          `md5` or `crc32c` (the service checks a checksum of every request body on receipt),
          or `read-back` (the blob is downloaded again and checked). Default `crc32c` for the
          `aws`, `garage` and `minio` flavors, `md5` otherwise.
        '';
      };
      retention = mkOption {
        type = types.nullOr duration;
        default = null;
        example = "180d";
        description = ''
          S3 tiers: how long history and unreferenced blobs stay before `cim-gateway gc`
          removes them (default 90 days, Wasabi's minimum storage duration).
        '';
      };
      credentialsFile = mkOption {
        type = secretPath;
        default = null;
        example = "/run/secrets/wasabi-credentials";
        description = ''
          Run-time path of the tier's credentials: for an S3 tier an AWS shared-credentials
          file (given to the upload role and the operator commands only); for a JetStream tier
          a NATS credentials file. Never a store path.
        '';
      };
    };
  };

  policyOptions = { name, ... }: {
    options = {
      name = mkOption {
        type = types.str;
        default = name;
        defaultText = lib.literalExpression "<the attribute name>";
        description = "Name of the policy (shown in logs, metrics and errors); the attribute name.";
      };
      buckets = mkOption {
        type = types.listOf types.str;
        example = [ "sensors*" ];
        description = "Object-store bucket names or globs the policy applies to.";
      };
      from = mkOption {
        type = types.str;
        description = "Tier the objects are on (a name in `tiers`); for `expire`, the tier to delete from, or `\"*\"` for every tier.";
      };
      to = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Tier the objects go to (a name in `tiers`); required for `copy` and `move`, none for `expire`.";
      };
      action = mkOption {
        type = types.enum [ "copy" "move" "expire" ];
        description = "`copy` keeps the source copy; `move` evicts it once the destination is verified; `expire` deletes the object from `from` (or every tier) once `after` old.";
      };
      force = mkOption {
        type = types.bool;
        default = false;
        description = "`expire` only: allow a retention below 90 days on an S3 tier (Wasabi bills 90 days anyway).";
      };
      after = mkOption {
        type = duration;
        example = "30d";
        description = "How long after the object was stored the policy applies.";
      };
      enabled = mkOption {
        type = types.bool;
        default = true;
        description = "`false` keeps the policy validated and shown by `cim-storage plan` and `explain`, but the roles ignore it.";
      };
      names = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        example = [ "*.csv" ];
        description = "Globs over the whole object name (`*` matches `/` too); default any name.";
      };
      prefix = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "reports/";
        description = "The object name must start with this.";
      };
      minSize = mkOption {
        type = types.nullOr (types.either types.ints.unsigned types.str);
        default = null;
        example = "4 KiB";
        description = "Smallest object size the policy applies to: bytes, or a size such as \"4 KiB\" or \"10 MB\".";
      };
      maxSize = mkOption {
        type = types.nullOr (types.either types.ints.unsigned types.str);
        default = null;
        example = "1 GiB";
        description = "Largest object size the policy applies to (as `minSize`).";
      };
      metadata = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = { class = "cold"; };
        description = "Object-store metadata the object must carry, key = value.";
      };
      headers = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = { "Content-Type" = "text/csv"; };
        description = "Object-store headers the object must carry (names case-insensitive).";
      };
      idle = mkOption {
        type = types.nullOr duration;
        default = null;
        example = "30d";
        description = "The object must not have been read (`cim-gateway get`, the ensure service) for this long; never read: since the tier stored it.";
      };
    };
  };

  roleOptions = role: {
    enable = mkEnableOption "the ${role} role (`${roleCommands.${role}}`)";
  } // lib.optionalAttrs (role == "upload") {
    gcSchedule = mkOption {
      type = types.nullOr types.str;
      default = "daily";
      example = "Sun 03:00";
      description = ''
        When `cim-gateway gc` runs beside the upload role (systemd `OnCalendar`), removing what
        deletes and overwrites left behind longer ago than each S3 tier's `retention`; `null`
        never. Runs wherever the upload role runs; the blob leases keep several hosts apart.
      '';
    };
  } // {
    metricsPort = mkOption {
      type = types.port;
      default = defaultMetricsPorts.${role};
      description = "Port of the role's Prometheus endpoint, on 127.0.0.1.";
    };
    natsCredentialsFile = mkOption {
      type = secretPath;
      default = null;
      description = "Run-time path of this role's NATS credentials file (see docs/nixos.md for its permissions).";
    };
  };

  # ---- rendering -------------------------------------------------------------------------

  dropNulls = lib.filterAttrs (_: v: v != null);

  # Where unit `unitName` finds secret `id`: its systemd credential.
  credentialPath = unitName: id: "/run/credentials/${unitName}.service/${id}";

  # The roles that read S3 (and so get its credentials): the uploader, and the ensure service,
  # which restores from it.
  readsS3 = role: role == "upload" || role == "serve";

  # The secrets a role receives, as { id = hostPath; }.
  roleSecrets = role:
    dropNulls (
      { nats = cfg.roles.${role}.natsCredentialsFile; }
      // lib.mapAttrs' (name: t: lib.nameValuePair "tier-${name}" t.credentialsFile)
        (lib.filterAttrs (_: t: t.kind == "jetstream" || readsS3 role) cfg.tiers)
    );

  renderTier = secretOf: name: t:
    dropNulls (
      {
        inherit (t) kind;
        credentials_file = if t.credentialsFile == null then null else secretOf "tier-${name}" t.credentialsFile;
      }
      // (if t.kind == "jetstream" then {
        inherit (t) url domain replicas role;
      } else {
        inherit (t) endpoint region bucket prefix flavor retention verify;
        force_path_style = t.forcePathStyle;
      })
    );

  # The configuration (as a Nix value) of `role`'s unit `unitName`, or of the operator commands
  # (role = null).
  render = role: unitName:
    let
      secretOf = id: hostPath:
        if role == null then hostPath else credentialPath unitName id;
      # S3 credentials reach the roles that read S3 and the operator only.
      tiers = lib.mapAttrs
        (name: t:
          renderTier secretOf name (t // lib.optionalAttrs (t.kind == "s3" && !(readsS3 role) && role != null) {
            credentialsFile = null;
          }))
        cfg.tiers;
      natsCredentials =
        if role == null then cfg.operator.natsCredentialsFile
        else if cfg.roles.${role}.natsCredentialsFile == null then null
        else credentialPath unitName "nats";
    in
    lib.recursiveUpdate
      (lib.recursiveUpdate cfg.settings {
        nats = dropNulls {
          inherit (cfg.nats) url replicas;
          credentials_file = natsCredentials;
        };
        inherit tiers;
        policy = lib.mapAttrsToList
          (_: p: dropNulls {
            inherit (p) name buckets from to action after enabled names prefix idle;
            force = if p.force then true else null;
            min_size = p.minSize;
            max_size = p.maxSize;
            metadata = if p.metadata == { } then null else p.metadata;
            headers = if p.headers == { } then null else p.headers;
          })
          cfg.policies;
      })
      (lib.optionalAttrs (role != null) {
        metrics.listen = "127.0.0.1:${toString cfg.roles.${role}.metricsPort}";
      });

  renderedJSON = role: builtins.toJSON (render role "cim-${toString role}");

  # The rendered file, checked at build time by the binary that will read it.
  checkedConfig = name: json:
    pkgs.runCommand "cim-${name}.json"
      {
        nativeBuildInputs = [ cfg.package ];
        passAsFile = [ "json" ];
        inherit json;
      } ''
      cp "$jsonPath" cim-${name}.json
      cim-storage check-config --config cim-${name}.json
      cp cim-${name}.json "$out"
    '';

  enabledRoles = lib.filter (role: cfg.roles.${role}.enable) roleNames;

  # The hardening every unit gets.
  hardening = {
    DynamicUser = true;
    NoNewPrivileges = true;
    CapabilityBoundingSet = "";
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
    UMask = "0077";
  };

  # LoadCredential lines handing `role`'s secrets to a unit (from the host, or inside a
  # container from the bind mounts under `secretsDir`).
  loadCredentials = role: secretsDir:
    lib.mapAttrsToList
      (id: hostPath: "${id}:${if secretsDir == null then hostPath else "${secretsDir}/${id}"}")
      (roleSecrets role);

  # The role's systemd service (on the host, or inside its container, where the secrets are
  # bind-mounted under /run/cim-secrets).
  unit = role: secretsDir:
    let
      configFile = checkedConfig role (renderedJSON role);
    in
    {
      description = "CIM storage ${role} role";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      restartTriggers = [ configFile ];
      # Keep retrying while NATS (or the cluster) is still coming up.
      startLimitIntervalSec = 0;
      serviceConfig = hardening // {
        ExecStart = "${cfg.package}/bin/${roleCommands.${role}} --config ${configFile}";
        LoadCredential = loadCredentials role secretsDir;
        Restart = "on-failure";
        RestartSec = 5;
        # Every role ends within 5 s of SIGTERM, releasing its work for redelivery.
        TimeoutStopSec = 10;
      };
    };

  # Garbage collection of the S3 tiers (`cim-gateway gc`) beside the upload role, with its
  # secrets: a oneshot service and its timer.
  gcEnabled = cfg.roles.upload.enable && cfg.roles.upload.gcSchedule != null;
  gcJSON = builtins.toJSON (render "upload" "cim-gc");
  gcUnits = secretsDir:
    let
      configFile = checkedConfig "gc" gcJSON;
      s3Tiers = builtins.attrNames (lib.filterAttrs (_: t: t.kind == "s3") cfg.tiers);
    in
    lib.optionalAttrs gcEnabled {
      services.cim-gc = {
        description = "CIM storage: garbage collection of the S3 tiers after their retention";
        after = [ "network-online.target" ];
        wants = [ "network-online.target" ];
        script = lib.concatMapStringsSep "\n"
          (tier: "${cfg.package}/bin/cim-gateway gc --config ${configFile} --from ${tier}")
          s3Tiers;
        serviceConfig = hardening // {
          Type = "oneshot";
          LoadCredential = loadCredentials "upload" secretsDir;
        };
      };
      timers.cim-gc = {
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.roles.upload.gcSchedule;
          Persistent = true;
          RandomizedDelaySec = "1h";
        };
      };
    };

  operatorConfig = checkedConfig "operator" (renderedJSON null);

  # `cim-storage` and `cim-gateway` on the host's PATH, pre-pointed at the operator
  # configuration (clap reads CIM_CONFIG where --config is not given).
  wrapper = bin:
    pkgs.writeShellScriptBin bin ''
      export CIM_CONFIG="''${CIM_CONFIG:-${operatorConfig}}"
      exec ${cfg.package}/bin/${bin} "$@"
    '';

  isStorePath = p: p != null && lib.hasPrefix "${builtins.storeDir}/" p;
  allSecrets =
    lib.mapAttrsToList (name: t: { what = "services.cim-storage.tiers.${name}.credentialsFile"; path = t.credentialsFile; }) cfg.tiers
    ++ map (role: { what = "services.cim-storage.roles.${role}.natsCredentialsFile"; path = cfg.roles.${role}.natsCredentialsFile; }) roleNames
    ++ [{ what = "services.cim-storage.operator.natsCredentialsFile"; path = cfg.operator.natsCredentialsFile; }];
  tierNames = builtins.attrNames cfg.tiers;
in
{
  options.services.cim-storage = {
    enable = mkEnableOption "CIM tiered storage for NATS JetStream object stores";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The package providing `cim-storage` and `cim-gateway`.";
    };

    nats = {
      url = mkOption {
        type = types.str;
        example = "nats://127.0.0.1:4222";
        description = "The hub cluster (control plane: catalog, work queue, leases); comma-separated URLs allowed.";
      };
      replicas = mkOption {
        type = types.ints.between 1 5;
        default = 3;
        description = "Replicas of the control-plane streams.";
      };
    };

    tiers = mkOption {
      type = types.attrsOf (types.submodule tierOptions);
      default = { };
      description = "Storage tiers by name (`[tiers.<name>]`).";
    };

    policies = mkOption {
      type = types.attrsOf (types.submodule policyOptions);
      default = { };
      example = lib.literalExpression ''
        {
          cluster-to-wasabi = {
            buckets = [ "*" ];
            from = "hub";
            to = "wasabi";
            action = "move";
            after = "30d";
          };
        }
      '';
      description = ''
        Policies by name (`[[policy]]`), applied per object-store bucket. Keyed by name, so a
        type error names the policy (`services.cim-storage.policies.<name>.after`) and several
        modules can add policies.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = (pkgs.formats.json { }).type; };
      default = { };
      example = { work.concurrency = 4; upload.memory_budget_mib = 128; };
      description = ''
        Everything else in the configuration file (`[metrics]`, `[manager]`, `[work]`,
        `[upload]`, `[restore]`, `[catalog]`, `[access]`), with the file's key names; see
        docs/configuration.md. `metrics.listen` is set per role; `metrics.pushgateway`
        (e.g. `"http://127.0.0.1:9091"`) makes the one-shot commands (the gc timer's
        `cim-gateway gc`, an operator's `restore` and `scrub`) push their metrics there.
      '';
    };

    roles = lib.genAttrs roleNames (role: roleOptions role);

    operator.natsCredentialsFile = mkOption {
      type = secretPath;
      default = null;
      description = "Run-time path of the NATS credentials the operator commands (`cim-gateway restore`, ...) use on this host.";
    };

    containers.enable = mkEnableOption "one nixos-container per enabled role (`cim-<role>`)";

    hostNats = {
      role = mkOption {
        type = types.enum [ "none" "hub" "leaf" ];
        default = "none";
        description = ''
          Configure this host's `services.nats` as a hub cluster node (`hub`: JetStream,
          cluster routes, a leafnode listener) or as a leaf (`leaf`: JetStream in its own
          domain, a leafnode remote to the hub that denies `$O.>` both ways, which sourcing
          needs; see docs/architecture.md). `none` leaves `services.nats` alone.
        '';
      };
      domain = mkOption {
        type = types.str;
        default = if cfg.hostNats.role == "leaf" then "leaf" else "hub";
        defaultText = lib.literalExpression ''if role == "leaf" then "leaf" else "hub"'';
        description = "JetStream domain of this host's server (the `domain` of its tier).";
      };
      clusterName = mkOption {
        type = types.str;
        default = "cim-hub";
        description = "Hub: the cluster's name (the same on every hub node).";
      };
      clusterPort = mkOption {
        type = types.port;
        default = 6222;
        description = "Hub: port of the cluster routes.";
      };
      clusterRoutes = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "nats-route://hub1:6222" "nats-route://hub2:6222" "nats-route://hub3:6222" ];
        description = "Hub: routes to every hub node.";
      };
      leafnodePort = mkOption {
        type = types.port;
        default = 7422;
        description = "Hub: port leaf nodes connect to.";
      };
      hubLeafnodeUrls = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "nats-leaf://hub1:7422" "nats-leaf://hub2:7422" "nats-leaf://hub3:7422" ];
        description = "Leaf: the hub nodes' leafnode URLs.";
      };
    };

    renderedConfigs = mkOption {
      type = types.attrsOf types.str;
      internal = true;
      readOnly = true;
      description = "The JSON configuration of every enabled role and of the operator commands (for tests).";
    };

    roleSecrets = mkOption {
      type = types.attrsOf (types.attrsOf types.str);
      internal = true;
      readOnly = true;
      description = "The secrets (id = host path) each enabled role receives (for tests).";
    };
  };

  config = mkIf cfg.enable (lib.mkMerge [
    {
      services.cim-storage.renderedConfigs =
        lib.genAttrs enabledRoles renderedJSON
        // { operator = renderedJSON null; }
        // lib.optionalAttrs gcEnabled { gc = gcJSON; };
      services.cim-storage.roleSecrets = lib.genAttrs enabledRoles roleSecrets;

      assertions =
        lib.concatMap
          (p: [
            {
              assertion = builtins.elem p.from tierNames || (p.action == "expire" && p.from == "*");
              message = "services.cim-storage.policies: policy \"${p.name}\": from = \"${p.from}\" is not a tier (tiers: ${lib.concatStringsSep ", " tierNames})";
            }
            {
              assertion = if p.action == "expire" then p.to == null else builtins.elem p.to tierNames;
              message =
                if p.action == "expire"
                then "services.cim-storage.policies: policy \"${p.name}\": an expire policy has no `to`"
                else "services.cim-storage.policies: policy \"${p.name}\": to = \"${toString p.to}\" is not a tier (tiers: ${lib.concatStringsSep ", " tierNames})";
            }
            {
              assertion = p.from != p.to;
              message = "services.cim-storage.policies: policy \"${p.name}\": from and to are both \"${p.from}\"";
            }
          ])
          (builtins.attrValues cfg.policies)
        ++ map
          (s: {
            assertion = !isStorePath s.path;
            message = "${s.what} = \"${s.path}\" is in the Nix store, which every user can read: give the path of a secret outside the store (it is read at run time).";
          })
          allSecrets;

      environment.systemPackages = [ (wrapper "cim-storage") (wrapper "cim-gateway") ];

      # One job per role, named as docs/alerts.yml expects. No `role` target label: the
      # metrics carry their own `role` (e.g. the manager's dispatches per role), which a target
      # label of the same name would overwrite (Prometheus keeps the metric's as exported_role).
      services.prometheus.scrapeConfigs = mkIf config.services.prometheus.enable (map
        (role: {
          job_name = "cim-${role}";
          static_configs = [{
            targets = [ "127.0.0.1:${toString cfg.roles.${role}.metricsPort}" ];
          }];
        })
        enabledRoles);
    }

    (mkIf (cfg.hostNats.role != "none") {
      services.nats = {
        enable = true;
        jetstream = true;
        settings = {
          jetstream.domain = cfg.hostNats.domain;
        } // lib.optionalAttrs (cfg.hostNats.role == "hub") {
          cluster = {
            name = cfg.hostNats.clusterName;
            listen = "0.0.0.0:${toString cfg.hostNats.clusterPort}";
            routes = cfg.hostNats.clusterRoutes;
          };
          leafnodes.listen = "0.0.0.0:${toString cfg.hostNats.leafnodePort}";
        } // lib.optionalAttrs (cfg.hostNats.role == "leaf") {
          # Without the deny rule the hub stream would capture every chunk a second time
          # through leafnode interest, and objects would fail their digest.
          leafnodes.remotes = [{
            urls = cfg.hostNats.hubLeafnodeUrls;
            deny_imports = [ "$O.>" ];
            deny_exports = [ "$O.>" ];
          }];
        };
      };
    })

    (mkIf (!cfg.containers.enable) {
      systemd = lib.recursiveUpdate
        { services = lib.listToAttrs (map (role: lib.nameValuePair "cim-${role}" (unit role null)) enabledRoles); }
        (gcUnits null);
    })

    (mkIf cfg.containers.enable {
      containers = lib.listToAttrs (map
        (role: lib.nameValuePair "cim-${role}" {
          autoStart = true;
          # The host's network: NATS and Prometheus on the host reach the role on 127.0.0.1.
          privateNetwork = false;
          bindMounts = lib.mapAttrs'
            (id: hostPath: lib.nameValuePair "/run/cim-secrets/${id}" {
              inherit hostPath;
              isReadOnly = true;
            })
            (roleSecrets role);
          config = {
            systemd = lib.recursiveUpdate
              { services."cim-${role}" = unit role "/run/cim-secrets"; }
              (lib.optionalAttrs (role == "upload") (gcUnits "/run/cim-secrets"));
            system.stateVersion = config.system.stateVersion;
          };
        })
        enabledRoles);
    })
  ]);
}
