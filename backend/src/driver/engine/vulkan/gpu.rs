//! The Vulkan device every user shares (the engine thread, every partition arena and buffer),
//! and its re-creation after a loss.
//!
//! **Who uses the device.** [`Gpu`] holds the current [`Ctx`] behind a read-write lock. Every use
//! of the device (a chunk on the engine thread from recording to completion, a buffer's
//! allocation, host access or release on a VM's thread, a partition's creation) holds a
//! [`DeviceGuard`] (the read side) for its duration. Guards are taken after a buffer's own lock,
//! never before it, and a thread that holds one already takes a nested one without waiting.
//!
//! **Device loss.** When a submission or fence wait reports `VK_ERROR_DEVICE_LOST`, or a fence
//! wait runs out (a hung device is treated as lost), the [`Ctx`] is marked lost and the work on
//! it fails with [`EngineError::DeviceLost`] (or `Timeout`). The next user — the engine thread
//! resetting after the failed job, or any thread that touches a buffer — calls
//! [`Gpu::recover`], which takes the write side (so no one uses the device during the switch)
//! and:
//! 1. creates a new `VkDevice` on the same physical device, on the driver thread ([`DriverThread`],
//!    so the driver's own worker threads inherit its seccomp filter);
//! 2. makes every live partition's `VkDeviceMemory` blocks again on it, with every live buffer
//!    re-created at the same offset and **filled with zeros** (like after a GPU reset, the guest
//!    finds its buffers zeroed; handles, sizes and partition charges stay as they were);
//! 3. destroys the old buffers and frees the old memory, and switches; the old `VkDevice` is
//!    destroyed when its last holder lets it go (the engine rebuilds its pipelines, pools and
//!    query pool on the new device before its next chunk).
//!
//! If any step fails, everything made on the new device is destroyed, the old one stays marked
//! lost, and every use fails with `DeviceLost` until a later attempt (at most one a second)
//! succeeds. Losses and recoveries are counted ([`DeviceHealth`]) and logged, one line each.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use parking_lot::{RwLock, RwLockReadGuard};

use super::super::{panic_message, DeviceHealth, EngineError};
use super::context::Ctx;
use super::memory::ArenaInner;

/// Least time between two attempts to re-create a lost device that could not be re-created.
const RETRY_EVERY: Duration = Duration::from_secs(1);

type Task = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Device guards this thread holds.
    static GUARDS: Cell<u32> = const { Cell::new(0) };
    /// This thread is a Vulkan driver thread.
    static ON_DRIVER: Cell<bool> = const { Cell::new(false) };
}

/// The thread that creates Vulkan instances and devices, and builds pipelines: the driver's
/// worker threads (lavapipe's `llvmpipe-N`) are created by those calls, so they inherit this
/// thread's seccomp filter ([`crate::sandbox::enter_driver`]), at start-up and after a loss.
pub(crate) struct DriverThread {
    tx: Mutex<mpsc::Sender<Task>>,
}

impl DriverThread {
    /// Starts the thread `vgpu-vkdriver` (it ends when this is dropped).
    pub fn start() -> Result<Self, EngineError> {
        let (tx, rx) = mpsc::channel::<Task>();
        std::thread::Builder::new()
            .name("vgpu-vkdriver".into())
            .spawn(move || {
                crate::sandbox::enter_driver();
                ON_DRIVER.set(true);
                while let Ok(task) = rx.recv() {
                    task();
                }
            })
            .map_err(|e| {
                EngineError::Device(format!("cannot start the Vulkan driver thread: {e}"))
            })?;
        Ok(Self { tx: Mutex::new(tx) })
    }

