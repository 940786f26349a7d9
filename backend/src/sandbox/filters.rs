//! The seccomp allow-lists, one per thread kind, and why each syscall is there.
//!
//! Every list is [`COMMON`] plus what the kind does. Anything else fails with `EPERM` (the
//! mismatch action, see [`super::MISMATCH_ERRNO`]): no `execve`, no `fork`, no `ptrace`, no new
//! sockets or files after start-up (except where a kind says so), no `mount`, no module or BPF
//! loading. Filters are inherited by the threads a thread creates, so a kind that spawns threads
//! (the listener spawns the connection's vhost-user and vring threads) holds the union of what
//! they need; a child may narrow itself further ([`super::ThreadKind::Display`] does).
//!
//! To extend at merge time: add the syscall to the kind's list with a comment saying who needs
//! it. A new kind of thread (a metrics server, a Vulkan engine with its driver threads) gets a
//! new [`super::ThreadKind`] and list here.

use super::ThreadKind;

/// Every thread: memory, futexes, time, logging to stderr, thread exit, signals' return paths.
pub const COMMON: &[i64] = &[
    libc::SYS_read,              // eventfds, sockets
    libc::SYS_write,             // logging (stderr), eventfds
    libc::SYS_writev,            // logging through buffered stderr
    libc::SYS_close,             // dropping fds
    libc::SYS_futex,             // mutexes, condvars, channels, thread join
    libc::SYS_mmap,              // allocator (large blocks are mapped on their own), stacks
    libc::SYS_munmap,            // allocator
    libc::SYS_mremap,            // allocator (growing a mapped block)
    libc::SYS_mprotect,          // allocator, thread stack guard pages
    libc::SYS_madvise,           // allocator, thread exit (stack release)
    libc::SYS_brk,               // allocator (main heap)
    libc::SYS_exit,              // thread exit
    libc::SYS_exit_group,        // process exit
    libc::SYS_rt_sigreturn,      // return from a signal handler
    libc::SYS_rt_sigprocmask,    // std blocks/unblocks signals around thread creation and exit
    libc::SYS_sigaltstack,       // std's stack-overflow handler, per thread
    libc::SYS_sched_yield,       // spin loops in locks
    libc::SYS_sched_getaffinity, // allocator / std queries
    libc::SYS_getrandom,         // HashMap seeds (RandomState), per thread
    libc::SYS_clock_gettime,     // Instant/SystemTime when the vDSO is not used
    libc::SYS_clock_nanosleep,   // thread::sleep
    libc::SYS_nanosleep,         // thread::sleep (older libc)
    libc::SYS_gettid,            // logging, std
    libc::SYS_getpid,            // logging, std
    libc::SYS_restart_syscall,   // an interrupted sleep resumes
    libc::SYS_fcntl,             // F_GETFD/F_SETFD/F_DUPFD_CLOEXEC on fds handed over
    libc::SYS_fstat,             // std and vm-memory check fds (memory regions' size)
    libc::SYS_newfstatat,        // same, through fstatat(fd, "", AT_EMPTY_PATH)
    libc::SYS_statx,             // same, newer std
    libc::SYS_lseek,             // std seeks (memfd sizes)
    libc::SYS_prctl,             // PR_SET_NAME of new threads, PR_SET_NO_NEW_PRIVS
    libc::SYS_set_robust_list,   // new threads (glibc)
    libc::SYS_rseq,              // new threads (glibc)
    libc::SYS_seccomp,           // a thread narrowing its inherited filter (filters only add up)
    libc::SYS_sendto,            // syslog(3) on the socket opened at start-up (logging.rs)
];

/// The only `ioctl` requests allowed, in every thread but the Vulkan driver's: making an fd
/// (non-)blocking (std's `set_nonblocking`) and close-on-exec; and, in the threads that use the
/// Vulkan device ([`uses_gpu`]), the DRM requests (type `'d'`, [`DRM_IOCTL_TYPE`]) a GPU driver
/// makes to submit, wait and allocate (none with lavapipe; not tried on a real GPU here).
#[allow(clippy::unnecessary_cast)] // c_ulong: u64 here, u32 on 32-bit targets
pub const IOCTLS: &[u64] = &[libc::FIONBIO as u64, libc::FIOCLEX as u64];

/// The ioctl type of DRM requests (`DRM_IOCTL_BASE`), bits 8..16 of the request.
pub const DRM_IOCTL_TYPE: u64 = (b'd' as u64) << 8;

/// Whether `kind` uses the Vulkan device: the engine (chunks), listeners and control (buffers and
/// partitions), main (shutdown).
pub fn uses_gpu(kind: ThreadKind) -> bool {
    matches!(
        kind,
        ThreadKind::Engine | ThreadKind::Listener | ThreadKind::Control | ThreadKind::Main
    )
}

