//! A conversation with coturn's telnet CLI as a pure state machine (sans
//! I/O): fed the bytes turnserver sent, it says what to send and hands back
//! each command's answer. The socket loop around it only moves bytes and
//! keeps time.
//!
//! The dialogue, as coturn 4.6.1 holds it: a banner ending in
//! `Enter password: \r\n`; the password line; then a prompt `> ` after the
//! login and after every command's output. A wrong password is answered with
//! `Enter password: ` again. One command at a time.

use super::command::Command;
use crate::secret::Secret;

/// Most bytes one answer may hold (a `ps` of 256 sessions is about 110 KB).
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

const PASSWORD_PROMPT: &[u8] = b"Enter password: ";
const PROMPT: &[u8] = b"> ";
/// Telnet's "interpret as command" byte; libtelnet may negotiate options.
const IAC: u8 = 0xff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    #[error("turnserver refused the CLI password")]
    WrongPassword,
    #[error("turnserver's CLI answered more than {0} bytes")]
    AnswerTooLong(usize),
    #[error("turnserver's CLI sent bytes while no command was running")]
    Unexpected,
    #[error("a command is already running")]
    Busy,
    #[error("the CLI is not logged in yet")]
    NotReady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the banner's password prompt.
    Greeting,
    /// Password sent; waiting for the first prompt.
    LoggingIn,
    Idle,
    /// A command was sent; collecting its answer up to the next prompt.
    Running,
    Failed,
}

/// What the conversation learned from the bytes it was fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Nothing complete yet: feed more bytes.
    NeedMore,
    /// Send these bytes (the password line).
    Send(Vec<u8>),
    /// Logged in; commands may be sent.
    Ready,
    /// The whole answer to the running command, prompt removed.
    Answer(String),
}

pub struct Conversation {
    state: State,
    password: Secret,
    buffer: Vec<u8>,
    max_answer_bytes: usize,
    /// Inside a telnet command sequence (IAC seen, bytes left to skip).
    telnet_skip: u8,
}

impl Conversation {
    pub fn new(password: Secret) -> Conversation {
        Conversation {
            state: State::Greeting,
            password,
            buffer: Vec::new(),
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
            telnet_skip: 0,
        }
    }

    pub fn with_max_answer_bytes(mut self, max_answer_bytes: usize) -> Conversation {
        self.max_answer_bytes = max_answer_bytes;
        self
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Idle
    }

    /// The line to send for `command`; its answer comes from [`receive`].
    ///
    /// [`receive`]: Conversation::receive
    pub fn send(&mut self, command: &Command) -> Result<Vec<u8>, ConversationError> {
        match self.state {
            State::Idle => {
                self.state = State::Running;
                self.buffer.clear();
                Ok(command.line().into_bytes())
            }
            State::Running => Err(ConversationError::Busy),
            _ => Err(ConversationError::NotReady),
        }
    }

