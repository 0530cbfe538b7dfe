#!/usr/bin/env bash
# Proves the resolver lab's additions without tundns: unbound's DoT and DoH with the lab CA
# (and a refused wrong CA), the query log and control socket, a stop and restart, dnsdist,
# and the tunnel-only resolver answering over a wireguard-go client tunnel (and only there).
# Exits non-zero on the first failed check; everything is torn down on exit.
#
# Usage: lab/resolver-baseline.sh   (as root)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/lab/lib.sh"
# shellcheck source=resolver-lib.sh
source "$ROOT/lab/resolver-lib.sh"

lab_require_tools ip wg wireguard-go unbound unbound-control dnsdist dig kdig openssl ping
lab_init tdr
lab_network
lab_resolver_network

check() {
    local title=$1
    shift
    if "$@"; then
        printf 'ok   %s\n' "$title"
    else
        printf 'FAIL %s\n' "$title"
        exit 1
    fi
}
answers() { # answers EXPECTED CMD...: CMD's trimmed stdout is EXPECTED
    local expected=$1 got
    shift
    got=$("$@" 2>&1) || true
    [[ $got == "$expected" ]] || { printf '  expected %s, got: %s\n' "$expected" "$got"; return 1; }
}
fails() { ! "$@" >/dev/null 2>&1; }

KDIG_TLS=(+retry=0 +time=2 "+tls-ca=$LAB_DIR/lab-ca.pem" "+tls-hostname=$LAB_TLS_NAME" +short)
KDIG_WRONG=(+retry=0 +time=2 "+tls-ca=$LAB_DIR/wrong-ca.pem" "+tls-hostname=$LAB_TLS_NAME" +short)

check "DoT with the lab CA" answers 203.0.113.10 lab_in_c kdig "@$LAB_UNBOUND_V4" +tls "${KDIG_TLS[@]}" www.lab.test A
check "DoH with the lab CA" answers 2001:db8::10 lab_in_c kdig "@$LAB_UNBOUND_V4" +https=/dns-query "${KDIG_TLS[@]}" www.lab.test AAAA
check "DoT with a wrong CA fails" fails lab_in_c kdig "@$LAB_UNBOUND_V4" +tls "${KDIG_WRONG[@]}" www.lab.test A
check "unbound counted the DoT query" test "$(lab_unbound_stat num.query.tls)" -ge 1
check "unbound counted the DoH query" test "$(lab_unbound_stat num.query.https)" -ge 1

before=$(lab_unbound_queries ttl.lab.test A)
lab_in_c dig +tries=1 +time=2 +short "@$LAB_UNBOUND_V4" TtL.LaB.TeSt A >/dev/null
check "the query log counts by name, any case" test "$(lab_unbound_queries ttl.lab.test A)" -eq $((before + 1))

lab_stop_resolver_unbound
check "stopped unbound refuses" fails lab_in_c dig +tries=1 +time=1 "@$LAB_UNBOUND_V4" www.lab.test
lab_start_resolver_unbound
check "restarted unbound answers" answers 203.0.113.10 lab_in_c dig +tries=1 +time=2 +short "@$LAB_UNBOUND_V4" www.lab.test

check "dnsdist forwards" answers 203.0.113.10 lab_in_c dig +tries=1 +time=2 +short "@$LAB_DNSDIST_V4" www.lab.test

check "no route to the tunnel resolver without a tunnel" fails lab_in_c dig +tries=1 +time=1 "@$LAB_TUNNEL_RESOLVER_V4" db.corp.internal
check "the tunnel resolver refuses non-tunnel sources" answers REFUSED \
    bash -c "ip netns exec $LAB_N dig +tries=1 +time=2 -b 192.0.2.1 @$LAB_TUNNEL_RESOLVER_V4 db.corp.internal | sed -n 's/.*status: \([A-Z]*\),.*/\1/p'"
lab_start_wireguard_go_client
check "the tunnel resolver answers through wireguard-go" answers 10.99.0.80 lab_in_c dig +tries=1 +time=2 +short "@$LAB_TUNNEL_RESOLVER_V4" db.corp.internal A
check "... over IPv6 too" answers fd99::80 lab_in_c dig +tries=1 +time=2 +short "@$LAB_TUNNEL_RESOLVER_V6" db.corp.internal AAAA
printf 'all resolver lab baselines passed\n'
