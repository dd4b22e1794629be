//! Shadows under `shadowkeep up`: each declared Shadow runs as a local key server with the
//! configuration the operator would mount (`build::shadow::shadow_config`), at its own
//! loopback address, with a certificate from its KeyManager's CA naming it, and the
//! licence and password the control core issued (`core::shadow`).
//!
//! The rotation is the core's: at every tick each KeyManager's replicas are asked what
//! they accept and whom they registered, each Shadow's rotation step runs against the data
//! directory, the replicas' verifiers file is rewritten from the records, and a handed-over
//! pair is written where the shadow reads it. No server restarts for any of it: replicas
//! re-read their verifiers file, shadows their licence and password files. `spec.state`
//! is pushed to the shadow when it changes, and the annotations
//! `shadowkeep.io/sync-requested-at` and `shadowkeep.io/rotate-password-requested-at`,
//! edited in the manifest files, ask for a sync and a rotation.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use kube::ResourceExt as _;
use sha2::{Digest as _, Sha256};
use shadowkeep_api::crd::{KeyManager, Shadow, ShadowStatus};
use shadowkeep_api::estate::Estate;
use shadowkeep_api::license::LicenseSigner;
use shadowkeep_api::server_config::restart_digest;

use super::certificates;
use super::layout::{Layout, write_if_changed};
use super::reconcile::{Local, local_key_manager, namespace_of, server_key};
use super::supervise::{Role, ServerSpec};
use crate::build::shadow::{ShadowInputs, shadow_config};
use crate::build::{ADMIN_PORT, Inputs, KMIP_PORT, port};
use crate::core::keystore_sync::ReplicaAddress;
use crate::core::shadow::credentials::{Issued, Record};
use crate::core::shadow::observe;
use crate::core::shadow::rotation::Event;
use crate::core::shadow::supervise;
use crate::core::shadow::tick::{Input, Shell, tick as core_tick};
use crate::core::state::{Item, Owner};

/// The Shadows of the estate with the KeyManager each names, when it is declared.
pub fn shadows_of(estate: &Estate) -> Vec<(&Shadow, Option<&KeyManager>)> {
    estate
        .shadows()
        .iter()
        .map(|s| {
            let km = estate.key_managers().iter().find(|k| {
                namespace_of(*k) == namespace_of(s) && k.name_any() == s.spec.key_manager_ref.name
            });
            (s, km)
        })
        .collect()
}

/// The keys of every Shadow of the estate, for their addresses.
pub fn shadow_keys(estate: &Estate) -> Vec<String> {
    estate
        .shadows()
        .iter()
        .map(|s| server_key(&namespace_of(s), &s.name_any()))
        .collect()
}

/// The names of the Shadows declared for KeyManager `km`.
fn declared_for(estate: &Estate, km: &KeyManager) -> Vec<String> {
    shadows_of(estate)
        .into_iter()
        .filter(|(_, k)| k.is_some_and(|k| std::ptr::eq(k, km)))
        .map(|(s, _)| s.name_any())
        .collect()
}

fn owner_of(km: &KeyManager) -> Owner {
    Owner::new(namespace_of(km), km.name_any())
}

/// Writes the replicas' verifiers file of `km` from the records of its declared Shadows;
/// its path. Written before the replicas start, so they start accepting their shadows.
pub async fn publish_verifiers(
    layout: &Layout,
    estate: &Estate,
    km: &KeyManager,
) -> Result<PathBuf, String> {
    let owner = owner_of(km);
    let accepted = supervise::accepted(&layout.state(), &owner, &declared_for(estate, km))
        .await
        .map_err(|e| e.to_string())?;
    let path = layout.verifiers_file(&owner.namespace, &owner.name);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_if_changed(&dir, &name, &supervise::verifiers_file(&accepted))
}

/// Writes the pair the shadow is to hold where it reads it: the licence, then the
/// password (the shadow takes them only as a matching pair, so the order cannot hurt).
fn hand_over(dir: &Path, current: &Issued) -> Result<(PathBuf, PathBuf), String> {
    let licence = write_if_changed(dir, "license", current.licence.as_bytes())?;
    let password = write_if_changed(dir, "password", current.password.as_bytes())?;
    Ok((licence, password))
}

/// The KeyManager's licence signer and its public key, once its material is made.
async fn signer(layout: &Layout, owner: &Owner) -> Result<(LicenseSigner, String), String> {
    let signer = supervise::signer(&layout.state(), owner)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("KeyManager {owner} has no licence key yet"))?;
    let public = hex::encode(signer.verifier().to_bytes());
    Ok((signer, public))
}

