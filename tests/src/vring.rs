//! The driver side of a split virtqueue (virtio 1.x §2.7) laid out in [`GuestMemory`].
//!
//! It adds descriptor chains (well-formed or deliberately malformed), publishes them in the available
//! ring, decides whether the device needs a kick (with or without `VIRTIO_RING_F_EVENT_IDX`), and
//! collects used elements. It does no I/O itself: see [`crate::connection`] for kicks and calls.

use std::sync::atomic::{fence, Ordering};

use vhost::VringConfigData;
use vm_memory::ByteValued;

use crate::error::{FrontendError, Result};
use crate::memory::GuestMemory;

/// Descriptor flag: the chain continues at `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of indirect descriptors.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// Used-ring flag: the device does not need kicks (without EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// Avail-ring flag: the driver does not need interrupts (without EVENT_IDX).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// A descriptor exactly as it sits in the table.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VirtqDesc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// `VRING_DESC_F_*`.
    pub flags: u16,
    /// Next descriptor index when `VRING_DESC_F_NEXT` is set.
    pub next: u16,
}

// SAFETY: repr(C) plain integers without padding (8 + 4 + 2 + 2 bytes).
unsafe impl ByteValued for VirtqDesc {}

/// One element of the used ring.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the chain.
    pub id: u32,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// A buffer of a well-formed chain.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Device-readable buffer at a guest address.
    Readable {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// Device-writable buffer at a guest address.
    Writable {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
}

/// Where a raw descriptor's `next` points.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// The following descriptor of the chain (NEXT set), or none for the last one (NEXT clear).
    Auto,
    /// Descriptor `i` of this chain (NEXT set): makes loops possible.
    To(usize),
    /// This exact table index (NEXT set), e.g. a free or out-of-range index.
    Raw(u16),
    /// No NEXT flag even if more descriptors follow in the slice.
    End,
}

/// A descriptor of a possibly malformed chain; the NEXT flag is derived from `link`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest address (need not be inside memory).
    pub addr: u64,
    /// Length (may be huge).
    pub len: u32,
    /// Flags other than NEXT (`VRING_DESC_F_WRITE`, `VRING_DESC_F_INDIRECT`).
    pub flags: u16,
    /// Link to the next descriptor.
    pub link: Link,
}

impl RawDesc {
    /// A readable descriptor linked automatically.
    pub fn readable(addr: u64, len: u32) -> Self {
        RawDesc {
            addr,
            len,
            flags: 0,
            link: Link::Auto,
        }
    }

    /// A writable descriptor linked automatically.
    pub fn writable(addr: u64, len: u32) -> Self {
        RawDesc {
            addr,
            len,
            flags: VRING_DESC_F_WRITE,
            link: Link::Auto,
        }
    }
}

/// Guest addresses of the three parts of a split ring.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// Driver state of one split virtqueue.
pub struct SplitQueue {
    size: u16,
    addrs: RingAddrs,
    event_idx: bool,
    free: Vec<u16>,
    chains: Vec<Vec<u16>>,
    next_avail: u16,
    last_used: u16,
}

impl SplitQueue {
    /// Lays out a queue of `size` entries (a power of two, ≤ 32768) in fresh pages of `mem`.
    pub fn new(mem: &GuestMemory, size: u16, event_idx: bool) -> Result<Self> {
        if !size.is_power_of_two() || size > 32768 {
            return Err(FrontendError::InvalidArgument("queue size"));
        }
        let n = u64::from(size);
        let desc = mem.alloc_pages(16 * n)?;
        let avail = mem.alloc_pages(6 + 2 * n)?;
        let used = mem.alloc_pages(6 + 8 * n)?;
        Ok(SplitQueue {
            size,
            addrs: RingAddrs { desc, avail, used },
            event_idx,
            free: (0..size).rev().collect(),
            chains: vec![Vec::new(); usize::from(size)],
            next_avail: 0,
            last_used: 0,
        })
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest addresses of the ring parts.
    pub fn addrs(&self) -> RingAddrs {
        self.addrs
    }

    /// Whether EVENT_IDX suppression is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Free descriptors.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Chains published and not yet returned.
    pub fn in_flight(&self) -> u16 {
        self.next_avail.wrapping_sub(self.last_used)
    }

    /// The next available index (what SET_VRING_BASE would carry).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// SET_VRING_ADDR data: vhost-user takes this process's virtual addresses.
    pub fn config_data(&self, mem: &GuestMemory) -> Result<VringConfigData> {
        Ok(VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: mem.host_addr(self.addrs.desc)?,
            used_ring_addr: mem.host_addr(self.addrs.used)?,
            avail_ring_addr: mem.host_addr(self.addrs.avail)?,
            log_addr: None,
        })
    }

