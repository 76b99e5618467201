//! Policy rules: `fwmark → table`, tagged with townlink's protocol.

use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::IpVersion;

use super::{collect, request, Netlink, Result};
use crate::routing::{RuleSpec, PROTOCOL};

impl Netlink {
    /// Adds a rule. The action must be set explicitly: a rule without
    /// `ToTable` is of action "none" and makes lookups fail with EINVAL.
    pub async fn add_rule(&self, spec: &RuleSpec) -> Result<()> {
        let req = self
            .handle
            .rule()
            .add()
            .fw_mark(spec.fwmark)
            .table_id(spec.table)
            .priority(spec.priority)
            .action(RuleAction::ToTable);
        let what = format!(
            "adding rule fwmark {:#x} lookup {} priority {}",
            spec.fwmark, spec.table, spec.priority
        );
        if spec.ipv6 {
            let mut req = req.v6();
            req.message_mut()
                .attributes
                .push(RuleAttribute::Protocol(RouteProtocol::Other(PROTOCOL)));
            req.execute().await.map_err(request(what))
        } else {
            let mut req = req.v4();
            req.message_mut()
                .attributes
                .push(RuleAttribute::Protocol(RouteProtocol::Other(PROTOCOL)));
            req.execute().await.map_err(request(what))
        }
    }

    pub(super) async fn purge_rules(&self) -> Result<usize> {
        let mut n = 0;
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules = collect(self.handle.rule().get(version).execute(), "listing rules").await?;
            for rule in rules {
                let ours = rule
                    .attributes
                    .contains(&RuleAttribute::Protocol(RouteProtocol::Other(PROTOCOL)));
                if ours {
                    self.handle
                        .rule()
                        .del(rule)
                        .execute()
                        .await
                        .map_err(request("removing a townlink rule"))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}
