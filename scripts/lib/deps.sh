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
