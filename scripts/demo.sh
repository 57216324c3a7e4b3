#!/usr/bin/env bash
# The whole tier chain on this machine: starts a 3-node JetStream cluster, a leaf node and a
# Garage S3 server on loopback, runs the manager, mirror and upload roles as separate processes,
# writes sample objects on the leaf, shows them moving leaf -> cluster -> S3, restores them and
# checks every byte. Pass --keep-running to leave everything up until Ctrl-C.
# Installs what a fresh machine lacks first (scripts/install-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-tools.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cim/target}"
# The demo talks to loopback only: never let the AWS SDK probe the cloud metadata address.
export AWS_EC2_METADATA_DISABLED=true
cargo build --workspace --bins --locked
exec "$CARGO_TARGET_DIR/debug/cim-demo" "$@"
