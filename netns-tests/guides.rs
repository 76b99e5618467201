//! The guides, run as written (issue 15, item 8): `docs/install.md`, then
//! `docs/enrollment.md`, block by block, on a hub and two annexes, and
//! what townlink prints compared with what the guides show.
//!
//! How a guide says what to run: a fenced block preceded by the comment
//! `<!-- guide-test: MACHINE... [retry=30s] -->` runs on each machine
//! named (`hub`, `annex-1`, `annex-2`), in the guide's order. In a block,
//! a line starting with `# ` is a command typed as root; the lines after
//! it, up to the next command, are what it prints. `<!-- guide-test: not
//! run (why) -->` says why a block is not run; a block with neither fails
//! the test, so no step can be added without being run or excused.
//!
//! What is substituted: only the placeholders the guides name. `'tl1.…'`
//! (any single-quoted `tl1.` text with `…`) is the last token the hub
//! printed. Everything else runs literally: the machines are built with
//! the guides' names (the annexes' uplinks are `eth1` and `wwan0`,
//! `hub.example.net` resolves to the hub, the records server listens on
//! 10.50.0.10:443), and each machine's shell has its own `/etc`, `/run`
//! and `/var/lib` (overlays in a mount namespace of its own, so
//! `/etc/townlink`, the control socket and the registry are the guides'
//! paths and nothing reaches the host's).
//!
//! Three programs are stand-ins, in the shell's `PATH`: `apt` (installs
//! the two example configs where the package puts them, the binary being
//! the one under test), `systemctl` (runs `townlink run` as the unit does:
//! `townlink check` first, then waits for READY=1 on a notify socket of
//! this test; `status` prints the unit's STATUS line) and `editor` (the
//! test bed has the example's addresses: nothing to change).
//!
//! Compared: each shown line with a printed line, in order, with times,
//! durations ago, keys, fingerprints and tokens masked and runs of blanks
//! as one; `…` in a shown line stands for any text, a line of its own
//! `…` for any lines. A command must succeed unless what it shows starts
//! with `error:`.

mod testbed;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use regex::Regex;
use testbed::{echo_server, echo_within, Options, Wan, RECORDS};

const MACHINES: [&str; 3] = ["hub", "annex-1", "annex-2"];
const DONE: &str = "@@guide-test-done ";

/// One command of a guide and what the guide shows it prints.
#[derive(Debug, Clone)]
struct Step {
    command: String,
    shown: Vec<String>,
}

#[derive(Debug, Clone)]
struct Block {
    /// `docs/install.md:42`
    place: String,
    machines: Vec<String>,
    retry: Option<Duration>,
    steps: Vec<Step>,
}

/// The blocks of a guide to run, in order; panics on a block without a
/// marker, an indented code block, or a marker it cannot read.
fn blocks(doc: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc))
        .unwrap_or_else(|e| panic!("{doc}: {e}"));
    let lines: Vec<&str> = text.lines().collect();
    let marker = Regex::new(r"^<!-- guide-test: (.*) -->$").unwrap();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("    ") && i > 0 && lines[i - 1].trim().is_empty() {
            panic!(
                "{doc}:{}: an indented code block: write it fenced, with a guide-test marker",
                i + 1
            );
        }
        if !line.starts_with("```") {
            i += 1;
            continue;
        }
        let lang = line.trim_start_matches('`').trim();
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].starts_with("```"))
            .unwrap_or_else(|| panic!("{doc}:{}: unclosed block", i + 1));
        if lang == "toml" {
            i = end + 1;
            continue;
        }
        let place = format!("{doc}:{}", i + 1);
        let spec = i
            .checked_sub(1)
            .and_then(|p| marker.captures(lines[p]))
            .map(|c| c[1].to_string())
            .unwrap_or_else(|| {
                panic!(
                    "{place}: a block without `<!-- guide-test: MACHINE -->` or \
                     `<!-- guide-test: not run (why) -->` on the line before"
                )
            });
        i = end + 1;
        if let Some(why) = spec.strip_prefix("not run") {
            assert!(
                why.trim().starts_with('(') && why.len() > 5,
                "{place}: say why it is not run"
            );
            continue;
        }
        let mut machines = Vec::new();
        let mut retry = None;
        for word in spec.split_whitespace() {
            if let Some(t) = word.strip_prefix("retry=") {
                retry = Some(humantime::parse_duration(t).expect("retry=DURATION"));
            } else {
                assert!(MACHINES.contains(&word), "{place}: unknown machine {word}");
                machines.push(word.to_string());
            }
        }
        assert!(!machines.is_empty(), "{place}: no machine named");
        let mut steps: Vec<Step> = Vec::new();
        for l in &lines[place_line(&place)..end] {
            match l.strip_prefix("# ") {
                Some(command) => steps.push(Step {
                    command: command.to_string(),
                    shown: Vec::new(),
                }),
                None => steps
                    .last_mut()
                    .unwrap_or_else(|| panic!("{place}: output before any `# ` command"))
                    .shown
                    .push(l.to_string()),
            }
        }
        out.push(Block {
            place,
            machines,
            retry,
            steps,
        });
    }
    out
}

