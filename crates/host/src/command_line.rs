//! Running the system's own tools (resolvectl, resolvconf, nft): bounded in time, with
//! their stdin given and their stdout returned.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for one run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A command to run, with what it reads on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: &'static str,
    pub args: Vec<String>,
    pub stdin: Option<String>,
}

impl std::fmt::Display for CommandLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.program, self.args.join(" "))
    }
}

/// A command that could not be started, failed, or did not finish in time.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {reason}")]
pub struct CommandError {
    pub command: String,
    pub reason: String,
    /// True when the program is not installed.
    pub not_found: bool,
}

impl CommandLine {
    pub fn new(program: &'static str, args: &[&str], stdin: Option<String>) -> Self {
        CommandLine {
            program,
            args: args.iter().map(ToString::to_string).collect(),
            stdin,
        }
    }

    /// Runs the command for at most [`COMMAND_TIMEOUT`] and returns its stdout.
    pub fn run(&self) -> Result<String, CommandError> {
        let failed = |reason: String| CommandError {
            command: self.to_string(),
            reason,
            not_found: false,
        };
        let mut child = Command::new(self.program)
            .args(&self.args)
            // resolvectl wraps long lists at the terminal's width, or at 80 columns without one.
            .env("COLUMNS", "65535")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| CommandError {
                not_found: error.kind() == std::io::ErrorKind::NotFound,
                ..failed(error.to_string())
            })?;
        if let (Some(input), Some(mut stdin)) = (&self.stdin, child.stdin.take()) {
            stdin
                .write_all(input.as_bytes())
                .map_err(|error| failed(error.to_string()))?;
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child
                .try_wait()
                .map_err(|error| failed(error.to_string()))?
            {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(failed(format!("no answer within {COMMAND_TIMEOUT:?}")));
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            let _ = pipe.read_to_string(&mut stdout);
        }
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        if status.success() {
            Ok(stdout)
        } else {
            Err(failed(format!("{status}: {}", stderr.trim())))
        }
    }
}
