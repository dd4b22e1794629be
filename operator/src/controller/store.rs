//! What the controllers keep in Secrets and ConfigMaps: material made once, the
//! canonical keystore with its backups, and drive histories.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use shadowkeep_api::drive_history::{DriveHistory, HISTORY_FILE};
use shadowkeep_api::keystore::Keystore;

use super::Error;
use crate::build::{self, Inputs, Material};

/// Label on keystore backups, naming their KeyManager.
pub const BACKUP_LABEL: &str = "shadowkeep.io/keystore-backup-of";

/// The name of a KeyManager's drive-history ConfigMap.
pub fn history_name(key_manager: &str) -> String {
    format!("{key_manager}-drive-history")
}

/// A value of a Secret (empty when missing).
pub fn bytes(secret: &Secret, key: &str) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

/// Reads the Secret `name`, or creates it with `data` if it does not exist. Never
/// overwrites: a KEK or CA, once made, is the only one that opens what it protected.
pub async fn create_once(secrets: &Api<Secret>, desired: Secret) -> Result<Secret, Error> {
    let name = desired.name_any();
    if let Some(existing) = secrets
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("read Secret {name}")))?
    {
        return Ok(existing);
    }
    match secrets.create(&PostParams::default(), &desired).await {
        Ok(created) => Ok(created),
        // Another reconcile made it first: use that one.
        Err(kube::Error::Api(e)) if e.code == 409 => secrets
            .get(&name)
            .await
            .map_err(Error::kube(format!("read Secret {name}"))),
        Err(e) => Err(Error::kube(format!("create Secret {name}"))(e)),
    }
}

/// Makes `keystore` the canonical keystore: in the Secret (after a backup, see
/// [`update_keystore`]) and in `material`.
pub async fn replace_keystore(
    client: &kube::Client,
    inputs: &Inputs<'_>,
    material: &mut Material,
    keystore: &Keystore,
) -> Result<(), Error> {
    let bytes = keystore
        .to_bytes()
        .map_err(|e| Error::Core(crate::core::Error::Keystore(e)))?;
    update_keystore(client, inputs, &material.keystore, &bytes).await?;
    material.keystore = bytes;
    Ok(())
}

/// Replaces the canonical keystore Secret's content, `old` by `new`, after keeping `old`
/// as a backup; prunes backups beyond the KeyManager's retention. The replace carries the
/// Secret's resourceVersion, so a concurrent change makes it fail (and retry) rather than
/// lose keys.
async fn update_keystore(
    client: &kube::Client,
    inputs: &Inputs<'_>,
    old: &[u8],
    new: &[u8],
) -> Result<(), Error> {
    let ns = inputs.namespace();
    let names = inputs.names();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut current = secrets
        .get(&names.keystore)
        .await
        .map_err(Error::kube(format!("read Secret {}", names.keystore)))?;
    if bytes(&current, "keystore") != old {
        return Err(Error::Build(format!(
            "Secret {} changed while keys were generated; retrying",
            names.keystore
        )));
    }
    let stamp = Timestamp::now().as_millisecond();
    let mut backup = build::keystore_secret(
        inputs,
        &Material {
            keystore: old.to_vec(),
            ..Material::default()
        },
    );
    backup.metadata.name = Some(format!("{}-backup-{stamp}", names.keystore));
    backup
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(BACKUP_LABEL.to_owned(), inputs.name());
    backup.immutable = Some(true);
    secrets
        .create(&PostParams::default(), &backup)
        .await
        .map_err(Error::kube("create a keystore backup"))?;
    current.data = Some([("keystore".to_owned(), k8s_openapi::ByteString(new.to_vec()))].into());
    secrets
        .replace(&names.keystore, &PostParams::default(), &current)
        .await
        .map_err(Error::kube(format!("update Secret {}", names.keystore)))?;
    let retention = usize::try_from(inputs.key_manager.spec.backup.retention).unwrap_or(1);
    let mut backups: Vec<String> = secrets
        .list(&ListParams::default().labels(&format!("{BACKUP_LABEL}={}", inputs.name())))
        .await
        .map_err(Error::kube("list keystore backups"))?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    // Names end in a millisecond stamp of equal width: name order is age order.
    backups.sort();
    let excess = backups.len().saturating_sub(retention);
    for name in backups.into_iter().take(excess) {
        secrets
            .delete(&name, &kube::api::DeleteParams::default())
            .await
            .map_err(Error::kube(format!("prune keystore backup {name}")))?;
    }
    Ok(())
}

/// KeyManager `name`'s history and the ConfigMap it was read from (`None`: none yet).
pub async fn read_history(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<(DriveHistory, Option<ConfigMap>), Error> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&history_name(name))
        .await
        .map_err(Error::kube("read the drive history"))?;
    let text = cm
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(HISTORY_FILE))
        .map_or("", String::as_str);
    let history = DriveHistory::from_json(text)
        .map_err(|e| Error::Build(format!("ConfigMap {}: {e}", history_name(name))))?;
    Ok((history, cm))
}