/// The first line of a block's content, from its place (`doc:N`, N the
/// fence's 1-based line): index N in the file's lines.
fn place_line(place: &str) -> usize {
    place.rsplit(':').next().unwrap().parse().unwrap()
}

/// What differs from run to run, replaced by a fixed text.
struct Masks(Vec<(Regex, &'static str)>);

impl Masks {
    fn new() -> Masks {
        let m = |re: &str, by| (Regex::new(re).unwrap(), by);
        Masks(vec![
            m(r"tl1\.[A-Za-z0-9_\-…]+", "<token>"),
            m(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>"),
            m(r"\(\d[0-9a-z ]* ago\)", "(<ago>)"),
            m(r"sha256:[0-9a-f…]+", "sha256:<fingerprint>"),
            m(r"\b[A-Za-z0-9+/]{43}=", "<key>"),
            m(r"\s+", " "),
        ])
    }

    fn apply(&self, line: &str) -> String {
        let mut s = line.trim().to_string();
        for (re, by) in &self.0 {
            s = re.replace_all(&s, *by).into_owned();
        }
        s
    }

    /// A shown line as a pattern: `…` stands for any text.
    fn pattern(&self, shown: &str) -> Regex {
        let masked = self.apply(shown);
        let parts: Vec<String> = masked.split('…').map(regex::escape).collect();
        Regex::new(&format!("^{}$", parts.join(".*"))).unwrap()
    }

    /// Whether `printed` matches `shown` (see the module's doc).
    fn matches(&self, shown: &[String], printed: &[String]) -> bool {
        let printed: Vec<String> = printed.iter().map(|l| self.apply(l)).collect();
        let shown: Vec<Option<Regex>> = shown
            .iter()
            .map(|l| (l.trim() != "…").then(|| self.pattern(l)))
            .collect();
        fn go(shown: &[Option<Regex>], printed: &[String]) -> bool {
            match shown.split_first() {
                None => printed.is_empty(),
                Some((None, rest)) => (0..=printed.len()).any(|k| go(rest, &printed[k..])),
                Some((Some(re), rest)) => {
                    !printed.is_empty() && re.is_match(&printed[0]) && go(rest, &printed[1..])
                }
            }
        }
        go(&shown, &printed)
    }
}

/// A technician's root shell on one machine: in its network namespace,
/// with its own `/etc`, `/run` and `/var/lib` (overlays), the stand-ins
/// first in `PATH`. Stops the townlink it started (by PID) on drop.
struct Machine {
    name: String,
    dir: PathBuf,
    shell: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

const SYSTEMCTL: &str = r#"#!/bin/bash
# Stand-in for systemd in the guides test: runs townlink as
# townlink.service does (Type=notify, ExecStartPre=townlink check).
S="$GUIDE_STATE"
CONFIG=/etc/townlink/townlink.toml
running() { [ -s "$S/pid" ] && kill -0 "$(cat "$S/pid")" 2>/dev/null; }
readies() { wc -l < "$S/ready" 2>/dev/null || echo 0; }
wait_ready() {
    for _ in $(seq 300); do
        [ "$(readies)" -gt "$1" ] && return 0
        running || { echo "Job for townlink.service failed: townlink exited (journalctl -u townlink)" >&2; return 1; }
        sleep 0.1
    done
    echo "Job for townlink.service timed out: no READY=1 within 30 s" >&2
    return 1
}
start() {
    running && return 0
    townlink check -c "$CONFIG" >/dev/null || { echo "Job for townlink.service failed: townlink check" >&2; return 1; }
    : > "$S/ready"
    NOTIFY_SOCKET="$S/notify.sock" RUST_LOG=info,townlink=debug \
        townlink run -c "$CONFIG" >>"$S/townlink.log" 2>&1 </dev/null &
    echo $! > "$S/pid"
    wait_ready 0
}
stop() {
    running || return 0
    pid=$(cat "$S/pid"); kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$S/pid"
}
verb="$1"; shift
[ "$verb" = enable ] && { [ "$1" = --now ] || exit 0; shift; verb=start; }
[ "$1" = townlink ] || [ "$1" = townlink.service ] || { echo "this stand-in knows only townlink" >&2; exit 1; }
case "$verb" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    reload)
        running || { echo "townlink.service is not active, cannot reload." >&2; exit 1; }
        n=$(readies); kill -HUP "$(cat "$S/pid")"; wait_ready "$n" ;;
    status)
        echo "● townlink.service - $(sed -n 's/^Description=//p' "$UNIT")"
        echo "     Loaded: loaded ($UNIT; enabled)"
        if running; then
            echo "     Active: active (running)"
            echo "   Main PID: $(cat "$S/pid") (townlink)"
            echo "     Status: \"$(cat "$S/status" 2>/dev/null)\""
        else
            echo "     Active: inactive (dead)"; exit 3
        fi ;;
    *) echo "this stand-in does not know systemctl $verb" >&2; exit 1 ;;
esac
"#;

const APT: &str = r#"#!/bin/sh
# Stand-in for apt in the guides test: puts the example configs where the
# package does (Cargo.toml, package.metadata.deb); townlink itself is the
# binary under test, already in PATH.
case "$1 $2" in
    "install ./townlink_"*"_amd64.deb") ;;
    *) echo "this stand-in installs only ./townlink_*_amd64.deb" >&2; exit 100 ;;
