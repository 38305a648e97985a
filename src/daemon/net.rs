//! Socket setup: one `SO_REUSEPORT` UDP socket per worker and listen address (socket2, then
//! tokio), receive buffers from the config, and the address each listener advertises.
//!
//! # One daemon per address
//!
//! `SO_REUSEPORT` lets the workers of one daemon share a port, but it would let a second
//! daemon of the same user join that group too, and the kernel would split the traffic between
//! two daemons with different keys. So before it binds a listen address the daemon
//!
//! 1. takes an exclusive lock named after the address: an abstract Unix socket
//!    `creditgate/udp/ADDR` (Linux), which lives in the same network namespace as the UDP port,
//!    is held for the life of the process and vanishes with it (no stale lock file after a
//!    crash). Two daemons starting in the same instant cannot both hold it;
//! 2. binds a probe socket on the address without `SO_REUSEPORT` or `SO_REUSEADDR`: the kernel
//!    refuses it if any socket of any program holds the port on that address (or on the
//!    wildcard address, or a specific one under a wildcard), and then releases it;
//! 3. binds the workers' sockets with `SO_REUSEPORT` only (no `SO_REUSEADDR`, which for UDP
//!    would let a socket of any user share the port).
//!
//! Port 0 probes first: the probe's port is one no socket holds, then the lock and the workers'
//! sockets follow on it; should another process take it in between, the daemon starts over with a
//! new port. What remains open is only a program of the same user that itself sets
//! `SO_REUSEPORT` binding in the instant between probe and bind, or two daemons, one on a
//! wildcard and one on a specific address of the same port, starting in the same instant.

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

/// Attempts at a fresh port for a `listen` entry with port 0 before giving up.
const PORT_ZERO_ATTEMPTS: usize = 20;

/// A listen address no other creditgate may bind while this is held (see the module header).
#[derive(Debug)]
pub struct AddressLock {
    #[cfg(target_os = "linux")]
    _lock: std::os::unix::net::UnixListener,
}

/// Takes the lock of `addr`; `Ok(None)` when another creditgate holds it.
#[cfg(target_os = "linux")]
fn lock_address(addr: SocketAddr) -> Result<Option<AddressLock>, StartError> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
    let err = |source| StartError::Bind { addr, source };
    let name = UnixAddr::from_abstract_name(format!("creditgate/udp/{addr}")).map_err(err)?;
    match UnixListener::bind_addr(&name) {
        Ok(l) => Ok(Some(AddressLock { _lock: l })),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// Elsewhere only the probe guards the address.
#[cfg(not(target_os = "linux"))]
fn lock_address(_addr: SocketAddr) -> Result<Option<AddressLock>, StartError> {
    Ok(Some(AddressLock {}))
}

/// A UDP socket for `addr` with the options every listen socket has.
fn new_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // [::] listens on IPv6 only; list 0.0.0.0 separately for IPv4 (predictable behaviour).
        sock.set_only_v6(true)?;
    }
    Ok(sock)
}

/// Binds and releases an exclusive socket (no `SO_REUSEPORT`/`SO_REUSEADDR`) on `addr`: the
/// bound address (the port the kernel picked for port 0), or `InUse` if any socket holds it.
fn probe(addr: SocketAddr) -> Result<SocketAddr, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let sock = new_socket(addr).map_err(err)?;
    match sock.bind(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(StartError::InUse { addr, source: e })
        }
        Err(e) => return Err(err(e)),
    }
    sock.local_addr()
        .map_err(err)?
        .as_socket()
        .ok_or_else(|| err(std::io::Error::other("not an IP socket address")))
}

/// Locks, probes and binds the first socket of a listen address (see the module header).
fn bind_first(
    addr: SocketAddr,
    recv_buffer: u64,
) -> Result<(std::net::UdpSocket, SocketAddr, AddressLock), StartError> {
    if addr.port() != 0 {
        let lock = lock_address(addr)?.ok_or(StartError::Locked { addr })?;
        probe(addr)?;
        let first = bind_one(addr, recv_buffer)?;
        return Ok((first, addr, lock));
    }
    let mut last = None;
    for _ in 0..PORT_ZERO_ATTEMPTS {
        let actual = probe(addr)?;
        let Some(lock) = lock_address(actual)? else {
            continue; // another creditgate picked the same port this instant
        };
        match bind_one(actual, recv_buffer) {
            Ok(first) => return Ok((first, actual, lock)),
            // Taken between probe and bind: start over with a new port.
            Err(StartError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                last = Some(source);
            }
            Err(e) => return Err(e),
        }
    }
    Err(StartError::InUse {
        addr,
        source: last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrInUse)),
    })
}

fn bind_one(addr: SocketAddr, recv_buffer: u64) -> Result<std::net::UdpSocket, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let sock = new_socket(addr).map_err(err)?;
    sock.set_reuse_port(true).map_err(err)?;
    if let Err(e) = sock.set_recv_buffer_size(usize::try_from(recv_buffer).unwrap_or(usize::MAX)) {
        tracing::warn!(%addr, error = %e, "cannot set the receive buffer size");
    }
    sock.set_nonblocking(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    Ok(sock.into())
}

/// Binds `workers` sockets per listen address, exclusively between processes (see the module
/// header); the locks must be held as long as the sockets serve. Port 0 binds an ephemeral port
/// once and the other workers join that same port.
pub fn bind_all(
    cfg: &Config,
    workers: usize,
) -> Result<(Vec<SocketGroup>, Vec<AddressLock>), StartError> {
    let mut per_addr: Vec<Vec<Arc<UdpSocket>>> = Vec::new();
    let mut locks = Vec::new();
    for addr in &cfg.sip.listen {
        let (first, actual, lock) = bind_first(*addr, cfg.sip.recv_buffer)?;
        locks.push(lock);
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
    Ok((groups, locks))
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn config(listen: &str) -> Config {
        Config::from_toml_str(
            &format!("[sip]\nlisten = [\"{listen}\"]\nupstream = [\"127.0.0.2:5080\"]\n"),
            std::path::Path::new(""),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_second_bind_of_the_same_address_is_refused() {
        let (groups, _locks) = bind_all(&config("127.0.0.1:0"), 2).unwrap();
        assert_eq!(groups.len(), 2);
        let addr = groups[0][0].local_addr().unwrap();
        // Both workers share the port.
        assert_eq!(groups[1][0].local_addr().unwrap(), addr);
        match bind_all(&config(&addr.to_string()), 2) {
            Err(StartError::Locked { addr: a }) => assert_eq!(a, addr),
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("a second daemon bound {addr}"),
        }
    }

    #[tokio::test]
    async fn a_port_another_socket_holds_is_refused() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        match bind_all(&config(&addr.to_string()), 1) {
            Err(StartError::InUse { addr: a, .. }) => assert_eq!(a, addr),
            Err(e) => panic!("expected InUse, got {e}"),
            Ok(_) => panic!("bound {addr} held by another socket"),
        }
    }

    #[test]
    fn the_lock_is_exclusive_and_goes_with_its_holder() {
        // Hold the port, so no other creditgate can be after this address's lock meanwhile.
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let first = lock_address(addr).unwrap();
        assert!(first.is_some());
        assert!(lock_address(addr).unwrap().is_none(), "taken twice");
        drop(first);
        assert!(lock_address(addr).unwrap().is_some(), "not released");
    }
}
