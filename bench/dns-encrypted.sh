#!/usr/bin/env bash
# Encrypted DNS on the virtual IPs (issue 14), against UDP 53 of the same tundns in the same
# run, cache warmed, and dnsdist (UDP, DoT and DoH with a packet cache, on C's loopback, in
# front of the same unbound) as the reference server in the same run:
#   latency:    per-query times of SPARSE cache hits, one connection reused and one query
#               outstanding; the goal is a DoT, DoH and DoQ p50 at most 2x UDP's from the same
#               client. Two clients: dnsperf -q 1 -v (udp, tcp, dot, doh), and dns-latency
#               (crates/test-support, hickory's clients: udp, dot, doh and doq, which dnsperf
#               lacks; and dot1, DoT with each query in one TLS record as stub resolvers write
#               it, where hickory writes the length prefix in a record of its own) with each
#               server's CPU time per answer, back to back and again with
#               GAP_MS between queries (each then finds the server idle, as sporadic queries
#               do). dnsperf -q 1 paces itself: tcpdump shows it sending tundns's UDP and DoH
#               queries 100 ms apart and dnsdist's DoH back to back, so its rows mix idle and
#               busy servers. dnsdist's own ratios, from the same clients, show what the
#               client and the protocol cost a server that crosses no TUN; for DoQ, which
#               dnsdist 1.7 lacks, doq-reference (crates/test-support: quinn answering from
#               memory) stands in, against dnsdist's UDP.
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
#        dns-latency and doq-reference from $DNS_LATENCY_BIN and $DOQ_REFERENCE_BIN, by default
#        under target/release/, built there when missing)
# Env:   SPARSE (queries per transport, default 300, at most 2000), RUN_SECONDS (throughput run,
#        default 10, at most 60), PARTS (default lht: l the dnsperf latencies, h hickory's, t the
#        throughput), GAP_MS (hickory's idle gap, default 20, at most 100; SPARSE is cut to
#        fit 30 s per transport), BUSY (hickory's back-to-back queries per transport, default
#        SPARSE, at most 10000: the first few hundred include the scheduler placing the
#        threads), PIN (hickory's runs only: unset, the scheduler places the threads; `same`
#        puts the server's threads and the client on CPU 0, `split` the server on CPU 0 and
#        the client on CPU 1. On these VMs an idle vCPU halts at once, so whether a query's
#        hand-overs cross CPUs decides a back-to-back p50 more than the server's work does,
#        and the scheduler settles UDP and TLS differently from run to run)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

SPARSE=${SPARSE:-300}
SECONDS_EACH=${RUN_SECONDS:-10}
((SPARSE >= 50 && SPARSE <= 2000)) || lab_die "SPARSE must be 50..2000"
((SECONDS_EACH >= 2 && SECONDS_EACH <= 60)) || lab_die "RUN_SECONDS must be 2..60"
GAP_MS=${GAP_MS:-20}
((GAP_MS >= 1 && GAP_MS <= 100)) || lab_die "GAP_MS must be 1..100"
SPARSE_IDLE=$((SPARSE < 30000 / GAP_MS ? SPARSE : 30000 / GAP_MS))
BUSY=${BUSY:-$SPARSE}
((BUSY >= 50 && BUSY <= 10000)) || lab_die "BUSY must be 50..10000"
PARTS=${PARTS:-lht}
[[ $PARTS =~ ^[lht]+$ ]] || lab_die "PARTS is made of l, h and t"
PIN=${PIN:-}
bench_client_pin "$PIN"

DNS_LATENCY_BIN=${DNS_LATENCY_BIN:-$ROOT/target/release/dns-latency}
DOQ_REFERENCE_BIN=${DOQ_REFERENCE_BIN:-$ROOT/target/release/doq-reference}
if [[ $PARTS == *h* ]]; then
    for bin in DNS_LATENCY_BIN DOQ_REFERENCE_BIN; do
        [[ -x ${!bin} ]] && continue
        [[ ${!bin} == "$ROOT/target/release/"* ]] || lab_die "$bin=${!bin} is not an executable"
        lab_log "building ${!bin##*/} (crates/test-support)"
        cargo build --release -q -p tundns-test-support --bin "${!bin##*/}" >&2
    done