esac
mkdir -p /etc/townlink
cp "$REPO/config/annex.toml" /etc/townlink/annex.toml.example
cp "$REPO/config/hub.toml" /etc/townlink/hub.toml.example
"#;

const EDITOR: &str = r#"#!/bin/sh
# Stand-in for the technician's editor in the guides test: the test bed
# has the example's addresses (hub.example.net, 10.99.0.0/24,
# 10.50.0.0/24, 10.50.0.10:443), so the file stays as it is.
test -f "$1"
"#;

impl Machine {
    fn start(name: &str, netns: &str, dir: PathBuf, hosts: &str) -> Machine {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(testbed::townlink_bin(), bin.join("townlink")).unwrap();
        for (file, text) in [("systemctl", SYSTEMCTL), ("apt", APT), ("editor", EDITOR)] {
            std::fs::write(bin.join(file), text).unwrap();
            std::fs::set_permissions(bin.join(file), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        notify_listener(&dir);
        let mut shell = Command::new("ip")
            .args(["netns", "exec", netns, "bash", "--noprofile", "--norc"])
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
            )
            .env("GUIDE_STATE", &dir)
            .env("REPO", env!("CARGO_MANIFEST_DIR"))
            .env(
                "UNIT",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/townlink.service"),
            )
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bash in the namespace");
        let stdin = shell.stdin.take().unwrap();
        let stdout = shell.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut m = Machine {
            name: name.to_string(),
            dir,
            shell,
            stdin,
            lines,
        };
        // ip netns exec gave the shell a mount namespace of its own (a
        // slave of the host's): the overlays stay in it.
        let setup = format!(
            "for d in etc run var/lib; do o=\"$GUIDE_STATE/overlay/$d\"; \
             mkdir -p \"$o/upper\" \"$o/work\" && mount -t overlay overlay -o \
             \"lowerdir=/$d,upperdir=$o/upper,workdir=$o/work\" \"/$d\" || exit 1; done; \
             printf '{hosts}' >> /etc/hosts && mkdir -p \"$GUIDE_STATE/home\" && \
             cd \"$GUIDE_STATE/home\""
        );
        let (code, out) = m.run(&setup);
        assert_eq!(code, 0, "setting up {name}: {out:?}");
        m
    }

    /// Runs one command line in the shell: (exit code, printed lines).
    fn run(&mut self, command: &str) -> (i32, Vec<String>) {
        write!(
            self.stdin,
            "{{ {command}\n}} </dev/null 2>&1; echo \"{DONE}$?\"\n"
        )
        .expect("write to the shell");
        self.stdin.flush().unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "{}: `{command}` did not end within 120 s (or the shell died); printed {out:#?}",
                    self.name
                )
            });
            if let Some((before, code)) = line.split_once(DONE) {
                if !before.is_empty() {
                    out.push(before.to_string());
                }
                return (code.trim().parse().unwrap(), out);
            }
            out.push(line);
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("townlink.log")).unwrap_or_default()
    }
}

