//! `[tunnel]`, and what the other sections need to know of it.

use super::*;

/// What the other sections need to know of the tunnel, each fact present
/// when its own key is valid (so that one bad key hides no other problem).
#[derive(Default)]
pub(super) struct TunnelFacts {
    pub(super) interface: Option<InterfaceName>,
    pub(super) address: Option<IpNet>,
    pub(super) public_key: Option<PublicKey>,
}

pub(super) fn tunnel(
    c: &mut Checker,
    t: &RawTunnel,
    base: &Path,
    is_hub: Option<bool>,
) -> (TunnelFacts, Option<TunnelConfig>) {
    let interface = c.interface("tunnel.interface", t.interface.as_ref());
    let private_key = c.private_key("tunnel.private_key_file", t.private_key_file.as_ref(), base);
    let address = c
        .required(
            "tunnel.address",
            t.address.as_ref(),
            "this router's tunnel address with the tunnel network's length, e.g. \"10.99.0.1/24\"",
        )
        .and_then(|a| match a.parse::<IpNet>() {
            Ok(n) if n.addr() == n.network() && n.prefix_len() < n.max_prefix_len() => {
                c.push(
                    "tunnel.address",
                    format!("{a} is the network address, not a host address"),
                    Some("e.g. 10.99.0.1/24"),
                );
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                c.push(
                    "tunnel.address",
                    format!("{a:?} is not address/length"),
                    Some("e.g. 10.99.0.1/24"),
                );
                None
            }
        });
    let listen_port = match (t.listen_port, is_hub) {
        (None, Some(true)) => {
            c.push(
                "tunnel.listen_port",
                "missing: a hub must listen on a fixed UDP port",
                Some("listen_port = 51820"),
            );
            None
        }
        (None, _) => None,
        (Some(p), _) => c.int::<u16>("tunnel.listen_port", p, 1, 65535),
    };
    let mtu = t
        .mtu
        .map_or(Some(DEFAULT_MTU), |m| c.int("tunnel.mtu", m, 1280, 1500));
    let threads = t
        .threads
        .map_or(Some(DEFAULT_THREADS), |n| c.int("tunnel.threads", n, 1, 16));
    let facts = TunnelFacts {
        interface: interface.clone(),
        address,
        public_key: private_key.as_ref().map(PrivateKey::public_key),
    };
    let config = (|| {
        Some(TunnelConfig {
            interface: interface?,
            private_key: private_key?,
            address: address?,
            listen_port: if is_hub == Some(true) {
                Some(listen_port?)
            } else {
                listen_port
            },
            mtu: mtu?,
            threads: threads?,
        })
    })();
    (facts, config)
}
