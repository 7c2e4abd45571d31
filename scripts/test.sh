#!/usr/bin/env bash
# The test command (README): installs what the tests need, then runs every test.
#
#   1. scripts/setup.d/*.sh   prerequisites (wasm targets, policy components, pip venvs,
#                             Azurite…), idempotent and quick when already done
#   2. cargo test --release --workspace
#   3. scripts/check.d/*.sh   checks outside cargo (Python SDK against azsim, templates…)
#
# One profile (release) for everything, so CI builds once.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

for s in scripts/setup.d/*.sh; do
    [ -e "$s" ] || continue
    step "setup: $s"
    bash "$s"
done

step "cargo test --release --workspace"
cargo test --release --workspace --locked

for s in scripts/check.d/*.sh; do
    [ -e "$s" ] || continue
    step "check: $s"
    bash "$s"
done

step "all tests passed"
