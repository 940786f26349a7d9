//! Taking the socket out of the `vhost` crate's [`GpuBackend`].
//!
//! `VhostUserBackend::set_gpu_socket` hands over the GPU socket wrapped in a `GpuBackend`, which
//! offers blocking sends only (no write timeout, no access to the descriptor). The display sender
//! needs the bare socket (for `SO_SNDTIMEO`, `shutdown` and its own framing), so
//! [`into_stream`] finds it by elimination: it duplicates every socket descriptor of the process,
//! drops the `GpuBackend` (whose descriptor is the only one it closes) and keeps the duplicate of
//! the socket that disappeared. Identifications are serialised process-wide; a socket closed by
//! another thread in the same instant is told apart by its peer having hung up (QEMU just created
//! the GPU socket's peer). If the socket still cannot be told apart, the caller goes headless.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, PoisonError};

use vhost::vhost_user::GpuBackend;

/// Serialises identifications: two of them at once would each see the other's socket vanish.
static IDENTIFY: Mutex<()> = Mutex::new(());

/// A socket descriptor seen before the drop, with a duplicate that keeps it open.
struct Candidate {
    fd: RawFd,
    dev: u64,
    ino: u64,
    dup: OwnedFd,
}

/// `(st_dev, st_ino)` of `fd` if it is a socket.
fn socket_id(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: fstat writes into the zeroed struct we own; an invalid fd only makes it fail.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    (st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some((st.st_dev, st.st_ino))
}

/// True if the peer of the socket has hung up (or the socket is in error).
fn peer_gone(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

fn snapshot() -> io::Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        let Some((dev, ino)) = socket_id(fd) else {
            continue;
        };
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own, or -1.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBADF) {
                continue; // closed by another thread meanwhile: not ours (ours is still open)
            }
            return Err(e);
        }
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        out.push(Candidate { fd, dev, ino, dup });
    }
    Ok(out)
}

/// Consumes `gpu` and returns its socket (a duplicate of the descriptor it owned).
pub fn into_stream(gpu: GpuBackend) -> io::Result<UnixStream> {
    let _serial = IDENTIFY.lock().unwrap_or_else(PoisonError::into_inner);
    let candidates = match snapshot() {
        Ok(c) => c,
        Err(e) => {
            drop(gpu);
            return Err(e);
        }
    };
    drop(gpu);
    let mut vanished: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| socket_id(c.fd) != Some((c.dev, c.ino)))
        .collect();
    if vanished.len() > 1 {
        vanished.retain(|c| !peer_gone(&c.dup));
    }
    match vanished.pop() {
        Some(c) if vanished.is_empty() => Ok(UnixStream::from(c.dup)),
        Some(_) => Err(io::Error::other(
            "GPU socket: several sockets closed at once, cannot tell which was ours",
        )),
        None => Err(io::Error::other("GPU socket: descriptor not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn finds_the_socket_inside_a_gpu_backend() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (_other, _other_peer) = UnixStream::pair().unwrap();
        let mut s = into_stream(GpuBackend::from_stream(ours)).unwrap();
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        drop(s);
        // Our duplicate was the last descriptor: the peer sees the end of the stream.
        assert_eq!(peer.read(&mut buf).unwrap(), 0);
    }
}
