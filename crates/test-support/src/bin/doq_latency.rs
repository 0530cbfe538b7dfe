//! `doq-latency SERVER NAME COUNT [SERVER_PID]`: times COUNT queries for NAME A, one at a
//! time, over UDP and over one reused DNS over QUIC connection (port 853), both from hickory's
//! clients, and prints each transport's p50 and p99 in microseconds; given the server's
//! process id, also the CPU time it spent per answer, in microseconds:
//!
//! ```text
//! udp n=300 p50=41 p99=88 cpu=9.8
//! doq n=300 p50=63 p99=120 cpu=31.2
//! ```
//!
//! For `bench/dns-encrypted.sh`: dnsperf 2.11 has no DoQ, and kdig opens a connection per
//! query. The server is trusted whatever its certificate: the benchmark measures time, and
//! the tests check the pin. Run it inside the benchmark's namespace; COUNT is at most
//! 10,000, and each query times out after 2 s.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hickory_proto::op::{Message, Query};
use hickory_proto::quic::QuicClientStream;
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::udp::UdpClientStream;
use hickory_proto::xfer::{DnsRequest, DnsRequestOptions, DnsRequestSender};
use tundns_test_support::tls::pinned_client_config;

const MAX_COUNT: usize = 10_000;
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (server, name, count, server_pid) = match args.as_slice() {
        [server, name, count] => (server, name, count, None),
        [server, name, count, pid] => (server, name, count, Some(pid)),
        _ => exit("usage: doq-latency SERVER NAME COUNT [SERVER_PID]"),
    };
    let server_pid = server_pid.map(|pid| {
        pid.parse::<u32>()
            .ok()
            .filter(|pid| server_cpu_ns(*pid).is_some())
            .unwrap_or_else(|| exit("SERVER_PID is a running process's id"))
    });
    let server: IpAddr = server
        .parse()
        .unwrap_or_else(|_| exit("SERVER is an IP address"));
    let name = Name::from_ascii(name).unwrap_or_else(|_| exit("NAME is a domain name"));
    let count = count
        .parse::<usize>()
        .ok()
        .filter(|count| (1..=MAX_COUNT).contains(count))
        .unwrap_or_else(|| exit("COUNT is 1..=10000"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let udp =
            UdpClientStream::builder(SocketAddr::new(server, 53), TokioRuntimeProvider::default())
                .with_timeout(Some(QUERY_TIMEOUT))
                .build()
                .await
                .unwrap_or_else(|error| exit(&format!("UDP: {error}")));
        report("udp", server_pid, time_queries(udp, &name, count)).await;

        let mut builder = QuicClientStream::builder();
        builder.crypto_config(pinned_client_config(None));
        let doq = builder
            .build(
                SocketAddr::new(server, 853),
                "dns.tundns.internal".to_string(),
            )
            .await
            .unwrap_or_else(|error| exit(&format!("DoQ: {error}")));
        report("doq", server_pid, time_queries(doq, &name, count)).await;
    });
}

/// Each query's time from send to answer, in microseconds, sorted.
async fn time_queries(mut sender: impl DnsRequestSender, name: &Name, count: usize) -> Vec<u64> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let mut message = Message::new();
        message
            .add_query(Query::query(name.clone(), RecordType::A))
            .set_recursion_desired(true);
        let request = DnsRequest::new(message, DnsRequestOptions::default());
        let started = Instant::now();
        let answer = tokio::time::timeout(QUERY_TIMEOUT, sender.send_message(request).next()).await;
        match answer {
            Ok(Some(Ok(response))) if !response.answers().is_empty() => {
                times.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            other => exit(&format!("a query failed: {other:?}")),
        }
    }
    times.sort_unstable();
    times
}

/// Runs `timing` and prints its quantiles, and the CPU time `server_pid` spent meanwhile per
/// answer.
async fn report(transport: &str, server_pid: Option<u32>, timing: impl Future<Output = Vec<u64>>) {
    let cpu_before = server_pid.and_then(server_cpu_ns);
    let times = timing.await;
    let at = |quantile: f64| times[((times.len() - 1) as f64 * quantile) as usize];
    let mut line = format!(
        "{transport} n={} p50={} p99={}",
        times.len(),
        at(0.5),
        at(0.99)
    );
    if let (Some(before), Some(after)) = (cpu_before, server_pid.and_then(server_cpu_ns)) {
        let per_answer_us = after.saturating_sub(before) as f64 / 1e3 / times.len() as f64;
        line += &format!(" cpu={per_answer_us:.1}");
    }
    println!("{line}");
}

/// The CPU time of `pid`'s threads so far, in nanoseconds (the first field of each thread's
/// `schedstat`: /proc/PID/stat counts clock ticks, too coarse for a few thousand answers). A
/// thread that ends between two reads takes its time with it; tundns's threads live as long as
/// it does.
fn server_cpu_ns(pid: u32) -> Option<u64> {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let on_cpu = threads.flatten().filter_map(|thread| {
        let schedstat = std::fs::read_to_string(thread.path().join("schedstat")).ok()?;
        schedstat.split_whitespace().next()?.parse::<u64>().ok()
    });
    Some(on_cpu.sum())
}

fn exit(why: &str) -> ! {
    eprintln!("doq-latency: {why}");
    std::process::exit(2)
}
