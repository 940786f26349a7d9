//! Relaying a connected vhost-user stream to a listening socket, message by message, with the
//! file descriptors each message carries (SCM_RIGHTS) in both directions.
//!
//! libvirt starts a backend with `--fd N`, one end of a connected socketpair, while
//! vhost-user-backend can only serve connections it accepts itself. The relay bridges the two: it
//! connects to the daemon's listening socket and copies every message across. It is also how a
//! per-VM `--fd` process can hand its VM to a shared multi-VM daemon.
//!
//! Messages are forwarded whole (12-byte vhost-user header, then `size` payload bytes) in one
//! `sendmsg` with their descriptors, so a descriptor stays attached to the first byte of its
//! message: a byte-stream copy could glue the tail of one message to the head of the next and move
//! descriptors to the wrong message, which the receiving side would drop.

use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;

use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Size of a vhost-user message header (`request`, `flags`, `size`, all u32).
pub const HEADER_LEN: usize = 12;
/// Largest payload forwarded; vhost-user messages are far smaller (GET_CONFIG: 4 KiB + 12).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most descriptors one message may carry (vhost-user sends at most 8, one per memory region).
pub const MAX_FDS: usize = 32;

/// Stack size of the relay's second thread (its buffers live on the heap).
const RELAY_STACK: usize = 256 * 1024;

/// Why a relay stopped other than by a clean end of stream.
#[derive(Debug, Error)]
pub enum RelayError {
    /// Reading, writing or connecting failed.
    #[error("relay I/O: {0}")]
    Io(#[from] io::Error),
    /// A header announced a payload above [`MAX_PAYLOAD`].
    #[error("message payload of {0} bytes is above the relay limit")]
    TooLarge(usize),
    /// A message carried more than [`MAX_FDS`] descriptors.
    #[error("message carries more than {MAX_FDS} file descriptors")]
    TooManyFds,
    /// The stream ended inside a message.
    #[error("stream ended inside a message")]
    Truncated,
    /// A relay thread panicked.
    #[error("relay thread panicked")]
    Panicked,
}

/// Reads exactly `buf.len()` bytes, collecting any descriptors received on the way into `fds`.
/// Returns `Ok(false)` on end of stream before the first byte.
fn read_exact_with_fds(
    from: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<File>,
) -> Result<bool, RelayError> {
    let mut done = 0;
    let mut raw = [0 as RawFd; MAX_FDS];
    while done < buf.len() {
        let rest = buf.get_mut(done..).unwrap_or_default();
        let mut iov = [libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        }];
        // SAFETY: the iovec points into `buf`, which we borrow mutably and which may hold any
        // bytes; `raw` has room for MAX_FDS descriptors.
        let res = unsafe { from.recv_with_fds(&mut iov, &mut raw) };
        let (n, nfds) = match res {
            Ok(v) => v,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno()).into()),
        };
        for &fd in raw.iter().take(nfds) {
            // SAFETY: recvmsg just gave us ownership of this descriptor.
            fds.push(unsafe { File::from_raw_fd(fd) });
        }
        if fds.len() > MAX_FDS {
            return Err(RelayError::TooManyFds);
        }
        if n == 0 {
            return if done == 0 && fds.is_empty() {
                Ok(false)
            } else {
                Err(RelayError::Truncated)
            };
        }
        done += n;
    }
    Ok(true)
}

/// Writes all of `data`, the descriptors with the first bytes.
fn send_all_with_fds(to: &UnixStream, data: &[u8], fds: &[RawFd]) -> Result<(), RelayError> {
    let mut done = 0;
    let mut fds = fds;
    while done < data.len() {
        let rest = data.get(done..).unwrap_or_default();
        match to.send_with_fds(&[rest], fds) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            Ok(n) => {
                done += n;
                fds = &[];
            }
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno()).into()),
        }
    }
    Ok(())
}

