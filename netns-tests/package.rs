//! The Debian package: `scripts/package` builds it with cargo-deb; its
//! contents are checked after `dpkg-deb -x` into a throwaway root.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn gunzip(path: &Path) -> String {
    run(Command::new("gzip").arg("-dc").arg(path))
}

#[test]
fn package_holds_binary_unit_conffiles_man_pages_and_completions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // scripts/test builds it first (TOWNLINK_DEB); otherwise build it here.
    let deb = match std::env::var_os("TOWNLINK_DEB") {
        Some(p) => PathBuf::from(p),
        None => {
            let out = run(Command::new("bash")
                .arg(root.join("scripts/package"))
                .current_dir(root));
            root.join(out.lines().last().expect("the .deb's path").trim())
        }
    };
    let deb = if deb.is_absolute() {
        deb
    } else {
        root.join(deb)
    };
    assert!(deb.exists(), "{}", deb.display());

    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(info.contains("Package: townlink"), "{info}");
    assert!(info.contains("Section: net"), "{info}");
    assert!(
        info.contains("iproute2") && info.contains("libc6"),
        "{info}"
    );

    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&fs));
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));

    // The binary runs, and is the one of this tree.
    let bin: PathBuf = fs.join("usr/bin/townlink");
    let version = run(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("townlink {}", env!("CARGO_PKG_VERSION"))
    );
    let help = run(Command::new(&bin).arg("--help"));
    assert!(help.contains("Exit codes:"), "{help}");

    // The unit, as in systemd/.
    let unit = std::fs::read_to_string(fs.join("lib/systemd/system/townlink.service")).unwrap();
    assert_eq!(
        unit,
        std::fs::read_to_string(root.join("systemd/townlink.service")).unwrap()
    );

    // Example configs are conffiles.
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    for f in [
        "/etc/townlink/annex.toml.example",
        "/etc/townlink/hub.toml.example",
    ] {
        assert!(
            conffiles.lines().any(|l| l == f),
            "{f} not a conffile: {conffiles}"
        );
        assert!(fs.join(&f[1..]).exists(), "{f}");
    }

    // Man pages and completions generated from the CLI.
    let man = gunzip(&fs.join("usr/share/man/man1/townlink.1.gz"));
    assert!(
        man.contains(".TH townlink 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    for page in [
        "townlink-run",
        "townlink-status",
        "townlink-site-add",
        "townlink-join",
    ] {
        let text = gunzip(&fs.join(format!("usr/share/man/man1/{page}.1.gz")));
        assert!(text.contains(".TH"), "{page}");
    }
    let bash =
        std::fs::read_to_string(fs.join("usr/share/bash-completion/completions/townlink")).unwrap();
    assert!(
        bash.contains("complete") && bash.contains("site"),
        "bash completion"
    );
    assert!(fs
        .join("usr/share/zsh/vendor-completions/_townlink")
        .exists());
    assert!(fs
        .join("usr/share/fish/vendor_completions.d/townlink.fish")
        .exists());

    // Documentation, alert rules, dashboard and the BIRD configurations
    // of the backup site (docs/backup-site.md).
    for f in [
        "README.md",
        "enrollment.md",
        "metrics.md",
        "systemd.md",
        "monitoring/alerts.yml",
        "monitoring/grafana-wan.json",
        "examples/bird/hub.conf",
        "examples/bird/dc.conf",
    ] {
        assert!(fs.join("usr/share/doc/townlink").join(f).exists(), "{f}");
    }
}
