//! coturn's telnet CLI, the only live view into sessions and allocations
//! that coturn 4.6.1 offers (Debian's build has no Prometheus exporter).
//!
//! - [`client`]: the socket shell: one loopback connection, one request at a
//!   time, every request under a deadline.
//! - [`command`]: the commands the agent sends, built only from checked
//!   values, so nothing from a request can become `halt`.
//! - [`conversation`]: the login and request/answer dialogue as a pure state
//!   machine fed bytes (sans I/O).
//! - [`listing`]: parsers for `ps`/`psd` and `pc` answers, tested on output
//!   captured from a real turnserver 4.6.1 (`testdata/`).
//! - [`relay_rate`]: bytes per second relayed, from the growth of each
//!   session's counters between two complete listings.

pub mod client;
pub mod command;
pub mod conversation;
pub mod listing;
pub mod relay_rate;