/// Forwards whole vhost-user messages from `from` to `to` until `from` ends. Returns the number of
/// messages forwarded.
pub fn pump(from: &UnixStream, to: &UnixStream) -> Result<u64, RelayError> {
    let mut buf = vec![0u8; HEADER_LEN + MAX_PAYLOAD];
    let mut fds: Vec<File> = Vec::with_capacity(MAX_FDS);
    let mut raw: Vec<RawFd> = Vec::with_capacity(MAX_FDS);
    let mut count = 0u64;
    loop {
        fds.clear();
        let (header, payload) = buf.split_at_mut(HEADER_LEN);
        if !read_exact_with_fds(from, header, &mut fds)? {
            return Ok(count);
        }
        let mut size_bytes = [0u8; 4];
        size_bytes.copy_from_slice(header.get(8..12).unwrap_or(&[0; 4]));
        let size = u32::from_le_bytes(size_bytes) as usize;
        if size > MAX_PAYLOAD {
            return Err(RelayError::TooLarge(size));
        }
        let body = payload.get_mut(..size).unwrap_or_default();
        if !read_exact_with_fds(from, body, &mut fds)? && size > 0 {
            return Err(RelayError::Truncated);
        }
        raw.clear();
        raw.extend(fds.iter().map(AsRawFd::as_raw_fd));
        let msg = buf.get(..HEADER_LEN + size).unwrap_or_default();
        send_all_with_fds(to, msg, &raw)?;
        // Our copies of the descriptors close here; the receiver has its own.
        fds.clear();
        count += 1;
    }
}

/// Relays between `a` and `b` in both directions until either side ends; then shuts both down.
pub fn relay(a: UnixStream, b: UnixStream) -> Result<(), RelayError> {
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    let back = thread::Builder::new()
        .name("vgpud-relay".into())
        .stack_size(RELAY_STACK)
        .spawn(move || {
            let r = pump(&b2, &a2);
            let _ = a2.shutdown(Shutdown::Both);
            let _ = b2.shutdown(Shutdown::Both);
            r
        })?;
    let forward = pump(&a, &b);
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
    let backward = back.join().map_err(|_| RelayError::Panicked)?;
    log::debug!("relay ended: forward {forward:?}, backward {backward:?}");
    forward.and(backward).map(|_| ())
}

/// Connects to the listening socket at `path` and relays `conn` to it until either side ends.
pub fn relay_to_path(conn: UnixStream, path: &Path) -> Result<(), RelayError> {
    let upstream = UnixStream::connect(path)?;
    relay(conn, upstream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    fn msg(request: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn recv_msg(s: &UnixStream) -> (Vec<u8>, Vec<File>) {
        let mut fds = Vec::new();
        let mut hdr = [0u8; HEADER_LEN];
        assert!(read_exact_with_fds(s, &mut hdr, &mut fds).unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let mut body = vec![0u8; size];
        read_exact_with_fds(s, &mut body, &mut fds).unwrap();
        let mut m = hdr.to_vec();
        m.extend_from_slice(&body);
        (m, fds)
    }

    #[test]
    fn relays_messages_and_fds_both_ways() {
        let (frontend, relay_a) = UnixStream::pair().unwrap();
        let (relay_b, backend) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || relay(relay_a, relay_b));

        // A file with known contents travels frontend -> backend with the second of two messages
        // written back to back (so they may arrive glued together).
        let mut file = tempfile_with(b"hello over SCM_RIGHTS");
        let m1 = msg(1, &[]);
        let m2 = msg(5, &[7u8; 40]);
        frontend.send_with_fds(&[&m1[..]], &[]).unwrap();
        frontend
            .send_with_fds(&[&m2[..]], &[file.as_raw_fd()])
            .unwrap();

        let (got1, fds1) = recv_msg(&backend);
        assert_eq!(got1, m1);
        assert!(fds1.is_empty());
        let (got2, mut fds2) = recv_msg(&backend);
        assert_eq!(got2, m2);
        assert_eq!(fds2.len(), 1);
        let mut text = String::new();
        fds2[0].seek(SeekFrom::Start(0)).unwrap();
        fds2[0].read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello over SCM_RIGHTS");
        file.write_all(b"!").unwrap();

        // A reply travels back.
        let reply = msg(1, &0x1234u64.to_le_bytes());
        backend.send_with_fds(&[&reply[..]], &[]).unwrap();
        let (got, _) = recv_msg(&frontend);
        assert_eq!(got, reply);

        // Closing one end ends the relay cleanly.
        drop(frontend);
        t.join().unwrap().unwrap();
        let mut rest = Vec::new();
        let mut backend = backend;
        backend.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn oversized_message_stops_the_relay() {
        let (frontend, relay_a) = UnixStream::pair().unwrap();
        let (relay_b, _backend) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || relay(relay_a, relay_b));
        let mut m = msg(1, &[]);
        m[8..12].copy_from_slice(&((MAX_PAYLOAD + 1) as u32).to_le_bytes());
        frontend.send_with_fds(&[&m[..]], &[]).unwrap();
        assert!(matches!(t.join().unwrap(), Err(RelayError::TooLarge(_))));
    }

    fn tempfile_with(contents: &[u8]) -> File {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vgpud-relay-test").unwrap();
        let path = dir.as_path().join("f");
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(contents).unwrap();
        f
    }
}