/// Lays out Shadow `shadow` of `km`: its credential record made once, its certificate,
/// licence, password and configuration written; the server to run.
pub async fn prepare(
    local: &Local<'_>,
    shadow: &Shadow,
    km: &KeyManager,
) -> Result<ServerSpec, String> {
    let km = local_key_manager(km);
    let owner = owner_of(&km);
    let name = shadow.name_any();
    let namespace = owner.namespace.clone();
    let state = local.layout.state();
    let (signer, public) = signer(local.layout, &owner).await?;
    let (record, _) = supervise::ensure(
        &state,
        &owner,
        &name,
        &signer,
        &km.spec.server_id,
        Timestamp::now(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let key = server_key(&namespace, &name);
    let ip = local
        .addresses
        .of(&key)
        .ok_or_else(|| format!("Shadow {key} has no address"))?;
    let dir = local.layout.server_dir(&namespace, &name);
    let (authority, _) = certificates::authority(&state, &owner)
        .await
        .map_err(|e| e.to_string())?;
    let files =
        certificates::server(&dir, &authority, &name, ip, &name).map_err(|e| e.to_string())?;
    let inputs = ShadowInputs {
        shadow,
        key_manager: &km,
        default_image: None,
    };
    let mut config = shadow_config(&inputs, &public);
    let (licence, password) = hand_over(&dir, current_pair(&record))?;
    config.kmip.listen = SocketAddr::new(IpAddr::V4(ip), port(KMIP_PORT));
    config.tls.cert.clone_from(&files.cert);
    config.tls.key.clone_from(&files.key);
    config.tls.client_ca.clone_from(&files.ca);
    config.data_dir = dir.join("store");
    config.kek_file = state
        .field_path(&owner, Item::Kek, "kek")
        .map_err(|e| e.to_string())?;
    if let Some(replication) = config.replication.as_mut() {
        replication.listen = SocketAddr::new(IpAddr::V4(ip), port(ADMIN_PORT));
        replication.client_cert.clone_from(&files.cert);
        replication.client_key.clone_from(&files.key);
    }
    if let Some(l) = config.licence.as_mut() {
        l.file = licence;
    }
    if let Some(s) = config.shadow.as_mut() {
        s.password_file = password;
        s.replicas = local.replica_admins(&Inputs::of_key_manager(&km));
    }
    let yaml = config.to_yaml().map_err(|e| e.to_string())?;
    let written = write_if_changed(&dir, "server.yaml", yaml.as_bytes())?;
    // Only what a restart applies restarts it, as for the replicas.
    let mut digest = Sha256::new();
    digest.update(restart_digest(&config).as_bytes());
    digest.update(std::fs::read(&files.cert).map_err(|e| e.to_string())?);
    Ok(ServerSpec {
        key,
        name,
        namespace,
        key_manager: km.name_any(),
        role: Role::Shadow,
        config: written,
        kmip: config.kmip.listen,
        admin: SocketAddr::new(IpAddr::V4(ip), port(ADMIN_PORT)),
        digest: hex::encode(digest.finalize()),
    })
}

/// What preparing every Shadow left.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The shadows to run.
    pub servers: Vec<ServerSpec>,
    /// Shadows left as they are: their KeyManager's reconcile or their own failed.
    pub kept: Vec<String>,
    /// What to tell.
    pub lines: Vec<Line>,
}

/// Prepares every declared Shadow (except those of the KeyManagers in `failed`, which are
/// left as they are), then writes every KeyManager's verifiers file from the records, so
/// that replicas start accepting their shadows. On the `first` run any failure stops
/// `up`.
pub async fn prepare_all(
    local: &Local<'_>,
    failed: &BTreeSet<String>,
    first: bool,
) -> Result<Prepared, String> {
    let mut out = Prepared::default();
    for (shadow, km) in shadows_of(local.estate) {
        let key = server_key(&namespace_of(shadow), &shadow.name_any());
        let Some(km) = km else {
            continue;
        };
        if failed.contains(&owner_of(km).to_string()) {
            out.kept.push(key);
            continue;
        }
        match prepare(local, shadow, km).await {
            Ok(server) => out.servers.push(server),
            Err(why) if !first => {
                out.lines
                    .push(format!("Shadow {key}: {why}; left as it is"));
                out.kept.push(key);
            }
            Err(why) => return Err(format!("Shadow {key}: {why}")),
        }
    }
    for km in local.estate.key_managers() {
        if let Err(e) = publish_verifiers(local.layout, local.estate, km).await {
            if first {
                return Err(e);
            }
            out.lines.push(e);
        }
    }
    Ok(out)
}

/// The pair the shadow holds: the record's current one.
fn current_pair(record: &Record) -> &Issued {
    &record.current
}

/// A line for `up` to print.
pub type Line = String;

fn event_line(key: &str, event: &Event) -> Line {
    format!(
        "Shadow {key}: {}{}: {}",
        if event.warning { "warning: " } else { "" },
        event.reason,
        event.message
    )
}

/// What only `up` does for a Shadow: files in the data directory.
struct Files<'a> {
    layout: &'a Layout,
}

