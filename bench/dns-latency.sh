#!/usr/bin/env bash
# Per-query DNS latency, one query outstanding, with same-run baselines (issue 3):
#   (a) tundns cache hit       C -> 10.30.30.30 (TUN), cache on and warmed
#   (b) unbound on loopback    C -> unbound on C's 127.0.0.1, local-data (the cache-hit baseline)
#   (c) tundns forwarding      C -> 10.30.30.30, `Cache = off` -> unbound in N over the veth
#   (d) unbound over the veth  C -> the same unbound in N, asked directly
#   (e) bare TUN echo          C -> tun_echo (crates/tundns/examples) on its own TUN, which
#                              returns each query with QR set: the floor for any server
#                              behind a TUN on this machine
# Goals: (a) p50 <= 50 us; forwarding overhead (c) - (d) <= 100 us at p50.
#
# bench/dns-latency.py measures each target: COUNT sequential queries timed with
# perf_counter_ns, back to back. The targets of one tundns instance alternate for ROUNDS
# rounds and the medians of the rounds' percentiles are reported (the shared machines are
# noisy). The goals are judged by these figures.
#
# dnsperf -q 1 -v gives a second view: it paces itself to about 27 queries a second here, so
# its per-query times (1 us resolution, SPARSE queries per target) are those of sparse queries
# that find the CPUs idle, as an application's lookups usually do.
# Everything runs in throwaway namespaces (lab/lib.sh).
#
# Usage: bench/dns-latency.sh        (as root; tundns from $TUNDNS_BIN, default target/release/tundns;
#                                     cargo build --release -p tundns --example tun_echo)
# Env:   TUNDNS_BIN, TUN_ECHO_BIN (default target/release/examples/tun_echo), COUNT (queries
#        per target and round, default 2000, at most 100000), ROUNDS (default 3, at most 9),
#        SPARSE (dnsperf queries per target, default 200, at most 1000; 0 skips dnsperf)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

COUNT=${COUNT:-2000}
ROUNDS=${ROUNDS:-3}
SPARSE=${SPARSE:-200}
((COUNT >= 100 && COUNT <= 100000)) || lab_die "COUNT must be 100..100000"
((ROUNDS >= 1 && ROUNDS <= 9)) || lab_die "ROUNDS must be 1..9"
((SPARSE >= 0 && SPARSE <= 1000)) || lab_die "SPARSE must be 0..1000"
TUN_ECHO_BIN=${TUN_ECHO_BIN:-$ROOT/target/release/examples/tun_echo}
[[ -x $TUN_ECHO_BIN ]] || lab_die "no $TUN_ECHO_BIN: cargo build --release -p tundns --example tun_echo"

bench_lab tdl python3
lab_start_unbound "$LAB_C" 127.0.0.1
bench_start_tun_echo "$TUN_ECHO_BIN"
printf 'www.lab.test A\n' >"$LAB_DIR/one-query.txt"

declare -A P50 P90 P99 SP50 SP99 LABEL=(
    [hit]="(a) tundns cache hit"
    [loopback]="(b) unbound local-data, loopback"
    [forward]="(c) tundns forwarding, cache off"
    [direct]="(d) unbound in N over the veth"
    [echo]="(e) bare TUN echo"
)

# measure KEY SERVER: one round of the Python client; appends to P50[KEY] etc. (microseconds).
measure() {
    local key=$1 server=$2 line
    line=$(timeout 60 ip netns exec "$LAB_C" python3 "$ROOT/bench/dns-latency.py" "$server" \
        --count "$COUNT" --warmup 200 --max-seconds 30) ||
        lab_die "the latency client failed against ${LABEL[$key]}"
    P50[$key]+=" $(sed -n 's/.* p50=\([0-9.]*\).*/\1/p' <<<"$line")"
    P90[$key]+=" $(sed -n 's/.* p90=\([0-9.]*\).*/\1/p' <<<"$line")"
    P99[$key]+=" $(sed -n 's/.* p99=\([0-9.]*\).*/\1/p' <<<"$line")"
    printf '  %-34s %s\n' "${LABEL[$key]}" "${line#server=* }" >&2
}

