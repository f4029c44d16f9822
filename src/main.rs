//! The `turn-agent` binary: CLI -> Config -> app::run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
        Command::Rotate { config } => {
            let (_, loaded) = match load(&config) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            match turn_agent::cli::rotate(&loaded) {
                Ok(credential) => {
                    println!("rotated: {credential}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("turn-agent: rotation failed: {error:#}");
                    ExitCode::FAILURE
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

fn load(path: &Path) -> Result<(RawConfig, Config), ExitCode> {
    config::load(path).map_err(|error| {
        eprintln!("turn-agent: invalid configuration in {}:", path.display());
        for problem in &error.problems {
            eprintln!("{problem}");
        }
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}
