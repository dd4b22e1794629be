//! The local shell around the control core: a KeyManager's reconcile with the state in the
//! data directory, the KeyManagers as the manifests declare them, the replicas at their
//! loopback addresses — then the servers it needs, as configuration files and certificates.
//!
//! Everything a rule decides (material, carries, key groups, keystore sync, drive moves,
//! the server configuration) is the operator's code: [`crate::core::prepare`] and
//! [`crate::build::server_config`]. What is local is where things are: paths, addresses,
//! and a certificate per server carrying its address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;
use sha2::{Digest as _, Sha256};
use shadowkeep_api::crd::{KeyManager, TlsSource};
use shadowkeep_api::drive_history::DriveHistory;
use shadowkeep_api::estate::Estate;
use shadowkeep_api::server_config::{
    PeerConfig, ServerConfig, TlsFiles, live_digest, restart_digest,
};

use super::addresses::Addresses;
use super::backup::LocalTargets;
use super::certificates;
use super::estate_file::Client;
use super::layout::{Layout, write_if_changed};
use super::supervise::{Role, ServerSpec};
use crate::build::{ADMIN_PORT, Inputs, KMIP_PORT, Material, port, replicas_of, server_config};
use crate::core::drive_moves::{DriveIndex, Origins};
use crate::core::keystore_sync::{ReplicaAddress, Replicas, ask};
use crate::core::prepare::{Declared, Outcome, Prepared, Surroundings, prepare};
use crate::core::state::{Item, Owner, State as _, StateError};
use crate::core::status::{self, Observed};

/// The namespace of an object without one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What one KeyManager's reconcile leaves for `up`.
#[derive(Debug)]
pub struct Reconciled {
    /// Its replicas, ready to run.
    pub servers: Vec<ServerSpec>,
    /// A client certificate for each identity its DriveTables name.
    pub clients: Vec<Client>,
    /// What the core found: risks, the keystore sync.
    pub prepared: Box<Prepared>,
    /// The digest of its drive table (`live_digest`), which its servers must report.
    pub live_digest: String,
}

/// How a KeyManager's reconcile ended.
#[derive(Debug)]
pub enum Ended {
    /// Done.
    Reconciled(Reconciled),
    /// Another writer changed the state under it; try again soon.
    Waiting(String),
}

/// The KeyManager as run locally: there are no Secrets or cert-manager here, so its
/// certificates are always generated from its own CA.
pub fn local_key_manager(km: &KeyManager) -> KeyManager {
    let mut km = km.clone();
    km.spec.tls.source = TlsSource::Generated;
    km
}

/// The namespace of `o`, `default` when it names none.
pub fn namespace_of(o: &impl kube::Resource) -> String {
    o.meta()
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

/// The key of server `name` of `namespace` (in addresses and the supervisor).
pub fn server_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The keys of every replica of the estate, for their addresses.
pub fn replica_keys(estate: &Estate) -> Vec<String> {
    estate
        .key_managers()
        .iter()
        .flat_map(|km| {
            let ns = namespace_of(km);
            replicas_of(&Inputs::of_key_manager(km))
                .into_iter()
                .map(move |p| server_key(&ns, &p.name))
        })
        .collect()
}

/// The world around one reconcile, as `up` sees it.
pub struct Local<'a> {
    /// The data directory.
    pub layout: &'a Layout,
    /// The estate as the manifests declare it.
    pub estate: &'a Estate,
    /// Each server's address.
    pub addresses: &'a Addresses,
    /// The servers that run now.
    pub running: &'a BTreeSet<String>,
    /// The servers that listen now.
    pub ready: &'a BTreeSet<String>,
    /// The backup targets, with credentials from `--secrets`.
    pub targets: &'a LocalTargets,
}

