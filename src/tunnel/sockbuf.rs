//! Larger buffers on the device's UDP sockets.
//!
//! Under load the kernel drops tunnel packets at the UDP socket
//! (`UdpRcvbufErrors`) with default buffers, and boringtun never sets
//! `SO_RCVBUF` nor exposes its sockets. So the sockets are found by the port
//! they are bound to, among this process's descriptors, and their buffers
//! raised with `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (CAP_NET_ADMIN; above
//! `net.core.rmem_max`), falling back to the capped `SO_RCVBUF`/`SO_SNDBUF`.

use std::io;
use std::mem::{size_of, MaybeUninit};

fn sockopt_int(fd: i32, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: value and len point to valid memory of the announced size.
    let rc =
        unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_sockopt_int(fd: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: value points to an i32 of the announced size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The local UDP port of socket `fd`, if it is an IPv4/IPv6 datagram socket.
fn udp_port(fd: i32) -> Option<u16> {
    if sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()? != libc::SOCK_DGRAM {
        return None;
    }
    let mut addr = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: addr is a zeroed sockaddr_storage of the announced size.
    let rc = unsafe { libc::getsockname(fd, addr.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    // SAFETY: getsockname filled (part of) the zeroed storage.
    let addr = unsafe { addr.assume_init() };
    match addr.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let v4 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(u16::from_be(v4.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let v6 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(u16::from_be(v6.sin6_port))
        }
        _ => None,
    }
}

/// Sets receive and send buffers of `bytes` on every UDP socket of this
/// process bound to `port`. Returns how many sockets were changed.
pub fn enlarge(port: u16, bytes: usize) -> io::Result<usize> {
    let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
    let mut changed = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        else {
            continue;
        };
        let is_socket = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket || udp_port(fd) != Some(port) {
            continue;
        }
        set_sockopt_int(fd, libc::SO_RCVBUFFORCE, bytes)
            .or_else(|_| set_sockopt_int(fd, libc::SO_RCVBUF, bytes))?;
        set_sockopt_int(fd, libc::SO_SNDBUFFORCE, bytes)
            .or_else(|_| set_sockopt_int(fd, libc::SO_SNDBUF, bytes))?;
        changed += 1;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn enlarges_only_the_sockets_on_the_port() {
        let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = target.local_addr().unwrap().port();
        let before_other =
            sockopt_int(other.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap();
        // 64 KiB stays under the default rmem_max, so it works without privileges too.
        assert_eq!(enlarge(port, 64 * 1024).unwrap(), 1);
        let got = sockopt_int(target.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap();
        assert_eq!(got, 2 * 64 * 1024, "the kernel doubles the requested size");
        assert_eq!(
            sockopt_int(other.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap(),
            before_other
        );
    }
}
