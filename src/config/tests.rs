use std::os::unix::fs::PermissionsExt;

use super::*;

/// A directory with a private key file `k.key` (mode 0600) and a probe
/// certificate `p.crt` with its key `p.key`.
pub(crate) fn dir_with_key() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    std::fs::write(&key, PrivateKey::generate().to_base64_secret()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // What `townlink gencert` makes (rcgen directly: config is below probe).
    let id = rcgen::generate_simple_self_signed(vec!["test".to_string()]).unwrap();
    crate::fsutil::write_atomic(&dir.path().join("p.crt"), id.cert.pem().as_bytes(), 0o644)
        .unwrap();
    crate::fsutil::write_atomic(
        &dir.path().join("p.key"),
        id.signing_key.serialize_pem().as_bytes(),
        0o600,
    )
    .unwrap();
    dir
}

/// The `[probe]` section pointing at `dir_with_key`'s files.
const PROBE: &str = "[probe]\ncertificate_file = \"p.crt\"\nkey_file = \"p.key\"\n";

/// Replaces the example files' absolute paths by `dir_with_key`'s files.
fn localize(text: &str) -> String {
    text.replace("/etc/townlink/private.key", "k.key")
        .replace("/etc/townlink/probe.crt", "p.crt")
        .replace("/etc/townlink/probe.key", "p.key")
}

/// Parses an example file from `config/`, pointing its key file at `dir`.
pub(crate) fn example(name: &str, dir: &Path) -> Result<Config, Vec<Problem>> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name),
    )
    .unwrap();
    parse(&localize(&text), dir)
}

fn paths(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.path.as_str()).collect()
}

#[test]
fn examples_are_valid_and_get_defaults() {
    let dir = dir_with_key();
    let annex = example("annex.toml", dir.path()).unwrap();
    assert_eq!(annex.tunnel.mtu, DEFAULT_MTU);
    assert_eq!(annex.tunnel.listen_port, None);
    assert_eq!(annex.routing, RoutingConfig::default());
    let Role::Annex(a) = &annex.role else {
        panic!("annex expected")
    };
    assert_eq!(a.hubs.len(), 1);
    assert_eq!(a.hubs[0].keepalive, DEFAULT_KEEPALIVE);
    assert_eq!(a.hubs[0].endpoint.to_string(), "hub.example.net:51820");
    assert_eq!(a.uplinks[1].gateway, None, "lte learns its gateway");
    assert_eq!(a.preferred_uplink().1.name.as_str(), "fiber");

    let hub = example("hub.toml", dir.path()).unwrap();
    let Role::Hub(h) = &hub.role else {
        panic!("hub expected")
    };
    // The hub example enrolls no site: its [[site]] tables are templates,
    // commented out (issue 15: they were phantom sites holding .2 and .3).
    assert_eq!(h.sites.len(), 0);
    assert_eq!(hub.tunnel.listen_port, Some(51820));
}

/// The hub example with its commented `[[site]]` tables uncommented
/// (two sites), its key files pointed at `dir`.
pub(crate) fn hub_example_with_sites(dir: &Path) -> Result<Config, Vec<Problem>> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hub.toml"))
            .unwrap();
    let mut uncommented = String::new();
    let mut in_sites = false;
    for line in text.lines() {
        if line == "# [[site]]" {
            in_sites = true;
        } else if in_sites && !line.starts_with('#') {
            in_sites = false;
        }
        match line.strip_prefix("# ").filter(|_| in_sites) {
            Some(l) => uncommented.push_str(l),
            None => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    parse(&localize(&uncommented), dir)
}

#[test]
fn the_hub_examples_site_tables_are_valid_once_uncommented() {
    let dir = dir_with_key();
    let Role::Hub(h) = hub_example_with_sites(dir.path()).unwrap().role else {
        panic!("hub expected")
    };
    assert_eq!(h.sites.len(), 2);
}

#[test]
fn both_missing_probe_files_are_reported_with_how_to_make_them() {
    let dir = dir_with_key();
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/annex.toml"))
            .unwrap();
    let text = localize(&text)
        .replace("\"p.crt\"", "\"none.crt\"")
        .replace("\"p.key\"", "\"none.key\"")
        .replace("\"k.key\"", "\"none-private.key\"");
    let problems = parse(&text, dir.path()).unwrap_err();
    assert_eq!(
        paths(&problems),
        vec![
            "tunnel.private_key_file",
            "probe.certificate_file",
            "probe.key_file"
        ],
        "{problems:?}"
    );
    let hint = |i: usize| problems[i].hint.clone().unwrap_or_default();
    assert!(hint(0).contains("townlink genkey > "), "{}", hint(0));
    for i in [1, 2] {
        assert!(hint(i).contains("townlink gencert --name"), "{}", hint(i));
    }
}

#[test]
fn hints_name_the_installed_reference_not_the_source_tree() {
    let dir = dir_with_key();
    let problems = annex_with("[control]\nsockt = \"x\"\n", dir.path()).unwrap_err();
    let unknown = problems
        .iter()
        .find(|p| p.message == "unknown key")
        .unwrap_or_else(|| panic!("{problems:?}"));
    let hint = unknown.hint.as_deref().unwrap();
    assert!(hint.contains(CONFIGURATION_DOC), "{hint}");
    // The package installs the guides there (Cargo.toml, package.metadata.deb).
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("[\"docs/*.md\", \"usr/share/doc/townlink/\", \"644\"]"),
        "the guides are not installed where the hints say"
    );
    let file = Path::new(CONFIGURATION_DOC).file_name().unwrap();
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(file)
        .exists());
}

