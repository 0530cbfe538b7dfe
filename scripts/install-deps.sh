#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmarks need on Debian, as root.
# Idempotent: packages already present are left as they are.
set -euo pipefail

packages=(
    wireguard-go wireguard-tools   # the real peer, and `wg` for UAPI
    unbound                        # the real upstream resolver
    dnsutils knot-dnsutils         # dig, kdig
    dnsperf iperf3 dnsdist nghttp2-client   # benchmarks (h2load: DoH throughput)
    iproute2 iputils-ping tcpdump netcat-openbsd procps openssl python3
    curl                           # the proxies' real client
    openssh-client openssh-server  # ssh through the SOCKS5 proxy (nc -X 5), to a lab sshd
    nftables                       # full tunnels' anti-spoofing and mark rules, as wg-quick
    systemd                        # systemd-analyze verifies packaging/tundns@.service
    g++                            # libFuzzer, for the fuzzing smoke run
)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# unbound's and openssh-server's Debian packages start system-wide instances; the labs run
# their own, in their own namespaces, and never need them.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now unbound ssh ssh.socket >/dev/null 2>&1 || true
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

# The fuzzing smoke run (scripts/fuzz-smoke.sh); libfuzzer-sys builds libFuzzer with g++.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
