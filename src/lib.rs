//! turn-agent: a sidecar that runs beside coturn on every TURN host.
//!
//! # Layout
//! - [`access`]: allow list, roles and bearer tokens (pure).
//! - [`forwarded`]: the client behind trusted proxies, from every `X-Forwarded-For` line (pure).
//! - [`allocator`]: hands out TURN hosts from ZooKeeper (library; `allocator` feature).
//! - [`backoff`]: exponential backoff shared by every retry loop.
//! - [`config`]: the TOML file and `TURN_AGENT_*` overrides, validated into [`config::Config`].
//! - [`coturn_cli`]: coturn's telnet CLI: safe commands, the dialogue (sans I/O), `ps`/`pc` parsers.
//! - [`client_token`]: short-lived EdDSA client tokens for browsers: verify (claims against a given instant) and mint.
//! - [`control`]: the control channel: coturn's CLI polled for sessions and allocations, session ending.
//! - [`cors`]: which browser origins may read the API's answers (pure).
//! - [`coturn_options`]: turnserver's option table and `extra_args` read as getopt reads them (pure).
//! - [`credentials`]: turnadmin-backed rotation, crash-safe state, REST API secrets.
//! - [`znode`]: the host payload schema shared by registry and allocator.
//! - [`zookeeper`]: connect strings, paths and sessions, shared by registry and allocator.
//! - [`file_checks`]: reading operator-named files safely (regular, size cap, no FIFO wait) and secret-file modes.
//! - [`drain`]: waiting for relayed traffic to end before stopping.
//! - [`self_check`]: the periodic allocation check that gates readiness.
//! - [`stun_client`]: one STUN request and its answer over UDP, shared by the probe and the self-check.
//! - [`turn_check`]: a real TURN Allocate/release against our turnserver with a served credential.
//! - [`traffic`]: interface counters -> free Mbps (pure meter + sysinfo shell).
//! - [`traffic_sampler`]: used Mbps from `traffic.source` (interface, coturn or synthetic), for registry and drain.
//! - [`secret`]: a string type that redacts itself.
//! - [`log_safe`]: outside values (child output, headers, znodes) escaped and truncated for a log line.
//! - [`cli`]: subcommands that talk to a running agent (`rotate`).
//! - [`app`]: starts every task, waits for signals, shuts down in order.
//! - [`shutdown`]: process signals turned into agent actions.
//! - [`supervisor`]: keeps one turnserver alive; `lifecycle` and `backoff` are its pure rules.
//! - [`registry`]: the EPHEMERAL znode that lists this host while it can serve.
//! - [`publish_rules`]: the registry's decisions: when to write, whose node it is, the payload (pure).
//! - [`reload`]: which SIGHUP changes apply at once, after a turnserver restart, or never live.
//! - [`readiness`]: the one definition of "this host can serve".
//! - [`status`]: what the tasks publish (supervisor, credentials, self-check, registry) as plain data, and the not-ready rule (pure).
//! - [`reconfigure`]: applies a re-read file: live parts at once, the rest through a drain.
//! - [`metrics`]: Prometheus exposition read from the status channels at scrape time.
//! - [`api`]: the agent's axum router and handlers.
//! - [`http`]: the HTTP edge shared by the agent's API and the allocator service: server loop, guard, CORS, JSON errors.
//! - [`systemd`]: READY/STOPPING/STATUS/WATCHDOG notifications.
//! - [`logging`]: the tracing subscriber.
//! - [`time`]: wall-clock time (`unix_now`), read in one place.
//! - [`turn_user`]: what a TURN user name may hold (pure).
#![deny(rust_2018_idioms, unsafe_op_in_unsafe_fn)]
// The layout above links modules that the `allocator` feature alone leaves
// out; the full build checks every link.
#![cfg_attr(not(feature = "agent"), allow(rustdoc::broken_intra_doc_links))]

#[cfg(feature = "agent")]
pub mod access;
#[cfg(feature = "allocator")]
pub mod allocator;
#[cfg(feature = "agent")]
pub mod api;
#[cfg(feature = "agent")]
pub mod app;
pub mod backoff;
#[cfg(feature = "agent")]
pub mod cli;
#[cfg(feature = "client-tokens")]
pub mod client_token;
#[cfg(feature = "agent")]
pub mod config;
#[cfg(feature = "agent")]
pub mod control;
#[cfg(feature = "agent")]
pub mod cors;
#[cfg(feature = "agent")]
pub mod coturn_cli;
pub mod coturn_options;
#[cfg(feature = "agent")]
pub mod credentials;
#[cfg(feature = "agent")]
pub mod drain;
#[cfg(feature = "agent")]
pub mod file_checks;
pub mod forwarded;
#[cfg(feature = "agent")]
pub mod http;
pub mod log_safe;
#[cfg(feature = "agent")]
pub mod logging;
#[cfg(feature = "agent")]
pub mod metrics;
#[cfg(feature = "agent")]
pub mod publish_rules;
#[cfg(feature = "agent")]
pub mod readiness;
#[cfg(feature = "agent")]
pub mod reconfigure;
#[cfg(feature = "agent")]
pub mod registry;
#[cfg(feature = "agent")]
pub mod reload;
pub mod secret;
#[cfg(feature = "agent")]
pub mod self_check;
#[cfg(feature = "agent")]
pub mod shutdown;
#[cfg(feature = "agent")]
pub mod status;
#[cfg(feature = "agent")]
pub mod stun_client;
#[cfg(feature = "agent")]
pub mod supervisor;
#[cfg(feature = "agent")]
pub mod systemd;
pub mod time;
#[cfg(feature = "agent")]
pub mod traffic;
#[cfg(feature = "agent")]
pub mod traffic_sampler;
#[cfg(feature = "agent")]
pub mod turn_check;
pub mod turn_user;
pub mod znode;
#[cfg(feature = "allocator")]
pub mod zookeeper;
