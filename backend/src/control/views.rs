//! What `list`, `stats`, `types`, the metrics and the stats log read from the [`Manager`].

use std::sync::Arc;

use serde_json::{json, Value};
use uuid::Uuid;
use vgpu_mdev::VgpuType;

use super::manager::{InstanceSnapshot, Manager};
use crate::driver::budget::MemoryBudget;
use crate::driver::Vgpu;
use crate::vhost::daemon::ServerStatus;

/// A running instance's handles, taken under the list lock and read outside it.
struct Live {
    name: String,
    uuid: Uuid,
    type_name: String,
    running: Option<(Arc<Vgpu>, Arc<ServerStatus>)>,
}

impl Manager {
    /// `list`: every instance.
    pub fn list(&self) -> Value {
        let list = self.list_lock();
        let vgpus: Vec<Value> = list
            .iter()
            .map(|i| {
                let ty = self.device.types().get(&i.type_name);
                let total = i
                    .running
                    .as_ref()
                    .map(|r| r.vgpu.partition().total())
                    .or(ty.map(|t| t.framebuffer_bytes))
                    .unwrap_or(0);
                let used = i.running.as_ref().map_or(0, |r| r.vgpu.partition().used());
                let util = i
                    .running
                    .as_ref()
                    .map_or(0, |r| r.vgpu.stats().utilization_permille);
                json!({
                    "name": i.name,
                    "id": i.running.as_ref().map(|r| r.vgpu.id()),
                    "uuid": i.uuid.to_string(),
                    "type": i.type_name,
                    "description": ty.map(VgpuType::description),
                    "framebuffer_bytes": total,
                    "socket": i.socket,
                    "state": i.state(),
                    "defined": i.defined,
                    "auto": i.auto,
                    "connected": i.connected(),
                    "connections": i.running.as_ref().map_or(0, |r| r.status.connections()),
                    "fb_used_bytes": used,
                    "fb_total_bytes": total,
                    "utilization_permille": util,
                    "vm": i.claim.as_ref().and_then(|c| c.1.clone()),
                })
            })
            .collect();
        json!({"device": self.device_json(), "vgpus": vgpus})
    }

    /// `stats`: figures of every running instance.
    pub fn stats(&self) -> Value {
        let vgpus: Vec<Value> = self
            .snapshot()
            .into_iter()
            .filter_map(|s| {
                let mut v = serde_json::to_value(s.stats?).ok()?;
                if let Value::Object(map) = &mut v {
                    map.insert("name".into(), json!(s.name));
                    map.insert("uuid".into(), json!(s.uuid.to_string()));
                    map.insert("connected".into(), json!(s.connected));
                }
                Some(v)
            })
            .collect();
        json!({"device": self.device_json(), "vgpus": vgpus})
    }

    /// `types`: each type with its live `available_instances`.
    pub fn types(&self) -> Value {
        let types: Vec<Value> = self
            .device
            .types()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description(),
                    "framebuffer_bytes": t.framebuffer_bytes,
                    "max_instances": t.max_instances,
                    "max_heads": t.max_heads,
                    "weight": t.weight,
                    "available_instances": self.device.available_instances(&t.name),
                })
            })
            .collect();
        json!({"types": types})
    }

    /// Device-level figures.
    pub fn device_json(&self) -> Value {
        let (total, used) = self.device.memory();
        let health = self.device.engine_health();
        json!({
            "memory_mib": total >> 20,
            "reserved_mib": used >> 20,
            "memory_total_bytes": total,
            "memory_free_bytes": total - used,
            "policy": self.device.policy().as_str(),
            "timeslice_us": self.device.timeslice_us(),
            "engine": self.device.engine_name(),
            "device_losses": health.losses,
            "device_recoveries": health.recoveries,
        })
    }

    /// Every instance with its figures (stats taken outside the list lock).
    pub fn snapshot(&self) -> Vec<InstanceSnapshot> {
        let items: Vec<Live> = self
            .list_lock()
            .iter()
            .map(|i| Live {
                name: i.name.clone(),
                uuid: i.uuid,
                type_name: i.type_name.clone(),
                running: i
                    .running
                    .as_ref()
                    .map(|r| (Arc::clone(&r.vgpu), Arc::clone(&r.status))),
            })
            .collect();
        items
            .into_iter()
            .map(
                |Live {
                     name,
                     uuid,
                     type_name,
                     running,
                 }| InstanceSnapshot {
                    name,
                    uuid,
                    type_name,
                    connected: running.as_ref().is_some_and(|r| r.1.connected()),
                    stats: running.as_ref().map(|r| r.0.stats()),
                    guest_errors: running
                        .as_ref()
                        .map(|r| r.0.guest_errors())
                        .unwrap_or_default(),
                },
            )
            .collect()
    }
}
