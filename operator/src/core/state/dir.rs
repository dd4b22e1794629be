//! The state in a data directory, for running without Kubernetes:
//!
//! ```text
//! DIR/key-managers/NAMESPACE/NAME/ITEM/FIELD      material, one directory per item
//! DIR/key-managers/NAMESPACE/NAME/backups/keystore-MILLIS
//! DIR/key-managers/NAMESPACE/NAME/drives.json     the drive history
//! DIR/key-managers/NAMESPACE/NAME/release-drives  drives released to other namespaces
//! DIR/key-managers/NAMESPACE/NAME/status.json     the KeyManager's status
//! DIR/key-managers/NAMESPACE/NAME/shadows/SHADOW.json  a Shadow's credential record
//! ```
//!
//! Every file is written whole to a temporary name, fsynced, renamed into place, and its
//! directory fsynced, so a crash leaves the old file or the new one, never half of one.
//! An item is made in a temporary directory renamed into place: a rename onto an existing
//! item fails, so an item once made is never overwritten, even by a racing writer. Files
//! are mode 0600 and directories 0700: they hold keys. One process writes a data
//! directory at a time; the version checks catch a change made behind its back between
//! its reads and its writes, not two writers racing.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use shadowkeep_api::crd::KeyManagerStatus;
use shadowkeep_api::drive_history::{DriveHistory, HISTORY_FILE};
use shadowkeep_server::durable::{read_optional, sync_dir, temporary, write_atomically, write_new};

use super::{Fields, Item, Owner, State, StateError, StoredHistory, StoredShadow};

/// Name of the file holding the drives released to other namespaces.
pub const RELEASE_FILE: &str = "release-drives";

/// The state kept in a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

