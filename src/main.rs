//! The `creditgate` binary: command line, configuration loading, runtime start. Everything else
//! lives in the library.

/// mimalloc instead of the system allocator: a full refresh of a million Redis accounts makes
/// tens of millions of short-lived allocations (redis-rs reply values) beside the long-lived
/// accounts, and glibc malloc was a quarter of the refresh's CPU (BENCHMARKS.md, "Redis source").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use creditgate::config::Config;

mod cli;

/// Exit code for an invalid configuration (distinct from runtime failures).
const EXIT_CONFIG: u8 = 2;
/// How long the packet runtime may take to stop once `run` returned (its tasks have ended by
/// then; this only bounds the wait for its threads).
const PACKET_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Parser)]
#[command(
    name = "creditgate",
    version,
    about = "SIP admission filter: refuses new calls of accounts without credit"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (for the default `run`).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration, print the effective configuration, exit non-zero on errors.
    CheckConfig,
    /// Operator tooling for the Redis account store (credit.redis_url, credit.key_prefix).
    Accounts {
        #[command(subcommand)]
        cmd: cli::accounts::AccountsCmd,
    },
}

const DEFAULT_CONFIG: &str = "/etc/creditgate/creditgate.toml";

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("creditgate: invalid configuration {}:\n{e}", path.display());
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    match cli.command.unwrap_or(Command::Run) {
        Command::Accounts { cmd } => {
            let cfg = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match cli::accounts::run(cmd, &cfg) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("creditgate accounts: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig => match load(&path) {
            Ok(cfg) => {
                println!("# {}: valid\n{}", path.display(), cfg.effective_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run => {
            let cfg = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Kept until main returns: dropping it flushes the log queue (the last lines,
            // "creditgate stopped" among them, are written before the process exits).
            let _log_guard = creditgate::daemon::logging::init(&cfg.log);
            let workers = creditgate::daemon::net::worker_count(cfg.sip.workers);
            let runtimes = creditgate::daemon::packet_runtime(workers, cfg.sip.realtime_priority)
                .and_then(|p| Ok((p, creditgate::daemon::control_runtime()?)));
            let (packet, control) = match runtimes {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("creditgate: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result =
                control.block_on(creditgate::daemon::run(cfg, path, packet.handle().clone()));
            // `run` has awaited the receive tasks: nothing is left on the packet runtime.
            packet.shutdown_timeout(PACKET_SHUTDOWN);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("creditgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
