//! The live set of vGPU instances: created, started, stopped and removed while other VMs run,
//! defined ones persisted in `--state-dir`, handed to per-VM relays by `claim`.
//!
//! Every verb takes the instance list's lock only for bookkeeping: binding a socket and spawning
//! its listener take microseconds, and stopping a server (which may wait for a VM to let go) runs
//! after the instance is taken out of the list, without the lock. Other VMs' servers are never
//! touched: each runs on its own thread with its own stop signal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;
use vgpu_mdev::proto::ErrorKind;
use vgpu_mdev::VgpuType;

use super::state::{DefinedInstance, SchedState, State, StateStore};
use crate::device::DeviceConfig;
use crate::driver::{Device, DriverError, Policy, Vgpu, VgpuStats};
use crate::vhost::backend::GpuFeatures;
use crate::vhost::daemon::{start_server, ServerHandle, ServerStatus, ShutdownSignal, VgpuConfig};

/// How long a claimed instance is held for the relay that claimed it before another claim may
/// take it (the VM connects well within this).
pub const CLAIM_HOLD: Duration = Duration::from_secs(10);
/// How long `remove`/`stop` without `force` wait for a connection that is starting or ending.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `remove`/`stop` wait for a connected VM's server to end.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A refused or failed verb: a stable kind and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerbError {
    /// The kind (in the reply's `kind`).
    pub kind: ErrorKind,
    /// The sentence (in the reply's `error`).
    pub message: String,
}

impl VerbError {
    pub(super) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        VerbError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for VerbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub(super) fn driver_error(e: DriverError) -> VerbError {
    let kind = match e {
        DriverError::TooManyInstances { .. } | DriverError::DeviceFull { .. } => ErrorKind::NoRoom,
        DriverError::UnknownType(_) | DriverError::Config(_) => ErrorKind::Invalid,
        DriverError::DuplicateUuid(_) => ErrorKind::Exists,
        _ => ErrorKind::Failed,
    };
    VerbError::new(kind, e.to_string())
}

/// How the manager builds instances.
pub struct ManagerConfig {
    /// Where default sockets go: `<run_dir>/<uuid>.sock`.
    pub run_dir: PathBuf,
    /// `--state-dir`, if persistence is on.
    pub state: Option<StateStore>,
    /// `--vm-map`, read at every claim.
    pub vm_map: Option<PathBuf>,
    /// The type `claim` picks when nothing names one.
    pub default_type: String,
    /// The virtio-gpu configuration of a new instance of a type.
    pub device_config: Box<dyn Fn(&VgpuType) -> DeviceConfig + Send + Sync>,
    /// Virtio features offered.
    pub features: GpuFeatures,
}

/// What [`Manager::start_instance`] needs besides the type's defaults.
#[derive(Debug, Clone)]
pub struct NewInstance {
    /// Name for logs (`vgpuN`); `None` picks the next free one.
    pub name: Option<String>,
    /// Type.
    pub type_name: String,
    /// UUID; `None`: random.
    pub uuid: Option<Uuid>,
    /// Socket; `None`: `<run_dir>/<uuid>.sock`.
    pub socket: Option<PathBuf>,
    /// Device configuration; `None`: the type's defaults.
    pub device: Option<DeviceConfig>,
}

pub(super) struct Running {
    pub(super) vgpu: Arc<Vgpu>,
    pub(super) status: Arc<ServerStatus>,
    pub(super) server: ServerHandle,
}

pub(super) struct Instance {
    pub(super) name: String,
    pub(super) uuid: Uuid,
    pub(super) type_name: String,
    pub(super) socket: PathBuf,
    pub(super) defined: bool,
    pub(super) auto: bool,
    pub(super) running: Option<Running>,
    /// The last claim: when, and by which VM.
    pub(super) claim: Option<(Instant, Option<String>)>,
}

impl Instance {
    pub(super) fn connected(&self) -> bool {
        self.running.as_ref().is_some_and(|r| r.status.connected())
    }

    pub(super) fn state(&self) -> &'static str {
        match &self.running {
            None => "defined",
            Some(r) if r.status.connected() => "connected",
            Some(_) => "listening",
        }
    }
}