impl Shell for Files<'_> {
    async fn publish_verifiers(&self, owner: &Owner, verifiers: Vec<u8>) -> Result<(), String> {
        let path = self.layout.verifiers_file(&owner.namespace, &owner.name);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        write_if_changed(&dir, &name, &verifiers).map(drop)
    }

    async fn hand_over(&self, owner: &Owner, shadow: &str, pair: &Issued) -> Result<(), String> {
        hand_over(&self.layout.server_dir(&owner.namespace, shadow), pair).map(drop)
    }
}

/// One look after every declared Shadow whose KeyManager runs (the core's
/// [`crate::core::shadow::tick`]); what to print.
pub async fn tick(local: &Local<'_>) -> Vec<Line> {
    let mut lines = Vec::new();
    for km in local.estate.key_managers() {
        if declared_for(local.estate, km).is_empty() {
            continue;
        }
        if let Err(e) = tick_key_manager(local, km, &mut lines).await {
            lines.push(format!("KeyManager {}: shadows: {e}", owner_of(km)));
        }
    }
    lines
}

async fn tick_key_manager(
    local: &Local<'_>,
    km: &KeyManager,
    lines: &mut Vec<Line>,
) -> Result<(), String> {
    let owner = owner_of(km);
    let (signer, _) = signer(local.layout, &owner).await?;
    let Some(connector) = certificates::connector(&local.layout.state(), &owner).await? else {
        return Ok(());
    };
    let replicas: Vec<ReplicaAddress> = local
        .replica_admins(&Inputs::of_key_manager(km))
        .into_iter()
        .map(ReplicaAddress::of)
        .collect();
    let answers = observe::replicas(&replicas, &connector).await;
    let siblings: Vec<&Shadow> = shadows_of(local.estate)
        .into_iter()
        .filter(|(_, k)| k.is_some_and(|k| std::ptr::eq(k, km)))
        .map(|(s, _)| s)
        .collect();
    let shell = Files {
        layout: local.layout,
    };
    for shadow in &siblings {
        let name = shadow.name_any();
        let key = server_key(&owner.namespace, &name);
        let ip = local.addresses.of(&key);
        let previous = local.layout.shadow_status(&owner.namespace, &name);
        let input = Input {
            shadow,
            key_manager: km,
            owner: &owner,
            signer: &signer,
            connector: Some(&connector),
            replicas: &answers,
            address: ip.map(|ip| ReplicaAddress {
                replica: name.clone(),
                address: SocketAddr::new(IpAddr::V4(ip), port(ADMIN_PORT)).to_string(),
                server_name: ip.to_string(),
            }),
            kmip_address: ip.map(|ip| SocketAddr::new(IpAddr::V4(ip), port(KMIP_PORT)).to_string()),
            siblings: &siblings,
            previous: previous.as_ref(),
            now: Timestamp::now(),
        };
        let output = core_tick(&local.layout.state(), &shell, &input)
            .await
            .map_err(|e| e.to_string())?;
        lines.extend(output.events.iter().map(|e| event_line(&key, e)));
        lines.extend(output.problems.iter().map(|p| format!("Shadow {key}: {p}")));
        lines.extend(output.done.iter().map(|d| format!("Shadow {key}: {d}")));
        write_status(
            local.layout,
            &owner,
            &name,
            &output.status,
            previous.as_ref(),
        )?;
    }
    Ok(())
}

fn write_status(
    layout: &Layout,
    owner: &Owner,
    shadow: &str,
    status: &ShadowStatus,
    previous: Option<&ShadowStatus>,
) -> Result<(), String> {
    if previous == Some(status) {
        return Ok(());
    }
    let path = layout.shadow_status_file(&owner.namespace, shadow);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let bytes = serde_json::to_vec_pretty(status).map_err(|e| e.to_string())?;
    write_if_changed(&dir, &format!("{shadow}.json"), &bytes).map(drop)
}
