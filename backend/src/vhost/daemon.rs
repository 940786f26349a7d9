//! The daemon: one listener thread per vGPU socket, a fresh vhost-user connection handler per
//! connection, and an orderly shutdown.
//!
//! Each connection gets a new `VhostUserDaemon` and a new [`GpuBackendImpl`]: vhost-user-backend
//! keeps per-connection state (owner flag, vrings) in the daemon, so a second `start()` on the
//! same daemon would refuse QEMU's `SET_OWNER` and drop the connection. The socket's vGPU (its
//! partition and scheduler entry) outlives connections; everything a VM allocated is freed when its
//! connection ends.
//!
//! Isolation: each socket has its own listener thread, and each connection its own device, guest
//! memory map and queue worker. The only state shared between VMs' paths is the driver core
//! (whose scheduler lock is held for bookkeeping only) and the shutdown registry, touched once per
//! connect and disconnect.
//!
//! Shutdown: [`ShutdownSignal::trigger`] wakes listener threads blocked waiting for a connection
//! (they poll the listener together with an eventfd) and shuts down live connections.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::{self, JoinHandle};

use thiserror::Error;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::tempdir::TempDir;

use super::backend::{GpuBackendImpl, GpuFeatures};
use super::fd_relay;
use super::socket_access::SocketAccess;
use crate::device::screenshot::{ScanoutImage, ScreenshotError};
use crate::device::{DeviceConfig, VirtioGpuDevice};
use crate::driver::Vgpu;

/// Stack size of the threads the daemon spawns (listeners, relays, the control socket).
pub const THREAD_STACK: usize = 256 * 1024;

/// Errors setting up or running the daemon.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The socket path is served by a live process.
    #[error("socket {0} is in use by a running process")]
    SocketInUse(PathBuf),
    /// The socket path exists and is not a socket.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Preparing, binding or listening on the socket failed.
    #[error("socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `--fd` is not an open socket.
    #[error("--fd {0} is not an open socket")]
    BadFd(RawFd),
    /// `--attach`: the shared daemon's socket cannot be reached.
    #[error("cannot attach to {path}: {source}")]
    Attach {
        /// The vGPU socket of the shared daemon.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Any other I/O failure (threads, eventfds, temp dirs).
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Configuration of one vGPU socket (one VM at a time).
#[derive(Debug, Clone)]
pub struct VgpuConfig {
    /// Name for logs and thread names (`vgpu0`, ...).
    pub name: String,
    /// Device configuration (scanouts, preferred mode, EDID).
    pub device: DeviceConfig,
    /// Virtio features offered.
    pub features: GpuFeatures,
    /// The driver-core vGPU: the device's 3D engine and its partition the VM's memory budget.
    /// Persists across connections.
    pub vgpu: Arc<Vgpu>,
    /// Connection state, for status reports.
    pub status: Arc<ServerStatus>,
}

/// Reads the scanouts of the device a connected VM drives (for screenshots).
pub trait ScanoutSource: Send + Sync {
    /// The pixels scanout `head` shows.
    fn scanout_image(&self, head: u32) -> Result<ScanoutImage, ScreenshotError>;
}

impl ScanoutSource for GpuBackendImpl<VirtioGpuDevice> {
    fn scanout_image(&self, head: u32) -> Result<ScanoutImage, ScreenshotError> {
        self.with_device(|d| d.scanout_image(head))
    }
}

/// Connection state of one vGPU socket, readable from other threads.
#[derive(Default)]
pub struct ServerStatus {
    connected: AtomicBool,
    connections: AtomicU64,
    source: Mutex<Option<Weak<dyn ScanoutSource>>>,
    gate: Mutex<Gate>,
}

/// Whether the server is serving (or accepting) a connection, and whether it may take another.
#[derive(Debug, Default)]
struct Gate {
    busy: bool,
    closing: bool,
    /// A duplicate of the listening socket, to see a connection still waiting in its backlog.
    listener: Option<OwnedFd>,
}

/// True when a connection waits in `listener`'s backlog (or the socket cannot be polled: then
/// it is treated as pending, so that a removal errs on the side of refusing).
fn connection_pending(listener: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n != 0
}

impl std::fmt::Debug for ServerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerStatus")
            .field("connected", &self.connected())
            .field("connections", &self.connections())
            .finish()
    }
}

