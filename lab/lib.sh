# shellcheck shell=bash
# Lab helpers shared by lab/demo.sh and bench/*.sh: throwaway network namespaces with a real
# wireguard-go peer and an unbound upstream, and tundns as the client.
#
# Safety: every packet stays inside the namespaces created here. The two namespaces are joined
# only to each other by a veth pair; neither has a link to the host. Everything is torn down
# by lab_teardown, which lab_init installs as an EXIT trap.
#
# Topology (the same as crates/tundns/tests/common/mod.rs):
#   C  (client)   192.0.2.2/24, 2001:db8::2/64        runs tundns (or wireguard-go for baselines)
#   N  (network)  192.0.2.1/24, 2001:db8::1/64        wireguard-go on 51820, tunnel 10.99.0.1/fd99::1
#                 192.0.2.53, 2001:db8::53            unbound with the lab zone
#                 192.0.2.54                          dead upstream: ICMP port unreachable
#   C routes 198.51.100.0/24 to N, where it is blackholed: a silent dead upstream.

LAB_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_WG_PORT=51820
LAB_UNBOUND_V4=192.0.2.53
LAB_UNBOUND_V6=2001:db8::53
LAB_DEAD_REFUSING=192.0.2.54
LAB_DEAD_SILENT=198.51.100.53
LAB_PEER_TUNNEL_V4=10.99.0.1
LAB_CLIENT_TUNNEL_V4=10.99.0.2
LAB_PROXY_V4=10.30.30.30
LAB_PROXY_V6=fd30:30:30::30

lab_log() { printf '[lab] %s\n' "$*" >&2; }
lab_die() {
    # To the script's own stderr, even from inside a redirected lab_wait.
    printf '[lab] error: %s\n' "$*" >&"${LAB_STDERR:-2}"
    exit 1
}

# lab_require_tools TOOL...: fail early with the list of what is missing.
lab_require_tools() {
    local missing=() tool
    [[ $(id -u) -eq 0 ]] || lab_die "must run as root (network namespaces, TUN devices)"
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) || lab_die "missing tools: ${missing[*]} (see LAB.md for apt-get install)"
}

# lab_init PREFIX: names for this run (prefix + pid), a work dir, and the teardown trap.
lab_init() {
    local prefix=${1:-tdlab}
    exec {LAB_STDERR}>&2
    LAB_ID="${prefix}$$"
    LAB_C="${LAB_ID}c"
    LAB_N="${LAB_ID}n"
    LAB_DIR=$(mktemp -d "/tmp/${LAB_ID}.XXXXXX")
    umask 077
    LAB_PIDS=()
    LAB_IFACES=()
    trap lab_teardown EXIT
    trap 'exit 130' INT TERM
}

lab_teardown() {
    local pid i
    for pid in "${LAB_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${LAB_PIDS[@]}"; do
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$LAB_C" 2>/dev/null || true
    ip netns del "$LAB_N" 2>/dev/null || true
    rm -rf "/etc/netns/$LAB_C" "/etc/netns/$LAB_N"
    # tundns's files for the client namespace: its state (the self-signed identity of
    # encrypted DNS included) and its sockets, which outlive a namespace that is gone.
    rm -rf "/var/lib/tundns/netns/$LAB_C" "/run/tundns/netns/$LAB_C"
    for i in "${LAB_IFACES[@]}"; do
        rm -f "/var/run/wireguard/$i.sock"
    done
    [[ -n ${LAB_DIR:-} ]] && rm -rf "$LAB_DIR"
    LAB_PIDS=()
}

# lab_wait SECONDS CMD...: retry CMD every 50 ms until it succeeds; fail after SECONDS.
lab_wait() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}

lab_in_c() { ip netns exec "$LAB_C" "$@"; }
lab_in_n() { ip netns exec "$LAB_N" "$@"; }

