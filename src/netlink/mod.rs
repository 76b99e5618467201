//! Kernel networking state through rtnetlink: links, addresses, routes,
//! rules. One concern per file; every error names the object it was about.

mod address;
mod link;
mod route;
mod rule;

use futures::TryStreamExt;
use rtnetlink::Handle;

pub use link::LinkCounters;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// Whether `e` is the kernel's refusal with `errno` (a `libc::E*`
/// constant; netlink carries it negated).
fn kernel_refused(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// A netlink connection in the caller's network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the connection and spawns its I/O task on the current runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Removes every route and rule that carries townlink's protocol
    /// (what an earlier run left, or all of ours at stop). Returns how many.
    pub async fn purge(&self) -> Result<(usize, usize)> {
        let rules = self.purge_rules().await?;
        let routes = self.purge_routes().await?;
        Ok((routes, rules))
    }
}

/// Collects a netlink dump.
async fn collect<T>(
    stream: impl futures::Stream<Item = std::result::Result<T, rtnetlink::Error>>,
    what: &str,
) -> Result<Vec<T>> {
    stream.try_collect().await.map_err(request(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's answer `code` (negative errno, as netlink sends it).
    fn answer(code: i32) -> rtnetlink::Error {
        let mut m = rtnetlink::packet_core::ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(code);
        rtnetlink::Error::NetlinkError(m)
    }

    #[test]
    fn kernel_refusals_are_told_by_their_errno_constant() {
        // The values the kernel sends on Linux: ESRCH 3, EEXIST 17, ENODEV 19.
        assert!(kernel_refused(&answer(-3), libc::ESRCH));
        assert!(kernel_refused(&answer(-17), libc::EEXIST));
        assert!(kernel_refused(&answer(-19), libc::ENODEV));
        assert!(!kernel_refused(&answer(-19), libc::ESRCH));
        assert!(
            !kernel_refused(&answer(19), libc::ENODEV),
            "netlink negates errno"
        );
        assert!(!kernel_refused(
            &rtnetlink::Error::RequestFailed,
            libc::ESRCH
        ));
    }
}
