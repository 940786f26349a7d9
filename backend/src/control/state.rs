//! `--state-dir`: the defined instances and the scheduler settings, kept in one JSON file
//! (`state.json`) written atomically: a temporary file in the same directory is written and
//! fsynced, then renamed over the old one and the directory fsynced. A `kill -9` at any moment
//! leaves either the old or the new file; a leftover temporary file is ignored (and removed at
//! the next write). A file that cannot be read or parsed is an error naming it: the daemon never
//! starts empty in its place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// The state file's name inside `--state-dir`.
pub const STATE_FILE: &str = "state.json";
/// The format version written.
pub const STATE_VERSION: u32 = 1;
/// Largest state file read (a few hundred bytes per instance).
const MAX_STATE_BYTES: u64 = 16 << 20;

/// Reading or writing the state failed.
#[derive(Debug, Error)]
pub enum StateError {
    /// The file or directory could not be read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a valid state file.
    #[error("state file {path} is corrupt: {reason} (fix or remove it; the daemon will not start without its instances)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One defined instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinedInstance {
    /// Its UUID.
    pub uuid: Uuid,
    /// Its type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Its vhost-user socket.
    pub socket: PathBuf,
    /// Started whenever the daemon starts.
    #[serde(default)]
    pub auto: bool,
}

/// Scheduler settings changed with `vgpuctl sched`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedState {
    /// The policy (`best-effort`, `equal-share`, `fixed-share`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The device time slice (µs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeslice_us: Option<u32>,
}

/// The whole state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Scheduler settings.
    #[serde(default)]
    pub scheduler: SchedState,
    /// Defined instances, in definition order.
    #[serde(default)]
    pub instances: Vec<DefinedInstance>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// The store in `dir` (created at the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore { dir: dir.into() }
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Loads the state: empty if the file does not exist, an error naming the file if it cannot
    /// be read or is not valid.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.path();
        let text = match read_bounded(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(State {
                    version: STATE_VERSION,
                    ..State::default()
                })
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.clone(),
            reason,
        };
        let state: State = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!(
                "version {} (this vgpud reads {STATE_VERSION})",
                state.version
            )));
        }
        let mut uuids = std::collections::HashSet::new();
        for i in &state.instances {
            if !uuids.insert(i.uuid) {
                return Err(corrupt(format!("instance {} is defined twice", i.uuid)));
            }
        }
        Ok(state)
    }

    /// Writes `state` atomically (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.path();
        let err = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(err)?;
        let tmp = self
            .dir
            .join(format!(".{STATE_FILE}.tmp.{}", std::process::id()));
        let mut text = serde_json::to_vec_pretty(state).map_err(|e| err(io::Error::other(e)))?;
        text.push(b'\n');
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(&text).map_err(err)?;
        file.sync_all().map_err(err)?;
        drop(file);
        fs::rename(&tmp, &path).map_err(err)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        self.remove_stale_temps();
        Ok(())
    }

    /// Removes temporary files left by a daemon killed mid-write.
    fn remove_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!(".{STATE_FILE}.tmp.");
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

fn read_bounded(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let n = File::open(path)?
        .take(MAX_STATE_BYTES + 1)
        .read_to_string(&mut text)?;
    if n as u64 > MAX_STATE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_STATE_BYTES} bytes"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("sub"));
        assert!(store.load().unwrap().instances.is_empty());
        let state = State {
            version: STATE_VERSION,
            scheduler: SchedState {
                policy: Some("fixed-share".into()),
                timeslice_us: Some(4000),
            },
            instances: vec![DefinedInstance {
                uuid: Uuid::from_u128(7),
                type_name: "vgpu-1q".into(),
                socket: "/run/vgpud/a.sock".into(),
                auto: true,
            }],
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        // A temporary file left by a killed writer is ignored, then cleaned up.
        fs::write(dir.path().join("sub/.state.json.tmp.1"), b"{garbage").unwrap();
        assert_eq!(store.load().unwrap(), state);
        store.save(&state).unwrap();
        assert!(!dir.path().join("sub/.state.json.tmp.1").exists());
        for bad in [&b"{"[..], b"", b"[]", br#"{"version":9}"#, b"\xff"] {
            fs::write(store.path(), bad).unwrap();
            let e = store.load().unwrap_err().to_string();
            assert!(e.contains(&store.path().display().to_string()), "{e}");
        }
    }
}