#[test]
fn unknown_keys_are_reported_with_their_path() {
    let dir = dir_with_key();
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/annex.toml"))
            .unwrap();
    let text = localize(&text)
        .replace("priority = 1\n", "priority = 1\ngatway = \"1.2.3.4\"\n")
        .replace("[tunnel]\n", "[tunnel]\nmtuu = 1400\n");
    let problems = parse(&text, dir.path()).unwrap_err();
    assert_eq!(paths(&problems), vec!["tunnel.mtuu", "uplink[1].gatway"]);
    assert!(problems.iter().all(|p| p.message == "unknown key"));
}

#[test]
fn syntax_errors_name_the_line() {
    let problems = parse("role = \"hub\"\n[tunnel\n", Path::new(".")).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].message.starts_with("line 2:"),
        "{}",
        problems[0]
    );
}

#[test]
fn wrong_type_is_reported_with_its_key_path() {
    let problems = parse(
        "role = \"hub\"\n[tunnel]\nlisten_port = \"x\"\n",
        Path::new("."),
    )
    .unwrap_err();
    // The rest of the file is checked too (what is missing).
    assert_eq!(
        listed(&problems),
        vec![
            "tunnel.listen_port: is a string, expected an integer",
            "tunnel.interface: missing",
            "tunnel.private_key_file: missing",
            "tunnel.address: missing",
            "probe: missing section",
        ]
    );
}

#[test]
fn hub_site_mistakes_are_all_listed() {
    let dir = dir_with_key();
    let own = std::fs::read_to_string(dir.path().join("k.key"))
        .unwrap()
        .parse::<PrivateKey>()
        .unwrap()
        .public_key();
    let other = PrivateKey::generate().public_key();
    let text = format!(
        r#"role = "hub"
[tunnel]
interface = "tl0"
private_key_file = "k.key"
address = "10.99.0.1/24"
listen_port = 51820
{PROBE}
[[site]]
name = "a"
public_key = "{other}"
address = "10.99.0.2"
lan = ["192.168.1.0/24"]
[[site]]
name = "a"
public_key = "{own}"
address = "10.98.0.3"
lan = ["192.168.1.7/24", "10.99.0.0/25"]
"#
    );
    let problems = parse(&text, dir.path()).unwrap_err();
    let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        paths(&problems),
        vec![
            "site[1].name",
            "site[1].public_key",
            "site[1].address",
            "site[1].lan[0]",
            "site[1].lan[1]",
        ],
        "{shown:#?}"
    );
    assert!(
        shown[0].contains("a is already the name of site[0]"),
        "{shown:#?}"
    );
    assert!(
        shown[3].contains("did you mean 192.168.1.0/24?"),
        "{shown:#?}"
    );
    assert!(
        shown[4].contains("overlaps the tunnel network 10.99.0.0/24"),
        "{shown:#?}"
    );

    // With those fixed and the name changed, the LAN overlap remains.
    let text = text
        .replace(
            &format!("name = \"a\"\npublic_key = \"{own}\""),
            &format!("name = \"b\"\npublic_key = \"{own}\""),
        )
        .replace(
            &format!("public_key = \"{own}\""),
            &format!("public_key = \"{}\"", PrivateKey::generate().public_key()),
        )
        .replace("10.98.0.3", "10.99.0.3")
        .replace("\"192.168.1.7/24\", \"10.99.0.0/25\"", "\"192.168.1.0/25\"");
    let problems = parse(&text, dir.path()).unwrap_err();
    assert_eq!(
        listed(&problems),
        vec!["site[1].lan[0]: 192.168.1.0/25 overlaps 192.168.1.0/24 of site[0] (a)"]
    );
}

