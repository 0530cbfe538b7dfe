#!/usr/bin/env bash
# Download throughput through tundns's SOCKS5 and HTTP CONNECT proxies (issue 12), against
# the same download through the kernel's route over the same tunnel, alternating, in one run:
#   direct   the receiver in C -> N's tunnel address, routed by C's kernel into tundns's TUN
#   socks5   through tundns's SOCKS5 proxy on C's loopback -> tundns's userspace stack ->
#            WireGuard (no route involved)
#   connect  through the HTTP proxy on C's loopback (CONNECT) -> the same stack
#   vip      through the SOCKS5 proxy on the virtual IP 10.30.30.30, through the TUN and the
#            listeners' own userspace stack -> the same stack
# A sender in N (Python) writes SIZE_MB megabytes of a counting pattern on each connection and
# closes; the receiver in C (Python, one process: the proxy handshake, then recv_into a 1 MiB
# buffer and OpenSSL's SHA-256 through hashlib, SHA-NI) checks what arrived against the
# sender's. On these 2-core machines the load generator shares the cores with the tunnel, so
# it is kept lean: coreutils' sha256sum alone takes 5.8 CPU-s/GB here, hashlib 0.9. For each
# run: Gbit/s, tundns's CPU-seconds per GB (utime + stime from /proc/PID/stat) and the
# segments the sender retransmitted (lost on the way, /proc/net/snmp in N). Everything
# runs in throwaway namespaces (lab/lib.sh), torn down on exit.
#
# Usage: bench/proxy-throughput.sh   (as root; tundns from $TUNDNS_BIN, default target/release/tundns)
# Env:   SIZE_MB (default 1000, at most 4000), ROUNDS (default 3, at most 9),
#        PATHS (default "direct socks5 connect vip"; the ratios need direct),
#        PEER (wireguard-go, the default, or tundns: wireguard-go costs about 15 CPU-s/GB, so
#        as N's end it takes most of the two cores and sets every path's rate)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

SIZE_MB=${SIZE_MB:-1000}
ROUNDS=${ROUNDS:-3}
((SIZE_MB >= 1 && SIZE_MB <= 4000)) || lab_die "SIZE_MB must be 1..4000"
((ROUNDS >= 1 && ROUNDS <= 9)) || lab_die "ROUNDS must be 1..9"
PORT=5400
read -ra paths <<<"${PATHS:-direct socks5 connect vip}"
((${#paths[@]})) || lab_die "PATHS lists no path"
for path in "${paths[@]}"; do
    [[ $path =~ ^(direct|socks5|connect|vip)$ ]] || lab_die "PATHS: unknown path $path (direct, socks5, connect, vip)"
done

[[ ${PEER:-wireguard-go} =~ ^(wireguard-go|tundns)$ ]] || lab_die "PEER must be wireguard-go or tundns"
bench_proxy_lab tdpx

pattern="bytes(range(256)) * 4096"   # 1 MiB
lab_spawn "$LAB_N" sender python3 -c "
import socket
srv = socket.create_server(('$LAB_PEER_TUNNEL_V4', $PORT))
block = $pattern
while True:
    c, _ = srv.accept()
    try:
        for _ in range($SIZE_MB):
            c.sendall(block)
    except OSError:
        pass
    c.close()
"
expected=$(python3 -c "
import hashlib
block, digest = $pattern, hashlib.sha256()
for _ in range($SIZE_MB):
    digest.update(block)
print(digest.hexdigest())")
# The receiver: PROXY is none, socks5:HOST:PORT or connect:HOST:PORT.
receiver='
import hashlib, socket, struct, sys
proxy, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if proxy == "none":
    s = socket.create_connection((host, port))
else:
    kind, proxy_host, proxy_port = proxy.split(":")
    s = socket.create_connection((proxy_host, int(proxy_port)))
    if kind == "socks5":
        s.sendall(b"\x05\x01\x00"); assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack(">H", port))
        reply = s.recv(10); assert reply[1] == 0, reply
    else:
        s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.split()[1] == b"200", head
digest, buf = hashlib.sha256(), bytearray(1 << 20)
view = memoryview(buf)
while (n := s.recv_into(buf)):
    digest.update(view[:n])
print(digest.hexdigest())
'
bench_wait_peer_server sender "$PORT"

declare -A gbits cpu resent
# measure PATH: one download over PATH; appends Gbit/s, CPU-s/GB and segments resent.
measure() {
    local path=$1 via=none before after start end got resent_before lost
    case $path in
        socks5) via=socks5:127.0.0.1:1080 ;;
        connect) via=connect:127.0.0.1:3128 ;;
        vip) via=socks5:$LAB_PROXY_V4:1080 ;;
    esac
    resent_before=$(bench_tcp_retransmits "$LAB_N")
    before=$(bench_cpu_ticks "$LAB_TUNDNS_PID")
    start=$(date +%s.%N)
    got=$(timeout 300 ip netns exec "$LAB_C" python3 -c "$receiver" "$via" "$LAB_PEER_TUNNEL_V4" "$PORT")
    end=$(date +%s.%N)
    after=$(bench_cpu_ticks "$LAB_TUNDNS_PID")
    lost=$(($(bench_tcp_retransmits "$LAB_N") - resent_before))
    [[ $got == "$expected" ]] || lab_die "the download over $path arrived changed or short"
    read -r rate cost < <(awk -v b=$((SIZE_MB * 1048576)) -v t0="$start" -v t1="$end" \
        -v c=$((after - before)) -v hz="$BENCH_TICKS_PER_SECOND" \
        'BEGIN { printf "%.3f %.2f\n", b * 8 / (t1 - t0) / 1e9, c / hz / (b / 1e9) }')
    gbits[$path]+="$rate "
    cpu[$path]+="$cost "
    resent[$path]+="$lost "
    printf '  %-7s %8.2f Gbit/s %6.2f CPU-s/GB of tundns, %s segments resent (SHA-256 checked)\n' \
        "$path" "$rate" "$cost" "$lost" >&2
}

lab_log "tundns: $TUNDNS_BIN; $ROUNDS rounds of a $SIZE_MB MiB download each way"
load_start=$(bench_load)
for ((round = 1; round <= ROUNDS; round++)); do
    mapfile -t order < <(bench_round_order "$round" "${paths[@]}")
    for path in "${order[@]}"; do measure "$path"; done
done
median() { printf '%s\n' $1 | bench_median; }
printf '\nmedian of %d rounds, %d MiB each:\n' "$ROUNDS" "$SIZE_MB"
for path in "${paths[@]}"; do
    printf '%-8s %8.2f Gbit/s %6.2f CPU-s/GB   (runs: %s; %s; segments resent: %s)\n' "$path" \
        "$(median "${gbits[$path]}")" "$(median "${cpu[$path]}")" "${gbits[$path]% }" \
        "${cpu[$path]% }" "${resent[$path]% }"
done
for path in "${paths[@]}"; do
    [[ $path == direct || -z ${gbits[direct]:-} ]] && continue
    ratio=$(bench_ratio "$(median "${gbits[$path]}")" "$(median "${gbits[direct]}")")
    printf 'throughput, %s / kernel route = %s (goal >= 0.8: %s)\n' "$path" "$ratio" "$(bench_verdict "$ratio" '>=' 0.8)"
done
printf 'load average (1 min) at the start %s, at the end %s (2 cores)\n' "$load_start" "$(bench_load)"
