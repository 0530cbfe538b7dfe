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

# bench_run_dnsperf LABEL SERVER QUERYFILE SECONDS [DNSPERF_OPTION...]: one bounded dnsperf run
# from C; its report goes to $LAB_DIR/dnsperf-LABEL.txt, whose path is in $BENCH_REPORT.
bench_run_dnsperf() {
    local label=$1 server=$2 queries=$3 seconds=$4
    shift 4
    BENCH_REPORT="$LAB_DIR/dnsperf-${label// /-}.txt"
    # -l bounds the run; timeout bounds dnsperf itself should it hang.
    timeout $((seconds + 20)) ip netns exec "$LAB_C" \
        dnsperf -s "$server" -d "$queries" -l "$seconds" -t 2 "$@" >"$BENCH_REPORT" 2>&1 ||
        lab_die "dnsperf against $label failed: $(cat "$BENCH_REPORT")"
}

# bench_dnsperf LABEL SERVER QUERYFILE SECONDS [DNSPERF_OPTION...]: one bounded dnsperf run
# from C (100 outstanding unless the options say otherwise). Prints "LABEL QPS (lost ...)" to
# stderr and the QPS on stdout; the report stays in $LAB_DIR/dnsperf-LABEL.txt.
bench_dnsperf() {
    local label=$1 qps lost
    bench_run_dnsperf "$@"
    qps=$(awk '/Queries per second:/ { print $4 }' "$BENCH_REPORT")
    lost=$(awk '/Queries lost:/ { print $3, $4 }' "$BENCH_REPORT")
    [[ -n $qps ]] || lab_die "no QPS in dnsperf's report: $(cat "$BENCH_REPORT")"
    printf '  %-34s %10.0f qps   (lost %s)\n' "$label" "$qps" "$lost" >&2
    printf "%.0f\n" "$qps"
}

# bench_cpu_ticks [--system] PID...: utime + stime (with --system, stime alone) of the PIDs
# together, in clock ticks (fields 14 and 15 of /proc/PID/stat, counted after the command name,
# which may hold spaces).
bench_cpu_ticks() {
    local pid total=0 fields='$12 + $13'
    [[ ${1:-} != --system ]] || { fields='$13'; shift; }
    for pid in "$@"; do
        [[ -r /proc/$pid/stat ]] || lab_die "process $pid is gone"
        total=$((total + $(awk "{ sub(/^.*\\) /, \"\"); print $fields }" "/proc/$pid/stat")))
    done
    printf '%s\n' "$total"
}
BENCH_TICKS_PER_SECOND=$(getconf CLK_TCK)

# bench_tcp_retransmits NS: the TCP segments NS's kernel has retransmitted so far (RetransSegs
# in /proc/net/snmp): lost packets, which a throughput figure alone hides.
bench_tcp_retransmits() {
    ip netns exec "$1" awk '/^Tcp:/ { if (!column) { for (i = 1; i <= NF; i++) if ($i == "RetransSegs") column = i } else print $column }' /proc/net/snmp
}

# bench_fixed_rate LABEL PID SERVER QUERYFILE SECONDS RATE [DNSPERF_OPTION...]: one dnsperf run
# offering RATE queries/s to SERVER, which PID serves. Sets BENCH_ANSWERS_PER_SECOND,
# BENCH_CPU_US, the CPU microseconds PID spent per answer, and BENCH_SYSTEM_US, the part of
# them spent in the kernel (stime), and prints them to stderr.
bench_fixed_rate() {
    local label=$1 pid=$2 server=$3 queries=$4 seconds=$5 rate=$6 before after answers
    local system_before system_after
    shift 6
    before=$(bench_cpu_ticks "$pid")
    system_before=$(bench_cpu_ticks --system "$pid")
    bench_run_dnsperf "$label at $rate qps" "$server" "$queries" "$seconds" -Q "$rate" "$@"
    after=$(bench_cpu_ticks "$pid")
    system_after=$(bench_cpu_ticks --system "$pid")
    answers=$(awk '/Queries completed:/ { print $3 }' "$BENCH_REPORT")
    [[ -n $answers && $answers -gt 0 ]] || lab_die "no answers in dnsperf's report: $(cat "$BENCH_REPORT")"
    BENCH_ANSWERS_PER_SECOND=$(awk '/Queries per second:/ { printf "%.0f", $4 }' "$BENCH_REPORT")
    BENCH_CPU_US=$(awk -v t=$((after - before)) -v hz="$BENCH_TICKS_PER_SECOND" -v n="$answers" \
        'BEGIN { printf "%.3f", t * 1e6 / hz / n }')
    BENCH_SYSTEM_US=$(awk -v t=$((system_after - system_before)) -v hz="$BENCH_TICKS_PER_SECOND" -v n="$answers" \
        'BEGIN { printf "%.3f", t * 1e6 / hz / n }')
    printf '  %-34s %10s answers/s %8.2f us CPU per answer (%.2f in the kernel)\n' \
        "$label" "$BENCH_ANSWERS_PER_SECOND" "$BENCH_CPU_US" "$BENCH_SYSTEM_US" >&2
}

