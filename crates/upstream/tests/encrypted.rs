//! DoT and DoH against local TLS servers with a CA made in the test.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tundns_upstream::{PoolConfig, PoolError, Protocol, ResolveError, UpstreamPool};

const TIMEOUT: Duration = Duration::from_secs(3);

fn immediate(request: &[u8], marker: u8) -> Replies {
    vec![(Duration::ZERO, answer(request, 1, marker))]
}

#[tokio::test]
async fn dot_verifies_the_certificate_against_the_ca_file_only() {
    let pki = TestPki::new("dot-verify");
    let (address, accepts) = dot_upstream(&pki, |request| immediate(request, 1)).await;

    let trusting = configured(vec![tls(address)], pki.pool_config(TIMEOUT));
    let response = trusting
        .resolve(&query(0x0d07, "example.com"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!((id_of(&response), marker_of(&response)), (0x0d07, 1));

    // System roots only: the test CA is unknown, the handshake must fail.
    let untrusting = sequential(vec![tls(address)], TIMEOUT);
    let error = untrusting
        .resolve(&query(1, "example.com"), Protocol::Udp)
        .await
        .unwrap_err();
    assert!(matches!(error, ResolveError::AllFailed { attempts: 1, .. }));
    assert_eq!(untrusting.stats().failures, 1);
    assert_eq!(accepts.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn dot_checks_the_server_name() {
    let pki = TestPki::new("dot-name");
    let (address, _) = dot_upstream(&pki, |request| immediate(request, 1)).await;
    let wrong_name = tundns_upstream::Upstream::Tls {
        server_name: "other.lab.test".into(),
        address,
    };
    let pool = configured(vec![wrong_name], pki.pool_config(TIMEOUT));
    assert!(
        pool.resolve(&query(1, "example.com"), Protocol::Udp)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn dot_reuses_one_connection() {
    let pki = TestPki::new("dot-reuse");
    let (address, accepts) = dot_upstream(&pki, |request| immediate(request, 2)).await;
    let pool = configured(vec![tls(address)], pki.pool_config(TIMEOUT));
    for id in 0..10 {
        let response = pool
            .resolve(&query(id, "example.com"), Protocol::Udp)
            .await
            .unwrap();
        assert_eq!((id_of(&response), marker_of(&response)), (id, 2));
    }
    assert_eq!(accepts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn dot_pipelines_and_matches_answers_out_of_order() {
    let pki = TestPki::new("dot-pipeline");
    let slow = Duration::from_millis(500);
    let (address, accepts) = dot_upstream(&pki, move |request| {
        let delay = if first_label(request) == "slow" {
            slow
        } else {
            Duration::ZERO
        };
        vec![(delay, answer(request, 1, request[13]))]
    })
    .await;
    let pool = Arc::new(configured(vec![tls(address)], pki.pool_config(TIMEOUT)));
    // Open the connection first, so both queries below share it.
    pool.resolve(&query(1, "warm.example"), Protocol::Udp)
        .await
        .unwrap();

    let started = Instant::now();
    let slow_pool = pool.clone();
    let slow_query = tokio::spawn(async move {
        let response = slow_pool
            .resolve(&query(0x5105, "slow.example"), Protocol::Udp)
            .await
            .unwrap();
        (response, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fast = pool
        .resolve(&query(0xfa57, "fast.example"), Protocol::Udp)
        .await
        .unwrap();
    let fast_elapsed = started.elapsed();
    let (slow_response, slow_elapsed) = slow_query.await.unwrap();

    assert_eq!((id_of(&fast), marker_of(&fast)), (0xfa57, b'f'));
    assert_eq!(
        (id_of(&slow_response), marker_of(&slow_response)),
        (0x5105, b's')
    );
    assert!(
        fast_elapsed < slow,
        "the fast answer waited for the slow one: {fast_elapsed:?}"
    );
    assert!(slow_elapsed >= slow);
    assert_eq!(accepts.load(Ordering::Relaxed), 1);
    assert_eq!(pool.stats().hedged, 0, "one upstream: nothing to hedge to");
}

#[tokio::test]
async fn dot_ignores_forged_answers() {
    let pki = TestPki::new("dot-forged");
    let (address, _) = dot_upstream(&pki, |request| {
        let id = id_of(request);
        let wrong_question = with_id(answer(&query(0, "evil.example"), 1, 66), id);
        vec![
            (Duration::ZERO, with_id(answer(request, 1, 77), id ^ 0x8001)),
            (Duration::ZERO, wrong_question),
            (Duration::from_millis(50), answer(request, 1, 42)),
        ]
    })
    .await;
    let pool = configured(vec![tls(address)], pki.pool_config(TIMEOUT));
    let response = pool
        .resolve(&query(0x1234, "www.example.com"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!((id_of(&response), marker_of(&response)), (0x1234, 42));
    assert_eq!(pool.stats().mismatched_ignored, 2);
}

#[tokio::test]
async fn an_idle_dot_connection_is_closed_and_replaced() {
    let pki = TestPki::new("dot-idle");
    let (address, accepts) = dot_upstream(&pki, |request| immediate(request, 3)).await;
    let pool = configured(
        vec![tls(address)],
        PoolConfig {
            idle_timeout: Duration::from_millis(150),
            ..pki.pool_config(TIMEOUT)
        },
    );
    resolve_example(&pool).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let response = pool
        .resolve(&query(2, "example.com"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(marker_of(&response), 3);
    assert_eq!(accepts.load(Ordering::Relaxed), 2);
    assert_eq!(pool.stats().failures, 0);
}

#[tokio::test]
async fn doh_sends_id_zero_restores_the_id_and_shares_one_connection() {
    let pki = TestPki::new("doh");
    let (address, log) = doh_upstream(&pki, |request| {
        // Concurrent streams: every answer waits a little.
        (Duration::from_millis(100), answer(request, 1, 4))
    })
    .await;
    let pool = Arc::new(configured(vec![https(address)], pki.pool_config(TIMEOUT)));
    pool.resolve(&query(0x4242, "example.com"), Protocol::Udp)
        .await
        .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in 1..=8u16 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let response = pool
                .resolve(&query(id, "example.com"), Protocol::Tcp)
                .await
                .unwrap();
            assert_eq!((id_of(&response), marker_of(&response)), (id, 4));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Eight 100 ms answers at once, not one after the other.
    assert_elapsed_below(started, Duration::from_millis(500));
    assert_eq!(log.accepts.load(Ordering::Relaxed), 1);
    let ids = log.ids.lock().unwrap().clone();
    assert_eq!(ids, vec![0; 9]);
}

#[tokio::test]
async fn doh_verifies_the_certificate_against_the_ca_file_only() {
    let pki = TestPki::new("doh-verify");
    let (address, log) =
        doh_upstream(&pki, |request| (Duration::ZERO, answer(request, 1, 5))).await;
    let untrusting = sequential(vec![https(address)], TIMEOUT);
    assert!(
        untrusting
            .resolve(&query(1, "example.com"), Protocol::Udp)
            .await
            .is_err()
    );
    assert!(
        log.ids.lock().unwrap().is_empty(),
        "a query went out unverified"
    );
    let trusting = configured(vec![https(address)], pki.pool_config(TIMEOUT));
    let response = resolve_example(&trusting).await;
    assert_eq!(marker_of(&response), 5);
}

#[tokio::test]
async fn a_forged_doh_answer_is_counted_and_fails_over() {
    let pki = TestPki::new("doh-forged");
    let (forger, _) = doh_upstream(&pki, |_| {
        (Duration::ZERO, answer(&query(0, "evil.example"), 1, 66))
    })
    .await;
    let good = udp_upstream(|request, _| vec![answer(request, 1, 6)]).await;
    let pool = configured(
        vec![https(forger), udp(good)],
        PoolConfig {
            hedge: false,
            ..pki.pool_config(TIMEOUT)
        },
    );
    let response = pool
        .resolve(&query(1, "www.example.com"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(marker_of(&response), 6);
    let stats = pool.stats();
    assert_eq!((stats.mismatched_ignored, stats.failures), (1, 1));
}

#[tokio::test]
async fn unreachable_dot_and_doh_upstreams_fail_over_at_once() {
    let pki = TestPki::new("refused");
    let closed_dot = closed_port().await;
    let closed_doh = closed_port().await;
    let good = udp_upstream(|request, _| vec![answer(request, 1, 7)]).await;
    let pool = configured(
        vec![tls(closed_dot), https(closed_doh), udp(good)],
        PoolConfig {
            hedge: false,
            ..pki.pool_config(TIMEOUT)
        },
    );
    let started = Instant::now();
    let response = resolve_example(&pool).await;
    assert_eq!(marker_of(&response), 7);
    assert_elapsed_below(started, Duration::from_millis(500));
    assert_eq!(pool.stats().refusals, 2);
}

#[tokio::test]
async fn stalled_dot_and_doh_upstreams_fail_over_within_the_attempt_timeout() {
    let pki = TestPki::new("stalled");
    let (mute_dot, dot_accepts) = mute_tcp_listener().await;
    let (mute_doh, doh_accepts) = mute_tcp_listener().await;
    let good = udp_upstream(|request, _| vec![answer(request, 1, 8)]).await;
    let timeout = Duration::from_millis(300);
    let pool = configured(
        vec![tls(mute_dot), https(mute_doh), udp(good)],
        PoolConfig {
            hedge: false,
            ..pki.pool_config(timeout)
        },
    );
    let started = Instant::now();
    let response = resolve_example(&pool).await;
    let elapsed = started.elapsed();
    assert_eq!(marker_of(&response), 8);
    assert!(
        elapsed >= timeout * 2 && elapsed < timeout * 2 + Duration::from_millis(700),
        "{elapsed:?}"
    );
    assert_eq!(pool.stats().timeouts, 2);
    assert_eq!(dot_accepts.load(Ordering::Relaxed), 1);
    assert_eq!(doh_accepts.load(Ordering::Relaxed), 1);

    // With hedging, a stalled upstream costs one hedge delay, not a timeout.
    let hedged = configured(
        vec![tls(mute_dot), udp(good)],
        PoolConfig {
            attempt_timeout: Duration::from_secs(3),
            ..pki.pool_config(TIMEOUT)
        },
    );
    let started = Instant::now();
    resolve_example(&hedged).await;
    assert_elapsed_below(started, Duration::from_secs(1));
}

#[tokio::test]
async fn concurrent_queries_to_a_black_holed_dot_upstream_share_one_connect() {
    black_holed_upstream_fails_over_together("black-hole-dot", tls).await;
}

#[tokio::test]
async fn concurrent_queries_to_a_black_holed_doh_upstream_share_one_connect() {
    black_holed_upstream_fails_over_together("black-hole-doh", https).await;
}

/// Queries arriving one after the other while the first one's connect hangs
/// (a listener that accepts and never speaks TLS) wait for that connect, fail
/// over when it gives up, and count one failure, not one each.
async fn black_holed_upstream_fails_over_together(
    test: &str,
    spec: fn(std::net::SocketAddr) -> tundns_upstream::Upstream,
) {
    const QUERIES: u16 = 8;
    let pki = TestPki::new(test);
    let (mute, accepts) = mute_tcp_listener().await;
    let good = udp_upstream(|request, _| vec![answer(request, 1, 9)]).await;
    let timeout = Duration::from_millis(400);
    let stagger = Duration::from_millis(40);
    let pool = Arc::new(configured(
        vec![spec(mute), udp(good)],
        PoolConfig {
            hedge: false,
            ..pki.pool_config(timeout)
        },
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..QUERIES {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let response = pool
                .resolve(&query(id, "example.com"), Protocol::Udp)
                .await
                .unwrap();
            assert_eq!((id_of(&response), marker_of(&response)), (id, 9));
        }));
        tokio::time::sleep(stagger).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    // Each on its own would fail over 400 ms after it started, the last at
    // 280 + 400 ms; together they fail over when the one connect gives up.
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_millis(200),
        "{elapsed:?}"
    );
    assert_eq!(accepts.load(Ordering::Relaxed), 1, "one connect for all");
    let health = &pool.health()[0];
    assert_eq!((health.failures, health.alive), (1, true), "{health:?}");
    let stats = pool.stats();
    assert_eq!(
        (stats.timeouts, stats.failures, stats.answered),
        (1, u64::from(QUERIES) - 1, u64::from(QUERIES))
    );

    // The failed connect is forgotten: the next query tries again.
    resolve_example(&pool).await;
    assert_eq!(accepts.load(Ordering::Relaxed), 2);
    assert_eq!(pool.health()[0].failures, 2);
}

#[test]
fn a_bad_ca_file_is_an_error_naming_the_file() {
    let path = std::env::temp_dir().join(format!(
        "tundns-upstream-{}-no-such-ca.pem",
        std::process::id()
    ));
    let error = UpstreamPool::new(
        Vec::new(),
        PoolConfig {
            ca_file: Some(path.clone()),
            ..PoolConfig::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(error, PoolError::CaFile { .. }));
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn bad_names_and_paths_are_refused() {
    let address = "127.0.0.1:853".parse().unwrap();
    let bad_name = tundns_upstream::Upstream::Tls {
        server_name: "not a name!".into(),
        address,
    };
    assert!(matches!(
        UpstreamPool::new(vec![bad_name], PoolConfig::default()),
        Err(PoolError::ServerName(_))
    ));
    let bad_path = tundns_upstream::Upstream::Https {
        server_name: "dns.lab.test".into(),
        address,
        path: "dns-query".into(),
    };
    assert!(matches!(
        UpstreamPool::new(vec![bad_path], PoolConfig::default()),
        Err(PoolError::DohPath(_))
    ));
}
