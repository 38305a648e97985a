//! Scheduling classes of the daemon's threads, so that packets always come first
//! (`docs/overload.md`):
//!
//! * the packet workers ([`raise_to_realtime`]): `SCHED_FIFO` at `[sip] realtime_priority` when
//!   that is set, normal scheduling otherwise;
//! * the control threads (admin API, signals, the refresh schedule, the watchdog): normal
//!   scheduling;
//! * refresh work, Redis reads and applying to the snapshot ([`lower_thread_priority`]):
//!   `SCHED_IDLE`, nice 10 where that is refused.
//!
//! Boundary: each function sets the calling thread's policy; which thread belongs to which class
//! is decided where the threads are made (`main`, the credit sources).

/// Niceness of the threads doing refresh work where `SCHED_IDLE` cannot be had: at nice 10 a
/// CPU-bound refresh gets about a tenth of a core against a busy packet worker at nice 0.
const BACKGROUND_NICE: i32 = 10;

/// Puts the calling thread, one that does refresh work (Redis reads and parsing, applying to
/// the snapshot), under `SCHED_IDLE`: it runs only on CPU time no normal thread wants, and a
/// packet worker that wakes up on its CPU preempts it at once. Niceness alone was not enough on
/// 2 cores: a refresh compressed into 4 s kept the packet workers waiting for a CPU often enough
/// to lift their p99 tenfold (BENCHMARKS.md). Under an overload that keeps every core busy a
/// refresh waits for it to pass (the snapshot ages, `on_stale` applies), which is the right
/// order: packets first. Falls back to nice [`BACKGROUND_NICE`]; best effort, a failure is
/// logged at debug level. An unprivileged process cannot undo either for the thread.
pub fn lower_thread_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };
    let idle = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    if idle.is_ok() {
        return;
    }
    // thread-priority maps 0..=99 linearly onto niceness 19..=-20; 22 is nice 10.
    let mapped = u8::try_from((19 - BACKGROUND_NICE) * 99 / 39)
        .ok()
        .and_then(|p| ThreadPriorityValue::try_from(p).ok());
    let result = match mapped {
        Some(p) => thread_priority::set_current_thread_priority(ThreadPriority::Crossplatform(p))
            .map_err(|e| format!("{e:?}")),
        None => Err("no mapping".to_owned()),
    };
    if let Err(e) = result {
        tracing::debug!(idle_error = ?idle.err(), error = %e, "cannot lower the priority of a refresh thread");
    }
}

/// Puts the calling thread, a packet worker, under `SCHED_FIFO` at `priority` (1-99).
///
/// Why: at normal priority a worker woken by a datagram waits for whatever normal process holds
/// its CPU to reach the end of its time slice, and the scheduler does not move it to a CPU that
/// runs only `SCHED_IDLE` refresh work. With Redis on the same host, a full refresh keeps
/// redis-server busy for seconds, and that wait lifted the admission p99 from about 0.3 ms to
/// about 2 ms (`perf sched` traces and figures in BENCHMARKS.md). A `SCHED_FIFO` worker preempts a
/// normal process as soon as it wakes.
///
/// Needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least `priority`; the error says what the
/// kernel answered, and the thread keeps its normal scheduling.
pub fn raise_to_realtime(priority: u8) -> Result<(), String> {
    use thread_priority::{
        RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };
    let value =
        ThreadPriorityValue::try_from(priority).map_err(|e| format!("priority {priority}: {e}"))?;
    thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|e| match e {
        thread_priority::Error::OS(code) => std::io::Error::from_raw_os_error(code).to_string(),
        other => format!("{other:?}"),
    })
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// (policy, nice, rt_priority) of the calling thread, from `/proc/thread-self/stat`.
    fn scheduling() -> (i32, i32, i32) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields 19 (nice), 40 (rt_priority) and 41 (policy), counted after the parenthesised
        // command name (field 2), which may contain spaces.
        let after: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let field = |n: usize| after[n - 3].parse::<i32>().unwrap();
        (field(41), field(19), field(40))
    }

    #[test]
    fn refresh_threads_run_under_sched_idle() {
        let (policy, nice, _) = std::thread::spawn(|| {
            lower_thread_priority();
            scheduling()
        })
        .join()
        .unwrap();
        // SCHED_IDLE is policy 5; where it is refused, at least nice 10 (a test run already
        // under `nice -n 15` cannot go back to 10).
        assert!(
            policy == 5 || nice >= BACKGROUND_NICE,
            "policy {policy}, nice {nice}"
        );
    }

    /// Where the kernel allows it (root, CAP_SYS_NICE, RLIMIT_RTPRIO), the thread is SCHED_FIFO
    /// (policy 1) at the priority asked; where it does not, the error says so and the thread is
    /// left as it was.
    #[test]
    fn packet_threads_run_under_sched_fifo_when_allowed() {
        let (result, (policy, _, rt_priority)) = std::thread::spawn(|| {
            let r = raise_to_realtime(3);
            (r, scheduling())
        })
        .join()
        .unwrap();
        match result {
            Ok(()) => assert_eq!((policy, rt_priority), (1, 3)),
            Err(e) => {
                assert_eq!((policy, rt_priority), (0, 0), "{e}");
                assert!(!e.is_empty());
            }
        }
        assert!(raise_to_realtime(100).is_err());
    }
}