# lab_spawn NS LOGNAME CMD...: start CMD in the background inside NS, remembered for teardown.
lab_spawn() {
    local ns=$1 log=$2
    shift 2
    ip netns exec "$ns" "$@" >"$LAB_DIR/$log.log" 2>&1 &
    LAB_PIDS+=($!)
    LAB_LAST_PID=$!
}

# lab_network: the two namespaces, the veth between them, and the dead upstreams.
lab_network() {
    local veth_c="${LAB_ID}vc" veth_n="${LAB_ID}vn" ns
    ip netns add "$LAB_C"
    ip netns add "$LAB_N"
    for ns in "$LAB_C" "$LAB_N"; do
        mkdir -p "/etc/netns/$ns"
        printf 'hosts: files dns\n' >"/etc/netns/$ns/nsswitch.conf"
        ip -n "$ns" link set lo up
        # No duplicate address detection: IPv6 addresses (ours and tundns's) are usable at once.
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    done
    # glibc in C asks the virtual proxy; anything in N asks unbound. Nothing asks the host's resolver.
    printf 'nameserver %s\noptions timeout:2 attempts:1\n' "$LAB_PROXY_V4" >"/etc/netns/$LAB_C/resolv.conf"
    printf 'nameserver %s\noptions timeout:2 attempts:1\n' "$LAB_UNBOUND_V4" >"/etc/netns/$LAB_N/resolv.conf"

    ip link add "$veth_c" netns "$LAB_C" type veth peer name "$veth_n" netns "$LAB_N"
    ip -n "$LAB_C" addr add 192.0.2.2/24 dev "$veth_c"
    ip -n "$LAB_C" addr add 2001:db8::2/64 dev "$veth_c" nodad
    ip -n "$LAB_N" addr add 192.0.2.1/24 dev "$veth_n"
    ip -n "$LAB_N" addr add 2001:db8::1/64 dev "$veth_n" nodad
    ip -n "$LAB_N" addr add "$LAB_UNBOUND_V4/24" dev "$veth_n"
    ip -n "$LAB_N" addr add "$LAB_UNBOUND_V6/64" dev "$veth_n" nodad
    ip -n "$LAB_N" addr add "$LAB_DEAD_REFUSING/24" dev "$veth_n"
    ip -n "$LAB_C" link set "$veth_c" up
    ip -n "$LAB_N" link set "$veth_n" up
    ip -n "$LAB_C" route add 198.51.100.0/24 via 192.0.2.1
    ip -n "$LAB_N" route add blackhole "$LAB_DEAD_SILENT/32"
}

# lab_unbound_conf LISTEN_ADDR...: unbound serving lab/unbound-zone.conf on LISTEN_ADDR...,
# plus the zone files listed in $LAB_UNBOUND_INCLUDES (space-separated paths), if any.
lab_unbound_conf() {
    local addr include
    cat <<EOF
server:
    do-daemonize: no
    chroot: ""
    username: ""
    pidfile: ""
    directory: "$LAB_DIR"
    use-syslog: no
    logfile: ""
    verbosity: 0
    num-threads: ${LAB_UNBOUND_THREADS:-1}
    port: 53
    do-ip4: yes
    do-ip6: yes
    do-udp: yes
    do-tcp: yes
    access-control: 0.0.0.0/0 allow
    access-control: ::/0 allow
    do-not-query-localhost: yes
    module-config: "iterator"
EOF
    for addr in "$@"; do
        printf '    interface: %s\n' "$addr"
    done
    printf 'include: "%s"\n' "$LAB_LIB_DIR/unbound-zone.conf"
    for include in ${LAB_UNBOUND_INCLUDES:-}; do
        printf 'include: "%s"\n' "$include"
    done
    printf 'remote-control:\n    control-enable: no\n'
}

