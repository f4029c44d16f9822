//! turnserver 4.6.1's command-line options, and `extra_args` read the way
//! turnserver reads them (pure).
//!
//! turnserver parses its argv with glibc `getopt_long`: combined short flags
//! (`-vo`), values attached to a short flag (`-p3479`, `-rrealm`), `--opt=value`
//! and unambiguous prefixes of long names (`--daemo`, `--real=x`) all count as
//! the full spelling. Comparing whole tokens against a list of flags therefore
//! lets most spellings of an owned flag through; [`parse_extra_args`] reads
//! them with getopt's rules against [`OPTIONS`], the one table of coturn's
//! options, and classifies every option it finds. `supervisor::command`
//! builds the agent's own flags from the same table.
//!
//! The table is coturn 4.6.1's `long_options` and `OPTIONS` string
//! (src/apps/relay/mainrelay.c) with every build-dependent option included, so
//! that a prefix unique here is unique in any build.

use std::fmt;

/// Whether the long spelling of an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// `--opt=value` or `--opt value`.
    Required,
    /// Only `--opt=value`; `--opt value` leaves `value` to the next round.
    Optional,
}

/// What the agent makes of an option in `extra_args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The agent sets it (or deliberately leaves it out); a second spelling
    /// in `extra_args` would override or contradict the agent.
    Owned,
    /// Breaks the agent's promises; the reason says how.
    Unsafe(&'static str),
    /// Tuning the agent does not care about.
    PassedThrough,
}

/// One turnserver option: its long names (aliases share one entry), its
/// short letter, and how the agent treats it.
#[derive(Debug, PartialEq, Eq)]
pub struct CoturnOption {
    pub long: &'static [&'static str],
    pub short: Option<char>,
    pub value: Value,
    /// coturn reads the value with `get_bool_value`, which exits on anything
    /// but on/off, yes/no, true/false or a digit.
    pub boolean: bool,
    pub class: Class,
}

impl CoturnOption {
    /// `-o (--daemon)`, `--pidfile` or `-c`: how an error names it.
    pub fn display_name(&self) -> String {
        match (self.short, self.long.first()) {
            (Some(short), Some(long)) => format!("-{short} (--{long})"),
            (Some(short), None) => format!("-{short}"),
            (None, Some(long)) => format!("--{long}"),
            (None, None) => String::from("?"),
        }
    }

    /// `--name=value` with this option's first long name.
    pub fn with_value(&self, value: impl fmt::Display) -> String {
        format!("--{}={value}", self.long[0])
    }

    /// `--name` with this option's first long name.
    pub fn flag(&self) -> String {
        format!("--{}", self.long[0])
    }
}

/// coturn's short options: a letter followed by `:` takes a value (attached
/// or in the next argument); the others take none.
pub const SHORT_OPTIONS: &str = "c:d:p:L:E:X:i:m:l:r:u:b:B:e:M:J:N:O:q:Q:s:C:K:A:vVofhznaS";

/// Arguments turnserver looks for by whole-token comparison anywhere in its
/// argv before getopt runs, even where getopt would read them as a value.
pub const RESERVED_TOKENS: &[&str] = &["-c", "-n", "-h", "--version"];

const SECRET_ON_ARGV: &str =
    "puts a secret on turnserver's command line, readable by every local user in /proc; set it in turnserver.config_file";
const OTHER_USER_DB: &str =
    "moves coturn's users away from the database the agent rotates credentials in (turnserver.userdb), and its connection string would put a password on turnserver's command line";
const NOT_IN_DEBIAN: &str =
    "is not built into Debian's turnserver 4.6.1, which exits at start on an option it does not know";

macro_rules! opt {
    ($short:expr, [$($long:literal),*], $value:ident, $boolean:expr, $class:expr) => {
        CoturnOption {
            long: &[$($long),*],
            short: $short,
            value: Value::$value,
            boolean: $boolean,
            class: $class,
        }
    };
}

use Class::{Owned, PassedThrough as Pass, Unsafe};