impl Local<'_> {
    /// How to ask the replicas of the KeyManager of `inputs`, presenting `certificate`.
    fn replicas_of(
        &self,
        inputs: &Inputs<'_>,
        certificate: Option<&(Vec<u8>, Vec<u8>, Vec<u8>)>,
    ) -> Replicas {
        let ns = inputs.namespace();
        let mut addresses = Vec::new();
        let mut any_ready = false;
        for peer in replicas_of(inputs) {
            let key = server_key(&ns, &peer.name);
            let Some(ip) = self.addresses.of(&key) else {
                continue;
            };
            any_ready |= self.ready.contains(&key);
            addresses.push(ReplicaAddress {
                replica: peer.name,
                address: SocketAddr::new(IpAddr::V4(ip), port(ADMIN_PORT)).to_string(),
                server_name: ip.to_string(),
            });
        }
        ask(
            addresses,
            any_ready,
            certificate.map(|(crt, key, ca)| (crt.as_slice(), key.as_slice(), ca.as_slice())),
            "the data directory",
        )
    }

    /// The replicas of the KeyManager of `inputs` at their local admin addresses.
    pub fn replica_admins(&self, inputs: &Inputs<'_>) -> Vec<PeerConfig> {
        let ns = inputs.namespace();
        replicas_of(inputs)
            .into_iter()
            .filter_map(|p| {
                let ip = self.addresses.of(&server_key(&ns, &p.name))?;
                Some(PeerConfig {
                    address: SocketAddr::new(IpAddr::V4(ip), port(ADMIN_PORT)).to_string(),
                    name: p.name,
                })
            })
            .collect()
    }

    fn declared_key_manager(&self, owner: &Owner) -> Option<&KeyManager> {
        self.estate
            .key_managers()
            .iter()
            .find(|km| namespace_of(*km) == owner.namespace && km.name_any() == owner.name)
    }
}

impl Origins for Local<'_> {
    async fn key_manager(&self, owner: &Owner) -> Result<Option<KeyManager>, crate::core::Error> {
        Ok(self.declared_key_manager(owner).map(local_key_manager))
    }

    async fn replicas(&self, inputs: &Inputs<'_>) -> Result<Replicas, crate::core::Error> {
        let owner = Owner::new(inputs.namespace(), inputs.name());
        let tls = self.layout.state().read(&owner, Item::Tls).await?.map(|f| {
            (
                f.get("tls.crt").to_vec(),
                f.get("tls.key").to_vec(),
                f.get("ca.crt").to_vec(),
            )
        });
        Ok(self.replicas_of(inputs, tls.as_ref()))
    }
}

/// Which KeyManagers serve each drive, from every history in the data directory.
async fn drive_index(layout: &Layout) -> Result<DriveIndex, StateError> {
    let state = layout.state();
    let mut index = DriveIndex::default();
    for owner in state.owners()? {
        if let Some(stored) = state.read_history(&owner).await? {
            index.apply(&owner.reference(), &stored.history);
        }
    }
    Ok(index)
}

/// Reconciles KeyManager `km` of the estate: the control core's step, then the files its
/// replicas run with.
pub async fn reconcile(local: &Local<'_>, km: &KeyManager, now: &Time) -> Result<Ended, String> {
    let km = local_key_manager(km);
    let namespace = namespace_of(&km);
    let name = km.name_any();
    let owner = Owner::new(&namespace, &name);
    let tables: Vec<_> = local
        .estate
        .drive_tables()
        .iter()
        .filter(|t| namespace_of(*t) == namespace)
        .cloned()
        .collect();
    let groups: Vec<_> = local
        .estate
        .key_groups()
        .iter()
        .filter(|g| namespace_of(*g) == namespace)
        .cloned()
        .collect();
    let shadows: Vec<_> = local
        .estate
        .shadows()
        .iter()
        .filter(|s| namespace_of(*s) == namespace)
        .cloned()
        .collect();
    let state = local.layout.state();
    let stored = state
        .read_history(&owner)
        .await
        .map_err(|e| e.to_string())?;
    let (history, version) = stored.map_or((DriveHistory::new(), None), |s| {
        (s.history, Some(s.version))
    });
    let index = drive_index(local.layout).await.map_err(|e| e.to_string())?;
    let base = Inputs::of_key_manager(&km);
    let others = |serial: &str, me: &str| index.others_serving(serial, me);
    let own = |material: &Material| local.replicas_of(&base, material.tls.as_ref());
    let around = Surroundings {
        origins: local,
        others_serving: &others,
        replicas: &own,
        targets: local.targets,
    };
    let declared = Declared {
        key_manager: &km,
        namespace: &namespace,
        name: &name,
        tables: &tables,
        groups: &groups,
        shadows: &shadows,
        history: &history,
        history_version: version.as_deref(),
    };
    let prepared = match prepare(&state, &around, &declared, now)
        .await
        .map_err(|e| e.to_string())?
    {
        Outcome::Ready(prepared) => prepared,
        Outcome::Waiting(w) => return Ok(Ended::Waiting(w.message)),
    };
    let estate = declared.estate(&prepared.risks);
    let inputs = Inputs::from_estate(&estate)
        .into_iter()
        .next()
        .ok_or_else(|| format!("KeyManager {owner} vanished from its own estate"))?;
    let (authority, _) = certificates::authority(&state, &owner)
        .await
        .map_err(|e| e.to_string())?;
    let servers = servers(local, &inputs, &authority, &prepared.material)?;
    let clients = clients(local, &inputs, &authority)?;
    write_status(local, &declared, &inputs, &prepared, now).await?;
    let live_digest =
        live_digest(&server_config(&inputs, &prepared.material.license_public_key).drives);
    Ok(Ended::Reconciled(Reconciled {
        servers,
        clients,
        prepared,
        live_digest,
    }))
}

