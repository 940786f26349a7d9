//! Which Vulkan physical device to open: the listing `--list-engines` prints (with each device's
//! DRM render node where the driver reports one through `VK_EXT_physical_device_drm`) and the
//! choice `--engine vulkan[:INDEX|:NAME]` and `--render-node PATH` make among those devices.
//!
//! The choice itself ([`choose`]) works on [`PhysicalDeviceInfo`] only, so it is tested on made-up
//! devices (lavapipe has no DRM node).

use std::ffi::c_char;
use std::fmt;
use std::path::PathBuf;

use ash::vk;
use serde::Serialize;

/// One physical device as `--list-engines` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PhysicalDeviceInfo {
    /// Index for `--engine vulkan:INDEX`.
    pub index: u32,
    /// Device name.
    pub name: String,
    /// "discrete", "integrated", "virtual", "cpu" or "other".
    #[serde(rename = "type")]
    pub device_type: String,
    /// Driver name and info ("llvmpipe Mesa 25.0.7 ...").
    pub driver: String,
    /// Vulkan API version "major.minor.patch".
    pub api_version: String,
    /// PCI vendor id.
    pub vendor_id: u32,
    /// PCI device id.
    pub device_id: u32,
    /// Memory heaps: bytes and whether device-local.
    pub heaps: Vec<HeapInfo>,
    /// Whether it has a compute queue and Vulkan ≥ 1.1 (usable by the engine).
    pub usable: bool,
    /// Its DRM render node (`VK_EXT_physical_device_drm`); `None` when the driver has no such
    /// extension or the device no render node (lavapipe).
    pub render_node: Option<DrmNode>,
}

/// One memory heap.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct HeapInfo {
    /// Size in bytes.
    pub bytes: u64,
    /// Device-local heap.
    pub device_local: bool,
}

/// A DRM device node, by its device number (`st_rdev`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
pub struct DrmNode {
    /// Major number (226 for DRM).
    pub major: u32,
    /// Minor number (128 and up for render nodes).
    pub minor: u32,
}

impl DrmNode {
    /// The usual path of a render node with this number (`/dev/dri/renderD<minor>`).
    pub fn default_path(self) -> PathBuf {
        PathBuf::from(format!("/dev/dri/renderD{}", self.minor))
    }
}

impl fmt::Display for DrmNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Which physical device to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelector {
    /// The best usable one: discrete, then integrated, virtual, CPU.
    Best,
    /// By index in the listing.
    Index(u32),
    /// The first usable one whose name contains this (case-insensitive).
    Name(String),
    /// The device whose DRM render node is `node` (`--render-node`), which must also be the one
    /// `among` picks (`Best` unless `--engine vulkan:INDEX|:NAME` narrows it).
    RenderNode {
        /// The node's device number.
        node: DrmNode,
        /// The path given, for messages.
        path: PathBuf,
        /// What `--engine` asked for besides.
        among: Box<DeviceSelector>,
    },
}

impl fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSelector::Best => write!(f, "the best usable device"),
            DeviceSelector::Index(i) => write!(f, "device index {i}"),
            DeviceSelector::Name(n) => write!(f, "a device named like {n:?}"),
            DeviceSelector::RenderNode { node, path, among } => {
                write!(f, "render node {} ({node})", path.display())?;
                if **among != DeviceSelector::Best {
                    write!(f, " and {among}")?;
                }
                Ok(())
            }
        }
    }
}

/// Preference among device types (lower first).
fn type_rank(device_type: &str) -> u32 {
    match device_type {
        "discrete" => 0,
        "integrated" => 1,
        "virtual" => 2,
        "cpu" => 3,
        _ => 4,
    }
}

