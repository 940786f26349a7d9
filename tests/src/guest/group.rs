//! Real guests sharing one `vgpud`, driven through their scripts' command markers: a test waits
//! for each guest's `cmd` marker, answers with a command line, and reads the result markers. On
//! a failure the message carries every guest's diagnostics and the tail of the daemon's log.

use std::time::{Duration, Instant};

use super::{Backend, Guest, Marker, MarkerKind};

/// Guests on one daemon, with the deadline each step may take.
pub struct GuestGroup {
    /// The guests, by index.
    pub guests: Vec<Guest>,
    /// The daemon they share.
    pub backend: Backend,
    /// When the test started them.
    pub started: Instant,
    step: Duration,
    log_tail: usize,
}

impl GuestGroup {
    /// A group of `guests` on `backend`; each wait may take `step`; failure messages show the
    /// last `log_tail` lines of the daemon's log.
    pub fn new(
        guests: Vec<Guest>,
        backend: Backend,
        started: Instant,
        step: Duration,
        log_tail: usize,
    ) -> Self {
        Self {
            guests,
            backend,
            started,
            step,
            log_tail,
        }
    }

    /// Every guest's diagnostics and the daemon log's tail, for failure messages.
    pub fn context(&self) -> String {
        let mut s = String::new();
        for (i, g) in self.guests.iter().enumerate() {
            s.push_str(&format!("\n--- guest {i}: {}", g.diagnostics()));
        }
        let log = self.backend.log_text();
        let tail: Vec<&str> = log.lines().rev().take(self.log_tail).collect();
        s.push_str("\n--- vgpud log (tail):\n");
        s.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        s
    }

    /// Waits for guest `i`'s next marker `name` (panics with the context past the deadline).
    pub fn wait(&mut self, i: usize, name: &str) -> Marker {
        match self.guests[i].wait_marker(name, self.step) {
            Ok(m) => m,
            Err(e) => panic!("guest {i}: {e}{}", self.context()),
        }
    }

    /// Fails unless `m` is a PASS.
    pub fn expect_pass(&self, i: usize, m: &Marker) {
        assert_eq!(
            m.kind,
            MarkerKind::Pass,
            "guest {i}: {} {:?} {}{}",
            m.name,
            m.kind,
            m.detail,
            self.context()
        );
    }

    /// Waits until every guest in `cmds` asks for a command, then answers them back to back.
    pub fn send(&mut self, cmds: &[(usize, &str)]) {
        for &(i, _) in cmds {
            let m = self.wait(i, "cmd");
            assert_eq!(
                m.kind,
                MarkerKind::Ready,
                "guest {i}: {m:?}{}",
                self.context()
            );
        }
        for &(i, line) in cmds {
            self.guests[i].reply(line).unwrap();
        }
    }

    /// Ends every guest and checks that none of its checks failed, that each saw no DRM error,
    /// and that the daemon still runs.
    pub fn finish(&mut self) {
        let all: Vec<(usize, &str)> = (0..self.guests.len()).map(|i| (i, "done")).collect();
        self.send(&all);
        for i in 0..self.guests.len() {
            if let Err(e) = self.guests[i].wait_end(self.step) {
                panic!("guest {i}: {e}{}", self.context());
            }
            let failed = Marker::failed(self.guests[i].markers());
            assert!(
                failed.is_empty(),
                "guest {i} checks failed: {failed:#?}{}",
                self.context()
            );
            assert!(
                self.guests[i]
                    .marker("drm-errors", MarkerKind::Pass)
                    .is_some(),
                "guest {i}: no drm-errors PASS{}",
                self.context()
            );
        }
        assert!(self.backend.is_running(), "vgpud died{}", self.context());
    }

    /// Runs `cmd` in guest `i` alone and returns its `result` marker (PASS required).
    pub fn one(&mut self, i: usize, cmd: &str, result: &str) -> Marker {
        self.send(&[(i, cmd)]);
        let m = self.wait(i, result);
        self.expect_pass(i, &m);
        m
    }
}
