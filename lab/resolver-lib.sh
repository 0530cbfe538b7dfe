# shellcheck shell=bash
# Resolver lab helpers (issue 3), sourced after lab/lib.sh; the shell twin of
# crates/tundns/tests/common/resolver_lab.rs. Everything stays in the lab's namespaces and
# directory, and lib.sh's EXIT trap tears it down.
#
# Additions in N:
#   unbound 192.0.2.53, 2001:db8::53   :53 plain, :853 DoT, :443 DoH (/dns-query) with a cert for
#                                      dns.lab.test from a throwaway CA in $LAB_DIR; logs every
#                                      query to $LAB_DIR/unbound-queries.log; unbound-control on
#                                      the unix socket $LAB_DIR/unbound.ctl
#   unbound 10.99.0.53, fd99::53       tunnel-only resolver for corp.internal, on N's wireguard-go
#                                      interface; refuses sources outside the tunnel
#   dnsdist 192.0.2.55                 forwards to unbound (a second upstream)

LAB_TLS_NAME=dns.lab.test
LAB_TUNNEL_RESOLVER_V4=10.99.0.53
LAB_TUNNEL_RESOLVER_V6=fd99::53
LAB_DNSDIST_V4=192.0.2.55

# lab_make_ca: $LAB_DIR/lab-ca.pem signs $LAB_DIR/server.pem (dns.lab.test and unbound's IPs);
# $LAB_DIR/wrong-ca.pem is an unrelated CA for negative tests.
lab_make_ca() {
    local ca
    (
        cd "$LAB_DIR" || exit 1
        for ca in lab-ca wrong-ca; do
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
                -keyout "$ca.key" -out "$ca.pem" -subj "/CN=tundns lab CA" \
                -addext "basicConstraints=critical,CA:TRUE" \
                -addext "keyUsage=critical,keyCertSign,cRLSign"
        done
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout server.key -out server.csr -subj "/CN=$LAB_TLS_NAME"
        printf 'subjectAltName=DNS:%s,IP:%s,IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' \
            "$LAB_TLS_NAME" "$LAB_UNBOUND_V4" "$LAB_UNBOUND_V6" >server.ext
        openssl x509 -req -in server.csr -CA lab-ca.pem -CAkey lab-ca.key -CAcreateserial \
            -days 2 -extfile server.ext -out server.pem
        openssl verify -CAfile lab-ca.pem server.pem
    ) >"$LAB_DIR/openssl.log" 2>&1 || lab_die "openssl failed: $(cat "$LAB_DIR/openssl.log")"
}

# lab_resolver_unbound_conf: lib.sh's unbound config plus query logging, control socket, DoT,
# DoH and lab/unbound-resolver-zone.conf (later settings override earlier ones).
lab_resolver_unbound_conf() {
    local addr
    lab_unbound_conf "$LAB_UNBOUND_V4" "$LAB_UNBOUND_V6"
    cat <<EOF
server:
    logfile: "$LAB_DIR/unbound-queries.log"
    log-queries: yes
    extended-statistics: yes
    tls-port: 853
    https-port: 443
    http-endpoint: "/dns-query"
    tls-service-key: "$LAB_DIR/server.key"
    tls-service-pem: "$LAB_DIR/server.pem"
EOF
    for addr in "$LAB_UNBOUND_V4" "$LAB_UNBOUND_V6"; do
        printf '    interface: %s@853\n    interface: %s@443\n' "$addr" "$addr"
    done
    cat <<EOF
include: "$LAB_LIB_DIR/unbound-resolver-zone.conf"
remote-control:
    control-enable: yes
    control-interface: "$LAB_DIR/unbound.ctl"
    control-use-cert: no
EOF
}

# lab_start_resolver_unbound: the instrumented unbound in N; its pid is $LAB_UNBOUND_PID.
lab_start_resolver_unbound() {
    [[ -f $LAB_DIR/server.pem ]] || lab_make_ca
    lab_resolver_unbound_conf >"$LAB_DIR/unbound-resolver.conf"
    lab_spawn "$LAB_N" unbound-resolver unbound -d -c "$LAB_DIR/unbound-resolver.conf"
    LAB_UNBOUND_PID=$LAB_LAST_PID
    lab_wait 10 lab_in_n dig +time=1 +tries=1 +short "@$LAB_UNBOUND_V4" www.lab.test A ||
        lab_die "unbound did not answer: $(cat "$LAB_DIR/unbound-resolver.log" "$LAB_DIR/unbound-queries.log")"
}

# lab_stop_resolver_unbound / lab_start_resolver_unbound: stop and restart it (serve-stale).
lab_stop_resolver_unbound() {
    lab_stop "$LAB_UNBOUND_PID"
}

