#!/usr/bin/env bash
# The proxies and the rootless mode, shown in throwaway network namespaces against a web
# server that only the tunnel reaches (on the wireguard-go peer's tunnel address).
#
# 1. tundns as root with Table = off: no route into the tunnel at all, so only what goes
#    through the proxies on the virtual IP reaches the server: curl through SOCKS5, HTTP
#    forwarding, CONNECT, and the reply for a blocked name.
# 2. tundns up --userspace as nobody: no TUN, nothing changed on the host; DNS on
#    127.0.0.1:5353 and SOCKS5 on 127.0.0.1:1080; tundns status under $XDG_RUNTIME_DIR.
#
# Usage: lab/proxy-demo.sh   (as root; tundns from $TUNDNS_BIN, default target/release/tundns)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/lab/lib.sh"

TUNDNS_BIN=${TUNDNS_BIN:-$ROOT/target/release/tundns}
WEB=web.lab.internal

lab_require_tools ip wg wireguard-go unbound dig curl python3 setpriv nft
lab_init tdp
lab_network
lab_peer_network

mkdir -p "$LAB_DIR/site"
echo "served only inside the tunnel" >"$LAB_DIR/site/index.html"
lab_spawn "$LAB_N" web python3 -m http.server 8080 --bind "$LAB_PEER_TUNNEL_V4" --directory "$LAB_DIR/site"
lab_wait 10 ip netns exec "$LAB_N" python3 -c \
    "import socket; socket.create_connection(('$LAB_PEER_TUNNEL_V4', 8080), timeout=1)" ||
    lab_die "the web server in N did not start: $(cat "$LAB_DIR/web.log")"

# show TITLE CMD...: run CMD in the client namespace and print it like a shell session.
show() {
    printf '\n## %s\n$ %s\n' "$1" "${*:2}"
    ip netns exec "$LAB_C" "${@:2}" || printf '(exit status %d)\n' "$?"
}

LAB_TUNDNS_EXTRA="Record = $WEB A $LAB_PEER_TUNNEL_V4
Block = blocked.lab.test
[Proxy]
SOCKS5 = $LAB_PROXY_V4:1080, 127.0.0.1:1080
HTTP = $LAB_PROXY_V4:3128"
lab_tundns_conf >"$LAB_DIR/root.conf"
# Table = off: tundns routes nothing into the tunnel, the kernel's own prefix route goes too.
sed -i 's/^MTU = 1420$/MTU = 1420\nTable = off/' "$LAB_DIR/root.conf"
LAB_C_IF="${LAB_ID}t"
LAB_IFACES+=("$LAB_C_IF")
cp "$LAB_DIR/root.conf" "$LAB_DIR/$LAB_C_IF.conf"
lab_spawn "$LAB_C" tundns "$TUNDNS_BIN" up "$LAB_DIR/$LAB_C_IF.conf"
LAB_TUNDNS_PID=$LAB_LAST_PID
lab_wait 10 lab_tundns_ready || lab_die "tundns did not come up: $(cat "$LAB_DIR/tundns.log")"
ip -n "$LAB_C" route del 10.99.0.0/24 2>/dev/null || true
ip -n "$LAB_C" -6 route del fd99::/64 2>/dev/null || true

printf '\n# 1. tundns up, Table = off: only the proxies reach the tunnel\n'
grep -A3 '^\[Proxy\]' "$LAB_DIR/$LAB_C_IF.conf"
show "no route into the tunnel: a direct fetch fails" curl -sS --max-time 2 "http://$LAB_PEER_TUNNEL_V4:8080/"
show "SOCKS5 on the virtual IP, the name resolved by tundns" curl -sS --max-time 10 --socks5-hostname "$LAB_PROXY_V4:1080" "http://$WEB:8080/"
show "HTTP forwarding" curl -sS --max-time 10 -x "http://$LAB_PROXY_V4:3128" "http://$WEB:8080/"
show "HTTP CONNECT" curl -sS --max-time 10 -p -x "http://$LAB_PROXY_V4:3128" "http://$WEB:8080/"
show "a blocked name: SOCKS5 reply 2 (not allowed by the rule set)" curl -sS --max-time 10 --socks5-hostname "$LAB_PROXY_V4:1080" "http://blocked.lab.test/"
lab_stop "$LAB_TUNDNS_PID"

printf '\n# 2. tundns up --userspace, as nobody\n'
# The lab directory is root's alone; nobody gets a directory of its own inside.
chmod 711 "$LAB_DIR"
install -d -o nobody -g nogroup -m 700 "$LAB_DIR/nobody" "$LAB_DIR/nobody/xdg"
LAB_TUNDNS_EXTRA="Address = 127.0.0.1:5353
SetSystemDNS = false
Record = $WEB A $LAB_PEER_TUNNEL_V4
[Proxy]
SOCKS5 = 127.0.0.1:1080"
user_conf="$LAB_DIR/nobody/$LAB_C_IF.conf"
lab_tundns_conf >"$user_conf"
chown nobody:nogroup "$user_conf"
as_nobody=(setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all
    env "XDG_RUNTIME_DIR=$LAB_DIR/nobody/xdg")
lab_spawn "$LAB_C" tundns-userspace "${as_nobody[@]}" "$TUNDNS_BIN" up --userspace "$user_conf"
lab_wait 10 ip netns exec "$LAB_C" curl -sf --max-time 1 --socks5-hostname 127.0.0.1:1080 "http://$WEB:8080/" ||
    lab_die "the rootless tundns did not come up: $(cat "$LAB_DIR/tundns-userspace.log")"
show "who runs it" ps -o user=,args= -p "$LAB_LAST_PID"
show "DNS on 127.0.0.1:5353" dig +tries=1 +time=2 @127.0.0.1 -p 5353 "$WEB" A +noall +answer
show "SOCKS5 on 127.0.0.1:1080" curl -sS --max-time 10 --socks5-hostname 127.0.0.1:1080 "http://$WEB:8080/"
show "its status, from the control socket under \$XDG_RUNTIME_DIR" "${as_nobody[@]}" "$TUNDNS_BIN" status
show "no interface, no route: nothing on the host changed" ip -br link
printf '\ntearing down %s and %s\n' "$LAB_C" "$LAB_N"
