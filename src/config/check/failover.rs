//! `[failover]` (annex): the decision policy.

use super::*;

pub(super) fn failover(c: &mut Checker, f: &RawFailover) -> Option<Policy> {
    let d = Policy::default();
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let down_after_lost = f.down_after_lost.map_or(Some(d.down_after_lost), |n| {
        c.int("failover.down_after_lost", n, 1, 100)
    });
    let holddown = c.duration(
        "failover.holddown",
        f.holddown.as_ref(),
        d.holddown,
        s(0),
        s(3600),
    );
    let window = c.duration(
        "failover.sla_window",
        f.sla_window.as_ref(),
        d.sla.window,
        ms(500),
        s(600),
    );
    let min_samples = f.sla_min_samples.map_or(Some(d.sla.min_samples), |n| {
        c.int("failover.sla_min_samples", n, 1, 10_000)
    });
    let max_loss = match f.max_loss {
        None => Some(d.sla.max_loss),
        Some(l) if (0.0..=1.0).contains(&l) => Some(l),
        Some(l) => {
            c.push(
                "failover.max_loss",
                format!("{l} is not a ratio from 0 to 1"),
                Some("e.g. max_loss = 0.10 for 10 %"),
            );
            None
        }
    };
    let max_rtt = c.duration(
        "failover.max_rtt",
        f.max_rtt.as_ref(),
        d.sla.max_rtt,
        ms(1),
        s(60),
    );
    let max_jitter = c.duration(
        "failover.max_jitter",
        f.max_jitter.as_ref(),
        d.sla.max_jitter,
        ms(1),
        s(60),
    );
    let sustain = c.duration(
        "failover.sla_sustain",
        f.sla_sustain.as_ref(),
        d.sla.sustain,
        s(0),
        s(600),
    );
    let max_holddown = c.duration(
        "failover.max_holddown",
        f.max_holddown.as_ref(),
        d.damping.max_holddown,
        s(0),
        s(86_400),
    );
    if let (Some(max), Some(base)) = (max_holddown, holddown) {
        if max < base {
            c.push(
                "failover.max_holddown",
                format!(
                    "{} is shorter than failover.holddown ({})",
                    humantime::format_duration(max),
                    humantime::format_duration(base)
                ),
                Some("the hold-down grows from holddown up to max_holddown; make max_holddown at least holddown"),
            );
        }
    }
    let half_life = c.duration(
        "failover.damping_half_life",
        f.damping_half_life.as_ref(),
        d.damping.half_life,
        s(1),
        s(86_400),
    );
    let probation = c.duration(
        "failover.probation",
        f.probation.as_ref(),
        d.damping.probation,
        s(0),
        s(3600),
    );
    let prefer = match f.prefer.as_deref() {
        None => Some(d.prefer),
        Some(word) => {
            let prefer = Prefer::parse(word);
            if prefer.is_none() {
                c.push(
                    "failover.prefer",
                    format!("{word:?} is neither \"uplink\" nor \"hub\""),
                    Some("prefer = \"uplink\" (the best uplink, then the best hub on it: the default) or prefer = \"hub\" (the preferred hub at any cost)"),
                );
            }
            prefer
        }
    };
    Some(Policy {
        down_after_lost: down_after_lost?,
        sla: Sla {
            window: window?,
            min_samples: min_samples?,
            max_loss: max_loss?,
            max_rtt: max_rtt?,
            max_jitter: max_jitter?,
            sustain: sustain?,
        },
        holddown: holddown?,
        damping: Damping {
            half_life: half_life?,
            max_holddown: max_holddown?,
            probation: probation?,
        },
        prefer: prefer?,
    })
}
