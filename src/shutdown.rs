//! Process signals turned into what the agent should do next.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// What a signal asks of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentSignal {
    /// SIGTERM or SIGINT: ordered shutdown.
    Terminate(&'static str),
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGUSR1: drain, then stop.
    Drain,
}

/// The signal handlers, installed before any task starts so that a signal
/// arriving during start-up is not lost (nor kills the agent by default).
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    user1: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            user1: signal(SignalKind::user_defined1())?,
        })
    }

    pub async fn next(&mut self) -> AgentSignal {
        tokio::select! {
            _ = self.terminate.recv() => AgentSignal::Terminate("SIGTERM"),
            _ = self.interrupt.recv() => AgentSignal::Terminate("SIGINT"),
            _ = self.hangup.recv() => AgentSignal::Reload,
            _ = self.user1.recv() => AgentSignal::Drain,
        }
    }
}
