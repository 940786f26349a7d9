//! `claim`: how a per-VM relay (`vgpud --fd N --claim ...`) gets an instance of the shared
//! daemon. The VM map (`--vm-map`) decides first: a VM assigned an instance gets exactly that
//! one; a VM assigned a type gets an instance of it. Otherwise the request's type, else the
//! daemon's `--type`. A free instance is started, has no VM connected, is not reserved for
//! another VM by the map, and was not claimed in the last [`CLAIM_HOLD`] (except by the same
//! VM), so two VMs starting at once never get the same one. If none is free and the type has
//! room, a new instance is created (defined with `auto` when the daemon keeps state).

use std::time::Instant;

use serde_json::{json, Value};
use uuid::Uuid;
use vgpu_mdev::proto::ErrorKind;

use super::manager::{Instance, Manager, NewInstance, VerbError, CLAIM_HOLD};
use super::vm_map::VmMap;

impl Manager {
    /// `claim`: a started instance with no VM and no recent claim, of the type the VM map or the
    /// request names (else the default type); created (defined, `auto`) if none is free and the
    /// type has room.
    pub fn claim(&self, type_name: Option<&str>, vm: Option<&str>) -> Result<Value, VerbError> {
        let map = match &self.config.vm_map {
            Some(path) => VmMap::load(path).map_err(|e| VerbError::new(ErrorKind::Invalid, e))?,
            None => VmMap::default(),
        };
        let entry = vm.and_then(|v| map.get(v)).cloned().unwrap_or_default();
        let now = Instant::now();
        if let Some(uuid) = entry.uuid {
            return self.claim_reserved(uuid, vm, now);
        }
        let wanted = entry
            .type_name
            .as_deref()
            .or(type_name)
            .unwrap_or(&self.config.default_type)
            .to_string();
        {
            let mut list = self.list_lock();
            let free = |i: &Instance| {
                i.type_name == wanted
                    && i.running.is_some()
                    && !i.connected()
                    && map.owner_of(i.uuid).is_none()
                    && match &i.claim {
                        None => true,
                        Some((at, by)) => {
                            now.duration_since(*at) >= CLAIM_HOLD
                                || (vm.is_some() && by.as_deref() == vm)
                        }
                    }
            };
            // The instance this VM had last time first, then the first free one.
            let pick = list
                .iter()
                .position(|i| {
                    free(i) && vm.is_some() && i.claim.as_ref().and_then(|c| c.1.as_deref()) == vm
                })
                .or_else(|| list.iter().position(free));
            if let Some(i) = pick {
                list[i].claim = Some((now, vm.map(str::to_string)));
                let inst = &list[i];
                log::info!(
                    "claim: {} ({}) for VM {}",
                    inst.uuid,
                    inst.type_name,
                    vm.unwrap_or("-")
                );
                return Ok(claim_reply(inst, false));
            }
        }
        let persist = self.config.state.is_some();
        let reply = self.create_inner(
            NewInstance {
                name: None,
                type_name: wanted,
                uuid: None,
                socket: None,
                device: None,
            },
            persist,
            persist,
        )?;
        let uuid = reply["uuid"].as_str().and_then(|u| Uuid::parse_str(u).ok());
        let mut list = self.list_lock();
        let inst = list
            .iter_mut()
            .find(|i| Some(i.uuid) == uuid)
            .ok_or_else(|| VerbError::new(ErrorKind::Failed, "the new instance vanished"))?;
        inst.claim = Some((now, vm.map(str::to_string)));
        log::info!(
            "claim: created {} ({}) for VM {}",
            inst.uuid,
            inst.type_name,
            vm.unwrap_or("-")
        );
        Ok(claim_reply(inst, true))
    }

    fn claim_reserved(
        &self,
        uuid: Uuid,
        vm: Option<&str>,
        now: Instant,
    ) -> Result<Value, VerbError> {
        let mut list = self.list_lock();
        let i = list.iter().position(|i| i.uuid == uuid).ok_or_else(|| {
            VerbError::new(
                ErrorKind::NotFound,
                format!(
                    "--vm-map assigns instance {uuid} to VM {}, but no such instance exists \
                     (create or define it)",
                    vm.unwrap_or("-")
                ),
            )
        })?;
        if list[i].connected() {
            return Err(VerbError::new(
                ErrorKind::Busy,
                format!(
                    "instance {uuid} of VM {} has a VM connected",
                    vm.unwrap_or("-")
                ),
            ));
        }
        if list[i].running.is_none() {
            let inst = &list[i];
            let running = self.spawn(&inst.name, &inst.type_name, uuid, &inst.socket, None)?;
            list[i].running = Some(running);
        }
        list[i].claim = Some((now, vm.map(str::to_string)));
        Ok(claim_reply(&list[i], false))
    }
}

fn claim_reply(inst: &Instance, created: bool) -> Value {
    json!({
        "uuid": inst.uuid.to_string(),
        "socket": inst.socket,
        "type": inst.type_name,
        "created": created,
    })
}
