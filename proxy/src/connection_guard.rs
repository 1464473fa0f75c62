//! Layer 1, connection guards: caps on open client connections, in total and per client
//! address.
//!
//! Runs in connection setup ([`crate::app`]), after the PROXY protocol header (so the cap
//! applies to the real client, not to the load balancer) and before the TLS handshake. A
//! connection over a cap is closed at once. The counts are released when the connection's
//! [`Permit`] drops, however the connection ends. The limits come from the policy in force
//! when the connection opens, so a reload applies to new connections.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

/// Open connections, counted in total and per client address.
#[derive(Debug, Default)]
pub struct ConnectionGuard {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.maxConnections` connections are open.
    Total,
    /// `limits.maxConnectionsPerIp` connections from this address are open.
    PerIp,
}

impl Refusal {
    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Total => "max-connections",
            Self::PerIp => "max-connections-per-ip",
        }
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    guard: Arc<ConnectionGuard>,
    ip: Option<IpAddr>,
}

impl ConnectionGuard {
    /// Admits a connection from `ip` (unknown for non-IP sockets) if neither cap is reached.
    pub fn try_admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Permit, Refusal> {
        let previous = self.total.fetch_add(1, Ordering::AcqRel);
        if previous >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        if let Some(ip) = ip {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= max_per_ip {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *count += 1;
        }
        Ok(Permit {
            guard: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Connections open now from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        per_ip.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = self
                .guard
                .per_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.guard.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn one_address_is_capped_without_affecting_others() {
        let guard = Arc::new(ConnectionGuard::default());
        let a = guard.try_admit(ip(1), 10, 2).unwrap();
        let _b = guard.try_admit(ip(1), 10, 2).unwrap();
        assert_eq!(guard.try_admit(ip(1), 10, 2).unwrap_err(), Refusal::PerIp);
        let _other = guard.try_admit(ip(2), 10, 2).unwrap();
        assert_eq!(guard.open(), 3);
        drop(a);
        assert_eq!(guard.open_from(ip(1).unwrap()), 1);
        let _c = guard.try_admit(ip(1), 10, 2).unwrap();
    }

    #[test]
    fn the_total_is_capped() {
        let guard = Arc::new(ConnectionGuard::default());
        let permits: Vec<_> = (0..3)
            .map(|i| guard.try_admit(ip(i), 3, 3).unwrap())
            .collect();
        assert_eq!(guard.try_admit(ip(9), 3, 3).unwrap_err(), Refusal::Total);
        assert_eq!(guard.try_admit(None, 3, 3).unwrap_err(), Refusal::Total);
        drop(permits);
        assert_eq!(guard.open(), 0);
        assert_eq!(guard.open_from(ip(0).unwrap()), 0);
    }

    #[test]
    fn a_refusal_leaves_no_trace() {
        let guard = Arc::new(ConnectionGuard::default());
        let _a = guard.try_admit(ip(1), 5, 1).unwrap();
        for _ in 0..10 {
            assert!(guard.try_admit(ip(1), 5, 1).is_err());
        }
        assert_eq!(guard.open(), 1);
        assert_eq!(guard.open_from(ip(1).unwrap()), 1);
    }
}
