//! End-to-end tests of encrypted DNS served on the virtual IPs (issue 14 §1): DNS over TLS
//! on 853 and DNS over HTTPS on 443, asked by kdig, dig and curl inside the client
//! namespace, through the same resolver as UDP 53 (unbound in N behind it); the
//! self-signed identity and its pin as `tundns status` prints them, a configured
//! certificate verified against its CA, and what bad input and idle clients get.
//!
//! Run as root: `TUNDNS_E2E=1 cargo test -p tundns --test encrypted_dns`. Without root or
//! the lab tools the tests print "skipped: ..." and pass, unless `TUNDNS_E2E=1`.

mod common;

use common::resolver_lab::*;
use common::*;
use std::time::{Duration, Instant};

/// `tundns ARGS...` inside the client namespace.
fn tundns(lab: &Lab, args: &[&str]) -> Run {
    let mut command = vec![tundns_bin()];
    command.extend_from_slice(args);
    lab.exec_in(&lab.client_ns, &command)
}

/// The pin `tundns status` prints, as `kdig +tls-pin=` takes it.
fn printed_pin(lab: &Lab) -> String {
    let status = tundns(lab, &["status", &lab.tundns_iface]);
    status.assert_success();
    status
        .stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("pin: sha256/"))
        .unwrap_or_else(|| panic!("no pin in the status:\n{status}"))
        .to_string()
}

/// `curl` for an HTTP status code only, trusting any certificate.
fn http_status(lab: &Lab, args: &[&str]) -> String {
    let mut command = vec![
        "curl",
        "-sk",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    command.extend_from_slice(args);
    lab.exec_in(&lab.client_ns, &command)
        .stdout
        .trim()
        .to_string()
}

#[test]
fn dot_and_doh_answer_kdig_dig_and_curl_on_both_virtual_ips_with_the_printed_pin() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&[]));
    let c = &lab.client_ns;
    let pin = printed_pin(&lab);
    let status = tundns(&lab, &["status", &lab.tundns_iface]).stdout;
    for expected in [
        "encrypted: tls://10.30.30.30, tls://[fd30:30:30::30], https://10.30.30.30/dns-query",
        "certificate: self-signed, /var/lib/tundns/netns/",
    ] {
        assert!(status.contains(expected), "{expected:?} missing:\n{status}");
    }
    let pinned = format!("+tls-pin={pin}");

    let dot = lab.kdig(c, PROXY_V4, &["+tls", &pinned, WWW_NAME, "A", "+short"]);
    assert_eq!(dot.assert_success().stdout.trim(), WWW_A, "{dot}");
    let dot_v6 = lab.kdig(c, PROXY_V6, &["+tls", &pinned, WWW_NAME, "AAAA", "+short"]);
    assert_eq!(dot_v6.assert_success().stdout.trim(), WWW_AAAA, "{dot_v6}");
    let doh = lab.kdig(
        c,
        PROXY_V4,
        &["+https", &pinned, WWW_NAME, "AAAA", "+short"],
    );
    assert_eq!(doh.assert_success().stdout.trim(), WWW_AAAA, "{doh}");
    let doh_get = lab.kdig(
        c,
        PROXY_V6,
        &["+https-get", &pinned, WWW_NAME, "A", "+short"],
    );
    assert_eq!(doh_get.assert_success().stdout.trim(), WWW_A, "{doh_get}");

    // Another key's pin: kdig refuses the server, so the pin above is what it checked.
    let wrong = "+tls-pin=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    let refused = lab.kdig(c, PROXY_V4, &["+tls", wrong, WWW_NAME, "A", "+short"]);
    assert!(
        !refused.succeeded() && !refused.stdout.contains(WWW_A),
        "{refused}"
    );

    // dig does not verify without +tls-ca: it only needs the protocols right. (dig 9.18
    // writes an IPv6 :authority without brackets, which HTTP/2 refuses as malformed, so
    // its DoH is asked over IPv4; kdig above and curl below ask over IPv6.)
    let dig_tls = lab.dig(c, PROXY_V6, &["+tls", WWW_NAME, "A", "+short"]);
    assert_eq!(dig_tls.assert_success().stdout.trim(), WWW_A, "{dig_tls}");
    let dig_https = lab.dig(c, PROXY_V4, &["+https", WWW_NAME, "AAAA", "+short"]);
    assert_eq!(
        dig_https.assert_success().stdout.trim(),
        WWW_AAAA,
        "{dig_https}"
    );

    // A query over HTTP/1.1 and HTTP/2 from curl, the answer a DNS message with its max-age.
    // RFC 8484 §4.1.1's query for www.example.com A, answered by unbound's zone or not:
    // any DNS answer will do.
    let query = "AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB";
    for (version, host) in [
        ("--http1.1", PROXY_V4.to_string()),
        ("--http2", format!("[{PROXY_V6}]")),
    ] {
        let url = format!("https://{host}/dns-query?dns={query}");
        let headers = lab.exec_in(
            c,
            &[
                "curl",
                "-sk",
                version,
                "--max-time",
                "5",
                "-D",
                "-",
                "-o",
                "/dev/null",
                &url,
            ],
        );
        let headers = headers.stdout.to_ascii_lowercase();
        assert!(headers.contains(" 200"), "{version}: {headers}");
        assert!(
            headers.contains("content-type: application/dns-message"),
            "{version}: {headers}"
        );
        assert!(
            headers.contains("cache-control: max-age="),
            "{version}: {headers}"
        );
    }
}