#[test]
fn missing_everything_is_listed_at_once() {
    let problems = parse("role = \"annex\"\n", Path::new(".")).unwrap_err();
    assert_eq!(
        paths(&problems),
        vec!["tunnel", "probe", "name", "hub", "uplink"]
    );
    let problems = parse("", Path::new(".")).unwrap_err();
    assert_eq!(paths(&problems), vec!["role", "tunnel", "probe"]);
}

#[test]
fn missing_key_file_and_hub_listen_port() {
    let problems = parse(
        "role = \"hub\"\n[tunnel]\ninterface = \"tl0\"\nprivate_key_file = \"nope.key\"\naddress = \"10.99.0.1/24\"\n",
        Path::new("/nonexistent"),
    )
    .unwrap_err();
    assert_eq!(
        paths(&problems),
        vec!["tunnel.private_key_file", "tunnel.listen_port", "probe"]
    );
    assert!(problems[0].message.contains("/nonexistent/nope.key"));
}

#[test]
fn key_file_content_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    std::fs::write(&key, "SECRET-NOT-A-KEY").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let problems = parse(
        "role = \"hub\"\n[tunnel]\ninterface = \"tl0\"\nprivate_key_file = \"k.key\"\naddress = \"10.99.0.1/24\"\nlisten_port = 1\n",
        dir.path(),
    )
    .unwrap_err();
    assert_eq!(paths(&problems), vec!["tunnel.private_key_file", "probe"]);
    assert!(!problems[0].to_string().contains("SECRET"));
}

#[test]
fn endpoints() {
    assert_eq!(
        Endpoint::parse("198.18.0.2:51820").unwrap().to_string(),
        "198.18.0.2:51820"
    );
    assert_eq!(
        Endpoint::parse("[2001:db8::1]:51820").unwrap().to_string(),
        "[2001:db8::1]:51820"
    );
    assert!(Endpoint::parse("hub.example.net").is_err());
    assert!(Endpoint::parse("hub.example.net:0").is_err());
    assert!(Endpoint::parse("hub..net:1").is_err());
    assert!(
        Endpoint::parse("2001:db8::1:51820").is_err(),
        "IPv6 needs brackets"
    );
}

/// The annex example with `extra` appended (new sections at the end).
fn annex_with(extra: &str, dir: &Path) -> Result<Config, Vec<Problem>> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/annex.toml"))
            .unwrap();
    parse(&format!("{}\n{extra}", localize(&text)), dir)
}

