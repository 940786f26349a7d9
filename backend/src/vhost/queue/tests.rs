//! Chain reader/writer and queue-loop tests over `virtio_queue::mock::MockSplitQueue`.

use std::cell::RefCell;

use vgpu_protocol::virtio_gpu::{
    CtrlHeader, VIRTIO_GPU_CMD_GET_DISPLAY_INFO, VIRTIO_GPU_CMD_MOVE_CURSOR, VIRTIO_GPU_FLAG_FENCE,
    VIRTIO_GPU_RESP_ERR_UNSPEC,
};
use vgpu_protocol::Request;
use vhost_user_backend::{VringMutex, VringT};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use super::*;

/// Records what it was given; answers control requests with `reply_len` patterned bytes.
#[derive(Default)]
struct MockSink {
    reply_len: usize,
    control: RefCell<Vec<u32>>,
    cursor: RefCell<Vec<u32>>,
    /// The response buffer size each control request was given.
    room: RefCell<Vec<usize>>,
}

impl CommandSink for MockSink {
    fn control(
        &self,
        _mem: &GuestMemory,
        req: &Request<'_>,
        resp: &mut [u8],
        _token: u64,
    ) -> CtrlOutcome {
        self.control.borrow_mut().push(req.hdr.type_);
        self.room.borrow_mut().push(resp.len());
        for (i, b) in resp.iter_mut().take(self.reply_len).enumerate() {
            *b = i as u8;
        }
        CtrlOutcome::Done(self.reply_len)
    }

    fn cursor(&self, req: &Request<'_>) {
        self.cursor.borrow_mut().push(req.hdr.type_);
    }
}

const REQ: u64 = 0x1_0000;
const RESP_A: u64 = 0x2_0000;
const RESP_B: u64 = 0x3_0000;

