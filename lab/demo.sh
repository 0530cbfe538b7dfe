#!/usr/bin/env bash
# A self-contained tundns demo in throwaway network namespaces: a WireGuard tunnel to a real
# wireguard-go peer, names resolved through the virtual DNS at 10.30.30.30 / fd30:30:30::30
# (forwarded to unbound outside the tunnel), the results shown, everything torn down.
#
# Usage: lab/demo.sh   (as root; tundns from $TUNDNS_BIN, default target/release/tundns)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/lab/lib.sh"

TUNDNS_BIN=${TUNDNS_BIN:-$ROOT/target/release/tundns}

lab_require_tools ip wg wireguard-go unbound dig ping getent
lab_init tdd
lab_network
lab_peer_network
lab_start_tundns "$TUNDNS_BIN"

# show TITLE CMD...: run CMD in the client namespace and print it like a shell session.
show() {
    printf '\n## %s\n$ %s\n' "$1" "${*:2}"
    ip netns exec "$LAB_C" "${@:2}" || printf '(exit status %d)\n' "$?"
}

peer_counters() { ip netns exec "$LAB_N" wg show "$LAB_N_WG" transfer | awk '{ print $2 " B received, " $3 " B sent" }'; }

printf '\nclient namespace %s runs: tundns up %s\n' "$LAB_C" "$LAB_DIR/$LAB_C_IF.conf"
sed -e 's/^PrivateKey = .*/PrivateKey = (hidden)/' "$LAB_DIR/$LAB_C_IF.conf"
show "a ping through the tunnel to the wireguard-go peer" ping -n -c 2 -i 0.2 "$LAB_PEER_TUNNEL_V4"
show "the tunnel, through UAPI" wg show "$LAB_C_IF"
counters_before=$(peer_counters)
show "DNS over UDP to the virtual IPv4" dig +tries=1 +time=2 "@$LAB_PROXY_V4" www.lab.test A +noall +answer
show "DNS over TCP to the virtual IPv6" dig +tries=1 +time=2 +tcp "@$LAB_PROXY_V6" www.lab.test AAAA +noall +answer
show "glibc, with resolv.conf pointing at $LAB_PROXY_V4" getent ahosts www.lab.test
show "an answer too big for UDP (dig retries over TCP)" dig +tries=1 +time=2 "@$LAB_PROXY_V4" big.lab.test TXT +noall +comments
counters_after=$(peer_counters)
printf "\n## the peer's counters around the DNS queries: DNS stays out of the tunnel\n"
printf 'before: %s\nafter:  %s\n' "$counters_before" "$counters_after"
show "the virtual IP answers ping too" ping -n -c 1 "$LAB_PROXY_V4"
printf '\ntearing down %s and %s\n' "$LAB_C" "$LAB_N"
