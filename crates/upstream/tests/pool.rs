//! The pool against fake UDP and TCP upstreams written here, on loopback only.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use domain::base::Message;
use domain::base::iana::Rcode;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Mutex;
use tundns_upstream::{
    DEAD_AFTER_FAILURES, PoolConfig, PoolError, Protocol, QUERIES_PER_SOCKET, ResolveError,
    SOCKETS_PER_UPSTREAM, UpstreamPool,
};

#[tokio::test]
async fn only_the_matching_answer_is_accepted() {
    let upstream = udp_upstream(|request, client| {
        let id = id_of(request);
        // A forgery from another port of the same host, with the right ID and
        // question: the connected socket must never deliver it.
        let spoofer = std::net::UdpSocket::bind((LOOPBACK, 0)).unwrap();
        spoofer.send_to(&answer(request, 1, 66), client).unwrap();
        let wrong_question = with_id(answer(&query(0, "evil.example"), 1, 77), id);
        vec![
            with_id(answer(request, 1, 11), id.wrapping_add(1)),
            wrong_question,
            b"garbage".to_vec(),
            answer(request, 1, 42),
        ]
    })
    .await;
    let pool = pool(vec![udp(upstream)], Duration::from_secs(2));
    let request = query(0xc11e, "www.example.com");
    let response = pool.resolve(&request, Protocol::Udp).await.unwrap();
    assert_eq!(id_of(&response), 0xc11e);
    assert_eq!(marker_of(&response), 42);
    let stats = pool.stats();
    assert_eq!(stats.mismatched_ignored, 3);
    assert_eq!((stats.queries, stats.answered), (1, 1));
}

/// An upstream that records the (ID, source port) of each of up to `max` queries and
/// answers it.
async fn logging_udp_upstream(max: usize) -> (SocketAddr, Arc<std::sync::Mutex<Vec<(u16, u16)>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        for _ in 0..max {
            let Ok((len, client)) = socket.recv_from(&mut buf).await else {
                return;
            };
            log.lock()
                .unwrap()
                .push((id_of(&buf[..len]), client.port()));
            let _ = socket.send_to(&answer(&buf[..len], 1, 1), client).await;
        }
    });
    (address, seen)
}

#[tokio::test]
async fn each_attempt_uses_a_random_id_and_a_random_port() {
    let (upstream, seen) = logging_udp_upstream(20).await;
    let pool = pool(vec![udp(upstream)], Duration::from_secs(2));
    for _ in 0..20 {
        let response = pool
            .resolve(&query(7, "example.com"), Protocol::Udp)
            .await
            .unwrap();
        assert_eq!(id_of(&response), 7);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 20);
    assert!(
        seen.iter().any(|&(id, _)| id != 7),
        "upstream IDs are the client's"
    );
    // Fewer queries than sockets allowed: each opened its own socket.
    let ports: std::collections::HashSet<_> = seen.iter().map(|&(_, port)| port).collect();
    assert_eq!(ports.len(), 20, "ports {ports:?}");
}

/// Resolves `count` queries, `concurrency` at a time, each answered with its own ID.
async fn resolve_concurrently(pool: &Arc<UpstreamPool>, count: u16, concurrency: u16) {
    for batch in (0..count)
        .collect::<Vec<_>>()
        .chunks(usize::from(concurrency))
    {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&i| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let response = pool
                        .resolve(&query(i, "example.com"), Protocol::Udp)
                        .await
                        .unwrap();
                    assert_eq!(id_of(&response), i);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }
}

