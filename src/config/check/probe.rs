//! `[probe]`: the certificate's files and the probe rates.

use super::*;

pub(super) fn probe(
    c: &mut Checker,
    p: &RawProbe,
    base: &Path,
    is_hub: Option<bool>,
) -> Option<ProbeConfig> {
    let cert = c.required(
        "probe.certificate_file",
        p.certificate_file.as_ref(),
        "the certificate made by `townlink gencert` (PEM)",
    );
    let key = c.required(
        "probe.key_file",
        p.key_file.as_ref(),
        "the certificate's key made by `townlink gencert` (PEM, mode 0600)",
    );
    // Read and parsed where they are used (`daemon::load`): here, only
    // whether they can be read, and the key's mode. Both files are looked
    // at, so that both are reported missing.
    let (cert, key) = (cert.map(|f| base.join(f)), key.map(|f| base.join(f)));
    let create = match (&cert, &key) {
        (Some(cert), Some(key)) => format!(
            "make both files: townlink gencert --name NAME --cert {} --key {}",
            cert.display(),
            key.display()
        ),
        _ => "make a new pair with `townlink gencert`".to_string(),
    };
    let certificate_file = cert.filter(|file| {
        std::fs::File::open(file)
            .map_err(|e| {
                c.push(
                    "probe.certificate_file",
                    format!("cannot read {}: {e}", file.display()),
                    Some(&create),
                )
            })
            .is_ok()
    });
    let key_file = key.filter(|file| c.secret_file("probe.key_file", file, &create));
    let listen_port = match (p.listen_port, is_hub) {
        (Some(_), Some(false)) => {
            c.push(
                "probe.listen_port",
                "is a hub setting",
                Some("an annex sets hub[0].probe_port"),
            );
            None
        }
        (Some(port), _) => c.int::<u16>("probe.listen_port", port, 1, 65535),
        (None, _) => Some(DEFAULT_PROBE_PORT),
    };
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let interval = c.duration(
        "probe.interval",
        p.interval.as_ref(),
        ProbeConfig::DEFAULT_INTERVAL,
        ms(20),
        s(10),
    );
    let standby_interval = c.duration(
        "probe.standby_interval",
        p.standby_interval.as_ref(),
        ProbeConfig::DEFAULT_STANDBY_INTERVAL,
        ms(20),
        s(60),
    );
    let metered_interval = c.duration(
        "probe.metered_interval",
        p.metered_interval.as_ref(),
        ProbeConfig::DEFAULT_METERED_INTERVAL,
        ms(20),
        s(60),
    );
    let timeout = c.duration(
        "probe.timeout",
        p.timeout.as_ref(),
        ProbeConfig::DEFAULT_TIMEOUT,
        ms(20),
        s(10),
    );
    Some(ProbeConfig {
        certificate_file: certificate_file?,
        key_file: key_file?,
        listen_port: listen_port?,
        interval: interval?,
        standby_interval: standby_interval?,
        metered_interval: metered_interval?,
        timeout: timeout?,
    })
}
