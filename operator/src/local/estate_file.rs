//! `DIR/estate.json`: what runs where, written once every server listens and again when
//! one is restarted, for people (printed as a table) and for scripts and tests.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shadowkeep_server::durable::write_atomically;

/// The estate as it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EstateFile {
    /// Every KeyManager's CA certificate, for KMIP clients to trust.
    pub ca: PathBuf,
    /// A client certificate for each certificate identity the DriveTables name.
    pub clients: Vec<Client>,
    /// Every key server.
    pub servers: Vec<Server>,
}

/// A client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    /// The certificate identity a DriveTable names.
    pub identity: String,
    /// The KeyManager whose CA signed it (whose servers accept it).
    pub key_manager: String,
    /// The namespace of the KeyManager.
    pub namespace: String,
    /// The certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// A running key server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    /// The replica's name (`KEYMANAGER-N`) or the Shadow's name.
    pub name: String,
    /// The namespace.
    pub namespace: String,
    /// The KeyManager it serves.
    pub key_manager: String,
    /// `replica` or `shadow`.
    pub role: String,
    /// Where it answers KMIP.
    pub kmip: String,
    /// Where its admin API answers.
    pub admin: String,
    /// Its process id, while it runs.
    pub pid: Option<u32>,
}

impl EstateFile {
    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("failed to read {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("failed to read {}: {e}", path.display()))
    }

    /// Writes `path` whole, or not at all.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("estate.json");
        write_atomically(dir, name, &bytes)
            .map_err(|e| format!("failed to write {}: {e}", path.display()))
    }

    /// The servers as a table, and how to reach the first with PyKMIP.
    pub fn describe(&self) -> String {
        let mut rows = vec![[
            "NAME".to_owned(),
            "ROLE".to_owned(),
            "KEYMANAGER".to_owned(),
            "KMIP".to_owned(),
            "ADMIN".to_owned(),
            "PID".to_owned(),
        ]];
        for s in &self.servers {
            rows.push([
                s.name.clone(),
                s.role.clone(),
                format!("{}/{}", s.namespace, s.key_manager),
                s.kmip.clone(),
                s.admin.clone(),
                s.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            ]);
        }
        let mut out = table(&rows);
        if let Some(client) = self.clients.first()
            && let Some(server) = self.servers.iter().find(|s| {
                s.role == "replica"
                    && s.key_manager == client.key_manager
                    && s.namespace == client.namespace
            })
        {
            let (host, port) = server
                .kmip
                .rsplit_once(':')
                .unwrap_or((&server.kmip, "5696"));
            let _ = write!(
                out,
                "\nA KMIP client as {identity:?} (PyKMIP 0.11):\n\n\
                 from kmip.pie.client import ProxyKmipClient\n\
                 from kmip.core import enums\n\
                 client = ProxyKmipClient(hostname={host:?}, port={port}, cert={cert:?}, key={key:?},\n\
                 \x20                        ca={ca:?}, ssl_version=\"PROTOCOL_TLSv1_2\",\n\
                 \x20                        kmip_version=enums.KMIPVersion.KMIP_1_2, config_file=\"/dev/null\")\n\
                 with client:\n\
                 \x20   uid = client.create(enums.CryptographicAlgorithm.AES, 256, name=\"TAPE0001\")\n\
                 \x20   print(uid, len(client.get(uid).value), \"bytes\")\n",
                identity = client.identity,
                cert = client.cert.display().to_string(),
                key = client.key.display().to_string(),
                ca = self.ca.display().to_string(),
            );
        }
        out
    }
}

/// Rows as left-aligned columns.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
