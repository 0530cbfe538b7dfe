//! End-to-end tests of encrypted DNS served on the virtual IPs (issue 14 §1): DNS over TLS
//! on TCP 853, DNS over HTTPS on 443 and DNS over QUIC on UDP 853, asked by kdig, dig, curl
//! and hickory's DoQ client inside the client namespace, through the same resolver as UDP
//! 53 (unbound in N behind it); the self-signed identity and its pin as `tundns status`
//! prints them, a configured certificate verified against its CA, and what bad input and
//! idle clients get.
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
        "quic://10.30.30.30, quic://[fd30:30:30::30]",
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
    // kdig 3.2.6 crashes (SIGSEGV in its GnuTLS verify callback) whenever it is asked to
    // verify a QUIC server, by pin or by CA, against any server: its DoQ is asked
    // unverified, and hickory's DoQ client checks the pin.
    let doq = lab.kdig(c, PROXY_V4, &["+quic", WWW_NAME, "A", "+short"]);
    assert_eq!(doq.assert_success().stdout.trim(), WWW_A, "{doq}");
    let doq_v6 = lab.kdig(c, PROXY_V6, &["+quic", WWW_NAME, "AAAA", "+short"]);
    assert_eq!(doq_v6.assert_success().stdout.trim(), WWW_AAAA, "{doq_v6}");
    doq_probe::run_in(c, async || {
        for server in [PROXY_V4, PROXY_V6] {
            let answer = doq_probe::hickory_query(server, Some(pin.as_str()), WWW_NAME).await;
            assert_eq!(answer.as_deref(), Ok(WWW_A), "hickory over DoQ to {server}");
        }
        let wrong = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let refused = doq_probe::hickory_query(PROXY_V4, Some(wrong), WWW_NAME).await;
        assert!(refused.is_err(), "another key's pin: {refused:?}");
    });

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
        assert!(headers.contains("\ndate: "), "{version}: {headers}");
    }
}

/// Many requests in flight on each HTTP/2 connection, as a browser or a stub resolver
/// pipelines them: `GET`s answered from the cache as they are read, in batches, and
/// `POST`s whose bodies come after their headers; every one gets its answer.
#[test]
fn every_request_in_flight_on_http2_connections_gets_its_answer() {
    let (lab, mut tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&[]));
    let c = &lab.client_ns;
    // www.lab.test A, base64url (RFC 8484 GET), and as a POST body.
    let query = "AAABAAABAAAAAAAAA3d3dwNsYWIEdGVzdAAAAQAB";
    let body = lab.write_file(
        "query.bin",
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, query)
            .expect("base64url"),
    );
    let url = format!("https://{PROXY_V4}/dns-query");
    let body = body.to_str().expect("a UTF-8 path");
    for (method, extra) in [
        ("GET", vec![format!("{url}?dns={query}")]),
        (
            "POST",
            vec![
                "-d".to_owned(),
                body.to_owned(),
                "-H".to_owned(),
                "content-type: application/dns-message".to_owned(),
                url.clone(),
            ],
        ),
    ] {
        let mut command = vec!["h2load", "-n", "3000", "-c", "3", "-m", "64"];
        command.extend(extra.iter().map(String::as_str));
        let run = lab.exec_in(c, &command);
        run.assert_success();
        assert!(
            run.stdout
                .contains("3000 succeeded, 0 failed, 0 errored, 0 timeout")
                && run.stdout.contains("status codes: 3000 2xx"),
            "{method}: {run}"
        );
    }
    assert!(tundns.is_running(), "{}", tundns.output());
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
    // A body larger than a DNS message, over HTTP/2 (curl's choice) and HTTP/1.1, in
    // DATA frames beyond the first.
    let large = lab.write_file("large-body", "x".repeat(70_000));
    let large = format!("@{}", large.display());
    for version in ["--http2", "--http1.1"] {
        assert_eq!(
            http_status(
                &lab,
                &[
                    version,
                    "-H",
                    "content-type: application/dns-message",
                    "--data-binary",
                    &large,
                    &format!("{base}/dns-query")
                ]
            ),
            "413",
            "{version}"
        );
    }
    // HTTP/2 that breaks the protocol after a good preface: a DATA frame on stream 0.
    let broken_http2 = format!(
        r"printf 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\000\000\000\004\000\000\000\000\000\000\000\004\000\001\000\000\000\000abcd' | timeout 5 openssl s_client -quiet -alpn h2 -connect {PROXY_V4}:443"
    );
    // s_client -quiet waits past its input for the server to close: tundns does at once.
    let broken = lab.exec_in(c, &["bash", "-c", &broken_http2]);
    assert!(broken.elapsed < Duration::from_secs(4), "{broken}");
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
            "3 dns.tundns.internal. alpn=doq port=853 ipv4hint=10.30.30.30 ipv6hint=fd30:30:30::30",
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

