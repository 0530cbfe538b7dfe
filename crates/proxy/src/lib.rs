//! The sans-IO core of tundns's proxies: what a SOCKS5 or HTTP proxy client says, and
//! what tundns answers.
//!
//! It owns the SOCKS5 wire format ([`socks5`]: the greeting, RFC 1929's username and
//! password, requests, replies and UDP relay headers), the proxy side of HTTP
//! ([`http`]: where a request goes, `Proxy-Authorization: Basic`, the request line and
//! headers sent on to an origin) and the credentials file ([`Credentials`]). Every parser
//! takes whatever bytes arrived so far and says whether they hold a whole message, how
//! long it is, or what is wrong with it, in terms of the reply the client must get.
//!
//! It must never do I/O: no sockets, no clocks, no async, no threads, no name lookups;
//! and no input, however malformed, makes it panic.

#![forbid(unsafe_code)]

mod credentials;
mod destination;
pub mod http;
pub mod socks5;

pub use credentials::{Credentials, CredentialsError};
pub use destination::{Destination, MAX_NAME_LEN, normalize_name};