# bench_warm SERVER QUERYFILE: two bounded passes over the query file, one query at a time, so
# that every later query of that file is a cache hit.
bench_warm() {
    timeout 20 ip netns exec "$LAB_C" dnsperf -s "$1" -d "$2" -n 2 -q 1 -t 2 \
        >"$LAB_DIR/dnsperf-warm.txt" 2>&1 || lab_die "warming $1 failed: $(cat "$LAB_DIR/dnsperf-warm.txt")"
}

# bench_ratio A B: A / B to two decimals, or n/a.
bench_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# bench_median: the median of the numbers on stdin.
bench_median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench_round_order ROUND ITEM...: the ITEMs, one per line, reversed in even rounds, so that
# none always runs first, on a cooler or a warmer machine.
bench_round_order() {
    local round=$1
    shift
    if ((round % 2)); then printf '%s\n' "$@"; else printf '%s\n' "$@" | tac; fi
}

# bench_verdict VALUE OP GOAL: "meets" or "MISSES" (OP is >= or <=); "n/a" for a VALUE of n/a.
bench_verdict() {
    [[ $1 != n/a ]] || { echo n/a; return; }
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

# bench_start_dnsdist ADDR [CACHE_ENTRIES]: dnsdist on ADDR:53 in C forwarding to N's unbound,
# with no security polling (which would send a query for secpoll.powerdns.com) and a packet
# cache of CACHE_ENTRIES answers if given, none otherwise. Its pid is $BENCH_DNSDIST_PID.
bench_start_dnsdist() {
    local addr=$1 cache_entries=${2:-}
    cat >"$LAB_DIR/dnsdist-bench.conf" <<CONF
setLocal("$addr:53")
newServer({address="$LAB_UNBOUND_V4:53"})
setSecurityPollSuffix("")
CONF
    [[ -z $cache_entries ]] ||
        printf 'getPool(""):setCache(newPacketCache(%d))\n' "$cache_entries" >>"$LAB_DIR/dnsdist-bench.conf"
    lab_spawn "$LAB_C" dnsdist-bench dnsdist --supervised --disable-syslog -C "$LAB_DIR/dnsdist-bench.conf"
    BENCH_DNSDIST_PID=$LAB_LAST_PID
    lab_wait 10 ip netns exec "$LAB_C" dig +time=1 +tries=1 +short "@$addr" www.lab.test A ||
        lab_die "dnsdist did not answer: $(cat "$LAB_DIR/dnsdist-bench.log")"
}

# bench_start_encrypted_dnsdist: the reference for encrypted DNS, dnsdist in C on
# $BENCH_DNSDIST (127.0.0.2, C's loopback: its traffic crosses no TUN, which favours it) with
# UDP 53, DoT 853 and DoH 443 at /dns-query and a packet cache, in front of N's unbound,
# presenting tundns's own identity ($BENCH_IDENTITY; tundns must be up). Returns once its DoH
# and UDP answer, the UDP query filling its cache. Its pid is $BENCH_DNSDIST_PID.
bench_start_encrypted_dnsdist() {
    local identities=("/var/lib/tundns/netns/$LAB_C/"*.dns-identity.pem)
    [[ ${#identities[@]} -eq 1 && -r ${identities[0]} ]] ||
        lab_die "expected one identity of tundns's in /var/lib/tundns/netns/$LAB_C: ${identities[*]}"
    BENCH_IDENTITY=${identities[0]}
    BENCH_DNSDIST=127.0.0.2
    cat >"$LAB_DIR/dnsdist-encrypted.conf" <<CONF
setLocal("$BENCH_DNSDIST:53")
addTLSLocal("$BENCH_DNSDIST:853", "$BENCH_IDENTITY", "$BENCH_IDENTITY")
addDOHLocal("$BENCH_DNSDIST:443", "$BENCH_IDENTITY", "$BENCH_IDENTITY", "/dns-query")
newServer({address="$LAB_UNBOUND_V4:53"})
setSecurityPollSuffix("")
getPool(""):setCache(newPacketCache(10000))
CONF
    lab_spawn "$LAB_C" dnsdist-encrypted dnsdist --supervised --disable-syslog \
        -C "$LAB_DIR/dnsdist-encrypted.conf"
    BENCH_DNSDIST_PID=$LAB_LAST_PID
    lab_wait 10 ip netns exec "$LAB_C" curl -sk -o /dev/null --max-time 2 \
        "https://$BENCH_DNSDIST/dns-query?dns=AAABAAABAAAAAAAAA3d3dwNsYWIEdGVzdAAAAQAB" ||
        lab_die "dnsdist's DoH did not answer: $(cat "$LAB_DIR/dnsdist-encrypted.log")"
    lab_in_c dig +time=1 +tries=1 +short "@$BENCH_DNSDIST" www.lab.test A >/dev/null ||
        lab_die "dnsdist did not answer over UDP"
}

# bench_client_pin PIN: sets BENCH_CLIENT_PIN, the command prefix that places a client as
# PIN says: unset (the scheduler places it), `same` (CPU 0, where bench_placed pins the
# server) or `split` (CPU 1).
bench_client_pin() {
    BENCH_CLIENT_PIN=()
    case $1 in
    '') ;;
    same) BENCH_CLIENT_PIN=(taskset -c 0) ;;
    split) BENCH_CLIENT_PIN=(taskset -c 1) ;;
    *) lab_die "PIN is same, split or unset" ;;
    esac
    [[ $1 != split ]] || taskset -c 1 true 2>/dev/null || lab_die "PIN=split needs CPUs 0 and 1"
}