/// Creates `dir` and any missing parent (mode 0700), fsyncing the parent of each one made
/// so that the new entries survive a crash.
fn make_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_dirs(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Creates `dir/name` with `bytes` unless it exists; whether it was created.
fn create_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<bool> {
    let tmp = temporary(dir, name);
    write_new(&tmp, bytes)?;
    // A hard link, unlike a rename, fails when the target exists.
    let linked = fs::hard_link(&tmp, dir.join(name));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `name` can be a path component here: a Kubernetes name (lowercase letters,
/// digits, `-` and `.`, starting with a letter or digit), so that no name reaches
/// outside its directory.
fn valid_component(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn version_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl DataDir {
    /// The state under `root` (made when first written).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory of `owner`'s state.
    pub fn owner_dir(&self, owner: &Owner) -> Result<PathBuf, StateError> {
        for part in [&owner.namespace, &owner.name] {
            if !valid_component(part) {
                return Err(StateError::Invalid(format!(
                    "{owner}: {part:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.')"
                )));
            }
        }
        Ok(self
            .root
            .join("key-managers")
            .join(&owner.namespace)
            .join(&owner.name))
    }

    /// The file holding `field` of `item` of `owner`, for a process that reads it where it
    /// is kept (a local key server reads its KEK and the canonical keystore here).
    pub fn field_path(
        &self,
        owner: &Owner,
        item: Item,
        field: &str,
    ) -> Result<PathBuf, StateError> {
        if !item.fields().contains(&field) {
            return Err(StateError::Invalid(format!(
                "{} holds no field {field:?}",
                item.name()
            )));
        }
        Ok(self.owner_dir(owner)?.join(item.name()).join(field))
    }

    /// Every KeyManager with state here, in order.
    pub fn owners(&self) -> Result<Vec<Owner>, StateError> {
        let listed = |dir: &Path| -> Result<Vec<String>, StateError> {
            let entries = match fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(StateError::store(format!("list {}", dir.display()))(e)),
            };
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(StateError::store(format!("list {}", dir.display())))?;
                if let Some(name) = entry.file_name().to_str()
                    && valid_component(name)
                    && entry.path().is_dir()
                {
                    names.push(name.to_owned());
                }
            }
            names.sort();
            Ok(names)
        };
        let root = self.root.join("key-managers");
        let mut owners = Vec::new();
        for namespace in listed(&root)? {
            for name in listed(&root.join(&namespace))? {
                owners.push(Owner::new(namespace.clone(), name));
            }
        }
        Ok(owners)
    }

    fn read_status_now(&self, owner: &Owner) -> Result<Option<KeyManagerStatus>, StateError> {
        let path = self.owner_dir(owner)?.join(STATUS_FILE);
        let Some(bytes) =
            read_optional(&path).map_err(StateError::store(format!("read {}", path.display())))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                what: path.display().to_string(),
                reason: e.to_string(),
            })
    }

    fn write_status_now(&self, owner: &Owner, bytes: &[u8]) -> Result<(), StateError> {
        let dir = self.owner_dir(owner)?;
        let action = format!("write {}", dir.join(STATUS_FILE).display());
        make_dirs(&dir).map_err(StateError::store(&action))?;
        write_atomically(&dir, STATUS_FILE, bytes).map_err(StateError::store(action))
    }

    fn read_item(&self, owner: &Owner, item: Item) -> Result<Option<Fields>, StateError> {
        let dir = self.owner_dir(owner)?.join(item.name());
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut fields = Vec::new();
        for field in item.fields() {
            let path = dir.join(field);
            let bytes = read_optional(&path)
                .map_err(StateError::store(format!("read {}", path.display())))?
                .ok_or_else(|| StateError::Corrupt {
                    what: dir.display().to_string(),
                    reason: format!("{field} is missing"),
                })?;
            fields.push((*field, bytes));
        }
        Ok(Some(Fields::of(fields)))
    }

    fn create_item(
        &self,
        owner: &Owner,
        item: Item,
        fields: &Fields,
    ) -> Result<Fields, StateError> {
        if let Some(existing) = self.read_item(owner, item)? {
            return Ok(existing);
        }
        let parent = self.owner_dir(owner)?;
        let target = parent.join(item.name());
        let action = format!("create {}", target.display());
        make_dirs(&parent).map_err(StateError::store(action.clone()))?;
        let tmp = temporary(&parent, item.name());
        let written = (|| {
            fs::DirBuilder::new().mode(0o700).create(&tmp)?;
            for field in item.fields() {
                write_new(&tmp.join(field), fields.get(field))?;
            }
            sync_dir(&tmp)?;
            fs::rename(&tmp, &target)
        })();
        match written {
            Ok(()) => {
                sync_dir(&parent).map_err(StateError::store(action))?;
                Ok(fields.clone())
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                // Made by another since the read: that one stands.
                match self.read_item(owner, item)? {
                    Some(existing) => Ok(existing),
                    None => Err(StateError::store(action)(e)),
                }
            }
        }
    }

    fn replace(
        &self,
        owner: &Owner,
        old: &[u8],
        new: &[u8],
        retention: usize,
    ) -> Result<(), StateError> {
        let owner_dir = self.owner_dir(owner)?;
        let dir = owner_dir.join(Item::Keystore.name());
        let path = dir.join("keystore");
        let action = format!("replace {}", path.display());
        let current = read_optional(&path).map_err(StateError::store(action.clone()))?;
        if current.as_deref() != Some(old) {
            return Err(StateError::Conflict { action });
        }
        let backups = owner_dir.join("backups");
        make_dirs(&backups).map_err(StateError::store(format!("create {}", backups.display())))?;
        let stamp = jiff::Timestamp::now().as_millisecond();
        // Names of equal width sort by age; a second backup in the same millisecond
        // gets a suffix, which sorts after the first.
        let mut suffix = 0u32;
        loop {
            let name = if suffix == 0 {
                format!("keystore-{stamp:013}")
            } else {
                format!("keystore-{stamp:013}-{suffix:04}")
            };
            let created = create_atomically(&backups, &name, old).map_err(StateError::store(
                format!("write a backup in {}", backups.display()),
            ))?;
            if created {
                break;
            }
            suffix += 1;
        }
        write_atomically(&dir, "keystore", new).map_err(StateError::store(action))?;
        let names = Self::backup_names(&backups)?;
        let excess = names.len().saturating_sub(retention.max(1));
        for name in names.into_iter().take(excess) {
            let path = backups.join(&name);
            fs::remove_file(&path)
                .map_err(StateError::store(format!("prune {}", path.display())))?;
        }
        sync_dir(&backups).map_err(StateError::store(format!("sync {}", backups.display())))
    }

    fn backup_names(backups: &Path) -> Result<Vec<String>, StateError> {
        let entries = match fs::read_dir(backups) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::store(format!("list {}", backups.display()))(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(StateError::store(format!("list {}", backups.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("keystore-") {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn read_backups(&self, owner: &Owner) -> Result<Vec<Vec<u8>>, StateError> {
        let backups = self.owner_dir(owner)?.join("backups");
        Self::backup_names(&backups)?
            .into_iter()
            .map(|name| {
                let path = backups.join(name);
                fs::read(&path).map_err(StateError::store(format!("read {}", path.display())))
            })
            .collect()
    }

    fn history(&self, owner: &Owner) -> Result<Option<StoredHistory>, StateError> {
        let dir = self.owner_dir(owner)?;
        let path = dir.join(HISTORY_FILE);
        let Some(bytes) =
            read_optional(&path).map_err(StateError::store(format!("read {}", path.display())))?
        else {
            return Ok(None);
        };
        let corrupt = |reason: String| StateError::Corrupt {
            what: path.display().to_string(),
            reason,
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let history = DriveHistory::from_json(text).map_err(|e| corrupt(e.to_string()))?;
        let release = dir.join(RELEASE_FILE);
        let released = read_optional(&release)
            .map_err(StateError::store(format!("read {}", release.display())))?
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned());
        Ok(Some(StoredHistory {
            history,
            released,
            version: version_of(&bytes),
        }))
    }

    fn write_history_now(
        &self,
        owner: &Owner,
        history: &DriveHistory,
        version: Option<&str>,
    ) -> Result<(), StateError> {
        let dir = self.owner_dir(owner)?;
        let path = dir.join(HISTORY_FILE);
        let action = format!("write {}", path.display());
        write_versioned(&dir, HISTORY_FILE, history.to_json().as_bytes(), version)
            .map_err(|e| e.into_state(action))
    }

    fn shadow_dir(&self, owner: &Owner) -> Result<PathBuf, StateError> {
        Ok(self.owner_dir(owner)?.join(SHADOWS_DIR))
    }

    fn shadow_file(shadow: &str) -> Result<String, StateError> {
        if valid_component(shadow) {
            Ok(format!("{shadow}.json"))
        } else {
            Err(StateError::Invalid(format!(
                "Shadow {shadow:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.')"
            )))
        }
    }

    fn read_shadow_now(
        &self,
        owner: &Owner,
        shadow: &str,
    ) -> Result<Option<StoredShadow>, StateError> {
        let path = self.shadow_dir(owner)?.join(Self::shadow_file(shadow)?);
        let bytes =
            read_optional(&path).map_err(StateError::store(format!("read {}", path.display())))?;
        Ok(bytes.map(|bytes| StoredShadow {
            shadow: shadow.to_owned(),
            version: version_of(&bytes),
            bytes,
        }))
    }

    fn shadows_now(&self, owner: &Owner) -> Result<Vec<StoredShadow>, StateError> {
        let dir = self.shadow_dir(owner)?;
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::store(format!("read {}", dir.display()))(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(StateError::store(format!("read {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(shadow) = name.strip_suffix(".json").filter(|s| valid_component(s)) {
                names.push(shadow.to_owned());
            }
        }
        names.sort();
        let mut out = Vec::new();
        for shadow in names {
            out.extend(self.read_shadow_now(owner, &shadow)?);
        }
        Ok(out)
    }

    fn write_shadow_now(
        &self,
        owner: &Owner,
        shadow: &str,
        bytes: &[u8],
        version: Option<&str>,
    ) -> Result<(), StateError> {
        let dir = self.shadow_dir(owner)?;
        let file = Self::shadow_file(shadow)?;
        let action = format!("write {}", dir.join(&file).display());
        write_versioned(&dir, &file, bytes, version).map_err(|e| e.into_state(action))
    }
}

/// Directory of the Shadows' credential records under a KeyManager's.
pub const SHADOWS_DIR: &str = "shadows";

/// Why a versioned write did not happen.
enum Unwritten {
    Changed,
    Failed(io::Error),
}

impl Unwritten {
    fn into_state(self, action: String) -> StateError {
        match self {
            Self::Changed => StateError::Conflict { action },
            Self::Failed(e) => StateError::store(action)(e),
        }
    }
}

/// Writes `dir/name`: created when `version` is `None` (failing if it exists), replaced
/// when its bytes are still those of `version`.
fn write_versioned(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    version: Option<&str>,
) -> Result<(), Unwritten> {
    match version {
        None => {
            make_dirs(dir).map_err(Unwritten::Failed)?;
            if create_atomically(dir, name, bytes).map_err(Unwritten::Failed)? {
                Ok(())
            } else {
                Err(Unwritten::Changed)
            }
        }
        Some(version) => {
            let current = read_optional(&dir.join(name)).map_err(Unwritten::Failed)?;
            if current.as_deref().map(version_of).as_deref() != Some(version) {
                return Err(Unwritten::Changed);
            }
            write_atomically(dir, name, bytes).map_err(Unwritten::Failed)
        }
    }
}

/// Runs file-system work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(StateError::store("finish a file-system task"))?
}

/// Name of the file holding the KeyManager's status.
pub const STATUS_FILE: &str = "status.json";

impl State for DataDir {
    async fn read_status(&self, owner: &Owner) -> Result<Option<KeyManagerStatus>, StateError> {
        let (dir, owner) = (self.clone(), owner.clone());
        blocking(move || dir.read_status_now(&owner)).await
    }

    async fn write_status(
        &self,
        owner: &Owner,
        status: &KeyManagerStatus,
    ) -> Result<(), StateError> {
        let (dir, owner) = (self.clone(), owner.clone());
        let bytes = serde_json::to_vec_pretty(status)
            .map_err(StateError::store(format!("write the status of {owner}")))?;
        blocking(move || dir.write_status_now(&owner, &bytes)).await
    }

    async fn read(&self, owner: &Owner, item: Item) -> Result<Option<Fields>, StateError> {
        let (dir, owner) = (self.clone(), owner.clone());
        blocking(move || dir.read_item(&owner, item)).await
    }

    async fn create(
        &self,
        owner: &Owner,
        item: Item,
        fields: Fields,
    ) -> Result<Fields, StateError> {
        let (dir, owner) = (self.clone(), owner.clone());
        blocking(move || dir.create_item(&owner, item, &fields)).await
    }

    async fn replace_keystore(
        &self,
        owner: &Owner,
        old: &[u8],
        new: &[u8],
        retention: usize,
    ) -> Result<(), StateError> {
        let (dir, owner) = (self.clone(), owner.clone());
        let (old, new) = (old.to_vec(), new.to_vec());
        blocking(move || dir.replace(&owner, &old, &new, retention)).await
    }

    async fn backups(&self, owner: &Owner) -> Result<Vec<Vec<u8>>, StateError> {
        let (dir, owner) = (self.clone(), owner.clone());
        blocking(move || dir.read_backups(&owner)).await
    }

    async fn read_history(&self, owner: &Owner) -> Result<Option<StoredHistory>, StateError> {
        let (dir, owner) = (self.clone(), owner.clone());
        blocking(move || dir.history(&owner)).await
    }

    fn history_location(&self, owner: &Owner) -> String {
        match self.owner_dir(owner) {
            Ok(dir) => format!("the file {}", dir.join(RELEASE_FILE).display()),
            Err(e) => e.to_string(),
        }
    }

    async fn write_history(
        &self,
        owner: &Owner,
        history: &DriveHistory,
        version: Option<&str>,
    ) -> Result<(), StateError> {
        let (dir, owner) = (self.clone(), owner.clone());
        let (history, version) = (history.clone(), version.map(str::to_owned));
        blocking(move || dir.write_history_now(&owner, &history, version.as_deref())).await
    }

    async fn read_shadow(
        &self,
        owner: &Owner,
        shadow: &str,
    ) -> Result<Option<StoredShadow>, StateError> {
        let (dir, owner, shadow) = (self.clone(), owner.clone(), shadow.to_owned());
        blocking(move || dir.read_shadow_now(&owner, &shadow)).await
    }

    async fn shadows(&self, owner: &Owner) -> Result<Vec<StoredShadow>, StateError> {
        let (dir, owner) = (self.clone(), owner.clone());
        blocking(move || dir.shadows_now(&owner)).await
    }

    async fn write_shadow(
        &self,
        owner: &Owner,
        shadow: &str,
        bytes: &[u8],
        version: Option<&str>,
    ) -> Result<(), StateError> {
        let (dir, owner, shadow) = (self.clone(), owner.clone(), shadow.to_owned());
        let (bytes, version) = (bytes.to_vec(), version.map(str::to_owned));
        blocking(move || dir.write_shadow_now(&owner, &shadow, &bytes, version.as_deref())).await
    }
}
