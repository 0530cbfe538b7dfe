#!/usr/bin/env python3
"""Writes the binary seed inputs of the fuzz targets (DNS queries and answers, packets,
proxy requests) into fuzz/seeds/<target>/. The text seeds (config, hosts and blocklist
files, control requests) are written by hand beside them. Run from anywhere; idempotent."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


def name(text):
    out = b""
    for label in text.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def header(ident, flags, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def opt(payload=1232, do=False, options=b""):
    return b"\0" + struct.pack("!HHIH", 41, payload, 0x8000 if do else 0, len(options)) + options


def query(ident, qname, qtype, edns=None, flags=0x0100):
    ar = 1 if edns is not None else 0
    return header(ident, flags, ar=ar) + name(qname) + struct.pack("!HH", qtype, 1) + (edns or b"")


A, NS, CNAME, SOA, PTR, TXT, AAAA, ANY = 1, 2, 5, 6, 12, 16, 28, 255

# client_query: what clients ask, local names, blocked ones and odd forms.
write("client_query", "a-www-example", query(0x1234, "www.example", A))
write("client_query", "a-local-edns-do", query(0x2345, "app.lab.internal", A, opt(do=True)))
write("client_query", "aaaa-local", query(0x3456, "APP.Lab.Internal", AAAA, opt(4096)))
write("client_query", "a-chain-out", query(0x4567, "out.lab.internal", A, opt()))
write("client_query", "a-blocked", query(0x5678, "tracker.ads.example", A))
write("client_query", "txt-local", query(0x6789, "note.lab.internal", TXT))
write("client_query", "ptr-reverse", query(0x789A, "10.0.99.10.in-addr.arpa", PTR))
write("client_query", "any-wildcard", query(0x89AB, "x.dev.lab.internal", ANY))
write("client_query", "a-nxdomain-zone", query(0x9ABC, "nothing.lab.internal", A, opt(512)))
write("client_query", "a-cookie",
      query(0xABCD, "www.example", A, opt(1232, options=struct.pack("!HH", 10, 8) + b"\x01" * 8)))
write("client_query", "soa-root", query(0xBCDE, ".", SOA))
write("client_query", "a-cd-ad", query(0xCDEF, "loop.lab.internal", A, flags=0x0130))

# upstream_answer: answers to `out.lab.internal A` (ID 0x5151, EDNS) and to its chain's
# target `www.example.com A`.
q_out = name("out.lab.internal") + struct.pack("!HH", A, 1)
q_www = name("www.example.com") + struct.pack("!HH", A, 1)


def rr(owner, rtype, ttl, rdata):
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


write("upstream_answer", "a-two-records",
      header(0x5151, 0x8180, an=2, ar=1) + q_out
      + rr(b"\xc0\x0c", A, 300, bytes([192, 0, 2, 1])) + rr(b"\xc0\x0c", A, 300, bytes([192, 0, 2, 2]))
      + opt(1232, do=True))
write("upstream_answer", "cname-to-blocked",
      header(0x5151, 0x8180, an=2) + q_out
      + rr(b"\xc0\x0c", CNAME, 60, name("cdn.example.com"))
      + rr(name("cdn.example.com"), A, 60, bytes([198, 51, 100, 7])))
write("upstream_answer", "nxdomain-soa",
      header(0x5151, 0x8183, ns=1, ar=1) + q_out
      + rr(name("lab.internal"), SOA, 900,
           name("ns.lab.internal") + name("hostmaster.lab.internal") + struct.pack("!IIIII", 1, 3600, 600, 86400, 300))
      + opt())
write("upstream_answer", "truncated", header(0x5151, 0x8380) + q_out)
write("upstream_answer", "www-a-compressed",
      header(0x5151, 0x8180, an=2) + q_www
      + rr(b"\xc0\x0c", CNAME, 120, b"\x03web\xc0\x10")
      + rr(b"\xc0\x2d", A, 120, bytes([203, 0, 113, 9])))
write("upstream_answer", "servfail", header(0x5151, 0x8182) + q_out)
write("upstream_answer", "aaaa-txt-mixed",
      header(0x5151, 0x8180, an=2, ns=0, ar=1) + q_out
      + rr(b"\xc0\x0c", AAAA, 30, bytes(15) + b"\x01")
      + rr(b"\xc0\x0c", TXT, 30, b"\x05hello\x05world")
      + opt(4096, options=struct.pack("!HH", 15, 2) + b"\x00\x12"))


# ip_packet: what the TUN reads, to the proxy's virtual IPs and elsewhere.
def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src, dst, proto, payload, frag=0x4000, options=b""):
    ihl = 5 + len(options) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(payload), 0x1c46, frag, 64, proto, 0,
                    bytes(src), bytes(dst)) + options
    h = h[:10] + struct.pack("!H", checksum(h)) + h[12:]
    return h + payload


def ipv6(src, dst, nh, payload):
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, bytes(src), bytes(dst)) + payload


def udp(sport, dport, data):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(sport, dport, flags, seq=1000, ack=0, data=b""):
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0) + data


V4_HOST, V4_PROXY, V4_OUT = [10, 0, 0, 2], [10, 30, 30, 30], [93, 184, 216, 34]
V6_HOST = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
V6_PROXY = [0xfd, 0x30, 0, 0x30, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x30]
dns_q = query(0x1111, "www.example", A)
write("ip_packet", "v4-udp-dns", ipv4(V4_HOST, V4_PROXY, 17, udp(40000, 53, dns_q)))
write("ip_packet", "v4-icmp-echo", ipv4(V4_HOST, V4_PROXY, 1, struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"ping" * 8))
write("ip_packet", "v4-tcp-syn-80", ipv4(V4_HOST, V4_PROXY, 6, tcp(50000, 80, 0x02)))
write("ip_packet", "v4-tcp-dns", ipv4(V4_HOST, V4_PROXY, 6, tcp(50001, 53, 0x18, 1, 1, struct.pack("!H", len(dns_q)) + dns_q)))
write("ip_packet", "v4-udp-elsewhere", ipv4(V4_HOST, V4_OUT, 17, udp(40001, 443, b"\x00" * 32)))
write("ip_packet", "v4-fragment", ipv4(V4_HOST, V4_PROXY, 17, udp(40002, 53, dns_q)[:16], frag=0x2000))
write("ip_packet", "v4-options", ipv4(V4_HOST, V4_PROXY, 17, udp(40003, 5353, b"x"), options=b"\x94\x04\x00\x00"))
write("ip_packet", "v6-udp-dns", ipv6(V6_HOST, V6_PROXY, 17, udp(40004, 53, dns_q)))
write("ip_packet", "v6-icmp-echo", ipv6(V6_HOST, V6_PROXY, 58, struct.pack("!BBHHH", 128, 0, 0, 9, 2) + b"abcd"))
write("ip_packet", "v6-tcp-syn-443", ipv6(V6_HOST, V6_PROXY, 6, tcp(50002, 443, 0x02)))
write("ip_packet", "v6-hop-by-hop", ipv6(V6_HOST, V6_PROXY, 0, b"\x11\x00" + b"\x01\x04\x00\x00\x00\x00" + udp(40005, 53, dns_q)))

# proxy_request: SOCKS5 and HTTP proxy clients' messages.
write("proxy_request", "socks5-greeting", b"\x05\x02\x00\x02")
write("proxy_request", "socks5-userpass", b"\x01\x05alice\x06secret")
write("proxy_request", "socks5-connect-v4", b"\x05\x01\x00\x01\x5d\xb8\xd8\x22\x01\xbb")
write("proxy_request", "socks5-connect-name", b"\x05\x01\x00\x03\x0bexample.com\x00\x50")
write("proxy_request", "socks5-connect-v6", b"\x05\x01\x00\x04" + bytes(V6_PROXY) + b"\x00\x16")
write("proxy_request", "socks5-udp-associate", b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
write("proxy_request", "socks5-udp-datagram", b"\x00\x00\x00\x01\x0a\x1e\x1e\x1e\x00\x35" + dns_q)
write("proxy_request", "http-absolute-uri", b"http://example.com:8080/path/to?x=1&y=2")
write("proxy_request", "http-authority", b"example.com:443")
write("proxy_request", "http-basic", b"Basic YWxpY2U6c2VjcmV0")

# doq_stream: what a DNS over QUIC client sends on one stream (RFC 9250): a query with ID 0
# and its 2-byte length, some with edns-tcp-keepalive (option 11), which DoQ forbids.
def framed(message):
    return struct.pack("!H", len(message)) + message


def option(code, data=b""):
    return struct.pack("!HH", code, len(data)) + data


KEEPALIVE, COOKIE, PADDING = 11, 10, 12
doq_a = query(0, "www.example", A)
write("doq_stream", "a", framed(doq_a))
write("doq_stream", "aaaa-edns-do", framed(query(0, "www.example", AAAA, opt(do=True))))
write("doq_stream", "a-cookie", framed(query(0, "www.example", A, opt(options=option(COOKIE, b"\x01" * 8)))))
write("doq_stream", "a-keepalive", framed(query(0, "www.example", A, opt(options=option(KEEPALIVE)))))
write("doq_stream", "a-keepalive-timeout-among-others",
      framed(query(0, "www.example", A,
                   opt(options=option(COOKIE, b"\x01" * 8) + option(KEEPALIVE, b"\x00\x64") + option(PADDING, bytes(6))))))
write("doq_stream", "a-keepalive-before-record",
      framed(header(0, 0, ar=2) + name("www.example") + struct.pack("!HH", A, 1)
             + opt(options=option(KEEPALIVE)) + rr(name("www.example"), A, 60, bytes([192, 0, 2, 1]))))
write("doq_stream", "a-keepalive-cut-option",
      framed(query(0, "www.example", A, opt(options=option(KEEPALIVE) + option(COOKIE, b"\x01" * 8)[:6]))))
write("doq_stream", "a-id-set", framed(query(0x4242, "www.example", A)))
write("doq_stream", "two-queries", framed(doq_a) * 2)
write("doq_stream", "cut", framed(doq_a)[:-3])
