//! The control socket: the server inside a running tunnel, the client the CLI uses, and
//! the JSON protocol between them.

pub mod client;
pub mod protocol;
mod server;

pub use server::{ControlError, ControlServer};