/// The device `selector` picks among `devices` (their position in the slice), or a message
/// that says why none fits. A device that matches but is not usable is an error too.
pub fn choose(selector: &DeviceSelector, devices: &[PhysicalDeviceInfo]) -> Result<usize, String> {
    let found = match selector {
        DeviceSelector::Best => devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.usable)
            .min_by_key(|(_, d)| (type_rank(&d.device_type), d.index))
            .map(|(i, _)| i),
        DeviceSelector::Index(n) => devices.iter().position(|d| d.index == *n),
        DeviceSelector::Name(s) => {
            let s = s.to_lowercase();
            devices
                .iter()
                .position(|d| d.usable && d.name.to_lowercase().contains(&s))
        }
        DeviceSelector::RenderNode { node, path, among } => {
            let Some(at) = devices.iter().position(|d| d.render_node == Some(*node)) else {
                let known: Vec<String> = devices
                    .iter()
                    .map(|d| match d.render_node {
                        Some(n) => format!("{} ({}): {n}", d.index, d.name),
                        None => format!("{} ({}): none", d.index, d.name),
                    })
                    .collect();
                return Err(format!(
                    "no Vulkan device has the render node {} ({node}); render nodes of the {} \
                     device(s): {}",
                    path.display(),
                    devices.len(),
                    if known.is_empty() {
                        "-".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            };
            if **among != DeviceSelector::Best {
                let other = choose(among, devices)?;
                if other != at {
                    return Err(format!(
                        "render node {} ({node}) is Vulkan device {} ({}), not {among}",
                        path.display(),
                        devices[at].index,
                        devices[at].name
                    ));
                }
            }
            Some(at)
        }
    };
    let Some(at) = found else {
        return Err(format!(
            "no usable Vulkan device matches {selector} ({} device(s) found)",
            devices.len()
        ));
    };
    let d = &devices[at];
    if !d.usable {
        return Err(format!(
            "Vulkan device {} ({}) has no compute queue or is older than Vulkan 1.1",
            d.index, d.name
        ));
    }
    Ok(at)
}

fn type_name(t: vk::PhysicalDeviceType) -> &'static str {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => "discrete",
        vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated",
        vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual",
        vk::PhysicalDeviceType::CPU => "cpu",
        _ => "other",
    }
}

pub(crate) fn c_text(bytes: &[c_char]) -> String {
    let bytes: Vec<u8> = bytes
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn version_text(v: u32) -> String {
    format!(
        "{}.{}.{}",
        vk::api_version_major(v),
        vk::api_version_minor(v),
        vk::api_version_patch(v)
    )
}

/// The compute queue family to use: one without graphics if there is one (a dedicated compute
/// queue on discrete GPUs), else any with compute.
pub(crate) fn compute_family(
    instance: &ash::Instance,
    pd: vk::PhysicalDevice,
) -> Option<(u32, u32)> {
    // SAFETY: `pd` comes from `instance`.
    let families = unsafe { instance.get_physical_device_queue_family_properties(pd) };
    let with_compute = |f: &vk::QueueFamilyProperties| {
        f.queue_flags.contains(vk::QueueFlags::COMPUTE) && f.queue_count > 0
    };
    let pick = families
        .iter()
        .position(|f| with_compute(f) && !f.queue_flags.contains(vk::QueueFlags::GRAPHICS))
        .or_else(|| families.iter().position(with_compute))?;
    let family = families.get(pick)?;
    Some((u32::try_from(pick).ok()?, family.timestamp_valid_bits))
}

/// A device's driver name and info (empty below Vulkan 1.2).
pub(crate) struct DriverText {
    pub name: String,
    pub info: String,
}

pub(crate) fn driver_text(
    instance: &ash::Instance,
    pd: vk::PhysicalDevice,
    api: u32,
) -> DriverText {
    if vk::api_version_minor(api) < 2 && vk::api_version_major(api) == 1 {
        return DriverText {
            name: String::new(),
            info: String::new(),
        };
    }
    let mut driver = vk::PhysicalDeviceDriverProperties::default();
    let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut driver);
    // SAFETY: `pd` comes from `instance`, which supports 1.1 properties2 (checked by the caller).
    unsafe { instance.get_physical_device_properties2(pd, &mut props2) };
    DriverText {
        name: c_text(&driver.driver_name),
        info: c_text(&driver.driver_info),
    }
}

/// The device's render node, when its driver has `VK_EXT_physical_device_drm`.
fn render_node(instance: &ash::Instance, pd: vk::PhysicalDevice, api: u32) -> Option<DrmNode> {
    if api < vk::API_VERSION_1_1 {
        return None;
    }
    // SAFETY: `pd` comes from `instance`.
    let exts = unsafe { instance.enumerate_device_extension_properties(pd) }.ok()?;
    let has = exts
        .iter()
        .any(|e| e.extension_name_as_c_str() == Ok(ash::ext::physical_device_drm::NAME));
    if !has {
        return None;
    }
    let mut drm = vk::PhysicalDeviceDrmPropertiesEXT::default();
    let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut drm);
    // SAFETY: the device supports the extension whose struct is chained; 1.1 core query.
    unsafe { instance.get_physical_device_properties2(pd, &mut props2) };
    (drm.has_render == vk::TRUE).then(|| DrmNode {
        major: u32::try_from(drm.render_major).unwrap_or(u32::MAX),
        minor: u32::try_from(drm.render_minor).unwrap_or(u32::MAX),
    })
}

