//! A backup hub follows the main hub's registry of sites (issue 18,
//! `docs/backup-site.md`): `[follow]` on the follower, `[[follower]]` on
//! the main hub.

use std::net::IpAddr;

use super::Endpoint;
use crate::fingerprint::Fingerprint;
use crate::keys::PublicKey;
use crate::sites::Name;

/// `[follow]`: this hub takes its enrolled sites from the main hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowConfig {
    /// The main hub's name, in messages.
    pub main: Name,
    /// The main hub's probe responder (`host:port`).
    pub endpoint: Endpoint,
    /// The main hub's probe certificate, pinned.
    pub fingerprint: Fingerprint,
}

impl FollowConfig {
    pub const DEFAULT_MAIN: &'static str = "main";
}

/// `[[follower]]`: a hub allowed to follow this hub's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerConfig {
    pub name: Name,
    /// Its probe certificate: the only one let in on the sync channel, and
    /// the one annexes pin for its probe responder.
    pub certificate: Fingerprint,
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Its public WireGuard endpoints (`host:port`), as annexes reach it.
    pub endpoints: Vec<Endpoint>,
    /// Its tunnel address: inside the tunnel network, never handed to a site.
    pub address: IpAddr,
    /// UDP port of its probe responder.
    pub probe_port: u16,
    /// The `[[hub]] priority` annexes give it (the main hub's is 0; lower
    /// is preferred).
    pub priority: u32,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::dir_with_key;
    use super::super::{parse, Config, Problem};

    const FP_MAIN: &str = "sha256:9f1c0d7ab2e4c6f8a0b1c2d3e4f5061728394a5b6c7d8e9f00112233445566aa";
    const FP_B: &str = "sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const FP_C: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const KEY_B: &str = "mUh16G0CQpm9WbQ7aWPZ9l4ikYs4bLIl/ITEvFOkjL8=";
    const KEY_C: &str = "NP4q3QepEoObHjgbFerNMll5fPiX7KuYR3vFeSrxXfE=";
    const KEY_SITE: &str = "HzSROooil3DBjUdp1e2Cb2CYWW5SgzBi3DKsb2P4sX4=";

    /// A complete `[[follower]]` table.
    fn table(name: &str, certificate: &str, key: &str, address: &str) -> String {
        format!(
            "[[follower]]\nname = \"{name}\"\ncertificate = \"{certificate}\"\n\
             public_key = \"{key}\"\nendpoints = [\"hub-{name}.example.net:51820\"]\n\
             address = \"{address}\"\n"
        )
    }

    fn hub(extra: &str, dir: &Path) -> Result<Config, Vec<Problem>> {
        let text = format!(
            "role = \"hub\"\n[tunnel]\ninterface = \"tl0\"\nprivate_key_file = \"k.key\"\n\
             address = \"10.99.0.1/24\"\nlisten_port = 51820\n\
             [probe]\ncertificate_file = \"p.crt\"\nkey_file = \"p.key\"\n{extra}"
        );
        parse(&text, dir)
    }

    fn listed(r: Result<Config, Vec<Problem>>) -> Vec<String> {
        r.unwrap_err()
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    #[test]
    fn a_follower_needs_the_main_hubs_endpoint_and_fingerprint() {
        let dir = dir_with_key();
        let got = listed(hub("[follow]\nname = \"Main hub\"\n", dir.path()));
        assert!(
            got.iter().any(|p| p.starts_with("follow.name: ")),
            "{got:?}"
        );
        assert!(
            got.contains(&"follow.endpoint: missing".to_string()),
            "{got:?}"
        );
        assert!(
            got.contains(&"follow.fingerprint: missing".to_string()),
            "{got:?}"
        );
        let got = listed(hub(
            "[follow]\nendpoint = \"hub-main\"\nfingerprint = \"sha256:12\"\n",
            dir.path(),
        ));
        assert!(
            got.iter()
                .any(|p| p.starts_with("follow.endpoint: expected host:port")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|p| p.starts_with("follow.fingerprint: ")),
            "{got:?}"
        );
    }

    #[test]
    fn a_follower_has_no_followers_and_enrolls_nothing() {
        let dir = dir_with_key();
        let got = listed(hub(
            &format!(
                "[follow]\nendpoint = \"hub-main.example.net:51821\"\nfingerprint = \"{FP_MAIN}\"\n\
                 [enrollment]\nendpoints = [\"hub-b.example.net:51820\"]\n\
                 {}",
                table("c", FP_C, KEY_C, "10.99.0.253")
            ),
            dir.path(),
        ));
        assert!(
            got.iter()
                .any(|p| p.starts_with("follower: a hub that follows another hub")),
            "{got:?}"
        );
        assert!(
            got.iter().any(
                |p| p.starts_with("enrollment: a hub that follows another hub")
                    && p.contains("come from main")
            ),
            "{got:?}"
        );
    }

    #[test]
    fn followers_have_distinct_names_certificates_keys_and_addresses() {
        let dir = dir_with_key();
        let got = listed(hub(
            &format!(
                "[[site]]\nname = \"annex-1\"\npublic_key = \"{KEY_SITE}\"\n\
                 address = \"10.99.0.2\"\ncertificate = \"{FP_C}\"\n\
                 {}{}{}[[follower]]\ncertificate = \"nope\"\n{}",
                table("backup", FP_B, KEY_B, "10.99.0.254"),
                table("backup", FP_B, KEY_B, "10.99.0.254"),
                table("other", FP_C, KEY_SITE, "10.99.0.2"),
                table("main", FP_MAIN, KEY_C, "10.99.1.9"),
            ),
            dir.path(),
        ));
        for expected in [
            "follower[1].name: backup is already the name of follower[0]",
            "follower[1].certificate: is already the certificate of follower[0]",
            "follower[1].public_key: is already the public key of follower[0]",
            "follower[1].address: 10.99.0.254 is already the address of follower[0]",
            "follower[2].certificate: is the certificate of site[0]",
            "follower[2].public_key: is the public key of site[0] (annex-1)",
            "follower[2].address: 10.99.0.2 is the address of site[0] (annex-1)",
            "follower[3].name: missing",
            "follower[3].public_key: missing",
            "follower[3].endpoints: missing",
            "follower[3].address: missing",
            "follower[4].name: main is this hub's name (enrollment.hub_name)",
            "follower[4].address: 10.99.1.9 is outside the tunnel network 10.99.0.0/24",
        ] {
            assert!(got.contains(&expected.to_string()), "{expected}: {got:?}");
        }
        assert!(
            got.iter()
                .any(|p| p.starts_with("follower[3].certificate: ")),
            "{got:?}"
        );
    }

    #[test]
    fn follow_and_follower_are_hub_settings() {
        let dir = dir_with_key();
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/annex.toml"),
        )
        .unwrap()
        .replace("/etc/townlink/private.key", "k.key")
        .replace("/etc/townlink/probe.crt", "p.crt")
        .replace("/etc/townlink/probe.key", "p.key");
        let text = format!(
            "{text}\n[follow]\nendpoint = \"h:1\"\nfingerprint = \"{FP_MAIN}\"\n\
             [[follower]]\nname = \"b\"\ncertificate = \"{FP_B}\"\n"
        );
        let got = listed(parse(&text, dir.path()));
        for key in ["follow", "follower"] {
            let expected = format!("{key}: is a hub setting, not valid with role = \"annex\"");
            assert!(got.contains(&expected), "{expected}: {got:?}");
        }
    }

    #[test]
    fn a_follower_and_a_main_hub_are_valid() {
        let dir = dir_with_key();
        let follower = hub(
            &format!(
                "[follow]\nendpoint = \"hub-main.example.net:51821\"\nfingerprint = \"{FP_MAIN}\"\n"
            ),
            dir.path(),
        )
        .unwrap();
        let super::super::Role::Hub(h) = follower.role else {
            panic!("hub expected")
        };
        let f = h.follow.unwrap();
        assert_eq!(f.main.as_str(), "main");
        assert_eq!(f.endpoint.to_string(), "hub-main.example.net:51821");
        assert_eq!(f.fingerprint.to_string(), FP_MAIN);
        assert!(h.followers.is_empty());
        let main = hub(
            &format!(
                "{}probe_port = 51900\n",
                table("backup", FP_B, KEY_B, "10.99.0.254")
            ),
            dir.path(),
        )
        .unwrap();
        let super::super::Role::Hub(h) = main.role else {
            panic!("hub expected")
        };
        assert!(h.follow.is_none());
        assert_eq!(h.followers.len(), 1);
        assert_eq!(h.followers[0].name.as_str(), "backup");
        assert_eq!(h.followers[0].certificate.to_string(), FP_B);
        assert_eq!(h.followers[0].public_key.to_string(), KEY_B);
        assert_eq!(
            h.followers[0].endpoints[0].to_string(),
            "hub-backup.example.net:51820"
        );
        assert_eq!(h.followers[0].address.to_string(), "10.99.0.254");
        assert_eq!(h.followers[0].probe_port, 51900);
        // The main hub is 0; a follower comes after it unless told.
        assert_eq!(h.followers[0].priority, 1);
    }

    #[test]
    fn a_followers_endpoints_priority_and_port_are_checked() {
        let dir = dir_with_key();
        let got = listed(hub(
            &format!(
                "{}{}",
                table("b", FP_B, KEY_B, "10.99.0.1").replace("[\"hub-b.example.net:51820\"]", "[]"),
                table("c", FP_C, KEY_C, "10.99.0.253").replace("hub-c.example.net:51820", "hub-c")
                    + "priority = 5000\nprobe_port = 0\n",
            ),
            dir.path(),
        ));
        for expected in [
            "follower[0].endpoints: is empty",
            "follower[0].address: 10.99.0.1 is this router's own tunnel address",
            "follower[1].priority: 5000 is out of range 0..=1000",
            "follower[1].probe_port: 0 is out of range 1..=65535",
        ] {
            assert!(got.contains(&expected.to_string()), "{expected}: {got:?}");
        }
        assert!(
            got.iter()
                .any(|p| p.starts_with("follower[1].endpoints[0]: expected host:port")),
            "{got:?}"
        );
    }
}
