#!/usr/bin/env bash
# The main job, on a fresh Debian machine as root: install what the lab needs, build tundns,
# then run the self-contained demo in throwaway network namespaces (lab/demo.sh): a tunnel to
# a real wireguard-go peer, names resolved through the virtual DNS, the results, teardown.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --release --locked -p tundns
TUNDNS_BIN="$PWD/target/release/tundns" exec ./lab/demo.sh