impl ServerStatus {
    /// Closes the server to new connections if it has none (nor one being accepted): true when
    /// it did, false when a VM is connected or connecting. Used by `remove` without `force`, so
    /// that a VM that connects during the removal is never cut off.
    pub fn close_if_idle(&self) -> bool {
        let mut gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if gate.busy || gate.listener.as_ref().is_some_and(connection_pending) {
            return false;
        }
        gate.closing = true;
        gate.listener = None;
        true
    }

    /// Watches `listener` (a duplicate of the server's listening socket) so that
    /// [`ServerStatus::close_if_idle`] sees a VM that has connected but is not accepted yet.
    fn watch_listener(&self, listener: OwnedFd) {
        self.gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .listener = Some(listener);
    }

    /// The server no longer listens.
    fn unwatch_listener(&self) {
        self.gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .listener = None;
    }

    /// A connection is about to be accepted: false if the server is closing.
    fn enter(&self) -> bool {
        let mut gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if gate.closing {
            return false;
        }
        gate.busy = true;
        true
    }

    fn leave(&self) {
        self.gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .busy = false;
    }

    /// The scanouts of the connected VM's device, if one is connected.
    pub fn scanout_source(&self) -> Option<Arc<dyn ScanoutSource>> {
        self.source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(Weak::upgrade)
    }

    fn set_source(&self, source: Option<Weak<dyn ScanoutSource>>) {
        *self.source.lock().unwrap_or_else(PoisonError::into_inner) = source;
    }

    /// True while a frontend is connected.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Connections served so far (including a current one).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }
}

/// Wakes every thread of the daemon when it must end.
pub struct ShutdownSignal {
    requested: AtomicBool,
    notifier: EventNotifier,
    consumer: EventConsumer,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, ShutdownHandle>>,
    children: Mutex<Vec<Weak<ShutdownSignal>>>,
}

