//! The control channel: coturn's telnet CLI polled by one task.
//!
//! - [`turnserver_file`]: the 0600 file that gives turnserver its CLI
//!   address and a password new at every start.
//! - [`channel`]: when the channel counts as up, down or fallen back
//!   (pure, driven by poll outcomes).
//! - [`dump`]: the private file `psd` writes every session into when
//!   `ps` printed only the first 256.
//!
//! The supervisor publishes a [`ControlTarget`] for every turnserver it
//! starts; [`Control::run`] polls that turnserver's `pc` and `ps` every
//! `control_poll_interval`, publishes a [`ControlStatus`], and serves the
//! API's session requests one at a time on the same connection. A `ps`
//! cut at 256 sessions is completed with `psd` (see [`dump`]), so every
//! reader sees all sessions. When the
//! CLI cannot be reached or answers something unparsable, the status says
//! so (`up: false`), the log says so once, and readers fall back to the
//! interface counters.

pub mod channel;
pub mod dump;
pub mod quotas;
pub mod turnserver_file;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::ExponentialBackoff;
use crate::config::ConfigWatch;
use crate::coturn_cli::client::{CliClient, CliError};
use crate::coturn_cli::command::SessionId;
use crate::coturn_cli::listing::{ServerCounters, SessionListing, Transport};
use crate::coturn_cli::relay_rate::{CounterSnapshot, RelayRate, SessionAges};
use channel::{ChannelHealth, Transition};
pub use turnserver_file::CliEndpoint;

/// Each CLI request (login included) must finish within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff after a failed poll.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The turnserver the control task talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlTarget {
    pub endpoint: CliEndpoint,
    /// The turnserver started with this endpoint.
    pub pid: u32,
}

/// Allocations by client transport.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ByTransport {
    pub udp: u64,
    pub tcp: u64,
    pub tls: u64,
    pub dtls: u64,
    pub other: u64,
}

impl ByTransport {
    fn count(listing: &SessionListing) -> ByTransport {
        let mut counts = ByTransport::default();
        for session in &listing.sessions {
            let slot = match session.client_transport {
                Transport::Udp => &mut counts.udp,
                Transport::Tcp | Transport::TcpOrTls => &mut counts.tcp,
                Transport::Tls => &mut counts.tls,
                Transport::Dtls => &mut counts.dtls,
                _ => &mut counts.other,
            };
            *slot += 1;
        }
        counts
    }
}

/// What the control channel last learned from coturn.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlStatus {
    /// `turnserver.control` is on.
    pub enabled: bool,
    /// The last poll was answered and understood.
    pub up: bool,
    /// Readers use the interface counters: the channel is off, or has
    /// failed long enough to say so.
    pub fallback: bool,
    /// Current allocations (`pc`'s `total-current-allocs`); `None` while
    /// the channel is down.
    pub allocations: Option<u64>,
    /// Sessions by client transport, from the last complete listing.
    pub by_transport: Option<ByTransport>,
    /// Relayed bytes per second as coturn counts them, between the last
    /// two complete listings.
    #[serde(skip)]
    pub rate: Option<RelayRate>,
    /// Sessions seen starting and ending since the agent started.
    pub sessions_started: u64,
    pub sessions_ended: u64,
    /// Times the channel went from up (or starting) to fallen back.
    pub fallbacks: u64,
    pub last_error: Option<String>,
    /// The turnserver pid the status is about.
    pub pid: Option<u32>,
    /// Polls answered and understood since the agent started.
    pub polls: u64,
    /// Wall time of the last such poll (`pc`, `ps`, and `psd` with its
    /// file when `ps` was cut), in seconds.
    pub last_poll_seconds: Option<f64>,
    #[serde(skip)]
    pub quotas: Option<ServerCounters>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("the control channel is off (turnserver.control)")]
    Off,
    #[error("turnserver's CLI is not available: {0}")]
    Unavailable(String),
    #[error("the control task has stopped")]
    Stopped,
}

