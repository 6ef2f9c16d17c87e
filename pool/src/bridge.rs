//! The function network's bridge keeps one MAC address.
//!
//! Linux gives a bridge whose address was never set the lowest address of
//! its ports: it changes when a container with a lower one joins, or when
//! the one that lent it leaves. Every instance's ARP entry for the gateway
//! (the host, where the proxy is) then names an address nothing answers:
//! its packets are dropped until the entry is renewed, seconds to a minute.
//! Seen here: an instance streaming an answer went silent for 20 s when
//! another function's container was removed (and the e2e stream test was
//! cut at its idle limit in CI); netavark 1.9 sets a fixed address itself,
//! Debian 12 ships 1.4.
//!
//! netavark creates the bridge with the first container that joins and
//! removes it with the last, so [`Bridge::pin`] runs after every start or
//! initialization (the moments one may have created it): when the kernel
//! still chooses the address, it is set to the one the bridge has (no
//! entry anywhere changes), after which the kernel keeps it. A check is one
//! read of a sysfs file; the setting (`ip link set`, one at a time, the
//! address read right before it) happens once per bridge.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `addr_assign_type` of an address set by user space (`NET_ADDR_SET`).
const ADDR_SET: &str = "3";
/// After a failed pin, starts do not try again before this (each try forks
/// `ip` on the start's path).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The bridge of the function network.
#[derive(Debug)]
pub(crate) struct Bridge {
    name: String,
    /// One pin at a time: two starts of a new bridge must not set two
    /// addresses read at different moments.
    pinning: tokio::sync::Mutex<Pinning>,
}

#[derive(Debug, Default)]
struct Pinning {
    /// The last failure to pin, and whether it was logged as a warning.
    failed_at: Option<Instant>,
    warned: bool,
}

impl Bridge {
    /// The bridge named `name` by Podman; `None` for a name that is not a
    /// plain interface name (it is used in a path).
    pub(crate) fn new(name: &str) -> Option<Self> {
        let plain = !name.is_empty()
            && name.len() < 16
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && name != "."
            && name != "..";
        plain.then(|| Self {
            name: name.to_owned(),
            pinning: tokio::sync::Mutex::new(Pinning::default()),
        })
    }

    fn sys(&self, file: &str) -> PathBuf {
        PathBuf::from("/sys/class/net").join(&self.name).join(file)
    }

    /// Whether the bridge exists and its address was set by user space.
    pub(crate) fn pinned(&self) -> Option<bool> {
        let kind = std::fs::read_to_string(self.sys("addr_assign_type")).ok()?;
        Some(kind.trim() == ADDR_SET)
    }

    /// Sets the bridge's address to the one it has when the kernel still
    /// chooses it; nothing when there is no bridge (yet) or it is pinned.
    pub(crate) async fn pin(&self) {
        if self.pinned() != Some(false) {
            return;
        }
        let mut state = self.pinning.lock().await;
        // Another start may have pinned it meanwhile; the address is read
        // only now, right before it is set.
        if self.pinned() != Some(false)
            || state.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER)
        {
            return;
        }
        let Ok(mac) = std::fs::read_to_string(self.sys("address")) else {
            return;
        };
        let mac = mac.trim();
        let out = tokio::process::Command::new("ip")
            .args(["link", "set", "dev", &self.name, "address", mac])
            .kill_on_drop(true)
            .output()
            .await;
        let failure = match out {
            Ok(o) if o.status.success() => {
                let ifindex = std::fs::read_to_string(self.sys("ifindex")).unwrap_or_default();
                tracing::info!(bridge = %self.name, ifindex = ifindex.trim(), %mac, "bridge address pinned");
                state.failed_at = None;
                return;
            }
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => format!("running ip: {e}"),
        };
        if self.pinned().is_none() {
            // Removed with its last container meanwhile: the next start's
            // bridge is a new one.
            return;
        }
        state.failed_at = Some(Instant::now());
        if std::mem::replace(&mut state.warned, true) {
            tracing::debug!(bridge = %self.name, error = %failure, "cannot pin the bridge's address");
        } else {
            tracing::warn!(
                bridge = %self.name,
                error = %failure,
                "cannot pin the bridge's address: instances may lose the host for seconds when \
                 containers join or leave (ip link set dev {} address {mac}); tried again at most \
                 once a minute",
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_interface_names_are_taken() {
        for good in ["podman2", "cni-podman0", "br_0", "a.b"] {
            assert!(Bridge::new(good).is_some(), "{good}");
        }
        for bad in ["", ".", "..", "../eth0", "a/b", "sixteen-chars-xx", "a b"] {
            assert!(Bridge::new(bad).is_none(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_missing_bridge_is_left_alone() {
        let b = Bridge::new("cpub-nonesuch").unwrap();
        assert_eq!(b.pinned(), None);
        b.pin().await;
        let state = b.pinning.lock().await;
        assert!(state.failed_at.is_none() && !state.warned);
    }
}
