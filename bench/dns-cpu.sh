#!/usr/bin/env bash
# CPU per cached DNS answer at a fixed offered load (issue 11), four servers in one run:
#   tundns (cache hits)    dnsperf in C -> 10.30.30.30 (TUN), cache on and warmed: answered
#                          inline on the TUN reader
#   unbound (local-data)   dnsperf in C -> unbound on C's loopback, answering local-data
#   dnsdist (packet cache) dnsperf in C -> dnsdist on C's loopback, its packet cache warmed
#   bare TUN echo          dnsperf in C -> tun_echo (crates/tundns/examples) on its own TUN:
#                          one blocking read and one write per query, the floor behind a TUN
#   TUN echo, offloads     the same echo on a TUN opened as tundns opens its own, with the
#                          virtio-net header that the tunnel's offloads need on every read
#                          and write: the floor behind a TUN framed that way
# dnsperf offers RATE queries/s, below every server's ceiling, so that dnsperf (which saturates
# a core here) is not what is measured. For each server: answers/s and the CPU microseconds
# the serving process spent per answer (utime + stime from /proc/PID/stat, before and after).
# The five alternate for ROUNDS rounds, the order reversed in even rounds; prints each run, the
# medians and the ratios against the issue's goals: tundns / echo <= 1.1, tundns / unbound
# <= 0.6, and tundns against the echo framed as it is. Everything runs in throwaway
# namespaces (lab/lib.sh), torn down on exit.
#
# Usage: bench/dns-cpu.sh   (as root; cargo build --release -p tundns --bin tundns --example tun_echo)
# Env:   TUNDNS_BIN (default target/release/tundns), TUN_ECHO_BIN (default
#        target/release/examples/tun_echo), DURATION (seconds per run, default 5, at most 60),
#        ROUNDS (default 3, at most 9), RATE (queries/s, default 40000), OUTSTANDING (default 100),
#        PROFILE_DIR (if set: `perf record -e cpu-clock` of each server during its run in
#        round 1, into PROFILE_DIR/perf-SERVER.data, with PROFILE_CALL_GRAPH (perf's
#        --call-graph, default fp; dwarf for Rust's frames); profiling costs CPU, so do not record
#        that round's figures)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-40000}
OUTSTANDING=${OUTSTANDING:-100}
TUN_ECHO_BIN=${TUN_ECHO_BIN:-$ROOT/target/release/examples/tun_echo}
((DURATION >= 1 && DURATION <= 60)) || lab_die "DURATION must be 1..60 seconds"
((ROUNDS >= 1 && ROUNDS <= 9)) || lab_die "ROUNDS must be 1..9"
((RATE >= 100 && RATE <= 200000)) || lab_die "RATE must be 100..200000 queries/s"
((OUTSTANDING >= 1 && OUTSTANDING <= 1000)) || lab_die "OUTSTANDING must be 1..1000"
[[ -x $TUN_ECHO_BIN ]] || lab_die "no $TUN_ECHO_BIN: cargo build --release -p tundns --example tun_echo"

bench_lab tdcpu dnsdist

queries="$LAB_DIR/queries.txt"
bench_lab_zone_queries "$queries"

# Every server stays up for the whole run, idle while the others are measured; all but the
# echo have their caches warmed (unbound's local-data needs none).
declare -A server_addr server_pid
bench_start_tundns "$TUNDNS_BIN" on
bench_warm "$LAB_PROXY_V4" "$queries"
server_addr[tundns]=$LAB_PROXY_V4 server_pid[tundns]=$LAB_TUNDNS_PID
lab_start_unbound "$LAB_C" 127.0.0.1
server_addr[unbound]=127.0.0.1 server_pid[unbound]=$LAB_LAST_PID
bench_start_dnsdist 127.0.0.2 10000
bench_warm 127.0.0.2 "$queries"
server_addr[dnsdist]=127.0.0.2 server_pid[dnsdist]=$BENCH_DNSDIST_PID
bench_start_tun_echo "$TUN_ECHO_BIN"
server_addr[echo]=$BENCH_ECHO_SERVER server_pid[echo]=$BENCH_ECHO_PID
bench_start_tun_echo "$TUN_ECHO_BIN" --offload
server_addr[echo_offload]=$BENCH_ECHO_SERVER server_pid[echo_offload]=$BENCH_ECHO_PID

