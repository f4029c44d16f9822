//! The socket shell around [`Conversation`]: one TCP connection to
//! turnserver's CLI on loopback, one request at a time (`&mut self`), every
//! step under a deadline. Any failure drops the connection; the next request
//! logs in afresh. Backoff between failed attempts is the caller's.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::command::{Command, DumpPath, LiveSetting, SessionId};
use super::conversation::{Conversation, ConversationError, Progress};
use super::listing::{
    parse_change, parse_configuration, parse_sessions, ListingError, ServerCounters, SessionListing,
};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach turnserver's CLI: {0}")]
    Connect(std::io::Error),
    #[error("turnserver's CLI connection failed: {0}")]
    Io(std::io::Error),
    #[error("turnserver's CLI closed the connection")]
    Closed,
    #[error("turnserver's CLI did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Conversation(#[from] ConversationError),
    #[error("turnserver's CLI answer cannot be parsed: {0}")]
    Unparsable(#[from] ListingError),
    #[error("turnserver cannot write the session dump: {0}")]
    DumpRefused(String),
}

struct Connection {
    stream: TcpStream,
    conversation: Conversation,
}

pub struct CliClient {
    address: SocketAddr,
    password: Secret,
    timeout: Duration,
    connection: Option<Connection>,
}

impl CliClient {
    /// `timeout` bounds each request, login included.
    pub fn new(address: SocketAddr, password: Secret, timeout: Duration) -> CliClient {
        CliClient {
            address,
            password,
            timeout,
            connection: None,
        }
    }

    /// Sends `command` and returns coturn's answer, logging in first when
    /// there is no open connection.
    pub async fn request(&mut self, command: &Command) -> Result<String, CliError> {
        let result = tokio::time::timeout(self.timeout, self.request_unbounded(command))
            .await
            .unwrap_or(Err(CliError::Timeout(self.timeout)));
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// Every session, from `ps`. Past `cli-max-output-sessions` the listing
    /// is cut (`is_complete()` is false) but its total stays right.
    pub async fn sessions(&mut self) -> Result<SessionListing, CliError> {
        let answer = self.request(&Command::Sessions).await?;
        Ok(parse_sessions(&answer)?)
    }

    /// `psd FILE`: turnserver writes every session into `path` (a file the
    /// caller created; read it with [`parse_sessions`]). It answers
    /// `Cannot open file for writing` when it could not open the file;
    /// anything else is judged by what the file then holds.
    pub async fn dump_sessions(&mut self, path: &DumpPath) -> Result<(), CliError> {
        let answer = self.request(&Command::DumpSessions(path.clone())).await?;
        if answer.contains("Cannot open") {
            return Err(CliError::DumpRefused(
                crate::log_safe::LogSafe::new(answer.trim()).to_string(),
            ));
        }
        Ok(())
    }

    /// Allocations and quotas, from `pc`.
    pub async fn counters(&mut self) -> Result<ServerCounters, CliError> {
        let answer = self.request(&Command::Configuration).await?;
        Ok(parse_configuration(&answer)?)
    }

    /// Asks coturn to end a session. coturn answers nothing either way:
    /// confirm with a fresh listing.
    pub async fn cancel(&mut self, id: SessionId) -> Result<(), CliError> {
        self.request(&Command::Cancel(id)).await.map(drop)
    }

    /// `cc NAME VALUE`: changes a setting in the running turnserver and
    /// returns the value coturn reports it now has.
    pub async fn change(&mut self, setting: LiveSetting, value: u64) -> Result<u64, CliError> {
        let answer = self.request(&Command::Change(setting, value)).await?;
        parse_change(&answer, setting.cli_name()).ok_or(CliError::Unparsable(
            ListingError::MissingSetting(setting.cli_name()),
        ))
    }

    async fn request_unbounded(&mut self, command: &Command) -> Result<String, CliError> {
        if self.connection.is_none() {
            self.connection = Some(self.log_in().await?);
        }
        let connection = self.connection.as_mut().expect("connected above");
        let line = connection.conversation.send(command)?;
        connection
            .stream
            .write_all(&line)
            .await
            .map_err(CliError::Io)?;
        loop {
            match connection.next_progress().await? {
                Progress::Answer(answer) => return Ok(answer),
                Progress::NeedMore => {}
                // Only a login sends or becomes ready.
                Progress::Send(_) | Progress::Ready => {
                    return Err(ConversationError::Unexpected.into())
                }
            }
        }
    }

    async fn log_in(&self) -> Result<Connection, CliError> {
        let stream = TcpStream::connect(self.address)
            .await
            .map_err(CliError::Connect)?;
        stream.set_nodelay(true).map_err(CliError::Io)?;
        let mut connection = Connection {
            stream,
            conversation: Conversation::new(self.password.clone()),
        };
        loop {
            match connection.next_progress().await? {
                Progress::Send(bytes) => connection
                    .stream
                    .write_all(&bytes)
                    .await
                    .map_err(CliError::Io)?,
                Progress::Ready => return Ok(connection),
                Progress::NeedMore => {}
                Progress::Answer(_) => return Err(ConversationError::Unexpected.into()),
            }
        }
    }
}

impl Connection {
    /// The next step of the conversation: first from bytes already buffered,
    /// then from the socket.
    async fn next_progress(&mut self) -> Result<Progress, CliError> {
        let progress = self.conversation.receive(&[])?;
        if progress != Progress::NeedMore {
            return Ok(progress);
        }
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let read = self.stream.read(&mut buffer).await.map_err(CliError::Io)?;
            if read == 0 {
                return Err(CliError::Closed);
            }
            let progress = self.conversation.receive(&buffer[..read])?;
            if progress != Progress::NeedMore {
                return Ok(progress);
            }
        }
    }
}
