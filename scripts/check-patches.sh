#!/usr/bin/env bash
# Checks that each patched crate under patches/ is its published version plus the diff kept
# beside it, and nothing else. The published crate comes from cargo's registry cache, or
# else from crates.io.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/gotatun-0.10.2 2>/dev/null | head -1 || true)
if [[ -n $registry ]]; then
    cp -a "$registry" "$work/gotatun"
else
    mkdir "$work/gotatun"
    curl -sSfL https://static.crates.io/crates/gotatun/gotatun-0.10.2.crate |
        tar -xz -C "$work/gotatun" --strip-components=1
fi
rm -f "$work/gotatun/.cargo-ok" "$work/gotatun/.cargo_vcs_info.json"
patch --quiet -d "$work/gotatun" -p1 <"$ROOT/patches/gotatun.diff"
diff -r "$work/gotatun" "$ROOT/patches/gotatun" >&2 || {
    echo "patches/gotatun differs from gotatun-0.10.2 + patches/gotatun.diff" >&2
    exit 1
}
echo "patches/gotatun = gotatun-0.10.2 + patches/gotatun.diff"
