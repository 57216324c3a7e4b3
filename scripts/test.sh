#!/usr/bin/env bash
# Runs every test: unit tests and end-to-end tests against real servers (a 3-node nats-server
# JetStream cluster, a leaf node and a Garage S3 server, all started by the tests on loopback).
# Installs what a fresh machine lacks first (scripts/install-tools.sh), and checks the Nix files
# before the cargo tests (scripts/nix-checks.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-tools.sh

echo "== nix checks (every .nix file parses, is formatted, has no dead code; flake outputs)"
bash scripts/nix-checks.sh

# Tools install-tools.sh put in its venv (the AWS CLI, where the machine had none).
export PATH="$PATH:$HOME/.cache/cim-tools/venv/bin"

# One build cache per machine, shared by every checkout (CI clones afresh each run).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cim/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Tests talk to loopback only: never let the AWS SDK probe the cloud metadata address.
export AWS_EC2_METADATA_DISABLED=true

echo "== build (all binaries: the end-to-end tests run them as separate processes)"
cargo build --workspace --bins --locked

echo "== tests"
# Each end-to-end test starts 5 servers and 3 roles; two at a time fit 2 cores.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads "${CIM_TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?

# cargo prints one summary per test binary (the last is often a crate's empty doc tests);
# close with the totals.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