/// Creating threads (a new connection's threads; glibc's `clone3`, older `clone`).
const SPAWN: &[i64] = &[libc::SYS_clone, libc::SYS_clone3];

/// A vGPU socket's listener and, inherited, the vhost-user and vring threads of its connections.
const LISTENER: &[i64] = &[
    libc::SYS_accept4,       // the next connection
    libc::SYS_poll,          // waiting for a connection or shutdown
    libc::SYS_ppoll,         // same (newer libc)
    libc::SYS_epoll_create1, // vring worker's epoll
    libc::SYS_epoll_ctl,     // registering kick, call and completion eventfds
    libc::SYS_epoll_wait,    // vring worker loop
    libc::SYS_epoll_pwait,   // same (newer libc)
    libc::SYS_eventfd2,      // exit events, completion queue
    libc::SYS_recvmsg,       // vhost-user messages with fds (memory, kick, call, GPU socket)
    libc::SYS_recvfrom,      // vhost-user message bodies
    libc::SYS_sendmsg,       // vhost-user replies (with fds: the inflight area)
    libc::SYS_sendto,        // same
    libc::SYS_shutdown,      // ending a connection
    libc::SYS_getsockopt,    // socket state (SO_ERROR)
    libc::SYS_setsockopt,    // socket timeouts
    libc::SYS_dup,           // cloning the connection (vhost-user-backend)
    libc::SYS_dup3,          // same
    libc::SYS_ftruncate,     // vhost-user inflight area (memfd), if the frontend asks
    libc::SYS_memfd_create,  // same
];

/// A VM's display thread: the GPU socket only.
const DISPLAY: &[i64] = &[
    libc::SYS_sendmsg,  // SCANOUT, UPDATE, cursor messages
    libc::SYS_sendto,   // same
    libc::SYS_recvmsg,  // replies (protocol features, display info)
    libc::SYS_recvfrom, // same
];

/// The control socket: accept a client, read a line, write a reply.
const CONTROL: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt, // the client's read/write timeouts
];

/// What the control socket's verbs do beyond answering: `create`/`start` bind a vGPU socket, set its
/// group and mode and start its listener (which narrows itself to [`LISTENER`], so the control
/// thread must hold everything the listener and its connections' threads need); `define`, `sched`
/// and friends write `state.json` atomically (temporary file, fsync, rename, directory fsync);
/// `claim` re-reads the VM map; `remove`/`stop` remove socket files. All of it within Landlock's
/// directories (sockets, state, run dir, VM map).
const OPERATOR: &[i64] = &[
    libc::SYS_socket,     // a new vGPU socket
    libc::SYS_bind,       // same
    libc::SYS_listen,     // same
    libc::SYS_fchmodat,   // its mode (--socket-mode), the state file's
    libc::SYS_fchmod,     // same
    libc::SYS_fchownat,   // its group (--socket-group)
    libc::SYS_mkdir,      // the socket's directory, if missing (create_dir_all; EEXIST otherwise)
    libc::SYS_mkdirat,    // same
    libc::SYS_chmod,      // socket and state file modes (older libc paths)
    libc::SYS_lchown,     // socket group (--socket-group)
    libc::SYS_openat,     // state.json and its temporary file, the VM map, directory fsync
    libc::SYS_fsync,      // atomic state writes
    libc::SYS_fdatasync,  // same
    libc::SYS_rename,     // same
    libc::SYS_renameat,   // same
    libc::SYS_renameat2,  // same
    libc::SYS_unlink,     // removing a socket file or a stale temporary file
    libc::SYS_unlinkat,   // same
    libc::SYS_getdents64, // reading a directory (state dir clean-up)
    libc::SYS_readlink,   // path canonicalisation
    libc::SYS_getcwd,     // relative socket paths
    libc::SYS_flock,      // the state file's lock
];

/// The metrics HTTP server (tiny_http: an accept thread and a pool of connection threads).
const METRICS: &[i64] = &[
    libc::SYS_socket, // the listening socket, made after the filter is on
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
];

/// `--fd` relays: connect to the private listening socket once, then pass messages and fds.
const RELAY: &[i64] = &[
    libc::SYS_socket,  // the relay's connection to the private socket
    libc::SYS_connect, // same
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
];

