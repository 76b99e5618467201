# Shared install steps for scripts/*: Debian packages and the Rust toolchain.
# Sourced, not run.

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: run this as root (it creates network namespaces and installs packages)" >&2
        exit 1
    fi
}

# install_packages PKG...: apt-get install the missing ones, without recommends
# (the WireGuard packages would otherwise pull in a whole kernel image).
install_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# install_bird: BIRD 2, the BGP daemon of the backup-site tests
# (netns-tests/backup_site.rs). The tests start their own instances, each in
# its own namespace with its own -c, -s and -P, and never use the default
# paths. Installing Debian's bird2 also enables a `bird` service, which runs
# one BIRD in the root namespace (/etc/bird/bird.conf, /run/bird/bird.ctl);
# a test machine routes nothing itself, so where this function installs the
# package it stops and disables that service. A BIRD the machine ran before
# is left alone: it cannot see the tests' namespaces or sockets.
install_bird() {
    if dpkg-query -W -f='${Status}' bird2 2>/dev/null | grep -q "install ok installed"; then
        return
    fi
    install_packages bird2
    if [ -d /run/systemd/system ]; then
        systemctl disable --now bird.service >/dev/null 2>&1 || true
    else
        # No systemd: invoke-rc.d may have started the sysvinit service.
        # Ask that one BIRD, by its default control socket (which no test
        # uses), to shut down; never stop BIRDs by name.
        update-rc.d bird disable >/dev/null 2>&1 || true
        if [ -S /run/bird/bird.ctl ]; then
            birdc -s /run/bird/bird.ctl down </dev/null >/dev/null 2>&1 || true
        fi
    fi
}

# ensure_rust: cargo (stable, >= 1.85) and cargo-nextest.
ensure_rust() {
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    if ! command -v cargo >/dev/null 2>&1; then
        echo "==> installing the Rust toolchain (rustup, stable)"
        install_packages curl ca-certificates gcc libc6-dev
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        . "$HOME/.cargo/env"
    fi
    if ! cargo nextest --version >/dev/null 2>&1; then
        echo "==> installing cargo-nextest"
        cargo install --locked cargo-nextest
    fi
}

# ensure_cargo_deb: cargo-deb, to build the Debian package.
ensure_cargo_deb() {
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "==> installing cargo-deb"
        cargo install --locked cargo-deb
    fi
}
