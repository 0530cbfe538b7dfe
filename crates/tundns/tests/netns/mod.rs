//! A network namespace of a test's or benchmark's own, entered on a thread of its own, so
//! no packet it sends leaves it. Shared by `tests/udp_offload.rs` and
//! `benches/udp_offload.rs`.

#![allow(
    dead_code,
    reason = "shared by a test and a benchmark, each using a part of it"
)]

use std::fs::File;
use std::process::Command;

use nix::sched::{CloneFlags, setns};

/// A network namespace the test or benchmark created, with `lo` up; deleted on drop.
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// The namespace for `test`, or `None` (after saying why) when this machine cannot make
    /// one and `TUNDNS_E2E` is not `1`.
    pub fn create_or_skip(test: &str) -> Option<Self> {
        let name = format!("tundns-{}-{test}", std::process::id());
        let missing = if nix::unistd::geteuid().is_root() {
            ip(&["netns", "add", &name]).err()
        } else {
            Some("not running as root (needs network namespaces)".to_owned())
        };
        match missing {
            None => {
                let namespace = Self { name };
                namespace.ip(&["link", "set", "lo", "up"]);
                Some(namespace)
            }
            Some(reason) if std::env::var("TUNDNS_E2E").is_ok_and(|value| value == "1") => {
                panic!("TUNDNS_E2E=1 but {test} cannot run: {reason}")
            }
            Some(reason) => {
                eprintln!("skipped: {test}: {reason} (set TUNDNS_E2E=1 to make this a failure)");
                None
            }
        }
    }

    /// Runs `ip -n <namespace> <args>`.
    pub fn ip(&self, args: &[&str]) {
        let mut namespaced = vec!["-n", &self.name];
        namespaced.extend_from_slice(args);
        ip(&namespaced).unwrap_or_else(|error| panic!("{error}"));
    }

    /// Moves the calling thread into the namespace: every socket it opens from now on
    /// lives there.
    pub fn enter(&self) {
        let namespace =
            File::open(format!("/run/netns/{}", self.name)).expect("the namespace's file");
        setns(namespace, CloneFlags::CLONE_NEWNET).expect("setns into the namespace");
    }

    /// Runs `body` on a thread of its own that entered the namespace, on a single-threaded
    /// runtime.
    pub fn run(&self, body: impl AsyncFnOnce() + Send) {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter();
                    runtime().block_on(body());
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        });
    }
}

/// A single-threaded runtime: its sockets are opened on the thread that entered.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!("{error}");
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("ip {args:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