    fn desc_addr(&self, idx: u16) -> u64 {
        self.addrs.desc + 16 * u64::from(idx)
    }

    /// Writes a well-formed chain and returns its head index (not yet published).
    pub fn add_chain(&mut self, mem: &GuestMemory, segs: &[Segment]) -> Result<u16> {
        let raw: Vec<RawDesc> = segs
            .iter()
            .map(|s| match *s {
                Segment::Readable { addr, len } => RawDesc::readable(addr, len),
                Segment::Writable { addr, len } => RawDesc::writable(addr, len),
            })
            .collect();
        self.add_raw(mem, &raw)
    }

    /// Writes a chain of raw descriptors, exactly as given, and returns its head index.
    pub fn add_raw(&mut self, mem: &GuestMemory, descs: &[RawDesc]) -> Result<u16> {
        if descs.is_empty() || descs.len() > self.free.len() {
            return Err(FrontendError::QueueFull {
                need: descs.len(),
                free: self.free.len(),
            });
        }
        let split = self.free.len() - descs.len();
        let mut idxs = self.free.split_off(split);
        idxs.reverse();
        for (i, d) in descs.iter().enumerate() {
            let (next_flag, next) = match d.link {
                Link::Auto if i + 1 < descs.len() => (VRING_DESC_F_NEXT, idxs[i + 1]),
                Link::Auto | Link::End => (0, 0),
                Link::To(j) => (
                    VRING_DESC_F_NEXT,
                    *idxs.get(j).ok_or(FrontendError::InvalidArgument("link"))?,
                ),
                Link::Raw(r) => (VRING_DESC_F_NEXT, r),
            };
            let desc = VirtqDesc {
                addr: d.addr,
                len: d.len,
                flags: (d.flags & !VRING_DESC_F_NEXT) | next_flag,
                next,
            };
            mem.write_obj(self.desc_addr(idxs[i]), &desc)?;
        }
        let head = idxs[0];
        self.chains[usize::from(head)] = idxs;
        Ok(head)
    }

    /// Writes an indirect table for `segs` in freshly allocated memory and a single head descriptor
    /// pointing at it. Needs `VIRTIO_RING_F_INDIRECT_DESC`.
    pub fn add_indirect(&mut self, mem: &GuestMemory, segs: &[Segment]) -> Result<u16> {
        let n = segs.len();
        let table = mem.alloc(16 * n as u64, 16)?;
        for (i, s) in segs.iter().enumerate() {
            let (addr, len, flags) = match *s {
                Segment::Readable { addr, len } => (addr, len, 0),
                Segment::Writable { addr, len } => (addr, len, VRING_DESC_F_WRITE),
            };
            let more = i + 1 < n;
            let desc = VirtqDesc {
                addr,
                len,
                flags: flags | if more { VRING_DESC_F_NEXT } else { 0 },
                next: if more { (i + 1) as u16 } else { 0 },
            };
            mem.write_obj(table + 16 * i as u64, &desc)?;
        }
        let len = u32::try_from(16 * n).map_err(|_| FrontendError::InvalidArgument("indirect"))?;
        self.add_raw(
            mem,
            &[RawDesc {
                addr: table,
                len,
                flags: VRING_DESC_F_INDIRECT,
                link: Link::Auto,
            }],
        )
    }