# bench_placed PIN PID SECONDS CMD...: runs CMD in C, bounded by SECONDS, placed as PIN says
# (bench_client_pin PIN first), with PID's threads on CPU 0 meanwhile when PIN is set and
# their own mask restored after. Returns CMD's status.
bench_placed() {
    local pin=$1 pid=$2 seconds=$3 mask status=0
    shift 3
    if [[ -n $pin ]]; then
        # taskset -p prints "pid N's current affinity mask: MASK".
        mask=$(taskset -p "$pid" | awk '{ print $NF }')
        taskset -a -p -c 0 "$pid" >/dev/null || lab_die "cannot pin process $pid to CPU 0"
    fi
    timeout "$seconds" ip netns exec "$LAB_C" "${BENCH_CLIENT_PIN[@]}" "$@" || status=$?
    [[ -z $pin ]] || taskset -a -p "$mask" "$pid" >/dev/null || lab_die "cannot unpin process $pid"
    return "$status"
}

# bench_proxy_lab PREFIX [TOOL...]: the lab the proxy benchmarks start from: C and N with
# N's wireguard-go (with PEER=tundns, tundns in its place) and unbound, and tundns ($TUNDNS_BIN) in C serving SOCKS5 on 127.0.0.1:1080
# and on the virtual IP (10.30.30.30:1080), and the HTTP proxy on 127.0.0.1:3128.
bench_proxy_lab() {
    local prefix=$1
    shift
    lab_require_tools ip wg wireguard-go unbound python3 "$@"
    lab_init "$prefix"
    lab_network
    lab_peer_network
    if [[ ${PEER:-wireguard-go} == tundns ]]; then
        # wireguard-go exits with its interface; tundns takes N's end with the same keys.
        ip -n "$LAB_N" link del "$LAB_N_WG"
        bench_start_tundns_peer
    fi
    LAB_TUNDNS_EXTRA=$'[Proxy]\nSOCKS5 = 127.0.0.1:1080, 10.30.30.30:1080\nHTTP = 127.0.0.1:3128' \
        lab_start_tundns "$TUNDNS_BIN"
}

