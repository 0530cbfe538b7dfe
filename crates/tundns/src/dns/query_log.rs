//! The query log: one JSON line per query (`QueryLog =` in `[DNSProxy]`), written by a
//! thread of its own.
//!
//! The resolver hands each finished query to [`QueryLog::record`], which only tries to
//! put a fixed-size [`QueryEvent`] (no allocation) into a bounded channel: the answer path
//! never blocks and never touches the file. When the writer falls behind and the
//! channel is full, the line is dropped and counted. The writer flushes whenever the
//! channel runs dry, and reopens the file after [`QueryLog::reopen`] (on SIGHUP), so
//! rotation is the operator's: logrotate moves the file, then signals.
//!
//! A line: `{"time":"2025-01-02T03:04:05.678Z","client":"10.99.0.2:41000",
//! "transport":"udp","name":"www.example.","type":"A","result":"NOERROR",
//! "path":"forwarded","upstream":"udp://192.0.2.53:53","latency_us":41}`. `client` is null
//! for queries that did not come from the network; `name` and `type` are null, and
//! `result` is `"none"` when nothing was answered, for a message that could not be read;
//! `upstream` is the upstream that answered, null when none did (from memory, stale,
//! SERVFAIL).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::dns::counters::Transport;
use tokio::sync::mpsc;
use tundns_dns::Question;

use tundns_resolver::AnswerPath;

use crate::dns::counters::type_mnemonic;

/// Lines waiting for the writer; beyond this they are dropped.
pub const QUEUE_LEN: usize = 4096;

/// Where and when a query arrived, carried along until it is answered.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Who asked, when it came from the network.
    pub client: Option<SocketAddr>,
    pub transport: Transport,
    /// Taken only while the query log is on: the clock is not read for nothing.
    pub started: Option<Instant>,
}

impl Arrival {
    /// A query arriving now; `timed` says whether its latency will be logged.
    pub fn now(client: Option<SocketAddr>, transport: Transport, timed: bool) -> Self {
        Self {
            client,
            transport,
            started: timed.then(Instant::now),
        }
    }

    /// The event for the answer to this query, sent now.
    pub fn answered(
        &self,
        question: Option<&Question>,
        path: AnswerPath,
        answer: &[u8],
        upstream: Option<Arc<str>>,
    ) -> QueryEvent {
        QueryEvent {
            time: SystemTime::now(),
            client: self.client,
            transport: self.transport,
            question: question.cloned(),
            rcode: answer.get(3).map(|flags| flags & 0x0f),
            path,
            upstream,
            latency: self
                .started
                .map(|started| started.elapsed())
                .unwrap_or_default(),
        }
    }
}

/// One answered (or dropped) query.
pub struct QueryEvent {
    /// When the answer was sent.
    pub time: SystemTime,
    /// Who asked, when it came from the network.
    pub client: Option<SocketAddr>,
    pub transport: Transport,
    /// The question, when the message could be read.
    pub question: Option<Question>,
    /// The answer's RCODE (header bits), or `None` when nothing was answered.
    pub rcode: Option<u8>,
    pub path: AnswerPath,
    /// The upstream that gave the answer, as its spec displays; `None` when none did.
    pub upstream: Option<Arc<str>>,
    /// From the query's arrival to its answer.
    pub latency: Duration,
}

/// The log's counters, read by the metrics.
#[derive(Debug, Default)]
pub struct QueryLogStats {
    /// Lines written.
    pub written: AtomicU64,
    /// Lines dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Lines lost to write errors.
    pub write_errors: AtomicU64,
}

/// The sending side, held by the resolver. Cheap to clone.
#[derive(Clone)]
pub struct QueryLog {
    sender: mpsc::Sender<QueryEvent>,
    stats: Arc<QueryLogStats>,
    reopen: Arc<AtomicBool>,
}