# lab_unbound_queries NAME [TYPE]: how many queries for NAME (any case) unbound has received.
lab_unbound_queries() {
    local name=${1%.} type=${2:-}
    awk -v name="${name,,}." -v type="${type^^}" '
        $(NF) == "IN" && tolower($(NF-2)) == name && (type == "" || toupper($(NF-1)) == type) { n++ }
        END { print n + 0 }' "$LAB_DIR/unbound-queries.log"
}

# lab_unbound_stat KEY: one counter of unbound-control stats_noreset (0 when absent).
lab_unbound_stat() {
    unbound-control -c "$LAB_DIR/unbound-resolver.conf" stats_noreset |
        awk -F= -v key="$1" '$1 == key { v = $2 } END { print v + 0 }'
}

# lab_start_tunnel_resolver: unbound for corp.internal on 10.99.0.53 / fd99::53, addresses of
# N's wireguard-go interface ($LAB_N_WG, from lab_peer_wireguard), configured from
# lab/unbound-tunnel.conf.in.
lab_start_tunnel_resolver() {
    ip -n "$LAB_N" addr add "$LAB_TUNNEL_RESOLVER_V4/32" dev "$LAB_N_WG"
    ip -n "$LAB_N" addr add "$LAB_TUNNEL_RESOLVER_V6/128" dev "$LAB_N_WG" nodad
    sed -e "s|@DIR@|$LAB_DIR|g" -e "s|@V4@|$LAB_TUNNEL_RESOLVER_V4|g" \
        -e "s|@V6@|$LAB_TUNNEL_RESOLVER_V6|g" -e "s|@CORP_ZONE@|$LAB_LIB_DIR/unbound-corp-zone.conf|g" \
        "$LAB_LIB_DIR/unbound-tunnel.conf.in" >"$LAB_DIR/unbound-tunnel.conf"
    lab_spawn "$LAB_N" unbound-tunnel-daemon unbound -d -c "$LAB_DIR/unbound-tunnel.conf"
    lab_wait 10 lab_in_n dig +time=1 +tries=1 +short -b "$LAB_PEER_TUNNEL_V4" \
        "@$LAB_TUNNEL_RESOLVER_V4" db.corp.internal A ||
        lab_die "the tunnel resolver did not answer: $(cat "$LAB_DIR/unbound-tunnel-daemon.log")"
}

# lab_start_dnsdist: dnsdist on 192.0.2.55 forwarding to unbound (no console, no security poll).
lab_start_dnsdist() {
    ip -n "$LAB_N" addr add "$LAB_DNSDIST_V4/24" dev "${LAB_ID}vn"
    cat >"$LAB_DIR/dnsdist.conf" <<EOF
setLocal("$LAB_DNSDIST_V4:53")
setACL({"192.0.2.0/24", "10.99.0.0/24"})
newServer({address="$LAB_UNBOUND_V4:53", checkName="health.lab.test."})
setSecurityPollSuffix("")
EOF
    lab_spawn "$LAB_N" dnsdist dnsdist --supervised --disable-syslog -C "$LAB_DIR/dnsdist.conf"
    lab_wait 10 lab_in_n dig +time=1 +tries=1 +short "@$LAB_DNSDIST_V4" www.lab.test A ||
        lab_die "dnsdist did not answer: $(cat "$LAB_DIR/dnsdist.log")"
}

# lab_resolver_network: lab_peer_network's N, but with the instrumented unbound, the tunnel
# resolver and dnsdist.
lab_resolver_network() {
    lab_peer_wireguard
    lab_start_resolver_unbound
    lab_start_tunnel_resolver
    lab_start_dnsdist
}

# lab_start_resolver_tundns BIN: lab_start_tundns with $LAB_DNSPROXY_EXTRA (more [DNSProxy]
# lines) and $LAB_DNS_EXTRA_SECTIONS (e.g. [DNSRoute] sections) added to the config.
lab_start_resolver_tundns() {
    local bin=$1
    [[ -x $bin ]] || lab_die "tundns binary not found at $bin (build it, or set TUNDNS_BIN)"
    LAB_C_IF="${LAB_ID}t"
    LAB_IFACES+=("$LAB_C_IF")
    {
        lab_tundns_conf "${LAB_UPSTREAMS:-$LAB_UNBOUND_V4}"
        printf '%s\n' "${LAB_DNSPROXY_EXTRA:-}"
        printf '%s\n' "${LAB_DNS_EXTRA_SECTIONS:-}"
    } >"$LAB_DIR/$LAB_C_IF.conf"
    lab_spawn "$LAB_C" tundns "$bin" up "$LAB_DIR/$LAB_C_IF.conf"
    LAB_TUNDNS_PID=$LAB_LAST_PID
    lab_wait 10 lab_tundns_ready ||
        lab_die "tundns did not come up: $(cat "$LAB_DIR/tundns.log")"
    lab_wait 10 lab_in_c ping -n -c 1 -W 1 "$LAB_PEER_TUNNEL_V4" ||
        lab_die "no ping through tundns to $LAB_PEER_TUNNEL_V4: $(cat "$LAB_DIR/tundns.log")"
}
