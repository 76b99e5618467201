//! Interface addresses.

use ipnet::IpNet;

use super::{request, Netlink, Result};

impl Netlink {
    /// Adds `address` (host address with the network's length) to a link.
    pub async fn add_address(&self, index: u32, name: &str, address: IpNet) -> Result<()> {
        self.handle
            .address()
            .add(index, address.addr(), address.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(request(format!("adding address {address} to {name}")))
    }
}
