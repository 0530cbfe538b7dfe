#!/usr/bin/env bash
# Many downloads at once through tundns's SOCKS5 proxy (issue 12): CLIENTS connections open
# together, each fetching SIZE_KB from a server in N through the tunnel; every download must
# arrive whole, and the script prints the completion times' p50, p99 and maximum, the total
# rate, and the same for the kernel's route over the same tunnel (the baseline, same run).
# Everything runs in throwaway namespaces (lab/lib.sh), torn down on exit.
#
# Usage: bench/proxy-concurrency.sh   (as root; tundns from $TUNDNS_BIN, default target/release/tundns)
# Env:   CLIENTS (default 200, at most 500), SIZE_KB (default 1024, at most 16384)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

CLIENTS=${CLIENTS:-200}
SIZE_KB=${SIZE_KB:-1024}
((CLIENTS >= 1 && CLIENTS <= 500)) || lab_die "CLIENTS must be 1..500"
((SIZE_KB >= 1 && SIZE_KB <= 16384)) || lab_die "SIZE_KB must be 1..16384"
PORT=5400

bench_proxy_lab tdpc

# A server in N: each connection gets SIZE_KB KiB of a counting pattern, then is closed.
lab_spawn "$LAB_N" sender python3 -c "
import asyncio
block = bytes(range(256)) * 4
async def serve(reader, writer):
    for _ in range($SIZE_KB):
        writer.write(block)
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(serve, '$LAB_PEER_TUNNEL_V4', $PORT, backlog=1024)
    await server.serve_forever()
asyncio.run(main())
"
bench_wait_peer_server sender "$PORT"

# measure PATH: all downloads at once over PATH (socks5 or direct); prints one line.
measure() {
    ip netns exec "$LAB_C" timeout 120 python3 -c "
import asyncio, socket, struct, time
expected = bytes(range(256)) * 4 * $SIZE_KB
async def one(path):
    start = time.monotonic()
    if path == 'socks5':
        reader, writer = await asyncio.open_connection('127.0.0.1', 1080)
        writer.write(b'\x05\x01\x00'); await writer.drain()
        assert await reader.readexactly(2) == b'\x05\x00'
        writer.write(b'\x05\x01\x00\x01' + socket.inet_aton('$LAB_PEER_TUNNEL_V4') + struct.pack('>H', $PORT))
        await writer.drain()
        reply = await reader.readexactly(10); assert reply[1] == 0, reply
    else:
        reader, writer = await asyncio.open_connection('$LAB_PEER_TUNNEL_V4', $PORT)
    data = await reader.read(-1)
    writer.close()
    return time.monotonic() - start, data == expected
async def main(path):
    start = time.monotonic()
    results = await asyncio.gather(*(one(path) for _ in range($CLIENTS)), return_exceptions=True)
    wall = time.monotonic() - start
    done = sorted(r[0] for r in results if not isinstance(r, BaseException) and r[1])
    failed = len(results) - len(done)
    pick = lambda q: done[min(len(done) - 1, int(q * len(done)))] * 1000 if done else float('nan')
    print(f'{path:7} {len(done)}/{len(results)} whole ({failed} failed), p50 {pick(0.5):.0f} ms, p99 {pick(0.99):.0f} ms, max {pick(1.0):.0f} ms, {len(done) * $SIZE_KB * 1024 * 8 / wall / 1e9:.2f} Gbit/s in all')
asyncio.run(main('$1'))
"
}

lab_log "tundns: $TUNDNS_BIN; $CLIENTS downloads of $SIZE_KB KiB at once"
measure direct
measure socks5
