//! `[[check]]`: end-to-end checks through the tunnel.

use super::*;

pub(super) fn checks(c: &mut Checker, raw: &[RawCheck]) -> Vec<CheckConfig> {
    let mut checks: Vec<CheckConfig> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let path = format!("check[{i}]");
        let name = c.name(&format!("{path}.name"), r.name.as_ref());
        if let Some(n) = &name {
            if checks.iter().any(|k| &k.name == n) {
                c.push(
                    format!("{path}.name"),
                    format!("{n} is used by another check"),
                    Some("give each check its own name"),
                );
            }
        }
        let tcp = c
            .required(
                &format!("{path}.tcp"),
                r.tcp.as_ref(),
                "the address:port to connect to, e.g. \"10.50.0.10:443\"",
            )
            .and_then(|t| {
                t.parse::<SocketAddr>()
                    .map_err(|_| {
                        c.push(
                            format!("{path}.tcp"),
                            format!("{t:?} is not an address:port"),
                            Some("write an IP address and a port, e.g. \"10.50.0.10:443\""),
                        )
                    })
                    .ok()
            });
        let interval = c.duration(
            &format!("{path}.interval"),
            r.interval.as_ref(),
            CheckConfig::DEFAULT_INTERVAL,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        );
        // Without a timeout of its own, a check waits at most until its next run.
        let default_timeout = interval.map_or(CheckConfig::DEFAULT_TIMEOUT, |i| {
            i.min(CheckConfig::DEFAULT_TIMEOUT)
        });
        let timeout = c.duration(
            &format!("{path}.timeout"),
            r.timeout.as_ref(),
            default_timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        );
        if let (Some(i), Some(t)) = (interval, timeout) {
            if t > i {
                c.push(
                    format!("{path}.timeout"),
                    "is longer than the check's interval",
                    Some("make the timeout shorter than the interval"),
                );
            }
        }
        if let (Some(name), Some(tcp), Some(interval), Some(timeout)) =
            (name, tcp, interval, timeout)
        {
            checks.push(CheckConfig {
                name,
                tcp,
                interval,
                timeout,
            });
        }
    }
    checks
}
