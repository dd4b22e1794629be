//! Running real server processes for the integration tests.

#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use shadowkeep_server::client::{self, KmipClient, batch_items, payload, request, uids};
use shadowkeep_server::https::{self, ClientFiles};
use shadowkeep_server::kmip::enums::operation;
use shadowkeep_server::kmip::tag;
use shadowkeep_server::ttlv::Item;
use tokio_rustls::TlsConnector;

/// KMIP 1.2, what the tests speak.
pub const V12: (i32, i32) = (1, 2);

/// A fresh directory holding the development CA, certificates and KEK, shared by every
/// server of one test.
pub fn certificates(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shadowkeep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut child, _, _) = spawn(&[
        "--dev",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let _ = child.kill();
    let _ = child.wait();
    dir
}

/// A server process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub kmip: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub config: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts a server from a configuration file.
    pub fn start(config: &Path) -> Self {
        Self::start_as(config, None)
    }

    /// Starts a server from a configuration file under a replica name (the name a
    /// StatefulSet pod would have), so it leaves itself out of the shared peer list.
    pub fn start_as(config: &Path, replica: Option<&str>) -> Self {
        let (child, kmip, admin) = spawn_env(&["--config", config.to_str().unwrap()], replica);
        Self {
            child,
            kmip,
            admin,
            config: config.to_owned(),
        }
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL: a crash.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary and waits for its listening lines.
pub fn spawn(args: &[&str]) -> (Child, SocketAddr, Option<SocketAddr>) {
    spawn_env(args, None)
}

fn spawn_env(args: &[&str], replica: Option<&str>) -> (Child, SocketAddr, Option<SocketAddr>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shadowkeep-server"));
    if let Some(name) = replica {
        command.env("SHADOWKEEP_REPLICA_NAME", name);
    }
    let mut child = command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut kmip = None;
    while let Some(Ok(line)) = lines.next() {
        if let Some(addr) = line.strip_prefix("kmip listening on ") {
            kmip = Some(addr.parse().unwrap());
            break;
        }
    }
    let Some(kmip) = kmip else {
        panic!("server exited before listening: {:?}", child.wait());
    };
    // The admin line, when there is one, follows at once.
    let admin = if args.contains(&"--config") {
        let text = std::fs::read_to_string(args[1]).unwrap();
        text.contains("replication:").then(|| {
            let line = lines.next().unwrap().unwrap();
            line.strip_prefix("admin listening on ")
                .unwrap()
                .parse()
                .unwrap()
        })
    } else {
        None
    };
    (child, kmip, admin)
}

/// A free TCP port on 127.0.0.1 (bound and released; the tests that use it start at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The KMIP client connector for the development client certificate.
pub fn connector(certs: &Path) -> TlsConnector {
    https::connector(&ClientFiles::dev(certs)).unwrap()
}

/// A connector presenting the peer certificate (for the admin API).
pub fn peer_connector(certs: &Path) -> TlsConnector {
    https::connector(&ClientFiles {
        ca: certs.join("ca.pem"),
        cert: Some(certs.join("peer.pem")),
        key: Some(certs.join("peer-key.pem")),
    })
    .unwrap()
}

/// Every visible key id, sorted.
pub async fn all_ids(addr: SocketAddr, connector: &TlsConnector) -> Vec<String> {
    let mut c = KmipClient::connect(addr, connector).await.unwrap();
    let response = c
        .call(&request(V12, vec![(operation::LOCATE, vec![])]))
        .await
        .unwrap();
    let mut ids = uids(payload(batch_items(&response)[0]).unwrap());
    ids.sort();
    ids
}

/// The material of key `uid`, or `None` if the server does not serve it.
pub async fn material(c: &mut KmipClient, uid: &str) -> Option<Vec<u8>> {
    let response = c
        .call(&request(
            V12,
            vec![(
                operation::GET,
                vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)],
            )],
        ))
        .await
        .unwrap();
    payload(batch_items(&response)[0])
        .and_then(client::material)
        .map(<[u8]>::to_vec)
}