    /// Feeds bytes turnserver sent. After any progress other than
    /// [`Progress::NeedMore`], call again with an empty slice: bytes already
    /// received may complete the next step. Once an error is returned the
    /// conversation is over: reconnect and start a new one.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Progress, ConversationError> {
        if self.state == State::Failed {
            return Err(ConversationError::Unexpected);
        }
        self.strip_telnet(bytes);
        let result = self.advance();
        if result.is_err() {
            self.state = State::Failed;
            self.buffer.clear();
        }
        result
    }

    /// Appends `bytes` without telnet option negotiation (IAC DO/DONT/WILL/
    /// WONT x, and IAC x for the other two-byte commands).
    fn strip_telnet(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.telnet_skip > 0 {
                self.telnet_skip -= 1;
                if self.telnet_skip == 1 && !(251..=254).contains(&byte) {
                    // A two-byte command: done after this byte. IAC IAC is a
                    // literal 0xff, which never belongs in CLI text.
                    self.telnet_skip = 0;
                }
                continue;
            }
            if byte == IAC {
                self.telnet_skip = 2;
                continue;
            }
            self.buffer.push(byte);
        }
    }

    fn advance(&mut self) -> Result<Progress, ConversationError> {
        if self.buffer.len() > self.max_answer_bytes {
            return Err(ConversationError::AnswerTooLong(self.max_answer_bytes));
        }
        match self.state {
            State::Greeting => {
                let Some(end) = find(&self.buffer, PASSWORD_PROMPT) else {
                    return Ok(Progress::NeedMore);
                };
                let rest = self.buffer.split_off(end + PASSWORD_PROMPT.len());
                self.buffer = rest;
                self.state = State::LoggingIn;
                let mut line = self.password.expose().as_bytes().to_vec();
                line.extend_from_slice(b"\r\n");
                Ok(Progress::Send(line))
            }
            State::LoggingIn => {
                // The banner's prompt line ends in "\r\n"; skip it.
                let text = trim_line_breaks(&self.buffer);
                if text.starts_with(PASSWORD_PROMPT) {
                    return Err(ConversationError::WrongPassword);
                }
                if text.ends_with(PROMPT) {
                    self.buffer.clear();
                    self.state = State::Idle;
                    return Ok(Progress::Ready);
                }
                Ok(Progress::NeedMore)
            }
            State::Idle => {
                if self.buffer.is_empty() {
                    Ok(Progress::NeedMore)
                } else {
                    Err(ConversationError::Unexpected)
                }
            }
            State::Running => {
                // The prompt closes an answer at its start (a `cs` prints
                // nothing) or right after a line break.
                let complete = self.buffer == PROMPT
                    || (self.buffer.ends_with(PROMPT)
                        && self.buffer[..self.buffer.len() - PROMPT.len()].ends_with(b"\n"));
                if !complete {
                    return Ok(Progress::NeedMore);
                }
                let answer_len = self.buffer.len() - PROMPT.len();
                let answer = String::from_utf8_lossy(&self.buffer[..answer_len]).into_owned();
                self.buffer.clear();
                self.state = State::Idle;
                Ok(Progress::Answer(answer))
            }
            State::Failed => Err(ConversationError::Unexpected),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn trim_line_breaks(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coturn_cli::command::SessionId;
    use crate::coturn_cli::listing::parse_sessions;
    use proptest::prelude::*;

    const BANNER: &[u8] =
        b"TURN Server\r\nCoturn-4.6.1 'Gorst'\r\n\r\nType '?' for help\r\nEnter password: \r\n";

    fn logged_in() -> Conversation {
        let mut conversation = Conversation::new(Secret::new("s3cret"));
        assert_eq!(
            conversation.receive(BANNER),
            Ok(Progress::Send(b"s3cret\r\n".to_vec()))
        );
        assert_eq!(conversation.receive(b"> "), Ok(Progress::Ready));
        conversation
    }

    /// Splits a captured transcript at its login: (banner, everything after
    /// the first prompt).
    fn after_login(transcript: &[u8]) -> &[u8] {
        let prompt = find(transcript, b"\r\n> ").unwrap() + 4;
        &transcript[prompt..]
    }

    #[test]
    fn a_real_ps_answer_fed_in_small_pieces() {
        let transcript = include_bytes!("testdata/ps_truncated.transcript");
        for chunk_size in [1, 7, 1500, usize::MAX] {
            let mut conversation = logged_in();
            assert_eq!(conversation.send(&Command::Sessions).unwrap(), b"ps\r\n");
            let mut answer = None;
            for chunk in after_login(transcript).chunks(chunk_size.min(transcript.len())) {
                match conversation.receive(chunk).unwrap() {
                    Progress::NeedMore => {}
                    Progress::Answer(text) => answer = Some(text),
                    other => panic!("unexpected {other:?}"),
                }
            }
            let listing = parse_sessions(&answer.expect("an answer")).unwrap();
            assert_eq!((listing.sessions.len(), listing.total), (256, 543));
            assert!(conversation.is_ready());
        }
    }

    #[test]
    fn a_cancel_answers_with_the_bare_prompt() {
        let mut conversation = logged_in();
        conversation.send(&Command::Cancel(SessionId(2))).unwrap();
        assert_eq!(
            conversation.receive(b"> "),
            Ok(Progress::Answer(String::new()))
        );
    }

    #[test]
    fn unknown_commands_are_answers_too() {
        let transcript = include_bytes!("testdata/unknown_commands.transcript");
        let mut conversation = logged_in();
        conversation.send(&Command::Configuration).unwrap();
        let rest = after_login(transcript);
        let first = find(rest, b"\r\n> ").unwrap() + 4;
        assert_eq!(
            conversation.receive(&rest[..first]),
            Ok(Progress::Answer("Unknown command\r\n\r\n".to_owned()))
        );
    }

    #[test]
    fn a_wrong_password_is_reported() {
        let mut conversation = Conversation::new(Secret::new("wrong"));
        assert!(matches!(
            conversation.receive(BANNER),
            Ok(Progress::Send(_))
        ));
        assert_eq!(
            conversation.receive(b"Enter password: \r\n"),
            Err(ConversationError::WrongPassword)
        );
        assert_eq!(
            conversation.send(&Command::Sessions),
            Err(ConversationError::NotReady)
        );
    }

    #[test]
    fn one_command_at_a_time_and_nothing_unasked() {
        let mut conversation = logged_in();
        assert_eq!(
            conversation.receive(b"\r\nsurprise"),
            Err(ConversationError::Unexpected)
        );
        let mut conversation = logged_in();
        conversation.send(&Command::Sessions).unwrap();
        assert_eq!(
            conversation.send(&Command::Sessions),
            Err(ConversationError::Busy)
        );
    }

    #[test]
    fn an_endless_answer_is_cut_off() {
        let mut conversation = logged_in().with_max_answer_bytes(1000);
        conversation.send(&Command::Sessions).unwrap();
        let mut result = Ok(Progress::NeedMore);
        for _ in 0..20 {
            result = conversation.receive(&[b'x'; 100]);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ConversationError::AnswerTooLong(1000)));
    }

    #[test]
    fn telnet_negotiation_is_skipped() {
        let mut conversation = Conversation::new(Secret::new("pw"));
        let mut banner = vec![IAC, 251, 1, IAC, 241];
        banner.extend_from_slice(BANNER);
        assert!(matches!(
            conversation.receive(&banner),
            Ok(Progress::Send(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20)) {
            let mut conversation = Conversation::new(Secret::new("pw")).with_max_answer_bytes(512);
            for chunk in chunks {
                if conversation.is_ready() {
                    let _ = conversation.send(&Command::Sessions);
                }
                let _ = conversation.receive(&chunk);
            }
        }
    }
}
