//! The daemon's side of the control socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use ipnet::IpNet;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Request, Response, MAX_REQUEST};
use crate::config::ControlConfig;
use crate::enroll::hub::SiteError;
use crate::sites::SiteInfo;
use crate::telemetry::status::RouterRole;
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

/// Binds the control socket. Refuses when another daemon answers on it,
/// and when something else than a socket is at its path; removes a stale
/// socket left by a crash. A missing directory is created with mode 0755
/// (the socket's own mode decides who may connect).
pub async fn bind(config: &ControlConfig) -> anyhow::Result<Listener> {
    let path = &config.socket;
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .and_then(|()| {
                    // The umask (systemd's UMask=0077) may have narrowed it.
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                })
                .with_context(|| {
                    format!(
                        "creating {} for the control socket (control.socket)",
                        dir.display()
                    )
                })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot look at {shown} (control.socket)"))
        }
        Ok(meta) if !meta.file_type().is_socket() => anyhow::bail!(
            "{shown} exists and is not a socket (a {}): townlink does not remove it; move it \
             away, or set control.socket to another path",
            kind(&meta.file_type())
        ),
        Ok(_) => {
            if UnixStream::connect(path).await.is_ok() {
                anyhow::bail!(
                    "another townlink answers on the control socket {shown}: stop it, or give \
                     this instance its own control.socket"
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale control socket {shown}"))?;
            tracing::info!(path = %shown, "removed a stale control socket");
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create the control socket {shown} (control.socket)"))?;
    let listener = Listener {
        listener,
        path: path.clone(),
    };
    let mode = match &config.group {
        Some(group) => {
            let gid = match crate::config::group_id(group) {
                Ok(Some(gid)) => gid,
                Ok(None) => anyhow::bail!(
                    "group {group:?} does not exist (control.group): create it or remove the key"
                ),
                Err(e) => anyhow::bail!("cannot look up group {group:?} (control.group): {e}"),
            };
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("giving {shown} to group {group}"))?;
            if let Some((dir, mode)) = closed_to_group(path, gid) {
                tracing::warn!(
                    directory = %dir.display(),
                    mode = format!("{mode:o}"),
                    group = %group,
                    "members of control.group cannot reach the control socket: this directory \
                     is not searchable by them; make it mode 0755 (under systemd: \
                     RuntimeDirectoryMode=0755)"
                );
            }
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {shown}"))?;
    Ok(listener)
}

fn kind(t: &std::fs::FileType) -> &'static str {
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// The first directory above `path` that members of group `gid` cannot
/// search (neither by others' nor, owned by `gid`, by the group's
/// permission), with its mode.
fn closed_to_group(path: &Path, gid: libc::gid_t) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let absolute = std::path::absolute(path).ok()?;
    for dir in absolute.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).ok()?;
        let mode = meta.mode() & 0o7777;
        let searchable = mode & 0o001 != 0 || (mode & 0o010 != 0 && meta.gid() == gid);
        if !searchable {
            return Some((dir.to_path_buf(), mode));
        }
    }
    None
}

/// Who sent a request, from the socket's peer credentials (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: libc::uid_t,
}

impl Caller {
    /// root, or the user the daemon runs as.
    fn is_admin(&self) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        self.uid == 0 || self.uid == unsafe { libc::geteuid() }
    }
}

/// What a caller may ask: the status for anyone who can open the socket
/// (root, members of `control.group`), site administration for root only.
fn permitted(request: &Request, caller: Caller) -> Result<(), String> {
    let command = match request {
        Request::Status => return Ok(()),
        Request::SiteAdd { .. } => "site add",
        Request::SiteList => "site list",
        Request::SiteRemove { .. } => "site remove",
    };
    if caller.is_admin() {
        Ok(())
    } else {
        Err(format!(
            "`townlink {command}` needs root: members of control.group may only run \
             `townlink status`"
        ))
    }
}

