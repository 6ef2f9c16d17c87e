//! Node configuration of the pool (issue 15): the function network and its
//! subnet, the node budget and the keep-warm policy. The proxy fills it
//! from its flags (`proxy/src/config.rs`); tests and benches build it
//! directly. `validate` names the setting at fault.

use std::net::IpAddr;
use std::time::Duration;

use crate::NETWORK;

/// Subnet the pool creates the function network on when it does not exist
/// yet: a /20 holds 4,093 instances (Podman's default, a /24, holds 252),
/// so the node's instance budget — not the network — is the limit.
pub const DEFAULT_SUBNET: &str = "10.90.0.0/20";

/// Live instances a node holds by default. A Linux bridge takes at most
/// 1,024 ports (one per running or paused instance on the network): past
/// that a node needs a second function network, which the pool does not
/// manage.
pub const DEFAULT_MAX_INSTANCES: u32 = 1_000;

/// Upper bound on `max_instances` plus `initialized_ahead`: the ports of
/// one Linux bridge.
pub const BRIDGE_PORTS: u32 = 1_024;

/// Containers initialized ahead of need by default (see
/// `NodeConfig::initialized_ahead`): with the default instance budget,
/// every port of the bridge.
pub const DEFAULT_INITIALIZED_AHEAD: u32 = BRIDGE_PORTS - DEFAULT_MAX_INSTANCES;

/// The node's settings (see the module header).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Podman network every function instance joins.
    pub network: String,
    /// Subnet (CIDR) the network is created on when it does not exist; an
    /// existing network keeps its subnet (recreate it to change it:
    /// `scripts/setup-host.sh`, README "Node capacity").
    pub subnet: String,
    /// What the node may hold.
    pub budget: BudgetConfig,
    /// Keep one paused instance of recently called functions.
    pub keep_warm: KeepWarmConfig,
    /// Containers ahead of need that are also initialized (`podman init`:
    /// namespaces, network, cgroup and conmon set up), so a cold start only
    /// runs the function's process; the functions cold-started most
    /// recently get them. Each holds an address and a bridge port of the
    /// function network and about 4 MB (runc's waiting init process),
    /// outside the instance budget; 0 only creates them.
    pub initialized_ahead: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            network: NETWORK.to_owned(),
            subnet: DEFAULT_SUBNET.to_owned(),
            budget: BudgetConfig::default(),
            keep_warm: KeepWarmConfig::default(),
            initialized_ahead: DEFAULT_INITIALIZED_AHEAD,
        }
    }
}

/// The node budget: what the live instances (starting, running, paused)
/// may hold together. Memory is the sum of the instances' memory limits
/// (`resources.memory_mb`), not measured use: it is known before a start,
/// never overcommits, and a paused instance keeps what it holds. An
/// operator who wants density over safety sets `memory_mb` above the host's
/// memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Sum of the live instances' memory limits, in MiB (`u64::MAX`: none).
    pub memory_mb: u64,
    /// Live instances (at most [`BRIDGE_PORTS`]).
    pub max_instances: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            memory_mb: u64::MAX,
            max_instances: DEFAULT_MAX_INSTANCES,
        }
    }
}

/// Predictive keep-warm: a function called within `window` keeps one
/// paused instance after its idle stop (within the node budget: such
/// instances are the first evicted), so its next call is a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepWarmConfig {
    /// Calls this recent keep a paused instance; zero turns keep-warm off
    /// (a function's manifest can still turn it on or off for itself).
    pub window: Duration,
    /// Functions tracked at most (least recently called are forgotten).
    pub max_functions: u64,
}

impl Default for KeepWarmConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(6 * 3600),
            max_functions: 100_000,
        }
    }
}

impl NodeConfig {
    /// Checks every value; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.network.is_empty()
            || self.network.len() > 64
            || !self
                .network
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "network: {:?} is not a network name (letters, digits, - and _, at most 64)",
                self.network
            ));
        }
        subnet_hosts(&self.subnet).map_err(|e| format!("subnet: {e}"))?;
        if self.budget.max_instances == 0 || self.budget.max_instances > BRIDGE_PORTS {
            return Err(format!(
                "max_instances: must be between 1 and {BRIDGE_PORTS} (the ports of one bridge), got {}",
                self.budget.max_instances
            ));
        }
        if self
            .budget
            .max_instances
            .saturating_add(self.initialized_ahead)
            > BRIDGE_PORTS
        {
            return Err(format!(
                "initialized_ahead: {} with max_instances {} exceeds the {BRIDGE_PORTS} ports of one bridge (each holds one)",
                self.initialized_ahead, self.budget.max_instances
            ));
        }
        if self.budget.memory_mb < 16 {
            return Err(format!(
                "memory_mb: must be at least 16 (one instance's smallest limit), got {}",
                self.budget.memory_mb
            ));
        }
        if self.keep_warm.window > Duration::from_secs(7 * 86_400) {
            return Err(format!(
                "keep_warm window: must be at most 7 days, got {} s",
                self.keep_warm.window.as_secs()
            ));
        }
        if self.keep_warm.max_functions == 0 {
            return Err("keep_warm max_functions: must be at least 1".into());
        }
        Ok(())
    }
}

/// Addresses a subnet gives containers: all but the network address, the
/// gateway and (IPv4) the broadcast address. Capped at `u32::MAX`.
pub fn subnet_hosts(cidr: &str) -> Result<u32, String> {
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a CIDR subnet (ADDRESS/PREFIX)"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{cidr:?}: {addr:?} is not an IP address"))?;
    let prefix: u32 = prefix
        .parse()
        .map_err(|_| format!("{cidr:?}: {prefix:?} is not a prefix length"))?;
    let bits = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let longest = bits - 2;
    if prefix > longest || prefix < 8 {
        return Err(format!(
            "{cidr:?}: the prefix must be between 8 and {longest}"
        ));
    }
    let host_bits = bits - prefix;
    let total = 1u128 << host_bits;
    let reserved = if bits == 32 { 3 } else { 2 };
    Ok(u32::try_from(total - reserved).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_sizes() {
        assert_eq!(subnet_hosts("10.89.0.0/24"), Ok(253));
        assert_eq!(subnet_hosts("10.90.0.0/20"), Ok(4_093));
        assert_eq!(subnet_hosts("10.90.0.0/16"), Ok(65_533));
        assert_eq!(subnet_hosts("fd00::/64"), Ok(u32::MAX));
        assert!(subnet_hosts("10.90.0.0").is_err());
        assert!(subnet_hosts("10.90.0.0/31").is_err());
        assert!(subnet_hosts("nope/20").is_err());
    }

    #[test]
    fn validation_names_the_setting() {
        NodeConfig::default().validate().unwrap();
        let bad = |f: fn(&mut NodeConfig), field: &str| {
            let mut c = NodeConfig::default();
            f(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.starts_with(field), "{err}");
        };
        bad(|c| c.network = "a b".into(), "network");
        bad(|c| c.subnet = "10.0.0.0/33".into(), "subnet");
        bad(|c| c.budget.max_instances = 0, "max_instances");
        bad(|c| c.budget.max_instances = 5_000, "max_instances");
        bad(|c| c.initialized_ahead = 25, "initialized_ahead");
        let mut c = NodeConfig::default();
        c.budget.max_instances = 1_024;
        assert!(c.validate().unwrap_err().starts_with("initialized_ahead"));
        c.initialized_ahead = 0;
        c.validate().unwrap();
        bad(|c| c.budget.memory_mb = 1, "memory_mb");
        bad(
            |c| c.keep_warm.window = Duration::from_secs(30 * 86_400),
            "keep_warm",
        );
    }
}