/// Every option of turnserver 4.6.1.
pub static OPTIONS: &[CoturnOption] = &[
    // Short-only options, read before getopt by whole-token comparison.
    opt!(Some('c'), [], Required, false, Owned),
    opt!(Some('n'), [], Optional, false, Owned),
    opt!(Some('h'), [], Optional, false, Unsafe("prints the help and exits")),
    opt!(Some('d'), ["listening-device"], Required, false, Pass),
    opt!(Some('p'), ["listening-port"], Required, false, Owned),
    opt!(None, ["tls-listening-port"], Required, false, Pass),
    opt!(None, ["alt-listening-port"], Required, false, Pass),
    opt!(None, ["alt-tls-listening-port"], Required, false, Pass),
    opt!(None, ["tcp-proxy-port"], Required, false, Pass),
    opt!(Some('L'), ["listening-ip"], Required, false, Owned),
    opt!(Some('i'), ["relay-device"], Required, false, Pass),
    opt!(Some('E'), ["relay-ip"], Required, false, Owned),
    opt!(Some('X'), ["external-ip"], Required, false, Pass),
    opt!(Some('m'), ["relay-threads"], Required, false, Pass),
    opt!(None, ["min-port"], Required, false, Owned),
    opt!(None, ["max-port"], Required, false, Owned),
    opt!(Some('a'), ["lt-cred-mech"], Optional, true, Owned),
    opt!(
        Some('z'),
        ["no-auth"],
        Optional,
        true,
        Unsafe("turns authentication off, and coturn refuses to start with it beside the credentials the agent manages")
    ),
    opt!(Some('u'), ["user"], Required, false, Unsafe(SECRET_ON_ARGV)),
    opt!(Some('b'), ["userdb", "db"], Required, false, Owned),
    opt!(Some('e'), ["psql-userdb", "sql-userdb"], Required, false, Unsafe(OTHER_USER_DB)),
    opt!(Some('M'), ["mysql-userdb"], Required, false, Unsafe(OTHER_USER_DB)),
    opt!(Some('J'), ["mongo-userdb"], Required, false, Unsafe(NOT_IN_DEBIAN)),
    opt!(Some('N'), ["redis-userdb"], Required, false, Unsafe(OTHER_USER_DB)),
    opt!(Some('O'), ["redis-statsdb"], Required, false, Unsafe(SECRET_ON_ARGV)),
    opt!(None, ["prometheus"], Optional, true, Unsafe(NOT_IN_DEBIAN)),
    opt!(None, ["prometheus-port"], Optional, false, Unsafe(NOT_IN_DEBIAN)),
    opt!(None, ["prometheus-username-labels"], Optional, true, Unsafe(NOT_IN_DEBIAN)),
    opt!(None, ["use-auth-secret"], Optional, true, Owned),
    opt!(None, ["static-auth-secret"], Required, false, Unsafe(SECRET_ON_ARGV)),
    opt!(None, ["no-auth-pings"], Optional, true, Pass),
    opt!(None, ["no-dynamic-ip-list"], Optional, true, Pass),
    opt!(None, ["no-dynamic-realms"], Optional, true, Pass),
    opt!(None, ["secret-ts-exp-time"], Optional, false, Pass),
    opt!(Some('r'), ["realm"], Required, false, Owned),
    opt!(None, ["server-name"], Required, false, Pass),
    opt!(None, ["oauth"], Optional, true, Pass),
    opt!(Some('q'), ["user-quota"], Required, false, Owned),
    opt!(Some('Q'), ["total-quota"], Required, false, Owned),
    opt!(Some('s'), ["max-bps"], Required, false, Owned),
    opt!(Some('B'), ["bps-capacity"], Required, false, Owned),
    opt!(Some('v'), ["verbose"], Optional, false, Pass),
    opt!(Some('V'), ["Verbose"], Optional, false, Pass),
    opt!(Some('o'), ["daemon"], Optional, true, Owned),
    opt!(None, ["no-software-attribute", "prod"], Optional, true, Pass),
    opt!(Some('f'), ["fingerprint"], Optional, true, Pass),
    opt!(None, ["check-origin-consistency"], Optional, true, Pass),
    opt!(
        None,
        ["no-udp"],
        Optional,
        true,
        Unsafe("stops UDP listening, and the agent's health probe is a STUN Binding request over UDP")
    ),
    opt!(None, ["no-tcp"], Optional, true, Pass),
    opt!(None, ["no-tls"], Optional, true, Pass),
    opt!(None, ["no-dtls"], Optional, true, Pass),
    opt!(None, ["no-udp-relay"], Optional, true, Pass),
    opt!(None, ["no-tcp-relay"], Optional, true, Pass),
    opt!(None, ["stale-nonce"], Optional, false, Pass),
    opt!(None, ["max-allocate-lifetime"], Optional, false, Pass),
    opt!(None, ["channel-lifetime"], Optional, false, Pass),
    opt!(None, ["permission-lifetime"], Optional, false, Pass),
    opt!(
        Some('S'),
        ["stun-only"],
        Optional,
        true,
        Unsafe("turns TURN off, so no client could allocate a relay")
    ),
    opt!(
        None,
        ["no-stun"],
        Optional,
        true,
        Unsafe("turns STUN off, and the agent's health probe is a STUN Binding request")
    ),
    opt!(None, ["cert"], Required, false, Pass),
    opt!(None, ["pkey"], Required, false, Pass),
    opt!(None, ["pkey-pwd"], Required, false, Unsafe(SECRET_ON_ARGV)),
    opt!(Some('l'), ["log-file"], Required, false, Owned),
    opt!(None, ["no-stdout-log"], Optional, true, Owned),
    opt!(None, ["syslog"], Optional, true, Owned),
    opt!(None, ["simple-log"], Optional, true, Owned),
    opt!(None, ["new-log-timestamp"], Optional, false, Pass),
    opt!(None, ["new-log-timestamp-format"], Required, false, Pass),
    opt!(None, ["aux-server"], Required, false, Pass),
    opt!(None, ["udp-self-balance"], Optional, true, Pass),
    opt!(None, ["alternate-server"], Required, false, Pass),
    opt!(None, ["tls-alternate-server"], Required, false, Pass),
    opt!(
        Some('C'),
        ["rest-api-separator"],
        Required,
        false,
        Unsafe("changes the REST API username format the agent mints (`<expiry>:<user>`)")
    ),
    opt!(None, ["max-allocate-timeout"], Required, false, Pass),
    opt!(None, ["no-multicast-peers"], Optional, true, Pass),
    opt!(None, ["allow-loopback-peers"], Optional, true, Pass),
    opt!(None, ["allowed-peer-ip"], Required, false, Pass),
    opt!(None, ["denied-peer-ip"], Required, false, Pass),
    opt!(None, ["cipher-list"], Required, false, Pass),
    opt!(None, ["pidfile"], Required, false, Owned),
    opt!(None, ["secure-stun"], Optional, true, Pass),
    opt!(None, ["CA-file"], Required, false, Pass),
    opt!(None, ["dh-file"], Required, false, Pass),
    opt!(None, ["proc-user"], Required, false, Pass),
    opt!(None, ["proc-group"], Required, false, Pass),
    opt!(None, ["mobility"], Optional, true, Pass),
    opt!(None, ["no-cli"], Optional, true, Pass),
    opt!(None, ["cli-ip"], Required, false, Owned),
    opt!(None, ["cli-port"], Required, false, Owned),
    opt!(None, ["cli-password"], Required, false, Unsafe(SECRET_ON_ARGV)),
    opt!(None, ["web-admin"], Optional, true, Pass),
    opt!(None, ["web-admin-ip"], Required, false, Pass),
    opt!(None, ["web-admin-port"], Required, false, Pass),
    opt!(None, ["web-admin-listen-on-workers"], Optional, true, Pass),
    opt!(None, ["server-relay"], Optional, true, Pass),
    opt!(None, ["cli-max-output-sessions"], Required, false, Pass),
    opt!(None, ["ec-curve-name"], Required, false, Pass),
    opt!(None, ["dh566"], Optional, true, Pass),
    opt!(None, ["dh1066"], Optional, true, Pass),
    opt!(None, ["ne"], Required, false, Pass),
    opt!(None, ["no-sslv2"], Optional, true, Pass),
    opt!(None, ["no-sslv3"], Optional, true, Pass),
    opt!(None, ["no-tlsv1"], Optional, true, Pass),
    opt!(None, ["no-tlsv1_1"], Optional, true, Pass),
    opt!(None, ["no-tlsv1_2"], Optional, true, Pass),
    opt!(None, ["secret-key-file"], Required, false, Pass),
    opt!(Some('K'), ["keep-address-family"], Optional, true, Pass),
    opt!(Some('A'), ["allocation-default-address-family"], Required, false, Pass),
    opt!(None, ["acme-redirect"], Required, false, Pass),
    opt!(None, ["log-binding"], Optional, true, Pass),
    opt!(None, ["no-rfc5780"], Optional, true, Pass),
    opt!(None, ["no-stun-backward-compatibility"], Optional, true, Pass),
    opt!(None, ["response-origin-only-with-rfc5780"], Optional, true, Pass),
    opt!(None, ["version"], Optional, false, Unsafe("prints the version and exits")),
    opt!(None, ["syslog-facility"], Required, false, Pass),
];