/// DNS over QUIC clients on a thread in the client namespace: hickory's, and one of the
/// tests' own (quinn) for what no client sends.
mod doq_probe {
    use std::fs::File;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use nix::sched::{CloneFlags, setns};
    use quinn::crypto::rustls::QuicClientConfig;
    use tundns_test_support::tls::pinned_client_config;

    /// Runs `body` on a thread that entered `namespace`, on a runtime of its own.
    pub fn run_in<T: Send>(namespace: &str, body: impl AsyncFnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(format!("/run/netns/{namespace}"))
                        .expect("the namespace's file");
                    setns(file, CloneFlags::CLONE_NEWNET).expect("setns into the namespace");
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime")
                        .block_on(body())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A connection to `server` port 853 with ALPN `doq`.
    pub async fn connect(server: &str) -> Result<quinn::Connection, quinn::ConnectionError> {
        let ip: std::net::IpAddr = server.parse().expect("an IP");
        let local: SocketAddr = if ip.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let mut endpoint = quinn::Endpoint::client(local).expect("a client endpoint");
        let mut tls = pinned_client_config(None);
        tls.alpn_protocols = vec![b"doq".to_vec()];
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(tls).unwrap(),
        )));
        endpoint
            .connect(SocketAddr::new(ip, 853), "dns.tundns.internal")
            .expect("a connection attempt")
            .await
    }

    /// hickory's DoQ client's answer from `server` for `name` A: the first address, or why
    /// there is none.
    pub async fn hickory_query(
        server: &str,
        pin: Option<&str>,
        name: &str,
    ) -> Result<String, String> {
        use futures::StreamExt as _;
        use hickory_proto::op::{Message, Query};
        use hickory_proto::quic::QuicClientStream;
        use hickory_proto::rr::{Name, RData, RecordType};
        use hickory_proto::xfer::{DnsRequest, DnsRequestOptions, DnsRequestSender as _};

        let address = SocketAddr::new(server.parse().expect("an IP"), 853);
        let mut builder = QuicClientStream::builder();
        builder.crypto_config(pinned_client_config(pin));
        let mut stream = builder
            .build(address, "dns.tundns.internal".to_string())
            .await
            .map_err(|error| error.to_string())?;
        let name = Name::from_ascii(name).expect("a name");
        let mut message = Message::new();
        message
            .add_query(Query::query(name, RecordType::A))
            .set_recursion_desired(true);
        let request = DnsRequest::new(message, DnsRequestOptions::default());
        let response = stream
            .send_message(request)
            .next()
            .await
            .ok_or("no response")?
            .map_err(|error| error.to_string())?;
        response
            .answers()
            .iter()
            .find_map(|record| match record.data() {
                RData::A(address) => Some(address.to_string()),
                _ => None,
            })
            .ok_or_else(|| format!("no address in {response:?}"))
    }

    /// Sends `bytes` on a new stream and ends it; what came back before the stream ended.
    pub async fn exchange(connection: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(70_000).await.map_err(|e| e.to_string())
    }

    /// `message` with its 2-byte length in front.
    pub fn framed(message: &[u8]) -> Vec<u8> {
        let mut framed = (message.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(message);
        framed
    }

    /// The application error code the connection was closed with.
    pub async fn closed_with(connection: &quinn::Connection) -> Option<u64> {
        match connection.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
            _ => None,
        }
    }
}