impl ShutdownSignal {
    /// A signal not yet triggered.
    pub fn new() -> io::Result<Arc<Self>> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        Ok(Arc::new(ShutdownSignal {
            requested: AtomicBool::new(false),
            notifier,
            consumer,
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            children: Mutex::new(Vec::new()),
        }))
    }

    /// A signal of its own (to end one server) that also fires when this one does.
    pub fn child(&self) -> io::Result<Arc<Self>> {
        let child = Self::new()?;
        let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        children.retain(|c| c.strong_count() > 0);
        children.push(Arc::downgrade(&child));
        drop(children);
        if self.requested() {
            child.trigger();
        }
        Ok(child)
    }

    /// Asks every listener and connection to end.
    pub fn trigger(&self) {
        self.requested.store(true, Ordering::Release);
        let _ = self.notifier.notify();
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        for handle in live.values() {
            handle.shutdown();
        }
        drop(live);
        let children: Vec<Arc<ShutdownSignal>> = self
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for child in children {
            child.trigger();
        }
    }

    /// True once [`ShutdownSignal::trigger`] ran.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn register(&self, handle: ShutdownHandle) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, handle.clone());
        // A trigger that ran before registration must still end this connection.
        if self.requested() {
            handle.shutdown();
        }
        id
    }

    fn unregister(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// Waits until `fd` is readable (true) or the shutdown signal fires (false).
pub(crate) fn wait_readable(fd: RawFd, shutdown: &ShutdownSignal) -> io::Result<bool> {
    loop {
        if shutdown.requested() {
            return Ok(false);
        }
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shutdown.consumer.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 || shutdown.requested() {
            return Ok(false);
        }
        if fds[0].revents != 0 {
            return Ok(true);
        }
    }
}

/// Removes a stale socket file at `path`; refuses a live socket or a non-socket file.
pub fn prepare_socket_path(path: &Path) -> Result<(), DaemonError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(DaemonError::Socket {
                path: path.into(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(DaemonError::NotASocket(path.into()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(DaemonError::SocketInUse(path.into())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale socket {}", path.display());
            fs::remove_file(path).map_err(|source| DaemonError::Socket {
                path: path.into(),
                source,
            })
        }
        Err(source) => Err(DaemonError::Socket {
            path: path.into(),
            source,
        }),
    }
}

/// Checks, without removing anything, whether `path` could be bound: `Err(SocketInUse)` when a
/// live process serves it.
pub fn prepare_socket_path_check(path: &Path) -> Result<(), DaemonError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Err(DaemonError::SocketInUse(path.into())),
            Err(_) => Ok(()),
        },
        Ok(_) => Err(DaemonError::NotASocket(path.into())),
        Err(_) => Ok(()),
    }
}

/// A bound socket file, removed when dropped if it is still ours.
pub(crate) struct SocketFile {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

pub(crate) fn bind(path: &Path) -> Result<(UnixListener, SocketFile), DaemonError> {
    prepare_socket_path(path)?;
    let err = |source| DaemonError::Socket {
        path: path.into(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(err)?;
    let ino = fs::symlink_metadata(path).map_err(err)?.ino();
    Ok((
        listener,
        SocketFile {
            path: path.into(),
            ino,
        },
    ))
}

/// Binds a vGPU socket and gives it the process's [`SocketAccess`] (`--socket-group`,
/// `--socket-mode`).
fn bind_vgpu_socket(path: &Path) -> Result<(UnixListener, SocketFile), DaemonError> {
    let (listener, file) = bind(path)?;
    SocketAccess::current()
        .apply(path)
        .map_err(|source| DaemonError::Socket {
            path: path.into(),
            source,
        })?;
    Ok((listener, file))
}

/// One served vGPU socket.
struct Server {
    name: String,
    config: VgpuConfig,
    listener: Listener,
    /// Serve one connection and end (`--fd`).
    once: bool,
}

impl Server {
    fn run(mut self, shutdown: &ShutdownSignal) {
        loop {
            match wait_readable(self.listener.as_raw_fd(), shutdown) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    log::error!("{}: waiting for a connection: {e}", self.name);
                    break;
                }
            }
            if !self.config.status.enter() {
                // Being removed: leave a VM that is just connecting unserved.
                break;
            }
            let served = self.serve_one(shutdown);
            self.config.status.leave();
            if let Err(e) = served {
                log::error!("{}: {e}", self.name);
            }
            if self.once || shutdown.requested() {
                break;
            }
        }
        self.config.status.unwatch_listener();
        log::debug!("{}: listener ends", self.name);
    }

    fn serve_one(&mut self, shutdown: &ShutdownSignal) -> Result<(), vhost_user_backend::Error> {
        let mut device =
            VirtioGpuDevice::with_vgpu(self.config.device, Arc::clone(&self.config.vgpu));
        device.set_log_label(self.name.clone());
        let backend = GpuBackendImpl::new(self.name.clone(), self.config.features, device);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(self.name.clone(), Arc::clone(&backend), mem)?;
        backend
            .register_completions(&daemon)
            .map_err(vhost_user_backend::Error::StartDaemon)?;
        daemon.start(&mut self.listener)?;
        let status = &self.config.status;
        status.connections.fetch_add(1, Ordering::AcqRel);
        status.connected.store(true, Ordering::Release);
        let weak: Weak<GpuBackendImpl<VirtioGpuDevice>> = Arc::downgrade(&backend);
        status.set_source(Some(weak));
        log::info!("{}: frontend connected", self.name);
        let id = daemon.shutdown_handle().map(|h| shutdown.register(h));
        let result = daemon.wait();
        if let Some(id) = id {
            shutdown.unregister(id);
        }
        status.set_source(None);
        backend.disconnect();
        status.connected.store(false, Ordering::Release);
        // Dropping the daemon ends and joins its vring worker threads.
        drop(daemon);
        match result {
            // The frontend closing the connection is the normal end of a VM.
            Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => Ok(()),
            other => other,
        }
    }
}

/// One vGPU socket served on its own, stoppable without touching the others (live `create` and
/// `remove`). Dropping the handle stops the server.
pub struct ServerHandle {
    name: String,
    signal: Arc<ShutdownSignal>,
    thread: Option<JoinHandle<()>>,
    _socket: SocketFile,
}

impl ServerHandle {
    /// Stops listening, disconnects a connected VM (its device is reset and everything it
    /// allocated freed) and waits up to `timeout` for that; returns true if the server ended.
    /// The socket file is removed.
    pub fn stop(mut self, timeout: std::time::Duration) -> bool {
        self.end(timeout)
    }

    fn end(&mut self, timeout: std::time::Duration) -> bool {
        self.signal.trigger();
        let Some(thread) = self.thread.take() else {
            return true;
        };
        let deadline = std::time::Instant::now() + timeout;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            thread::sleep(std::time::Duration::from_millis(2));
        }
        if thread.is_finished() {
            let _ = thread.join();
            true
        } else {
            log::warn!("{}: server did not end within {timeout:?}", self.name);
            false
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.end(std::time::Duration::from_secs(3));
    }
}

/// Serves a vGPU on the socket `path` until the returned handle is stopped or `parent` fires.
/// Returns once the socket listens.
pub fn start_server(
    path: &Path,
    config: VgpuConfig,
    parent: &ShutdownSignal,
) -> Result<ServerHandle, DaemonError> {
    let (listener, file) = bind_vgpu_socket(path)?;
    config
        .status
        .watch_listener(OwnedFd::from(listener.try_clone()?));
    let signal = parent.child()?;
    let name = config.name.clone();
    let server = Server {
        name: name.clone(),
        config,
        listener: Listener::from(listener),
        once: false,
    };
    let thread_signal = Arc::clone(&signal);
    let thread = thread::Builder::new()
        .name(format!("vgpud-{name}"))
        .stack_size(THREAD_STACK)
        .spawn(move || {
            crate::sandbox::enter(crate::sandbox::ThreadKind::Listener);
            server.run(&thread_signal)
        })?;
    log::debug!("{name}: listening on {}", path.display());
    Ok(ServerHandle {
        name,
        signal,
        thread: Some(thread),
        _socket: file,
    })
}

/// The daemon: listener threads, one per vGPU socket.
pub struct Daemon {
    shutdown: Arc<ShutdownSignal>,
    threads: Vec<JoinHandle<()>>,
    sockets: Vec<SocketFile>,
    temp_dirs: Vec<TempDir>,
    /// Streams of `--attach` relays, shut down to end them.
    relays: Vec<UnixStream>,
}

impl Daemon {
    /// A daemon serving nothing yet.
    pub fn new() -> Result<Self, DaemonError> {
        Ok(Daemon {
            shutdown: ShutdownSignal::new()?,
            threads: Vec::new(),
            sockets: Vec::new(),
            temp_dirs: Vec::new(),
            relays: Vec::new(),
        })
    }

    /// The daemon's shutdown signal.
    pub fn shutdown_signal(&self) -> Arc<ShutdownSignal> {
        Arc::clone(&self.shutdown)
    }

    fn spawn_server(
        &mut self,
        path: &Path,
        config: VgpuConfig,
        once: bool,
    ) -> Result<(), DaemonError> {
        let (listener, file) = bind_vgpu_socket(path)?;
        let name = config.name.clone();
        let server = Server {
            name: name.clone(),
            config,
            listener: Listener::from(listener),
            once,
        };
        let shutdown = Arc::clone(&self.shutdown);
        let handle = thread::Builder::new()
            .name(format!("vgpud-{name}"))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                crate::sandbox::enter(crate::sandbox::ThreadKind::Listener);
                server.run(&shutdown)
            })?;
        self.sockets.push(file);
        self.threads.push(handle);
        log::debug!("{name}: listening on {}", path.display());
        Ok(())
    }

    /// Serves a vGPU on the socket `path`, reconnection after reconnection.
    pub fn add_socket(&mut self, path: &Path, config: VgpuConfig) -> Result<(), DaemonError> {
        self.spawn_server(path, config, false)
    }

    /// Serves the already connected socket `fd` (libvirt's `--fd`) through a relay to a private
    /// listening socket; ends when that connection ends.
    pub fn add_connected_fd(&mut self, fd: RawFd, config: VgpuConfig) -> Result<(), DaemonError> {
        let conn = connected_socket(fd)?;
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vgpud-"))
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        let path = dir.as_path().join(format!("fd{fd}.sock"));
        self.spawn_server(&path, config, true)?;
        self.temp_dirs.push(dir);
        let handle = thread::Builder::new()
            .name(format!("vgpud-relay-fd{fd}"))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                crate::sandbox::enter(crate::sandbox::ThreadKind::Relay);
                match fd_relay::relay_to_path(conn, &path) {
                    Ok(()) => log::info!("--fd {fd}: frontend closed the connection"),
                    Err(e) => log::warn!("--fd {fd}: relay ended: {e}"),
                }
            })?;
        self.threads.push(handle);
        Ok(())
    }

    /// `--fd N --attach SOCKET`: relays the connected socket `fd` into the vGPU socket `path` of a
    /// running shared daemon until either side closes or [`Daemon::stop`] runs.
    pub fn attach_fd(&mut self, fd: RawFd, path: &Path) -> Result<(), DaemonError> {
        let conn = connected_socket(fd)?;
        let upstream = UnixStream::connect(path).map_err(|source| DaemonError::Attach {
            path: path.into(),
            source,
        })?;
        self.relays.push(conn.try_clone()?);
        self.relays.push(upstream.try_clone()?);
        let shown = path.display().to_string();
        let handle = thread::Builder::new()
            .name(format!("vgpud-attach-fd{fd}"))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                crate::sandbox::enter(crate::sandbox::ThreadKind::Relay);
                match fd_relay::relay(conn, upstream) {
                    Ok(()) => log::info!("--fd {fd}: connection to {shown} ended"),
                    Err(e) => log::warn!("--fd {fd}: relay to {shown} ended: {e}"),
                }
            })?;
        self.threads.push(handle);
        Ok(())
    }

    /// Serves the control socket at `path` (mode 0600, or 0660 for `group`): each connection
    /// sends one request line and gets the line `handler` returns.
    pub fn add_control(
        &mut self,
        path: &Path,
        group: Option<&str>,
        handler: crate::control::Handler,
    ) -> Result<(), DaemonError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| DaemonError::Socket {
                path: path.into(),
                source,
            })?;
        }
        let (listener, file) = bind(path)?;
        crate::control::secure_socket(path, group).map_err(|source| DaemonError::Socket {
            path: path.into(),
            source,
        })?;
        listener.set_nonblocking(true)?;
        let shutdown = Arc::clone(&self.shutdown);
        let handle = thread::Builder::new()
            .name("vgpud-control".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                crate::sandbox::enter(crate::sandbox::ThreadKind::Control);
                crate::control::serve(&listener, &shutdown, handler)
            })?;
        self.sockets.push(file);
        self.threads.push(handle);
        log::info!("control socket {}", path.display());
        Ok(())
    }

    /// Counts `thread` (which must end when the shutdown signal fires) among the daemon's.
    pub fn adopt_thread(&mut self, thread: JoinHandle<()>) {
        self.threads.push(thread);
    }

    /// True once every server and relay thread has ended.
    pub fn finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Asks everything to end and waits up to `timeout` for the threads; returns true if all
    /// ended. Socket files are removed either way when the daemon is dropped.
    pub fn stop(&mut self, timeout: std::time::Duration) -> bool {
        self.shutdown.trigger();
        for stream in &self.relays {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let deadline = std::time::Instant::now() + timeout;
        while !self.finished() && std::time::Instant::now() < deadline {
            thread::sleep(std::time::Duration::from_millis(5));
        }
        let done = self.finished();
        if done {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
        done
    }
}

/// Takes ownership of `fd` as a connected stream socket, checking that it is one.
fn connected_socket(fd: RawFd) -> Result<UnixStream, DaemonError> {
    if fd < 0 {
        return Err(DaemonError::BadFd(fd));
    }
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`; an invalid fd just fails.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || ty != libc::SOCK_STREAM {
        return Err(DaemonError::BadFd(fd));
    }
    // SAFETY: the fd is an open stream socket handed to us on the command line; from here on we
    // own it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: FD_CLOEXEC keeps it from leaking into anything we might spawn.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_in_the_backlog_keeps_the_server_busy() {
        let dir = TempDir::new_with_prefix("/tmp/vgpud-daemon-test").unwrap();
        let path = dir.as_path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let status = ServerStatus::default();
        status.watch_listener(OwnedFd::from(listener.try_clone().unwrap()));
        // A VM has connected but the listener thread has not accepted it yet.
        let _vm = UnixStream::connect(&path).unwrap();
        assert!(!status.close_if_idle(), "a pending VM was cut off");
        let (_accepted, _) = listener.accept().unwrap();
        // Accepted and gone: nothing waits, so the server may close.
        assert!(status.close_if_idle());
        // Once closed, the server lets no VM in.
        assert!(!status.enter());
    }

    #[test]
    fn stale_socket_is_removed_live_one_refused() {
        let dir = TempDir::new_with_prefix("/tmp/vgpud-daemon-test").unwrap();
        let path = dir.as_path().join("s.sock");
        prepare_socket_path(&path).unwrap();
        {
            let _l = UnixListener::bind(&path).unwrap();
            assert!(matches!(
                prepare_socket_path(&path),
                Err(DaemonError::SocketInUse(_))
            ));
        }
        // The listener is gone but the file stays: stale.
        assert!(path.exists());
        prepare_socket_path(&path).unwrap();
        assert!(!path.exists());
        fs::write(&path, b"x").unwrap();
        assert!(matches!(
            prepare_socket_path(&path),
            Err(DaemonError::NotASocket(_))
        ));
    }

    #[test]
    fn shutdown_wakes_a_waiting_listener() {
        let dir = TempDir::new_with_prefix("/tmp/vgpud-daemon-test").unwrap();
        let path = dir.as_path().join("s.sock");
        let device = crate::driver::Device::new(crate::driver::DeviceConfig {
            memory_mib: 64,
            ..Default::default()
        })
        .unwrap();
        let vgpu = device
            .create_vgpu("vgpu-64m", crate::driver::Uuid::nil())
            .unwrap();
        let mut d = Daemon::new().unwrap();
        d.add_socket(
            &path,
            VgpuConfig {
                name: "vgpu0".into(),
                device: DeviceConfig::default(),
                features: GpuFeatures::base(),
                vgpu,
                status: Arc::default(),
            },
        )
        .unwrap();
        assert!(path.exists());
        assert!(!d.finished());
        assert!(d.stop(std::time::Duration::from_secs(5)));
        drop(d);
        assert!(!path.exists());
    }

    #[test]
    fn bad_fd_is_refused() {
        assert!(matches!(connected_socket(-1), Err(DaemonError::BadFd(-1))));
        // A pipe is not a socket.
        let (r, _w) = std::io::pipe().unwrap();
        let fd = r.as_raw_fd();
        assert!(matches!(connected_socket(fd), Err(DaemonError::BadFd(_))));
    }
}