#[test]
fn control_metrics_and_checks_get_defaults() {
    let dir = dir_with_key();
    let c = example("annex.toml", dir.path()).unwrap();
    assert_eq!(c.control.socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
    assert_eq!(c.control.group, None);
    assert_eq!(
        c.metrics.listen,
        Some(DEFAULT_METRICS_LISTEN.parse().unwrap())
    );
    assert_eq!(c.checks.len(), 1);
    assert_eq!(c.checks[0].name.as_str(), "records");
    assert_eq!(c.checks[0].interval, CheckConfig::DEFAULT_INTERVAL);
    assert_eq!(c.checks[0].timeout, CheckConfig::DEFAULT_TIMEOUT);

    let c = annex_with(
        "[control]\nsocket = \"run/tl.sock\"\ngroup = \"root\"\n[metrics]\nenabled = false\n[[check]]\nname = \"fast\"\ntcp = \"10.50.0.10:80\"\ninterval = \"1s\"\n",
        dir.path(),
    )
    .unwrap();
    // Relative to the config file, like every other path.
    assert_eq!(c.control.socket, dir.path().join("run/tl.sock"));
    assert_eq!(c.control.group.as_deref(), Some("root"));
    assert_eq!(c.metrics.listen, None);
    // Without a timeout of its own, a check waits at most until its next run.
    assert_eq!(c.checks[1].timeout, std::time::Duration::from_secs(1));
}

#[test]
fn control_metrics_and_check_mistakes_are_all_listed() {
    let dir = dir_with_key();
    let problems = annex_with(
        "[control]\nsocket = \"\"\n[metrics]\nlisten = \"localhost\"\n\
         [[check]]\nname = \"records\"\ntcp = \"10.50.0.10\"\n\
         [[check]]\nname = \"slow\"\ntcp = \"10.50.0.10:80\"\ninterval = \"5s\"\ntimeout = \"10s\"\n\
         [[check]]\ntcp = \"10.50.0.10:80\"\n",
        dir.path(),
    )
    .unwrap_err();
    assert_eq!(
        paths(&problems),
        vec![
            "control.socket",
            "metrics.listen",
            "check[1].name",
            "check[1].tcp",
            "check[2].timeout",
            "check[3].name",
        ],
        "{problems:?}"
    );
}

#[test]
fn the_cli_finds_the_control_socket_in_the_config() {
    let dir = dir_with_key();
    let file = dir.path().join("townlink.toml");
    std::fs::write(&file, "role = \"annex\"\n[control]\nsocket = \"tl.sock\"\n").unwrap();
    assert_eq!(control_socket(&file), dir.path().join("tl.sock"));
    std::fs::write(&file, "role = \"annex\"\n").unwrap();
    assert_eq!(control_socket(&file), PathBuf::from(DEFAULT_CONTROL_SOCKET));
    assert_eq!(
        control_socket(&dir.path().join("missing.toml")),
        PathBuf::from(DEFAULT_CONTROL_SOCKET)
    );
}

#[test]
fn enrollment_settings_and_mistakes() {
    let dir = dir_with_key();
    let hub = example("hub.toml", dir.path()).unwrap();
    let Role::Hub(h) = &hub.role else {
        panic!("hub expected")
    };
    let e = &h.enrollment;
    assert_eq!(e.endpoints[0].to_string(), "hub.example.net:51820");
    assert_eq!(e.routes.len(), 2);
    assert_eq!(e.pool, "10.99.0.0/24".parse::<IpNet>().unwrap());
    assert_eq!(e.registry, PathBuf::from(DEFAULT_REGISTRY));
    assert_eq!(e.token_ttl, EnrollmentConfig::DEFAULT_TOKEN_TTL);
    assert_eq!(e.hub_name.as_str(), "main");

    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hub.toml"))
            .unwrap();
    let text = localize(&text).replace(
        "endpoints = [\"hub.example.net:51820\"]",
        "endpoints = [\"hub.example.net\"]\npool = \"10.98.0.0/24\"\ntoken_ttl = \"90d\"\nregistry = \"reg/sites.json\"",
    );
    let problems = parse(&text, dir.path()).unwrap_err();
    assert_eq!(
        paths(&problems),
        vec![
            "enrollment.endpoints[0]",
            "enrollment.pool",
            "enrollment.token_ttl"
        ],
        "{problems:?}"
    );

    // A relative registry path starts at the config file's directory.
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hub.toml"))
            .unwrap();
    let text = localize(&text).replace(
        "[enrollment]\n",
        "[enrollment]\nregistry = \"reg/sites.json\"\n",
    );
    let Role::Hub(h) = parse(&text, dir.path()).unwrap().role else {
        panic!("hub expected")
    };
    assert_eq!(h.enrollment.registry, dir.path().join("reg/sites.json"));

    // Not an annex setting.
    let problems = annex_with("[enrollment]\nendpoints = []\n", dir.path()).unwrap_err();
    assert_eq!(paths(&problems), vec!["enrollment"]);
}

#[test]
fn the_hub_hands_its_records_check_to_enrolled_annexes() {
    let dir = dir_with_key();
    let Role::Hub(h) = example("hub.toml", dir.path()).unwrap().role else {
        panic!("hub expected")
    };
    assert_eq!(
        h.enrollment.checks,
        vec![EnrollmentCheck {
            name: Name::new("records").unwrap(),
            tcp: "10.50.0.10:443".parse().unwrap()
        }]
    );
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hub.toml"))
            .unwrap();
    let with = |check: &str| {
        let text = localize(&text).replace("check = \"10.50.0.10:443\"", check);
        parse(&text, dir.path())
    };
    let Role::Hub(h) = with("check = [\"10.50.0.10:443\", \"mail=10.50.0.20:25\"]")
        .unwrap()
        .role
    else {
        panic!("hub expected")
    };
    let names: Vec<&str> = h
        .enrollment
        .checks
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, vec!["records", "mail"]);
    let problems =
        with("check = [\"10.50.0.10\", \"a=10.50.0.11:1\", \"a=10.50.0.12:1\", \"172.16.0.1:80\"]")
            .unwrap_err();
    assert_eq!(
        paths(&problems),
        vec![
            "enrollment.check[0]",
            "enrollment.check[2]",
            "enrollment.check[3]"
        ],
        "{problems:?}"
    );
    assert!(problems[2].message.contains("not inside enrollment.routes"));
}

