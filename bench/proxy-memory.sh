#!/usr/bin/env bash
# tundns's memory with many idle proxied connections (issue 12): RSS after start-up, then
# with CONNECTIONS SOCKS5 connections open through the tunnel to a server in N that accepts
# and holds them, each having moved a few bytes each way, and the growth per connection.
# Everything runs in throwaway namespaces (lab/lib.sh), torn down on exit.
#
# Usage: bench/proxy-memory.sh   (as root; tundns from $TUNDNS_BIN, default target/release/tundns)
# Env:   CONNECTIONS (default 1000, at most 2000: the proxies serve 512 per client address,
#        so the client spreads its connections over several loopback addresses)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

CONNECTIONS=${CONNECTIONS:-1000}
((CONNECTIONS >= 1 && CONNECTIONS <= 2000)) || lab_die "CONNECTIONS must be 1..2000"
PORT=5400

bench_proxy_lab tdpm

# A server in N that answers each connection's first bytes and then holds it open.
lab_spawn "$LAB_N" holder python3 -c "
import selectors, socket
srv = socket.create_server(('$LAB_PEER_TUNNEL_V4', $PORT), backlog=4096)
sel = selectors.DefaultSelector(); sel.register(srv, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is srv:
            c, _ = srv.accept(); sel.register(c, selectors.EVENT_READ)
        else:
            data = key.fileobj.recv(64)
            if data: key.fileobj.sendall(b'held')
            else: sel.unregister(key.fileobj); key.fileobj.close()
"
bench_wait_peer_server holder "$PORT"
sleep 1
idle=$(bench_rss_kib "$LAB_TUNDNS_PID")

# The client opens the connections (from 127.0.0.2, .3, ... so that no address holds more
# than 500), checks each answers, and holds them until told to stop.
ip netns exec "$LAB_C" python3 -c "
import socket, struct, sys, time
held = []
for i in range($CONNECTIONS):
    s = socket.socket(); s.bind(('127.0.0.%d' % (2 + i // 500), 0)); s.settimeout(10)
    s.connect(('127.0.0.1', 1080))
    s.sendall(b'\x05\x01\x00'); assert s.recv(2) == b'\x05\x00'
    s.sendall(b'\x05\x01\x00\x01' + socket.inet_aton('$LAB_PEER_TUNNEL_V4') + struct.pack('>H', $PORT))
    reply = s.recv(10); assert reply[1] == 0, reply
    s.sendall(b'ping'); assert s.recv(4) == b'held'
    held.append(s)
print('open', flush=True)
time.sleep(600)
" >"$LAB_DIR/client.log" 2>&1 &
client=$!
LAB_PIDS+=("$client")
lab_wait 120 grep -q open "$LAB_DIR/client.log" ||
    lab_die "the client did not open its connections: $(cat "$LAB_DIR/client.log")"
sleep 2
loaded=$(bench_rss_kib "$LAB_TUNDNS_PID")
kill "$client" 2>/dev/null || true

awk -v idle="$idle" -v loaded="$loaded" -v n="$CONNECTIONS" 'BEGIN {
    printf "tundns RSS: %.1f MiB idle, %.1f MiB with %d idle proxied connections\n", idle / 1024, loaded / 1024, n
    printf "growth: %.1f MiB (%.1f KiB per connection; goal for 1000: <= 64 MB above idle)\n", (loaded - idle) / 1024, (loaded - idle) / n
}'
