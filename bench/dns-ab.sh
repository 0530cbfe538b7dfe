#!/usr/bin/env bash
# An A/B of two tundns builds on the DNS path, alternating A and B in one run so that both
# see the same machine:
#   cache hits      dnsperf in C -> 10.30.30.30, cache on and warmed: answered inline
#   forwarding      dnsperf in C -> 10.30.30.30, `Cache = off`: every query to N's unbound
# For each, two figures:
#   - QPS at dnsperf's full load (OUTSTANDING queries in flight). On 2 cores dnsperf itself
#     saturates a core first, so this is a ceiling of the pair, not of tundns alone;
#   - CPU microseconds per answer at a fixed offered load of RATE queries/s, below every
#     ceiling: tundns's utime + stime from /proc/PID/stat before and after, over the answers
#     dnsperf counted. This is what tundns itself costs.
# Everything runs in throwaway namespaces (lab/lib.sh), torn down on exit.
#
# Usage: TUNDNS_A=/path/to/old/tundns TUNDNS_B=/path/to/new/tundns bench/dns-ab.sh   (as root)
# Env:   DURATION (seconds per run, default 5, at most 60), ROUNDS (default 3, at most 9),
#        RATE (queries/s for the CPU runs, default 20000), OUTSTANDING (default 100)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-20000}
OUTSTANDING=${OUTSTANDING:-100}
((DURATION >= 1 && DURATION <= 60)) || lab_die "DURATION must be 1..60 seconds"
((ROUNDS >= 1 && ROUNDS <= 9)) || lab_die "ROUNDS must be 1..9"
((RATE >= 100 && RATE <= 200000)) || lab_die "RATE must be 100..200000 queries/s"
((OUTSTANDING >= 1 && OUTSTANDING <= 1000)) || lab_die "OUTSTANDING must be 1..1000"
declare -A binary=([A]=${TUNDNS_A:?set TUNDNS_A to the first build} [B]=${TUNDNS_B:?set TUNDNS_B to the second build})
for build in A B; do [[ -x ${binary[$build]} ]] || lab_die "no tundns at ${binary[$build]}"; done

bench_lab tdab

queries="$LAB_DIR/queries.txt"
bench_lab_zone_queries "$queries"

# cpu_per_answer LABEL: one run at RATE queries/s; prints tundns's CPU µs per answer.
cpu_per_answer() {
    bench_fixed_rate "$1" "$LAB_TUNDNS_PID" "$LAB_PROXY_V4" "$queries" "$DURATION" "$RATE" -q "$OUTSTANDING"
    printf '%s\n' "$BENCH_CPU_US"
}

declare -A runs
lab_log "A: ${binary[A]}; B: ${binary[B]}; $ROUNDS rounds of $DURATION s runs; CPU at $RATE qps"
load_start=$(bench_load)
for ((round = 1; round <= ROUNDS; round++)); do
    lab_log "round $round"
    mapfile -t order < <(bench_round_order "$round" A B)
    for build in "${order[@]}"; do
        bench_start_tundns "${binary[$build]}" on
        bench_warm "$LAB_PROXY_V4" "$queries"
        runs[$build-hits-qps]+="$(bench_dnsperf "$build cache hits" "$LAB_PROXY_V4" "$queries" "$DURATION" -q "$OUTSTANDING") "
        runs[$build-hits-cpu]+="$(cpu_per_answer "$build cache hits") "
        lab_stop "$LAB_TUNDNS_PID"

        bench_start_tundns "${binary[$build]}" off
        runs[$build-forward-qps]+="$(bench_dnsperf "$build forwarding" "$LAB_PROXY_V4" "$queries" "$DURATION" -q "$OUTSTANDING") "
        runs[$build-forward-cpu]+="$(cpu_per_answer "$build forwarding") "
        lab_stop "$LAB_TUNDNS_PID"
    done
done
load_end=$(bench_load)

median() { printf '%s\n' $1 | bench_median; }
printf '\nmedian of %d rounds, %d s each (QPS at %d outstanding; CPU at %d qps):\n' \
    "$ROUNDS" "$DURATION" "$OUTSTANDING" "$RATE"
printf '%-12s %-16s %12s %12s %8s\n' path measure A B B/A
for path in hits forward; do
    for measure in qps cpu; do
        a=$(median "${runs[A-$path-$measure]}")
        b=$(median "${runs[B-$path-$measure]}")
        unit=$([[ $measure == qps ]] && echo "qps" || echo "us/answer")
        printf '%-12s %-16s %12s %12s %8s   (A: %s; B: %s)\n' "$path" "$unit" "$a" "$b" \
            "$(bench_ratio "$b" "$a")" "${runs[A-$path-$measure]% }" "${runs[B-$path-$measure]% }"
    done
done
printf 'load average (1 min) at the start %s, at the end %s (2 cores)\n' "$load_start" "$load_end"