#[test]
fn state_directory_defaults_and_is_relative_to_the_config() {
    let dir = dir_with_key();
    let c = example("annex.toml", dir.path()).unwrap();
    assert_eq!(c.state_directory, PathBuf::from(DEFAULT_STATE_DIRECTORY));
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/annex.toml"))
            .unwrap();
    // A top-level key: before the first table.
    let c = parse(
        &format!("state_directory = \"state\"\n{}", localize(&text)),
        dir.path(),
    )
    .unwrap();
    assert_eq!(c.state_directory, dir.path().join("state"));
    let problems = parse(
        &format!("state_directory = \"\"\n{}", localize(&text)),
        dir.path(),
    )
    .unwrap_err();
    assert_eq!(paths(&problems), vec!["state_directory"]);
}

/// A hub config: `tunnel_extra` lines in `[tunnel]`, then `rest` (sections).
fn hub_text(tunnel_extra: &str, rest: &str) -> String {
    format!(
        "role = \"hub\"\n[tunnel]\ninterface = \"tl0\"\nprivate_key_file = \"k.key\"\n\
         address = \"10.99.0.1/24\"\n{tunnel_extra}\n{PROBE}\n{rest}"
    )
}

/// The problems as `path: message`, for assertions on the whole list.
fn listed(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect()
}

#[test]
fn a_second_site_with_four_mistakes_and_a_bad_port_gives_five_problems() {
    // Issue 16, item 6: the duplicate name and the LAN overlap were missing.
    let dir = dir_with_key();
    let first = PrivateKey::generate().public_key();
    let zero = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let text = hub_text(
        "listen_port = 0",
        &format!(
            "[[site]]\nname = \"a\"\npublic_key = \"{first}\"\naddress = \"10.99.0.2\"\n\
             lan = [\"192.168.1.0/24\"]\n\
             [[site]]\nname = \"a\"\npublic_key = \"{zero}\"\naddress = \"10.98.0.3\"\n\
             lan = [\"192.168.1.0/25\"]\n"
        ),
    );
    let problems = parse(&text, dir.path()).unwrap_err();
    assert_eq!(
        listed(&problems),
        vec![
            "tunnel.listen_port: 0 is out of range 1..=65535",
            "site[1].name: a is already the name of site[0]",
            "site[1].public_key: key is a low-order Curve25519 point (e.g. all zeros): it would give an all-zero shared secret",
            "site[1].address: 10.98.0.3 is outside the tunnel network 10.99.0.0/24",
            "site[1].lan[0]: 192.168.1.0/25 overlaps 192.168.1.0/24 of site[0] (a)",
        ],
        "{problems:#?}"
    );
}

#[test]
fn sites_sharing_a_key_an_address_or_a_certificate_are_named_by_key_path() {
    let dir = dir_with_key();
    let key = PrivateKey::generate().public_key();
    let cert = format!("sha256:{}", "ab".repeat(32));
    let site = |name: &str, lan: &str| {
        format!(
            "[[site]]\nname = \"{name}\"\npublic_key = \"{key}\"\naddress = \"10.99.0.2\"\n\
             lan = [\"{lan}\"]\ncertificate = \"{cert}\"\n"
        )
    };
    let text = hub_text(
        "listen_port = 51820",
        &format!(
            "{}{}",
            site("a", "192.168.1.0/24"),
            site("b", "192.168.0.0/16")
        ),
    );
    let problems = parse(&text, dir.path()).unwrap_err();
    assert_eq!(
        listed(&problems),
        vec![
            "site[1].public_key: is already the public key of site[0] (a)",
            "site[1].address: 10.99.0.2 is already the address of site[0] (a)",
            "site[1].lan[0]: 192.168.0.0/16 overlaps 192.168.1.0/24 of site[0] (a)",
            "site[1].certificate: is already the certificate of site[0] (a)",
        ],
        "{problems:#?}"
    );
}

#[test]
fn a_control_group_that_does_not_exist_is_a_problem() {
    let dir = dir_with_key();
    let problems =
        annex_with("[control]\ngroup = \"no-such-group-tl16\"\n", dir.path()).unwrap_err();
    assert_eq!(
        listed(&problems),
        vec!["control.group: group \"no-such-group-tl16\" does not exist on this machine"],
    );
    // An existing group passes.
    annex_with("[control]\ngroup = \"root\"\n", dir.path()).unwrap();
}