/// The option with this long name (exact), for the agent's own flags.
///
/// # Panics
/// When `name` is not in [`OPTIONS`]: a programming error caught by tests.
pub fn by_long_name(name: &str) -> &'static CoturnOption {
    OPTIONS
        .iter()
        .find(|option| option.long.contains(&name))
        .unwrap_or_else(|| panic!("--{name} is not a turnserver 4.6.1 option"))
}

fn by_short(letter: char) -> Option<&'static CoturnOption> {
    OPTIONS.iter().find(|option| option.short == Some(letter))
}

/// Whether a short letter takes a value, per [`SHORT_OPTIONS`]; `None` for
/// a letter coturn does not know.
fn short_takes_value(letter: char) -> Option<bool> {
    if letter == ':' {
        return None;
    }
    let index = SHORT_OPTIONS.find(letter)?;
    Some(SHORT_OPTIONS[index + letter.len_utf8()..].starts_with(':'))
}

/// How glibc resolves a long name: an exact match wins; otherwise every
/// option the name is a prefix of, which is ambiguous when they are not all
/// the same option.
enum LongMatch {
    Found(&'static CoturnOption),
    Ambiguous(Vec<&'static str>),
    Unknown,
}

fn resolve_long(name: &str) -> LongMatch {
    if name.is_empty() {
        return LongMatch::Unknown;
    }
    if let Some(option) = OPTIONS.iter().find(|option| option.long.contains(&name)) {
        return LongMatch::Found(option);
    }
    let mut found: Option<&'static CoturnOption> = None;
    let mut names = Vec::new();
    let mut ambiguous = false;
    for option in OPTIONS {
        for long in option.long {
            if long.starts_with(name) {
                names.push(*long);
                match found {
                    None => found = Some(option),
                    Some(first) if !std::ptr::eq(first, option) => ambiguous = true,
                    Some(_) => {}
                }
            }
        }
    }
    match found {
        None => LongMatch::Unknown,
        Some(_) if ambiguous => LongMatch::Ambiguous(names),
        Some(option) => LongMatch::Found(option),
    }
}

/// One option turnserver would see in `extra_args`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    /// The argument it was spelled in (`-vo`, `--real=x`).
    pub argument: String,
    /// `None` for a flag listed in `pass_through_flags`.
    pub option: Option<&'static CoturnOption>,
    pub value: Option<String>,
}

/// Why an `extra_args` argument is refused. Each names the argument as it
/// was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtraArgError {
    #[error("`{argument}` sets {option}, which the agent owns")]
    Owned { argument: String, option: String },
    #[error("`{argument}` sets {option}, which {reason}")]
    Unsafe {
        argument: String,
        option: String,
        reason: &'static str,
    },
    #[error("`{argument}`: `{name}` is not a turnserver 4.6.1 option (list it in turnserver.pass_through_flags to pass it on purpose)")]
    Unknown { argument: String, name: String },
    #[error("`{argument}`: `--{prefix}` is ambiguous ({candidates})")]
    Ambiguous {
        argument: String,
        prefix: String,
        candidates: String,
    },
    #[error("`{argument}`: {option} needs a value")]
    MissingValue { argument: String, option: String },
    #[error("`{argument}`: `{value}` is not a boolean for {option} (coturn exits on it; use on/off, yes/no, true/false, 1/0)")]
    NotBoolean {
        argument: String,
        option: String,
        value: String,
    },
    #[error("`{argument}` is not an option; turnserver ignores it")]
    NotAnOption { argument: String },
    #[error("`{argument}`: turnserver acts on `{argument}` wherever it appears in its command line, even as a value")]
    Reserved { argument: String },
    #[error("`{argument}`: {message}")]
    Combination {
        argument: String,
        message: &'static str,
    },
}

