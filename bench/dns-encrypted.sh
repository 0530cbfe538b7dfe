#!/usr/bin/env bash
# Encrypted DNS on the virtual IPs (issue 14), against UDP 53 of the same tundns in the same
# run, cache warmed:
#   latency:    dnsperf -q 1 -v, one connection reused (DoT, DoH) and one query outstanding:
#               per-query times of SPARSE cache hits over udp, tcp, dot and doh; the goal is
#               a DoT and DoH p50 at most 2x UDP's. DoQ (dnsperf has none) from
#               doq-latency (crates/test-support, hickory's UDP and DoQ clients): one reused
#               QUIC connection, with its own UDP run as the same-tool baseline, and tundns's
#               CPU time per answer over each
#   throughput: for RUN_SECONDS each, cached answers on 8 connections: UDP and DoT from
#               dnsperf (-c 8 -q 64), DoH from h2load (-c 8 -m 64; dnsperf 2.11's DoH client
#               stalls with more than one query outstanding, against dnsdist as against
#               tundns), against dnsdist's DoH frontend with a packet cache in front of the
#               same unbound as the baseline. Beside each rate, the server's CPU time per
#               1000 answers (the load generator shares the 2 cores, so CPU per answer is the
#               figure that carries).
# Everything runs in throwaway namespaces (lab/lib.sh); tundns serves its self-signed
# identity, which dnsperf does not verify.
#
# Usage: bench/dns-encrypted.sh   (as root; tundns from $TUNDNS_BIN, default target/release/tundns;
#        doq-latency from $DOQ_LATENCY_BIN, built when missing)
# Env:   SPARSE (queries per transport, default 300, at most 2000), RUN_SECONDS (throughput run,
#        default 10, at most 60), PARTS (default lqt: l the dnsperf latencies, q DoQ's, t the
#        throughput; PARTS=q alone times DoQ against hickory's UDP)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

SPARSE=${SPARSE:-300}
SECONDS_EACH=${RUN_SECONDS:-10}
((SPARSE >= 50 && SPARSE <= 2000)) || lab_die "SPARSE must be 50..2000"
((SECONDS_EACH >= 2 && SECONDS_EACH <= 60)) || lab_die "RUN_SECONDS must be 2..60"
PARTS=${PARTS:-lqt}
[[ $PARTS =~ ^[lqt]+$ ]] || lab_die "PARTS is made of l, q and t"

DOQ_LATENCY_BIN=${DOQ_LATENCY_BIN:-$ROOT/target/release/doq-latency}
[[ -x $DOQ_LATENCY_BIN ]] || {
    lab_log "building doq-latency (crates/test-support)"
    cargo build --release -q -p tundns-test-support --bin doq-latency >&2
}
bench_lab tde h2load dnsdist
printf 'www.lab.test A\n' >"$LAB_DIR/one-query.txt"
bench_start_tundns "$TUNDNS_BIN" on
lab_in_c dig +time=1 +tries=1 +short "@$LAB_PROXY_V4" www.lab.test A >/dev/null # fills the cache