/// What the API asks the control task.
pub enum ControlRequest {
    /// A fresh `ps`.
    Sessions(oneshot::Sender<Result<Arc<SessionListing>, ControlError>>),
    /// `cs` for each id, then a fresh `ps`: the ids still listed did not end.
    Cancel(
        Vec<SessionId>,
        oneshot::Sender<Result<Arc<SessionListing>, ControlError>>,
    ),
}

/// The API's handle on the control task.
#[derive(Clone)]
pub struct ControlHandle {
    pub status: watch::Receiver<ControlStatus>,
    requests: mpsc::Sender<ControlRequest>,
}

impl ControlHandle {
    /// A handle with no task behind it: the channel is off.
    pub fn disabled() -> ControlHandle {
        let (_, status) = watch::channel(ControlStatus::default());
        let (requests, _) = mpsc::channel(1);
        ControlHandle { status, requests }
    }

    pub async fn sessions(&self) -> Result<Arc<SessionListing>, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.ask(ControlRequest::Sessions(reply), answer).await
    }

    /// Ends `ids` and returns the listing taken after.
    pub async fn cancel(&self, ids: Vec<SessionId>) -> Result<Arc<SessionListing>, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.ask(ControlRequest::Cancel(ids, reply), answer).await
    }

    async fn ask(
        &self,
        request: ControlRequest,
        answer: oneshot::Receiver<Result<Arc<SessionListing>, ControlError>>,
    ) -> Result<Arc<SessionListing>, ControlError> {
        if !self.status.borrow().enabled {
            return Err(ControlError::Off);
        }
        self.requests
            .send(request)
            .await
            .map_err(|_| ControlError::Stopped)?;
        answer.await.map_err(|_| ControlError::Stopped)?
    }
}

pub struct Control {
    config_watch: ConfigWatch,
    targets: watch::Receiver<Option<ControlTarget>>,
    status: watch::Sender<ControlStatus>,
    requests: mpsc::Receiver<ControlRequest>,
    client: Option<CliClient>,
    health: ChannelHealth,
    backoff: ExponentialBackoff,
    previous: Option<(CounterSnapshot, Arc<SessionListing>)>,
    /// The quotas the agent last set in the running turnserver; `None`
    /// until a new turnserver was compared with the configuration.
    applied_quotas: Option<crate::config::control::Quotas>,
    /// The last `psd` failed (logged once until one works again).
    dump_failing: bool,
}

impl Control {
    pub fn new(
        config_watch: ConfigWatch,
        targets: watch::Receiver<Option<ControlTarget>>,
    ) -> (Control, ControlHandle) {
        let enabled = config_watch.borrow().turnserver.control.enabled;
        let (status, status_receiver) = watch::channel(ControlStatus {
            enabled,
            fallback: true,
            ..ControlStatus::default()
        });
        let (request_sender, requests) = mpsc::channel(16);
        let control = Control {
            config_watch,
            targets,
            status,
            requests,
            client: None,
            health: ChannelHealth::default(),
            backoff: ExponentialBackoff::new(BACKOFF_MIN, BACKOFF_MAX)
                .expect("constant bounds are ordered"),
            previous: None,
            applied_quotas: None,
            dump_failing: false,
        };
        let handle = ControlHandle {
            status: status_receiver,
            requests: request_sender,
        };
        (control, handle)
    }