/// The replicas of the KeyManager of `inputs`: each one's certificate and configuration
/// written, ready to run.
fn servers(
    local: &Local<'_>,
    inputs: &Inputs<'_>,
    authority: &shadowkeep_api::pki::Authority,
    material: &Material,
) -> Result<Vec<ServerSpec>, String> {
    let namespace = inputs.namespace();
    let name = inputs.name();
    let owner = Owner::new(&namespace, &name);
    let state = local.layout.state();
    let config = server_config(inputs, &material.license_public_key);
    let peers = local.replica_admins(inputs);
    let kek = state
        .field_path(&owner, Item::Kek, "kek")
        .map_err(|e| e.to_string())?;
    let keystore = state
        .field_path(&owner, Item::Keystore, "keystore")
        .map_err(|e| e.to_string())?;
    let mut servers = Vec::new();
    for peer in &peers {
        let key = server_key(&namespace, &peer.name);
        let ip = local
            .addresses
            .of(&key)
            .ok_or_else(|| format!("server {key} has no address"))?;
        let dir = local.layout.server_dir(&namespace, &peer.name);
        let files = certificates::server(&dir, authority, &peer.name, ip, &inputs.peer_identity())
            .map_err(|e| e.to_string())?;
        let mut mine = config.clone();
        localise(&mut mine, ip, &files, &peers);
        mine.data_dir = dir.join("store");
        mine.kek_file.clone_from(&kek);
        mine.keystore_file = Some(keystore.clone());
        if let Some(replication) = mine.replication.as_mut() {
            replication.shadow_verifiers_file =
                Some(local.layout.verifiers_file(&namespace, &name));
        }
        if let Some(licence) = mine.licence.as_mut() {
            licence.file = write_if_changed(&dir, "license", &material.license)?;
        }
        let yaml = mine.to_yaml().map_err(|e| e.to_string())?;
        let written = write_if_changed(&dir, "server.yaml", yaml.as_bytes())?;
        // Only what a restart applies restarts it: a new drive table is re-read or pushed.
        let mut digest = Sha256::new();
        digest.update(restart_digest(&mine).as_bytes());
        digest.update(std::fs::read(&files.cert).map_err(|e| e.to_string())?);
        servers.push(ServerSpec {
            key,
            name: peer.name.clone(),
            namespace: namespace.clone(),
            key_manager: name.clone(),
            role: Role::Replica,
            config: written,
            kmip: mine.kmip.listen,
            admin: SocketAddr::new(IpAddr::V4(ip), port(ADMIN_PORT)),
            digest: hex::encode(digest.finalize()),
        });
    }
    Ok(servers)
}

