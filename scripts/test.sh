#!/usr/bin/env bash
# Runs every test: unit, property and end-to-end (network namespaces, real wireguard-go,
# unbound, dig, kdig, glibc), then a 30 s fuzzing smoke run of every fuzz target
# (scripts/fuzz-smoke.sh). Needs root for the end-to-end tests, which fail rather than
# skip because TUNDNS_E2E=1.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
./scripts/check-patches.sh
export TUNDNS_E2E=1
cargo test --workspace --locked --no-fail-fast
./scripts/fuzz-smoke.sh
