//! Backup targets under `up`: an S3 target works as in a cluster, its credentials read
//! from files laid out like a Secret volume (`--secrets DIR`: `DIR/NAMESPACE/NAME/KEY`);
//! a `secret` target has no cluster to write to, and says so in the status.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use shadowkeep_api::crd::BackupTarget;
use zeroize::Zeroizing;

use crate::core::backup::s3::{self, Credentials};
use crate::core::backup::{Target, Targets};
use crate::core::state::Owner;

/// The most a credential file may hold.
const FILE_LIMIT: u64 = 64 * 1024;

/// The targets of the KeyManagers `up` runs.
#[derive(Clone, Debug)]
pub struct LocalTargets {
    /// Where Secrets are, as `NAMESPACE/NAME/KEY` files; `None` without `--secrets`.
    pub secrets: Option<PathBuf>,
}

/// The value of `key` of Secret `name` in `namespace` under `dir`, or `None` when the file
/// does not exist.
pub(super) fn read_key(
    dir: &Path,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    // Names come from validated manifests, but a key is free text: no path may leave DIR.
    let plain =
        |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0');
    if ![namespace, name, key].iter().all(|s| plain(s)) {
        return Err(format!(
            "Secret {namespace}/{name} key {key:?} is not a file name"
        ));
    }
    let path = dir.join(namespace).join(name).join(key);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("failed to read {}: {e}", path.display())),
    };
    let mut value = Zeroizing::new(Vec::new());
    file.take(FILE_LIMIT + 1)
        .read_to_end(&mut value)
        .map_err(|e| format!("failed to read {}: {e}", path.display()))?;
    if value.len() as u64 > FILE_LIMIT {
        return Err(format!(
            "{} is larger than {FILE_LIMIT} bytes",
            path.display()
        ));
    }
    Ok(Some(value))
}

impl Targets for LocalTargets {
    fn open<'a>(
        &'a self,
        owner: &'a Owner,
        target: &'a BackupTarget,
    ) -> BoxFuture<'a, Result<Box<dyn Target>, String>> {
        Box::pin(async move {
            let Some(spec) = &target.s3 else {
                return Err(
                    "a secret target is not available under `up`: there is no cluster to keep the Secrets in; use an s3 target"
                        .to_owned(),
                );
            };
            let keys = &spec.credentials_secret_ref;
            let Some(dir) = &self.secrets else {
                return Err(format!(
                    "its credentials are in Secret {}/{}, and `up` reads Secrets only from files: run `up --secrets DIR` with DIR/{}/{}/{} and DIR/{}/{}/{}",
                    owner.namespace,
                    keys.name,
                    owner.namespace,
                    keys.name,
                    keys.access_key_id_key(),
                    owner.namespace,
                    keys.name,
                    keys.secret_access_key_key(),
                ));
            };
            let what = format!(
                "Secret {}/{} ({})",
                owner.namespace,
                keys.name,
                dir.join(&owner.namespace).join(&keys.name).display()
            );
            let id = read_key(dir, &owner.namespace, &keys.name, keys.access_key_id_key())?;
            let key = read_key(
                dir,
                &owner.namespace,
                &keys.name,
                keys.secret_access_key_key(),
            )?;
            let credentials = Credentials::of(
                id.as_ref().map(|v| v.as_slice()),
                key.as_ref().map(|v| v.as_slice()),
                spec,
                &what,
            )?;
            Ok(Box::new(s3::open(owner, spec, &credentials)?) as Box<dyn Target>)
        })
    }
}
