#!/usr/bin/env bash
# TCP throughput through the tunnel, with a same-run baseline:
#   tundns       iperf3 in C -> tundns -> wireguard-go in N -> iperf3 server
#   no rules     as tundns, with the DNS proxy off: the filter has no rules to check
#   wireguard-go iperf3 in C -> wireguard-go (same keys, addresses) -> the same peer and server
# The two alternate for ROUNDS rounds (the shared machines are noisy); prints each run, the
# medians in Gbit/s and their ratio. Everything runs in throwaway namespaces (lab/lib.sh).
#
# Usage: bench/tunnel-throughput.sh  (as root; tundns from $TUNDNS_BIN, default target/release/tundns)
# Env:   TUNDNS_BIN, DURATION (seconds per run, default 10, at most 60), ROUNDS (default 3),
#        IPERF_ARGS (extra iperf3 client options, e.g. "-P 4" or "-R")
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../lab/lib.sh
source "$ROOT/lab/lib.sh"

TUNDNS_BIN=${TUNDNS_BIN:-$ROOT/target/release/tundns}
DURATION=${DURATION:-10}
IPERF_ARGS=${IPERF_ARGS:-}
ROUNDS=${ROUNDS:-3}
((DURATION >= 1 && DURATION <= 60)) || lab_die "DURATION must be 1..60 seconds"
((ROUNDS >= 1 && ROUNDS <= 9)) || lab_die "ROUNDS must be 1..9"

lab_require_tools ip wg wireguard-go unbound dig iperf3 ping
lab_init tdi
lab_network
lab_peer_network
lab_spawn "$LAB_N" iperf3-server iperf3 -s -B "$LAB_PEER_TUNNEL_V4"

# run_iperf LABEL: prints "LABEL Gbit/s" to stderr and the Gbit/s on stdout.
run_iperf() {
    local label=$1 report="$LAB_DIR/iperf3-$1.txt" gbits
    # shellcheck disable=SC2086 # IPERF_ARGS is a list of options
    timeout $((DURATION + 20)) ip netns exec "$LAB_C" \
        iperf3 -c "$LAB_PEER_TUNNEL_V4" -t "$DURATION" -f g $IPERF_ARGS >"$report" 2>&1 ||
        lab_die "iperf3 through $label failed: $(cat "$report")"
    gbits=$(awk '/receiver/ && /Gbits\/sec/ { v = $(NF - 2) } END { print v }' "$report")
    [[ -n $gbits ]] || lab_die "no receiver figure in iperf3's report: $(cat "$report")"
    printf '%-13s %8s Gbit/s\n' "$label" "$gbits" >&2
    printf '%s\n' "$gbits"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

lab_log "tundns: $TUNDNS_BIN; $ROUNDS rounds of $DURATION s each, alternating${IPERF_ARGS:+; iperf3 $IPERF_ARGS}"
tundns_runs=()
norules_runs=()
wggo_runs=()
for ((round = 1; round <= ROUNDS; round++)); do
    lab_start_tundns "$TUNDNS_BIN"
    lab_wait 10 ip netns exec "$LAB_C" iperf3 -c "$LAB_PEER_TUNNEL_V4" -t 1 ||
        lab_die "the iperf3 server in N does not answer: $(cat "$LAB_DIR/iperf3-server.log")"
    tundns_runs+=("$(run_iperf tundns)")
    lab_stop "$LAB_TUNDNS_PID"

    LAB_DNSPROXY=off lab_start_tundns "$TUNDNS_BIN"
    norules_runs+=("$(run_iperf no-rules)")
    lab_stop "$LAB_TUNDNS_PID"

    lab_start_wireguard_go_client
    wggo_client_pid=$LAB_LAST_PID
    wggo_runs+=("$(run_iperf wireguard-go)")
    lab_stop "$wggo_client_pid"
done

gbits_tundns=$(printf '%s\n' "${tundns_runs[@]}" | median)
gbits_norules=$(printf '%s\n' "${norules_runs[@]}" | median)
gbits_wggo=$(printf '%s\n' "${wggo_runs[@]}" | median)
printf '\n'
printf 'median of %d runs:\n' "$ROUNDS"
printf 'tundns        %8.2f Gbit/s   (runs: %s)\n' "$gbits_tundns" "${tundns_runs[*]}"
printf 'no rules      %8.2f Gbit/s   (runs: %s)\n' "$gbits_norules" "${norules_runs[*]}"
printf 'wireguard-go  %8.2f Gbit/s   (runs: %s)\n' "$gbits_wggo" "${wggo_runs[*]}"
awk -v a="$gbits_tundns" -v b="$gbits_wggo" \
    'BEGIN { if (b > 0) printf "ratio tundns/wireguard-go = %.2f\n", a / b; else print "ratio n/a" }'
awk -v a="$gbits_tundns" -v b="$gbits_norules" \
    'BEGIN { if (b > 0) printf "ratio rules/no rules = %.3f\n", a / b; else print "ratio n/a" }'
