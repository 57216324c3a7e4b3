#!/usr/bin/env bash
# Checks every git-tracked .nix file of the repository, offline, without nixpkgs:
#   * it parses (nix-instantiate --parse);
#   * it is formatted (nixpkgs-fmt --check);
#   * it has no dead code (deadnix --fail; flake.nix with -L: a flake's `outputs` must accept
#     its inputs as a pattern whether it uses them or not);
# and evaluates the flake's outputs with stand-in inputs (nixos/tests/flake-eval.nix), which
# also yields the VM test's Python script: it must compile (python3).
# Reports every failure, then exits non-zero if there was one. scripts/install-tools.sh installs
# the tools (Debian's nix-bin, Nix 2.8; nixpkgs-fmt and deadnix from crates.io).
#
# nixpkgs' lib/ (the flake evaluation needs it) is taken from, in this order:
#   $NIXPKGS_LIB; <repo>/../shared/nixpkgs-lib/lib; NIX_PATH's nixpkgs (<nixpkgs>/lib).
#
# Nix environment: nothing is built and nothing is written to a store. `--parse` needs no store;
# the evaluation runs with --readonly-mode, so Nix opens no database and copies no path into the
# store (a path that would be copied only gets its store path computed), and works as root
# without a daemon or as a user without /nix write access. No NIX_* variable is needed; the
# only one read here is NIX_PATH, as the last place to look for nixpkgs' lib.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$PATH:$CARGO_BIN"

log() { echo "nix-checks: $*"; }
failures=0
fail() { log "FAIL: $*" >&2; failures=$((failures + 1)); }

for tool in nix-instantiate nixpkgs-fmt deadnix; do
    command -v "$tool" >/dev/null 2>&1 || {
        log "ERROR: $tool not found (run scripts/install-tools.sh)" >&2
        exit 1
    }
done

mapfile -d '' files < <(git -C "$repo" ls-files -z -- '*.nix')
if [ ${#files[@]} -eq 0 ]; then
    log "ERROR: no git-tracked .nix files (is $repo a git checkout?)" >&2
    exit 1
fi
log "${#files[@]} tracked .nix files: ${files[*]}"

# ---- parse ----------------------------------------------------------------------------
for f in "${files[@]}"; do
    # Nix names the file and position in its error.
    nix-instantiate --parse "$f" >/dev/null || fail "$f does not parse"
done
log "parse: checked ${#files[@]} files"

# ---- format ---------------------------------------------------------------------------
if ! out="$(nixpkgs-fmt --check "${files[@]}" 2>&1)"; then
    echo "$out" >&2
    fail "not formatted (nixpkgs-fmt --check); run: nixpkgs-fmt ${files[*]}"
fi
log "nixpkgs-fmt --check: checked ${#files[@]} files"

# ---- dead code ------------------------------------------------------------------------
for f in "${files[@]}"; do
    flags=(--fail)
    [ "$(basename "$f")" = flake.nix ] && flags+=(-L)
    deadnix "${flags[@]}" "$f" || fail "$f has dead code (deadnix ${flags[*]})"
done
log "deadnix: checked ${#files[@]} files"

# ---- flake outputs --------------------------------------------------------------------
find_nixpkgs_lib() {
    if [ -n "${NIXPKGS_LIB:-}" ]; then
        [ -f "$NIXPKGS_LIB/default.nix" ] || {
            log "ERROR: NIXPKGS_LIB=$NIXPKGS_LIB has no default.nix (it must be nixpkgs' lib/ directory)" >&2
            return 1
        }
        echo "$NIXPKGS_LIB"
    elif [ -f "$repo/../shared/nixpkgs-lib/lib/default.nix" ]; then
        (cd "$repo/../shared/nixpkgs-lib/lib" && pwd)
    elif nixpkgs="$(nix-instantiate --find-file nixpkgs 2>/dev/null)" && [ -f "$nixpkgs/lib/default.nix" ]; then
        echo "$nixpkgs/lib"
    else
        log "ERROR: need nixpkgs' lib/ directory (the one holding default.nix: from a nixpkgs" >&2
        log "  checkout or the nix-community/nixpkgs.lib mirror). Give it as" >&2
        log "  NIXPKGS_LIB=/path/to/nixpkgs/lib, or put it at $repo/../shared/nixpkgs-lib/lib," >&2
        log "  or set NIX_PATH=nixpkgs=/path/to/nixpkgs (NIX_PATH is '${NIX_PATH:-}')." >&2
        return 1
    fi
}

if [ -f flake.nix ]; then
    if lib="$(find_nixpkgs_lib)"; then
        log "flake outputs: evaluating nixos/tests/flake-eval.nix with nixpkgs lib at $lib"
        if out="$(nix-instantiate --readonly-mode --eval --strict --json \
            nixos/tests/flake-eval.nix --arg nixpkgsLib "$lib")"; then
            # One line per check that held.
            echo "$out" | jq -r '.checks[] | "nix-checks:   ok: \(.)"'
            # The VM test cannot run here; at least its Python script must compile.
            if echo "$out" | jq -r .vmTestScript | python3 -c \
                'import sys; compile(sys.stdin.read(), "nixos/tests/vm.nix testScript", "exec")'; then
                log "  ok: the VM test's Python script compiles"
            else
                fail "the VM test's Python script (nixos/tests/vm.nix testScript) does not compile"
            fi
        else
            fail "flake outputs (nixos/tests/flake-eval.nix)"
        fi
    else
        fail "flake outputs: nixpkgs' lib not found"
    fi
fi

if [ "$failures" -ne 0 ]; then
    log "$failures failure(s)" >&2
    exit 1
fi
log "all passed"
