//! The slot registry: names, ids, owners, limits and cgroup paths of the slots, kept in a small
//! JSON file under the state directory so that any CLI or daemon process, or a restarted one,
//! finds them. Writers hold an exclusive `flock` and replace the file atomically (write to a
//! temporary file, fsync, rename), so two writers never corrupt it and a crash leaves either
//! the old or the new file.
use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    },
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::{
    cgroup::SlotCgroups,
    error::{Error, IoContext, Result},
    limits::Limits,
    paths::{BOOT_ID, Paths},
};

const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub name: String,
    /// Index in the kernel's per-slot arrays.
    pub id: u32,
    /// Distinguishes this use of `id` from earlier ones (not the programs' generation).
    #[serde(alias = "generation")]
    pub epoch: u64,
    pub owner_uid: u32,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub cgroups: SlotCgroups,
    #[serde(default)]
    pub limits: Limits,
    /// Suspended (`Tracker::suspend`) and not resumed since.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// A running process was adopted into it (`tracker adopt`): the kernel does not move the
    /// charges of its earlier pages into the slot's cgroup, so the slot's memory comes from
    /// its processes' resident pages (see `memory_link::source`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryData {
    pub version: u32,
    /// The boot the records belong to: pins do not survive a reboot, so neither do slots.
    pub boot_id: String,
    #[serde(alias = "next_generation")]
    pub next_epoch: u64,
    pub slots: Vec<SlotRecord>,
}

impl RegistryData {
    pub fn find(&self, name: &str) -> Option<&SlotRecord> {
        self.slots.iter().find(|s| s.name == name)
    }

    pub fn get(&self, name: &str) -> Result<&SlotRecord> {
        self.find(name).ok_or_else(|| Error::UnknownSlot(name.to_owned()))
    }

    pub fn get_mut(&mut self, name: &str) -> Result<&mut SlotRecord> {
        self.slots
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::UnknownSlot(name.to_owned()))
    }

    /// The smallest free slot id in `1..max_slots` (0 means "no slot" in the kernel).
    /// The first id no slot has and `in_use` (what the kernel still counts under an id: a
    /// released slot's exited tasks not yet freed) does not refuse.
    pub fn free_id(&self, max_slots: u32, in_use: impl Fn(u32) -> bool) -> Result<u32> {
        (1..max_slots)
            .find(|id| !self.slots.iter().any(|s| s.id == *id) && !in_use(*id))
            .ok_or(Error::SlotsFull(max_slots.saturating_sub(1)))
    }
}

/// An advisory lock on the instance's lock file, released on drop.
pub struct StateLock {
    file: File,
}

impl StateLock {
    pub fn exclusive(paths: &Paths) -> Result<Self> {
        Self::take(paths, libc::LOCK_EX)
    }

    /// The lock adoptions take (not the registry's: an adoption reads the registry).
    pub fn adoption(paths: &Paths) -> Result<Self> {
        Self::take_file(paths, &paths.adopt_lock_file(), libc::LOCK_EX)
    }

    /// Held by the one daemon of the instance, for as long as it runs.
    pub fn daemon(paths: &Paths) -> Result<Self> {
        Self::take_file(paths, &paths.daemon_lock_file(), libc::LOCK_EX | libc::LOCK_NB).map_err(
            |e| match e {
                Error::Io { cause, .. } if cause.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                    Error::Daemon(format!(
                        "another daemon runs for instance {}: stop it first",
                        paths.instance()
                    ))
                }
                e => e,
            },
        )
    }

    /// Held by the one reader of the kernel's event stream (the daemon, or `tracker watch`).
    pub fn events(paths: &Paths) -> Result<Self> {
        Self::take_file(paths, &paths.events_lock_file(), libc::LOCK_EX | libc::LOCK_NB).map_err(
            |e| match e {
                Error::Io { cause, .. } if cause.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                    Error::EventsBusy
                }
                e => e,
            },
        )
    }

    /// Held shared for the whole of a kill (see tracker/doom.rs).
    pub fn doom_user(paths: &Paths) -> Result<Self> {
        Self::take_file(paths, &paths.doom_users_lock_file(), libc::LOCK_SH)
    }

    /// Held while the doom program is attached or detached (see tracker/doom.rs).
    pub fn doom_attach(paths: &Paths) -> Result<Self> {
        Self::take_file(paths, &paths.doom_attach_lock_file(), libc::LOCK_EX)
    }

    /// Turn a shared lock into the exclusive one if no one else holds it, without waiting.
    /// On failure the shared lock may be lost too (flock converts by unlocking first): only
    /// for a lock about to be released.
    pub fn try_exclusive(&self) -> bool {
        // SAFETY: flock on a file descriptor we own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    /// Release the lock now, before this value is dropped.
    pub fn release(&self) {
        // SAFETY: flock on a file descriptor we own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }

    fn take(paths: &Paths, how: libc::c_int) -> Result<Self> {
        Self::take_file(paths, &paths.lock_file(), how)
    }

    fn take_file(paths: &Paths, path: &Path, how: libc::c_int) -> Result<Self> {
        ensure_state_dir(paths)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .ctx(|| format!("opening {}", path.display()))?;
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
                return Ok(Self { file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(format!("locking {}", path.display()), e));
            }
        }
    }
}

