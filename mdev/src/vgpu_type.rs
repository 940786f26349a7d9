//! One vGPU type and its validation.

use serde::{Deserialize, Deserializer, Serialize};

use crate::{format_size, parse_size, MdevError};

/// Most vGPUs of one type on a device. NVIDIA allows 32 time-sliced vGPUs per GPU; one `vgpud`
/// serves up to 64 (its scale target), so the small types go that far.
pub const MAX_INSTANCES: u32 = 64;
/// Most display heads a type may offer (virtio-gpu's `VIRTIO_GPU_MAX_SCANOUTS`).
pub const MAX_HEADS: u32 = 16;
/// Largest scheduling weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Valid per-type (and per-device) time slice, in microseconds (NVIDIA: 1–30 ms).
pub const TIMESLICE_RANGE_US: std::ops::RangeInclusive<u32> = 1000..=30000;
/// Largest display dimension a type may offer.
const MAX_DIMENSION: u32 = 16384;

/// A vGPU type: what one vGPU of this kind gets from the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VgpuType {
    /// Type name, e.g. `vgpu-1q` (ASCII letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Framebuffer partition size in bytes. In files also `framebuffer = "1024M"`.
    #[serde(alias = "framebuffer", deserialize_with = "size_or_string")]
    pub framebuffer_bytes: u64,
    /// Most vGPUs of this type on one device (1..=64).
    pub max_instances: u32,
    /// Display heads (scanouts) the guest sees (1..=16).
    #[serde(default = "default_heads")]
    pub max_heads: u32,
    /// Largest scanout width in pixels.
    #[serde(default = "default_width")]
    pub max_width: u32,
    /// Largest scanout height in pixels.
    #[serde(default = "default_height")]
    pub max_height: u32,
    /// Scheduling weight for the fixed-share policy (1..=1000).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Time slice for vGPUs of this type in µs (1000..=30000); `None` uses the device's.
    #[serde(default)]
    pub timeslice_us: Option<u32>,
}

fn default_heads() -> u32 {
    1
}
fn default_width() -> u32 {
    1920
}
fn default_height() -> u32 {
    1080
}
fn default_weight() -> u32 {
    1
}

fn size_or_string<'de, D: Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(de)? {
        Size::Bytes(bytes) => Ok(bytes),
        Size::Text(text) => parse_size(&text).map_err(serde::de::Error::custom),
    }
}

impl VgpuType {
    /// A type with one 1920x1080 head, weight 1 and the device's time slice.
    pub fn new(name: &str, framebuffer_bytes: u64, max_instances: u32) -> Self {
        Self {
            name: name.to_string(),
            framebuffer_bytes,
            max_instances,
            max_heads: default_heads(),
            max_width: default_width(),
            max_height: default_height(),
            weight: default_weight(),
            timeslice_us: None,
        }
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), MdevError> {
        let fail = |reason: &str| {
            Err(MdevError::InvalidType {
                name: self.name.clone(),
                reason: reason.to_string(),
            })
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return fail("name must be 1-64 characters of [A-Za-z0-9._-]");
        }
        if self.framebuffer_bytes == 0 || !self.framebuffer_bytes.is_multiple_of(1 << 20) {
            return fail("framebuffer must be a non-zero multiple of 1M");
        }
        if !(1..=MAX_INSTANCES).contains(&self.max_instances) {
            return fail("max_instances must be 1..=64");
        }
        if !(1..=MAX_HEADS).contains(&self.max_heads) {
            return fail("max_heads must be 1..=16");
        }
        if !(1..=MAX_DIMENSION).contains(&self.max_width)
            || !(1..=MAX_DIMENSION).contains(&self.max_height)
        {
            return fail("max_width and max_height must be 1..=16384");
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return fail("weight must be 1..=1000");
        }
        if let Some(us) = self.timeslice_us {
            if !TIMESLICE_RANGE_US.contains(&us) {
                return fail("timeslice_us must be 1000..=30000");
            }
        }
        Ok(())
    }

    /// The mdev-style description, e.g.
    /// `num_heads=1, framebuffer=1024M, max_resolution=1920x1080, max_instance=8, weight=1`.
    pub fn description(&self) -> String {
        let mut text = format!(
            "num_heads={}, framebuffer={}, max_resolution={}x{}, max_instance={}, weight={}",
            self.max_heads,
            format_size(self.framebuffer_bytes),
            self.max_width,
            self.max_height,
            self.max_instances,
            self.weight
        );
        if let Some(us) = self.timeslice_us {
            text.push_str(&format!(", timeslice_us={us}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_is_mdev_style() {
        let t = VgpuType::new("vgpu-1q", 1 << 30, 8);
        assert_eq!(
            t.description(),
            "num_heads=1, framebuffer=1024M, max_resolution=1920x1080, max_instance=8, weight=1"
        );
        let mut t = t;
        t.timeslice_us = Some(4000);
        assert!(t.description().ends_with("weight=1, timeslice_us=4000"));
    }

    #[test]
    fn validate_rejects_out_of_range() {
        let good = VgpuType::new("ok", 64 << 20, 4);
        good.validate().unwrap();
        let cases: Vec<fn(&mut VgpuType)> = vec![
            |t| t.name = String::new(),
            |t| t.name = "bad name".into(),
            |t| t.framebuffer_bytes = 0,
            |t| t.framebuffer_bytes = (1 << 20) + 1,
            |t| t.max_instances = 0,
            |t| t.max_instances = 65,
            |t| t.max_heads = 0,
            |t| t.max_heads = 17,
            |t| t.max_width = 0,
            |t| t.max_height = 20000,
            |t| t.weight = 0,
            |t| t.timeslice_us = Some(999),
            |t| t.timeslice_us = Some(30001),
        ];
        for (i, mutate) in cases.into_iter().enumerate() {
            let mut t = good.clone();
            mutate(&mut t);
            assert!(t.validate().is_err(), "case {i}");
        }
    }

    #[test]
    fn serde_roundtrip_and_size_strings() {
        let t = VgpuType::new("vgpu-x", 256 << 20, 4);
        let json = serde_json::to_string(&t).unwrap();
        let back: VgpuType = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        let from_text: VgpuType =
            serde_json::from_str(r#"{"name":"a","framebuffer":"256M","max_instances":4}"#).unwrap();
        assert_eq!(from_text.framebuffer_bytes, 256 << 20);
        assert_eq!(from_text.max_heads, 1);
        assert!(serde_json::from_str::<VgpuType>(
            r#"{"name":"a","framebuffer":"256Q","max_instances":4}"#
        )
        .is_err());
    }
}