fn memory(size: usize) -> GuestMemory {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

fn desc(addr: u64, len: u32, writable: bool) -> RawDescriptor {
    let flags = if writable {
        VRING_DESC_F_WRITE as u16
    } else {
        0
    };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn header(type_: u32) -> CtrlHeader {
    CtrlHeader {
        type_,
        flags: VIRTIO_GPU_FLAG_FENCE,
        fence_id: 77,
        ..Default::default()
    }
}

fn put_header(mem: &GuestMemory, type_: u32) {
    mem.write_slice(header(type_).as_slice(), GuestAddress(REQ))
        .unwrap();
}

fn read_header(mem: &GuestMemory, addr: u64) -> CtrlHeader {
    mem.read_obj::<CtrlHeader>(GuestAddress(addr)).unwrap()
}

#[test]
fn response_split_across_two_writable_descriptors() {
    let mem = memory(0x10_0000);
    put_header(&mem, VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
    let vq = MockSplitQueue::new(&mem, 16);
    let chain = vq
        .build_desc_chain(&[
            desc(REQ, 24, false),
            desc(RESP_A, 100, true),
            desc(RESP_B, 400, true),
        ])
        .unwrap();
    let sink = MockSink {
        reply_len: 300,
        ..Default::default()
    };
    let mut w = QueueWorker::new(QueueKind::Control);
    assert_eq!(w.serve_chain(&mem, chain, &sink), 300);
    assert_eq!(
        *sink.control.borrow(),
        vec![VIRTIO_GPU_CMD_GET_DISPLAY_INFO]
    );
    let mut a = [0u8; 100];
    let mut b = [0u8; 200];
    mem.read_slice(&mut a, GuestAddress(RESP_A)).unwrap();
    mem.read_slice(&mut b, GuestAddress(RESP_B)).unwrap();
    assert!(a.iter().enumerate().all(|(i, &v)| v == i as u8));
    assert!(b.iter().enumerate().all(|(i, &v)| v == (i + 100) as u8));
}

#[test]
fn response_larger_than_writable_space_is_truncated() {
    let mem = memory(0x10_0000);
    put_header(&mem, VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
    let vq = MockSplitQueue::new(&mem, 16);
    let chain = vq
        .build_desc_chain(&[desc(REQ, 24, false), desc(RESP_A, 16, true)])
        .unwrap();
    let sink = MockSink {
        reply_len: 408,
        ..Default::default()
    };
    let mut w = QueueWorker::new(QueueKind::Control);
    assert_eq!(w.serve_chain(&mem, chain, &sink), 16);
}

/// The device is handed only the room the chain has, so an answer that does not fit becomes its
/// own `ERR_UNSPEC` instead of a truncated `OK_*` (found by tests/tests/hostile_guest.rs).
#[test]
fn the_device_sees_only_the_writable_room() {
    let mem = memory(0x10_0000);
    put_header(&mem, VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
    let vq = MockSplitQueue::new(&mem, 16);
    let sink = MockSink {
        reply_len: 24,
        ..Default::default()
    };
    let mut w = QueueWorker::new(QueueKind::Control);
    for (descs, room) in [
        (vec![desc(REQ, 24, false), desc(RESP_A, 24, true)], 24),
        (
            vec![
                desc(REQ, 24, false),
                desc(RESP_A, 10, true),
                desc(RESP_B, 30, true),
            ],
            40,
        ),
        (vec![desc(REQ, 24, false), desc(RESP_A, 8, true)], 8),
        (
            vec![desc(REQ, 24, false), desc(RESP_A, 8192, true)],
            w.response.len(),
        ),
    ] {
        let chain = vq.build_desc_chain(&descs).unwrap();
        w.serve_chain(&mem, chain, &sink);
        assert_eq!(sink.room.borrow().last(), Some(&room), "{descs:?}");
    }
    // And through the fenced, ordered path of a live ring.
    let chain = vq
        .build_desc_chain(&[desc(REQ, 24, false), desc(RESP_A, 24, true)])
        .unwrap();
    let head = chain.head_index();
    assert_eq!(w.serve_control(&mem, head, chain, &sink), Some(24));
    assert_eq!(sink.room.borrow().last(), Some(&24));
}

#[test]
fn missing_writable_descriptor_is_used_with_zero_length() {
    let mem = memory(0x10_0000);
    put_header(&mem, VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
    let vq = MockSplitQueue::new(&mem, 16);
    let chain = vq.build_desc_chain(&[desc(REQ, 24, false)]).unwrap();
    let sink = MockSink {
        reply_len: 24,
        ..Default::default()
    };
    let mut w = QueueWorker::new(QueueKind::Control);
    assert_eq!(w.serve_chain(&mem, chain, &sink), 0);
}

#[test]
fn oversized_readable_part_gets_err_unspec() {
    let mem = memory(4 << 20);
    put_header(&mem, VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
    let vq = MockSplitQueue::new(&mem, 16);
    let too_long = (MAX_READABLE_LEN + 1) as u32;
    let chain = vq
        .build_desc_chain(&[desc(REQ, too_long, false), desc(0x30_0000, 64, true)])
        .unwrap();
    let sink = MockSink::default();
    let mut w = QueueWorker::new(QueueKind::Control);
    assert_eq!(w.serve_chain(&mem, chain, &sink), 24);
    assert!(sink.control.borrow().is_empty());
    let h = read_header(&mem, 0x30_0000);
    assert_eq!(h.type_, VIRTIO_GPU_RESP_ERR_UNSPEC);
}

#[test]
fn readable_descriptor_outside_memory_gets_err_unspec() {
    let mem = memory(0x10_0000);
    let vq = MockSplitQueue::new(&mem, 16);
    let chain = vq
        .build_desc_chain(&[desc(0x10_0000_0000, 24, false), desc(RESP_A, 64, true)])
        .unwrap();
    let sink = MockSink::default();
    let mut w = QueueWorker::new(QueueKind::Control);
    assert_eq!(w.serve_chain(&mem, chain, &sink), 24);
    assert!(sink.control.borrow().is_empty());
    assert_eq!(read_header(&mem, RESP_A).type_, VIRTIO_GPU_RESP_ERR_UNSPEC);
}

#[test]
fn writable_descriptor_outside_memory_is_not_written() {
    let mem = memory(0x10_0000);
    put_header(&mem, VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
    let vq = MockSplitQueue::new(&mem, 16);
    // Straddles the end of guest memory.
    let chain = vq
        .build_desc_chain(&[desc(REQ, 24, false), desc(0xF_FFF0, 64, true)])
        .unwrap();
    let sink = MockSink {
        reply_len: 24,
        ..Default::default()
    };
    let mut w = QueueWorker::new(QueueKind::Control);
    assert_eq!(w.serve_chain(&mem, chain, &sink), 0);
}

#[test]
fn zero_length_and_unknown_requests_get_errors_with_fence_echoed() {
    let mem = memory(0x10_0000);
    let vq = MockSplitQueue::new(&mem, 16);
    let sink = MockSink::default();
    let mut w = QueueWorker::new(QueueKind::Control);

    let chain = vq
        .build_desc_chain(&[desc(REQ, 0, false), desc(RESP_A, 64, true)])
        .unwrap();
    assert_eq!(w.serve_chain(&mem, chain, &sink), 24);
    assert_eq!(read_header(&mem, RESP_A).type_, VIRTIO_GPU_RESP_ERR_UNSPEC);

    put_header(&mem, 0xdead);
    let chain = vq
        .build_desc_chain(&[desc(REQ, 24, false), desc(RESP_B, 64, true)])
        .unwrap();
    assert_eq!(w.serve_chain(&mem, chain, &sink), 24);
    let h = read_header(&mem, RESP_B);
    assert_eq!(h.type_, VIRTIO_GPU_RESP_ERR_UNSPEC);
    assert_eq!(h.fence_id, 77);
    assert_eq!(h.flags & VIRTIO_GPU_FLAG_FENCE, VIRTIO_GPU_FLAG_FENCE);
    assert!(sink.control.borrow().is_empty());
}

#[test]
fn cursor_requests_get_no_response_bytes() {
    let mem = memory(0x10_0000);
    let mut bytes = header(VIRTIO_GPU_CMD_MOVE_CURSOR).as_slice().to_vec();
    bytes.extend_from_slice(&[0u8; 32]);
    mem.write_slice(&bytes, GuestAddress(REQ)).unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    let chain = vq
        .build_desc_chain(&[desc(REQ, bytes.len() as u32, false)])
        .unwrap();
    let sink = MockSink::default();
    let mut w = QueueWorker::new(QueueKind::Cursor);
    assert_eq!(w.serve_chain(&mem, chain, &sink), 0);
    assert_eq!(*sink.cursor.borrow(), vec![VIRTIO_GPU_CMD_MOVE_CURSOR]);
}

#[test]
fn readable_after_writable_is_malformed() {
    let mem = memory(0x10_0000);
    put_header(&mem, VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
    let vq = MockSplitQueue::new(&mem, 16);
    let chain = vq
        .build_desc_chain(&[
            desc(REQ, 24, false),
            desc(RESP_A, 64, true),
            desc(REQ, 24, false),
        ])
        .unwrap();
    let mut bufs = ChainBuffers::new();
    assert_eq!(
        bufs.gather(&mem, chain),
        Err(ChainError::ReadableAfterWritable)
    );
    assert!(bufs.has_writable());
}

#[test]
fn drain_serves_every_chain_and_fills_the_used_ring() {
    let mem = memory(0x10_0000);
    put_header(&mem, VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(
        &[
            RawDescriptor::from(SplitDescriptor::new(REQ, 24, 1 /* NEXT */, 1)),
            desc(RESP_A, 64, true),
            RawDescriptor::from(SplitDescriptor::new(REQ, 24, 1 /* NEXT */, 3)),
            desc(RESP_B, 64, true),
        ],
        0,
    )
    .unwrap();
    let vring =
        VringMutex::<GuestMemoryHandle>::new(GuestMemoryAtomic::new(mem.clone()), 16).unwrap();
    vring.set_queue_size(16);
    vring
        .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
        .unwrap();
    vring.set_queue_ready(true);
    vring.set_enabled(true);

    let sink = MockSink {
        reply_len: 24,
        ..Default::default()
    };
    let mut w = QueueWorker::new(QueueKind::Control);
    w.drain(&vring, &mem, &sink).unwrap();
    assert_eq!(sink.control.borrow().len(), 2);
    assert_eq!(vq.used().idx().load(), 2);
    let first = vq.used().ring().ref_at(0).unwrap().load();
    assert_eq!((first.id(), first.len()), (0, 24));
    let second = vq.used().ring().ref_at(1).unwrap().load();
    assert_eq!((second.id(), second.len()), (2, 24));

    // A spurious call finds nothing to do.
    w.drain(&vring, &mem, &sink).unwrap();
    assert_eq!(sink.control.borrow().len(), 2);
    assert_eq!(vq.used().idx().load(), 2);
}

#[test]
fn drain_ignores_a_ring_that_is_not_ready() {
    let mem = memory(0x10_0000);
    let vring =
        VringMutex::<GuestMemoryHandle>::new(GuestMemoryAtomic::new(mem.clone()), 16).unwrap();
    let sink = MockSink::default();
    let mut w = QueueWorker::new(QueueKind::Control);
    w.drain(&vring, &mem, &sink).unwrap();
}

/// Answers SUBMIT_3D asynchronously (records the token), everything else at once with OK_NODATA.
#[derive(Default)]
struct AsyncSink {
    seen: RefCell<Vec<u32>>,
    tokens: RefCell<Vec<u64>>,
}

impl CommandSink for AsyncSink {
    fn control(
        &self,
        _mem: &GuestMemory,
        req: &Request<'_>,
        resp: &mut [u8],
        token: u64,
    ) -> CtrlOutcome {
        self.seen.borrow_mut().push(req.hdr.type_);
        if req.hdr.type_ == vgpu_protocol::virtio_gpu::VIRTIO_GPU_CMD_SUBMIT_3D {
            self.tokens.borrow_mut().push(token);
            return CtrlOutcome::Pending;
        }
        let h = response_header(&req.hdr, VIRTIO_GPU_RESP_OK_NODATA);
        resp[..24].copy_from_slice(h.as_slice());
        CtrlOutcome::Done(24)
    }

    fn cursor(&self, _req: &Request<'_>) {}
}

#[test]
fn fenced_responses_keep_order_and_hazards_wait_for_jobs() {
    use vgpu_protocol::virtio_gpu::*;
    use vgpu_protocol::GpuCommand;
    let mem = memory(0x10_0000);
    let t3 = Transfer3d {
        box_: Box3d {
            w: 4,
            h: 1,
            d: 1,
            ..Default::default()
        },
        resource_id: 5,
        ..Default::default()
    };
    let cmds: [(GpuCommand<'_>, Option<u64>); 5] = [
        (GpuCommand::Submit3d(Submit3d::default(), &[]), Some(1)),
        (
            GpuCommand::ResourceFlush(ResourceFlush {
                r: Default::default(),
                resource_id: 9,
                padding: 0,
            }),
            Some(2),
        ),
        (GpuCommand::GetDisplayInfo, None),
        (GpuCommand::TransferFromHost3d(t3), None),
        (
            GpuCommand::TransferToHost2d(TransferToHost2d {
                r: Default::default(),
                offset: 0,
                resource_id: 9,
                padding: 0,
            }),
            None,
        ),
    ];
    let mut descs = Vec::new();
    for (i, (cmd, fence)) in cmds.iter().enumerate() {
        let mut bytes = Vec::new();
        let hdr = CtrlHeader {
            flags: if fence.is_some() {
                VIRTIO_GPU_FLAG_FENCE
            } else {
                0
            },
            fence_id: fence.unwrap_or(0),
            ctx_id: 1,
            ..Default::default()
        };
        cmd.encode(hdr, &mut bytes);
        let at = REQ + i as u64 * 0x100;
        mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        let next = (2 * i + 1) as u16;
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            at,
            bytes.len() as u32,
            1,
            next,
        )));
        descs.push(desc(RESP_A + i as u64 * 0x100, 64, true));
    }
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&descs, 0).unwrap();
    let vring =
        VringMutex::<GuestMemoryHandle>::new(GuestMemoryAtomic::new(mem.clone()), 16).unwrap();
    vring.set_queue_size(16);
    vring
        .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
        .unwrap();
    vring.set_queue_ready(true);
    vring.set_enabled(true);

    let sink = AsyncSink::default();
    let completions = CompletionQueue::new().unwrap();
    let mut w = QueueWorker::new(QueueKind::Control);
    w.drain(&vring, &mem, &sink).unwrap();
    // The 3D read-back waits for the job; the fenced flush waits for the fenced submit; the
    // unfenced display commands flow.
    assert_eq!(
        *sink.seen.borrow(),
        vec![
            VIRTIO_GPU_CMD_SUBMIT_3D,
            VIRTIO_GPU_CMD_RESOURCE_FLUSH,
            VIRTIO_GPU_CMD_GET_DISPLAY_INFO,
            VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
        ]
    );
    assert_eq!(vq.used().idx().load(), 2);
    let ids = |n: u16| -> Vec<u16> {
        (0..n)
            .map(|i| vq.used().ring().ref_at(i as usize).unwrap().load().id() as u16)
            .collect()
    };
    assert_eq!(ids(2), vec![4, 8]);
    assert_eq!(w.inflight().len(), 3);

    // A completion for an unknown token (e.g. from before a reset) is ignored.
    use crate::device::JobNotifier;
    completions.job_done(999, true);
    w.complete(&vring, &mem, &sink, &completions).unwrap();
    assert_eq!(vq.used().idx().load(), 2);

    let token = sink.tokens.borrow()[0];
    completions.job_done(token, false);
    w.complete(&vring, &mem, &sink, &completions).unwrap();
    assert_eq!(
        sink.seen.borrow().last(),
        Some(&VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D)
    );
    assert_eq!(vq.used().idx().load(), 5);
    assert_eq!(ids(5), vec![4, 8, 0, 2, 6]);
    // The failed job is answered ERR_UNSPEC with its fence echoed.
    let r = read_header(&mem, RESP_A);
    assert_eq!((r.type_, r.fence_id), (VIRTIO_GPU_RESP_ERR_UNSPEC, 1));
    assert_eq!(read_header(&mem, RESP_A + 0x100).fence_id, 2);
    assert!(w.inflight().is_empty());
}

#[test]
fn deferred_request_bytes_are_bounded_and_the_ring_resumes_on_completion() {
    use crate::device::JobNotifier;
    use vgpu_protocol::virtio_gpu::*;
    use vgpu_protocol::GpuCommand;
    let mem = memory(16 << 20);
    let big = vec![0u8; 1 << 20];
    let t3 = Transfer3d {
        box_: Box3d {
            w: 4,
            h: 1,
            d: 1,
            ..Default::default()
        },
        resource_id: 5,
        ..Default::default()
    };
    // A running job, a read-back that must wait for it, then six 1 MiB submits that queue behind.
    let mut cmds = vec![
        GpuCommand::Submit3d(Submit3d::default(), &[]),
        GpuCommand::TransferFromHost3d(t3),
    ];
    for _ in 0..6 {
        cmds.push(GpuCommand::Submit3d(
            Submit3d {
                size: 1 << 20,
                padding: 0,
            },
            &big,
        ));
    }
    let mut descs = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        let mut bytes = Vec::new();
        cmd.encode(
            CtrlHeader {
                ctx_id: 1,
                ..Default::default()
            },
            &mut bytes,
        );
        let at = 0x10_0000 + i as u64 * 0x18_0000;
        mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        let next = (2 * i + 1) as u16;
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            at,
            bytes.len() as u32,
            1,
            next,
        )));
        descs.push(desc(RESP_A + i as u64 * 0x100, 64, true));
    }
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&descs, 0).unwrap();
    let vring =
        VringMutex::<GuestMemoryHandle>::new(GuestMemoryAtomic::new(mem.clone()), 16).unwrap();
    vring.set_queue_size(16);
    vring
        .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
        .unwrap();
    vring.set_queue_ready(true);
    vring.set_enabled(true);

    let sink = AsyncSink::default();
    let completions = CompletionQueue::new().unwrap();
    let mut w = QueueWorker::new(QueueKind::Control);
    w.drain(&vring, &mem, &sink).unwrap();
    // Only the first submit ran; the read-back and four big submits wait (4 MiB held), the last
    // two stay in the ring.
    assert_eq!(sink.seen.borrow().len(), 1);
    assert_eq!(w.inflight().len(), 6);
    assert!(w.inflight().deferred_bytes() >= MAX_DEFERRED_BYTES);
    assert!(w.inflight().deferred_bytes() < MAX_DEFERRED_BYTES + (2 << 20));

    // The job completes: the waiting requests run, and the drain resumes without a new kick.
    let token = sink.tokens.borrow()[0];
    completions.job_done(token, true);
    w.complete(&vring, &mem, &sink, &completions).unwrap();
    assert_eq!(sink.seen.borrow().len(), 8);
    assert_eq!(w.inflight().deferred_bytes(), 0);
}