pub fn ensure_state_dir(paths: &Paths) -> Result<()> {
    let dir = paths.state_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .ctx(|| format!("creating {}", dir.display()))
}

/// The boot the records belong to; it cannot change while this process runs.
fn boot_id() -> String {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        fs::read_to_string(BOOT_ID).map(|s| s.trim().to_owned()).unwrap_or_default()
    })
    .clone()
}

fn read_unlocked(paths: &Paths) -> Result<RegistryData> {
    let path = paths.registry_file();
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(fresh()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let data: RegistryData = serde_json::from_str(&text)
        .map_err(|e| Error::Registry { path: path.clone(), detail: e.to_string() })?;
    if data.version != FORMAT_VERSION {
        return Err(Error::Registry {
            path,
            detail: format!("format version {} is not {FORMAT_VERSION}", data.version),
        });
    }
    if data.boot_id != boot_id() {
        return Ok(fresh());
    }
    Ok(data)
}

fn fresh() -> RegistryData {
    RegistryData { version: FORMAT_VERSION, boot_id: boot_id(), next_epoch: 1, slots: vec![] }
}

fn write_unlocked(paths: &Paths, data: &RegistryData) -> Result<()> {
    let path = paths.registry_file();
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(data)
        .map_err(|e| Error::Registry { path: path.clone(), detail: e.to_string() })?;
    write_synced(&tmp, &text)?;
    fs::rename(&tmp, &path).ctx(|| format!("replacing {}", path.display()))
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .ctx(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).ctx(|| format!("writing {}", path.display()))?;
    f.sync_all().ctx(|| format!("syncing {}", path.display()))
}

/// A consistent snapshot of the registry. No lock is needed: writers replace the file with a
/// rename, so a reader sees the old file or the new one, whole.
pub fn read(paths: &Paths) -> Result<RegistryData> {
    read_unlocked(paths)
}

/// Read, change and write the registry under the exclusive lock. Nothing is written if `f`
/// fails.
pub fn update<T>(paths: &Paths, f: impl FnOnce(&mut RegistryData) -> Result<T>) -> Result<T> {
    let _lock = StateLock::exclusive(paths)?;
    update_locked(paths, f)
}

/// As `update`, for a caller that holds the exclusive lock already.
/// Record whether slot `name` is suspended (a suspend, a resume, or a kill that thawed it).
pub fn set_suspended(paths: &Paths, name: &str, on: bool) -> Result<()> {
    update(paths, |reg| {
        reg.get_mut(name)?.suspended = on;
        Ok(())
    })
}

pub fn update_locked<T>(
    paths: &Paths,
    f: impl FnOnce(&mut RegistryData) -> Result<T>,
) -> Result<T> {
    let mut data = read_unlocked(paths)?;
    let out = f(&mut data)?;
    write_unlocked(paths, &data)?;
    Ok(out)
}

/// As `read`, for a caller that holds the lock already.
pub fn read_locked(paths: &Paths) -> Result<RegistryData> {
    read_unlocked(paths)
}

/// Forget every slot (the loader does this when it creates the maps afresh).
pub fn reset_locked(paths: &Paths) -> Result<()> {
    write_unlocked(paths, &fresh())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, id: u32) -> SlotRecord {
        SlotRecord { name: name.into(), id, ..Default::default() }
    }

    #[test]
    fn free_id_skips_zero_and_used_ids() {
        let mut d = fresh();
        let none = |_| false;
        assert_eq!(d.free_id(4, none).unwrap(), 1);
        // An id whose exited tasks are not freed yet is passed over.
        assert_eq!(d.free_id(4, |id| id == 1).unwrap(), 2);
        d.slots = vec![record("a", 1), record("b", 3)];
        assert_eq!(d.free_id(4, none).unwrap(), 2);
        assert!(matches!(d.free_id(4, |id| id == 2), Err(Error::SlotsFull(3))));
        d.slots.push(record("c", 2));
        assert!(matches!(d.free_id(4, none), Err(Error::SlotsFull(3))));
    }

    #[test]
    fn records_round_trip_through_json() {
        let mut d = fresh();
        d.slots.push(record("1234.0", 7));
        let text = serde_json::to_string(&d).unwrap();
        let back: RegistryData = serde_json::from_str(&text).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.get("1234.0").unwrap().id, 7);
        assert!(matches!(back.get("nope"), Err(Error::UnknownSlot(_))));
    }

    #[test]
    fn a_state_file_written_before_epochs_were_named_still_reads() {
        let old = r#"{"version":1,"boot_id":"b","next_generation":5,"slots":[
            {"name":"s","id":2,"generation":4,"owner_uid":0,"created_unix_ms":0}]}"#;
        let d: RegistryData = serde_json::from_str(old).unwrap();
        assert_eq!((d.next_epoch, d.get("s").unwrap().epoch), (5, 4));
    }
}
