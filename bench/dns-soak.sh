#!/usr/bin/env bash
# The soak (issue 13, section 6): DURATION seconds of dnsperf at its maximum rate through
# 10.30.30.30 while the upstream goes away and comes back every FLAP seconds.
#   - tundns in C (cache on), forwarding to N's unbound, where every name under bulk.test
#     answers (lab/unbound-bulk-zone.conf); dnsperf asks 1,000,000 distinct names in a loop,
#     so the cache keeps missing and the upstream path stays busy.
#   - Every FLAP s, an nftables rule in N drops (or stops dropping) DNS to unbound: the
#     upstream goes silent, then comes back.
#   - After each return, a probe asks fresh names every 100 ms until unbound's answer
#     arrives: the time to the first answer is the recovery.
#   - Halfway through each outage, tundns's VmRSS and its upstream queries in flight
#     (metrics) are sampled; again 3 s after the load ends.
#   - dnsperf's lost queries are the silence the host got (SERVFAIL or REFUSED while the
#     upstream is gone are answers, not silence).
# Everything runs in throwaway namespaces (lab/lib.sh).
#
# Usage: bench/dns-soak.sh      (as root; tundns from $TUNDNS_BIN, default target/release/tundns)
# Env:   TUNDNS_BIN, DURATION (default 600, at most 3600), FLAP (default 5)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

DURATION=${DURATION:-600}
FLAP=${FLAP:-5}
((DURATION >= 10 && DURATION <= 3600)) || lab_die "DURATION must be 10..3600"
((FLAP >= 1 && FLAP <= 60)) || lab_die "FLAP must be 1..60"
((DURATION >= 4 * FLAP)) || lab_die "DURATION must hold at least two outages (4 x FLAP)"
METRICS=127.0.0.1:9153

# shellcheck disable=SC2034 # read by lab_unbound_conf (lab/lib.sh)
LAB_UNBOUND_INCLUDES="$ROOT/lab/unbound-bulk-zone.conf"
bench_lab tdsoak nft curl
lab_in_n dig +time=1 +tries=1 +short "@$LAB_UNBOUND_V4" n42.bulk.test A | grep -qx 203.0.113.1 ||
    lab_die "unbound in N does not answer the bulk.test names"
queries="$LAB_DIR/soak-queries.txt"
awk 'BEGIN { for (i = 0; i < 1000000; i++) printf "n%d.bulk.test A\n", i }' >"$queries"

# shellcheck disable=SC2034 # read by lab_start_resolver_tundns (lab/resolver-lib.sh)
LAB_DNSPROXY_EXTRA="Cache = on
MetricsAddress = $METRICS" lab_start_resolver_tundns "$TUNDNS_BIN"
pid=$LAB_TUNDNS_PID

in_flight() {
    lab_in_c curl -s --max-time 2 "http://$METRICS/metrics" |
        awk '$1 == "tundns_dns_upstream_in_flight" { printf "%d\n", $2 }'
}
upstream_gone() {
    lab_in_n nft -f - <<'NFT'
table inet soak {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport 53 drop
    tcp dport 53 drop
  }
}
NFT
}
upstream_back() { lab_in_n nft delete table inet soak; }

report="$LAB_DIR/dnsperf-soak.txt"
lab_log "soak: ${DURATION}s of dnsperf at its maximum rate, the upstream away every other ${FLAP}s"
timeout $((DURATION + 30)) ip netns exec "$LAB_C" \
    dnsperf -s "$LAB_PROXY_V4" -d "$queries" -l "$DURATION" -q 200 -t 5 >"$report" 2>&1 &
dnsperf_pid=$!
ticks_start=$(bench_cpu_ticks "$pid")
rss_min=$(bench_rss_kib "$pid")
rss_max=$rss_min
recoveries=()
in_flight_max=0
probe=0
started=$SECONDS
flaps=0
while ((SECONDS - started < DURATION - FLAP)); do
    sleep "$FLAP"
    upstream_gone
    flaps=$((flaps + 1))
    sleep "$(awk -v f="$FLAP" 'BEGIN { print f / 2 }')"
    rss=$(bench_rss_kib "$pid")
    ((rss > rss_max)) && rss_max=$rss
    ((rss < rss_min)) && rss_min=$rss
    flight=$(in_flight)
    ((${flight:-0} > in_flight_max)) && in_flight_max=${flight:-0}
    sleep "$(awk -v f="$FLAP" 'BEGIN { print f / 2 }')"
    upstream_back
    back=$(date +%s%N)
    # Fresh names (nothing cached) until one is answered from unbound; at most 10 s.
    recovered=
    for ((i = 0; i < 100; i++)); do
        probe=$((probe + 1))
        if lab_in_c dig +time=1 +tries=1 +short "@$LAB_PROXY_V4" "probe$probe.bulk.test" A |
            grep -qx 203.0.113.1; then
            recovered=$((($(date +%s%N) - back) / 1000000))
            break
        fi
        sleep 0.1
    done
    recoveries+=("${recovered:-never}")
done
wait "$dnsperf_pid" || lab_die "dnsperf failed: $(tail -20 "$report")"
((flaps > 0)) || lab_die "the upstream never went away"
ticks=$(($(bench_cpu_ticks "$pid") - ticks_start))
sleep 3
settled=$(in_flight)
rss_end=$(bench_rss_kib "$pid")

completed=$(awk '/Queries completed:/ { print $3 }' "$report")
lost=$(awk '/Queries lost:/ { print $3, $4 }' "$report")
qps=$(awk '/Queries per second:/ { print $4 }' "$report")
codes=$(awk '/Response codes:/ { $1 = $2 = ""; print }' "$report")
worst=$(printf '%s\n' "${recoveries[@]}" | awk '$1 == "never" { never = 1 } $1 != "never" && $1 > m { m = $1 } END { if (never) print "never"; else print m + 0 }')
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
cpu_us_per_answer=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$completed" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "n/a" }')

printf '\nsoak: %ds, the upstream away for %ds every %ds (%d times)\n' "$DURATION" "$FLAP" $((2 * FLAP)) "$flaps"
printf 'dnsperf: %s answered at %s qps, lost %s; response codes:%s\n' "$completed" "$qps" "$lost" "$codes"
printf 'tundns CPU: %s us per answer\n' "$cpu_us_per_answer"
printf 'VmRSS: min %s MiB, max %s MiB, at the end %s MiB\n' "$(mib "$rss_min")" "$(mib "$rss_max")" "$(mib "$rss_end")"
printf 'upstream queries in flight: at most %s halfway through an outage (dnsperf keeps 200 outstanding), %s 3 s after the load\n' "$in_flight_max" "${settled:-?}"
printf 'recovery after each return (ms): %s\n' "${recoveries[*]}"
printf 'worst recovery: %s ms (goal <= 1000: %s)\n' "$worst" \
    "$( [[ $worst == never ]] && echo MISSED || bench_verdict "$worst" '<=' 1000)"