    /// Runs `f` on the driver thread and returns its result (a panic in `f` is contained).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        if ON_DRIVER.get() {
            return Ok(f());
        }
        let (rtx, rrx) = mpsc::sync_channel(1);
        let task: Task = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = rtx.send(result);
        });
        let gone = || EngineError::Device("the Vulkan driver thread is gone".into());
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(task)
            .map_err(|_| gone())?;
        match rrx.recv() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(payload)) => Err(EngineError::Panicked(panic_message(payload.as_ref()))),
            Err(_) => Err(gone()),
        }
    }
}

struct Current {
    ctx: Arc<Ctx>,
    generation: u64,
    /// The loss of `ctx` was counted and logged.
    loss_counted: bool,
    /// Last failed attempt to re-create it.
    last_attempt: Option<Instant>,
}

/// The shared device (see the module docs).
pub(crate) struct Gpu {
    current: RwLock<Current>,
    arenas: Mutex<Vec<Weak<ArenaInner>>>,
    pub driver: DriverThread,
    losses: AtomicU64,
    recoveries: AtomicU64,
    /// Test-only fault hook: re-creating the device fails while this is set.
    #[cfg(test)]
    pub fail_recreate: std::sync::atomic::AtomicBool,
}

/// A use of the device: while it is held, the device is not switched.
pub(crate) struct DeviceGuard<'a> {
    guard: RwLockReadGuard<'a, Current>,
}

impl DeviceGuard<'_> {
    /// The device.
    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.guard.ctx
    }

    /// Which device it is (see [`DeviceHealth::generation`]).
    pub fn generation(&self) -> u64 {
        self.guard.generation
    }
}

impl Drop for DeviceGuard<'_> {
    fn drop(&mut self) {
        GUARDS.set(GUARDS.get().saturating_sub(1));
    }
}

impl Gpu {
    /// The shared device `ctx`, made on `driver`.
    pub fn new(ctx: Arc<Ctx>, driver: DriverThread) -> Self {
        Self {
            current: RwLock::new(Current {
                ctx,
                generation: 0,
                loss_counted: false,
                last_attempt: None,
            }),
            arenas: Mutex::new(Vec::new()),
            driver,
            losses: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            #[cfg(test)]
            fail_recreate: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Holds the current device, lost or not.
    pub fn read(&self) -> DeviceGuard<'_> {
        // A nested guard must not wait behind a waiting writer (that writer waits for us).
        let guard = if GUARDS.get() > 0 {
            self.current.read_recursive()
        } else {
            self.current.read()
        };
        GUARDS.set(GUARDS.get() + 1);
        DeviceGuard { guard }
    }

    /// Holds the current device, re-creating it first if it was lost; fails with
    /// [`EngineError::DeviceLost`] while it cannot be re-created.
    pub fn live(&self) -> Result<DeviceGuard<'_>, EngineError> {
        let guard = self.read();
        if !guard.ctx().is_lost() {
            return Ok(guard);
        }
        let generation = guard.generation();
        drop(guard);
        if GUARDS.get() > 0 {
            // The switch waits for every guard, this thread's too: let the caller fail.
            return Err(EngineError::DeviceLost);
        }
        self.recover(generation)?;
        let guard = self.read();
        if guard.ctx().is_lost() {
            return Err(EngineError::DeviceLost);
        }
        Ok(guard)
    }

    /// The test-only fault hook: the next submission on the current device reports
    /// `VK_ERROR_DEVICE_LOST`.
    #[cfg(test)]
    pub fn inject_device_lost(&self) {
        self.read()
            .ctx()
            .fail_next_submit
            .store(true, Ordering::Release);
    }

    /// Losses, recoveries and the current generation.
    pub fn health(&self) -> DeviceHealth {
        DeviceHealth {
            losses: self.losses.load(Ordering::Relaxed),
            recoveries: self.recoveries.load(Ordering::Relaxed),
            generation: self.current.read_recursive().generation,
        }
    }

