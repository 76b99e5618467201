//! `[control]` (the local control socket) and `[metrics]`.

use super::*;

pub(super) fn control(c: &mut Checker, raw: Option<&RawControl>, base: &Path) -> ControlConfig {
    let raw = raw.map_or((None, None), |r| (r.socket.as_ref(), r.group.as_ref()));
    let socket = match raw.0 {
        Some(p) if p.is_empty() => {
            c.push(
                "control.socket",
                "is empty",
                Some("give a path, e.g. /run/townlink/townlink.sock"),
            );
            PathBuf::new()
        }
        Some(p) => base.join(p),
        None => PathBuf::from(DEFAULT_CONTROL_SOCKET),
    };
    let group = raw.1.cloned();
    match group.as_deref() {
        Some("") => c.push(
            "control.group",
            "is empty",
            Some("name a group, or remove the key (mode 0600, root only)"),
        ),
        Some(name) => match group_id(name) {
            Ok(Some(_)) => {}
            Ok(None) => c.push(
                "control.group",
                format!("group {name:?} does not exist on this machine"),
                Some("create it (groupadd), or remove the key (mode 0600, root only)"),
            ),
            Err(e) => c.push(
                "control.group",
                format!("cannot look up group {name:?}: {e}"),
                None,
            ),
        },
        None => {}
    }
    ControlConfig { socket, group }
}

pub(super) fn metrics(c: &mut Checker, raw: Option<&RawMetrics>) -> MetricsConfig {
    let enabled = raw.and_then(|r| r.enabled).unwrap_or(true);
    let text = raw
        .and_then(|r| r.listen.as_deref())
        .unwrap_or(DEFAULT_METRICS_LISTEN);
    let listen = match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.push(
                "metrics.listen",
                format!("{text:?} is not an address:port"),
                Some("e.g. \"127.0.0.1:9475\", or the management address of the router"),
            );
            None
        }
    };
    MetricsConfig {
        listen: listen.filter(|_| enabled),
    }
}
