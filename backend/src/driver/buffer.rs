//! Device buffers: zeroed memory charged to a vGPU's partition, in host memory (the CPU engine)
//! or in the engine's memory (a [`BufferStorage`] from the partition's arena).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::budget::{MemoryBudget, OutOfBudget};
use super::engine::BufferStorage;
use super::partition::MemoryPartition;

/// Errors from allocating or accessing a [`DeviceBuffer`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BufferError {
    /// The vGPU's partition has no room for the buffer.
    #[error("vGPU out of memory: {0}")]
    OutOfMemory(#[from] OutOfBudget),
    /// The host could not provide the memory (the charge was given back).
    #[error("host allocation of {0} bytes failed")]
    HostAlloc(u64),
    /// The engine could not provide the memory (the charge was given back).
    #[error("device allocation of {0} bytes failed")]
    DeviceAlloc(u64),
    /// The engine failed to read or write the buffer.
    #[error("device access failed: {0}")]
    Device(String),
    /// An access falls outside the buffer.
    #[error("range {offset}+{len} outside buffer of {size} bytes")]
    OutOfRange {
        /// Start of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// The buffer's size.
        size: u64,
    },
    /// A thread panicked while holding the buffer; its contents are not trusted.
    #[error("buffer lock poisoned")]
    Poisoned,
}

static NEXT_BUFFER_ID: AtomicU64 = AtomicU64::new(1);

/// A buffer in a vGPU's memory. Fresh buffers read as zero, so nothing one vGPU freed is ever
/// visible to another. The bytes are given back to the partition when the buffer is dropped.
pub struct DeviceBuffer {
    id: u64,
    size: u64,
    partition: Arc<MemoryPartition>,
    /// Host storage: 8-byte words so `f32` views are aligned (empty when `storage` holds the
    /// bytes). The lock also orders engine access to `storage` against host reads and writes.
    words: RwLock<Vec<u64>>,
    /// The bytes in the engine's memory (the partition has an engine arena).
    storage: Option<Box<dyn BufferStorage>>,
    /// Submissions in flight that use the buffer (see [`DevicePin`]).
    pins: Pins,
}

/// Longest a host access waits for submissions in flight on a buffer (they are settled at the
/// end of their vGPU's turn at the latest, or fail with the engine's fence timeout).
const HOST_WAIT: Duration = Duration::from_secs(30);

/// Device use of a buffer by submissions in flight.
#[derive(Debug, Default)]
struct Pins {
    count: Mutex<PinCount>,
    released: Condvar,
}

#[derive(Debug, Default, Clone, Copy)]
struct PinCount {
    reads: u32,
    writes: u32,
}

/// A submission in flight that reads or writes a buffer (an engine that keeps submissions in
/// flight across chunk boundaries takes one per buffer, while it holds the buffer's lock, and
/// drops it once the submission completed). It keeps the buffer alive, and host reads wait
/// while the device may write the buffer, host writes while it may read or write it, just as
/// they wait for the lock a synchronous chunk holds.
#[derive(Debug)]
pub(crate) struct DevicePin {
    buffer: Arc<DeviceBuffer>,
    write: bool,
}

impl DevicePin {
    /// Pins `buffer` for a device read (`write` false) or write.
    pub(crate) fn new(buffer: &Arc<DeviceBuffer>, write: bool) -> Self {
        let mut count = buffer.pins.count.lock().unwrap_or_else(|e| e.into_inner());
        if write {
            count.writes += 1;
        } else {
            count.reads += 1;
        }
        drop(count);
        Self {
            buffer: Arc::clone(buffer),
            write,
        }
    }
}

impl Drop for DevicePin {
    fn drop(&mut self) {
        let pins = &self.buffer.pins;
        let mut count = pins.count.lock().unwrap_or_else(|e| e.into_inner());
        if self.write {
            count.writes = count.writes.saturating_sub(1);
        } else {
            count.reads = count.reads.saturating_sub(1);
        }
        drop(count);
        pins.released.notify_all();
    }
}

impl DeviceBuffer {
    /// Charges `size` bytes to `partition`, then allocates them zeroed (fallibly).
    /// In the engine's memory when the partition has an engine arena, in host memory otherwise.
    pub fn new(partition: &Arc<MemoryPartition>, size: u64) -> Result<Arc<Self>, BufferError> {
        partition.charge(size)?;
        let (words, storage) = match partition.arena() {
            Some(arena) => match arena.alloc(size) {
                Ok(storage) => (Vec::new(), Some(storage)),
                Err(e) => {
                    partition.release(size);
                    return Err(e);
                }
            },
            None => match Self::zeroed_words(size) {
                Some(words) => (words, None),
                None => {
                    partition.release(size);
                    return Err(BufferError::HostAlloc(size));
                }
            },
        };
        Ok(Arc::new(Self {
            id: NEXT_BUFFER_ID.fetch_add(1, Ordering::Relaxed),
            size,
            partition: Arc::clone(partition),
            words: RwLock::new(words),
            storage,
            pins: Pins::default(),
        }))
    }