    /// Adds a partition's arena to those re-created after a loss (call it while holding the
    /// guard its memory was allocated under).
    pub fn register(&self, arena: &Arc<ArenaInner>) {
        let mut arenas = self.arenas.lock().unwrap_or_else(|e| e.into_inner());
        arenas.retain(|a| a.strong_count() > 0);
        arenas.push(Arc::downgrade(arena));
    }

    /// Re-creates the device after device `seen` was lost (nothing to do when another thread did
    /// it already). Must not be called while this thread holds a guard.
    pub fn recover(&self, seen: u64) -> Result<(), EngineError> {
        if GUARDS.get() > 0 {
            return Err(EngineError::DeviceLost);
        }
        // Declared before the write guard, so they are released after it: an arena dropped
        // here takes a read guard in its Drop.
        let arenas: Vec<Arc<ArenaInner>>;
        let old: Arc<Ctx>;
        let mut current = self.current.write();
        if current.generation != seen && !current.ctx.is_lost() {
            return Ok(());
        }
        old = Arc::clone(&current.ctx);
        old.mark_lost("re-creation asked for");
        if !current.loss_counted {
            current.loss_counted = true;
            let n = self.losses.fetch_add(1, Ordering::AcqRel) + 1;
            log::error!(
                "vulkan device lost on {} ({}; device generation {}, loss {n}): the jobs on it \
                 fail; re-creating the device",
                old.info.name,
                old.lost_reason(),
                current.generation
            );
        }
        if current
            .last_attempt
            .is_some_and(|t| t.elapsed() < RETRY_EVERY)
        {
            return Err(EngineError::DeviceLost);
        }
        current.last_attempt = Some(Instant::now());
        let (instance, physical, info) =
            (Arc::clone(&old.instance), old.physical, old.info.clone());
        let (force_staging, fence_timeout) = (old.force_staging, old.fence_timeout);
        #[cfg(test)]
        if self.fail_recreate.load(Ordering::Acquire) {
            log::error!(
                "vulkan device on {}: re-creating it failed: injected by a test; jobs fail with \
                 \"device lost\" until it can be re-created",
                old.info.name
            );
            return Err(EngineError::DeviceLost);
        }
        let made = self
            .driver
            .run(move || Ctx::create(instance, physical, info, force_staging, fence_timeout))
            .and_then(|r| r);
        let new = match made {
            Ok(ctx) => Arc::new(ctx),
            Err(e) => {
                log::error!(
                    "vulkan device on {}: re-creating it failed: {e}; jobs fail with \"device \
                     lost\" until it can be re-created (tried again at most once a second)",
                    old.info.name
                );
                return Err(EngineError::DeviceLost);
            }
        };
        arenas = {
            let mut list = self.arenas.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|a| a.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        let mut rebound = Vec::with_capacity(arenas.len());
        for arena in &arenas {
            match arena.prepare(&new) {
                Ok(r) => rebound.push(r),
                Err(e) => {
                    for r in rebound {
                        r.abandon(&new);
                    }
                    log::error!(
                        "vulkan device on {}: re-creating partition memory failed: {e}; jobs \
                         fail with \"device lost\" until it can be re-created",
                        old.info.name
                    );
                    return Err(EngineError::DeviceLost);
                }
            }
        }
        let buffers: usize = rebound.iter().map(|r| r.buffers()).sum();
        // Work still running on the old device (after a fence timeout) must end before its buffers
        // and memory go: a lost device returns at once.
        old.wait_idle();
        for (arena, r) in arenas.iter().zip(rebound) {
            arena.commit(r, &new);
        }
        current.ctx = new;
        current.generation += 1;
        current.loss_counted = false;
        current.last_attempt = None;
        let n = self.recoveries.fetch_add(1, Ordering::AcqRel) + 1;
        log::warn!(
            "vulkan device re-created on {} (device generation {}, recovery {n}): {} \
             partition(s) and {buffers} buffer(s) kept, their contents zeroed",
            old.info.name,
            current.generation,
            arenas.len()
        );
        Ok(())
    }
}