# lab_start_unbound NS ADDR...: unbound listening on ADDR... inside NS; waits until it answers.
lab_start_unbound() {
    local ns=$1
    shift
    lab_unbound_conf "$@" >"$LAB_DIR/unbound-$ns.conf"
    lab_spawn "$ns" "unbound-$ns" unbound -d -c "$LAB_DIR/unbound-$ns.conf"
    lab_wait 10 ip netns exec "$ns" dig +time=1 +tries=1 +short "@$1" www.lab.test A ||
        lab_die "unbound in $ns did not answer on $1 (log: $(cat "$LAB_DIR/unbound-$ns.log"))"
}

# lab_keypair NAME: writes $LAB_DIR/NAME.key and NAME.pub.
lab_keypair() {
    wg genkey >"$LAB_DIR/$1.key"
    wg pubkey <"$LAB_DIR/$1.key" >"$LAB_DIR/$1.pub"
}

# lab_start_uapi_wireguard LOGNAME NS IFACE KEYNAME ADDR4/LEN ADDR6/LEN LISTEN_PORT CMD...: a
# userspace WireGuard that serves UAPI on /var/run/wireguard/IFACE.sock (wireguard-go,
# boringtun-cli), started as CMD inside NS and configured with `wg`. LISTEN_PORT may be empty.
# Its pid is $LAB_LAST_PID.
lab_start_uapi_wireguard() {
    local log=$1 ns=$2 iface=$3 key=$4 addr4=$5 addr6=$6 port=$7
    shift 7
    LAB_IFACES+=("$iface")
    lab_spawn "$ns" "$log" "$@"
    lab_wait 10 test -S "/var/run/wireguard/$iface.sock" ||
        lab_die "$log did not start: $(cat "$LAB_DIR/$log.log")"
    ip netns exec "$ns" wg set "$iface" private-key "$LAB_DIR/$key.key" ${port:+listen-port "$port"}
    ip -n "$ns" addr add "$addr4" dev "$iface"
    ip -n "$ns" addr add "$addr6" dev "$iface" nodad
    # wg-quick's MTU, as tundns's config has it; not every implementation sets one itself.
    ip -n "$ns" link set "$iface" mtu 1420 up
}

# lab_start_wireguard_go NS IFACE KEYNAME ADDR4/LEN ADDR6/LEN [LISTEN_PORT]
lab_start_wireguard_go() {
    lab_start_uapi_wireguard "wireguard-go-$2" "$1" "$2" "$3" "$4" "$5" "${6:-}" \
        env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$2"
}

# lab_wg_peer NS IFACE PEER_KEYNAME ALLOWED_IPS [ENDPOINT]
lab_wg_peer() {
    local ns=$1 iface=$2 peer=$3 allowed=$4 endpoint=${5:-}
    ip netns exec "$ns" wg set "$iface" peer "$(cat "$LAB_DIR/$peer.pub")" \
        allowed-ips "$allowed" ${endpoint:+endpoint "$endpoint"}
}

# lab_peer_wireguard: N's wireguard-go (interface $LAB_N_WG, keys "peer"), with the client
# (keys "client") as its peer.
lab_peer_wireguard() {
    LAB_N_WG="${LAB_ID}w"
    lab_keypair peer
    lab_keypair client
    lab_start_wireguard_go "$LAB_N" "$LAB_N_WG" peer 10.99.0.1/24 fd99::1/64 "$LAB_WG_PORT"
    lab_wg_peer "$LAB_N" "$LAB_N_WG" client 10.99.0.2/32,fd99::2/128
}

# lab_peer_network: N's wireguard-go (lab_peer_wireguard) and N's unbound.
lab_peer_network() {
    lab_peer_wireguard
    lab_start_unbound "$LAB_N" "$LAB_UNBOUND_V4" "$LAB_UNBOUND_V6"
}

