#!/usr/bin/env python3
"""Per-query DNS latency, one query at a time: p50/p90/p99 in microseconds.

A bounded measurement client for bench/dns-latency.sh: it sends WARMUP + COUNT sequential
UDP queries to SERVER (one outstanding at a time, a fresh ID each), times each from just
before send() to just after the matching recv() with time.perf_counter_ns, and prints one
line of key=value pairs. A query unanswered within TIMEOUT seconds counts as lost; the run
stops at COUNT queries or after MAX_SECONDS, whichever comes first.

The client's own cost (the Python loop and two system calls) is in every figure alike, so
compare figures from the same run rather than reading them as server time.
"""

import argparse
import socket
import struct
import sys
import time


def encode_query(qid: int, name: str, qtype: int) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD, one question
    labels = b"".join(
        bytes([len(label)]) + label.encode("ascii") for label in name.rstrip(".").split(".")
    )
    return header + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def percentile(sorted_values, fraction):
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--name", default="www.lab.test")
    parser.add_argument("--qtype", type=int, default=1)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args()
    if not 1 <= args.count <= 100_000 or not 0 <= args.warmup <= 10_000:
        parser.error("count must be 1..100000 and warmup 0..10000")
    if not 0 < args.max_seconds <= 120:
        parser.error("max-seconds must be in (0, 120]")

    family = socket.AF_INET6 if ":" in args.server else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(args.timeout)
    sock.connect((args.server, args.port))
    queries = [encode_query(qid, args.name, args.qtype) for qid in range(1, 65536)]

    deadline = time.monotonic() + args.max_seconds
    samples = []
    lost = 0
    sent = 0
    while sent < args.warmup + args.count and time.monotonic() < deadline:
        query = queries[sent % len(queries)]
        start = time.perf_counter_ns()
        sock.send(query)
        try:
            while True:  # skip late answers to earlier (lost) queries
                answer = sock.recv(4096)
                if answer[:2] == query[:2]:
                    break
        except socket.timeout:
            lost += 1
            sent += 1
            continue
        elapsed = time.perf_counter_ns() - start
        if sent >= args.warmup:
            samples.append(elapsed)
        sent += 1

    if not samples:
        print(f"error: no answers from {args.server} ({lost} lost)", file=sys.stderr)
        return 1
    samples.sort()
    micros = {p: percentile(samples, p / 100) / 1000 for p in (50, 90, 99)}
    print(
        f"server={args.server} n={len(samples)} lost={lost} "
        f"p50={micros[50]:.1f} p90={micros[90]:.1f} p99={micros[99]:.1f} "
        f"min={samples[0] / 1000:.1f} max={samples[-1] / 1000:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