    #[tracing::instrument(name = "control", skip_all)]
    pub async fn run(mut self, shutdown: CancellationToken) {
        let config = self.config_watch.borrow().turnserver.control.clone();
        if let Some(source) = config.off_by_no_cli {
            tracing::warn!("{}", source.warning());
        }
        let mut next_poll = Instant::now();
        self.take_target();
        loop {
            let interval = self.config_watch.borrow().turnserver.control.poll_interval;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                Ok(()) = self.targets.changed() => {
                    self.take_target();
                    next_poll = Instant::now();
                }
                // A SIGHUP may have changed the quotas: apply them now.
                _ = crate::config::next_config(&mut self.config_watch) => {
                    next_poll = Instant::now();
                }
                Some(request) = self.requests.recv() => self.serve(request).await,
                _ = tokio::time::sleep_until(next_poll) => {
                    next_poll = match self.poll().await {
                        true => Instant::now() + interval,
                        false => Instant::now() + self.backoff.next_delay().min(interval.max(BACKOFF_MIN)),
                    };
                }
            }
        }
    }

    /// Follows the supervisor to a new turnserver (or none).
    fn take_target(&mut self) {
        let target = self.targets.borrow_and_update().clone();
        self.previous = None;
        self.applied_quotas = None;
        self.backoff.reset();
        self.health.new_target(std::time::Instant::now());
        self.client = target.as_ref().map(|t| {
            CliClient::new(
                t.endpoint.address,
                t.endpoint.password.clone(),
                REQUEST_TIMEOUT,
            )
        });
        let enabled = self.config_watch.borrow().turnserver.control.enabled;
        self.status.send_modify(|status| {
            status.enabled = enabled;
            status.pid = target.as_ref().map(|t| t.pid);
        });
    }

    /// One `pc` and one `ps`; true when both were understood.
    async fn poll(&mut self) -> bool {
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        let started = std::time::Instant::now();
        let result = async {
            let counters = client.counters().await?;
            let listing = client.sessions().await?;
            Ok::<_, CliError>((counters, listing))
        }
        .await;
        let result = match result {
            Ok((counters, listing)) => Ok((counters, self.complete(listing).await)),
            Err(error) => Err(error),
        };
        match result {
            Ok((counters, listing)) => {
                self.backoff.reset();
                if self.health.succeeded() == Transition::Recovered {
                    tracing::info!(
                        allocations = counters.total_current_allocations,
                        "turnserver's CLI answers again: sessions and allocations come from coturn"
                    );
                }
                self.record(counters, Arc::new(listing), started.elapsed());
                self.apply_quotas(&counters).await
            }
            Err(error) => {
                if self.health.failed(std::time::Instant::now()) == Transition::FellBack {
                    tracing::warn!(
                        %error,
                        "turnserver's CLI is not usable: falling back to interface counters until it answers"
                    );
                }
                let fallback = self.health.is_fallback();
                self.status.send_modify(|status| {
                    status.up = false;
                    status.allocations = None;
                    status.by_transport = None;
                    status.rate = None;
                    if fallback && !status.fallback {
                        status.fallbacks += 1;
                    }
                    status.fallback = fallback;
                    status.last_error = Some(error.to_string());
                });
                self.previous = None;
                false
            }
        }
    }

    /// Sends `cc` for each quota the configuration wants changed, and
    /// logs each change; true when all were taken.
    async fn apply_quotas(&mut self, counters: &ServerCounters) -> bool {
        let desired = self.config_watch.borrow().turnserver.control.quotas;
        let changes = quotas::changes(&desired, self.applied_quotas.as_ref(), counters);
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        let mut all_taken = true;
        for change in changes {
            match client.change(change.setting, change.to).await {
                Ok(now) if now == change.to => tracing::info!(
                    key = change.key,
                    from = change.from,
                    to = change.to,
                    "changed in the running turnserver (cc), no restart"
                ),
                Ok(now) => {
                    all_taken = false;
                    tracing::warn!(
                        key = change.key,
                        wanted = change.to,
                        now,
                        "turnserver did not take the new value"
                    );
                }
                Err(error) => {
                    all_taken = false;
                    tracing::warn!(key = change.key, %error, "cannot change the setting in the running turnserver; retried at the next poll");
                }
            }
        }
        if all_taken {
            self.applied_quotas = Some(desired);
        }
        true
    }

    /// Publishes a poll that took `took` and was understood.
    fn record(&mut self, counters: ServerCounters, listing: Arc<SessionListing>, took: Duration) {
        let now = std::time::Instant::now();
        let snapshot = CounterSnapshot::new(&listing, now);
        let (rate, started, ended) = match (&self.previous, &snapshot) {
            (Some((before, _)), Some(after)) => {
                let ages = SessionAges::from_listing(&listing);
                match before.rate_until(after, &ages) {
                    Some(rate) => (
                        Some(rate),
                        rate.sessions_started as u64,
                        rate.sessions_ended as u64,
                    ),
                    None => (None, 0, 0),
                }
            }
            // The first complete listing: every session in it started.
            (None, Some(_)) => (None, listing.total, 0),
            _ => (None, 0, 0),
        };
        let by_transport = listing.is_complete().then(|| ByTransport::count(&listing));
        self.status.send_modify(|status| {
            status.up = true;
            status.fallback = false;
            status.allocations = Some(counters.total_current_allocations);
            status.by_transport = by_transport;
            if rate.is_some() || snapshot.is_none() {
                status.rate = rate;
            }
            status.sessions_started += started;
            status.sessions_ended += ended;
            status.last_error = None;
            status.quotas = Some(counters);
            status.polls += 1;
            status.last_poll_seconds = Some(took.as_secs_f64());
        });
        self.previous = snapshot.map(|snapshot| (snapshot, listing));
    }

    async fn serve(&mut self, request: ControlRequest) {
        let Some(client) = self.client.as_mut() else {
            let error = ControlError::Unavailable("no turnserver is running".into());
            match request {
                ControlRequest::Sessions(reply) | ControlRequest::Cancel(_, reply) => {
                    let _ = reply.send(Err(error));
                }
            }
            return;
        };
        let (ids, reply) = match request {
            ControlRequest::Sessions(reply) => (Vec::new(), reply),
            ControlRequest::Cancel(ids, reply) => (ids, reply),
        };
        let result = async {
            for id in ids {
                client.cancel(id).await?;
            }
            client.sessions().await
        }
        .await;
        let result = match result {
            Ok(listing) => Ok(Arc::new(self.complete(listing).await)),
            Err(error) => Err(ControlError::Unavailable(error.to_string())),
        };
        let _ = reply.send(result);
    }

    /// The directory of the agent's turnserver file, where dumps go.
    fn dump_parent(&self) -> PathBuf {
        let file = turnserver_file::path_for(&self.config_watch.borrow().turnserver.pidfile);
        file.parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()
    }

    /// `listing` itself when `ps` printed every session, else the `psd`
    /// dump. When the dump fails, the cut listing (its total still right)
    /// is used and the failure logged once.
    async fn complete(&mut self, listing: SessionListing) -> SessionListing {
        if listing.is_complete() {
            return listing;
        }
        let parent = self.dump_parent();
        let Some(client) = self.client.as_mut() else {
            return listing;
        };
        match dump_sessions(client, &parent).await {
            Ok(all) => {
                if std::mem::take(&mut self.dump_failing) {
                    tracing::info!(
                        sessions = all.total,
                        "the psd dump works again: all sessions are listed"
                    );
                }
                all
            }
            Err(error) => {
                if !std::mem::replace(&mut self.dump_failing, true) {
                    tracing::warn!(
                        %error,
                        listed = listing.sessions.len(),
                        total = listing.total,
                        "cannot complete the cut ps listing with psd: only the listed sessions are seen"
                    );
                }
                listing
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CompleteError {
    #[error(transparent)]
    Dump(#[from] dump::DumpError),
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error("the session dump cannot be parsed: {0}")]
    Parse(#[from] crate::coturn_cli::listing::ListingError),
}

/// Every session through `psd` into a private file under `parent`.
async fn dump_sessions(
    client: &mut CliClient,
    parent: &Path,
) -> Result<SessionListing, CompleteError> {
    let file = dump::DumpFile::create(parent)?;
    client.dump_sessions(file.path()).await?;
    let text = file.read()?;
    Ok(crate::coturn_cli::listing::parse_sessions(&text)?)
}
