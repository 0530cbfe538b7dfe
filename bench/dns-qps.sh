#!/usr/bin/env bash
# DNS queries per second through tundns's virtual IP, with same-run baselines (issue 3):
#   tundns (cache hits)         dnsperf in C -> 10.30.30.30 (TUN), cache on and warmed: every
#                               answer comes from the cache, inline on the TUN reader
#   unbound (local-data)        dnsperf in C -> unbound on C's loopback, answering local-data
#   tundns (forward, cache off) dnsperf in C -> 10.30.30.30, `Cache = off`: every query is
#                               forwarded to unbound in N over the veth
#   dnsdist (forward)           dnsperf in C -> dnsdist on C's loopback (no packet cache) ->
#                               the same unbound in N
#   bare TUN echo               dnsperf in C -> tun_echo (crates/tundns/examples), a blocking
#                               read/write loop on its own TUN that returns each query with QR
#                               set: the ceiling for any server behind a TUN on this machine
# The five alternate for ROUNDS rounds (the shared machines are noisy); prints each run, the
# medians and the ratios against the issue's goals: cache hits / unbound >= 1.5 and
# cache off / dnsdist >= 1.0, and the same ratios for the bare echo. Everything runs in
# throwaway namespaces (lab/lib.sh).
#
# Usage: bench/dns-qps.sh            (as root; tundns from $TUNDNS_BIN, default target/release/tundns;
#                                     cargo build --release -p tundns --example tun_echo)
# Env:   TUNDNS_BIN, TUN_ECHO_BIN (default target/release/examples/tun_echo), DURATION (seconds
#        per run, default 10, at most 60), ROUNDS (default 1, at most 9), OUTSTANDING (default
#        100), CLIENTS (dnsperf's client sockets, default 1), THREADS (dnsperf's threads, default
#        1), PROFILE_DIR (if set: `perf record -e cpu-clock -g` of tundns during round 1's two tundns runs, into PROFILE_DIR/perf-{hits,forward}.data;
#        profiling slows tundns, so do not record those figures)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-1}
OUTSTANDING=${OUTSTANDING:-100}
CLIENTS=${CLIENTS:-1}
THREADS=${THREADS:-1}
TUN_ECHO_BIN=${TUN_ECHO_BIN:-$ROOT/target/release/examples/tun_echo}
((DURATION >= 1 && DURATION <= 60)) || lab_die "DURATION must be 1..60 seconds"
((ROUNDS >= 1 && ROUNDS <= 9)) || lab_die "ROUNDS must be 1..9"
((OUTSTANDING >= 1 && OUTSTANDING <= 1000)) || lab_die "OUTSTANDING must be 1..1000"
((CLIENTS >= 1 && CLIENTS <= 64)) || lab_die "CLIENTS must be 1..64"
((THREADS >= 1 && THREADS <= CLIENTS)) || lab_die "THREADS must be 1..CLIENTS"
# dnsperf's load, the same for every server.
load=(-q "$OUTSTANDING" -c "$CLIENTS" -T "$THREADS")
[[ -x $TUN_ECHO_BIN ]] || lab_die "no $TUN_ECHO_BIN: cargo build --release -p tundns --example tun_echo"

bench_lab tdq dnsdist

queries="$LAB_DIR/queries.txt"
bench_lab_zone_queries "$queries"
# unbound on 127.0.0.1 and dnsdist on 127.0.0.2, both in C, both idle while the others run.
lab_start_unbound "$LAB_C" 127.0.0.1
bench_start_dnsdist 127.0.0.2
bench_start_tun_echo "$TUN_ECHO_BIN"

# profile NAME: with PROFILE_DIR set, perf samples tundns in the background for most of the run.
profile() {
    profile_pid=
    [[ -n ${PROFILE_DIR:-} ]] && ((round == 1)) || return 0
    mkdir -p "$PROFILE_DIR"
    timeout $((DURATION + 10)) perf record -q -e cpu-clock -g -p "$LAB_TUNDNS_PID" \
        -o "$PROFILE_DIR/perf-$1.data" -- sleep $(((DURATION + 1) / 2)) >/dev/null 2>&1 &
    profile_pid=$!
}