#[test]
fn values_of_the_wrong_type_are_named_by_key_path_and_the_rest_is_checked() {
    let dir = dir_with_key();
    let text = hub_text(
        "listen_port = 51820\nmtu = \"1420\"\nthreads = 0",
        "[[site]]\nname = \"a\"\npublic_key = 7\naddress = \"10.99.0.2\"\nlan = \"192.168.1.0/24\"\n\
         [enrollment]\nkeepalive = true\n",
    );
    let problems = parse(&text, dir.path()).unwrap_err();
    assert_eq!(
        listed(&problems),
        vec![
            "tunnel.mtu: is a string, expected an integer",
            "site[0].public_key: is an integer, expected a string",
            "site[0].lan: is a string, expected a list",
            "enrollment.keepalive: is a boolean, expected an integer",
            "tunnel.threads: 0 is out of range 1..=16",
        ],
        "{problems:#?}"
    );
    assert!(
        problems[0].hint.as_deref().unwrap().contains("quote"),
        "{:?}",
        problems[0]
    );
}

#[test]
fn a_site_lan_cannot_take_the_hubs_routes() {
    // Issue 16, item 1: 128.0.0.0/1 and the records network passed.
    let dir = dir_with_key();
    let key = PrivateKey::generate().public_key();
    let text = hub_text(
        "listen_port = 51820",
        &format!(
            "[enrollment]\nroutes = [\"10.50.0.0/24\", \"192.168.0.0/16\"]\n\
             [[site]]\nname = \"a\"\npublic_key = \"{key}\"\naddress = \"10.99.0.2\"\n\
             lan = [\"128.0.0.0/1\", \"10.50.0.0/24\", \"0.0.0.0/0\", \"192.168.1.0/24\", \
             \"10.99.0.0/28\", \"127.0.0.0/8\"]\n"
        ),
    );
    let problems = parse(&text, dir.path()).unwrap_err();
    assert_eq!(
        listed(&problems),
        vec![
            "site[0].lan[0]: 128.0.0.0/1 is wider than /8: a site's LAN that large would take \
             the hub's routes to a large part of the Internet",
            "site[0].lan[1]: 10.50.0.0/24 overlaps enrollment.routes[0] 10.50.0.0/24",
            "site[0].lan[2]: 0.0.0.0/0 is wider than /8: a site's LAN that large would take \
             the hub's routes to a large part of the Internet",
            "site[0].lan[4]: 10.99.0.0/28 overlaps the tunnel network 10.99.0.0/24",
            "site[0].lan[5]: 127.0.0.0/8 overlaps 127.0.0.0/8 (loopback)",
        ],
        "{problems:#?}"
    );
}

#[test]
fn wrong_types_inside_lists_and_tables_of_lists_are_named() {
    let dir = dir_with_key();
    let key = PrivateKey::generate().public_key();
    let text = hub_text(
        "listen_port = 51820",
        &format!(
            "[[site]]\nname = \"a\"\npublic_key = \"{key}\"\naddress = \"10.99.0.2\"\n\
             [[site]]\nname = \"b\"\npublic_key = \"{key}\"\naddress = \"10.99.0.3\"\nlan = [7]\n\
             [[check]]\nname = \"c\"\ntcp = \"10.50.0.10:80\"\ninterval = 10\n"
        ),
    );
    let problems = parse(&text, dir.path()).unwrap_err();
    assert_eq!(
        listed(&problems),
        vec![
            "site[1].lan[0]: is an integer, expected a string",
            "check[0].interval: is an integer, expected a string",
            "site[1].public_key: is already the public key of site[0] (a)",
        ],
        "{problems:#?}"
    );
    let problems = parse("role = \"hub\"\nsite = [1]\n", dir.path()).unwrap_err();
    assert_eq!(
        listed(&problems)[0],
        "site[0]: is an integer, expected a table"
    );
}

#[test]
fn failover_damping_keys_and_mistakes() {
    let dir = dir_with_key();
    let c = example("annex.toml", dir.path()).unwrap();
    let Role::Annex(a) = &c.role else {
        panic!("annex expected")
    };
    assert_eq!(a.failover, crate::decision::Policy::default());
    let c = annex_with(
        "[failover]\nholddown = \"5s\"\nmax_holddown = \"2m\"\ndamping_half_life = \"15m\"\nprobation = \"1m\"\n",
        dir.path(),
    )
    .unwrap();
    let Role::Annex(a) = &c.role else {
        panic!("annex expected")
    };
    let s = std::time::Duration::from_secs;
    assert_eq!(a.failover.holddown, s(5));
    assert_eq!(a.failover.damping.max_holddown, s(120));
    assert_eq!(a.failover.damping.half_life, s(900));
    assert_eq!(a.failover.damping.probation, s(60));

    let problems = annex_with(
        "[failover]\nholddown = \"30s\"\nmax_holddown = \"20s\"\ndamping_half_life = \"0s\"\nprobation = \"soon\"\n",
        dir.path(),
    )
    .unwrap_err();
    assert_eq!(
        paths(&problems),
        vec![
            "failover.max_holddown",
            "failover.damping_half_life",
            "failover.probation",
        ],
        "{problems:?}"
    );
    let shorter = &problems[0];
    assert!(
        shorter.message.contains("shorter than failover.holddown"),
        "{shorter:?}"
    );
}

