#!/usr/bin/env bash
# The fuzz targets' smoke run, part of the test suite (issue 13, section 6): builds fuzz/
# and runs every target for FUZZ_SMOKE_SECONDS (default 30) from its committed corpus
# (fuzz/corpus/<target>) and seeds (fuzz/seeds/<target>). A crash, a timeout, running out
# of memory, a target without a committed corpus, or a failed build fails the run; nothing
# is skipped. New inputs go to a scratch directory, so the committed corpus is left as it
# is; a crashing input is kept in fuzz/artifacts/<target>/ to reproduce with
# `cargo fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SMOKE_SECONDS:-30}

# The longest input each target is given, as in fuzz/README.md.
max_len() {
    case "$1" in
        ip_packet) echo 2048 ;;
        client_query) echo 1024 ;;
        upstream_answer) echo 4096 ;;
        proxy_request) echo 512 ;;
        config_file) echo 8192 ;;
        hosts_file) echo 4096 ;;
        blocklist_file) echo 4096 ;;
        control_request) echo 1024 ;;
        cache_file) echo 8192 ;;
        doq_stream) echo 1024 ;;
        *) echo "fuzz-smoke: no max_len for target $1: add it here and to fuzz/README.md" >&2; return 1 ;;
    esac
}

if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz-smoke: cargo-fuzz not found: run scripts/install-deps.sh" >&2
    exit 1
fi
# cargo fuzz passes flags that stable rustc takes only with this.
export RUSTC_BOOTSTRAP=1
# No sanitizer: the code the targets reach is safe Rust (the crates forbid unsafe code; the
# filter's is in its TUN reader, which no target reaches), so AddressSanitizer would find
# nothing and cost a fourfold slowdown. Debug assertions and overflow checks stay on.
sanitizer=(-s none)

mapfile -t targets < <(cargo fuzz list)
if ((${#targets[@]} == 0)); then
    echo "fuzz-smoke: cargo fuzz lists no target" >&2
    exit 1
fi
for target in "${targets[@]}"; do
    max_len "$target" >/dev/null
    if [[ -z $(ls -A "corpus/$target" 2>/dev/null) ]]; then
        echo "fuzz-smoke: $target has no committed corpus in fuzz/corpus/$target" >&2
        exit 1
    fi
done

cargo fuzz build "${sanitizer[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${targets[@]}"; do
    echo "fuzz-smoke: $target for ${seconds}s"
    mkdir "$scratch/$target"
    corpora=("$scratch/$target" "corpus/$target")
    [[ -d "seeds/$target" ]] && corpora+=("seeds/$target")
    if ! cargo fuzz run "${sanitizer[@]}" "$target" "${corpora[@]}" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=10 \
        -print_final_stats=1 2>"$scratch/$target.log"; then
        failed+=("$target")
        cat "$scratch/$target.log" >&2
        continue
    fi
    grep -E '^(stat::number_of_executed_units|Done)' "$scratch/$target.log" || true
done

if ((${#failed[@]})); then
    echo "fuzz-smoke: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz-smoke: ${#targets[@]} targets ran ${seconds}s each without a crash"
