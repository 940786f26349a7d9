//! Physical baselines on this machine: a plain memcpy of one frame (and, for context, out of a
//! shared memfd mapping as guest RAM is mapped, whole and in shuffled 4 KiB chunks), one 8 MiB
//! message over a UNIX stream socket, and an eventfd ping-pong between two threads. Each is
//! measured in slices so that the run can interleave them with the backends.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Instant;

use vgpu_tests::{GuestMemory, Result};
use vmm_sys_util::eventfd::EventFd;

use super::stats::Samples;

/// Bytes of the socket baseline message.
pub const SOCKET_MSG_BYTES: usize = 8 << 20;
/// Chunk the socket baseline's receiver reads through (as the benchmark's GPU socket peer does).
const RECV_CHUNK: usize = 256 << 10;
const PAGE: usize = 4096;

/// How a memcpy baseline reads its source.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CopySource {
    /// A private heap buffer, one `copy_from_slice` (the target baseline).
    Heap,
    /// A shared memfd mapping (how a backend maps guest RAM), one `copy_from_slice`.
    Memfd,
    /// The same memfd mapping in 4 KiB chunks, pages in shuffled order.
    MemfdShuffledPages,
}

/// A memcpy baseline of `bytes` bytes.
pub struct Memcpy {
    source: CopySource,
    heap: Vec<u8>,
    mem: Option<GuestMemory>,
    order: Vec<usize>,
    dst: Vec<u8>,
    /// Per-copy timings.
    pub samples: Samples,
}

impl Memcpy {
    /// Pre-touched source and destination buffers.
    pub fn new(source: CopySource, bytes: usize) -> Result<Self> {
        let pages = bytes.div_ceil(PAGE);
        let fill: Vec<u8> = (0..pages * PAGE).map(|i| (i * 13) as u8).collect();
        let (heap, mem) = if source == CopySource::Heap {
            (fill, None)
        } else {
            let mem = GuestMemory::new((pages * PAGE) as u64, 0)?;
            mem.write(0, &fill)?;
            (Vec::new(), Some(mem))
        };
        Ok(Memcpy {
            source,
            heap,
            mem,
            order: super::display::shuffled(pages, 0x9e37_79b9_7f4a_7c15),
            dst: vec![1u8; bytes],
            samples: Samples::with_capacity(256),
        })
    }

    /// Times `reps` copies.
    pub fn slice(&mut self, reps: usize) {
        let n = self.dst.len();
        let src: &[u8] = match &self.mem {
            // SAFETY: the mapping is at least `n` bytes (rounded up to pages) and lives as long
            // as `self.mem`; nothing writes it while we read.
            Some(m) => unsafe {
                std::slice::from_raw_parts(m.host_base() as *const u8, n.div_ceil(PAGE) * PAGE)
            },
            None => &self.heap,
        };
        for _ in 0..reps {
            let t = Instant::now();
            if self.source == CopySource::MemfdShuffledPages {
                for (logical, chunk) in self.dst.chunks_mut(PAGE).enumerate() {
                    let at = self.order[logical] * PAGE;
                    chunk.copy_from_slice(black_box(&src[at..at + chunk.len()]));
                }
            } else {
                self.dst.copy_from_slice(black_box(&src[..n]));
            }
            black_box(&mut self.dst);
            self.samples.push(t.elapsed());
        }
    }
}

/// One [`SOCKET_MSG_BYTES`] message written with one `write_all` on a UNIX stream socketpair
/// (default buffer sizes) and read by another thread through a 256 KiB buffer, which answers with
/// one byte once all arrived.
pub struct SocketSend {
    tx: Option<UnixStream>,
    reader: Option<JoinHandle<std::io::Result<()>>>,
    msg: Vec<u8>,
    /// Per-message timings.
    pub samples: Samples,
}

impl SocketSend {
    /// The socketpair and its reader thread.
    pub fn new() -> std::io::Result<Self> {
        let (tx, mut rx) = UnixStream::pair()?;
        let reader = std::thread::spawn(move || -> std::io::Result<()> {
            let mut buf = vec![0u8; RECV_CHUNK];
            loop {
                let mut left = SOCKET_MSG_BYTES;
                while left > 0 {
                    let n = rx.read(&mut buf[..left.min(RECV_CHUNK)])?;
                    if n == 0 {
                        return Ok(());
                    }
                    left -= n;
                }
                rx.write_all(&[1])?;
            }
        });
        Ok(SocketSend {
            tx: Some(tx),
            reader: Some(reader),
            msg: vec![7u8; SOCKET_MSG_BYTES],
            samples: Samples::with_capacity(256),
        })
    }

    /// Times `reps` messages.
    pub fn slice(&mut self, reps: usize) -> std::io::Result<()> {
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| std::io::Error::other("closed"))?;
        let mut ack = [0u8; 1];
        for _ in 0..reps {
            let t = Instant::now();
            tx.write_all(&self.msg)?;
            tx.read_exact(&mut ack)?;
            self.samples.push(t.elapsed());
        }
        Ok(())
    }
}

impl Drop for SocketSend {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn wait_readable(fd: i32) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 5000) };
        if r > 0 {
            return Ok(());
        }
        if r == 0 {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Round trips write → poll → read between two threads over two eventfds (the notification floor
/// under a virtqueue kick and its used-buffer call): `n` timed after a short warm-up, added to
/// `s`.
pub fn eventfd_pingpong(n: usize, s: &mut Samples) -> std::io::Result<()> {
    let ping = EventFd::new(libc::EFD_NONBLOCK)?;
    let pong = EventFd::new(libc::EFD_NONBLOCK)?;
    let (ping2, pong2) = (ping.try_clone()?, pong.try_clone()?);
    let warm = n / 20 + 20;
    let total = n + warm;
    let peer = std::thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..total {
            wait_readable(ping2.as_raw_fd())?;
            ping2.read()?;
            pong2.write(1)?;
        }
        Ok(())
    });
    for i in 0..total {
        let t = Instant::now();
        ping.write(1)?;
        wait_readable(pong.as_raw_fd())?;
        pong.read()?;
        if i >= warm {
            s.push(t.elapsed());
        }
    }
    peer.join()
        .map_err(|_| std::io::Error::other("eventfd peer panicked"))?
}