    /// The engine storage holding the bytes, if any (for the engine that made it).
    pub(crate) fn storage(&self) -> Option<&dyn BufferStorage> {
        self.storage.as_deref()
    }

    fn zeroed_words(size: u64) -> Option<Vec<u64>> {
        let count = usize::try_from(size.div_ceil(8)).ok()?;
        let mut words = Vec::new();
        words.try_reserve_exact(count).ok()?;
        words.resize(count, 0);
        Some(words)
    }

    /// Process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The id of the vGPU whose partition holds the buffer.
    pub fn vgpu_id(&self) -> u32 {
        self.partition.vgpu_id()
    }

    /// Checks that `offset..offset+len` lies inside the buffer.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), BufferError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BufferError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Shared access to the words (the engine's inputs).
    pub(crate) fn read_words(&self) -> Result<RwLockReadGuard<'_, Vec<u64>>, BufferError> {
        self.words.read().map_err(|_| BufferError::Poisoned)
    }

    /// Exclusive access to the words (the engine's outputs).
    pub(crate) fn write_words(&self) -> Result<RwLockWriteGuard<'_, Vec<u64>>, BufferError> {
        self.words.write().map_err(|_| BufferError::Poisoned)
    }

    /// Waits (without the lock) until no submission in flight conflicts with a host access
    /// (`write`: any device use; otherwise device writes).
    fn wait_unpinned(&self, write: bool) -> Result<(), BufferError> {
        let deadline = Instant::now() + HOST_WAIT;
        let mut count = self.pins.count.lock().unwrap_or_else(|e| e.into_inner());
        while count.writes > 0 || (write && count.reads > 0) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BufferError::Device(
                    "buffer still in use by the device".into(),
                ));
            }
            count = self
                .pins
                .released
                .wait_timeout(count, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Whether submissions in flight conflict with a host access (see `wait_unpinned`).
    fn pinned(&self, write: bool) -> bool {
        let count = self.pins.count.lock().unwrap_or_else(|e| e.into_inner());
        count.writes > 0 || (write && count.reads > 0)
    }

    /// The lock for a host read, once no submission in flight writes the buffer. Pins are
    /// taken under the lock, so none can appear while the guard is held.
    fn host_read(&self) -> Result<RwLockReadGuard<'_, Vec<u64>>, BufferError> {
        loop {
            let guard = self.read_words()?;
            if !self.pinned(false) {
                return Ok(guard);
            }
            drop(guard);
            self.wait_unpinned(false)?;
        }
    }

    /// The lock for a host write, once no submission in flight uses the buffer.
    fn host_write(&self) -> Result<RwLockWriteGuard<'_, Vec<u64>>, BufferError> {
        loop {
            let guard = self.write_words()?;
            if !self.pinned(true) {
                return Ok(guard);
            }
            drop(guard);
            self.wait_unpinned(true)?;
        }
    }

    fn byte_range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, BufferError> {
        let len64 = len as u64;
        self.check_range(offset, len64)?;
        // Both fit in usize: the buffer's words were allocated with a usize length.
        let start = usize::try_from(offset).map_err(|_| BufferError::HostAlloc(self.size))?;
        Ok(start..start + len)
    }

    /// Copies bytes at `offset` into `out`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BufferError> {
        if self.storage.is_some() {
            return self.with_bytes(offset, out.len(), |b| out.copy_from_slice(b));
        }
        let range = self.byte_range(offset, out.len())?;
        let words = self.host_read()?;
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        out.copy_from_slice(&bytes[range]);
        Ok(())
    }

    /// Copies `data` into the buffer at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), BufferError> {
        if self.storage.is_some() {
            return self.with_bytes_mut(offset, data.len(), |b| b.copy_from_slice(data));
        }
        let range = self.byte_range(offset, data.len())?;
        let mut words = self.host_write()?;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        bytes[range].copy_from_slice(data);
        Ok(())
    }

    /// Runs `f` on the buffer bytes `offset..offset + len` under the read lock: lets a caller copy
    /// straight out of device memory (e.g. into guest memory) without an intermediate buffer.
    pub fn with_bytes<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, BufferError> {
        let range = self.byte_range(offset, len)?;
        let words = self.host_read()?;
        if let Some(storage) = &self.storage {
            let mut f = Some(f);
            let mut out = None;
            storage.with_bytes(offset, len, &mut |b| out = f.take().map(|f| f(b)))?;
            drop(words);
            return out.ok_or_else(|| BufferError::Device("no bytes mapped".into()));
        }
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        Ok(f(&bytes[range]))
    }

    /// Runs `f` on the buffer bytes `offset..offset + len` under the write lock: lets a caller
    /// copy straight into device memory (e.g. from guest memory) without an intermediate buffer.
    pub fn with_bytes_mut<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, BufferError> {
        let range = self.byte_range(offset, len)?;
        let mut words = self.host_write()?;
        if let Some(storage) = &self.storage {
            let mut f = Some(f);
            let mut out = None;
            storage.with_bytes_mut(offset, len, &mut |b| out = f.take().map(|f| f(b)))?;
            drop(words);
            return out.ok_or_else(|| BufferError::Device("no bytes mapped".into()));
        }
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        Ok(f(&mut bytes[range]))
    }

    /// Reads `out.len()` native-endian `f32`s at byte `offset` (any alignment).
    pub fn read_f32(&self, offset: u64, out: &mut [f32]) -> Result<(), BufferError> {
        self.read(offset, bytemuck::cast_slice_mut(out))
    }

    /// Writes native-endian `f32`s at byte `offset` (any alignment).
    pub fn write_f32(&self, offset: u64, data: &[f32]) -> Result<(), BufferError> {
        self.write(offset, bytemuck::cast_slice(data))
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.partition.release(self.size);
    }
}