#[test]
fn bad_http_tls_and_dns_input_gets_an_error_and_the_service_goes_on() {
    let (lab, mut tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&[]));
    let c = &lab.client_ns;
    let base = format!("https://{PROXY_V4}");
    let query = "AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB";
    assert_eq!(
        http_status(&lab, &[&format!("{base}/other?dns={query}")]),
        "404"
    );
    assert_eq!(http_status(&lab, &[&format!("{base}/dns-query")]), "400");
    assert_eq!(
        http_status(&lab, &[&format!("{base}/dns-query?dns=%%%")]),
        "400"
    );
    assert_eq!(
        http_status(&lab, &["-X", "PUT", &format!("{base}/dns-query")]),
        "405"
    );
    assert_eq!(
        http_status(
            &lab,
            &[
                "-H",
                "content-type: text/plain",
                "--data-binary",
                "x",
                &format!("{base}/dns-query")
            ]
        ),
        "415"
    );
    // A body that is no DNS query: FORMERR is a DNS answer; a header cut short is not.
    assert_eq!(
        http_status(
            &lab,
            &[
                "-H",
                "content-type: application/dns-message",
                "--data-binary",
                "abc",
                &format!("{base}/dns-query")
            ]
        ),
        "400"
    );
    // Bytes that are not TLS, on both ports, and a DoT frame that is not DNS.
    for port in [853, 443] {
        let garbage = format!("head -c 4000 /dev/urandom > /dev/tcp/{PROXY_V4}/{port}");
        lab.exec_in(c, &["bash", "-c", &garbage]);
    }
    let not_dns = format!(
        "printf '\\000\\005hello' | timeout 5 openssl s_client -quiet -alpn dot -connect {PROXY_V4}:853"
    );
    lab.exec_in(c, &["bash", "-c", &not_dns]);

    let pin = format!("+tls-pin={}", printed_pin(&lab));
    let dot = lab.kdig(c, PROXY_V4, &["+tls", &pin, WWW_NAME, "A", "+short"]);
    assert_eq!(dot.assert_success().stdout.trim(), WWW_A, "{dot}");
    let doh = lab.kdig(c, PROXY_V4, &["+https", &pin, WWW_NAME, "A", "+short"]);
    assert_eq!(doh.assert_success().stdout.trim(), WWW_A, "{doh}");
    assert!(tundns.is_running(), "{}", tundns.output());
}

#[test]
fn a_trickling_client_is_closed_after_tcp_idle_timeout() {
    let (lab, _tundns) = lab_with_tundns!(
        LabOptions::resolver(),
        resolver_config(&["TcpIdleTimeout = 2s"])
    );
    // Clients that complete the handshake and then keep sending, never a whole query: a
    // DoT frame whose 64-byte query comes a byte a second, and an HTTP/2 connection that
    // only pings. Only whole queries keep a connection, so each is closed after about 2 s
    // (and, for HTTP/2, the grace of its GOAWAY), not held for the 12 s they go on.
    let preface = r"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\000\000\000\004\000\000\000\000\000";
    let ping = r"\000\000\010\006\000\000\000\000\000\000\000\000\000\000\000\000\000";
    for (port, alpn, first, each) in [
        (853, "dot", r"\000\100", r"\000"),
        (443, "h2", preface, ping),
    ] {
        let trickle = format!(
            "(printf '{first}'; for i in $(seq 1 12); do sleep 1; printf '{each}'; done) | \
             timeout 15 openssl s_client -quiet -alpn {alpn} -connect {PROXY_V4}:{port} >/dev/null 2>&1"
        );
        let started = Instant::now();
        lab.exec_in(&lab.client_ns, &["bash", "-c", &trickle]);
        let held = started.elapsed();
        assert!(
            held > Duration::from_millis(1500) && held < Duration::from_secs(9),
            "port {port}: the trickling client was held {held:?}"
        );
    }
}