/// The hub's site administration, as the control socket asks for it;
/// the daemon's `HubSites` implements it. A change goes on to its end
/// inside the hub when the caller stops waiting.
pub trait SiteAdmin: Send + Sync + std::fmt::Debug {
    /// `site add`: the token (secret included) and the new site.
    fn site_add(
        self: Arc<Self>,
        name: String,
        lan: Vec<IpNet>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'static, Result<(String, SiteInfo), SiteError>>;
    /// `site list`.
    fn site_list(self: Arc<Self>) -> BoxFuture<'static, Vec<SiteInfo>>;
    /// `site remove`: the revoked site.
    fn site_remove(
        self: Arc<Self>,
        name: String,
    ) -> BoxFuture<'static, Result<SiteInfo, SiteError>>;
}

/// What the control socket serves: the status always; site
/// administration once the hub's sites are running.
#[derive(Debug)]
pub struct Handler {
    pub telemetry: Arc<Telemetry>,
    pub hub: OnceLock<Arc<dyn SiteAdmin>>,
}

async fn answer(request: &str, caller: Caller, h: &Handler) -> Response {
    let request = match serde_json::from_str::<Request>(request) {
        Ok(r) => r,
        Err(e) => {
            return Response::Error {
                message: format!("cannot read the request: {e}"),
            }
        }
    };
    if let Err(message) = permitted(&request, caller) {
        tracing::info!(
            uid = caller.uid,
            "control request refused: site administration needs root"
        );
        return Response::Error { message };
    }
    let hub = || {
        h.hub.get().cloned().ok_or_else(|| {
            if h.telemetry.snapshot().role == RouterRole::Hub {
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
            Ok(hub) => match hub
                .site_add(name, lan, expires.map(Duration::from_secs))
                .await
            {
                Ok((token, site)) => Response::SiteAdded { token, site },
                Err(e) => error(e.to_string()),
            },
            Err(m) => error(m),
        },
        Request::SiteList => match hub() {
            Ok(hub) => Response::Sites {
                sites: hub.site_list().await,
            },
            Err(m) => error(m),
        },
        Request::SiteRemove { name } => match hub() {
            Ok(hub) => match hub.site_remove(name).await {
                Ok(site) => Response::SiteRemoved { site },
                Err(e) => error(e.to_string()),
            },
            Err(m) => error(m),
        },
    }
}

/// How long a request may take before the client is told it still runs.
const ANSWER_WITHIN: Duration = Duration::from_secs(4);

async fn client(stream: UnixStream, handler: &Handler) -> std::io::Result<()> {
    // Without credentials the caller is nobody in particular: status only.
    let caller = Caller {
        uid: stream.peer_cred().map_or(libc::uid_t::MAX, |c| c.uid()),
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST as u64))
        .read_line(&mut line)
        .await?;
    // A site change runs to its end inside the hub whatever happens here:
    // only the waiting stops.
    let response =
        match tokio::time::timeout(ANSWER_WITHIN, answer(line.trim(), caller, handler)).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &Path) -> ControlConfig {
        ControlConfig {
            socket: path.to_path_buf(),
            group: None,
        }
    }

    #[tokio::test]
    async fn a_regular_file_at_the_socket_path_is_an_error_naming_it_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("townlink.sock");
        std::fs::write(&path, "not a socket").unwrap();
        let err = bind(&config(&path)).await.unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");

        // A directory and a symbolic link (even to a socket) are kept too.
        let sub = dir.path().join("sub.sock");
        std::fs::create_dir(&sub).unwrap();
        let err = bind(&config(&sub)).await.unwrap_err().to_string();
        assert!(err.contains("directory"), "{err}");
        assert!(sub.is_dir());
        let real = dir.path().join("real.sock");
        drop(std::os::unix::net::UnixListener::bind(&real).unwrap());
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = bind(&config(&link)).await.unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(std::fs::symlink_metadata(&link).is_ok());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("townlink.sock");
        // Left by a crash: the file is there, nobody answers.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&config(&path)).await.expect("stale socket replaced");
        let err = bind(&config(&path)).await.unwrap_err().to_string();
        assert!(err.contains("another townlink answers"), "{err}");
        drop(listener);
        assert!(!path.exists(), "removed with its listener");
    }

    #[tokio::test]
    async fn a_missing_directory_is_created_searchable() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/townlink/townlink.sock");
        let _listener = bind(&config(&path)).await.unwrap();
        let mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let socket = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(socket, 0o600);
    }

    /// The hub's sites as the control socket sees them: no daemon needed.
    #[derive(Debug)]
    struct FakeSites;

    impl SiteAdmin for FakeSites {
        fn site_add(
            self: Arc<Self>,
            name: String,
            _: Vec<IpNet>,
            _: Option<Duration>,
        ) -> BoxFuture<'static, Result<(String, SiteInfo), SiteError>> {
            let name = crate::sites::Name::new(&name).unwrap();
            Box::pin(async move { Err(SiteError::DefinedInConfig(name)) })
        }

        fn site_list(self: Arc<Self>) -> BoxFuture<'static, Vec<SiteInfo>> {
            Box::pin(async { Vec::new() })
        }

        fn site_remove(
            self: Arc<Self>,
            name: String,
        ) -> BoxFuture<'static, Result<SiteInfo, SiteError>> {
            let name = crate::sites::Name::new(&name).unwrap();
            Box::pin(async move { Err(SiteError::AlreadyRevoked(name)) })
        }
    }

    #[tokio::test]
    async fn site_requests_go_to_the_hubs_sites_once_they_run() {
        let dir = crate::config::tests::dir_with_key();
        let config = crate::config::tests::example("hub.toml", dir.path()).unwrap();
        let handler = Handler {
            telemetry: Telemetry::new(&config),
            hub: OnceLock::new(),
        };
        let root = Caller { uid: 0 };
        let remove = r#"{"command":"site_remove","name":"annex-7"}"#;
        let error = |message: &str| Response::Error {
            message: message.to_string(),
        };
        assert_eq!(
            answer(remove, root, &handler).await,
            error("the hub is still starting: try again in a moment")
        );
        handler.hub.set(Arc::new(FakeSites)).unwrap();
        assert_eq!(
            answer(remove, root, &handler).await,
            error("site annex-7 is already revoked")
        );
        assert_eq!(
            answer(r#"{"command":"site_add","name":"annex-8"}"#, root, &handler).await,
            error("site annex-8 is defined in the hub's config file ([[site]])")
        );
        assert_eq!(
            answer(r#"{"command":"site_list"}"#, root, &handler).await,
            Response::Sites { sites: vec![] }
        );
    }

    #[test]
    fn status_for_anyone_who_connects_site_administration_for_root() {
        let member = Caller { uid: 12345 };
        let root = Caller { uid: 0 };
        let add = Request::SiteAdd {
            name: "a".into(),
            lan: vec![],
            expires: None,
        };
        let remove = Request::SiteRemove { name: "a".into() };
        assert_eq!(permitted(&Request::Status, member), Ok(()));
        for r in [&add, &Request::SiteList, &remove] {
            assert_eq!(permitted(r, root), Ok(()));
            let err = permitted(r, member).unwrap_err();
            assert!(err.contains("needs root"), "{err}");
        }
    }

    #[test]
    fn a_directory_closed_to_the_group_is_found() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let path = run.join("townlink.sock");
        // What RuntimeDirectoryMode=0750 made, owned by root's group.
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o750)).unwrap();
        let other_gid = 4242;
        assert_eq!(
            closed_to_group(&path, other_gid),
            Some((run.clone(), 0o750))
        );
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(closed_to_group(&path, other_gid), None);
    }
}
