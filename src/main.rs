//! The `turn-agent` binary: CLI -> Config -> app::run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use turn_agent::allocator::service as allocator_service;
use turn_agent::allocator::{AllocatorSettings, Preference};
use turn_agent::config::{self, Config, RawConfig};

/// Exit code for a configuration that cannot be used.
const EXIT_BAD_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "turn-agent",
    version,
    about = "Sidecar for coturn: supervises turnserver, rotates and serves TURN credentials, publishes the host in ZooKeeper"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate the configuration and print the effective values, secrets redacted.
    CheckConfig {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Ask the running agent (through its API) to rotate the credential now.
    Rotate {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Ask the running agent to drain (withdraw, wait for traffic to end)
    /// and then stop; SIGUSR1 does the same.
    Drain {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// List turnserver's sessions through the local agent (GET /sessions),
    /// or end them (`sessions kill ID` or `sessions kill --user NAME`).
    Sessions {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Only this user's sessions.
        #[arg(long)]
        user: Option<String>,
        #[command(subcommand)]
        action: Option<SessionsAction>,
    },
    /// Allocate and release a relay on the local turnserver with the
    /// credential the local agent serves: exit 0 if clients can relay.
    Selfcheck {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a running agent's status readably (GET URL/status).
    Status {
        /// The agent's API, e.g. http://127.0.0.1:8086
        #[arg(long)]
        url: String,
        /// A file holding a bearer token, for callers outside the allow list.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Run the allocator service (HTTP front for signalling servers).
    Allocator {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a client token for browsers: signed with an Ed25519 private
    /// key, for one TURN host's API.
    Token {
        /// The Ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm ed25519`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The TURN host's API address as host:port (its `aud`).
        #[arg(long, value_name = "ADDR")]
        audience: String,
        /// Who the token is for; the TURN username's name part in REST API mode.
        #[arg(long, value_name = "ID")]
        sub: Option<String>,
        #[arg(long, default_value = "5m")]
        ttl: String,
    },
    /// Pick one TURN host from ZooKeeper and print it as JSON.
    Allocate {
        /// Connect string with optional chroot, e.g. zk1:2181,zk2:2181/turn
        #[arg(long, value_name = "CONNECT")]
        zookeeper: String,
        #[arg(long, default_value = "/turn/servers")]
        path: String,
        #[arg(long)]
        isp: Option<String>,
        #[arg(long)]
        region: Option<String>,
        /// round-robin, most-free, weighted or random
        #[arg(long, default_value = "round-robin")]
        strategy: String,
        #[arg(long, default_value_t = 1.0)]
        min_free_mbps: f64,
    },
}

#[derive(Subcommand)]
enum SessionsAction {
    /// End one session by id, or every session of --user.
    Kill {
        /// The session id as `turn-agent sessions` prints it.
        id: Option<String>,
        #[arg(long)]
        user: Option<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => {
            let (raw, loaded) = match load(&config) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            turn_agent::logging::init(&loaded.agent.log_level, loaded.agent.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("turn-agent: cannot start the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(turn_agent::app::run(config, raw, loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Rotate { config } => ask_agent(&config, "rotation", |loaded| {
            turn_agent::cli::rotate(loaded).map(|credential| format!("rotated: {credential}"))
        }),
        Command::Drain { config } => ask_agent(&config, "drain", |loaded| {
            turn_agent::cli::drain(loaded)
                .map(|()| "draining; the agent stops once relayed traffic has ended".into())
        }),
        Command::Sessions {
            config,
            user,
            action,
        } => match action {
            None => ask_agent(&config, "sessions", |loaded| {
                turn_agent::cli::sessions(loaded, user.as_deref())
            }),
            Some(SessionsAction::Kill {
                id,
                user: kill_user,
            }) => {
                let kill_user = kill_user.or(user);
                if id.is_some() == kill_user.is_some() {
                    eprintln!("turn-agent: sessions kill: name either a session id or --user");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
                ask_agent(&config, "sessions kill", |loaded| {
                    turn_agent::cli::kill_sessions(loaded, id.as_deref(), kill_user.as_deref())
                        .map(|count| format!("terminated: {count}"))
                })
            }
        },
        Command::Selfcheck { config } => {
            ask_agent(&config, "selfcheck", turn_agent::cli::selfcheck)
        }
        Command::Status { url, token_file } => {
            let token = match token_file.map(std::fs::read_to_string).transpose() {
                Ok(token) => token.map(|t| t.trim().to_string()),
                Err(error) => {
                    eprintln!("turn-agent: --token-file: {error}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            match turn_agent::cli::status(&url, token.as_deref()) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("turn-agent: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Allocator { config } => {
            let loaded = match allocator_service::load(&config) {
                Ok(loaded) => loaded,
                Err(error) => return config_error(&config, &error),
            };
            turn_agent::logging::init(&loaded.log_level, config::LogFormat::Text);
            run_async(allocator_service::run(loaded))
        }
        Command::Allocate {
            zookeeper,
            path,
            isp,
            region,
            strategy,
            min_free_mbps,
        } => {
            let strategy = match strategy.parse() {
                Ok(strategy) => strategy,
                Err(message) => {
                    eprintln!("turn-agent: --strategy: {message}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            if let Err(error) = turn_agent::zookeeper::parse_connect_string(&zookeeper) {
                eprintln!("turn-agent: --zookeeper: {error}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            let mut settings = AllocatorSettings::new(zookeeper, path);
            settings.strategy = strategy;
            settings.min_free_mbps = min_free_mbps;
            let preference = Preference { isp, region };
            run_async(async move {
                let line = allocator_service::allocate_once(settings, preference).await?;
                println!("{line}");
                Ok(())
            })
        }
        Command::Token {
            key,
            audience,
            sub,
            ttl,
        } => {
            let now = turn_agent::credentials::unix_now().as_secs();
            match turn_agent::cli::mint_token(&key, &audience, sub.as_deref(), &ttl, now) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("turn-agent: {error}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
        Command::CheckConfig { config } => match load(&config) {
            Ok((raw, _)) => {
                print!("{}", config::render_effective(&raw));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

/// Loads and validates `path`, then reads the TLS files it names (their
/// PEM is checked where it is used, not by the validator).
fn load(path: &Path) -> Result<(RawConfig, Config), ExitCode> {
    config::load(path)
        .and_then(|(raw, config)| {
            turn_agent::api::tls::check(config.api.tls.as_ref())?;
            Ok((raw, config))
        })
        .map_err(|error| config_error(path, &error))
}

/// Loads `config`, asks the agent it describes through `call` and prints
/// the answer; a failure exits 1 naming `what`.
fn ask_agent(
    config: &Path,
    what: &str,
    call: impl FnOnce(&Config) -> anyhow::Result<String>,
) -> ExitCode {
    let (_, loaded) = match load(config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    match call(&loaded) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("turn-agent: {what} failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(path: &Path, error: &config::ConfigError) -> ExitCode {
    eprintln!("turn-agent: invalid configuration in {}:", path.display());
    for problem in &error.problems {
        eprintln!("{problem}");
    }
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// Runs `future` on a fresh runtime; errors exit 1.
fn run_async(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("turn-agent: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("turn-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}