#[test]
fn a_configured_certificate_is_presented_and_verified_against_its_ca() {
    let lab = lab!(LabOptions::encrypted());
    let (certificate, key) = lab.server_certificate();
    let lines = [
        format!("TLSCertificate = {}", certificate.display()),
        format!("TLSKey = {}", key.display()),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let _tundns = start(&lab, &lines);
    let c = &lab.client_ns;
    let ca = format!("+tls-ca={}", lab.ca_file().display());
    let hostname = format!("+tls-hostname={TLS_NAME}");
    let dot = lab.kdig(
        c,
        PROXY_V4,
        &["+tls", &ca, &hostname, WWW_NAME, "A", "+short"],
    );
    assert_eq!(dot.assert_success().stdout.trim(), WWW_A, "{dot}");
    let doh = lab.kdig(
        c,
        PROXY_V4,
        &["+https", &ca, &hostname, WWW_NAME, "A", "+short"],
    );
    assert_eq!(doh.assert_success().stdout.trim(), WWW_A, "{doh}");
    let wrong = format!("+tls-ca={}", lab.wrong_ca_file().display());
    let refused = lab.kdig(
        c,
        PROXY_V4,
        &["+tls", &wrong, &hostname, WWW_NAME, "+short"],
    );
    assert!(!refused.succeeded(), "{refused}");
    let status = tundns(&lab, &["status", &lab.tundns_iface]).stdout;
    assert!(status.contains("certificate: TLSCertificate"), "{status}");
}

#[test]
fn a_key_that_is_not_the_certificates_stops_up_with_the_line() {
    let lab = lab!(LabOptions::encrypted());
    let (certificate, _) = lab.server_certificate();
    let other_key = lab.ca_key();
    let config = lab.client_config(&resolver_config(&[
        &format!("TLSCertificate = {}", certificate.display()),
        &format!("TLSKey = {}", other_key.display()),
    ]));
    let path = lab.write_client_config(&config);
    let run = lab.up_fails(&path);
    let line = config
        .lines()
        .position(|line| line.starts_with("TLSKey"))
        .expect("the TLSKey line")
        + 1;
    let expected = format!("{}:{line}: TLSKey ", path.display());
    assert!(
        run.stderr.contains(&expected),
        "{expected:?} missing:\n{run}"
    );
    assert!(
        run.stderr.contains("the key is not the certificate's"),
        "{run}"
    );
    // `check` says the same, before anything is changed.
    let check = tundns(&lab, &["check", &path.display().to_string()]);
    assert!(!check.succeeded(), "{check}");
    assert!(
        check.stderr.contains(&expected),
        "{expected:?} missing:\n{check}"
    );
}

#[test]
fn ddr_designates_the_encrypted_endpoints_and_kdig_reads_them() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&[]));
    let c = &lab.client_ns;
    let ddr = lab.kdig(c, PROXY_V4, &["_dns.resolver.arpa", "SVCB", "+short"]);
    let lines: Vec<&str> = ddr.assert_success().stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "1 dns.tundns.internal. alpn=dot port=853 ipv4hint=10.30.30.30 ipv6hint=fd30:30:30::30",
            // Knot 3.2's kdig shows dohpath (key 7, RFC 9461) by number.
            "2 dns.tundns.internal. alpn=h2 port=443 ipv4hint=10.30.30.30 ipv6hint=fd30:30:30::30 key7=\"/dns-query{?dns}\"",
        ],
        "{ddr}"
    );
    // A client following the designation opportunistically (RFC 9462 §4.2, the virtual
    // IPs are private): DoT to the IPv6 hint, the server known by its pin.
    let pin = format!("+tls-pin={}", printed_pin(&lab));
    let followed = lab.kdig(c, PROXY_V6, &["+tls", &pin, WWW_NAME, "A", "+short"]);
    assert_eq!(followed.assert_success().stdout.trim(), WWW_A, "{followed}");

    // With Encrypted = off there is nothing to designate; resolver.arpa is still this
    // resolver's own (RFC 9462), answered locally and never forwarded.
    drop(_tundns);
    let lab = lab!(LabOptions::resolver());
    let _tundns = start(&lab, &["Encrypted = off"]);
    let none = lab.kdig(&lab.client_ns, PROXY_V4, &["_dns.resolver.arpa", "SVCB"]);
    assert!(!none.stdout.contains("alpn="), "{none}");
    assert!(none.stdout.contains("Flags: qr aa"), "{none}");
}
