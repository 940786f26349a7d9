//! `--vm-map FILE`: the operator's assignment of VMs to vGPU types or instances, consulted by
//! `claim`. TOML, one table per VM name:
//!
//! ```toml
//! [vm.web1]
//! type = "vgpu-2q"
//!
//! [vm.build]
//! uuid = "6c1e0d7e-4e8e-4bd4-8c36-0b0e8a3b2f10"
//! ```
//!
//! The file is read again at every claim, so edits take effect without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use uuid::Uuid;

/// Largest map file read.
const MAX_MAP_BYTES: u64 = 1 << 20;

/// What the map says about one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmEntry {
    /// The type its instance has.
    #[serde(rename = "type", default)]
    pub type_name: Option<String>,
    /// The instance reserved for it.
    #[serde(default)]
    pub uuid: Option<Uuid>,
}

/// The whole map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmMap {
    /// Entries by VM name.
    #[serde(default)]
    pub vm: BTreeMap<String, VmEntry>,
}

impl VmMap {
    /// Parses a map file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let map: VmMap = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = std::collections::HashMap::new();
        for (name, e) in &map.vm {
            if let Some(u) = e.uuid {
                if let Some(other) = seen.insert(u, name) {
                    return Err(format!(
                        "instance {u} is assigned to both {other} and {name}"
                    ));
                }
            }
        }
        Ok(map)
    }

    /// Loads `path`; the error names the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_MAP_BYTES).read_to_string(&mut text))
            .map_err(|e| format!("--vm-map {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--vm-map {}: {e}", path.display()))
    }

    /// The entry for `vm`.
    pub fn get(&self, vm: &str) -> Option<&VmEntry> {
        self.vm.get(vm)
    }

    /// The VM an instance is reserved for, if any.
    pub fn owner_of(&self, uuid: Uuid) -> Option<&str> {
        self.vm
            .iter()
            .find(|(_, e)| e.uuid == Some(uuid))
            .map(|(n, _)| n.as_str())
    }
}

/// Where the map lives (re-read at every claim).
#[derive(Debug, Clone)]
pub struct VmMapFile(pub PathBuf);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let m = VmMap::parse(
            "[vm.web1]\ntype = \"vgpu-2q\"\n[vm.db]\nuuid = \"00000000-0000-0000-0000-000000000007\"\n",
        )
        .unwrap();
        assert_eq!(m.get("web1").unwrap().type_name.as_deref(), Some("vgpu-2q"));
        assert_eq!(m.owner_of(Uuid::from_u128(7)), Some("db"));
        assert!(VmMap::parse("[vm.a]\ncolour = 1\n").is_err());
        let dup = "[vm.a]\nuuid = \"00000000-0000-0000-0000-000000000007\"\n\
                   [vm.b]\nuuid = \"00000000-0000-0000-0000-000000000007\"\n";
        assert!(VmMap::parse(dup).is_err());
    }
}
