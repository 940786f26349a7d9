//! The table of vGPU types: built-ins plus overrides from a file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{MdevError, VgpuType};

const MIB: u64 = 1 << 20;

/// A type file: `[[types]]` tables in TOML, or `{"types": [...]}` in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeFile {
    /// The types the file defines; a name already in the table replaces that type.
    #[serde(default)]
    pub types: Vec<VgpuType>,
}

/// The vGPU types a device offers, in a stable order (built-ins first, then added types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeTable {
    types: Vec<VgpuType>,
}

impl Default for TypeTable {
    fn default() -> Self {
        Self::builtin()
    }
}

impl TypeTable {
    /// The built-in types. Weights follow NVIDIA's fixed-share rule for the Q types
    /// (weight ∝ 1/max_instances: `vgpu-1q` 1, `vgpu-2q` 2, `vgpu-4q` 4).
    pub fn builtin() -> Self {
        let make = |name: &str, mib: u64, instances, heads, (w, h), weight| VgpuType {
            name: name.to_string(),
            framebuffer_bytes: mib * MIB,
            max_instances: instances,
            max_heads: heads,
            max_width: w,
            max_height: h,
            weight,
            timeslice_us: None,
        };
        Self {
            types: vec![
                make("vgpu-64m", 64, 64, 1, (1024, 768), 1),
                make("vgpu-512m", 512, 16, 1, (1280, 1024), 1),
                make("vgpu-1q", 1024, 8, 1, (1920, 1080), 1),
                make("vgpu-2q", 2048, 4, 2, (2560, 1600), 2),
                make("vgpu-4q", 4096, 2, 4, (3840, 2160), 4),
            ],
        }
    }

    /// An empty table (for tests or a file that should replace everything).
    pub fn empty() -> Self {
        Self { types: Vec::new() }
    }

    /// The type called `name`.
    pub fn get(&self, name: &str) -> Option<&VgpuType> {
        self.types.iter().find(|t| t.name == name)
    }

    /// All types in order.
    pub fn iter(&self) -> impl Iterator<Item = &VgpuType> {
        self.types.iter()
    }

    /// Number of types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether the table has no types.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// Adds `ty`, replacing a type of the same name. Validates it first.
    pub fn insert(&mut self, ty: VgpuType) -> Result<(), MdevError> {
        ty.validate()?;
        match self.types.iter_mut().find(|t| t.name == ty.name) {
            Some(slot) => *slot = ty,
            None => self.types.push(ty),
        }
        Ok(())
    }

    /// Applies a type file: every type is validated, names must be unique within the file, and
    /// each replaces the same-named type or is appended. Nothing changes if any type is invalid.
    pub fn extend(&mut self, file: TypeFile) -> Result<(), MdevError> {
        for (i, ty) in file.types.iter().enumerate() {
            ty.validate()?;
            if file.types[..i].iter().any(|t| t.name == ty.name) {
                return Err(MdevError::Duplicate(ty.name.clone()));
            }
        }
        for ty in file.types {
            self.insert(ty)?;
        }
        Ok(())
    }

    /// Parses a TOML type file.
    pub fn parse_toml(text: &str) -> Result<TypeFile, toml::de::Error> {
        toml::from_str(text)
    }

    /// Parses a JSON type file.
    pub fn parse_json(text: &str) -> Result<TypeFile, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The built-in table extended by the file at `path` (JSON if it ends in `.json`, else TOML).
    pub fn load_file(path: &Path) -> Result<Self, MdevError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| MdevError::Io {
            path: shown.clone(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let file = if is_json {
            Self::parse_json(&text).map_err(|source| MdevError::Json {
                path: shown,
                source,
            })?
        } else {
            Self::parse_toml(&text).map_err(|source| MdevError::Toml {
                path: shown,
                source,
            })?
        };
        let mut table = Self::builtin();
        table.extend(file)?;
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_named() {
        let table = TypeTable::builtin();
        for t in table.iter() {
            t.validate().unwrap();
        }
        let q1 = table.get("vgpu-1q").unwrap();
        assert_eq!(q1.framebuffer_bytes, 1 << 30);
        assert_eq!(q1.max_instances, 8);
        assert_eq!(
            q1.description(),
            "num_heads=1, framebuffer=1024M, max_resolution=1920x1080, max_instance=8, weight=1"
        );
        assert_eq!(table.get("vgpu-2q").unwrap().weight, 2);
        assert_eq!(table.get("vgpu-4q").unwrap().weight, 4);
        assert_eq!(table.get("vgpu-512m").unwrap().max_instances, 16);
        assert_eq!(table.get("vgpu-64m").unwrap().max_instances, 64);
        assert!(table.get("nope").is_none());
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn toml_overrides_and_extends() {
        let text = r#"
            [[types]]
            name = "vgpu-1q"
            framebuffer = "1G"
            max_instances = 4
            weight = 3

            [[types]]
            name = "vgpu-8q"
            framebuffer_bytes = 8589934592
            max_instances = 1
            max_heads = 4
            max_width = 5120
            max_height = 2880
            weight = 8
            timeslice_us = 5000
        "#;
        let mut table = TypeTable::builtin();
        table.extend(TypeTable::parse_toml(text).unwrap()).unwrap();
        assert_eq!(table.len(), 6);
        let q1 = table.get("vgpu-1q").unwrap();
        assert_eq!((q1.max_instances, q1.weight), (4, 3));
        let q8 = table.get("vgpu-8q").unwrap();
        assert_eq!(q8.framebuffer_bytes, 8 << 30);
        assert_eq!(q8.timeslice_us, Some(5000));
        assert_eq!(table.iter().last().unwrap().name, "vgpu-8q");
    }

    #[test]
    fn json_file_loads_over_builtins() {
        let dir = std::env::temp_dir().join(format!("vgpu-mdev-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("types.json");
        std::fs::write(
            &path,
            r#"{"types":[{"name":"vgpu-tiny","framebuffer":"16M","max_instances":32}]}"#,
        )
        .unwrap();
        let table = TypeTable::load_file(&path).unwrap();
        assert_eq!(table.get("vgpu-tiny").unwrap().framebuffer_bytes, 16 << 20);
        assert!(table.get("vgpu-1q").is_some());
        let toml_path = dir.join("types.toml");
        std::fs::write(
            &toml_path,
            "[[types]]\nname = \"x\"\nframebuffer = \"1M\"\nmax_instances = 99\n",
        )
        .unwrap();
        assert!(matches!(
            TypeTable::load_file(&toml_path),
            Err(MdevError::InvalidType { .. })
        ));
        std::fs::write(&toml_path, "[[types]]\nname = \"x\"\nbogus = 1\n").unwrap();
        assert!(matches!(
            TypeTable::load_file(&toml_path),
            Err(MdevError::Toml { .. })
        ));
        assert!(matches!(
            TypeTable::load_file(&dir.join("missing.toml")),
            Err(MdevError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_or_duplicate_file_changes_nothing() {
        let mut table = TypeTable::builtin();
        let dup = TypeFile {
            types: vec![
                VgpuType::new("a", 1 << 20, 1),
                VgpuType::new("a", 2 << 20, 1),
            ],
        };
        assert!(matches!(table.extend(dup), Err(MdevError::Duplicate(_))));
        let bad = TypeFile {
            types: vec![VgpuType::new("ok", 1 << 20, 1), VgpuType::new("bad", 0, 1)],
        };
        assert!(table.extend(bad).is_err());
        assert_eq!(table, TypeTable::builtin());
        assert!(TypeTable::empty().is_empty());
    }
}
