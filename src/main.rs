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
use creditgate::daemon::preflight;

mod cli;

/// Exit code for a configuration fault: the configuration file or a file it names (distinct from
/// runtime failures, exit 1; the systemd unit does not restart on it).
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
    /// The configuration file.
    #[arg(long, short, global = true, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration and every file it names (the secret and token files, the
    /// accounts file of the `file` source), print the effective configuration; exit 2 on any
    /// fault, as `run` does.
    CheckConfig,
    /// Operator tooling for the accounts: import/set/show/list in Redis (credit.redis_url,
    /// credit.key_prefix); show/list also read the accounts file of the `file` source.
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

/// [`load`], then every file the configuration names, read as `run` reads them.
fn load_all(path: &std::path::Path) -> Result<(Config, preflight::Prepared), ExitCode> {
    let cfg = load(path)?;
    match preflight::check(&cfg) {
        Ok(prepared) => Ok((cfg, prepared)),
        Err(problems) => {
            eprintln!("creditgate: invalid configuration {}:", path.display());
            for p in problems {
                eprintln!("{p}");
            }
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// An error and its causes, `outer: cause: root`, leaving out a cause whose text the message
/// already holds (errors that print their source and also return it as `source()`).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Whether `e` comes from writing to a closed pipe (`creditgate ... | head -1`).
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes `text` to stdout; a reader that went away (`| head -1`) is not an error.
fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli.config;
    match cli.command.unwrap_or(Command::Run) {
        Command::Accounts { cmd } => {
            let cfg = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match cli::accounts::run(cmd, &cfg, &path) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("creditgate accounts: {}", chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig => match load_all(&path) {
            Ok((cfg, prepared)) => {
                let accounts = match prepared.file_accounts {
                    Some(n) => format!("# {}: {n} accounts\n", cfg.credit.file.display()),
                    None => String::new(),
                };
                let text = format!(
                    "# {}: valid\n{accounts}{}",
                    path.display(),
                    cfg.effective_toml()
                );
                match print_out(&text) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("creditgate: writing to stdout: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(code) => code,
        },
        Command::Run => {
            let (cfg, prepared) = match load_all(&path) {
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
            let result = control.block_on(creditgate::daemon::run(
                cfg,
                prepared,
                path,
                packet.handle().clone(),
            ));
            // `run` has awaited the receive tasks: nothing is left on the packet runtime.
            packet.shutdown_timeout(PACKET_SHUTDOWN);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // The log goes to stderr: one line, not the same error twice.
                    tracing::error!("{}", chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}