/// The unit's notify socket: READY=1 appends a line to `ready`, STATUS=
/// replaces `status` (what `systemctl status` shows).
fn notify_listener(dir: &Path) {
    let socket = std::os::unix::net::UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            for line in text.lines() {
                if line == "READY=1" {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(dir.join("ready"))
                        .unwrap();
                    writeln!(f, "READY").unwrap();
                } else if let Some(status) = line.strip_prefix("STATUS=") {
                    std::fs::write(dir.join("status"), status).unwrap();
                }
            }
        }
    });
}

impl Drop for Machine {
    fn drop(&mut self) {
        // The townlink the stand-in systemctl started, by its PID.
        if let Some(pid) = std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.shell.kill();
        let _ = self.shell.wait();
        if std::thread::panicking() {
            eprintln!("---- townlink on {} ----\n{}", self.name, self.log());
        }
    }
}

/// Renames an annex's uplinks to the guides' names (eth1: fiber, wwan0:
/// 4G) and gives each a default route, the 4G's behind the fiber's, as
/// DHCP on a real router would.
fn guide_interfaces(wan: &Wan, n: usize) {
    let ns = &wan.annex(n).ns;
    for (old, new, gateway, metric) in [
        ("fiber0", "eth1", format!("198.18.1{n}.1"), "100"),
        ("lte0", "wwan0", format!("100.64.{n}.1"), "200"),
    ] {
        ns.ip(&["link", "set", old, "down"]);
        ns.ip(&["link", "set", old, "name", new]);
        ns.ip(&["link", "set", new, "up"]);
        let _ = ns.run_output(&["ip", "route", "del", "default", "dev", new]);
        ns.ip(&[
            "route", "add", "default", "via", &gateway, "dev", new, "metric", metric,
        ]);
    }
}

