//! The daemon's side of the control socket.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Request, Response, MAX_REQUEST};
use crate::config::ControlConfig;
use crate::daemon::HubSites;
use crate::telemetry::Telemetry;

/// A client gets this long to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound socket; the file is removed when this is dropped.
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the control socket");
            }
        }
    }
}

fn group_id(name: &str) -> anyhow::Result<libc::gid_t> {
    let c = std::ffi::CString::new(name).context("group name contains a NUL byte")?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized memory owned here.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        anyhow::bail!("group {name:?} does not exist (control.group): create it or remove the key");
    }
    Ok(grp.gr_gid)
}

/// Binds the control socket. Refuses when another daemon answers on it;
/// removes a stale socket file left by a crash.
pub async fn bind(config: &ControlConfig) -> anyhow::Result<Listener> {
    let path = &config.socket;
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "creating {} for the control socket (control.socket)",
                    dir.display()
                )
            })?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another townlink answers on the control socket {shown}: stop it, or give this \
                 instance its own control.socket"
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale control socket {shown}"))?;
        tracing::info!(path = %shown, "removed a stale control socket");
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create the control socket {shown} (control.socket)"))?;
    let listener = Listener {
        listener,
        path: path.clone(),
    };
    let mode = match &config.group {
        Some(group) => {
            let gid = group_id(group)?;
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("giving {shown} to group {group}"))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {shown}"))?;
    Ok(listener)
}

/// What the control socket serves: the status always; site
/// administration once the hub's sites are running.
#[derive(Debug)]
pub struct Handler {
    pub telemetry: Arc<Telemetry>,
    pub hub: OnceLock<Arc<HubSites>>,
}

async fn answer(request: &str, h: &Handler) -> Response {
    let request = match serde_json::from_str::<Request>(request) {
        Ok(r) => r,
        Err(e) => {
            return Response::Error {
                message: format!("cannot read the request: {e}"),
            }
        }
    };
    let hub = || {
        h.hub.get().cloned().ok_or_else(|| {
            if h.telemetry.snapshot().role == "hub" {
                "the hub is still starting: try again in a moment".to_string()
            } else {
                "this router is an annex: run site commands on the hub".to_string()
            }
        })
    };
    let error = |message: String| Response::Error { message };
    match request {
        Request::Status => Response::Status(Box::new(h.telemetry.snapshot())),
        Request::SiteAdd { name, lan, expires } => match hub() {
            Ok(hub) => match hub.add(&name, &lan, expires.map(Duration::from_secs)).await {
                Ok((token, site)) => Response::SiteAdded { token, site },
                Err(m) => error(m),
            },
            Err(m) => error(m),
        },
        Request::SiteList => match hub() {
            Ok(hub) => Response::Sites {
                sites: hub.list().await,
            },
            Err(m) => error(m),
        },
        Request::SiteRemove { name } => match hub() {
            Ok(hub) => match hub.remove(&name).await {
                Ok(site) => Response::SiteRemoved { site },
                Err(m) => error(m),
            },
            Err(m) => error(m),
        },
    }
}

/// How long a request may take before the client is told it still runs.
const ANSWER_WITHIN: Duration = Duration::from_secs(4);

async fn client(stream: UnixStream, handler: &Handler) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST as u64))
        .read_line(&mut line)
        .await?;
    // A site change runs to its end inside the hub whatever happens here:
    // only the waiting stops.
    let response = match tokio::time::timeout(ANSWER_WITHIN, answer(line.trim(), handler)).await {
        Ok(r) => r,
        Err(_) => Response::Error {
            message: format!(
                "no answer within {ANSWER_WITHIN:?}; a site change goes on to its end in the \
                 hub: see `townlink site list`"
            ),
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Serves until `stop`, then removes the socket file. A client's request
/// that panicked ends the service with an error (the daemon stops, see
/// `daemon::supervisor`): nothing dies silently.
pub async fn serve(
    listener: Listener,
    handler: Arc<Handler>,
    stop: CancellationToken,
) -> Result<(), String> {
    let mut clients = JoinSet::new();
    let mut failure = None;
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = clients.join_next() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        failure = Some(format!("a control request panicked: {e}"));
                        break;
                    }
                }
                continue;
            }
            a = listener.listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a control connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        clients.spawn(async move {
            match tokio::time::timeout(CLIENT_TIMEOUT, client(stream, &handler)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "control client failed"),
                Err(_) => tracing::debug!("control client too slow: dropped"),
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    clients.abort_all();
    drop(listener);
    failure.map_or(Ok(()), Err)
}