servers=(tundns unbound dnsdist echo echo_offload)
declare -A label=(
    [tundns]="tundns (cache hits)"
    [unbound]="unbound (local-data)"
    [dnsdist]="dnsdist (packet cache)"
    [echo]="bare TUN echo"
    [echo_offload]="TUN echo, offloads"
)
# profile SERVER: with PROFILE_DIR set, perf samples SERVER in the background during round 1.
profile() {
    profile_pid=
    [[ -n ${PROFILE_DIR:-} ]] && ((round == 1)) || return 0
    timeout $((DURATION + 10)) perf record -q -e cpu-clock --call-graph "${PROFILE_CALL_GRAPH:-fp}" -p "${server_pid[$1]}" \
        -o "$PROFILE_DIR/perf-$1.data" -- sleep $(((DURATION + 1) / 2)) >/dev/null 2>&1 &
    profile_pid=$!
}
if [[ -n ${PROFILE_DIR:-} ]]; then
    lab_require_tools perf
    mkdir -p "$PROFILE_DIR"
fi

declare -A answers_runs cpu_runs system_runs
load_start=$(bench_load)
lab_log "tundns: $TUNDNS_BIN; $ROUNDS rounds of ${#servers[@]} runs of $DURATION s at $RATE qps, $OUTSTANDING outstanding"
for ((round = 1; round <= ROUNDS; round++)); do
    lab_log "round $round (load $(bench_load))"
    mapfile -t order < <(bench_round_order "$round" "${servers[@]}")
    for server in "${order[@]}"; do
        profile "$server"
        bench_fixed_rate "${label[$server]}" "${server_pid[$server]}" "${server_addr[$server]}" \
            "$queries" "$DURATION" "$RATE" -q "$OUTSTANDING"
        answers_runs[$server]+="$BENCH_ANSWERS_PER_SECOND "
        cpu_runs[$server]+="$BENCH_CPU_US "
        system_runs[$server]+="$BENCH_SYSTEM_US "
        [[ -z $profile_pid ]] || wait "$profile_pid" || true
    done
done
load_end=$(bench_load)

median() { printf '%s\n' $1 | bench_median; }
declare -A cpu system
printf '\nmedian of %d rounds, %d s each, offered %d qps with %d outstanding:\n' \
    "$ROUNDS" "$DURATION" "$RATE" "$OUTSTANDING"
printf '%-24s %10s %14s %10s   %s\n' server answers/s "us CPU/answer" "in kernel" "(runs: us CPU/answer)"
for server in "${servers[@]}"; do
    cpu[$server]=$(median "${cpu_runs[$server]}")
    system[$server]=$(median "${system_runs[$server]}")
    printf '%-24s %10.0f %14.2f %10.2f   (%s)\n' "${label[$server]}" "$(median "${answers_runs[$server]}")" \
        "${cpu[$server]}" "${system[$server]}" "${cpu_runs[$server]% }"
done
echo_ratio=$(bench_ratio "${cpu[tundns]}" "${cpu[echo]}")
unbound_ratio=$(bench_ratio "${cpu[tundns]}" "${cpu[unbound]}")
printf 'CPU per answer, tundns / bare TUN echo = %s (goal <= 1.1: %s)\n' \
    "$echo_ratio" "$(bench_verdict "$echo_ratio" '<=' 1.1)"
printf 'CPU per answer, tundns / unbound       = %s (goal <= 0.6: %s)\n' \
    "$unbound_ratio" "$(bench_verdict "$unbound_ratio" '<=' 0.6)"
printf 'CPU per answer, tundns / dnsdist       = %s\n' "$(bench_ratio "${cpu[tundns]}" "${cpu[dnsdist]}")"
printf 'CPU per answer, tundns / TUN echo with offloads = %s; that echo / bare echo = %s\n' \
    "$(bench_ratio "${cpu[tundns]}" "${cpu[echo_offload]}")" \
    "$(bench_ratio "${cpu[echo_offload]}" "${cpu[echo]}")"
# What the echo goal leaves for tundns's own work: the kernel part of an answer (one read, one
# write, as the echo's) is not tundns's to cut.
printf "tundns's kernel time per answer / the echo's whole CPU per answer = %s\n" \
    "$(bench_ratio "${system[tundns]}" "${cpu[echo_offload]}")"
printf 'load average (1 min) at the start %s, at the end %s (2 cores)\n' "$load_start" "$load_end"
