//! Who may connect to the vGPU sockets: their group and mode (`--socket-group`, `--socket-mode`).
//!
//! Connecting to a UNIX socket needs write permission on it. libvirt runs the per-VM process as its
//! QEMU user (`libvirt-qemu` on Debian), so a shared daemon must make its sockets writable by a
//! group that user is in; by default they are the daemon's alone (0600).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;

/// Mode of vGPU sockets without `--socket-group`.
pub const DEFAULT_MODE: u32 = 0o600;
/// Mode of vGPU sockets with `--socket-group` and no `--socket-mode`.
pub const GROUP_MODE: u32 = 0o660;

/// Owner group and mode given to each vGPU socket right after it is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    /// The group, `None` to keep the daemon's.
    pub gid: Option<u32>,
    /// Permission bits (at most 0o777).
    pub mode: u32,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            gid: None,
            mode: DEFAULT_MODE,
        }
    }
}

/// The access every vGPU socket of this process gets; set once from the command line.
static CURRENT: OnceLock<SocketAccess> = OnceLock::new();

impl SocketAccess {
    /// Makes `self` the access of every vGPU socket this process binds from now on; the first
    /// call wins (returns false after).
    pub fn install(self) -> bool {
        CURRENT.set(self).is_ok()
    }

    /// The installed access, else the default (0600, the daemon's group).
    pub fn current() -> Self {
        CURRENT.get().copied().unwrap_or_default()
    }

    /// From the options: the group, and the mode (default 0660 with a group, else 0600).
    pub fn new(gid: Option<u32>, mode: Option<u32>) -> Self {
        let fallback = if gid.is_some() {
            GROUP_MODE
        } else {
            DEFAULT_MODE
        };
        SocketAccess {
            gid,
            mode: mode.unwrap_or(fallback),
        }
    }

    /// Gives the socket file at `path` this group and mode.
    pub fn apply(&self, path: &Path) -> io::Result<()> {
        let current = fs::symlink_metadata(path)?.gid();
        if let Some(gid) = self.gid.filter(|&g| g != current) {
            let c = CString::new(path.as_os_str().as_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // SAFETY: `c` is a NUL-terminated path; uid -1 keeps the owner.
            let r = unsafe { libc::lchown(c.as_ptr(), u32::MAX, gid) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        fs::set_permissions(path, fs::Permissions::from_mode(self.mode))
    }
}

/// Parses `--socket-mode`: octal permission bits, e.g. `0660` or `660`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("{s:?} is not an octal mode such as 0660"))?;
    if mode > 0o777 {
        return Err(format!("mode {s} has bits above 0777"));
    }
    if mode & 0o200 == 0 {
        return Err(format!(
            "mode {s} denies the daemon's own user write access, which connecting needs"
        ));
    }
    Ok(mode)
}

/// Parses `--socket-group`: a group name or a numeric gid.
pub fn parse_group(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    let name = CString::new(s).map_err(|_| format!("bad group name {s:?}"))?;
    // SAFETY: `group` is plain data that getgrnam_r fills in.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer refers to memory we own for the duration of the call; `buf`'s length
    // is passed with it.
    let r = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if r != 0 {
        return Err(format!(
            "looking up group {s:?}: {}",
            io::Error::from_raw_os_error(r)
        ));
    }
    if result.is_null() {
        return Err(format!("no group named {s:?}"));
    }
    Ok(group.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn modes_and_groups_parse() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o666"), Ok(0o666));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("1777").is_err());
        assert!(parse_mode("0060").is_err(), "owner must keep write");
        assert_eq!(parse_group("0"), Ok(0));
        assert_eq!(parse_group("root"), Ok(0));
        assert!(parse_group("no-such-group-vgpud")
            .unwrap_err()
            .contains("no group named"));
        assert_eq!(SocketAccess::new(None, None).mode, 0o600);
        assert_eq!(SocketAccess::new(Some(5), None).mode, 0o660);
        assert_eq!(SocketAccess::new(Some(5), Some(0o666)).mode, 0o666);
    }

    #[test]
    fn applies_mode_and_group() {
        let dir = std::env::temp_dir().join(format!("vgpud-access-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _l = UnixListener::bind(&path).unwrap();
        // SAFETY: getegid has no preconditions.
        let gid = unsafe { libc::getegid() };
        SocketAccess::new(Some(gid), None).apply(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid);
        SocketAccess::default().apply(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        fs::remove_dir_all(dir).unwrap();
    }
}
