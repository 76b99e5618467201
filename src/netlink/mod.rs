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
