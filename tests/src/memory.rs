//! Shared "guest" memory for the test frontend: one memfd, mapped here and handed to the backend with
//! SET_MEM_TABLE, plus a bump allocator for test buffers.
//!
//! Guest physical addresses (GPAs) start at [`GuestMemory::base`]; the backend sees the same bytes
//! through its own mapping of the memfd.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;

use vm_memory::ByteValued;

use crate::error::{FrontendError, Result};

/// Page size used for allocation alignment.
pub const PAGE_SIZE: u64 = 4096;

/// A memfd-backed region of shared memory that plays the guest's RAM.
pub struct GuestMemory {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    size: u64,
    base: u64,
    next: Mutex<u64>,
}

// SAFETY: the mapping lives as long as `self`; all access goes through bounds-checked copies or
// atomics, and the backend process shares it anyway, so concurrent access is part of the design.
unsafe impl Send for GuestMemory {}
// SAFETY: see above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Creates `size` bytes (rounded up to a page) of shared memory at guest address `base`.
    pub fn new(size: u64, base: u64) -> Result<Self> {
        let size = size
            .checked_add(PAGE_SIZE - 1)
            .ok_or(FrontendError::InvalidArgument("memory size"))?
            & !(PAGE_SIZE - 1);
        if size == 0 || !base.is_multiple_of(PAGE_SIZE) || base.checked_add(size).is_none() {
            return Err(FrontendError::InvalidArgument("memory size or base"));
        }
        let name =
            CString::new("vgpu-test-guest").map_err(|_| FrontendError::InvalidArgument("name"))?;
        // SAFETY: plain syscall with a valid C string.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(FrontendError::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len =
            libc::off_t::try_from(size).map_err(|_| FrontendError::InvalidArgument("size"))?;
        // SAFETY: valid fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(FrontendError::Io(std::io::Error::last_os_error()));
        }
        let map_len = usize::try_from(size).map_err(|_| FrontendError::InvalidArgument("size"))?;
        // SAFETY: mapping a memfd we own, shared, with the size we just set.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(FrontendError::Io(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(FrontendError::InvalidArgument("mmap"))?;
        Ok(GuestMemory {
            fd,
            ptr,
            size,
            base,
            next: Mutex::new(0),
        })
    }

    /// Guest address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// One past the last guest address.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// The memfd (sent to the backend in SET_MEM_TABLE).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// This process's virtual address of the first byte (the "userspace address" of the region).
    pub fn host_base(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// This process's virtual address of guest address `gpa` (vring addresses are given this way).
    pub fn host_addr(&self, gpa: u64) -> Result<u64> {
        let off = self.offset(gpa, 0)?;
        Ok(self.host_base() + off as u64)
    }

    fn offset(&self, gpa: u64, len: usize) -> Result<usize> {
        let end = gpa
            .checked_add(len as u64)
            .ok_or(FrontendError::OutOfRange { gpa, len })?;
        if gpa < self.base || end > self.end() {
            return Err(FrontendError::OutOfRange { gpa, len });
        }
        usize::try_from(gpa - self.base).map_err(|_| FrontendError::OutOfRange { gpa, len })
    }

    /// Allocates `len` bytes aligned to `align` (a power of two), zero-filled.
    pub fn alloc(&self, len: u64, align: u64) -> Result<u64> {
        if !align.is_power_of_two() {
            return Err(FrontendError::InvalidArgument("alignment"));
        }
        let mut next = self.next.lock().map_err(|_| FrontendError::Poisoned)?;
        let start = next
            .checked_add(align - 1)
            .ok_or(FrontendError::OutOfMemory(len))?
            & !(align - 1);
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.size)
            .ok_or(FrontendError::OutOfMemory(len))?;
        *next = end;
        drop(next);
        let gpa = self.base + start;
        self.fill(gpa, 0, len as usize)?;
        Ok(gpa)
    }

    /// Allocates whole pages.
    pub fn alloc_pages(&self, len: u64) -> Result<u64> {
        let len = len
            .checked_add(PAGE_SIZE - 1)
            .ok_or(FrontendError::OutOfMemory(len))?
            & !(PAGE_SIZE - 1);
        self.alloc(len, PAGE_SIZE)
    }

    /// Allocates a buffer and copies `data` into it.
    pub fn alloc_with(&self, data: &[u8]) -> Result<u64> {
        let gpa = self.alloc(data.len() as u64, 16)?;
        self.write(gpa, data)?;
        Ok(gpa)
    }

    /// Bytes still free for allocation.
    pub fn free_bytes(&self) -> u64 {
        self.next.lock().map(|n| self.size - *n).unwrap_or(0)
    }

    /// Copies `data` to guest address `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let off = self.offset(gpa, data.len())?;
        // SAFETY: bounds checked above; the mapping is valid for `size` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len());
        }
        Ok(())
    }

    /// Copies from guest address `gpa` into `out`.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> Result<()> {
        let off = self.offset(gpa, out.len())?;
        // SAFETY: bounds checked above.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), out.as_mut_ptr(), out.len());
        }
        Ok(())
    }

    /// Reads `len` bytes at `gpa` into a new vector.
    pub fn read_vec(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0; len];
        self.read(gpa, &mut v)?;
        Ok(v)
    }

    /// Fills `len` bytes at `gpa` with `byte`.
    pub fn fill(&self, gpa: u64, byte: u8, len: usize) -> Result<()> {
        let off = self.offset(gpa, len)?;
        // SAFETY: bounds checked above.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(off), byte, len) };
        Ok(())
    }

    /// Writes a plain-data object at `gpa`.
    pub fn write_obj<T: ByteValued>(&self, gpa: u64, val: &T) -> Result<()> {
        self.write(gpa, val.as_slice())
    }

    /// Reads a plain-data object from `gpa`.
    pub fn read_obj<T: ByteValued + Default>(&self, gpa: u64) -> Result<T> {
        let mut v = T::default();
        self.read(gpa, v.as_mut_slice())?;
        Ok(v)
    }

    /// The 16-bit word at `gpa` (2-aligned) as an atomic, for ring indexes shared with the backend.
    pub fn atomic_u16(&self, gpa: u64) -> Result<&AtomicU16> {
        if !gpa.is_multiple_of(2) {
            return Err(FrontendError::InvalidArgument("unaligned atomic"));
        }
        let off = self.offset(gpa, 2)?;
        // SAFETY: in bounds, aligned (the mapping is page-aligned), and lives as long as `self`.
        Ok(unsafe { &*(self.ptr.as_ptr().add(off).cast::<AtomicU16>()) })
    }

    /// Atomically loads a 16-bit ring field.
    pub fn load_u16(&self, gpa: u64) -> Result<u16> {
        Ok(self.atomic_u16(gpa)?.load(Ordering::Acquire))
    }

    /// Atomically stores a 16-bit ring field.
    pub fn store_u16(&self, gpa: u64, val: u16) -> Result<()> {
        self.atomic_u16(gpa)?.store(val, Ordering::Release);
        Ok(())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `new`, size unchanged.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_write_read() {
        let mem = GuestMemory::new(1 << 20, 0x10000).unwrap();
        let a = mem.alloc(10, 16).unwrap();
        let b = mem.alloc_pages(5000).unwrap();
        assert_eq!(a, 0x10000);
        assert_eq!(b % PAGE_SIZE, 0);
        mem.write(b, &[1, 2, 3]).unwrap();
        assert_eq!(mem.read_vec(b, 3).unwrap(), vec![1, 2, 3]);
        assert!(mem.write(mem.end() - 1, &[0, 0]).is_err());
        assert!(mem.read_vec(0, 1).is_err());
        assert!(mem.alloc(1 << 21, 1).is_err());
    }
}