[[ -z ${PROFILE_DIR:-} ]] || lab_require_tools perf
load_start=$(bench_load)
lab_log "tundns: $TUNDNS_BIN; $ROUNDS rounds of 5 runs of $DURATION s, $OUTSTANDING outstanding queries from $CLIENTS sockets on $THREADS threads"
echo_runs=()
hits_runs=()
unbound_runs=()
forward_runs=()
dnsdist_runs=()
for ((round = 1; round <= ROUNDS; round++)); do
    lab_log "round $round"
    bench_start_tundns "$TUNDNS_BIN" on
    bench_warm "$LAB_PROXY_V4" "$queries"
    profile hits
    hits_runs+=("$(bench_dnsperf "tundns (cache hits)" "$LAB_PROXY_V4" "$queries" "$DURATION" "${load[@]}")")
    [[ -z $profile_pid ]] || wait "$profile_pid" || true
    lab_stop "$LAB_TUNDNS_PID"

    unbound_runs+=("$(bench_dnsperf "unbound (local-data, loopback)" 127.0.0.1 "$queries" "$DURATION" "${load[@]}")")

    bench_start_tundns "$TUNDNS_BIN" off
    profile forward
    forward_runs+=("$(bench_dnsperf "tundns (forwarding, cache off)" "$LAB_PROXY_V4" "$queries" "$DURATION" "${load[@]}")")
    [[ -z $profile_pid ]] || wait "$profile_pid" || true
    lab_stop "$LAB_TUNDNS_PID"

    dnsdist_runs+=("$(bench_dnsperf "dnsdist (forwarding)" 127.0.0.2 "$queries" "$DURATION" "${load[@]}")")

    echo_runs+=("$(bench_dnsperf "bare TUN echo" "$BENCH_ECHO_SERVER" "$queries" "$DURATION" "${load[@]}")")
done

qps_hits=$(printf '%s\n' "${hits_runs[@]}" | bench_median)
qps_unbound=$(printf '%s\n' "${unbound_runs[@]}" | bench_median)
qps_forward=$(printf '%s\n' "${forward_runs[@]}" | bench_median)
qps_dnsdist=$(printf '%s\n' "${dnsdist_runs[@]}" | bench_median)
qps_echo=$(printf '%s\n' "${echo_runs[@]}" | bench_median)
cached_ratio=$(bench_ratio "$qps_hits" "$qps_unbound")
forward_ratio=$(bench_ratio "$qps_forward" "$qps_dnsdist")

load_end=$(bench_load)
printf '\nmedian of %d rounds, %d s each, %d outstanding from %d sockets on %d threads:\n' \
    "$ROUNDS" "$DURATION" "$OUTSTANDING" "$CLIENTS" "$THREADS"
printf '%-32s %10.0f qps   (runs: %s)\n' \
    "tundns (cache hits)" "$qps_hits" "${hits_runs[*]}" \
    "unbound (local-data, loopback)" "$qps_unbound" "${unbound_runs[*]}" \
    "tundns (forwarding, cache off)" "$qps_forward" "${forward_runs[*]}" \
    "dnsdist (forwarding)" "$qps_dnsdist" "${dnsdist_runs[*]}" \
    "bare TUN echo" "$qps_echo" "${echo_runs[*]}"
printf 'ratio tundns cache hits / unbound local-data = %s (goal >= 1.5: %s)\n' \
    "$cached_ratio" "$(bench_verdict "$cached_ratio" '>=' 1.5)"
printf 'ratio tundns cache off / dnsdist             = %s (goal >= 1.0: %s)\n' \
    "$forward_ratio" "$(bench_verdict "$forward_ratio" '>=' 1.0)"
printf 'ratio bare TUN echo / unbound local-data     = %s (the ceiling of the first ratio here)\n' \
    "$(bench_ratio "$qps_echo" "$qps_unbound")"
printf 'ratio tundns cache hits / bare TUN echo      = %s\n' "$(bench_ratio "$qps_hits" "$qps_echo")"
printf 'load average (1 min) at the start %s, at the end %s (2 cores)\n' "$load_start" "$load_end"