/// A query stream is answered where it is accepted when the whole query is there, and in a
/// task of its own when part of it is still to come: both paths answer every stream of one
/// connection with its own question, one after another, all at once, and split across
/// packets.
#[test]
fn doq_answers_every_stream_of_a_connection_whole_at_once_or_split() {
    use domain::base::iana::Rtype;
    use doq_probe::{connect, exchange, framed};
    use tundns_test_support::dns::Query;

    let (lab, mut tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&[]));
    doq_probe::run_in(&lab.client_ns, async || {
        let query = |rtype| framed(&Query::new(WWW_NAME, rtype).id(0).build());
        /// The type of the question `answer` (a framed DNS message) answers, and its
        /// answer count.
        fn answered(answer: &[u8]) -> (Rtype, u16) {
            let length = usize::from(u16::from_be_bytes([answer[0], answer[1]]));
            assert_eq!(length, answer.len() - 2, "one framed answer");
            let message = domain::base::Message::from_octets(&answer[2..]).expect("DNS");
            assert_eq!(message.header().id(), 0, "RFC 9250 §4.2.1");
            let question = message.sole_question().expect("one question");
            (question.qtype(), message.header_counts().ancount())
        }
        let connection = connect(PROXY_V4).await.expect("a DoQ connection");
        // Misses first: they wait for the upstream in a task of their own.
        for rtype in [Rtype::A, Rtype::AAAA] {
            let answer = exchange(&connection, &query(rtype))
                .await
                .expect("an answer");
            assert_eq!(answered(&answer), (rtype, 1));
        }

        for round in 0..200 {
            let rtype = if round % 2 == 0 {
                Rtype::A
            } else {
                Rtype::AAAA
            };
            let answer = exchange(&connection, &query(rtype))
                .await
                .expect("an answer");
            assert_eq!(answered(&answer), (rtype, 1), "query {round}");
        }

        // Up to the stream credit at once, some of them waiting for it.
        let at_once = (0..100).map(|index| {
            let rtype = if index % 3 == 0 {
                Rtype::AAAA
            } else {
                Rtype::A
            };
            let connection = &connection;
            async move { (rtype, exchange(connection, &query(rtype)).await) }
        });
        for (rtype, answer) in futures::future::join_all(at_once).await {
            assert_eq!(answered(&answer.expect("an answer")), (rtype, 1));
        }

        // The first bytes alone, then the rest with the stream's end: nothing lost or read
        // twice between the two paths.
        let whole = query(Rtype::AAAA);
        for split_at in [1, 2, 5, whole.len() - 1] {
            let (mut send, mut recv) = connection.open_bi().await.expect("a stream");
            send.write_all(&whole[..split_at]).await.expect("written");
            tokio::time::sleep(Duration::from_millis(50)).await;
            send.write_all(&whole[split_at..]).await.expect("written");
            send.finish().expect("finished");
            let answer = recv.read_to_end(70_000).await.expect("an answer");
            assert_eq!(answered(&answer), (Rtype::AAAA, 1), "split at {split_at}");
        }
        assert!(
            connection.close_reason().is_none(),
            "the connection stays open"
        );
    });
    assert!(tundns.is_running(), "{}", tundns.output());
}

/// RFC 9250 §4.3.3's DOQ_PROTOCOL_ERROR and §4.2's DOQ_NO_ERROR.
const DOQ_PROTOCOL_ERROR: u64 = 0x2;
const DOQ_NO_ERROR: u64 = 0x0;