fi
bench_lab tde h2load dnsdist curl taskset
printf 'www.lab.test A\n' >"$LAB_DIR/one-query.txt"
bench_start_tundns "$TUNDNS_BIN" on
lab_in_c dig +time=1 +tries=1 +short "@$LAB_PROXY_V4" www.lab.test A >/dev/null # fills the cache

bench_start_encrypted_dnsdist

declare -A P50 P99 QPS CPU RUNS
DOQ_REFERENCE=127.0.0.3
# server_address SERVER: where SERVER (tundns, dnsdist or reference) answers.
server_address() {
    case $1 in
    tundns) echo "$LAB_PROXY_V4" ;;
    dnsdist) echo "$BENCH_DNSDIST" ;;
    reference) echo "$DOQ_REFERENCE" ;;
    *) return 1 ;;
    esac
}

# latency SERVER MODE: dnsperf -q 1 -v over MODE against SERVER (tundns or dnsdist); sets
# P50[SERVER-MODE] and P99[SERVER-MODE] (microseconds).
latency() {
    local server=$1 mode=$2 report="$LAB_DIR/dnsperf-latency-$1-$2.txt" address
    address=$(server_address "$server") || lab_die "no server $server"
    timeout 120 ip netns exec "$LAB_C" dnsperf -m "$mode" -s "$address" \
        -d "$LAB_DIR/one-query.txt" -n "$SPARSE" -l 90 -q 1 -t 2 -v >"$report" 2>&1 ||
        lab_die "dnsperf -m $mode failed: $(tail -5 "$report")"
    ! awk '$1 == ">" && $2 != "NOERROR" { bad = 1 } END { exit !bad }' "$report" ||
        lab_die "$mode gave answers other than NOERROR: $(grep -m3 '^>' "$report")"
    grep -q '^>' "$report" || lab_die "dnsperf -m $mode against $server got no answer"
    read -r "P50[$server-$mode]" "P99[$server-$mode]" < <(awk '$1 == ">" { print $NF * 1e6 }' "$report" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.0f %.0f\n", v[int(0.5 * (NR - 1)) + 1], v[int(0.99 * (NR - 1)) + 1]; else print "n/a n/a" }')
    printf '  %-7s %-5s n=%s p50=%s us p99=%s us\n' "$server" "$mode" "$(grep -c '^>' "$report" || true)" \
        "${P50[$server-$mode]}" "${P99[$server-$mode]}" >&2
}

# hickory_latency SERVER TRANSPORTS [GAP_MS]: dns-latency over TRANSPORTS (a comma list)
# against SERVER (tundns, dnsdist or reference), back to back or GAP_MS apart, placed as PIN
# says; sets P50, P99, CPU (the server's microseconds per answer) and RUNS (its threads' runs
# per answer) under SERVER-hickory-TRANSPORT, or SERVER-idle-TRANSPORT.
hickory_latency() {
    local server=$1 transports=$2 gap=${3:-0} address pid=$LAB_TUNDNS_PID
    local report="$LAB_DIR/dns-latency-$1-$gap.txt" transport p50 p99 cpu runs key kind=hickory
    local count=$BUSY
    address=$(server_address "$server") || lab_die "no server $server"
    [[ $server != dnsdist ]] || pid=$BENCH_DNSDIST_PID
    [[ $server != reference ]] || pid=$doq_reference_pid
    ((gap == 0)) || { kind=idle; count=$SPARSE_IDLE; }
    bench_placed "$PIN" "$pid" 300 "$DNS_LATENCY_BIN" "--gap-ms=$gap" "$address" www.lab.test \
        "$count" "$transports" "$pid" >"$report" 2>&1 ||
        lab_die "dns-latency against $server failed: $(tail -3 "$report")"
    # "udp n=300 p50=41 p99=88 cpu=9.8 runs=1.02", one line per transport.
    while read -r transport _ p50 p99 cpu runs; do
        key=$server-$kind-$transport
        P50[$key]=${p50#p50=} P99[$key]=${p99#p99=} CPU[$key]=${cpu#cpu=} RUNS[$key]=${runs#runs=}
        printf '  %-7s %-7s %-4s p50=%s us p99=%s us, server CPU %s us and %s thread runs per answer\n' \
            "$server" "$kind" "$transport" "${P50[$key]}" "${P99[$key]}" "${CPU[$key]}" "${RUNS[$key]}" >&2
    done <"$report"
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
    lab_log "latency: $SPARSE cache hits per transport, one outstanding (dnsperf)"
    for mode in udp tcp dot doh; do latency tundns "$mode"; done
    for mode in udp dot doh; do latency dnsdist "$mode"; done
fi
if [[ $PARTS == *h* ]]; then
    lab_log "latency: $BUSY cache hits per transport back to back (hickory's clients)"
    lab_spawn "$LAB_C" doq-reference "$DOQ_REFERENCE_BIN" "$DOQ_REFERENCE:853" "$BENCH_IDENTITY"
    doq_reference_pid=$LAB_LAST_PID
    lab_wait 10 ip netns exec "$LAB_C" sh -c "ss -Hlun src $DOQ_REFERENCE:853 | grep -q ." ||
        lab_die "doq-reference did not start: $(cat "$LAB_DIR/doq-reference.log")"
    hickory_latency tundns udp,dot,dot1,doh,doq
    hickory_latency dnsdist udp,dot,dot1,doh # dnsdist 1.7 serves no DoQ
    hickory_latency reference doq
    lab_log "latency: $SPARSE_IDLE cache hits per transport, $GAP_MS ms apart (hickory's clients)"
    hickory_latency tundns udp,dot,dot1,doh,doq "$GAP_MS"
    hickory_latency dnsdist udp,dot,dot1,doh "$GAP_MS"
    hickory_latency reference doq "$GAP_MS"
    lab_stop "$doq_reference_pid"
fi
if [[ $PARTS == *t* ]]; then
    lab_log "throughput: $SECONDS_EACH s each, 8 connections, 64 outstanding each"
    dnsperf_rate udp udp "$LAB_TUNDNS_PID"
    dnsperf_rate dot dot "$LAB_TUNDNS_PID"
    h2load_rate doh "$LAB_PROXY_V4" "$LAB_TUNDNS_PID"
    h2load_rate dnsdist-doh "$BENCH_DNSDIST" "$BENCH_DNSDIST_PID"
fi
lab_stop "$BENCH_DNSDIST_PID"
lab_stop "$LAB_TUNDNS_PID"

# latency_table CLIENT PREFIX TRANSPORTS...: each server's p50, p99, ratio to its own UDP, CPU
# and thread runs per answer over TRANSPORTS, from the keys SERVER-PREFIXTRANSPORT, then the
# goal's verdicts.
latency_table() {
    local client=$1 prefix=$2 server transport key verdicts=''
    shift 2
    printf '\ncache hits, microseconds (%s, one connection reused)\n' "$client"
    printf '%-9s %-9s %8s %8s %10s %18s %9s\n' server transport p50 p99 "p50 / udp" \
        "server CPU us/ans" "runs/ans"
    for server in tundns dnsdist reference; do
        # doq-reference serves DoQ alone: its ratio is to dnsdist's UDP.
        local baseline=$server
        [[ $server != reference ]] || baseline=dnsdist
        for transport in "$@"; do
            key=$server-$prefix$transport
            [[ -n ${P50[$key]:-} ]] || continue
            printf '%-9s %-9s %8s %8s %10s %18s %9s\n' "$server" "$transport" "${P50[$key]}" \
                "${P99[$key]}" "$(bench_ratio "${P50[$key]}" "${P50[$baseline-${prefix}udp]}")" \
                "${CPU[$key]:-}" "${RUNS[$key]:-}"
        done
    done
    for transport in "$@"; do
        [[ $transport != udp && $transport != tcp ]] || continue
        key=tundns-$prefix$transport
        verdicts+=" $transport $(bench_verdict "$(bench_ratio "${P50[$key]}" "${P50[tundns-${prefix}udp]}")" '<=' 2)"
    done
    printf 'goal: tundns p50 <= 2x its UDP (%s):%s\n' "$client" "$verdicts"
}
[[ $PARTS != *l* ]] || latency_table dnsperf '' udp tcp dot doh
placed=${PIN:+, pinned: $PIN}
[[ $PARTS != *h* ]] || latency_table "hickory, back to back$placed" hickory- udp dot dot1 doh doq
[[ $PARTS != *h* ]] || latency_table "hickory, $GAP_MS ms apart$placed" idle- udp dot dot1 doh doq
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