/// One instance as metrics and the stats log see it.
#[derive(Debug, Clone)]
pub struct InstanceSnapshot {
    /// `vgpuN`.
    pub name: String,
    /// UUID.
    pub uuid: Uuid,
    /// Type.
    pub type_name: String,
    /// A VM is connected.
    pub connected: bool,
    /// Figures, while running.
    pub stats: Option<VgpuStats>,
    /// Error responses sent to the guest, by code.
    pub guest_errors: Vec<(&'static str, u64)>,
}

/// The instances of one daemon.
pub struct Manager {
    pub(super) device: Arc<Device>,
    shutdown: Arc<ShutdownSignal>,
    pub(super) config: ManagerConfig,
    instances: Mutex<Vec<Instance>>,
    /// Serialises state-file writes (and the read-modify-write around them).
    state_lock: Mutex<()>,
    next_name: std::sync::atomic::AtomicU32,
}

fn random_uuid() -> Uuid {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !filled {
        // No /dev/urandom: time and pid are unique enough for a name.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (t ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn parse_uuid(text: &str) -> Result<Uuid, VerbError> {
    Uuid::parse_str(text)
        .map_err(|e| VerbError::new(ErrorKind::Invalid, format!("{text:?} is not a UUID: {e}")))
}

impl Manager {
    /// A manager of `device`'s instances; servers end when `shutdown` fires.
    pub fn new(device: Arc<Device>, shutdown: Arc<ShutdownSignal>, config: ManagerConfig) -> Self {
        Manager {
            device,
            shutdown,
            config,
            instances: Mutex::new(Vec::new()),
            state_lock: Mutex::new(()),
            next_name: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The driver core.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    pub(super) fn list_lock(&self) -> MutexGuard<'_, Vec<Instance>> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn next_name(&self) -> String {
        let n = self
            .next_name
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("vgpu{n}")
    }

    fn default_socket(&self, uuid: Uuid) -> PathBuf {
        self.config.run_dir.join(format!("{uuid}.sock"))
    }

    fn absolute(p: &Path) -> PathBuf {
        std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
    }

    /// Checks that neither the UUID nor the socket is taken.
    fn check_free(list: &[Instance], uuid: Uuid, socket: &Path) -> Result<(), VerbError> {
        if list.iter().any(|i| i.uuid == uuid) {
            return Err(VerbError::new(
                ErrorKind::Exists,
                format!("an instance with UUID {uuid} exists"),
            ));
        }
        let abs = Self::absolute(socket);
        if let Some(i) = list.iter().find(|i| Self::absolute(&i.socket) == abs) {
            return Err(VerbError::new(
                ErrorKind::Exists,
                format!("socket {} belongs to instance {}", socket.display(), i.uuid),
            ));
        }
        Ok(())
    }

    /// Creates the vGPU and starts its server: all or nothing.
    pub(super) fn spawn(
        &self,
        name: &str,
        type_name: &str,
        uuid: Uuid,
        socket: &Path,
        device: Option<DeviceConfig>,
    ) -> Result<Running, VerbError> {
        let vgpu = self
            .device
            .create_vgpu(type_name, uuid)
            .map_err(driver_error)?;
        let device = device.unwrap_or_else(|| (self.config.device_config)(vgpu.vgpu_type()));
        if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir_all(dir) {
                vgpu.destroy();
                return Err(VerbError::new(
                    ErrorKind::Failed,
                    format!("socket directory {}: {e}", dir.display()),
                ));
            }
        }
        let status = Arc::new(ServerStatus::default());
        let config = VgpuConfig {
            name: name.to_string(),
            device,
            features: self.config.features,
            vgpu: Arc::clone(&vgpu),
            status: Arc::clone(&status),
        };
        match start_server(socket, config, &self.shutdown) {
            Ok(server) => {
                log::info!(
                    "{name} type={type_name} fb={}M uuid={uuid} socket={} scanouts={} \
                     resolution={}x{}",
                    vgpu.vgpu_type().framebuffer_bytes >> 20,
                    socket.display(),
                    device.num_scanouts,
                    device.width,
                    device.height
                );
                Ok(Running {
                    vgpu,
                    status,
                    server,
                })
            }
            Err(e) => {
                vgpu.destroy();
                Err(VerbError::new(ErrorKind::Failed, format!("{name}: {e}")))
            }
        }
    }

    /// Creates and starts a transient instance (a `--vgpu` of the command line or `create`).
    pub fn start_instance(&self, new: NewInstance) -> Result<Value, VerbError> {
        self.create_inner(new, false, false)
    }

    pub(super) fn create_inner(
        &self,
        new: NewInstance,
        define: bool,
        auto: bool,
    ) -> Result<Value, VerbError> {
        let uuid = new.uuid.unwrap_or_else(random_uuid);
        let socket = new.socket.unwrap_or_else(|| self.default_socket(uuid));
        let name = new.name.unwrap_or_else(|| self.next_name());
        let reply = {
            let mut list = self.list_lock();
            Self::check_free(&list, uuid, &socket)?;
            let running = self.spawn(&name, &new.type_name, uuid, &socket, new.device)?;
            list.push(Instance {
                name,
                uuid,
                type_name: new.type_name.clone(),
                socket: socket.clone(),
                defined: define,
                auto,
                running: Some(running),
                claim: None,
            });
            json!({"uuid": uuid.to_string(), "type": new.type_name, "socket": socket})
        };
        if define {
            if let Err(e) = self.persist() {
                // Never leave an instance the state does not know about when it was asked to.
                let _ = self.remove_uuid(uuid, true, true);
                return Err(e);
            }
        }
        Ok(reply)
    }

    /// `create`: a new started instance, defined with `auto` too when asked.
    pub fn create(
        &self,
        type_name: &str,
        uuid: Option<&str>,
        socket: Option<PathBuf>,
        auto: bool,
    ) -> Result<Value, VerbError> {
        let uuid = uuid.map(parse_uuid).transpose()?;
        self.create_inner(
            NewInstance {
                name: None,
                type_name: type_name.to_string(),
                uuid,
                socket,
                device: None,
            },
            auto,
            auto,
        )
    }

    /// `define`: records an instance without starting it.
    pub fn define(
        &self,
        type_name: &str,
        uuid: Option<&str>,
        socket: Option<PathBuf>,
        auto: bool,
    ) -> Result<Value, VerbError> {
        if self.config.state.is_none() {
            return Err(VerbError::new(
                ErrorKind::State,
                "define needs persistence: this daemon runs without --state-dir",
            ));
        }
        if self.device.types().get(type_name).is_none() {
            return Err(VerbError::new(
                ErrorKind::Invalid,
                format!("unknown vGPU type {type_name:?}"),
            ));
        }
        let uuid = uuid
            .map(parse_uuid)
            .transpose()?
            .unwrap_or_else(random_uuid);
        let socket = socket.unwrap_or_else(|| self.default_socket(uuid));
        {
            let mut list = self.list_lock();
            Self::check_free(&list, uuid, &socket)?;
            list.push(Instance {
                name: self.next_name(),
                uuid,
                type_name: type_name.to_string(),
                socket: socket.clone(),
                defined: true,
                auto,
                running: None,
                claim: None,
            });
        }
        if let Err(e) = self.persist() {
            self.list_lock().retain(|i| i.uuid != uuid);
            return Err(e);
        }
        Ok(json!({"uuid": uuid.to_string(), "type": type_name, "socket": socket, "auto": auto}))
    }

    /// `undefine`: forgets the definition; a running instance keeps running as a transient one.
    pub fn undefine(&self, uuid: &str) -> Result<Value, VerbError> {
        let uuid = parse_uuid(uuid)?;
        {
            let mut list = self.list_lock();
            let i = list
                .iter()
                .position(|i| i.uuid == uuid && i.defined)
                .ok_or_else(|| not_defined(uuid))?;
            if list[i].running.is_some() {
                list[i].defined = false;
                list[i].auto = false;
            } else {
                list.remove(i);
            }
        }
        self.persist()?;
        Ok(json!({"uuid": uuid.to_string()}))
    }

    /// `start`: starts a defined instance.
    pub fn start(&self, uuid: &str) -> Result<Value, VerbError> {
        let uuid = parse_uuid(uuid)?;
        let mut list = self.list_lock();
        let i = list
            .iter()
            .position(|i| i.uuid == uuid)
            .ok_or_else(|| not_found(uuid))?;
        if list[i].running.is_some() {
            return Err(VerbError::new(
                ErrorKind::Exists,
                format!("instance {uuid} is already started"),
            ));
        }
        let inst = &list[i];
        let running = self.spawn(&inst.name, &inst.type_name, uuid, &inst.socket, None)?;
        list[i].running = Some(running);
        let inst = &list[i];
        Ok(json!({"uuid": uuid.to_string(), "type": inst.type_name, "socket": inst.socket}))
    }

    /// `stop`: stops a running instance (it stays defined if it was).
    pub fn stop(&self, uuid: &str, force: bool) -> Result<Value, VerbError> {
        let uuid = parse_uuid(uuid)?;
        self.remove_uuid(uuid, force, false)
    }

    /// `remove`: stops an instance and forgets it and its definition.
    pub fn remove(&self, uuid: &str, force: bool) -> Result<Value, VerbError> {
        let uuid = parse_uuid(uuid)?;
        self.remove_uuid(uuid, force, true)
    }

    fn remove_uuid(&self, uuid: Uuid, force: bool, forget: bool) -> Result<Value, VerbError> {
        // A connection that is starting or ending (not yet or no longer "connected") is waited
        // for briefly; a connected VM is refused at once unless `force`.
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let (running, was_defined) = loop {
            let mut list = self.list_lock();
            let i = list
                .iter()
                .position(|i| i.uuid == uuid)
                .ok_or_else(|| not_found(uuid))?;
            let idle = force
                || list[i]
                    .running
                    .as_ref()
                    .is_none_or(|r| r.status.close_if_idle());
            if !idle {
                if list[i].connected() || Instant::now() >= deadline {
                    return Err(VerbError::new(
                        ErrorKind::Busy,
                        format!(
                            "instance {uuid} has a VM connected; stop the VM first or use --force"
                        ),
                    ));
                }
                drop(list);
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            if !forget && list[i].running.is_none() {
                return Err(VerbError::new(
                    ErrorKind::NotFound,
                    format!("instance {uuid} is not started"),
                ));
            }
            let was_defined = list[i].defined;
            let running = if forget || !list[i].defined {
                list.remove(i).running
            } else {
                list[i].running.take()
            };
            break (running, was_defined);
        };
        let mut disconnected = false;
        let mut ended = true;
        if let Some(r) = running {
            disconnected = r.status.connected();
            ended = r.server.stop(STOP_TIMEOUT);
            r.vgpu.destroy();
            drop(r.vgpu);
        }
        if forget && was_defined {
            self.persist()?;
        }
        let (total, used) = self.device.memory();
        Ok(json!({
            "uuid": uuid.to_string(),
            "disconnected": disconnected,
            "server_ended": ended,
            "device_memory_free_bytes": total - used,
        }))
    }

    /// `sched`: changes the policy and/or time slice now and persists them.
    pub fn sched(
        &self,
        policy: Option<&str>,
        timeslice_us: Option<u32>,
    ) -> Result<Value, VerbError> {
        let policy = policy
            .map(crate::options::parse_policy)
            .transpose()
            .map_err(|e| VerbError::new(ErrorKind::Invalid, e))?;
        let (before_policy, before_slice) = self
            .device
            .set_scheduler(policy, timeslice_us)
            .map_err(driver_error)?;
        let after_policy = self.device.policy();
        let after_slice = self.device.timeslice_us();
        log::info!(
            "scheduler: policy {} -> {}, time slice {before_slice} -> {after_slice} µs",
            before_policy.as_str(),
            after_policy.as_str()
        );
        if self.config.state.is_some() {
            self.persist()?;
        }
        let mut changed = Vec::new();
        if before_policy != after_policy {
            changed.push("policy");
        }
        if before_slice != after_slice {
            changed.push("timeslice_us");
        }
        Ok(json!({
            "policy": {"before": before_policy.as_str(), "after": after_policy.as_str()},
            "timeslice_us": {"before": before_slice, "after": after_slice},
            "changed": changed,
        }))
    }

    /// `screenshot`: scanout `head` of a connected instance as PNG bytes and its size.
    pub fn screenshot(&self, uuid: &str, head: u32) -> Result<(Vec<u8>, u32, u32), VerbError> {
        let uuid = parse_uuid(uuid)?;
        let source = {
            let list = self.list_lock();
            let inst = list
                .iter()
                .find(|i| i.uuid == uuid)
                .ok_or_else(|| not_found(uuid))?;
            inst.running
                .as_ref()
                .and_then(|r| r.status.scanout_source())
                .ok_or_else(|| {
                    VerbError::new(
                        ErrorKind::NotFound,
                        format!("instance {uuid} has no VM connected: nothing is displayed"),
                    )
                })?
        };
        let image = source
            .scanout_image(head)
            .map_err(|e| VerbError::new(ErrorKind::Invalid, format!("instance {uuid}: {e}")))?;
        let png = crate::device::screenshot::encode_png(&image)
            .map_err(|e| VerbError::new(ErrorKind::Failed, format!("png: {e}")))?;
        Ok((png, image.width, image.height))
    }

    /// Writes the defined instances and scheduler settings to `--state-dir`.
    fn persist(&self) -> Result<(), VerbError> {
        let Some(store) = &self.config.state else {
            return Ok(());
        };
        let _guard = self
            .state_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let instances = self
            .list_lock()
            .iter()
            .filter(|i| i.defined)
            .map(|i| DefinedInstance {
                uuid: i.uuid,
                type_name: i.type_name.clone(),
                socket: i.socket.clone(),
                auto: i.auto,
            })
            .collect();
        let state = State {
            version: super::state::STATE_VERSION,
            scheduler: SchedState {
                policy: Some(self.device.policy().as_str().to_string()),
                timeslice_us: Some(self.device.timeslice_us()),
            },
            instances,
        };
        store
            .save(&state)
            .map_err(|e| VerbError::new(ErrorKind::State, e.to_string()))
    }

    /// Restores `state` at startup: scheduler settings, every definition, and starts the `auto`
    /// ones. Fails (naming the instance) if one cannot be restored.
    pub fn restore(&self, state: &State) -> Result<(), String> {
        let policy = state.scheduler.policy.as_deref();
        if policy.is_some() || state.scheduler.timeslice_us.is_some() {
            self.device
                .set_scheduler(
                    policy
                        .map(crate::options::parse_policy)
                        .transpose()
                        .map_err(|e| format!("scheduler: {e}"))?,
                    state.scheduler.timeslice_us,
                )
                .map_err(|e| format!("scheduler: {e}"))?;
        }
        for d in &state.instances {
            let mut list = self.list_lock();
            Self::check_free(&list, d.uuid, &d.socket)
                .map_err(|e| format!("defined instance {}: {e}", d.uuid))?;
            let name = self.next_name();
            let running = if d.auto {
                Some(
                    self.spawn(&name, &d.type_name, d.uuid, &d.socket, None)
                        .map_err(|e| format!("defined instance {}: {e}", d.uuid))?,
                )
            } else {
                None
            };
            list.push(Instance {
                name,
                uuid: d.uuid,
                type_name: d.type_name.clone(),
                socket: d.socket.clone(),
                defined: true,
                auto: d.auto,
                running,
                claim: None,
            });
        }
        Ok(())
    }

    /// The state file's path, if persistence is on.
    pub fn state_path(&self) -> Option<PathBuf> {
        self.config.state.as_ref().map(StateStore::path)
    }

    /// The scheduling policy.
    pub fn policy(&self) -> Policy {
        self.device.policy()
    }

    /// Stops every server (daemon shutdown).
    pub fn stop_all(&self) {
        let running: Vec<Running> = self
            .list_lock()
            .iter_mut()
            .filter_map(|i| i.running.take())
            .collect();
        for r in running {
            r.server.stop(STOP_TIMEOUT);
        }
    }
}

fn not_found(uuid: Uuid) -> VerbError {
    VerbError::new(ErrorKind::NotFound, format!("no instance {uuid}"))
}

fn not_defined(uuid: Uuid) -> VerbError {
    VerbError::new(
        ErrorKind::NotFound,
        format!("instance {uuid} is not defined"),
    )
}
