# shellcheck shell=bash
# Helpers shared by the DNS benchmarks (bench/dns-*.sh). Sourcing this file sources
# lab/lib.sh and lab/resolver-lib.sh too. Every client runs inside the lab's client namespace
# $LAB_C.

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../lab/lib.sh
source "$BENCH_ROOT/lab/lib.sh"
# shellcheck source=../lab/resolver-lib.sh
source "$BENCH_ROOT/lab/resolver-lib.sh"

TUNDNS_BIN=${TUNDNS_BIN:-$BENCH_ROOT/target/release/tundns}

# bench_lab PREFIX [TOOL...]: the lab every DNS benchmark starts from. Requires the tools all
# of them use plus TOOL..., then lab_init PREFIX, lab_network and lab_peer_network (which
# starts N's unbound, with $LAB_UNBOUND_INCLUDES if set, last).
bench_lab() {
    local prefix=$1
    shift
    lab_require_tools ip wg wireguard-go unbound dig dnsperf "$@"
    lab_init "$prefix"
    lab_network
    lab_peer_network
}

# bench_dnsperf LABEL SERVER QUERYFILE SECONDS [DNSPERF_OPTION...]: one bounded dnsperf run
# from C (100 outstanding unless the options say otherwise). Prints "LABEL QPS (lost ...)" to
# stderr and the QPS on stdout; the report stays in $LAB_DIR/dnsperf-LABEL.txt.
bench_dnsperf() {
    local label=$1 server=$2 queries=$3 seconds=$4 report qps lost
    shift 4
    report="$LAB_DIR/dnsperf-${label// /-}.txt"
    # -l bounds the run; timeout bounds dnsperf itself should it hang.
    timeout $((seconds + 20)) ip netns exec "$LAB_C" \
        dnsperf -s "$server" -d "$queries" -l "$seconds" -t 2 "$@" >"$report" 2>&1 ||
        lab_die "dnsperf against $label failed: $(cat "$report")"
    qps=$(awk '/Queries per second:/ { print $4 }' "$report")
    lost=$(awk '/Queries lost:/ { print $3, $4 }' "$report")
    [[ -n $qps ]] || lab_die "no QPS in dnsperf's report: $(cat "$report")"
    printf '  %-34s %10.0f qps   (lost %s)\n' "$label" "$qps" "$lost" >&2
    printf "%.0f\n" "$qps"
}

# bench_ratio A B: A / B to two decimals, or n/a.
bench_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# bench_median: the median of the numbers on stdin.
bench_median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench_verdict VALUE OP GOAL: "meets" or "MISSES" (OP is >= or <=).
bench_verdict() {
    awk -v v="$1" -v op="$2" -v g="$3" \
        'BEGIN { ok = (op == ">=") ? (v >= g) : (v <= g); print ok ? "meets the goal" : "MISSES the goal" }'
}

# bench_lab_zone_queries FILE: the lab zone's 64 host A records plus www A and AAAA, all
# answered by unbound's local-data (lab/unbound-zone.conf).
bench_lab_zone_queries() {
    local i
    for ((i = 0; i < 64; i++)); do printf 'host%d.lab.test A\n' "$i"; done >"$1"
    printf 'www.lab.test A\nwww.lab.test AAAA\n' >>"$1"
}

# bench_start_tundns BIN CACHE: tundns in C forwarding to N's unbound, its cache on or off.
bench_start_tundns() {
    LAB_DNSPROXY_EXTRA="Cache = $2" lab_start_resolver_tundns "$1"
}

# bench_start_dnsdist ADDR: dnsdist on ADDR:53 in C forwarding to N's unbound, no packet cache
# and no security polling (which would send a query for secpoll.powerdns.com).
bench_start_dnsdist() {
    local addr=$1
    cat >"$LAB_DIR/dnsdist-bench.conf" <<CONF
setLocal("$addr:53")
newServer({address="$LAB_UNBOUND_V4:53"})
setSecurityPollSuffix("")
CONF
    lab_spawn "$LAB_C" dnsdist-bench dnsdist --supervised --disable-syslog -C "$LAB_DIR/dnsdist-bench.conf"
    lab_wait 10 ip netns exec "$LAB_C" dig +time=1 +tries=1 +short "@$addr" www.lab.test A ||
        lab_die "dnsdist did not answer: $(cat "$LAB_DIR/dnsdist-bench.log")"
}

# bench_start_tun_echo BIN: the bare TUN echo (crates/tundns/examples/tun_echo) in C, on its own
# TUN; sets BENCH_ECHO_SERVER to the documentation address it answers for.
bench_start_tun_echo() {
    BENCH_ECHO_SERVER=203.0.113.53
    lab_spawn "$LAB_C" tun-echo "$1" tdecho 203.0.113.1/24
    lab_wait 10 ip -n "$LAB_C" route get "$BENCH_ECHO_SERVER" ||
        lab_die "tun_echo did not come up: $(cat "$LAB_DIR/tun-echo.log")"
}

# bench_rss_kib PID [FIELD]: VmRSS (or FIELD, e.g. VmHWM) of PID in KiB.
bench_rss_kib() {
    awk -v field="${2:-VmRSS}:" '$1 == field { print $2 }' "/proc/$1/status"
}

# bench_load: the 1-minute load average. On these 2-core machines anything much above 1 before
# a run means another workload shares the CPUs, and the figures (latency above all) suffer.
bench_load() { cut -d' ' -f1 /proc/loadavg; }