# lab_tundns_conf UPSTREAMS: a wg-quick config for the client side, with the [DNSProxy] section.
# LAB_DNSPROXY=off turns the proxy off, leaving the filter with no rules; LAB_TUNDNS_EXTRA is
# appended (more sections, such as [Proxy]).
lab_tundns_conf() {
    local upstreams=${1:-$LAB_UNBOUND_V4}
    cat <<EOF
[Interface]
PrivateKey = $(cat "$LAB_DIR/client.key")
Address = 10.99.0.2/24, fd99::2/64
MTU = 1420

[Peer]
PublicKey = $(cat "$LAB_DIR/peer.pub")
Endpoint = 192.0.2.1:$LAB_WG_PORT
AllowedIPs = 10.99.0.0/24, fd99::/64

[DNSProxy]
Enabled = $([[ ${LAB_DNSPROXY:-on} == off ]] && echo false || echo true)
Address = $LAB_PROXY_V4, $LAB_PROXY_V6
Upstream = $upstreams
Timeout = 500ms
${LAB_TUNDNS_EXTRA:-}
EOF
}

lab_tundns_ready() {
    kill -0 "$LAB_TUNDNS_PID" 2>/dev/null || lab_die "tundns exited: $(cat "$LAB_DIR/tundns.log")"
    ip netns exec "$LAB_C" wg show "$LAB_C_IF" >/dev/null 2>&1 || return 1
    [[ ${LAB_DNSPROXY:-on} == off ]] && return 0
    ip netns exec "$LAB_C" ip route get "$LAB_PROXY_V4" >/dev/null 2>&1 &&
        ip netns exec "$LAB_C" ip route get "$LAB_PROXY_V6" >/dev/null 2>&1
}

# lab_start_tundns BIN [UPSTREAMS]: tundns up in C, interface $LAB_C_IF; waits for `wg show`.
lab_start_tundns() {
    local bin=$1 upstreams=${2:-}
    [[ -x $bin ]] || lab_die "tundns binary not found at $bin (build it, or set TUNDNS_BIN)"
    LAB_C_IF="${LAB_ID}t"
    LAB_IFACES+=("$LAB_C_IF")
    lab_tundns_conf "$upstreams" >"$LAB_DIR/$LAB_C_IF.conf"
    lab_spawn "$LAB_C" tundns "$bin" up "$LAB_DIR/$LAB_C_IF.conf"
    LAB_TUNDNS_PID=$LAB_LAST_PID
    # Ready when UAPI answers and both virtual IPs are routable (routes may follow UAPI).
    lab_wait 10 lab_tundns_ready ||
        lab_die "tundns did not come up: $(cat "$LAB_DIR/tundns.log")"
    lab_wait 10 ip netns exec "$LAB_C" ping -n -c 1 -W 1 "$LAB_PEER_TUNNEL_V4" ||
        lab_die "no ping through tundns to $LAB_PEER_TUNNEL_V4: $(cat "$LAB_DIR/tundns.log")"
}

# lab_start_wireguard_go_client: the baseline client, wireguard-go in C with the same addresses.
lab_start_wireguard_go_client() {
    LAB_C_IF="${LAB_ID}g"
    # A fresh peer entry in N: gotatun's TAI64N handshake timestamps run 27 s ahead of
    # wireguard-go's (TAI offset 37 s vs 10 s), so after tundns has handshaken with this key, N
    # would reject wireguard-go's initiations as replays for 27 s.
    ip netns exec "$LAB_N" wg set "$LAB_N_WG" peer "$(cat "$LAB_DIR/client.pub")" remove
    lab_wg_peer "$LAB_N" "$LAB_N_WG" client 10.99.0.2/32,fd99::2/128
    lab_start_wireguard_go "$LAB_C" "$LAB_C_IF" client 10.99.0.2/24 fd99::2/64
    lab_wg_peer "$LAB_C" "$LAB_C_IF" peer 10.99.0.0/24,fd99::/64 "192.0.2.1:$LAB_WG_PORT"
    lab_wait 10 ip netns exec "$LAB_C" ping -n -c 1 -W 1 "$LAB_PEER_TUNNEL_V4" ||
        lab_die "no ping through wireguard-go to $LAB_PEER_TUNNEL_V4"
}

# lab_stop PID: SIGTERM, then wait (bounded) for the process to go.
lab_stop() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
}
