//! The config file as written: every field optional and loosely typed, so
//! that validation (in `check`) can report every problem at once instead of
//! stopping at the first.

use serde::Deserialize;

mod follow;

pub use follow::{RawFollow, RawFollower};

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub role: Option<String>,
    pub name: Option<String>,
    pub lan: Option<Vec<String>>,
    pub state_directory: Option<String>,
    pub tunnel: Option<RawTunnel>,
    pub routing: Option<RawRouting>,
    pub probe: Option<RawProbe>,
    pub failover: Option<RawFailover>,
    pub hub: Option<Vec<RawHub>>,
    pub uplink: Option<Vec<RawUplink>>,
    pub site: Option<Vec<RawSite>>,
    pub control: Option<RawControl>,
    pub metrics: Option<RawMetrics>,
    pub check: Option<Vec<RawCheck>>,
    pub enrollment: Option<RawEnrollment>,
    pub follow: Option<RawFollow>,
    pub follower: Option<Vec<RawFollower>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTunnel {
    pub interface: Option<String>,
    pub private_key_file: Option<String>,
    pub address: Option<String>,
    pub listen_port: Option<i64>,
    pub mtu: Option<i64>,
    pub threads: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRouting {
    pub table: Option<i64>,
    pub fwmark: Option<i64>,
    pub rule_priority: Option<i64>,
    pub forwarding: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawProbe {
    pub certificate_file: Option<String>,
    pub key_file: Option<String>,
    pub listen_port: Option<i64>,
    pub interval: Option<String>,
    pub standby_interval: Option<String>,
    pub metered_interval: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawFailover {
    pub down_after_lost: Option<i64>,
    pub holddown: Option<String>,
    pub sla_window: Option<String>,
    pub sla_min_samples: Option<i64>,
    pub max_loss: Option<f64>,
    pub max_rtt: Option<String>,
    pub max_jitter: Option<String>,
    pub sla_sustain: Option<String>,
    pub max_holddown: Option<String>,
    pub damping_half_life: Option<String>,
    pub probation: Option<String>,
    pub prefer: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHub {
    pub name: Option<String>,
    pub public_key: Option<String>,
    pub endpoint: Option<String>,
    pub address: Option<String>,
    pub routes: Option<Vec<String>>,
    pub keepalive: Option<i64>,
    pub probe_port: Option<i64>,
    pub fingerprint: Option<String>,
    pub priority: Option<i64>,
    pub interface: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawUplink {
    pub name: Option<String>,
    pub interface: Option<String>,
    pub gateway: Option<String>,
    pub priority: Option<i64>,
    pub metered: Option<bool>,
    pub probe_budget: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSite {
    pub name: Option<String>,
    pub public_key: Option<String>,
    pub address: Option<String>,
    pub lan: Option<Vec<String>>,
    pub certificate: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawControl {
    pub socket: Option<String>,
    pub group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMetrics {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCheck {
    pub name: Option<String>,
    pub tcp: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawEnrollment {
    pub registry: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub routes: Option<Vec<String>>,
    pub pool: Option<String>,
    pub token_ttl: Option<String>,
    pub hub_name: Option<String>,
    pub keepalive: Option<i64>,
    pub check: Option<OneOrMany>,
}

/// A string, or a list of them (`check = "a"` or `check = ["a", "b"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<&String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v.iter().collect(),
        }
    }
}
