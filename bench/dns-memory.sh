#!/usr/bin/env bash
# tundns's resident memory with NAMES cached answers (issue 3 goal: <= 64 MB with 100k).
#   1. tundns up in C (cache on, default CacheSize), forwarding to unbound in N, where every
#      name under bulk.test answers A 203.0.113.1 (lab/unbound-bulk-zone.conf): VmRSS idle.
#   2. dnsperf sends NAMES distinct names (n0.bulk.test ... ) once each through 10.30.30.30:
#      every one is a miss, forwarded and cached. VmRSS and VmHWM after.
#   3. unbound in N is stopped and the same NAMES queries are sent again: each NOERROR answer
#      can only have come from the cache, so their count is the number of names cached.
# Everything runs in throwaway namespaces (lab/lib.sh).
#
# Usage: bench/dns-memory.sh         (as root; tundns from $TUNDNS_BIN, default target/release/tundns)
# Env:   TUNDNS_BIN, NAMES (default 100000, at most 1000000), CACHE_SIZE (tundns CacheSize, default
#        its own default)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

NAMES=${NAMES:-100000}
CACHE_SIZE=${CACHE_SIZE:-}
((NAMES >= 1 && NAMES <= 1000000)) || lab_die "NAMES must be 1..1000000"

# shellcheck disable=SC2034 # read by lab_unbound_conf (lab/lib.sh)
LAB_UNBOUND_INCLUDES="$ROOT/lab/unbound-bulk-zone.conf"
bench_lab tdm
unbound_pid=$LAB_LAST_PID # lab_peer_network starts N's unbound last
lab_in_n dig +time=1 +tries=1 +short "@$LAB_UNBOUND_V4" n42.bulk.test A | grep -qx 203.0.113.1 ||
    lab_die "unbound in N does not answer the bulk.test names"

queries="$LAB_DIR/bulk-queries.txt"
awk -v n="$NAMES" 'BEGIN { for (i = 0; i < n; i++) printf "n%d.bulk.test A\n", i }' >"$queries"

LAB_DNSPROXY_EXTRA="Cache = on${CACHE_SIZE:+
CacheSize = $CACHE_SIZE}" lab_start_resolver_tundns "$TUNDNS_BIN"
pid=$LAB_TUNDNS_PID
[[ $(cat "/proc/$pid/comm") == tundns ]] || lab_die "pid $pid is not tundns"
sleep 1
rss_idle=$(bench_rss_kib "$pid")

# pass NAME: one bounded dnsperf pass over the names; prints "completed noerror" on stdout.
pass() {
    local report="$LAB_DIR/dnsperf-$1.txt"
    timeout 90 ip netns exec "$LAB_C" dnsperf -s "$LAB_PROXY_V4" -d "$queries" -n 1 -l 60 -q 100 -t 2 \
        >"$report" 2>&1 || lab_die "dnsperf ($1) failed: $(tail -20 "$report")"
    awk '/Queries completed:/ { c = $3 } /Response codes:/ { for (i = 3; i < NF; i += 2) if ($i == "NOERROR") n = $(i + 1) }
         /Queries per second:/ { q = $4 } END { printf "%d %d %.0f\n", c, n, q }' "$report"
}

load_start=$(bench_load)
lab_log "filling the cache with $NAMES names through $LAB_PROXY_V4"
read -r fill_completed fill_noerror fill_qps < <(pass fill)
sleep 1
rss_filled=$(bench_rss_kib "$pid")
hwm_filled=$(bench_rss_kib "$pid" VmHWM)

lab_log "upstream stopped; asking the same $NAMES names again"
lab_stop "$unbound_pid"
lab_wait 5 bash -c "! ip netns exec $LAB_N dig +time=1 +tries=1 @$LAB_UNBOUND_V4 n1.bulk.test A" ||
    lab_die "unbound in N is still answering"
read -r again_completed again_noerror again_qps < <(pass from-cache)
rss_after=$(bench_rss_kib "$pid")
hwm_after=$(bench_rss_kib "$pid" VmHWM)

load_end=$(bench_load)
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
printf '\ntundns memory, %d distinct names (CacheSize %s):\n' "$NAMES" "${CACHE_SIZE:-default}"
printf '%-44s %8s MiB\n' \
    "VmRSS idle (up, no query yet)" "$(mib "$rss_idle")" \
    "VmRSS after the fill" "$(mib "$rss_filled")" \
    "VmHWM after the fill" "$(mib "$hwm_filled")" \
    "VmRSS after the pass from the cache" "$(mib "$rss_after")" \
    "VmHWM at the end" "$(mib "$hwm_after")"
printf 'fill: %d answered, %d NOERROR, %s qps; upstream stopped: %d answered, %d NOERROR from the cache (%s qps)\n' \
    "$fill_completed" "$fill_noerror" "$fill_qps" "$again_completed" "$again_noerror" "$again_qps"
printf 'growth over idle = %s MiB, %s bytes per cached name\n' "$(mib $((rss_after - rss_idle)))" \
    "$(awk -v d=$((rss_after - rss_idle)) -v n="$again_noerror" 'BEGIN { if (n > 0) printf "%.0f", d * 1024 / n; else print "n/a" }')"
printf 'RSS with %d cached answers = %s MB (goal <= 64 MB: %s)\n' "$again_noerror" \
    "$(awk -v k="$hwm_after" 'BEGIN { printf "%.1f", k * 1024 / 1e6 }')" \
    "$(bench_verdict "$(awk -v k="$hwm_after" 'BEGIN { print k * 1024 / 1e6 }')" '<=' 64)"
printf 'load average (1 min) at the start %s, at the end %s (2 cores)\n' "$load_start" "$load_end"
