//! The CLI's side of the control socket (blocking: one request, one answer).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "townlink is not running (no daemon answers on {path}: {source}); start it with \
         `systemctl start townlink` or `townlink run`, or give the socket with --socket"
    )]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the control socket {path}: {source} (run as root, or as a member of control.group)")]
    Denied {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon on {path} did not answer properly: {reason}")]
    Protocol { path: PathBuf, reason: String },
}

/// Sends `request` to the daemon listening on `path`.
pub fn request(path: &Path, request: &Request) -> Result<Response, ClientError> {
    let protocol = |reason: String| ClientError::Protocol {
        path: path.to_path_buf(),
        reason,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::PermissionDenied => ClientError::Denied {
            path: path.to_path_buf(),
            source,
        },
        _ => ClientError::NotRunning {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let timeout = Some(Duration::from_secs(10));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut line = serde_json::to_vec(request).map_err(|e| protocol(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| protocol(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| protocol(e.to_string()))?;
    serde_json::from_str(&answer).map_err(|e| protocol(format!("{e} in {answer:?}")))
}
