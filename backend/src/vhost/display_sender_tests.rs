//! The display sender against a fake QEMU on a socketpair.

use super::*;
use std::io::Write;
use std::sync::mpsc;

/// One message as the fake QEMU read it.
#[derive(Debug)]
struct Got {
    request: u32,
    body: Vec<u8>,
}

impl Got {
    fn word(&self, i: usize) -> u32 {
        le32(&self.body, i * 4)
    }
}

fn read_msg(s: &mut UnixStream) -> Got {
    let mut hdr = [0u8; 12];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(le32(&hdr, 4), 0, "backend requests carry no flags");
    let mut body = vec![0u8; le32(&hdr, 8) as usize];
    s.read_exact(&mut body).unwrap();
    Got {
        request: le32(&hdr, 0),
        body,
    }
}

fn reply(s: &mut UnixStream, request: u32, body: &[u8]) {
    let mut m = Vec::new();
    for w in [request, FLAG_REPLY, body.len() as u32] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m.extend_from_slice(body);
    s.write_all(&m).unwrap();
}

/// Plays QEMU's side of the handshake (offers EDID | DMABUF2, as QEMU 10).
fn handshake(s: &mut UnixStream) {
    let m = read_msg(s);
    assert_eq!((m.request, m.body.len()), (GET_PROTOCOL_FEATURES, 0));
    reply(s, GET_PROTOCOL_FEATURES, &3u64.to_le_bytes());
    let m = read_msg(s);
    assert_eq!(m.request, SET_PROTOCOL_FEATURES);
    assert_eq!(m.body, 1u64.to_le_bytes());
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

fn display_info_reply() -> Vec<u8> {
    let mut b = vec![0u8; CTRL_HDR_LEN + VIRTIO_GPU_MAX_SCANOUTS * DISPLAY_ONE_LEN];
    b[0..4].copy_from_slice(&VIRTIO_GPU_RESP_OK_DISPLAY_INFO.to_le_bytes());
    let one = CTRL_HDR_LEN;
    b[one + 8..one + 12].copy_from_slice(&1280u32.to_le_bytes());
    b[one + 12..one + 16].copy_from_slice(&800u32.to_le_bytes());
    b[one + 16..one + 20].copy_from_slice(&1u32.to_le_bytes());
    b
}

fn edid_reply() -> Vec<u8> {
    let mut b = vec![0u8; CTRL_HDR_LEN + 8 + 1024];
    b[0..4].copy_from_slice(&VIRTIO_GPU_RESP_OK_EDID.to_le_bytes());
    b[CTRL_HDR_LEN..CTRL_HDR_LEN + 4].copy_from_slice(&128u32.to_le_bytes());
    b[CTRL_HDR_LEN + 8] = 0xab;
    b
}

#[test]
fn mixed_messages_arrive_in_order_with_exact_pixels() {
    let (ours, mut qemu) = UnixStream::pair().unwrap();
    let mut tx = DisplaySender::spawn(ours).unwrap();
    tx.max_payload = 64 * 4 * 10; // 10 rows of 64 pixels per UPDATE

    let small = pattern(16 * 8 * 4, 1);
    let big = pattern(64 * 25 * 4, 7); // 25 rows → bands of 10, 10, 5
    let wide = pattern(1000 * 2 * 4, 9); // a row wider than a band → column chunks
    let cursor = [0x5au8; CURSOR_IMAGE_BYTES];

    let peer = thread::spawn(move || {
        handshake(&mut qemu);
        let m = read_msg(&mut qemu);
        assert_eq!(
            (m.request, m.word(0), m.word(1), m.word(2)),
            (SCANOUT, 0, 640, 480)
        );
        let m = read_msg(&mut qemu);
        assert_eq!(m.request, UPDATE);
        assert_eq!((m.word(1), m.word(2), m.word(3), m.word(4)), (3, 4, 16, 8));
        assert_eq!(&m.body[20..], &pattern(16 * 8 * 4, 1)[..]);
        let m = read_msg(&mut qemu);
        assert_eq!(m.request, CURSOR_UPDATE);
        assert_eq!((m.word(1), m.word(2), m.word(3), m.word(4)), (10, 20, 1, 2));
        assert!(m.body[20..].iter().all(|&b| b == 0x5a));
        assert_eq!(m.body.len(), 20 + CURSOR_IMAGE_BYTES);
        let m = read_msg(&mut qemu);
        assert_eq!((m.request, m.word(1), m.word(2)), (CURSOR_POS, 11, 21));
        // The big update in bands, rebuilt byte for byte.
        let mut rebuilt = Vec::new();
        for (y, h) in [(0, 10), (10, 10), (20, 5)] {
            let m = read_msg(&mut qemu);
            assert_eq!(m.request, UPDATE);
            assert_eq!((m.word(1), m.word(2), m.word(3), m.word(4)), (0, y, 64, h));
            rebuilt.extend_from_slice(&m.body[20..]);
        }
        assert_eq!(rebuilt, pattern(64 * 25 * 4, 7));
        // The wide update in column chunks of 640 and 360 pixels, one row per band.
        let wide = pattern(1000 * 2 * 4, 9);
        let mut img = vec![0u8; wide.len()];
        for _ in 0..4 {
            let m = read_msg(&mut qemu);
            assert_eq!(m.request, UPDATE);
            let (x, y, w, h) = (
                m.word(1) as usize,
                m.word(2) as usize,
                m.word(3) as usize,
                m.word(4),
            );
            assert_eq!(h, 1);
            img[(y * 1000 + x) * 4..(y * 1000 + x + w) * 4].copy_from_slice(&m.body[20..]);
        }
        assert_eq!(img, wide);
        let m = read_msg(&mut qemu);
        assert_eq!(m.request, CURSOR_POS_HIDE);
        let m = read_msg(&mut qemu);
        assert_eq!(m.request, GET_DISPLAY_INFO);
        reply(&mut qemu, GET_DISPLAY_INFO, &display_info_reply());
        let m = read_msg(&mut qemu);
        assert_eq!((m.request, m.word(0)), (GET_EDID, 0));
        reply(&mut qemu, GET_EDID, &edid_reply());
        let m = read_msg(&mut qemu);
        assert_eq!((m.request, m.word(1)), (SCANOUT, 0));
        qemu
    });

    tx.scanout(0, 640, 480).unwrap();
    assert_eq!(tx.update(0, rect(3, 4, 16, 8), &small), Ok(true));
    tx.cursor_update([0, 10, 20], 1, 2, &cursor).unwrap();
    tx.cursor_move([0, 11, 21]).unwrap();
    assert_eq!(tx.update(0, rect(0, 0, 64, 25), &big), Ok(true));
    assert_eq!(tx.update(0, rect(0, 0, 1000, 2), &wide), Ok(true));
    // A pixel buffer that does not match the rectangle is not sent.
    assert_eq!(tx.update(0, rect(0, 0, 2, 2), &[1; 8]), Ok(false));
    tx.cursor_hide([0, 0, 0]).unwrap();
    let modes = tx.display_info().unwrap().unwrap();
    assert_eq!(
        (modes[0].r.width, modes[0].r.height, modes[0].enabled),
        (1280, 800, 1)
    );
    assert!(tx.edid_enabled());
    let edid = tx.edid(0).unwrap().unwrap();
    assert_eq!((edid.len(), edid[0]), (128, 0xab));
    tx.scanout(0, 0, 0).unwrap();
    let _qemu = peer.join().unwrap();
    assert!(tx.is_alive());
}

/// Starts a sender whose peer answers the handshake and then reads nothing until told to.
fn stalled_peer() -> (DisplaySender, mpsc::Sender<()>, thread::JoinHandle<u64>) {
    let (ours, mut qemu) = UnixStream::pair().unwrap();
    let tx = DisplaySender::spawn(ours).unwrap();
    let (go, wait) = mpsc::channel::<()>();
    let peer = thread::spawn(move || {
        handshake(&mut qemu);
        if wait.recv().is_err() {
            return 0; // told nothing: stop reading for good (socket kept open until dropped)
        }
        let mut bytes = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n) = qemu.read(&mut buf) {
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
        bytes
    });
    (tx, go, peer)
}

#[test]
fn queue_thread_waits_only_when_both_buffers_are_in_flight() {
    let (mut tx, go, peer) = stalled_peer();
    let frame = pattern(1024 * 1024 * 4, 3); // 4 MiB: far more than the socket buffer
    let r = rect(0, 0, 1024, 1024);
    // Two updates return at once: one being written, one queued.
    let t = Instant::now();
    assert_eq!(tx.update(0, r, &frame), Ok(true));
    assert_eq!(tx.update(0, r, &frame), Ok(true));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // The third waits for a buffer until the frontend reads again.
    let (done_tx, done) = mpsc::channel();
    let caller = thread::spawn(move || {
        let ok = tx.update(0, r, &frame);
        done_tx.send(()).unwrap();
        (tx, ok)
    });
    assert!(done.recv_timeout(Duration::from_millis(400)).is_err());
    go.send(()).unwrap();
    done.recv_timeout(Duration::from_secs(5)).unwrap();
    let (tx, ok) = caller.join().unwrap();
    assert_eq!(ok, Ok(true));
    let shared = Arc::downgrade(&tx.shared);
    drop(tx);
    // Dropping joined the thread (its reference is gone) and closed the socket.
    assert!(shared.upgrade().is_none());
    let bytes = peer.join().unwrap();
    assert!(
        bytes >= 2 * (HEADER_LEN as u64 + 20 + 4 * 1024 * 1024),
        "{bytes}"
    );
}

#[test]
fn a_frontend_that_stops_reading_is_dropped_after_the_send_timeout() {
    let (mut tx, go, peer) = stalled_peer();
    let frame = pattern(1024 * 1024 * 4, 3);
    let r = rect(0, 0, 1024, 1024);
    let t = Instant::now();
    let mut result = Ok(true);
    for _ in 0..4 {
        result = tx.update(0, r, &frame);
        if result.is_err() {
            break;
        }
    }
    let waited = t.elapsed();
    assert_eq!(result, Err(Stopped));
    assert!(
        waited + Duration::from_millis(100) >= SEND_TIMEOUT && waited < CALLER_WAIT,
        "{waited:?}"
    );
    assert!(!tx.is_alive());
    assert_eq!(tx.scanout(0, 1, 1), Err(Stopped));
    assert_eq!(tx.display_info(), Err(Stopped));
    let t = Instant::now();
    drop(tx);
    assert!(t.elapsed() < Duration::from_millis(500));
    drop(go);
    peer.join().unwrap();
}

#[test]
fn a_frontend_that_never_answers_is_dropped_after_the_reply_timeout() {
    let (ours, mut qemu) = UnixStream::pair().unwrap();
    let mut tx = DisplaySender::spawn(ours).unwrap();
    let t = Instant::now();
    // Queued at once; the handshake then waits for a reply that never comes.
    tx.cursor_move([0, 1, 1]).unwrap();
    assert_eq!(tx.display_info(), Err(Stopped));
    assert!(t.elapsed() >= REPLY_TIMEOUT, "{:?}", t.elapsed());
    assert_eq!(read_msg(&mut qemu).request, GET_PROTOCOL_FEATURES);
}

#[test]
fn dropping_a_blocked_sender_joins_its_thread_at_once() {
    let (ours, mut qemu) = UnixStream::pair().unwrap();
    let mut tx = DisplaySender::spawn(ours).unwrap();
    // The thread is blocked waiting for the handshake reply.
    tx.scanout(0, 64, 64).unwrap();
    assert_eq!(read_msg(&mut qemu).request, GET_PROTOCOL_FEATURES);
    let shared = Arc::downgrade(&tx.shared);
    let t = Instant::now();
    drop(tx);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(shared.upgrade().is_none());
    // The queued SCANOUT was discarded, and the socket is closed.
    let mut rest = Vec::new();
    qemu.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}