    /// Puts `head` in the available ring and returns whether the device must be kicked.
    pub fn publish(&mut self, mem: &GuestMemory, head: u16) -> Result<bool> {
        let slot = self.next_avail % self.size;
        mem.store_u16(self.addrs.avail + 4 + 2 * u64::from(slot), head)?;
        let old = self.next_avail;
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::SeqCst);
        mem.store_u16(self.addrs.avail + 2, self.next_avail)?;
        // The device may have changed avail_event / flags; read after publishing.
        fence(Ordering::SeqCst);
        self.needs_kick(mem, old, self.next_avail)
    }

    fn needs_kick(&self, mem: &GuestMemory, old: u16, new: u16) -> Result<bool> {
        if self.event_idx {
            let avail_event = mem.load_u16(self.addrs.used + 4 + 8 * u64::from(self.size))?;
            Ok(need_event(avail_event, new, old))
        } else {
            let flags = mem.load_u16(self.addrs.used)?;
            Ok(flags & VRING_USED_F_NO_NOTIFY == 0)
        }
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMemory) -> Result<u16> {
        mem.load_u16(self.addrs.used + 2)
    }

    /// Takes the next used element, if any, and frees its descriptors.
    pub fn pop_used(&mut self, mem: &GuestMemory) -> Result<Option<UsedElem>> {
        if self.used_idx(mem)? == self.last_used {
            return Ok(None);
        }
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_used % self.size);
        let base = self.addrs.used + 4 + 8 * slot;
        let mut raw = [0u8; 8];
        mem.read(base, &mut raw)?;
        let elem = UsedElem {
            id: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
            len: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
        };
        self.last_used = self.last_used.wrapping_add(1);
        let chain = usize::try_from(elem.id)
            .ok()
            .and_then(|i| self.chains.get_mut(i))
            .map(std::mem::take)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                FrontendError::Protocol(format!("used id {} is not an outstanding head", elem.id))
            })?;
        self.free.extend(chain.into_iter().rev());
        Ok(Some(elem))
    }

    /// Asks for an interrupt on the next used element; returns true if elements are already
    /// pending (the caller must check again before sleeping).
    pub fn enable_notify(&self, mem: &GuestMemory) -> Result<bool> {
        if self.event_idx {
            mem.store_u16(
                self.addrs.avail + 4 + 2 * u64::from(self.size),
                self.last_used,
            )?;
        } else {
            mem.store_u16(self.addrs.avail, 0)?;
        }
        fence(Ordering::SeqCst);
        Ok(self.used_idx(mem)? != self.last_used)
    }

    /// Tells the device no interrupts are needed (flag, or a used_event far behind).
    pub fn disable_notify(&self, mem: &GuestMemory) -> Result<()> {
        if self.event_idx {
            mem.store_u16(
                self.addrs.avail + 4 + 2 * u64::from(self.size),
                self.last_used.wrapping_sub(1),
            )
        } else {
            mem.store_u16(self.addrs.avail, VRING_AVAIL_F_NO_INTERRUPT)
        }
    }

    /// The device's avail_event (meaningful with EVENT_IDX).
    pub fn avail_event(&self, mem: &GuestMemory) -> Result<u16> {
        mem.load_u16(self.addrs.used + 4 + 8 * u64::from(self.size))
    }
}

/// virtio's `vring_need_event`: true if `event_idx` lies in `[old, new)`.
pub fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_layout_and_free_list() {
        let mem = GuestMemory::new(1 << 20, 0).unwrap();
        let mut q = SplitQueue::new(&mem, 8, false).unwrap();
        let head = q
            .add_chain(
                &mem,
                &[
                    Segment::Readable {
                        addr: 0x100,
                        len: 24,
                    },
                    Segment::Writable {
                        addr: 0x200,
                        len: 24,
                    },
                ],
            )
            .unwrap();
        assert_eq!(q.num_free(), 6);
        let d0: VirtqDesc = mem.read_obj(q.addrs().desc + 16 * u64::from(head)).unwrap();
        assert_eq!(d0.flags, VRING_DESC_F_NEXT);
        let d1: VirtqDesc = mem
            .read_obj(q.addrs().desc + 16 * u64::from(d0.next))
            .unwrap();
        assert_eq!(d1.flags, VRING_DESC_F_WRITE);
        assert!(q.publish(&mem, head).unwrap());
        // Play device: put the chain in the used ring.
        let used = q.addrs().used;
        mem.write(used + 4, &u32::from(head).to_le_bytes()).unwrap();
        mem.write(used + 8, &24u32.to_le_bytes()).unwrap();
        mem.store_u16(used + 2, 1).unwrap();
        assert_eq!(
            q.pop_used(&mem).unwrap(),
            Some(UsedElem {
                id: head.into(),
                len: 24
            })
        );
        assert_eq!(q.num_free(), 8);
        assert_eq!(q.pop_used(&mem).unwrap(), None);
    }

    #[test]
    fn need_event_matches_spec() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(65535, 0, 65535));
        assert!(need_event(3, 5, 2));
        assert!(!need_event(5, 5, 2));
    }
}