impl fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("id", &self.id)
            .field("size", &self.size)
            .field("vgpu_id", &self.vgpu_id())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::{DeviceMemory, MIB};
    use super::*;

    #[test]
    fn charged_zeroed_and_released() {
        let mem = DeviceMemory::with_mib(4);
        let p = MemoryPartition::new(7, mem.reserve(MIB).unwrap());
        let b = DeviceBuffer::new(&p, 1000).unwrap();
        assert_eq!((p.used(), b.vgpu_id(), b.size()), (1000, 7, 1000));
        let mut out = [1u8; 1000];
        b.read(0, &mut out).unwrap();
        assert!(out.iter().all(|&x| x == 0));
        b.write(998, &[9, 9]).unwrap();
        assert!(b.write(999, &[9, 9]).is_err());
        assert!(b.read(u64::MAX, &mut [0u8; 2]).is_err());
        b.write_f32(4, &[1.5, -2.0]).unwrap();
        let mut f = [0f32; 2];
        b.read_f32(4, &mut f).unwrap();
        assert_eq!(f, [1.5, -2.0]);
        assert!(matches!(
            DeviceBuffer::new(&p, MIB),
            Err(BufferError::OutOfMemory(_))
        ));
        drop(b);
        assert_eq!(p.used(), 0);
    }

    #[test]
    fn host_access_waits_for_conflicting_device_pins() {
        use std::sync::atomic::AtomicBool;
        let mem = DeviceMemory::with_mib(4);
        let p = MemoryPartition::new(7, mem.reserve(MIB).unwrap());
        let b = DeviceBuffer::new(&p, 4096).unwrap();
        // A device read pin lets host reads through, but not host writes.
        let read_pin = DevicePin::new(&b, false);
        b.read(0, &mut [0u8; 16]).unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let writer = {
            let (b, released) = (Arc::clone(&b), Arc::clone(&released));
            std::thread::spawn(move || {
                b.write(0, &[1u8; 16]).unwrap();
                // The write went through only after the pin was dropped, however the threads
                // were scheduled.
                assert!(
                    released.load(Ordering::SeqCst),
                    "host write raced a device read"
                );
            })
        };
        // Gives the writer a chance to reach the buffer first (correctness does not depend
        // on it).
        std::thread::sleep(Duration::from_millis(20));
        released.store(true, Ordering::SeqCst);
        drop(read_pin);
        writer.join().unwrap();
        // A device write pin holds off host reads too; the pin keeps the buffer (and its
        // charge) alive after the last other handle is gone.
        let write_pin = DevicePin::new(&b, true);
        drop(b);
        assert_eq!(p.used(), 4096);
        let b = Arc::clone(&write_pin.buffer);
        let reader = std::thread::spawn(move || {
            let mut out = [0u8; 16];
            b.read(0, &mut out).unwrap();
            out
        });
        drop(write_pin);
        assert_eq!(reader.join().unwrap(), [1u8; 16]);
        assert_eq!(p.used(), 0);
    }
}