# bench_wait_peer_server NAME PORT: waits (10 s at most) until the server N runs under the
# log name NAME accepts connections on N's tunnel address and PORT.
bench_wait_peer_server() {
    local name=$1 port=$2
    lab_wait 10 ip netns exec "$LAB_N" python3 -c \
        "import socket; socket.create_connection(('$LAB_PEER_TUNNEL_V4', $port), timeout=1)" ||
        lab_die "the $name in N did not start: $(cat "$LAB_DIR/$name.log")"
}

# bench_start_tun_echo BIN [--offload]: the bare TUN echo (crates/tundns/examples/tun_echo) in C,
# on its own TUN (with --offload, framed with the virtio-net header as tundns's is, on another
# TUN and network); sets BENCH_ECHO_SERVER to the documentation address it answers for and
# BENCH_ECHO_PID.
bench_start_tun_echo() {
    local name=tdecho network=203.0.113.1/25
    BENCH_ECHO_SERVER=203.0.113.53
    if [[ ${2:-} == --offload ]]; then
        name=tdechoo network=203.0.113.129/25
        BENCH_ECHO_SERVER=203.0.113.153
    fi
    lab_spawn "$LAB_C" "$name" "$1" "$name" "$network" "${@:2}"
    BENCH_ECHO_PID=$LAB_LAST_PID
    lab_wait 10 ip -n "$LAB_C" route get "$BENCH_ECHO_SERVER" ||
        lab_die "tun_echo did not come up: $(cat "$LAB_DIR/$name.log")"
}

# bench_rss_kib PID [FIELD]: VmRSS (or FIELD, e.g. VmHWM) of PID in KiB.
bench_rss_kib() {
    awk -v field="${2:-VmRSS}:" '$1 == field { print $2 }' "/proc/$1/status"
}

# bench_machine_ticks: the machine's CPU time so far, in clock ticks over all CPUs, as
# "BUSY STEAL TOTAL" from /proc/stat's first line: busy is the work done (user, system and
# interrupts), steal the time the hypervisor gave to other guests, total everything.
bench_machine_ticks() {
    awk '$1 == "cpu" { busy = $2 + $3 + $4 + $7 + $8; print busy, $9, busy + $5 + $6 + $9; exit }' /proc/stat
}

# bench_load: the 1-minute load average. On these 2-core machines anything much above 1 before
# a run means another workload shares the CPUs, and the figures (latency above all) suffer.
bench_load() { cut -d' ' -f1 /proc/loadavg; }

# bench_start_tundns_peer: tundns ($TUNDNS_BIN) as N's end of the tunnel, listening on the
# lab's port with the peer's keys and addresses, its DNS proxy off.
bench_start_tundns_peer() {
    local iface="${LAB_ID}nt"
    LAB_IFACES+=("$iface")
    cat >"$LAB_DIR/$iface.conf" <<EOF
[Interface]
PrivateKey = $(cat "$LAB_DIR/peer.key")
ListenPort = $LAB_WG_PORT
Address = 10.99.0.1/24, fd99::1/64
MTU = 1420

[Peer]
PublicKey = $(cat "$LAB_DIR/client.pub")
AllowedIPs = 10.99.0.2/32, fd99::2/128

[DNSProxy]
Enabled = false
EOF
    lab_spawn "$LAB_N" tundns-peer "$TUNDNS_BIN" up "$LAB_DIR/$iface.conf"
    lab_wait 10 ip netns exec "$LAB_N" wg show "$iface" ||
        lab_die "tundns did not come up in N: $(cat "$LAB_DIR/tundns-peer.log")"
}
