//! Links: look up, bring up with an MTU, read counters.

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::LinkUnspec;

use super::{kernel_refused, request, Netlink, NetlinkError, Result};

/// Byte counters of an interface, as the kernel counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl Netlink {
    async fn link_message(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg),
            // ENODEV: no such interface.
            Err(e) if kernel_refused(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(request(format!("looking up interface {name}"))(e)),
        }
    }

    /// The index of interface `name`, if it exists.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.link_message(name).await?.map(|m| m.header.index))
    }

    pub async fn require_link(&self, name: &str) -> Result<u32> {
        self.link_index(name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchInterface(name.to_string()))
    }

    /// Sets the MTU and brings the link up.
    pub async fn set_up(&self, index: u32, name: &str, mtu: u16) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .mtu(mtu as u32)
            .up()
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(request(format!("setting {name} up with MTU {mtu}")))
    }

    /// Kernel byte counters of interface `name`.
    pub async fn counters(&self, name: &str) -> Result<LinkCounters> {
        let msg = self
            .link_message(name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchInterface(name.to_string()))?;
        let mut c = LinkCounters::default();
        for attr in msg.attributes {
            if let LinkAttribute::Stats64(s) = attr {
                c.rx_bytes = s.rx_bytes;
                c.tx_bytes = s.tx_bytes;
            }
        }
        Ok(c)
    }
}