/// `[failover] prefer`: "uplink" by default, "hub" on request, any other
/// word refused with the two choices.
#[test]
fn failover_prefer_key() {
    use crate::decision::Prefer;
    let dir = dir_with_key();
    let prefer = |text: &str| match annex_with(text, dir.path()).map(|c| c.role) {
        Ok(Role::Annex(a)) => Ok(a.failover.prefer),
        Ok(Role::Hub(_)) => panic!("annex expected"),
        Err(problems) => Err(problems),
    };
    assert_eq!(prefer("").unwrap(), Prefer::Uplink);
    assert_eq!(
        prefer("[failover]\nprefer = \"uplink\"\n").unwrap(),
        Prefer::Uplink
    );
    assert_eq!(
        prefer("[failover]\nprefer = \"hub\"\n").unwrap(),
        Prefer::Hub
    );
    let problems = prefer("[failover]\nprefer = \"fiber\"\n").unwrap_err();
    assert_eq!(paths(&problems), vec!["failover.prefer"], "{problems:?}");
    assert_eq!(
        problems[0].message,
        "\"fiber\" is neither \"uplink\" nor \"hub\""
    );
    assert!(
        problems[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("prefer = \"hub\""),
        "{problems:?}"
    );
}

#[test]
fn probe_budget_defaults_and_mistakes() {
    let dir = dir_with_key();
    let with = |lte: &str, fiber: &str| {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/annex.toml"),
        )
        .unwrap()
        .replace("\nmetered = true\n", &format!("\nmetered = true\n{lte}\n"))
        .replace("\npriority = 0\n", &format!("\npriority = 0\n{fiber}\n"));
        parse(&localize(&text), dir.path())
    };
    let uplinks = |c: Config| match c.role {
        Role::Annex(a) => a.uplinks,
        Role::Hub(_) => panic!("annex expected"),
    };
    // Metered: 30 MB per 30 days; not metered: no budget.
    let u = uplinks(with("", "").unwrap());
    assert_eq!(u[0].probe_budget, None);
    assert_eq!(u[1].probe_budget, Some(DEFAULT_PROBE_BUDGET));
    let u = uplinks(with("probe_budget = \"50 MB\"", "probe_budget = \"2GB\"").unwrap());
    assert_eq!(u[1].probe_budget, Some(50_000_000));
    assert_eq!(u[0].probe_budget, Some(2_000_000_000));
    let problems = with("probe_budget = \"30 MiB\"", "probe_budget = \"10 kB\"").unwrap_err();
    assert_eq!(
        paths(&problems),
        vec!["uplink[0].probe_budget", "uplink[1].probe_budget"]
    );
    assert!(
        problems[0].message.contains("below the smallest budget"),
        "{problems:?}"
    );
    assert!(
        problems[1].message.contains("is not a size"),
        "{problems:?}"
    );
}

