#!/usr/bin/env bash
# Runs cim-bench on release builds and writes BENCHMARKS.md (with its plot, benchmarks.svg) and
# bench-results.json at the repository root. Arguments go to cim-bench (e.g. --full, --tiny,
# --scenario upload restore, --s3-endpoint ... for MinIO or Wasabi); --markdown and --json may
# be given to write elsewhere.
#
# The default run (no --full/--tiny) takes about 20 minutes on 2 cores (1,156 s on the last run) against the local servers.
set -euo pipefail
cd "$(dirname "$0")/.."

# Servers, and the peer tool (Debian's rclone).
bash scripts/install-tools.sh

export PATH="$PATH:$HOME/.cache/cim-tools/venv/bin"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cim/target}"
export AWS_EC2_METADATA_DISABLED=true

# Release roles: cim-bench runs the cim-storage and cim-gateway next to its own executable.
cargo build --release --workspace --bins --locked

outputs=()
case " $* " in *" --markdown "*) ;; *) outputs+=(--markdown BENCHMARKS.md) ;; esac
case " $* " in *" --json "*) ;; *) outputs+=(--json bench-results.json) ;; esac

exec "$CARGO_TARGET_DIR/release/cim-bench" "${outputs[@]}" "$@"
