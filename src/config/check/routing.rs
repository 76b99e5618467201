//! `[routing]`: marks and tables.

use super::*;

pub(super) fn routing(c: &mut Checker, r: &RawRouting) -> RoutingConfig {
    let d = RoutingConfig::default();
    let table = r
        .table
        .and_then(|t| c.int("routing.table", t, 1, 0x7fff_0000))
        .unwrap_or(d.table);
    if (253..=255).contains(&table) {
        c.push(
            "routing.table",
            format!("{table} is a kernel table (default/main/local)"),
            Some("pick an unused number such as 7400"),
        );
    }
    RoutingConfig {
        table,
        fwmark: r
            .fwmark
            .and_then(|m| c.int("routing.fwmark", m, 1, 0x7fff_0000))
            .unwrap_or(d.fwmark),
        rule_priority: r
            .rule_priority
            .and_then(|p| c.int("routing.rule_priority", p, 1, 32000))
            .unwrap_or(d.rule_priority),
        forwarding: r.forwarding.unwrap_or(d.forwarding),
    }
}