#[tokio::test]
async fn queries_in_flight_share_a_bounded_set_of_ports_with_distinct_ids() {
    let (upstream, seen) = logging_udp_upstream(100).await;
    let pool = Arc::new(pool(vec![udp(upstream)], Duration::from_secs(2)));
    resolve_concurrently(&pool, 100, 100).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 100);
    let ports: std::collections::HashSet<_> = seen.iter().map(|&(_, port)| port).collect();
    assert!(
        ports.len() > 1 && ports.len() <= SOCKETS_PER_UPSTREAM,
        "{} ports",
        ports.len()
    );
    // Every query in flight had its own (port, ID) pair.
    let pairs: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(pairs.len(), 100);
    assert_eq!(pool.stats().mismatched_ignored, 0);
}

#[tokio::test]
async fn ports_change_once_sockets_have_taken_their_queries() {
    let count = (SOCKETS_PER_UPSTREAM as u32 * QUERIES_PER_SOCKET + 500) as u16;
    let (upstream, seen) = logging_udp_upstream(usize::from(count)).await;
    let pool = Arc::new(pool(vec![udp(upstream)], Duration::from_secs(2)));
    resolve_concurrently(&pool, count, 50).await;
    let seen = seen.lock().unwrap();
    let mut per_port = std::collections::HashMap::<u16, u32>::new();
    for &(_, port) in seen.iter() {
        *per_port.entry(port).or_default() += 1;
    }
    assert!(
        per_port.len() > SOCKETS_PER_UPSTREAM,
        "{} ports",
        per_port.len()
    );
    assert!(
        per_port
            .values()
            .all(|&queries| queries <= QUERIES_PER_SOCKET),
        "a port took more than its quota: {per_port:?}"
    );
}

/// UDP sockets of this host connected to `upstream`, from /proc/net/udp.
fn sockets_connected_to(upstream: SocketAddr) -> usize {
    let remote = format!("0100007F:{:04X}", upstream.port());
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .filter(|line| line.split_whitespace().nth(2) == Some(remote.as_str()))
        .count()
}

