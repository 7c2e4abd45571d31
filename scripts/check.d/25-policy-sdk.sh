#!/usr/bin/env bash
# The policy SDK's own tests (policy-wasm/sdk: span resolution, key-id parsing and the
# case-insensitive comparison the policies use, each property-tested against a reference).
# The SDK is built for wasm32 by the main build; its tests run natively, in their own
# target dir (policy-wasm is a workspace of its own). ≈ 45 s from clean, seconds after.
set -euo pipefail
cd "$(dirname "$0")/../../policy-wasm"
cargo test --release --locked -p cmkguard-policy-sdk --target-dir ../target/policy-native