/// The main thread after start-up: waits for signals, then stops everything and removes the
/// sockets and temporary directories (within the Landlock rules).
const MAIN: &[i64] = &[
    libc::SYS_rt_sigtimedwait, // SIGTERM/SIGINT/SIGHUP
    libc::SYS_shutdown,        // ending connections at stop
    libc::SYS_unlink,          // removing socket files
    libc::SYS_unlinkat,        // same, and temporary directories' contents
    libc::SYS_rmdir,           // temporary directories
    libc::SYS_openat,          // listing a temporary directory to remove it (Landlock-bounded)
    libc::SYS_getdents64,      // same
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// The engine's watchdog and engine threads: compute on device memory; the watchdog starts a new
/// engine thread after a stall (so the kind may create threads; a Vulkan driver's own worker
/// threads are created with the device, at start-up).
///
/// Mesa lavapipe, measured with `strace -f -Y` on a channel run: the engine thread only waits on
/// futexes (its llvmpipe worker threads are made with the device, at start-up), maps and unmaps
/// pieces of its "allocation fd" memfd, grows that memfd with `ftruncate` when a command buffer
/// needs more room, and signals an eventfd (`write`).
const ENGINE: &[i64] = &[
    libc::SYS_clone,        // the watchdog's restart of the engine thread
    libc::SYS_clone3,       // same
    libc::SYS_ftruncate,    // lavapipe grows its allocation memfd
    libc::SYS_fallocate,    // same, where Mesa uses it
    libc::SYS_memfd_create, // a Vulkan driver's new allocation fd
];

/// The Vulkan driver thread (`vgpu-vkdriver`) and, inherited, the driver's own threads it creates
/// (lavapipe's `llvmpipe-N`, Mesa's shader-cache queue): it loads the Vulkan loader and driver,
/// creates the instance and the device (again after a device loss) and builds the pipelines.
/// Measured with `strace -f -Y` on lavapipe (Mesa 25, with and without the validation layer)
/// across start-up, every kernel, a device loss and its re-creation. Landlock keeps the thread's
/// filesystem read-only (plus `/dev/dri`), so Mesa's on-disk shader cache stays off; `mkdir` and
/// `unlink` are left out for the same reason. Any `ioctl` is allowed: a GPU driver speaks to its
/// kernel driver through driver-specific ones.
const DRIVER: &[i64] = &[
    libc::SYS_clone,              // the driver's worker threads
    libc::SYS_clone3,             // same
    libc::SYS_openat, // the loader's ICD and layer manifests, the driver library, /sys, /proc, /dev/dri
    libc::SYS_access, // the loader probes manifest directories
    libc::SYS_faccessat, // same (newer libc)
    libc::SYS_faccessat2, // same
    libc::SYS_getdents64, // manifest directories, /dev/dri
    libc::SYS_readlink, // the loader resolves library paths
    libc::SYS_readlinkat, // same
    libc::SYS_getcwd, // same
    libc::SYS_pread64, // the dynamic loader reads ELF headers
    libc::SYS_flock,  // Mesa's shader-cache index (read-only here)
    libc::SYS_memfd_create, // lavapipe's allocation fd
    libc::SYS_ftruncate, // same, grown
    libc::SYS_fallocate, // same, where Mesa uses it
    libc::SYS_sysinfo, // llvmpipe sizes its caches from the host's memory
    libc::SYS_uname,  // LLVM's host detection
    libc::SYS_getuid, // Mesa's cache and loader paths
    libc::SYS_geteuid, // same
    libc::SYS_getgid, // same
    libc::SYS_getegid, // same
    libc::SYS_sched_setaffinity, // llvmpipe pins its worker threads
    libc::SYS_sched_setscheduler, // Mesa lowers its queue threads' priority
    libc::SYS_setpriority, // same
    libc::SYS_dup,    // GPU drivers duplicate their DRM fd
    libc::SYS_dup3,   // same
    libc::SYS_eventfd2, // sync objects
    libc::SYS_poll,   // waiting on sync fds (GPU drivers)
    libc::SYS_ppoll,  // same
];

/// The allow-list of `kind`.
pub fn allowed(kind: ThreadKind) -> Vec<i64> {
    let extra: &[&[i64]] = match kind {
        ThreadKind::Main => &[MAIN],
        ThreadKind::Listener => &[LISTENER, SPAWN],
        ThreadKind::Display => &[DISPLAY],
        ThreadKind::Control => &[CONTROL, SPAWN, OPERATOR, LISTENER, DISPLAY],
        ThreadKind::Metrics => &[METRICS, SPAWN],
        ThreadKind::Relay => &[RELAY, SPAWN],
        ThreadKind::Engine => &[ENGINE],
        ThreadKind::Driver => &[DRIVER],
    };
    let mut all: Vec<i64> = COMMON.to_vec();
    for list in extra {
        all.extend_from_slice(list);
    }
    all.sort_unstable();
    all.dedup();
    all
}