#[tokio::test]
async fn sockets_close_when_the_pool_is_dropped() {
    let (upstream, _seen) = logging_udp_upstream(50).await;
    let pool = Arc::new(pool(vec![udp(upstream)], Duration::from_secs(2)));
    resolve_concurrently(&pool, 50, 10).await;
    let open = sockets_connected_to(upstream);
    assert!((1..=SOCKETS_PER_UPSTREAM).contains(&open), "{open} sockets");
    drop(pool);
    let deadline = Instant::now() + Duration::from_secs(2);
    while sockets_connected_to(upstream) > 0 {
        assert!(
            Instant::now() < deadline,
            "sockets left open after the pool was dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_silent_upstream_fails_over_after_the_timeout() {
    let (silent, _guard) = silent_udp_upstream().await;
    let good = udp_upstream(|request, _| vec![answer(request, 1, 2)]).await;
    let timeout = Duration::from_millis(200);
    let pool = sequential(vec![udp(silent), udp(good)], timeout);
    let started = Instant::now();
    let response = resolve_example(&pool).await;
    let elapsed = started.elapsed();
    assert_eq!(marker_of(&response), 2);
    assert!(elapsed >= timeout && elapsed < timeout * 5, "{elapsed:?}");
    assert_eq!(pool.stats().timeouts, 1);
}

#[tokio::test]
async fn a_refusing_upstream_fails_over_at_once() {
    let closed = closed_port().await;
    let good = udp_upstream(|request, _| vec![answer(request, 1, 3)]).await;
    let pool = pool(vec![udp(closed), udp(good)], Duration::from_secs(2));
    let started = Instant::now();
    let response = resolve_example(&pool).await;
    assert_eq!(marker_of(&response), 3);
    assert_elapsed_below(started, Duration::from_secs(1));
    let stats = pool.stats();
    assert_eq!((stats.refusals, stats.timeouts), (1, 0));
}

#[tokio::test]
async fn all_dead_fails_within_the_sum_of_timeouts() {
    let (silent_a, _guard_a) = silent_udp_upstream().await;
    let (silent_b, _guard_b) = silent_udp_upstream().await;
    let closed = closed_port().await;
    let timeout = Duration::from_millis(150);
    let pool = sequential(vec![udp(silent_a), udp(closed), udp(silent_b)], timeout);
    let started = Instant::now();
    let error = pool
        .resolve(&query(1, "example.com"), Protocol::Udp)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(
        error,
        ResolveError::AllFailed {
            attempts: 3,
            soft_answer: None
        }
    );
    assert!(
        elapsed >= timeout * 2 && elapsed < timeout * 2 + Duration::from_secs(1),
        "{elapsed:?}"
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.timeouts, stats.refusals, stats.all_failed),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn a_truncated_answer_is_kept_when_the_tcp_retry_fails() {
    let upstream = udp_upstream(|request, _| {
        let mut truncated = answer(request, 0, 0);
        truncated[2] |= 0x02;
        vec![truncated]
    })
    .await;
    let pool = pool(vec![udp(upstream)], Duration::from_secs(2));
    let response = pool
        .resolve(&query(0x5151, "big.example"), Protocol::Udp)
        .await
        .unwrap();
    assert!(tundns_dns::is_truncated(&response));
    assert_eq!(id_of(&response), 0x5151);
    assert_eq!(pool.stats().tcp_retries, 1);
}

#[tokio::test]
async fn tcp_carries_large_answers_and_ignores_mismatches() {
    let (upstream, _) = tcp_upstream(|request| {
        let id = id_of(request);
        vec![
            with_id(answer(request, 1, 9), id ^ 0xffff),
            answer(request, 200, 5),
        ]
    })
    .await;
    let closed = closed_port().await;
    let pool = pool(vec![udp(closed), udp(upstream)], Duration::from_secs(2));
    let response = pool
        .resolve(&query(0x0a0b, "big.example"), Protocol::Tcp)
        .await
        .unwrap();
    assert_eq!(id_of(&response), 0x0a0b);
    let message = Message::from_octets(&response[..]).unwrap();
    assert_eq!(message.header_counts().ancount(), 200);
    assert!(response.len() > 4096);
    let stats = pool.stats();
    assert_eq!((stats.refusals, stats.mismatched_ignored), (1, 1));
}

#[tokio::test]
async fn tcp_upstream_closing_early_fails_over() {
    let (closes, _) = tcp_upstream(|_| Vec::new()).await;
    let (good, _) = tcp_upstream(|request| vec![answer(request, 1, 8)]).await;
    let pool = pool(vec![tcp(closes), tcp(good)], Duration::from_secs(2));
    let response = pool
        .resolve(&query(1, "example.com"), Protocol::Tcp)
        .await
        .unwrap();
    assert_eq!(marker_of(&response), 8);
    assert_eq!(pool.stats().failures, 1);
}

#[tokio::test]
async fn concurrent_resolves_share_one_pool() {
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let upstream = udp_upstream(move |request, _| {
        counter.fetch_add(1, Ordering::Relaxed);
        vec![answer(request, 1, request[12])]
    })
    .await;
    let pool = Arc::new(pool(vec![udp(upstream)], Duration::from_secs(2)));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..64u16 {
        let pool = pool.clone();
        let results = results.clone();
        tasks.push(tokio::spawn(async move {
            // Names of different lengths, so each answer's marker identifies its question.
            let name = format!("{}.example", "a".repeat(usize::from(i % 60) + 1));
            let response = pool.resolve(&query(i, &name), Protocol::Udp).await.unwrap();
            results
                .lock()
                .await
                .push((i, id_of(&response), marker_of(&response)));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let results = results.lock().await;
    assert_eq!(results.len(), 64);
    for &(i, id, marker) in results.iter() {
        assert_eq!(id, i);
        assert_eq!(usize::from(marker), usize::from(i % 60) + 1);
    }
    assert_eq!(served.load(Ordering::Relaxed), 64);
    assert_eq!(pool.stats().answered, 64);
}

#[tokio::test]
async fn ipv6_loopback_works_when_available() {
    let Ok(socket) = UdpSocket::bind("[::1]:0").await else {
        return;
    };
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 512];
        if let Ok((len, client)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&answer(&buf[..len], 1, 6), client).await;
        }
    });
    let pool = pool(vec![udp(address)], Duration::from_secs(2));
    let response = pool
        .resolve(&query(3, "v6.example"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(marker_of(&response), 6);
}

#[tokio::test]
async fn fwmark_is_applied_or_reported() {
    let good = udp_upstream(|request, _| vec![answer(request, 1, 4)]).await;
    let pool = configured(
        vec![udp(good)],
        PoolConfig {
            attempt_timeout: Duration::from_secs(2),
            fwmark: Some(0x5a5a),
            ..PoolConfig::default()
        },
    );
    // SO_MARK needs CAP_NET_ADMIN: probe whether this process has it.
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let result = pool.resolve(&query(1, "example.com"), Protocol::Udp).await;
    if probe.set_mark(0x5a5a).is_ok() {
        assert_eq!(marker_of(&result.unwrap()), 4);
    } else {
        assert_eq!(
            result.unwrap_err(),
            ResolveError::AllFailed {
                attempts: 1,
                soft_answer: None
            }
        );
        assert_eq!(pool.stats().failures, 1);
    }
}

#[tokio::test]
async fn invalid_queries_and_empty_pools_send_nothing() {
    let pool = pool(Vec::new(), Duration::from_secs(1));
    let mut response = query(1, "example.com");
    response[2] |= 0x80;
    assert_eq!(
        pool.resolve(&response, Protocol::Udp).await,
        Err(ResolveError::InvalidQuery)
    );
    assert_eq!(
        pool.resolve(b"short", Protocol::Tcp).await,
        Err(ResolveError::InvalidQuery)
    );
    assert_eq!(
        pool.resolve(&query(1, "example.com"), Protocol::Udp).await,
        Err(ResolveError::NoUpstreams)
    );
    assert_eq!(pool.stats().queries, 0);
}

#[tokio::test]
async fn truncated_udp_answers_are_asked_again_over_tcp() {
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let address = socket.local_addr().unwrap();
    serve_udp(socket, |request, _| {
        let mut truncated = answer(request, 0, 0);
        truncated[2] |= 0x02;
        vec![truncated]
    });
    let listener = TcpListener::bind(address).await.unwrap();
    let accepts = serve_tcp(listener, |request| vec![answer(request, 200, 5)]);
    let pool = pool(vec![udp(address)], Duration::from_secs(2));
    let response = pool
        .resolve(&query(0x7c7c, "big.example"), Protocol::Udp)
        .await
        .unwrap();
    assert!(!tundns_dns::is_truncated(&response));
    assert_eq!(id_of(&response), 0x7c7c);
    assert_eq!(
        Message::from_octets(&response[..])
            .unwrap()
            .header_counts()
            .ancount(),
        200
    );
    assert_eq!(accepts.load(Ordering::Relaxed), 1);
    assert_eq!(pool.stats().tcp_retries, 1);
}

#[tokio::test]
async fn servfail_and_refused_move_on_to_the_next_upstream() {
    let servfail = udp_upstream(|request, _| vec![error_answer(request, Rcode::SERVFAIL)]).await;
    let refused = udp_upstream(|request, _| vec![error_answer(request, Rcode::REFUSED)]).await;
    let good = udp_upstream(|request, _| vec![answer(request, 1, 7)]).await;
    let pool = sequential(
        vec![udp(servfail), udp(refused), udp(good)],
        Duration::from_secs(2),
    );
    let answer = pool
        .resolve_from(&query(0x1111, "example.com"), Protocol::Udp)
        .await
        .unwrap();
    let response = answer.response;
    assert_eq!((marker_of(&response), id_of(&response)), (7, 0x1111));
    assert_eq!(
        &*answer.upstream,
        format!("udp://{good}"),
        "the one that answered"
    );
    let stats = pool.stats();
    assert_eq!((stats.soft_errors, stats.answered), (2, 1));
    // Soft errors are answers: the upstreams stay healthy.
    assert!(pool.health().iter().all(|h| h.alive && h.failures == 0));
}

#[tokio::test]
async fn only_soft_errors_fail_with_the_last_one() {
    let servfail = udp_upstream(|request, _| vec![error_answer(request, Rcode::SERVFAIL)]).await;
    let refused = udp_upstream(|request, _| vec![error_answer(request, Rcode::REFUSED)]).await;
    let pool = sequential(vec![udp(servfail), udp(refused)], Duration::from_secs(2));
    let error = pool
        .resolve(&query(0x2222, "example.com"), Protocol::Udp)
        .await
        .unwrap_err();
    let ResolveError::AllFailed {
        attempts: 2,
        soft_answer: Some(last),
    } = error
    else {
        panic!("{error:?}");
    };
    assert_eq!(id_of(&last), 0x2222);
    assert_eq!(rcode_of(&last), Rcode::REFUSED.to_int());
    assert_eq!(pool.stats().all_failed, 1);
}

#[tokio::test]
async fn hedging_asks_the_next_upstream_when_the_first_is_slow() {
    let slow_delay = Duration::from_millis(1500);
    let slow = delayed_udp_upstream(slow_delay, 1).await;
    let fast = delayed_udp_upstream(Duration::ZERO, 2).await;
    let pool = pool(vec![udp(slow), udp(fast)], Duration::from_secs(3));
    let started = Instant::now();
    let response = pool
        .resolve(&query(5, "example.com"), Protocol::Udp)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(marker_of(&response), 2);
    // No sample yet: the hedge fires after 3 × 100 ms.
    assert!(elapsed < slow_delay / 2, "{elapsed:?}");
    let stats = pool.stats();
    assert_eq!((stats.hedged, stats.answered, stats.timeouts), (1, 1, 0));
    assert!(pool.health()[1].srtt.is_some());
    // The slow upstream's attempt runs on in the background: its answer, when
    // it comes, measures its RTT.
    let deadline = Instant::now() + slow_delay * 2;
    while pool.health()[0].srtt.is_none() {
        assert!(Instant::now() < deadline, "the losing attempt was dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let slow_health = &pool.health()[0];
    assert!(slow_health.srtt.unwrap() >= slow_delay, "{slow_health:?}");
    assert_eq!((slow_health.failures, slow_health.alive), (0, true));
    assert_eq!(pool.stats().timeouts, 0);
}

#[tokio::test]
async fn a_silent_primary_is_marked_dead_despite_hedging_and_revived_by_a_probe() {
    let answering = Arc::new(AtomicBool::new(false));
    let flag = answering.clone();
    let primary = udp_upstream(move |request, _| {
        if flag.load(Ordering::Relaxed) {
            vec![answer(request, 1, 1)]
        } else {
            Vec::new()
        }
    })
    .await;
    let secondary = udp_upstream(|request, _| vec![answer(request, 1, 2)]).await;
    // Well past the 300 ms hedge delay, so the secondary is asked by hedging.
    let timeout = Duration::from_secs(1);
    let pool = pool(vec![udp(primary), udp(secondary)], timeout);
    let resolve = || async {
        let response = pool
            .resolve(&query(9, "example.com"), Protocol::Udp)
            .await
            .unwrap();
        marker_of(&response)
    };

    // Each query is answered by the secondary after the hedge delay; the
    // primary's attempts, left behind, time out in the background.
    for _ in 0..DEAD_AFTER_FAILURES {
        assert_eq!(resolve().await, 2);
    }
    tokio::time::sleep(timeout + Duration::from_millis(100)).await;
    let health = pool.health();
    assert!(!health[0].alive, "{:?}", health[0]);
    assert_eq!(health[0].failures, DEAD_AFTER_FAILURES);
    let stats = pool.stats();
    let hedged = u64::from(DEAD_AFTER_FAILURES);
    assert_eq!((stats.hedged, stats.timeouts), (hedged, hedged));

    // Dead: skipped, so no hedge delay (300 ms before the first RTT sample).
    let started = Instant::now();
    assert_eq!(resolve().await, 2);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(150), "{elapsed:?}");
    assert_eq!(pool.stats().hedged, hedged);

    // Back up: once the back-off (1 s) has passed, a query's probe revives it.
    answering.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !pool.health()[0].alive {
        assert!(Instant::now() < deadline, "the probe never revived it");
        assert_eq!(resolve().await, 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.stats().probes, 1);
    assert_eq!(resolve().await, 1, "back in first place");
}

#[tokio::test]
async fn without_hedging_a_slow_upstream_is_waited_for() {
    let slow_delay = Duration::from_millis(600);
    let slow = delayed_udp_upstream(slow_delay, 1).await;
    let fast = delayed_udp_upstream(Duration::ZERO, 2).await;
    let pool = sequential(vec![udp(slow), udp(fast)], Duration::from_secs(3));
    let started = Instant::now();
    let response = pool
        .resolve(&query(5, "example.com"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(marker_of(&response), 1);
    assert!(started.elapsed() >= slow_delay);
    assert_eq!(pool.stats().hedged, 0);
    let srtt = pool.health()[0].srtt.unwrap();
    assert!(srtt >= slow_delay, "{srtt:?}");
}

#[tokio::test]
async fn the_hedge_delay_follows_the_measured_rtt() {
    // A fast first upstream: once measured, the hedge comes after 20 ms, not 300.
    let first = delayed_udp_upstream(Duration::from_millis(2), 1).await;
    let second = delayed_udp_upstream(Duration::ZERO, 2).await;
    let pool = pool(vec![udp(first), udp(second)], Duration::from_secs(3));
    for _ in 0..5 {
        pool.resolve(&query(5, "example.com"), Protocol::Udp)
            .await
            .unwrap();
    }
    assert_eq!(pool.stats().hedged, 0);
    let srtt = pool.health()[0].srtt.unwrap();
    assert!(srtt < Duration::from_millis(100), "{srtt:?}");
}

#[tokio::test]
async fn dead_upstreams_are_skipped_until_a_probe_brings_them_back() {
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    // Closes every connection while unhealthy: a fast failure.
    let (flaky, flaky_accepts) = tcp_upstream(move |request| {
        if flag.load(Ordering::Relaxed) {
            vec![answer(request, 1, 1)]
        } else {
            Vec::new()
        }
    })
    .await;
    let (good, _) = tcp_upstream(|request| vec![answer(request, 1, 2)]).await;
    let pool = sequential(vec![tcp(flaky), tcp(good)], Duration::from_secs(2));
    let resolve = || async {
        let response = pool
            .resolve(&query(9, "example.com"), Protocol::Tcp)
            .await
            .unwrap();
        marker_of(&response)
    };
    for _ in 0..DEAD_AFTER_FAILURES {
        assert_eq!(resolve().await, 2);
    }
    let health = pool.health();
    assert!(!health[0].alive && health[1].alive);
    assert_eq!(health[0].failures, DEAD_AFTER_FAILURES);
    let tried = flaky_accepts.load(Ordering::Relaxed);
    assert_eq!(tried, DEAD_AFTER_FAILURES as usize);

    // Dead and not yet due a probe: not even tried.
    assert_eq!(resolve().await, 2);
    assert_eq!(flaky_accepts.load(Ordering::Relaxed), tried);
    assert_eq!(pool.stats().probes, 0);

    // Back up; after the back-off (1 s) a query triggers a background probe.
    healthy.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(resolve().await, 2, "the probe does not hold up the query");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !pool.health()[0].alive {
        assert!(Instant::now() < deadline, "the probe never revived it");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.stats().probes, 1);
    assert_eq!(resolve().await, 1, "back in first place");
}

#[tokio::test]
async fn when_every_upstream_is_dead_all_are_still_tried() {
    let closed = closed_port().await;
    let pool = sequential(vec![udp(closed)], Duration::from_secs(1));
    for _ in 0..DEAD_AFTER_FAILURES + 2 {
        let error = pool
            .resolve(&query(1, "example.com"), Protocol::Udp)
            .await
            .unwrap_err();
        assert!(matches!(error, ResolveError::AllFailed { attempts: 1, .. }));
    }
    assert!(!pool.health()[0].alive);
    assert_eq!(pool.stats().refusals, u64::from(DEAD_AFTER_FAILURES) + 2);
}

#[tokio::test]
async fn the_bind_address_sources_udp_and_tcp() {
    let source: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let address = socket.local_addr().unwrap();
    serve_udp(socket, move |request, client| {
        log.lock().unwrap().push(client.ip());
        vec![answer(request, 1, 3)]
    });
    let listener = TcpListener::bind(address).await.unwrap();
    let tcp_seen = Arc::new(std::sync::Mutex::new(None));
    let tcp_log = tcp_seen.clone();
    tokio::spawn(async move {
        if let Ok((_, peer)) = listener.accept().await {
            *tcp_log.lock().unwrap() = Some(peer.ip());
        }
    });
    let pool = configured(
        vec![udp(address)],
        PoolConfig {
            attempt_timeout: Duration::from_secs(2),
            bind_address: Some(source),
            ..PoolConfig::default()
        },
    );
    resolve_example(&pool).await;
    assert_eq!(*seen.lock().unwrap(), vec![source]);
    let _ = pool.resolve(&query(1, "example.com"), Protocol::Tcp).await;
    assert_eq!(*tcp_seen.lock().unwrap(), Some(source));
}

#[test]
fn a_bind_address_of_the_other_family_is_refused() {
    let upstream: SocketAddr = "[::1]:53".parse().unwrap();
    let error = UpstreamPool::new(
        vec![udp(upstream)],
        PoolConfig {
            bind_address: Some(LOOPBACK.into()),
            ..PoolConfig::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(error, PoolError::BindFamily { .. }), "{error}");
}

/// A fast failure moves the hedge deadline earlier, to the next upstream's own delay: the
/// one after it is asked then, not when the failed upstream's longer delay would have run out.
#[tokio::test]
async fn after_a_fast_failure_the_next_upstreams_hedge_delay_applies() {
    let refusing = closed_port().await;
    // Answers its first query at once (a small RTT: a 20 ms hedge delay), then goes silent.
    let answered_once = Arc::new(AtomicBool::new(false));
    let once = answered_once.clone();
    let fast_then_silent = udp_upstream(move |request, _| {
        if once.swap(true, Ordering::SeqCst) {
            vec![]
        } else {
            vec![answer(request, 1, 2)]
        }
    })
    .await;
    let answering = udp_upstream(|request, _| vec![answer(request, 1, 3)]).await;
    let pool = pool(
        vec![udp(refusing), udp(fast_then_silent), udp(answering)],
        Duration::from_secs(2),
    );
    // The first query teaches the pool the second upstream's RTT.
    let first = pool
        .resolve(&query(1, "first.lab.test"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(marker_of(&first), 2);
    // Now: the first refuses at once, the second stays silent, and the third is asked after
    // the second's 20 ms delay, not the first's 300 ms (it has no RTT yet).
    let started = Instant::now();
    let second = pool
        .resolve(&query(2, "second.lab.test"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(marker_of(&second), 3);
    assert_elapsed_below(started, Duration::from_millis(200));
}
