//! Packet workers: each owns one socket per listen address, receives, calls the core, and sends
//! what the core decided. No lock on this path beyond the snapshot map's sharded reads.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::flood::{self, Verdict};
use super::net::SocketGroup;
use super::{events, Shared};
use crate::core::{self, Action, Packet};

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Spawns one receive task per socket of the group.
///
/// `source_pps_limit` is `[sip] source_pps_limit` (0 = off): each task gets its own
/// [`flood::Limiter`].
pub fn spawn_group(
    group: SocketGroup,
    shared: Arc<Shared>,
    source_pps_limit: u32,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let group = Arc::new(group);
    (0..group.len())
        .map(|i| {
            let group = Arc::clone(&group);
            let shared = Arc::clone(&shared);
            let shutdown = shutdown.clone();
            let limiter = flood::Limiter::new(source_pps_limit);
            tokio::spawn(async move { serve(i, group, shared, limiter, shutdown).await })
        })
        .collect()
}

async fn serve(
    index: usize,
    group: Arc<SocketGroup>,
    shared: Arc<Shared>,
    mut limiter: Option<flood::Limiter>,
    shutdown: CancellationToken,
) {
    let Some(sock) = group.get(index).cloned() else {
        return;
    };
    let Ok(local) = sock.local_addr() else { return };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => r,
        };
        let (len, source) = match received {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors surface here on some systems (ECONNREFUSED); keep serving.
                tracing::trace!(error = %e, "recv_from");
                continue;
            }
        };
        let start = Instant::now();
        if let Some(Verdict::Refuse { first_in_window }) =
            limiter.as_mut().map(|l| l.check(source.ip(), start))
        {
            if !shared.policy.load().is_trusted(source.ip()) {
                shared.counters.flood_dropped.inc();
                if first_in_window {
                    tracing::warn!(%source, "flood guard: source over [sip] source_pps_limit, dropping its datagrams for the rest of this second");
                }
                continue;
            }
        }
        let data = buf.get(..len).unwrap_or_default();
        let policy = shared.policy.load();
        let outcome = core::handle(
            Packet {
                data,
                source,
                local,
                now: start,
            },
            &shared.snapshot,
            &policy,
        );
        events::record(
            &shared.counters,
            outcome.method,
            &outcome.event,
            source,
            start.elapsed(),
        );
        match outcome.action {
            Action::Forward { from, to, bytes } | Action::Reply { from, to, bytes } => {
                let out = if from == local {
                    &sock
                } else {
                    group
                        .iter()
                        .find(|s| s.local_addr().ok() == Some(from))
                        .unwrap_or(&sock)
                };
                let to = map_for_socket(out, to);
                if let Err(e) = out.send_to(&bytes, to).await {
                    shared.counters.send_errors.inc();
                    tracing::debug!(%to, error = %e, "send_to failed");
                }
            }
            Action::Drop => {}
        }
    }
}

/// An IPv4 destination sent from an IPv6 socket needs the mapped form.
fn map_for_socket(sock: &UdpSocket, to: SocketAddr) -> SocketAddr {
    match (sock.local_addr(), to.ip()) {
        (Ok(SocketAddr::V6(_)), IpAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), to.port())
        }
        _ => to,
    }
}
