//! The only commands the agent sends to coturn's CLI, built from checked
//! values.
//!
//! coturn matches commands by prefix and ends a command at a line break, and
//! `halt`, `stop` and `shutdown` stop the server. So nothing from a request
//! reaches the CLI as text: session ids are numbers, user names are refused
//! when they hold whitespace or control characters, and a [`Command`] always
//! renders to exactly one line that starts with its own verb.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The longest user name the agent passes to the CLI (coturn's own limit is
/// 512 bytes).
pub const MAX_USER_NAME_BYTES: usize = 512;

/// A turnserver session id as `ps` prints it (`id=001000000000000421`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("a session id is a decimal number of at most 20 digits")]
    BadSessionId,
    #[error("a user name must be 1 to {MAX_USER_NAME_BYTES} bytes")]
    UserNameLength,
    #[error("a user name must not hold whitespace or control characters")]
    UserNameCharacters,
    #[error("a dump path must be absolute, without whitespace or control characters")]
    BadDumpPath,
}

impl FromStr for SessionId {
    type Err = CommandError;

    /// Digits only: no sign, no spaces, no `0x`, at most 20 of them.
    fn from_str(text: &str) -> Result<SessionId, CommandError> {
        if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CommandError::BadSessionId);
        }
        text.parse()
            .map(SessionId)
            .map_err(|_| CommandError::BadSessionId)
    }
}

impl fmt::Display for SessionId {
    /// coturn's own width, so an id reads the same in `ps` and in our output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:018}", self.0)
    }
}

/// A TURN user name that is safe to put on a CLI line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserName(String);