/// coturn's `get_bool_value`: `None` when coturn would exit on `value`.
pub fn coturn_bool(value: Option<&str>) -> Option<bool> {
    let Some(value) = value.filter(|value| !value.is_empty()) else {
        return Some(true);
    };
    let first = value.as_bytes()[0];
    match first {
        b'0' | b'n' | b'N' | b'f' | b'F' => Some(false),
        b'y' | b'Y' | b't' | b'T' | b'1'..=b'9' => Some(true),
        _ => match value {
            "off" | "OFF" | "Off" => Some(false),
            "on" | "ON" | "On" => Some(true),
            _ => None,
        },
    }
}

/// Reads `args` as getopt_long reads them and returns every option found,
/// or every reason to refuse them. `pass_through` holds long flags
/// (`--name`) the operator passes on purpose although this table does not
/// know them; they may carry a value only as `--name=value`.
pub fn parse_extra_args(
    args: &[String],
    pass_through: &[String],
) -> Result<Vec<Occurrence>, Vec<ExtraArgError>> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut index = 0;
    // The value of a flag in the next argument: turnserver still compares
    // it with its reserved tokens.
    let take_next = |index: &mut usize, errors: &mut Vec<ExtraArgError>| -> Option<String> {
        *index += 1;
        let value = args.get(*index)?.clone();
        if RESERVED_TOKENS.contains(&value.as_str()) {
            errors.push(ExtraArgError::Reserved {
                argument: value.clone(),
            });
        }
        Some(value)
    };
    while index < args.len() {
        let argument = &args[index];
        if argument == "--" {
            for rest in &args[index + 1..] {
                errors.push(ExtraArgError::NotAnOption {
                    argument: rest.clone(),
                });
            }
            break;
        }
        if let Some(long) = argument.strip_prefix("--") {
            let (name, attached) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (long, None),
            };
            match resolve_long(name) {
                LongMatch::Found(option) => {
                    let value = match (option.value, attached) {
                        (_, Some(value)) => Some(value),
                        (Value::Optional, None) => None,
                        (Value::Required, None) => match take_next(&mut index, &mut errors) {
                            Some(value) => Some(value),
                            None => {
                                errors.push(ExtraArgError::MissingValue {
                                    argument: argument.clone(),
                                    option: option.display_name(),
                                });
                                None
                            }
                        },
                    };
                    found.push(Occurrence {
                        argument: argument.clone(),
                        option: Some(option),
                        value,
                    });
                }
                LongMatch::Ambiguous(candidates) => errors.push(ExtraArgError::Ambiguous {
                    argument: argument.clone(),
                    prefix: name.to_string(),
                    candidates: candidates
                        .iter()
                        .map(|name| format!("--{name}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
                LongMatch::Unknown => {
                    let listed = pass_through
                        .iter()
                        .any(|flag| flag.strip_prefix("--") == Some(name));
                    if listed {
                        found.push(Occurrence {
                            argument: argument.clone(),
                            option: None,
                            value: attached,
                        });
                    } else {
                        errors.push(ExtraArgError::Unknown {
                            argument: argument.clone(),
                            name: format!("--{name}"),
                        });
                    }
                }
            }
        } else if let Some(cluster) = argument.strip_prefix('-').filter(|c| !c.is_empty()) {
            for (offset, letter) in cluster.char_indices() {
                let (Some(takes_value), Some(option)) =
                    (short_takes_value(letter), by_short(letter))
                else {
                    errors.push(ExtraArgError::Unknown {
                        argument: argument.clone(),
                        name: format!("-{letter}"),
                    });
                    break;
                };
                if !takes_value {
                    found.push(Occurrence {
                        argument: argument.clone(),
                        option: Some(option),
                        value: None,
                    });
                    continue;
                }
                let rest = &cluster[offset + letter.len_utf8()..];
                let value = if rest.is_empty() {
                    let value = take_next(&mut index, &mut errors);
                    if value.is_none() {
                        errors.push(ExtraArgError::MissingValue {
                            argument: argument.clone(),
                            option: option.display_name(),
                        });
                    }
                    value
                } else {
                    Some(rest.to_string())
                };
                found.push(Occurrence {
                    argument: argument.clone(),
                    option: Some(option),
                    value,
                });
                break;
            }
        } else {
            errors.push(ExtraArgError::NotAnOption {
                argument: argument.clone(),
            });
        }
        index += 1;
    }
    for occurrence in &found {
        if let Some(error) = refusal(occurrence) {
            errors.push(error);
        }
    }
    if errors.is_empty() {
        Ok(found)
    } else {
        Err(errors)
    }
}

fn refusal(occurrence: &Occurrence) -> Option<ExtraArgError> {
    let option = occurrence.option?;
    let argument = occurrence.argument.clone();
    match option.class {
        Class::Owned => Some(ExtraArgError::Owned {
            argument,
            option: option.display_name(),
        }),
        Class::Unsafe(reason) => Some(ExtraArgError::Unsafe {
            argument,
            option: option.display_name(),
            reason,
        }),
        Class::PassedThrough
            if option.boolean && coturn_bool(occurrence.value.as_deref()).is_none() =>
        {
            Some(ExtraArgError::NotBoolean {
                argument,
                option: option.display_name(),
                value: occurrence.value.clone().unwrap_or_default(),
            })
        }
        Class::PassedThrough => None,
    }
}

/// The last value turnserver would apply for a boolean option (later
/// occurrences override earlier ones), with the argument that set it.
fn last_bool<'a>(found: &'a [Occurrence], long: &str) -> Option<(&'a str, bool)> {
    found
        .iter()
        .rev()
        .find(|occurrence| {
            occurrence
                .option
                .is_some_and(|option| option.long.contains(&long))
        })
        .map(|occurrence| {
            (
                occurrence.argument.as_str(),
                coturn_bool(occurrence.value.as_deref()).unwrap_or(true),
            )
        })
}

/// Combinations turnserver refuses at start (it exits, and the agent would
/// restart it forever), and loopback peers reachable over TCP relays.
/// (coturn's own refusal of loopback peers with a CLI without password does
/// not arise: the agent gives the CLI a password or turns it off.)
pub fn check_combinations(found: &[Occurrence]) -> Vec<ExtraArgError> {
    let mut errors = Vec::new();
    if let Some((argument, true)) = last_bool(found, "allow-loopback-peers") {
        // A TCP relay (RFC 6062 CONNECT) to a loopback peer reaches the
        // agent's HTTP API and turnserver's CLI from 127.0.0.1; UDP relays
        // cannot reach a TCP listener.
        let tcp_relay_off = matches!(last_bool(found, "no-tcp-relay"), Some((_, true)));
        if !tcp_relay_off {
            errors.push(ExtraArgError::Combination {
                argument: argument.to_string(),
                message: "loopback peers with TCP relays let a TURN client reach the agent's API and turnserver's CLI on loopback: add \"--no-tcp-relay\"",
            });
        }
    }
    if let (Some((argument, true)), Some((_, true))) = (
        last_bool(found, "no-udp-relay"),
        last_bool(found, "no-tcp-relay"),
    ) {
        errors.push(ExtraArgError::Combination {
            argument: argument.to_string(),
            message: "coturn refuses to start with both --no-udp-relay and --no-tcp-relay",
        });
    }
    // --bps-capacity without --max-bps (refused by coturn at start) is
    // checked on the agent's own keys: both flags are owned.
    errors
}

/// Why a `pass_through_flags` entry cannot be passed through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPassThroughFlag(String);

/// Checks a `pass_through_flags` entry: a long flag name that this table
/// does not know under any spelling getopt would accept.
pub fn check_pass_through_flag(flag: &str) -> Result<(), InvalidPassThroughFlag> {
    let Some(name) = flag.strip_prefix("--") else {
        return Err(InvalidPassThroughFlag(format!(
            "`{flag}` must be a long flag such as \"--name\""
        )));
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(InvalidPassThroughFlag(format!(
            "`{flag}` must be `--` and a name of letters, digits, `-` and `_`"
        )));
    }
    match resolve_long(name) {
        LongMatch::Unknown => Ok(()),
        LongMatch::Found(option) => Err(InvalidPassThroughFlag(format!(
            "`{flag}` is turnserver's {}; pass_through_flags is only for options this agent does not know",
            option.display_name()
        ))),
        LongMatch::Ambiguous(_) => Err(InvalidPassThroughFlag(format!(
            "`{flag}` is a prefix of turnserver options; pass_through_flags is only for options this agent does not know"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| arg.to_string()).collect()
    }

    fn refused(list: &[&str]) -> Vec<String> {
        match parse_extra_args(&args(list), &[]) {
            Ok(found) => panic!("{list:?} passed as {found:?}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_table_matches_coturns_short_option_string() {
        for letter in SHORT_OPTIONS.chars().filter(|c| *c != ':') {
            assert!(by_short(letter).is_some(), "-{letter} missing from OPTIONS");
        }
        for option in OPTIONS {
            if let Some(letter) = option.short {
                assert!(short_takes_value(letter).is_some(), "-{letter}");
            }
            assert!(option.short.is_some() || !option.long.is_empty());
        }
        let mut names: Vec<&str> = OPTIONS
            .iter()
            .flat_map(|o| o.long.iter().copied())
            .collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a long name is listed twice");
    }

    #[test]
    fn every_spelling_from_the_issue_is_refused_naming_the_argument() {
        for (spelling, names) in [
            (
                &["-vo"][..],
                "`-vo` sets -o (--daemon), which the agent owns",
            ),
            (
                &["-z"],
                "`-z` sets -z (--no-auth), which turns authentication off",
            ),
            (&["--no-auth"], "`--no-auth` sets -z (--no-auth)"),
            (
                &["-rother"],
                "`-rother` sets -r (--realm), which the agent owns",
            ),
            (
                &["--real=x"],
                "`--real=x` sets -r (--realm), which the agent owns",
            ),
            (
                &["-b/tmp/x.db"],
                "`-b/tmp/x.db` sets -b (--userdb), which the agent owns",
            ),
            (
                &["-p3479"],
                "`-p3479` sets -p (--listening-port), which the agent owns",
            ),
            (
                &["--pidf=/tmp/x.pid"],
                "`--pidf=/tmp/x.pid` sets --pidfile, which the agent owns",
            ),
            (
                &["--daemo"],
                "`--daemo` sets -o (--daemon), which the agent owns",
            ),
            (&["--db", "/tmp/x"], "`--db` sets -b (--userdb)"),
            (&["-r", "x"], "`-r` sets -r (--realm)"),
            (&["--lt-cred"], "`--lt-cred` sets -a (--lt-cred-mech)"),
            (&["--log-f=syslog"], "`--log-f=syslog` sets -l (--log-file)"),
            (&["-vVo"], "`-vVo` sets -o (--daemon)"),
            (
                &["-epostgresql://turn:pw@db/turn"],
                "`-epostgresql://turn:pw@db/turn` sets -e (--psql-userdb), which moves coturn's users away",
            ),
            (&["--mysql-userdb", "host=db password=pw"], "`--mysql-userdb` sets -M"),
            (&["-N", "ip=db password=pw"], "`-N` sets -N (--redis-userdb)"),
            (
                &["--redis-statsdb=ip=db password=pw"],
                "`--redis-statsdb=ip=db password=pw` sets -O (--redis-statsdb), which puts a secret",
            ),
        ] {
            let errors = refused(spelling);
            assert!(
                errors.iter().any(|error| error.starts_with(names)),
                "{spelling:?}: {errors:?}"
            );
        }
    }

    #[test]
    fn passed_through_spellings_are_accepted() {
        let found = parse_extra_args(
            &args(&[
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "-v",
                "-f",
                "--no-stun-backward-compatibility",
                "--allow-loopback-peers",
                "-m",
                "4",
                "-X1.2.3.4",
                "--max-allocate-lifetime=600",
                "--cert",
                "/etc/cert.pem",
                "--no-tlsv1",
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(found.len(), 12);
        assert_eq!(found[7].value.as_deref(), Some("4"));
        assert_eq!(found[8].value.as_deref(), Some("1.2.3.4"));
    }

    #[test]
    fn a_value_is_not_read_as_a_flag() {
        // getopt takes the next argument as the value, whatever it looks like.
        let found = parse_extra_args(&args(&["--server-name", "-o"]), &[]).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].value.as_deref(), Some("-o"));
        // An optional value is only ever attached: `-o` here is the daemon flag.
        assert!(refused(&["--no-tls", "-o"])[0].contains("-o (--daemon)"));
    }

    #[test]
    fn reserved_tokens_are_refused_even_as_values() {
        let errors = refused(&["--server-name", "-h"]);
        assert!(errors[0].contains("wherever it appears"), "{errors:?}");
        assert!(refused(&["--version"])[0].contains("prints the version"));
        assert!(refused(&["-h"])[0].contains("prints the help"));
        assert!(refused(&["-n"])[0].contains("which the agent owns"));
    }

    #[test]
    fn ambiguous_and_unknown_prefixes_are_refused() {
        let errors = refused(&["--d"]);
        assert!(errors[0].contains("is ambiguous"), "{errors:?}");
        assert!(refused(&["--no-tl"])[0].contains("ambiguous"));
        // Aliases of one option are not ambiguous.
        assert!(refused(&["--user=bob:pw"])[0].contains("secret"));
        let found = parse_extra_args(&args(&["--no-software"]), &[]).unwrap();
        assert_eq!(found[0].option.unwrap().long[0], "no-software-attribute");
        assert!(refused(&["--frobnicate"])[0].contains("is not a turnserver 4.6.1 option"));
        assert!(refused(&["-x"])[0].contains("`-x` is not a turnserver"));
        assert!(refused(&["-"])[0].contains("is not an option"));
        assert!(refused(&["plain"])[0].contains("is not an option"));
        assert!(refused(&["--", "-o"])[0].contains("`-o` is not an option"));
        assert!(refused(&["--cert"])[0].contains("needs a value"));
        assert!(refused(&["-m"])[0].contains("needs a value"));
    }

    #[test]
    fn pass_through_flags_are_taken_only_when_listed() {
        let listed = args(&["--future-flag"]);
        let found = parse_extra_args(&args(&["--future-flag=3"]), &listed).unwrap();
        assert_eq!(found[0].option, None);
        assert_eq!(found[0].value.as_deref(), Some("3"));
        assert!(parse_extra_args(&args(&["--future-flag"]), &[]).is_err());
        // A separate value is not read as its value: it is refused.
        assert!(parse_extra_args(&args(&["--future-flag", "3"]), &listed).is_err());
        assert!(check_pass_through_flag("--future-flag").is_ok());
        assert!(check_pass_through_flag("--daemo").is_err());
        assert!(check_pass_through_flag("--d").is_err());
        assert!(check_pass_through_flag("-x").is_err());
        assert!(check_pass_through_flag("--a b").is_err());
    }

    #[test]
    fn booleans_are_checked_like_coturn() {
        assert_eq!(coturn_bool(None), Some(true));
        assert_eq!(coturn_bool(Some("off")), Some(false));
        assert_eq!(coturn_bool(Some("0")), Some(false));
        assert_eq!(coturn_bool(Some("yes")), Some(true));
        assert_eq!(coturn_bool(Some("maybe")), None);
        assert!(refused(&["--no-tls=maybe"])[0].contains("is not a boolean"));
    }

    #[test]
    fn combinations_coturn_refuses() {
        let check = |list: &[&str], _: bool| {
            check_combinations(&parse_extra_args(&args(list), &[]).unwrap())
        };
        assert_eq!(check(&["--allow-loopback-peers"], false).len(), 1);
        assert_eq!(
            check(&["--allow-loopback-peers", "--no-cli"], false).len(),
            1
        );
        assert!(check(&["--allow-loopback-peers", "--no-tcp-relay"], false).is_empty());
        assert_eq!(
            check(&["--allow-loopback-peers", "--no-tcp-relay=0"], false).len(),
            1
        );
        assert!(check(&["--allow-loopback-peers=off"], false).is_empty());
        assert_eq!(check(&["--no-udp-relay", "--no-tcp-relay"], false).len(), 1);
        // The quotas are the agent's own keys now.
        assert!(parse_extra_args(&args(&["-B", "100", "--max-bps=10"]), &[]).is_err());
    }

    /// What glibc getopt_long would make of `args` (a reference written
    /// independently of the parser, from getopt's manual): the options it
    /// sets, by their entry. Only for argv made of known spellings.
    fn owned_by_getopt(args: &[String]) -> bool {
        let mut index = 0;
        while index < args.len() {
            let argument = &args[index];
            if argument == "--" {
                return false;
            }
            if let Some(long) = argument.strip_prefix("--") {
                let name = long.split('=').next().unwrap();
                let exact = OPTIONS.iter().find(|o| o.long.contains(&name));
                let matches: Vec<&CoturnOption> = OPTIONS
                    .iter()
                    .filter(|o| o.long.iter().any(|l| l.starts_with(name)))
                    .collect();
                let option = exact.or(if matches.len() == 1 && !name.is_empty() {
                    Some(matches[0])
                } else {
                    None
                });
                if let Some(option) = option {
                    if option.class == Class::Owned {
                        return true;
                    }
                    if option.value == Value::Required && !long.contains('=') {
                        index += 1;
                    }
                }
            } else if argument.len() > 1 && argument.starts_with('-') {
                for (offset, letter) in argument.char_indices().skip(1) {
                    let Some(option) = by_short(letter) else {
                        break;
                    };
                    if option.class == Class::Owned {
                        return true;
                    }
                    if short_takes_value(letter) == Some(true) {
                        if offset + 1 == argument.len() {
                            index += 1;
                        }
                        break;
                    }
                }
            }
            index += 1;
        }
        false
    }

    fn spelling() -> impl Strategy<Value = String> {
        let names: Vec<String> = OPTIONS
            .iter()
            .flat_map(|o| o.long.iter().map(|l| l.to_string()))
            .collect();
        let letters: Vec<char> = SHORT_OPTIONS.chars().filter(|c| *c != ':').collect();
        prop_oneof![
            // A long name, cut to a prefix, maybe with a value.
            (
                proptest::sample::select(names),
                1usize..30,
                proptest::option::of("[a-z0-9/=.-]{0,6}")
            )
                .prop_map(|(name, cut, value)| {
                    let cut = cut.min(name.len());
                    match value {
                        Some(value) => format!("--{}={value}", &name[..cut]),
                        None => format!("--{}", &name[..cut]),
                    }
                }),
            // A cluster of short letters, maybe with an attached value.
            (
                proptest::collection::vec(proptest::sample::select(letters), 1..4),
                "[a-z0-9/.]{0,4}"
            )
                .prop_map(|(letters, value)| format!(
                    "-{}{value}",
                    letters.into_iter().collect::<String>()
                )),
            // Values and stray words.
            "[a-z0-9/.-]{0,6}",
        ]
    }

    proptest! {
        #[test]
        fn no_argv_getopt_reads_as_an_owned_flag_passes(list in proptest::collection::vec(spelling(), 0..6)) {
            if owned_by_getopt(&list) {
                prop_assert!(parse_extra_args(&list, &[]).is_err(), "{:?} passed", list);
            }
        }

        #[test]
        fn accepted_argv_holds_only_passed_through_options(list in proptest::collection::vec(spelling(), 0..6)) {
            if let Ok(found) = parse_extra_args(&list, &[]) {
                for occurrence in found {
                    prop_assert_eq!(occurrence.option.map(|o| o.class), Some(Class::PassedThrough));
                }
            }
        }
    }
}