#[test]
fn the_guides_run_as_written() {
    // What the stand-in apt installs is what the package installs.
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    for asset in [
        "[\"config/annex.toml\", \"etc/townlink/annex.toml.example\", \"644\"]",
        "[\"config/hub.toml\", \"etc/townlink/hub.toml.example\", \"644\"]",
    ] {
        assert!(
            manifest.contains(asset),
            "the package no longer installs {asset}"
        );
    }
    let mut guide = Vec::new();
    for doc in ["docs/install.md", "docs/enrollment.md"] {
        guide.extend(blocks(doc));
    }

    let wan = Wan::build_with(
        2,
        &Options {
            enrolled_sites: true,
            ..Options::default()
        },
    );
    for n in [1, 2] {
        guide_interfaces(&wan, n);
    }
    let records = echo_server(&wan.records, &format!("{RECORDS}:443"));
    let hosts = "198.18.0.2 hub.example.net\\n";
    let mut machines: Vec<Machine> = MACHINES
        .iter()
        .map(|name| {
            let ns = match *name {
                "hub" => &wan.hub,
                "annex-1" => &wan.annex(1).ns,
                _ => &wan.annex(2).ns,
            };
            Machine::start(name, &ns.name, wan.dir.path().join(name), hosts)
        })
        .collect();

    let masks = Masks::new();
    let token_placeholder = Regex::new(r"'tl1\.[^']*…[^']*'").unwrap();
    let token_line = Regex::new(r"^tl1\.[A-Za-z0-9_-]+$").unwrap();
    let mut token: Option<String> = None;
    for block in &guide {
        for name in &block.machines {
            let m = machines.iter_mut().find(|m| &m.name == name).unwrap();
            let deadline = Instant::now() + block.retry.unwrap_or_default();
            loop {
                let mut mismatch = None;
                for step in &block.steps {
                    let command = match &token {
                        Some(t) => token_placeholder
                            .replace_all(&step.command, format!("'{t}'"))
                            .into_owned(),
                        None => step.command.clone(),
                    };
                    let (code, printed) = m.run(&command);
                    eprintln!("[{name}] # {}\n{}", step.command, printed.join("\n"));
                    if let Some(t) = printed.iter().find(|l| token_line.is_match(l)) {
                        token = Some(t.clone());
                    }
                    let may_fail = step.shown.iter().any(|l| l.starts_with("error:"));
                    let matched = step.shown.is_empty() || masks.matches(&step.shown, &printed);
                    if (code != 0 && !may_fail) || !matched {
                        mismatch = Some(format!(
                            "{} on {name}: `# {}` exited {code} and printed\n{}\nthe guide shows\n{}",
                            block.place,
                            step.command,
                            printed.join("\n"),
                            step.shown.join("\n")
                        ));
                        break;
                    }
                }
                match mismatch {
                    None => break,
                    Some(m) if Instant::now() >= deadline => panic!("{m}"),
                    Some(_) => std::thread::sleep(Duration::from_secs(1)),
                }
            }
        }
    }

    // install.md, 4: from a LAN host, the records server (annex-2's; annex-1
    // was revoked by enrollment.md, 4).
    echo_within(&wan.annex(2).lan, records, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("annex-2's LAN → records: {e}"));
    assert!(
        echo_within(&wan.annex(1).lan, records, Duration::from_secs(2)).is_err(),
        "the revoked annex-1 still reaches the records server"
    );
    drop(machines);
}

#[test]
fn the_matching_rules_catch_a_changed_message() {
    let masks = Masks::new();
    let shown = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
    let printed = shown(
        "site annex-2 added: tunnel address 10.99.0.3, LAN 192.168.2.0/24\n\
         one-time token, valid until 2026-12-01T10:00:00Z:\n\
         \n\
         tl1.AQAAAABrBg17ym3syB8-x8Pa\n",
    );
    let guide = shown(
        "site annex-2 added: tunnel address 10.99.0.3, LAN 192.168.2.0/24\n\
         one-time token, valid until 2026-11-25T22:19:39Z:\n\
         \n\
         tl1.AQAAAA…b_vfew\n",
    );
    assert!(masks.matches(&guide, &printed));
    let changed = shown(&printed.join("\n").replace("tunnel address", "address"));
    assert!(!masks.matches(&guide, &changed), "a changed message passes");
    assert!(
        !masks.matches(&guide, &printed[..3]),
        "a missing line passes"
    );
    assert!(masks.matches(&shown("…\nLAN…"), &shown("a\nb\nLAN x")));
    assert!(!masks.matches(&shown("…\nLAN…"), &shown("a\nb")));
}
