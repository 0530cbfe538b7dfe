#!/usr/bin/env bash
# Where a cached encrypted query's time goes in threads: for each of MODES, COUNT queries from
# dns-latency (crates/test-support) to tundns on the virtual IP, then the same to dnsdist
# (UDP, DoT and DoH with a packet cache, on C's loopback, in front of the same unbound), with:
#   - p50, p99, the server's CPU and thread runs per answer (dns-latency's own line);
#   - per server thread, its voluntary and involuntary context switches per query (from
#     /proc/PID/task/*/status): a thread that sleeps once per query beside the one that
#     answers is a hand-over, which on these VMs wakes a halted vCPU;
#   - for tundns, the packets the TUN carried each way per query (its interface counters):
#     a query and its answer are one each, a lone ACK or a second segment shows here.
# Everything runs in throwaway namespaces (lab/lib.sh), torn down on exit.
#
# Usage: bench/dns-threads.sh   (as root; tundns from $TUNDNS_BIN, default target/release/tundns;
#        dns-latency from $DNS_LATENCY_BIN, default target/release/dns-latency)
# Env:   MODES (dns-latency transports, default "dot1 dot doh"; dnsdist lacks doq), COUNT
#        (queries per transport, default 300, at most 10000), GAP_MS (0: back to back, the
#        default; at most 100), PIN (unset, `same` or `split`, as in dns-encrypted.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

MODES=${MODES:-dot1 dot doh}
COUNT=${COUNT:-300}
GAP_MS=${GAP_MS:-0}
PIN=${PIN:-}
((COUNT >= 10 && COUNT <= 10000)) || lab_die "COUNT must be 10..10000"
((GAP_MS >= 0 && GAP_MS <= 100)) || lab_die "GAP_MS must be 0..100"
((COUNT * GAP_MS <= 60000)) || lab_die "COUNT x GAP_MS must fit in 60 s"
bench_client_pin "$PIN"
DNS_LATENCY_BIN=${DNS_LATENCY_BIN:-$ROOT/target/release/dns-latency}
[[ -x $DNS_LATENCY_BIN ]] || lab_die "no dns-latency at $DNS_LATENCY_BIN (cargo build --release -p tundns-test-support --bin dns-latency)"

bench_lab tdt dnsdist curl taskset
bench_start_tundns "$TUNDNS_BIN" on
lab_in_c dig +time=1 +tries=1 +short "@$LAB_PROXY_V4" www.lab.test A >/dev/null # fills the cache
bench_start_encrypted_dnsdist

# switches PID: "TID NAME VOLUNTARY INVOLUNTARY" per thread, sorted by TID.
switches() {
    local task
    for task in /proc/"$1"/task/*; do
        printf '%s %s %s %s\n' "${task##*/}" "$(tr ' ' _ <"$task/comm")" \
            "$(awk '/^voluntary_ctxt_switches/ { print $2 }' "$task/status")" \
            "$(awk '/^nonvoluntary_ctxt_switches/ { print $2 }' "$task/status")"
    done | sort
}

# tun_packets: "RX TX" of tundns's interface.
tun_packets() {
    local counters=/sys/class/net/$LAB_C_IF/statistics
    lab_in_c cat "$counters/rx_packets" "$counters/tx_packets" | paste -sd' '
}

# measure NAME ADDRESS PID MODE: one dns-latency run, and the per-query figures around it.
measure() {
    local name=$1 address=$2 pid=$3 mode=$4 tun_before tun_after
    switches "$pid" >"$LAB_DIR/switches-before"
    tun_before=$(tun_packets)
    bench_placed "$PIN" "$pid" 120 "$DNS_LATENCY_BIN" "--gap-ms=$GAP_MS" "$address" www.lab.test \
        "$COUNT" "$mode" "$pid" >"$LAB_DIR/latency.txt" 2>&1 ||
        lab_die "dns-latency $mode against $name failed: $(tail -3 "$LAB_DIR/latency.txt")"
    tun_after=$(tun_packets)
    switches "$pid" >"$LAB_DIR/switches-after"
    printf '%-7s %s\n' "$name" "$(cat "$LAB_DIR/latency.txt")"
    # Threads that switched at least once per 100 queries; join gives "TID NAME VOLUNTARY
    # INVOLUNTARY NAME VOLUNTARY INVOLUNTARY", before then after.
    join "$LAB_DIR/switches-before" "$LAB_DIR/switches-after" | awk -v n="$COUNT" '
        { voluntary = ($6 - $3) / n; involuntary = ($7 - $4) / n }
        voluntary + involuntary >= 0.01 {
            printf "          %-16s %5.2f voluntary, %5.2f involuntary switches per query\n", $2, voluntary, involuntary
        }'
    if [[ $name == tundns ]]; then
        read -r rx_before tx_before <<<"$tun_before"
        read -r rx_after tx_after <<<"$tun_after"
        awk -v rx=$((rx_after - rx_before)) -v tx=$((tx_after - tx_before)) -v n="$COUNT" \
            'BEGIN { printf "          TUN packets per query: %.2f in, %.2f out\n", rx / n, tx / n }'
    fi
}

lab_log "$COUNT queries per transport, ${GAP_MS} ms apart${PIN:+, pinned: $PIN}"
for mode in $MODES; do
    measure tundns "$LAB_PROXY_V4" "$LAB_TUNDNS_PID" "$mode"
    [[ $mode == doq ]] || measure dnsdist "$BENCH_DNSDIST" "$BENCH_DNSDIST_PID" "$mode"
done
lab_stop "$BENCH_DNSDIST_PID"
lab_stop "$LAB_TUNDNS_PID"
