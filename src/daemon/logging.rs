//! Logging setup: `tracing-subscriber`, text or JSON per `[log]`, `RUST_LOG` overriding the
//! configured level, written to stderr by a thread of its own.
//!
//! The packet workers (possibly under `SCHED_FIFO`) never write to stderr themselves: a log line
//! is formatted on the calling thread and handed to a bounded queue (`tracing-appender`'s
//! non-blocking writer, lossy), and the `creditgate-log` thread, at normal priority, writes it
//! out. When the reader of stderr is slow or stuck (a journal under pressure, a pipe nobody
//! drains) the queue fills and further lines are dropped and counted
//! ([`dropped_lines`], `creditgate_log_lines_dropped_total`): a packet never waits for the log.
//! What a line may contain and how many refusal lines are written is decided in `events.rs`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Log lines the queue holds while the writer thread waits for stderr. A line is a few hundred
/// bytes at most (values from the network are quoted as short prefixes), so the queue stays
/// within a few MiB; 16 384 lines ride out a journal pause of seconds at the rate limits of
/// `events.rs`, and a stall longer than that loses lines, not packets.
const BUFFERED_LINES: usize = 16_384;

/// Name of the writer thread (`top -H`, `ps -L`).
const LOG_THREAD_NAME: &str = "creditgate-log";

/// The dropped-line counter of the installed writer (set once, by [`init`]).
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because the queue to the writer thread was full (stderr too slow).
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}

/// Installs the global subscriber and starts the writer thread. Returns the guard that flushes
/// the queue when dropped: keep it for the daemon's life (`main` holds it until `run` returned).
/// `None` if a subscriber was already installed (later calls are ignored).
pub fn init(cfg: &LogConfig) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    // Colour only on a terminal, and never with NO_COLOR set: journald, files and log shippers
    // get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name(LOG_THREAD_NAME)
        .finish(std::io::stderr());
    let counter = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let installed = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    match installed {
        Ok(()) => {
            let _ = DROPPED.set(counter);
            Some(guard)
        }
        Err(_) => None,
    }
}