/// Every physical device of `instance`, in enumeration order.
pub(crate) fn enumerate(
    instance: &ash::Instance,
) -> Result<Vec<(vk::PhysicalDevice, PhysicalDeviceInfo)>, vk::Result> {
    // SAFETY: plain enumeration on a live instance.
    let pds = unsafe { instance.enumerate_physical_devices() }?;
    let mut out = Vec::new();
    for (i, pd) in pds.into_iter().enumerate() {
        // SAFETY: `pd` comes from this instance.
        let props = unsafe { instance.get_physical_device_properties(pd) };
        // SAFETY: as above.
        let mem = unsafe { instance.get_physical_device_memory_properties(pd) };
        let driver = driver_text(instance, pd, props.api_version);
        let heaps = mem
            .memory_heaps
            .iter()
            .take(mem.memory_heap_count as usize)
            .map(|h| HeapInfo {
                bytes: h.size,
                device_local: h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL),
            })
            .collect();
        let usable =
            compute_family(instance, pd).is_some() && props.api_version >= vk::API_VERSION_1_1;
        out.push((
            pd,
            PhysicalDeviceInfo {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                name: c_text(&props.device_name),
                device_type: type_name(props.device_type).to_string(),
                driver: format!("{} {}", driver.name, driver.info)
                    .trim()
                    .to_string(),
                api_version: version_text(props.api_version),
                vendor_id: props.vendor_id,
                device_id: props.device_id,
                heaps,
                usable,
                render_node: render_node(instance, pd, props.api_version),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(index: u32, name: &str, ty: &str, node: Option<(u32, u32)>) -> PhysicalDeviceInfo {
        PhysicalDeviceInfo {
            index,
            name: name.into(),
            device_type: ty.into(),
            driver: String::new(),
            api_version: "1.3.0".into(),
            vendor_id: 0,
            device_id: 0,
            heaps: vec![],
            usable: true,
            render_node: node.map(|(major, minor)| DrmNode { major, minor }),
        }
    }

    fn host() -> Vec<PhysicalDeviceInfo> {
        vec![
            dev(0, "llvmpipe (LLVM 19)", "cpu", None),
            dev(
                1,
                "AMD Radeon RX 7600 (RADV NAVI33)",
                "discrete",
                Some((226, 129)),
            ),
            dev(
                2,
                "Intel(R) UHD Graphics 770",
                "integrated",
                Some((226, 128)),
            ),
        ]
    }

    fn node(minor: u32, among: DeviceSelector) -> DeviceSelector {
        DeviceSelector::RenderNode {
            node: DrmNode { major: 226, minor },
            path: DrmNode { major: 226, minor }.default_path(),
            among: Box::new(among),
        }
    }

    #[test]
    fn best_prefers_discrete_then_integrated() {
        assert_eq!(choose(&DeviceSelector::Best, &host()), Ok(1));
        let mut no_gpu = host();
        no_gpu.remove(1);
        assert_eq!(choose(&DeviceSelector::Best, &no_gpu), Ok(1));
    }

    #[test]
    fn render_node_picks_the_device_with_that_node() {
        let devices = host();
        assert_eq!(choose(&node(128, DeviceSelector::Best), &devices), Ok(2));
        assert_eq!(choose(&node(129, DeviceSelector::Best), &devices), Ok(1));
        // The major number matters too.
        let other_major = DeviceSelector::RenderNode {
            node: DrmNode {
                major: 227,
                minor: 128,
            },
            path: "/tmp/x".into(),
            among: Box::new(DeviceSelector::Best),
        };
        assert!(choose(&other_major, &devices).is_err());
    }

    #[test]
    fn render_node_narrows_the_engine_choice() {
        let devices = host();
        assert_eq!(
            choose(&node(128, DeviceSelector::Index(2)), &devices),
            Ok(2)
        );
        assert_eq!(
            choose(&node(128, DeviceSelector::Name("intel".into())), &devices),
            Ok(2)
        );
        let err = choose(&node(128, DeviceSelector::Index(1)), &devices).unwrap_err();
        assert!(err.contains("is Vulkan device 2"), "{err}");
        assert!(err.contains("not device index 1"), "{err}");
    }

    #[test]
    fn no_device_with_the_node_names_the_node_and_what_exists() {
        let err = choose(&node(130, DeviceSelector::Best), &host()).unwrap_err();
        assert!(err.contains("/dev/dri/renderD130 (226:130)"), "{err}");
        assert!(err.contains("0 (llvmpipe (LLVM 19)): none"), "{err}");
        assert!(
            err.contains("2 (Intel(R) UHD Graphics 770): 226:128"),
            "{err}"
        );
        let err = choose(&node(128, DeviceSelector::Best), &[]).unwrap_err();
        assert!(err.contains("0 device(s)"), "{err}");
    }

    #[test]
    fn a_matching_but_unusable_device_is_an_error() {
        let mut devices = host();
        devices[2].usable = false;
        let err = choose(&node(128, DeviceSelector::Best), &devices).unwrap_err();
        assert!(err.contains("no compute queue"), "{err}");
    }
}