declare -A P50 P99 QPS CPU
# latency MODE: dnsperf -q 1 -v over MODE; sets P50[MODE] and P99[MODE] (microseconds).
latency() {
    local mode=$1 report="$LAB_DIR/dnsperf-latency-$1.txt"
    timeout 120 ip netns exec "$LAB_C" dnsperf -m "$mode" -s "$LAB_PROXY_V4" \
        -d "$LAB_DIR/one-query.txt" -n "$SPARSE" -l 90 -q 1 -t 2 -v >"$report" 2>&1 ||
        lab_die "dnsperf -m $mode failed: $(tail -5 "$report")"
    ! awk '$1 == ">" && $2 != "NOERROR" { bad = 1 } END { exit !bad }' "$report" ||
        lab_die "$mode gave answers other than NOERROR: $(grep -m3 '^>' "$report")"
    read -r "P50[$mode]" "P99[$mode]" < <(awk '$1 == ">" { print $NF * 1e6 }' "$report" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.0f %.0f\n", v[int(0.5 * (NR - 1)) + 1], v[int(0.99 * (NR - 1)) + 1]; else print "n/a n/a" }')
    printf '  %-5s n=%s p50=%s us p99=%s us\n' "$mode" "$(grep -c '^>' "$report" || true)" \
        "${P50[$mode]}" "${P99[$mode]}" >&2
}

# cpu_per_1000 TICKS ANSWERS: CPU milliseconds per 1000 answers.
cpu_per_1000() {
    awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v n="$2" \
        'BEGIN { if (n > 0) printf "%.3f", t * 1000 / hz / n * 1000; else print "n/a" }'
}

# dnsperf_rate KEY MODE PID: dnsperf -m MODE -c 8 -q 64 at tundns; sets QPS[KEY] and CPU[KEY]
# (PID's CPU milliseconds per 1000 answers).
dnsperf_rate() {
    local key=$1 mode=$2 pid=$3 before after
    before=$(bench_cpu_ticks "$pid")
    QPS[$key]=$(bench_dnsperf "$key" "$LAB_PROXY_V4" "$LAB_DIR/one-query.txt" "$SECONDS_EACH" \
        -m "$mode" -c 8 -q 64)
    after=$(bench_cpu_ticks "$pid")
    CPU[$key]=$(cpu_per_1000 $((after - before)) \
        "$(awk '/Queries completed:/ { print $3 }' "$LAB_DIR/dnsperf-$key.txt")")
}

# h2load_rate KEY ADDRESS PID: h2load -c 8 -m 64 GETs of www.lab.test A at https://ADDRESS;
# sets QPS[KEY] and CPU[KEY].
h2load_rate() {
    local key=$1 address=$2 pid=$3 before after report="$LAB_DIR/h2load-$1.txt" answered
    # www.lab.test A, base64url (RFC 8484 GET).
    local url="https://$address/dns-query?dns=AAABAAABAAAAAAAAA3d3dwNsYWIEdGVzdAAAAQAB"
    before=$(bench_cpu_ticks "$pid")
    # No warm-up: the CPU counted and the answers counted cover the same window.
    timeout $((SECONDS_EACH + 30)) ip netns exec "$LAB_C" h2load -c 8 -m 64 -D "$SECONDS_EACH" \
        "$url" >"$report" 2>&1 || lab_die "h2load against $key failed: $(tail -5 "$report")"
    after=$(bench_cpu_ticks "$pid")
    answered=$(awk '/^status codes:/ { print $3 }' "$report")
    [[ -n $answered && $answered -gt 0 ]] || lab_die "no 2xx answer from $key: $(tail -8 "$report")"
    QPS[$key]=$(awk -v n="$answered" -v s="$SECONDS_EACH" 'BEGIN { printf "%.0f", n / s }')
    CPU[$key]=$(cpu_per_1000 $((after - before)) "$answered")
    printf '  %-34s %10s qps   (%s)\n' "$key" "${QPS[$key]}" "$(grep -m1 '^requests:' "$report")" >&2
}

if [[ $PARTS == *l* ]]; then
    lab_log "latency: $SPARSE cache hits per transport, one outstanding"
    for mode in udp tcp dot doh; do latency "$mode"; done
fi
if [[ $PARTS == *q* ]]; then
    lab_log "DoQ latency: $SPARSE cache hits over hickory's UDP, then DoQ, one outstanding"
    timeout 120 ip netns exec "$LAB_C" "$DOQ_LATENCY_BIN" "$LAB_PROXY_V4" www.lab.test "$SPARSE" \
        "$LAB_TUNDNS_PID" >"$LAB_DIR/doq-latency.txt" 2>&1 ||
        lab_die "doq-latency failed: $(tail -3 "$LAB_DIR/doq-latency.txt")"
    # "udp n=300 p50=41 p99=88 cpu=9.8" and "doq ...": P50[hickory-udp], P50[doq], their p99s
    # and tundns's CPU microseconds per answer.
    while read -r transport _ p50 p99 cpu; do
        key=$([[ $transport == udp ]] && echo hickory-udp || echo "$transport")
        P50[$key]=${p50#p50=} P99[$key]=${p99#p99=} CPU[$key]=${cpu#cpu=}
        printf '  %-11s p50=%s us p99=%s us, tundns CPU %s us per answer\n' "$key" "${P50[$key]}" \
            "${P99[$key]}" "${CPU[$key]}" >&2
    done <"$LAB_DIR/doq-latency.txt"
fi
if [[ $PARTS == *t* ]]; then
    lab_log "throughput: $SECONDS_EACH s each, 8 connections, 64 outstanding each"
    dnsperf_rate udp udp "$LAB_TUNDNS_PID"
    dnsperf_rate dot dot "$LAB_TUNDNS_PID"
    h2load_rate doh "$LAB_PROXY_V4" "$LAB_TUNDNS_PID"
    # dnsdist's DoH frontend with a packet cache, presenting tundns's own identity, on C's
    # loopback (its traffic crosses no TUN: the comparison favours it).
    identity=$(ls "/var/lib/tundns/netns/$LAB_C/"*.dns-identity.pem)
    cat >"$LAB_DIR/dnsdist-doh.conf" <<CONF
addDOHLocal("127.0.0.2:443", "$identity", "$identity", "/dns-query")
newServer({address="$LAB_UNBOUND_V4:53"})
setSecurityPollSuffix("")
getPool(""):setCache(newPacketCache(10000))
CONF
    lab_spawn "$LAB_C" dnsdist-doh dnsdist --supervised --disable-syslog -C "$LAB_DIR/dnsdist-doh.conf"
    dnsdist_pid=$LAB_LAST_PID
    lab_wait 10 ip netns exec "$LAB_C" curl -sk -o /dev/null --max-time 2 \
        "https://127.0.0.2/dns-query?dns=AAABAAABAAAAAAAAA3d3dwNsYWIEdGVzdAAAAQAB" ||
        lab_die "dnsdist's DoH did not answer: $(cat "$LAB_DIR/dnsdist-doh.log")"
    h2load_rate dnsdist-doh 127.0.0.2 "$dnsdist_pid"
    lab_stop "$dnsdist_pid"
fi
lab_stop "$LAB_TUNDNS_PID"

if [[ $PARTS == *l* ]]; then
    printf '\ncache hits on 10.30.30.30, microseconds (dnsperf -q 1 -v, %d queries each)\n' "$SPARSE"
    printf '%-6s %8s %8s %12s\n' transport p50 p99 "p50 / udp"
    for mode in udp tcp dot doh; do
        printf '%-6s %8s %8s %12s\n' "$mode" "${P50[$mode]}" "${P99[$mode]}" "$(bench_ratio "${P50[$mode]}" "${P50[udp]}")"
    done
    printf 'goal: DoT and DoH p50 <= 2x UDP: dot %s, doh %s\n' \
        "$(bench_verdict "$(bench_ratio "${P50[dot]}" "${P50[udp]}")" '<=' 2)" \
        "$(bench_verdict "$(bench_ratio "${P50[doh]}" "${P50[udp]}")" '<=' 2)"
fi
if [[ $PARTS == *q* ]]; then
    printf '\nhickory clients (doq-latency, %d queries each, one QUIC connection reused)\n' "$SPARSE"
    printf '%-11s %8s %8s %12s %22s\n' transport p50 p99 "p50 / udp" "tundns CPU us/answer"
    for key in hickory-udp doq; do
        printf '%-11s %8s %8s %12s %22s\n' "$key" "${P50[$key]}" "${P99[$key]}" \
            "$(bench_ratio "${P50[$key]}" "${P50[hickory-udp]}")" "${CPU[$key]}"
    done
    printf 'goal: DoQ p50 <= 2x UDP (same client): %s\n' \
        "$(bench_verdict "$(bench_ratio "${P50[doq]}" "${P50[hickory-udp]}")" '<=' 2)"
fi
if [[ $PARTS == *t* ]]; then
    printf '\ncached throughput, 8 connections x 64 outstanding, %d s each\n' "$SECONDS_EACH"
    printf '%-22s %10s %24s\n' server qps "server CPU ms/1000 ans"
    for key in udp dot doh dnsdist-doh; do
        printf '%-22s %10s %24s\n' "$key" "${QPS[$key]}" "${CPU[$key]}"
    done
    printf 'goal: DoH qps >= dnsdist DoH qps: %s (ratio %s)\n' \
        "$(bench_verdict "$(bench_ratio "${QPS[doh]}" "${QPS[dnsdist-doh]}")" '>=' 1)" \
        "$(bench_ratio "${QPS[doh]}" "${QPS[dnsdist-doh]}")"
fi