# measure_sparse KEY SERVER: dnsperf -q 1 -v; sets SP50[KEY] and SP99[KEY] (microseconds).
measure_sparse() {
    local key=$1 server=$2 report="$LAB_DIR/dnsperf-sparse-$1.txt"
    ((SPARSE > 0)) || { SP50[$key]=-; SP99[$key]=-; return 0; }
    timeout 60 ip netns exec "$LAB_C" dnsperf -s "$server" -d "$LAB_DIR/one-query.txt" \
        -n "$SPARSE" -l 40 -q 1 -t 1 -v >"$report" 2>&1 ||
        lab_die "dnsperf -v against ${LABEL[$key]} failed: $(tail -5 "$report")"
    # A fast wrong answer is no answer: every one must be NOERROR.
    ! awk '$1 == ">" && $2 != "NOERROR" { bad = 1 } END { exit !bad }' "$report" ||
        lab_die "${LABEL[$key]} gave answers other than NOERROR: $(grep -m3 '^>' "$report")"
    read -r "SP50[$key]" "SP99[$key]" < <(awk '$1 == ">" { print $NF * 1e6 }' "$report" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.0f %.0f\n", v[int(0.5 * (NR - 1)) + 1], v[int(0.99 * (NR - 1)) + 1]; else print "n/a n/a" }')
    printf '  %-34s sparse (dnsperf -q 1): n=%s p50=%s p99=%s\n' "${LABEL[$key]}" \
        "$(grep -c '^>' "$report" || true)" "${SP50[$key]}" "${SP99[$key]}" >&2
}

# alternate KEY SERVER [KEY SERVER]...: ROUNDS rounds of all, alternating, then dnsperf on each.
alternate() {
    local round i targets=("$@")
    for ((round = 1; round <= ROUNDS; round++)); do
        for ((i = 0; i < ${#targets[@]}; i += 2)); do
            measure "${targets[i]}" "${targets[i + 1]}"
        done
    done
    for ((i = 0; i < ${#targets[@]}; i += 2)); do
        measure_sparse "${targets[i]}" "${targets[i + 1]}"
    done
}

med() { tr ' ' '\n' <<<"$1" | grep . | bench_median; }

load_start=$(bench_load)
lab_log "tundns: $TUNDNS_BIN; $ROUNDS rounds of $COUNT sequential queries per target"
bench_start_tundns "$TUNDNS_BIN" on
lab_in_c dig +time=1 +tries=1 +short "@$LAB_PROXY_V4" www.lab.test A >/dev/null # fills the cache
alternate hit "$LAB_PROXY_V4" loopback 127.0.0.1 echo "$BENCH_ECHO_SERVER"
lab_stop "$LAB_TUNDNS_PID"

bench_start_tundns "$TUNDNS_BIN" off
alternate forward "$LAB_PROXY_V4" direct "$LAB_UNBOUND_V4"
lab_stop "$LAB_TUNDNS_PID"

load_end=$(bench_load)
declare -A M50
printf '\nlatency in microseconds; back to back: medians of %d rounds of %d sequential queries; sparse: dnsperf -q 1, %d queries\n' \
    "$ROUNDS" "$COUNT" "$SPARSE"
printf '%-34s %8s %8s %8s   %12s %12s\n' target p50 p90 p99 "sparse p50" "sparse p99"
for key in hit loopback forward direct echo; do
    M50[$key]=$(med "${P50[$key]}")
    printf '%-34s %8s %8s %8s   %12s %12s\n' "${LABEL[$key]}" "${M50[$key]}" \
        "$(med "${P90[$key]}")" "$(med "${P99[$key]}")" "${SP50[$key]}" "${SP99[$key]}"
done
overhead=$(awk -v c="${M50[forward]}" -v d="${M50[direct]}" 'BEGIN { printf "%.1f", c - d }')
sparse_overhead=$(awk -v c="${SP50[forward]}" -v d="${SP50[direct]}" 'BEGIN { if (c == "-") print "-"; else printf "%.0f", c - d }')
printf 'cache-hit p50 = %s us (goal <= 50: %s); cache hit / loopback unbound at p50 = %s\n' \
    "${M50[hit]}" "$(bench_verdict "${M50[hit]}" '<=' 50)" "$(bench_ratio "${M50[hit]}" "${M50[loopback]}")"
printf 'bare TUN echo p50 = %s us (the floor of the cache-hit p50 here); cache hit - echo at p50 = %s us\n' \
    "${M50[echo]}" "$(awk -v a="${M50[hit]}" -v b="${M50[echo]}" 'BEGIN { printf "%.1f", a - b }')"
printf 'forwarding overhead (c) - (d) at p50 = %s us (goal <= 100: %s); sparse: %s us\n' \
    "$overhead" "$(bench_verdict "$overhead" '<=' 100)" "$sparse_overhead"
printf 'load average (1 min) at the start %s, at the end %s (2 cores)\n' "$load_start" "$load_end"
