//! Socket setup: one `SO_REUSEPORT` UDP socket per worker and listen address (socket2, then
//! tokio), receive buffers from the config, and the address each listener advertises.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::StartError;
use crate::config::Config;
use crate::core::Listener;

/// The sockets of one worker: one per listen address, in `listen` order.
pub type SocketGroup = Vec<Arc<UdpSocket>>;

/// `workers = 0` means one per core.
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

fn bind_one(addr: SocketAddr, recv_buffer: u64) -> Result<std::net::UdpSocket, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let sock =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    sock.set_reuse_port(true).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        // [::] listens on IPv6 only; list 0.0.0.0 separately for IPv4 (predictable behaviour).
        sock.set_only_v6(true).map_err(err)?;
    }
    if let Err(e) = sock.set_recv_buffer_size(usize::try_from(recv_buffer).unwrap_or(usize::MAX)) {
        tracing::warn!(%addr, error = %e, "cannot set the receive buffer size");
    }
    sock.set_nonblocking(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    Ok(sock.into())
}

/// Binds `workers` sockets per listen address. Port 0 binds an ephemeral port once and the
/// other workers join that same port.
pub fn bind_all(cfg: &Config, workers: usize) -> Result<Vec<SocketGroup>, StartError> {
    let mut per_addr: Vec<Vec<Arc<UdpSocket>>> = Vec::new();
    for addr in &cfg.sip.listen {
        let first = bind_one(*addr, cfg.sip.recv_buffer)?;
        let actual = first.local_addr().map_err(|source| StartError::Bind {
            addr: *addr,
            source,
        })?;
        let mut socks = vec![first];
        for _ in 1..workers {
            socks.push(bind_one(actual, cfg.sip.recv_buffer)?);
        }
        let socks = socks
            .into_iter()
            .map(|s| {
                UdpSocket::from_std(s)
                    .map(Arc::new)
                    .map_err(|source| StartError::Bind {
                        addr: actual,
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        per_addr.push(socks);
    }
    // Regroup: group w holds worker w's socket of every listen address.
    let mut groups: Vec<SocketGroup> = (0..workers).map(|_| Vec::new()).collect();
    for socks in per_addr {
        for (w, s) in socks.into_iter().enumerate() {
            if let Some(g) = groups.get_mut(w) {
                g.push(s);
            }
        }
    }
    Ok(groups)
}

/// The local IP the kernel would use toward `dest` (no packet is sent).
fn route_source(dest: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if dest.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(dest).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// What each listen socket advertises in Via / Record-Route: `[sip] advertise` when set;
/// otherwise its own address, with an unspecified address replaced by the source address the
/// kernel picks toward the first upstream of that family.
pub fn listeners(cfg: &Config, groups: &[SocketGroup]) -> Vec<Listener> {
    let Some(first) = groups.first() else {
        return Vec::new();
    };
    first
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .map(|bound| {
            let (host, port) = match &cfg.sip.advertise {
                Some(a) => (a.host.clone(), a.port),
                None if bound.ip().is_unspecified() => {
                    let ip = cfg
                        .sip
                        .upstream
                        .iter()
                        .find(|u| u.is_ipv4() == bound.is_ipv4())
                        .and_then(|u| route_source(*u))
                        .unwrap_or(if bound.is_ipv4() {
                            IpAddr::V4(Ipv4Addr::LOCALHOST)
                        } else {
                            IpAddr::V6(Ipv6Addr::LOCALHOST)
                        });
                    (ip.to_string(), bound.port())
                }
                None => (bound.ip().to_string(), bound.port()),
            };
            Listener {
                bound,
                advertised_host: host,
                advertised_port: port,
            }
        })
        .collect()
}
