#!/usr/bin/env bash
# DNS queries per second through tundns's virtual IP, with same-run baselines:
#   tundns     dnsperf in C -> 10.30.30.30 (TUN) -> forwarded to unbound in N
#   dnsdist    dnsperf in C -> dnsdist on C's loopback -> forwarded to the same unbound in N
#   unbound    dnsperf in C -> unbound on C's loopback, answering from local-data
# Prints QPS for each and the ratios. Everything runs in throwaway namespaces (lab/lib.sh).
#
# Usage: bench/dns-qps.sh            (as root; tundns from $TUNDNS_BIN, default target/release/tundns)
# Env:   TUNDNS_BIN, DURATION (seconds per run, default 10, at most 60), OUTSTANDING (default 100)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../lab/lib.sh
source "$ROOT/lab/lib.sh"

TUNDNS_BIN=${TUNDNS_BIN:-$ROOT/target/release/tundns}
DURATION=${DURATION:-10}
OUTSTANDING=${OUTSTANDING:-100}
((DURATION >= 1 && DURATION <= 60)) || lab_die "DURATION must be 1..60 seconds"

lab_require_tools ip wg wireguard-go unbound dig dnsperf
lab_init tdq
lab_network
lab_peer_network

# The query mix: the lab zone's A records (local-data in unbound, see lab/unbound-zone.conf).
for ((i = 0; i < 64; i++)); do printf 'host%d.lab.test A\n' "$i"; done >"$LAB_DIR/queries.txt"
printf 'www.lab.test A\nwww.lab.test AAAA\n' >>"$LAB_DIR/queries.txt"

# run_dnsperf LABEL SERVER: prints "LABEL QPS" and keeps dnsperf's report in the work dir.
run_dnsperf() {
    local label=$1 server=$2 report="$LAB_DIR/dnsperf-$1.txt" qps lost
    # -l bounds the run; timeout bounds dnsperf itself should it hang.
    timeout $((DURATION + 20)) ip netns exec "$LAB_C" \
        dnsperf -s "$server" -d "$LAB_DIR/queries.txt" -l "$DURATION" -q "$OUTSTANDING" -t 2 \
        >"$report" 2>&1 || lab_die "dnsperf against $label failed: $(cat "$report")"
    qps=$(awk '/Queries per second:/ {print $4}' "$report")
    lost=$(awk '/Queries lost:/ {print $3, $4}' "$report")
    [[ -n $qps ]] || lab_die "no QPS in dnsperf's report: $(cat "$report")"
    printf '%-8s %10.0f qps   (lost %s)\n' "$label" "$qps" "$lost" >&2
    printf '%s\n' "$qps"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

lab_log "tundns: $TUNDNS_BIN, $DURATION s per run, $OUTSTANDING outstanding queries"
lab_start_tundns "$TUNDNS_BIN" "$LAB_UNBOUND_V4"
qps_tundns=$(run_dnsperf tundns "$LAB_PROXY_V4")
lab_stop "$LAB_TUNDNS_PID"

if command -v dnsdist >/dev/null 2>&1; then
    cat >"$LAB_DIR/dnsdist.conf" <<CONF
setLocal("127.0.0.1:53")
newServer({address="$LAB_UNBOUND_V4:53"})
-- No security polling: it would send a DNS query for secpoll.powerdns.com.
setSecurityPollSuffix("")
CONF
    lab_spawn "$LAB_C" dnsdist dnsdist --supervised --disable-syslog -C "$LAB_DIR/dnsdist.conf"
    dnsdist_pid=$LAB_LAST_PID
    lab_wait 10 ip netns exec "$LAB_C" dig +time=1 +tries=1 +short @127.0.0.1 www.lab.test A ||
        lab_die "dnsdist did not answer: $(cat "$LAB_DIR/dnsdist.log")"
    qps_dnsdist=$(run_dnsperf dnsdist 127.0.0.1)
    lab_stop "$dnsdist_pid"
else
    lab_log "dnsdist not installed: skipping the dnsdist baseline"
    qps_dnsdist=0
fi

lab_start_unbound "$LAB_C" 127.0.0.1
qps_unbound=$(run_dnsperf unbound 127.0.0.1)

printf '\n'
printf '%-22s %10.0f qps\n' "tundns (forwarding)" "$qps_tundns" \
    "dnsdist (forwarding)" "$qps_dnsdist" "unbound (local-data)" "$qps_unbound"
printf 'ratio tundns/unbound = %s\n' "$(ratio "$qps_tundns" "$qps_unbound")"
printf 'ratio tundns/dnsdist = %s\n' "$(ratio "$qps_tundns" "$qps_dnsdist")"
