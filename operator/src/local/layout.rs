//! Where `shadowkeep up` keeps things in its data directory:
//!
//! ```text
//! DIR/key-managers/...                   the control core's state (core::state::dir)
//! DIR/servers/NAMESPACE/NAME/            one key server: server.yaml, its certificate, store/
//! DIR/shadow-verifiers/NAMESPACE/KM.json  the verifiers a KeyManager's replicas accept
//! DIR/shadow-status/NAMESPACE/NAME.json  a Shadow's status, as the operator would write it
//! DIR/clients/NAMESPACE/KEYMANAGER/      client certificates, one pair per identity
//! DIR/ca.pem                             every KeyManager's CA, for clients to trust
//! DIR/addresses.json                     the loopback address of each server
//! DIR/estate.json                        what runs where, once everything listens
//! DIR/up.lock                            held while `up` runs
//! ```

use std::path::{Path, PathBuf};

use shadowkeep_api::crd::ShadowStatus;

use crate::core::state::dir::DataDir;

/// The data directory of `shadowkeep up`.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The control core's state.
    pub fn state(&self) -> DataDir {
        DataDir::new(&self.root)
    }

    /// The directory of server `name` of `namespace`.
    pub fn server_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join("servers").join(namespace).join(name)
    }

    /// The file the replicas of KeyManager `key_manager` re-read for the shadow verifiers
    /// they accept.
    pub fn verifiers_file(&self, namespace: &str, key_manager: &str) -> PathBuf {
        self.root
            .join("shadow-verifiers")
            .join(namespace)
            .join(format!("{key_manager}.json"))
    }

    /// The status `up` keeps of Shadow `shadow` of `namespace`.
    pub fn shadow_status_file(&self, namespace: &str, shadow: &str) -> PathBuf {
        self.root
            .join("shadow-status")
            .join(namespace)
            .join(format!("{shadow}.json"))
    }

    /// The status `up` last wrote for Shadow `shadow` of `namespace`, if any.
    pub fn shadow_status(&self, namespace: &str, shadow: &str) -> Option<ShadowStatus> {
        let bytes = std::fs::read(self.shadow_status_file(namespace, shadow)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The client certificates of KeyManager `key_manager` of `namespace`.
    pub fn clients_dir(&self, namespace: &str, key_manager: &str) -> PathBuf {
        self.root.join("clients").join(namespace).join(key_manager)
    }

    /// Every KeyManager's CA certificate, concatenated.
    pub fn ca_bundle(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// What runs where.
    pub fn estate_file(&self) -> PathBuf {
        self.root.join("estate.json")
    }

    /// The loopback address of each server.
    pub fn addresses_file(&self) -> PathBuf {
        self.root.join("addresses.json")
    }

    /// Held while `up` runs, so that two cannot share the directory.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("up.lock")
    }

    /// Takes the directory's lock (made when missing), held for as long as the file is
    /// open: one process writes a data directory at a time, `up` or `restore`.
    pub fn lock(&self) -> Result<std::fs::File, String> {
        use std::os::unix::fs::DirBuilderExt as _;
        let root = self.root();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| format!("failed to create {}: {e}", root.display()))?;
        let path = self.lock_file();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("failed to open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(format!(
                "another `shadowkeep up` runs with {} (or a restore into it); stop it first",
                root.display()
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(format!("failed to lock {}: {e}", path.display()))
            }
        }
    }
}

/// Writes `dir/name` (made, mode 0700, when missing) unless it already holds `bytes`, whole
/// and fsynced; its path.
pub fn write_if_changed(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt as _;
    let path = dir.join(name);
    if std::fs::read(&path).ok().as_deref() != Some(bytes) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
        shadowkeep_server::durable::write_atomically(dir, name, bytes)
            .map_err(|e| format!("failed to write {}: {e}", path.display()))?;
    }
    Ok(path)
}