impl QueryLog {
    /// Opens (creating, appending) `path` and starts the writer thread. The file is
    /// opened here so that a bad path fails at start-up.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = open_file(path)?;
        let (sender, receiver) = mpsc::channel(QUEUE_LEN);
        let log = Self {
            sender,
            stats: Arc::default(),
            reopen: Arc::default(),
        };
        let writer = Writer {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            stats: log.stats.clone(),
            reopen: log.reopen.clone(),
            line: String::with_capacity(256),
        };
        std::thread::Builder::new()
            .name("tundns-query-log".into())
            .spawn(move || writer.run(receiver))?;
        Ok(log)
    }

    /// Queues one line; never waits. A full queue drops the line and counts it.
    pub fn record(&self, event: QueryEvent) {
        if self.sender.try_send(event).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes the writer reopen the file before its next line (after rotation).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    pub fn stats(&self) -> &Arc<QueryLogStats> {
        &self.stats
    }
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    stats: Arc<QueryLogStats>,
    reopen: Arc<AtomicBool>,
    line: String,
}

impl Writer {
    /// Writes until every sender is gone, flushing whenever the queue runs dry.
    fn run(mut self, mut receiver: mpsc::Receiver<QueryEvent>) {
        while let Some(event) = receiver.blocking_recv() {
            self.write(&event);
            while let Ok(event) = receiver.try_recv() {
                self.write(&event);
            }
            if self.out.flush().is_err() {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = self.out.flush();
    }

    fn write(&mut self, event: &QueryEvent) {
        if self.reopen.swap(false, Ordering::Relaxed) {
            let _ = self.out.flush();
            match open_file(&self.path) {
                Ok(file) => self.out = BufWriter::new(file),
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), %error, "reopening the query log");
                }
            }
        }
        self.line.clear();
        format_line(event, &mut self.line);
        match self.out.write_all(self.line.as_bytes()) {
            Ok(()) => self.stats.written.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.write_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Appends `event` as one JSON line, newline included.
pub fn format_line(event: &QueryEvent, out: &mut String) {
    out.push_str("{\"time\":\"");
    write_rfc3339(event.time, out);
    out.push_str("\",\"client\":");
    match event.client {
        Some(client) => {
            let _ = write!(out, "\"{client}\"");
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"transport\":\"");
    out.push_str(event.transport.label());
    out.push_str("\",\"name\":");
    match &event.question {
        Some(question) => {
            out.push('"');
            write_name(question.name_wire(), out);
            out.push('"');
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"type\":");
    match &event.question {
        Some(question) => {
            out.push('"');
            match type_mnemonic(question.qtype()) {
                Some(name) => out.push_str(name),
                None => {
                    let _ = write!(out, "TYPE{}", question.qtype());
                }
            }
            out.push('"');
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"result\":\"");
    match event.rcode {
        Some(rcode) => match rcode_name(rcode) {
            Some(name) => out.push_str(name),
            None => {
                let _ = write!(out, "RCODE{rcode}");
            }
        },
        None => out.push_str("none"),
    }
    out.push_str("\",\"path\":\"");
    out.push_str(event.path.label());
    out.push_str("\",\"upstream\":");
    match &event.upstream {
        Some(upstream) => write_json_string(upstream, out),
        None => out.push_str("null"),
    }
    let _ = writeln!(out, ",\"latency_us\":{}}}", event.latency.as_micros());
}

/// `text` as a JSON string, quotes included.
fn write_json_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn rcode_name(rcode: u8) -> Option<&'static str> {
    Some(match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => return None,
    })
}

/// A wire-format name in presentation form (`www.example.`), escaped as zone files
/// escape it (`\.`, `\\`, `\DDD`), so the JSON string needs no escapes but `\\`.
fn write_name(wire: &[u8], out: &mut String) {
    let mut pos = 0;
    while let Some(&len) = wire.get(pos) {
        if len == 0 {
            break;
        }
        let label = wire.get(pos + 1..pos + 1 + usize::from(len)).unwrap_or(&[]);
        for &byte in label {
            // Every byte outside printable ASCII, and the JSON-special `"`, becomes \DDD;
            // the backslash of an escape is itself escaped for JSON.
            match byte {
                b'.' => out.push_str("\\\\."),
                b'\\' => out.push_str("\\\\\\\\"),
                b'"' => out.push_str("\\\\034"),
                0x21..=0x7e => out.push(char::from(byte)),
                _ => {
                    let _ = write!(out, "\\\\{byte:03}");
                }
            }
        }
        out.push('.');
        pos += 1 + usize::from(len);
    }
    if pos == 0 {
        out.push('.');
    }
}

/// UTC, millisecond precision: `2025-01-02T03:04:05.678Z`.
fn write_rfc3339(time: SystemTime, out: &mut String) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_millis()
    );
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` with `qtype`, class IN.
    fn question(name: &[u8], qtype: u16) -> Question {
        let mut msg = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(name);
        msg.extend_from_slice(&qtype.to_be_bytes());
        msg.extend_from_slice(&[0, 1]);
        tundns_dns::parse_query(&msg)
            .expect("a valid query")
            .question()
            .clone()
    }

    fn event() -> QueryEvent {
        QueryEvent {
            time: UNIX_EPOCH + Duration::from_millis(1_735_787_045_678),
            client: Some("10.99.0.2:41000".parse().unwrap()),
            transport: Transport::Udp,
            question: Some(question(b"\x03www\x07Example\x00", 1)),
            rcode: Some(0),
            path: AnswerPath::Cache,
            upstream: None,
            latency: Duration::from_micros(41),
        }
    }

    fn line(event: &QueryEvent) -> String {
        let mut out = String::new();
        format_line(event, &mut out);
        out
    }

    #[test]
    fn a_line_has_every_field() {
        assert_eq!(
            line(&event()),
            "{\"time\":\"2025-01-02T03:04:05.678Z\",\"client\":\"10.99.0.2:41000\",\"transport\":\"udp\",\"name\":\"www.example.\",\"type\":\"A\",\"result\":\"NOERROR\",\"path\":\"cache\",\"upstream\":null,\"latency_us\":41}\n"
        );
    }

    #[test]
    fn lines_are_json_whatever_the_name_holds() {
        let mut event = event();
        event.question = Some(question(b"\x05a\"b\\c\x03\xff.\x00\x00", 4242));
        event.client = None;
        event.transport = Transport::Tcp;
        event.rcode = Some(9);
        event.path = AnswerPath::Forwarded;
        event.upstream = Some("https://dns.example@192.0.2.53:443/q?\"x\"\u{1}".into());
        let text = line(&event);
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let value: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert_eq!(value["name"], "a\\034b\\\\c.\\255\\.\\000.");
        assert_eq!(value["type"], "TYPE4242");
        assert_eq!(value["result"], "RCODE9");
        assert_eq!(value["client"], serde_json::Value::Null);
        assert_eq!(value["transport"], "tcp");
        assert_eq!(value["path"], "forwarded");
        assert_eq!(
            value["upstream"],
            "https://dns.example@192.0.2.53:443/q?\"x\"\u{1}"
        );
    }

    #[test]
    fn an_unreadable_query_has_null_name_and_type() {
        let mut event = event();
        event.question = None;
        event.rcode = None;
        event.path = AnswerPath::Dropped;
        let value: serde_json::Value = serde_json::from_str(&line(&event)).unwrap();
        assert_eq!(value["name"], serde_json::Value::Null);
        assert_eq!(value["type"], serde_json::Value::Null);
        assert_eq!(value["result"], "none");
        assert_eq!(value["path"], "dropped");
    }

    #[test]
    fn dates_are_gregorian() {
        for (seconds, expected) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000Z"),
            (1_709_251_199, "2024-02-29T23:59:59.000Z"),
        ] {
            let mut out = String::new();
            write_rfc3339(UNIX_EPOCH + Duration::from_secs(seconds), &mut out);
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn the_writer_appends_lines_and_counts_them() {
        let dir = std::env::temp_dir().join(format!("tundns-query-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("queries.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = QueryLog::open(&path).unwrap();
        for _ in 0..3 {
            log.record(event());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while log.stats().written.load(Ordering::Relaxed) < 3
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        // After a rotation the next line goes to a new file at the same path.
        std::fs::rename(&path, dir.join("queries.jsonl.1")).unwrap();
        log.reopen();
        log.record(event());
        drop(log);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        let rotated = std::fs::read_to_string(dir.join("queries.jsonl.1")).unwrap();
        assert_eq!(rotated.lines().count(), 3);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), line(&event()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