#[test]
fn doq_closes_what_breaks_the_protocol_idles_or_exceeds_its_share_and_goes_on() {
    use domain::base::iana::Rtype;
    use doq_probe::{closed_with, connect, exchange, framed};
    use tundns_test_support::dns::Query;

    let (lab, mut tundns) = lab_with_tundns!(
        LabOptions::resolver(),
        resolver_config(&["TcpIdleTimeout = 2s", "MaxTcpConnections = 8"])
    );
    let c = &lab.client_ns;
    // Datagrams that are not QUIC, a long header's size and a short one's.
    let garbage = format!(
        "for i in $(seq 1 20); do head -c 1200 /dev/urandom > /dev/udp/{PROXY_V4}/853; \
         head -c 40 /dev/urandom > /dev/udp/{PROXY_V4}/853; done"
    );
    lab.exec_in(c, &["bash", "-c", &garbage]).assert_success();

    doq_probe::run_in(c, async || {
        let query = Query::new(WWW_NAME, Rtype::A).id(0).build();
        let connection = connect(PROXY_V4).await.expect("a DoQ connection");
        let answer = exchange(&connection, &framed(&query))
            .await
            .expect("an answer");
        let length = usize::from(u16::from_be_bytes([answer[0], answer[1]]));
        assert_eq!(length, answer.len() - 2, "one framed answer");
        let message = domain::base::Message::from_octets(&answer[2..]).expect("DNS");
        assert_eq!(message.header().id(), 0, "RFC 9250 §4.2.1");
        assert_eq!(message.header_counts().ancount(), 1);

        // A second query on the same connection, its idle time restarted by the first.
        let again = exchange(&connection, &framed(&query))
            .await
            .expect("an answer");
        assert_eq!(again.len(), answer.len());

        // Each breach of RFC 9250 §4.3.3 closes its connection with DOQ_PROTOCOL_ERROR.
        let mut nonzero_id = query.clone();
        nonzero_id[1] = 7;
        let mut two_messages = framed(&query);
        two_messages.extend_from_slice(&framed(&query));
        let cut = framed(&query)[..10].to_vec();
        // RFC 9250 §5.5.2: edns-tcp-keepalive (option 11) is an error on DoQ.
        let keepalive = Query::new(WWW_NAME, Rtype::A)
            .id(0)
            .edns(
                tundns_test_support::dns::Edns::new(1232)
                    .option(domain::base::iana::OptionCode::TCP_KEEPALIVE, &[]),
            )
            .build();
        for (breach, stream) in [
            ("a non-zero ID", framed(&nonzero_id)),
            ("two messages", two_messages),
            ("a cut message", cut),
            ("not DNS", framed(b"hello")),
            ("edns-tcp-keepalive", framed(&keepalive)),
        ] {
            let connection = connect(PROXY_V4).await.expect("a DoQ connection");
            let _ = exchange(&connection, &stream).await;
            assert_eq!(
                closed_with(&connection).await,
                Some(DOQ_PROTOCOL_ERROR),
                "{breach}"
            );
        }

        // A stream that never brings its whole query is reset after about 2 s of its own,
        // though whole queries on other streams keep its connection open.
        let (mut partial_send, mut partial_recv) = connection.open_bi().await.expect("a stream");
        partial_send
            .write_all(&framed(&query)[..5])
            .await
            .expect("written");
        let started = std::time::Instant::now();
        let partial = async {
            let read = partial_recv.read_to_end(100).await;
            (read, started.elapsed())
        };
        let keep_busy = async {
            for _ in 0..8 {
                exchange(&connection, &framed(&query))
                    .await
                    .expect("an answer while the partial stream waits");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let ((partial, given_up_after), ()) = tokio::join!(partial, keep_busy);
        assert!(partial.is_err(), "the partial stream: {partial:?}");
        assert!(
            given_up_after > Duration::from_millis(1500) && given_up_after < Duration::from_secs(4),
            "given up after {given_up_after:?}"
        );
        connection.close(quinn::VarInt::from_u32(0), b"done");

        // Idle, and a stream trickling a query a byte at a time: closed after about 2 s.
        let idle = connect(PROXY_V6).await.expect("a DoQ connection");
        let trickling = connect(PROXY_V4).await.expect("a DoQ connection");
        let started = std::time::Instant::now();
        let (mut send, _recv) = trickling.open_bi().await.expect("a stream");
        let trickle = async {
            for byte in framed(&query) {
                if send.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let (idle_code, trickled_code, ()) =
            tokio::join!(closed_with(&idle), closed_with(&trickling), trickle);
        let held = started.elapsed();
        assert_eq!(idle_code, Some(DOQ_NO_ERROR));
        assert_eq!(trickled_code, Some(DOQ_NO_ERROR));
        assert!(
            held > Duration::from_millis(1500) && held < Duration::from_secs(6),
            "held {held:?}"
        );

        // A quarter of MaxTcpConnections per client address: the third is refused.
        let first = connect(PROXY_V4).await.expect("a DoQ connection");
        let second = connect(PROXY_V4).await.expect("a DoQ connection");
        let third = connect(PROXY_V4).await;
        assert!(
            matches!(third, Err(quinn::ConnectionError::ConnectionClosed(_))),
            "the third connection: {third:?}"
        );
        // Closed, they give their shares back (kdig below needs one).
        for connection in [first, second] {
            connection.close(quinn::VarInt::from_u32(0), b"done");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    });

    let doq = lab.kdig(c, PROXY_V4, &["+quic", WWW_NAME, "A", "+short"]);
    assert_eq!(doq.assert_success().stdout.trim(), WWW_A, "{doq}");
    assert!(tundns.is_running(), "{}", tundns.output());
}