#[test]
fn the_probe_files_are_checked_for_reading_not_parsed() {
    let dir = dir_with_key();
    // Missing certificate, key readable by others: both named by key path.
    std::fs::remove_file(dir.path().join("p.crt")).unwrap();
    std::fs::set_permissions(
        dir.path().join("p.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let problems = example("hub.toml", dir.path()).unwrap_err();
    assert_eq!(
        paths(&problems),
        ["probe.certificate_file", "probe.key_file"],
        "{problems:?}"
    );
    assert!(problems[0].message.contains("cannot read"), "{problems:?}");
    assert!(problems[1].message.contains("readable by others"));
    // A file that is no certificate is the loader's business
    // (`daemon::load`): the config only holds where it is.
    std::fs::write(dir.path().join("p.crt"), "not a certificate").unwrap();
    std::fs::set_permissions(
        dir.path().join("p.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let config = example("hub.toml", dir.path()).unwrap();
    assert_eq!(config.probe.certificate_file, dir.path().join("p.crt"));
    assert_eq!(config.probe.key_file, dir.path().join("p.key"));
}

#[test]
fn groups_are_looked_up_by_name() {
    assert_eq!(group_id("root").unwrap(), Some(0));
    assert_eq!(group_id("no-such-group-tl16").unwrap(), None);
    // Not a name a group can have: no group, not an error.
    assert_eq!(group_id("ro\0ot").unwrap(), None);
}

/// The annex example with a second `[[hub]]` (the backup site) appended:
/// `extra` goes into it.
fn annex_with_backup_hub(extra: &str) -> String {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/annex.toml"))
            .unwrap();
    let backup = PrivateKey::generate().public_key().to_base64();
    format!(
        "{}\n[[hub]]\nname = \"backup\"\npublic_key = \"{backup}\"\nendpoint = \
         \"backup.example.net:51820\"\naddress = \"10.99.0.254\"\nroutes = [\"10.50.0.0/24\"]\n\
         fingerprint = \"sha256:{}\"\n{extra}\n",
        localize(&text),
        "ab".repeat(32)
    )
}

#[test]
fn a_hub_gets_its_priority_and_interface_by_default() {
    let dir = dir_with_key();
    let Role::Annex(a) = example("annex.toml", dir.path()).unwrap().role else {
        panic!("annex expected")
    };
    assert_eq!(a.hubs[0].priority, 0);
    assert_eq!(a.hubs[0].interface.as_str(), "tl0", "tunnel.interface");
    assert_eq!(a.preferred_hub().0, 0);
    let routing = RoutingConfig::default();
    assert_eq!(
        (0..3)
            .map(|h| (
                routing.hub_table(h),
                routing.hub_fwmark(h),
                routing.hub_rule_priority(h)
            ))
            .collect::<Vec<_>>(),
        vec![
            (7400, 0x7400, 7400),
            (7416, 0x7410, 7416),
            (7432, 0x7420, 7432)
        ]
    );
}

#[test]
fn a_second_hub_names_its_own_device_and_is_checked() {
    let dir = dir_with_key();
    let text = annex_with_backup_hub("interface = \"tl1\"\npriority = 5");
    let Role::Annex(a) = parse(&text, dir.path()).unwrap().role else {
        panic!("annex expected")
    };
    let hubs: Vec<(&str, u32, &str)> = a
        .hubs
        .iter()
        .map(|h| (h.name.as_str(), h.priority, h.interface.as_str()))
        .collect();
    assert_eq!(hubs, vec![("main", 0, "tl0"), ("backup", 5, "tl1")]);
    // The backup hub preferred by its priority.
    let text = annex_with_backup_hub("interface = \"tl1\"").replacen(
        "name = \"main\"",
        "name = \"main\"\npriority = 3",
        1,
    );
    let Role::Annex(a) = parse(&text, dir.path()).unwrap().role else {
        panic!("annex expected")
    };
    assert_eq!(a.preferred_hub().1.name.as_str(), "backup");
    // Every mistake of a second hub, at once.
    let text = annex_with_backup_hub("priority = 1001")
        .replacen("name = \"backup\"", "name = \"main\"", 1)
        .replace("10.99.0.254", "10.99.0.1");
    let problems = parse(&text, dir.path()).unwrap_err();
    assert_eq!(
        listed(&problems),
        vec![
            "hub[1].priority: 1001 is out of range 0..=1000",
            "hub[1].interface: missing: every hub but the first needs its own tunnel interface",
            "hub[1].name: main is already the name of hub[0]",
            "hub[1].address: 10.99.0.1 is already the address of hub[0]",
        ]
    );
    let hint = problems[1].hint.as_deref().unwrap();
    assert!(hint.contains("interface = \"tl1\""), "{hint}");
    // The second hub's device is neither the first's nor an uplink.
    for (name, expected) in [
        (
            "tl0",
            "hub[1].interface: tl0 is tunnel.interface, the first hub's tunnel device",
        ),
        (
            "eth1",
            "uplink[0].interface: is the tunnel interface of hub[1]",
        ),
    ] {
        let text = annex_with_backup_hub(&format!("interface = \"{name}\""));
        let problems = parse(&text, dir.path()).unwrap_err();
        assert_eq!(listed(&problems), [expected.to_string()], "{name}");
    }
    // The first hub's device is tunnel.interface.
    let text = annex_with_backup_hub("interface = \"tl1\"").replacen(
        "name = \"main\"",
        "name = \"main\"\ninterface = \"tl9\"",
        1,
    );
    let problems = parse(&text, dir.path()).unwrap_err();
    assert_eq!(
        listed(&problems),
        ["hub[0].interface: tl9 is not tunnel.interface (tl0)".to_string()]
    );
}
