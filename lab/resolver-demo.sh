#!/usr/bin/env bash
# The resolver (issue 3) shown working, in throwaway namespaces: cache hits unbound never sees,
# local records with AA and automatic PTR, a CNAME leading out of local data finished upstream,
# NODATA for a missing type, split DNS through the tunnel to a resolver only the peer can reach,
# DoT and DoH upstreams trusted through a lab CA, blocking, and truncation at whole records.
# Everything is torn down on exit.
#
# Usage: lab/resolver-demo.sh   (as root; tundns from $TUNDNS_BIN, default target/release/tundns)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/lab/lib.sh"
# shellcheck source=resolver-lib.sh
source "$ROOT/lab/resolver-lib.sh"

TUNDNS_BIN=${TUNDNS_BIN:-$ROOT/target/release/tundns}

lab_require_tools ip wg wireguard-go unbound unbound-control dnsdist dig kdig openssl ping getent
lab_init tdv
lab_network
lab_resolver_network

LAB_UPSTREAMS="tls://$LAB_TLS_NAME@$LAB_UNBOUND_V4:853, https://$LAB_TLS_NAME@$LAB_UNBOUND_V4/dns-query"
LAB_DNSPROXY_EXTRA="CAFile = $LAB_DIR/lab-ca.pem
Cache = on
Record = app.lab.internal A 10.99.0.10
Record = app.lab.internal AAAA fd99::10
Record = alias.lab.internal CNAME app.lab.internal
Record = web.lab.internal CNAME www.lab.test
LocalZone = lab.internal
Block = ads.lab.test"
LAB_DNS_EXTRA_SECTIONS="[DNSRoute]
Domain = corp.internal
Upstream = $LAB_TUNNEL_RESOLVER_V4
ThroughTunnel = true"
lab_start_resolver_tundns "$TUNDNS_BIN"

show() {
    printf '\n## %s\n$ %s\n' "$1" "${*:2}"
    ip netns exec "$LAB_C" "${@:2}" || printf '(exit status %d)\n' "$?"
}
Q=(dig +tries=1 +time=3 "@$LAB_PROXY_V4")
peer_bytes() { ip netns exec "$LAB_N" wg show "$LAB_N_WG" transfer | awk '{ print $2 + $3 }'; }

printf '\nclient namespace %s runs: tundns up %s\n' "$LAB_C" "$LAB_DIR/$LAB_C_IF.conf"
sed -e 's/^PrivateKey = .*/PrivateKey = (hidden)/' "$LAB_DIR/$LAB_C_IF.conf"

www_before=$(lab_unbound_queries www.lab.test A)
tls_before=$(lab_unbound_stat num.query.tls)
https_before=$(lab_unbound_stat num.query.https)
show "a name forwarded over DoT/DoH, asked twice in two spellings" "${Q[@]}" WwW.LaB.TeSt A +noall +answer
sleep 1
show "... the second from the cache" "${Q[@]}" wWw.lAb.tEsT A +noall +answer
printf 'unbound saw www.lab.test A %s time(s); DoT queries +%s, DoH queries +%s\n' \
    $(($(lab_unbound_queries www.lab.test A) - www_before)) \
    $(($(lab_unbound_stat num.query.tls) - tls_before)) \
    $(($(lab_unbound_stat num.query.https) - https_before))

show "a local record: AA set" "${Q[@]}" app.lab.internal A +noall +comments +answer
show "a CNAME followed locally" "${Q[@]}" alias.lab.internal A +noall +answer
show "a CNAME leading out of local data, finished upstream" "${Q[@]}" web.lab.internal A +noall +answer
show "automatic PTR" "${Q[@]}" -x 10.99.0.10 +short
show "a missing type is NODATA with an SOA, never asked upstream" "${Q[@]}" app.lab.internal MX +noall +comments +authority
show "unknown names in a local zone: NXDOMAIN" "${Q[@]}" nothere.lab.internal A +noall +comments
show "glibc sees local names" getent ahosts app.lab.internal

lab_in_c ping -n -c 1 -W 1 "$LAB_PEER_TUNNEL_V4" >/dev/null
before=$(peer_bytes)
corp_before=$(awk '/ db\.corp\.internal\. A IN$/' "$LAB_DIR/unbound-tunnel.log" | wc -l)
show "split DNS: corp.internal goes through the tunnel" "${Q[@]}" db.corp.internal A +noall +answer
printf "the peer's counters grew by %s bytes\n" $(($(peer_bytes) - before))
printf 'the tunnel resolver saw db.corp.internal %s time(s); the outside unbound %s\n' \
    $(($(awk '/ db\.corp\.internal\. A IN$/' "$LAB_DIR/unbound-tunnel.log" | wc -l) - corp_before)) \
    "$(lab_unbound_queries db.corp.internal)"

show "a blocked name and a name under it" "${Q[@]}" x.ads.lab.test A +noall +comments
show "a 512-byte buffer: truncated at whole records, TC set" "${Q[@]}" +bufsize=512 +ignore big.lab.test TXT +noall +comments +stats
show "kdig over TCP" kdig "@$LAB_PROXY_V4" +tcp +short www.lab.test AAAA
printf '\ntearing down %s and %s\n' "$LAB_C" "$LAB_N"