impl UserName {
    pub fn new(name: &str) -> Result<UserName, CommandError> {
        if name.is_empty() || name.len() > MAX_USER_NAME_BYTES {
            return Err(CommandError::UserNameLength);
        }
        if name
            .chars()
            .any(|c| c.is_whitespace() || crate::log_safe::needs_escape(c))
        {
            return Err(CommandError::UserNameCharacters);
        }
        Ok(UserName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Settings coturn changes live through `cc` (they print `(**)` in `pc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveSetting {
    TotalQuota,
    UserQuota,
    MaxBps,
    BpsCapacity,
}

impl LiveSetting {
    pub fn cli_name(self) -> &'static str {
        match self {
            LiveSetting::TotalQuota => "total-quota",
            LiveSetting::UserQuota => "user-quota",
            LiveSetting::MaxBps => "max-bps",
            LiveSetting::BpsCapacity => "bps-capacity",
        }
    }
}

/// A path for `psd`, which turnserver opens for writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpPath(PathBuf);

impl DumpPath {
    pub fn new(path: &Path) -> Result<DumpPath, CommandError> {
        let text = path.to_str().ok_or(CommandError::BadDumpPath)?;
        if !path.is_absolute()
            || text
                .chars()
                .any(|c| c.is_whitespace() || crate::log_safe::needs_escape(c))
        {
            return Err(CommandError::BadDumpPath);
        }
        Ok(DumpPath(path.to_owned()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `ps`: every session, at most `cli-max-output-sessions` printed.
    Sessions,
    /// `ps NAME`: the sessions of one user (exact match).
    SessionsOf(UserName),
    /// `psd FILE`: every session, written to a file.
    DumpSessions(DumpPath),
    /// `pc`: the running configuration, allocations and quotas.
    Configuration,
    /// `cs ID`: cancel a session. coturn prints nothing either way.
    Cancel(SessionId),
    /// `cc NAME VALUE`.
    Change(LiveSetting, u64),
}

impl Command {
    /// The line to send, `\r\n` included.
    pub fn line(&self) -> String {
        match self {
            Command::Sessions => "ps\r\n".to_owned(),
            Command::SessionsOf(user) => format!("ps {}\r\n", user.as_str()),
            Command::DumpSessions(path) => format!("psd {}\r\n", path.0.display()),
            Command::Configuration => "pc\r\n".to_owned(),
            Command::Cancel(id) => format!("cs {id}\r\n"),
            Command::Change(setting, value) => format!("cc {} {value}\r\n", setting.cli_name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn session_ids_are_digits_only() {
        assert_eq!("000000000000000002".parse(), Ok(SessionId(2)));
        assert_eq!(
            "001000000000000421".parse(),
            Ok(SessionId(1_000_000_000_000_421))
        );
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "0x10",
            "1\r\nhalt",
            "halt",
            "1;halt",
            "99999999999999999999999",
        ] {
            assert_eq!(
                bad.parse::<SessionId>(),
                Err(CommandError::BadSessionId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn session_ids_print_as_coturn_does() {
        assert_eq!(
            SessionId(1_000_000_000_000_421).to_string(),
            "001000000000000421"
        );
        assert_eq!(
            Command::Cancel(SessionId(2)).line(),
            "cs 000000000000000002\r\n"
        );
    }

    #[test]
    fn user_names_that_could_smuggle_a_command_are_refused() {
        for bad in [
            "alice\r\nhalt",
            "alice halt",
            "alice\thalt",
            "\u{1b}[31m",
            "a\u{0}b",
            "a\u{85}b",
        ] {
            assert_eq!(
                UserName::new(bad),
                Err(CommandError::UserNameCharacters),
                "{bad:?}"
            );
        }
        assert_eq!(UserName::new(""), Err(CommandError::UserNameLength));
        assert_eq!(
            UserName::new(&"a".repeat(513)),
            Err(CommandError::UserNameLength)
        );
        let rest_user = UserName::new("1767225600:alice@example.org").unwrap();
        assert_eq!(
            Command::SessionsOf(rest_user).line(),
            "ps 1767225600:alice@example.org\r\n"
        );
    }

    #[test]
    fn quota_changes_use_coturns_names() {
        assert_eq!(
            Command::Change(LiveSetting::TotalQuota, 100).line(),
            "cc total-quota 100\r\n"
        );
        assert_eq!(
            Command::Change(LiveSetting::BpsCapacity, 0).line(),
            "cc bps-capacity 0\r\n"
        );
    }

    #[test]
    fn dump_paths_must_be_plain_absolute_paths() {
        assert!(DumpPath::new(Path::new("/run/turn-agent/ps.txt")).is_ok());
        for bad in ["relative", "/tmp/a b", "/tmp/a\nhalt"] {
            assert_eq!(
                DumpPath::new(Path::new(bad)),
                Err(CommandError::BadDumpPath),
                "{bad:?}"
            );
        }
    }

    /// Commands built from arbitrary request text; `None` where the checks
    /// refused the text.
    fn any_command() -> impl Strategy<Value = Option<Command>> {
        prop_oneof![
            Just(Some(Command::Sessions)),
            Just(Some(Command::Configuration)),
            ".*".prop_map(|name| UserName::new(&name).ok().map(Command::SessionsOf)),
            "[0-9]{1,22}|.*".prop_map(|id| id.parse().ok().map(Command::Cancel)),
            any::<u64>().prop_map(|value| Some(Command::Change(LiveSetting::UserQuota, value))),
        ]
    }

    proptest! {
        /// Whatever a request holds, the CLI sees one line with our verb.
        #[test]
        fn a_command_is_one_line_that_cannot_stop_the_server(command in any_command()) {
            let Some(command) = command else { return Ok(()) };
            let line = command.line();
            let body = line.strip_suffix("\r\n").unwrap();
            let has_break = body.contains(['\r', '\n', '\0']);
            prop_assert!(!has_break, "line break in {:?}", body);
            prop_assert!(!body.bytes().any(|b| b == 0xff), "telnet IAC");
            let verb = body.split(' ').next().unwrap();
            prop_assert!(["ps", "pc", "cs", "cc"].contains(&verb));
            for stop in ["halt", "stop", "shutdown", "quit", "exit", "bye"] {
                prop_assert!(!body.starts_with(stop));
            }
        }

        #[test]
        fn user_name_checks_never_panic(name in ".*") {
            let _ = UserName::new(&name);
        }
    }
}
