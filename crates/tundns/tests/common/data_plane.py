#!/usr/bin/env python3
"""Traffic whose every byte the far end can check, for tests/data_plane.rs.

Both ends derive the same bytes from the command line, with SHAKE-128 over a label, so
nothing but the traffic itself crosses between them:

  tcp-send HOST PORT BYTES     streams BYTES deterministic bytes to HOST, then prints
                               "sha256=HEX bytes=N seconds=S" (the hash of what it sent).
  tcp-receive ADDRESS PORT     accepts one connection and copies it to stdout, for
                               `| sha256sum`; says "listening" on stderr once it listens.
  udp-send HOST PORT PLAN      sends the plan's datagrams, paced (--rate, --copies).
  udp-receive ADDRESS PORT PLAN
                               checks every datagram against the plan until all have come
                               (or --seconds pass, or --idle seconds with none), then prints
                               "expected=E distinct=D duplicates=X corrupt=C
                               sizes_never_arrived=S ..." (then the first missing indices,
                               the sizes of corrupt datagrams and the sizes never seen).

A PLAN is "stream:COUNT:MAX_SIZE" (COUNT datagrams of sizes from 4 to MAX_SIZE, spread
evenly, each its sequence number followed by bytes derived from it) or "sizes:S1,S2,..."
(one datagram per size, derived from the size alone, so that 0 and 1 bytes are checkable).
Every run is bounded: sockets time out and loops stop at their deadlines.
"""

import argparse
import hashlib
import socket
import struct
import sys
import time

CHUNK = 1 << 20
# Coprime to every span of sizes the tests use, so consecutive datagrams differ in size and
# each size between 4 and MAX_SIZE comes up.
SIZE_STRIDE = 7919
CONNECT_TIMEOUT = 10.0
IO_TIMEOUT = 30.0


def derived(label: str, size: int) -> bytes:
    return hashlib.shake_128(label.encode()).digest(size) if size else b""


def plan_datagrams(plan: str) -> list:
    kind, _, spec = plan.partition(":")
    if kind == "stream":
        count, max_size = (int(field) for field in spec.split(":"))
        span = max_size - 3
        datagrams = []
        for seq in range(count):
            size = 4 + (seq * SIZE_STRIDE) % span
            datagrams.append(struct.pack("!I", seq) + derived(f"stream {seq}", size - 4))
        return datagrams
    if kind == "sizes":
        return [derived(f"size {size}", size) for size in map(int, spec.split(","))]
    raise SystemExit(f"unknown plan {plan!r}")


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def tcp_send(args) -> None:
    digest = hashlib.sha256()
    started = time.monotonic()
    with socket.create_connection((args.host, args.port), timeout=CONNECT_TIMEOUT) as sock:
        sock.settimeout(IO_TIMEOUT)
        sent = 0
        for index in range((args.bytes + CHUNK - 1) // CHUNK):
            chunk = derived(f"blob {index}", min(CHUNK, args.bytes - sent))
            digest.update(chunk)
            sock.sendall(chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        # The receiver closes once it has read everything: wait for that, not just the send.
        while sock.recv(CHUNK):
            pass
    print(f"sha256={digest.hexdigest()} bytes={sent} seconds={time.monotonic() - started:.2f}")


def tcp_receive(args) -> None:
    with socket.socket(family_of(args.address), socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((args.address, args.port))
        listener.listen(1)
        listener.settimeout(IO_TIMEOUT)
        print("listening", file=sys.stderr, flush=True)
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(IO_TIMEOUT)
            out = sys.stdout.buffer
            received = 0
            while chunk := connection.recv(CHUNK):
                out.write(chunk)
                received += len(chunk)
            out.flush()
    print(f"received {received} bytes", file=sys.stderr)


def udp_send(args) -> None:
    datagrams = plan_datagrams(args.plan)
    # Not connected: the receiver stops once it has every datagram, and the port
    # unreachable that a later copy then draws must not fail the sender.
    with socket.socket(family_of(args.host), socket.SOCK_DGRAM) as sock:
        interval = 1 / args.rate
        due = time.monotonic()
        sent = 0
        for _ in range(args.copies):
            for datagram in datagrams:
                if (ahead := due - time.monotonic()) > 0:
                    time.sleep(ahead)
                sock.sendto(datagram, (args.host, args.port))
                sent += 1
                # After a stall (a busy machine), go on at the same pace rather than
                # catching up with a burst that only measures queue lengths.
                due = max(due, time.monotonic()) + interval
    print(f"sent={sent}")


def udp_receive(args) -> None:
    datagrams = plan_datagrams(args.plan)
    index_of = {datagram: index for index, datagram in enumerate(datagrams)}
    seen = set()
    duplicates = 0
    corrupt_sizes = []
    with socket.socket(family_of(args.address), socket.SOCK_DGRAM) as sock:
        # Room for the whole plan, so a slow reader loses nothing (root may exceed rmem_max).
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 16 << 20)
        sock.bind((args.address, args.port))
        print("listening", file=sys.stderr, flush=True)
        deadline = time.monotonic() + args.seconds
        idle_deadline = deadline
        while len(seen) < len(datagrams) and (now := time.monotonic()) < min(deadline, idle_deadline):
            sock.settimeout(min(deadline, idle_deadline) - now)
            try:
                datagram = sock.recv(65536)
            except socket.timeout:
                break
            idle_deadline = time.monotonic() + args.idle
            index = index_of.get(datagram)
            if index is None:
                corrupt_sizes.append(len(datagram))
            elif index in seen:
                duplicates += 1
            else:
                seen.add(index)
    missing = [index for index in range(len(datagrams)) if index not in seen]
    sizes_missing = sorted(
        {len(datagram) for datagram in datagrams} - {len(datagrams[index]) for index in seen}
    )
    print(
        f"expected={len(datagrams)} distinct={len(seen)} duplicates={duplicates} "
        f"corrupt={len(corrupt_sizes)} sizes_never_arrived={len(sizes_missing)} "
        f"missing={','.join(map(str, missing[:20]))} "
        f"corrupt_sizes={','.join(map(str, corrupt_sizes[:20]))} "
        f"sizes_missing={','.join(map(str, sizes_missing[:20]))}"
    )


def add_command(commands, run, endpoint: str, last=None):
    """A subcommand named after `run`: ENDPOINT PORT, then `last` (name, type) if any."""
    parser = commands.add_parser(run.__name__.replace("_", "-"))
    parser.add_argument(endpoint)
    parser.add_argument("port", type=int)
    if last:
        parser.add_argument(last[0], type=last[1])
    parser.set_defaults(run=run)
    return parser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_command(commands, tcp_send, "host", ("bytes", int))
    add_command(commands, tcp_receive, "address")
    send = add_command(commands, udp_send, "host", ("plan", str))
    send.add_argument("--rate", type=float, default=5000.0, help="datagrams per second")
    send.add_argument("--copies", type=int, default=1, help="times the plan is sent")
    receive = add_command(commands, udp_receive, "address", ("plan", str))
    receive.add_argument("--seconds", type=float, default=30.0, help="at most this long")
    receive.add_argument("--idle", type=float, default=2.0, help="stop after a silence this long")
    args = parser.parse_args()
    args.run(args)

if __name__ == "__main__":
    main()
