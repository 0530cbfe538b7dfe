#!/usr/bin/env bash
# Forwarding latency over each upstream transport (issue 14, section 2), one query
# outstanding, cache off, same run:
#   udp    tundns -> unbound in N, plain UDP (the baseline)
#   tls    tundns -> unbound's DoT (one reused connection)
#   https  tundns -> unbound's DoH over HTTP/2 (one reused connection)
#   quic   tundns -> lab_quic_upstream's DoQ (one reused QUIC connection)
#   h3     tundns -> lab_quic_upstream's DoH over HTTP/3 (one reused QUIC connection)
# lab_quic_upstream (crates/tundns/examples; Debian's dnsdist and unbound serve neither DoQ
# nor HTTP/3) forwards each query to the same unbound over UDP inside N, so quic and h3 carry
# one extra local UDP exchange that tls and https do not: compare them with that in mind.
#
# Each round starts tundns once per transport with that upstream alone, opens the connection
# with one query, then times COUNT sequential queries with bench/dns-latency.py; the medians
# of the rounds' percentiles are reported, with each transport's p50 over UDP's.
# Everything runs in throwaway namespaces (lab/lib.sh), with a throwaway CA.
#
# Usage: bench/dns-quic-upstreams.sh   (as root; cargo build --release -p tundns --bin tundns
#                                       --example lab_quic_upstream)
# Env:   TUNDNS_BIN, QUIC_UPSTREAM_BIN (default target/release/examples/lab_quic_upstream),
#        COUNT (queries per transport and round, default 1000, at most 20000), ROUNDS (default
#        3, at most 9)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

COUNT=${COUNT:-1000}
ROUNDS=${ROUNDS:-3}
((COUNT >= 100 && COUNT <= 20000)) || lab_die "COUNT must be 100..20000"
((ROUNDS >= 1 && ROUNDS <= 9)) || lab_die "ROUNDS must be 1..9"
QUIC_UPSTREAM_BIN=${QUIC_UPSTREAM_BIN:-$ROOT/target/release/examples/lab_quic_upstream}
[[ -x $QUIC_UPSTREAM_BIN ]] ||
    lab_die "no $QUIC_UPSTREAM_BIN: cargo build --release -p tundns --example lab_quic_upstream"
TLS_NAME=dns.lab.test
QUIC_V4=192.0.2.56

lab_require_tools ip wg wireguard-go unbound dig openssl python3
lab_init tdq
lab_network

# A throwaway CA and a certificate for dns.lab.test, as the Rust lab makes them.
(
    cd "$LAB_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout ca.key -out ca.pem -subj "/CN=tundns bench CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout server.key -out server.csr -subj "/CN=$TLS_NAME" 2>/dev/null
    printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$TLS_NAME" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile server.ext -out server.pem 2>/dev/null
)
# unbound serves DoT on 853 and DoH on 443 besides port 53.
cat >"$LAB_DIR/unbound-encrypted.conf" <<EOF
server:
    interface: $LAB_UNBOUND_V4@853
    interface: $LAB_UNBOUND_V4@443
    tls-port: 853
    https-port: 443
    http-endpoint: "/dns-query"
    tls-service-key: "$LAB_DIR/server.key"
    tls-service-pem: "$LAB_DIR/server.pem"
EOF
LAB_UNBOUND_INCLUDES="$LAB_DIR/unbound-encrypted.conf" lab_peer_network

ip -n "$LAB_N" addr add "$QUIC_V4/24" dev "${LAB_ID}vn"
lab_spawn "$LAB_N" quic-upstream "$QUIC_UPSTREAM_BIN" --cert "$LAB_DIR/server.pem" \
    --key "$LAB_DIR/server.key" --doq "$QUIC_V4:853" --h3 "$QUIC_V4:443" \
    --forward "$LAB_UNBOUND_V4:53"
lab_wait 10 grep -q 'listening h3' "$LAB_DIR/quic-upstream.log" ||
    lab_die "lab_quic_upstream did not start: $(cat "$LAB_DIR/quic-upstream.log")"

declare -A UPSTREAM=(
    [udp]="$LAB_UNBOUND_V4"
    [tls]="tls://$TLS_NAME@$LAB_UNBOUND_V4"
    [https]="https://$TLS_NAME@$LAB_UNBOUND_V4/dns-query"
    [quic]="quic://$TLS_NAME@$QUIC_V4"
    [h3]="h3://$TLS_NAME@$QUIC_V4/dns-query"
)
KEYS=(udp tls https quic h3)
declare -A P50 P90 P99

# measure KEY: tundns with UPSTREAM[KEY] alone, one warm-up query, then one round.
measure() {
    local key=$1 line
    LAB_UPSTREAMS=${UPSTREAM[$key]} LAB_DNSPROXY_EXTRA=$'Cache = off\nCAFile = '"$LAB_DIR/ca.pem" \
        lab_start_resolver_tundns "$TUNDNS_BIN"
    [[ $(lab_in_c dig +time=2 +tries=1 +short "@$LAB_PROXY_V4" www.lab.test A) == 203.0.113.10 ]] ||
        lab_die "no answer over $key: $(tail -5 "$LAB_DIR/tundns.log")"
    line=$(timeout 60 ip netns exec "$LAB_C" python3 "$ROOT/bench/dns-latency.py" "$LAB_PROXY_V4" \
        --count "$COUNT" --warmup 100 --max-seconds 30) ||
        lab_die "the latency client failed over $key"
    lab_stop "$LAB_TUNDNS_PID"
    [[ $line == *" lost=0 "* ]] || lab_die "queries lost over $key: $line"
    P50[$key]+=" $(sed -n 's/.* p50=\([0-9.]*\).*/\1/p' <<<"$line")"
    P90[$key]+=" $(sed -n 's/.* p90=\([0-9.]*\).*/\1/p' <<<"$line")"
    P99[$key]+=" $(sed -n 's/.* p99=\([0-9.]*\).*/\1/p' <<<"$line")"
    printf '  %-6s %s\n' "$key" "${line#server=* }" >&2
}

med() { tr ' ' '\n' <<<"$1" | grep . | bench_median; }

load_start=$(bench_load)
lab_log "tundns: $TUNDNS_BIN; $ROUNDS rounds of $COUNT sequential queries per upstream transport"
for ((round = 1; round <= ROUNDS; round++)); do
    for key in "${KEYS[@]}"; do measure "$key"; done
done
load_end=$(bench_load)

declare -A M50
printf '\nforwarding latency in microseconds, cache off: medians of %d rounds of %d sequential queries\n' \
    "$ROUNDS" "$COUNT"
printf '%-8s %8s %8s %8s   %s\n' upstream p50 p90 p99 "p50 / udp"
for key in "${KEYS[@]}"; do M50[$key]=$(med "${P50[$key]}"); done
for key in "${KEYS[@]}"; do
    printf '%-8s %8s %8s %8s   %s\n' "$key" "${M50[$key]}" "$(med "${P90[$key]}")" \
        "$(med "${P99[$key]}")" "$(bench_ratio "${M50[$key]}" "${M50[udp]}")"
done
printf 'quic / tls at p50 = %s; h3 / https at p50 = %s (quic and h3 include a UDP hop to unbound)\n' \
    "$(bench_ratio "${M50[quic]}" "${M50[tls]}")" "$(bench_ratio "${M50[h3]}" "${M50[https]}")"
printf 'load average (1 min) at the start %s, at the end %s (2 cores)\n' "$load_start" "$load_end"