/// A client certificate for every certificate identity the KeyManager's DriveTables name.
fn clients(
    local: &Local<'_>,
    inputs: &Inputs<'_>,
    authority: &shadowkeep_api::pki::Authority,
) -> Result<Vec<Client>, String> {
    let identities: BTreeSet<&str> = inputs
        .drive_tables
        .iter()
        .flat_map(|t| t.spec.drives.iter())
        .filter_map(|d| d.certificate_identity.as_deref())
        .collect();
    let (namespace, name) = (inputs.namespace(), inputs.name());
    let dir = local.layout.clients_dir(&namespace, &name);
    let mut clients = Vec::new();
    for identity in identities {
        let files = certificates::client(&dir, authority, identity).map_err(|e| e.to_string())?;
        clients.push(Client {
            identity: identity.to_owned(),
            key_manager: name.clone(),
            namespace: namespace.clone(),
            cert: files.cert,
            key: files.key,
        });
    }
    Ok(clients)
}

/// Keeps the KeyManager's status in the data directory, computed as the operator computes
/// it; written only when it changed.
async fn write_status(
    local: &Local<'_>,
    declared: &Declared<'_>,
    inputs: &Inputs<'_>,
    prepared: &Prepared,
    now: &Time,
) -> Result<(), String> {
    let owner = Owner::new(declared.namespace, declared.name);
    let mine = |set: &BTreeSet<String>| {
        let n = replicas_of(inputs)
            .iter()
            .filter(|p| set.contains(&server_key(declared.namespace, &p.name)))
            .count();
        i32::try_from(n).unwrap_or(i32::MAX)
    };
    let twins: Vec<String> = local
        .estate
        .key_managers()
        .iter()
        .filter(|o| {
            o.spec.server_id == declared.key_manager.spec.server_id
                && (namespace_of(*o), o.name_any()) != (owner.namespace.clone(), owner.name.clone())
        })
        .map(|o| format!("{}/{}", namespace_of(o), o.name_any()))
        .collect();
    let statuses: Vec<_> = inputs
        .shadows
        .iter()
        .map(|s| {
            let status = local.layout.shadow_status(&owner.namespace, &s.name_any());
            (*s, status)
        })
        .collect();
    let shadows = status::shadows_window(
        &statuses
            .iter()
            .map(|(s, status)| (*s, status.as_ref()))
            .collect::<Vec<_>>(),
    );
    let asked = local.replicas(inputs).await.map_err(|e| e.to_string())?;
    let duplicates = crate::core::shadow::observe::duplicates(&asked).await;
    let observed = Observed {
        replicas: mine(local.running),
        ready: mine(local.ready),
        twins: &twins,
        shadows: &shadows,
        duplicates: &duplicates,
        // `up` pushes the configuration once the servers run, and records
        // `ConfigurationApplied` then (`Up::record_applied`); the merge keeps it.
        configuration: None,
    };
    let state = local.layout.state();
    let previous = state.read_status(&owner).await.map_err(|e| e.to_string())?;
    let report = status::report(
        declared,
        previous.as_ref(),
        inputs,
        prepared,
        &observed,
        now,
    );
    if previous.as_ref() != Some(&report.status) {
        state
            .write_status(&owner, &report.status)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The operator's configuration, with this machine's addresses and files.
fn localise(
    config: &mut ServerConfig,
    ip: std::net::Ipv4Addr,
    files: &certificates::Files,
    peers: &[PeerConfig],
) {
    config.kmip.listen = SocketAddr::new(IpAddr::V4(ip), port(KMIP_PORT));
    config.tls = TlsFiles {
        cert: files.cert.clone(),
        key: files.key.clone(),
        client_ca: files.ca.clone(),
    };
    if let Some(replication) = config.replication.as_mut() {
        replication.listen = SocketAddr::new(IpAddr::V4(ip), port(ADMIN_PORT));
        replication.client_cert.clone_from(&files.cert);
        replication.client_key.clone_from(&files.key);
        replication.peers = peers.to_vec();
    }
}

/// The servers of every KeyManager, by key.
pub fn by_key(servers: Vec<ServerSpec>) -> BTreeMap<String, ServerSpec> {
    servers.into_iter().map(|s| (s.key.clone(), s)).collect()
}
