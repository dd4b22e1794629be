//! Three mirrored replicas as real processes on 127.0.0.1: a key made on one is served by
//! all; a replica killed with SIGKILL in the middle of a stream of creates loses no
//! acknowledged key; a replica that was away catches up; a Create that cannot reach enough
//! peers fails and leaves nothing visible.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{Proc, V12, all_ids, connector, free_port, material, peer_connector};
use shadowkeep_server::client::{
    KmipClient, batch_items, create_aes, payload, reason, request, status, uids,
};
use shadowkeep_server::https;
use shadowkeep_server::kmip::enums::{operation, result_reason};

/// Three replica configurations sharing certificates and KEK, each with its own store.
struct Cluster {
    certs: PathBuf,
    configs: Vec<PathBuf>,
    admins: Vec<SocketAddr>,
}

impl Cluster {
    fn new(name: &str, acks: usize) -> Self {
        let certs = common::certificates(&format!("replicas-{name}"));
        let admins: Vec<SocketAddr> = (0..3)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let d = certs.display();
        let configs = (0..3)
            .map(|i| {
                // Every replica gets the full list, itself included, as the operator renders it.
                let peers = (0..3)
                    .map(|j| format!("    - {{name: r{j}, address: \"{}\"}}", admins[j]))
                    .collect::<Vec<_>>()
                    .join("\n");
                let text = format!(
                    "serverId: mirror\n\
                     kmip: {{listen: \"127.0.0.1:0\"}}\n\
                     tls: {{cert: {d}/server.pem, key: {d}/server-key.pem, clientCa: {d}/ca.pem}}\n\
                     dataDir: {d}/r{i}\n\
                     kekFile: {d}/kek.bin\n\
                     drives: {{acceptUnknown: true}}\n\
                     replication:\n  listen: \"{}\"\n  clientCert: {d}/peer.pem\n  clientKey: {d}/peer-key.pem\n  allowedIdentities: [shadowkeep-dev-peer]\n  peerAcknowledgements: {acks}\n  syncIntervalSecs: 1\n  ackTimeoutMs: 1500\n  peers:\n{peers}\n",
                    admins[i]
                );
                let path = certs.join(format!("r{i}.yaml"));
                std::fs::write(&path, text).unwrap();
                path
            })
            .collect();
        Self {
            certs,
            configs,
            admins,
        }
    }

    fn start(&self, i: usize) -> Proc {
        Proc::start_as(&self.configs[i], Some(&format!("r{i}")))
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        connector(&self.certs)
    }
}

/// Why a Create did not succeed.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The server answered with this result reason.
    Refused(u32),
    /// The connection broke (the server crashed).
    Gone,
}

async fn create(c: &mut KmipClient) -> Result<String, Failure> {
    let response = c
        .call(&request(
            V12,
            vec![(operation::CREATE, create_aes(256, vec![]))],
        ))
        .await
        .map_err(|_| Failure::Gone)?;
    let item = batch_items(&response)[0];
    if status(item) == Some(0) {
        Ok(uids(payload(item).unwrap())[0].clone())
    } else {
        Err(Failure::Refused(reason(item).unwrap()))
    }
}

/// Waits until every replica serves the same keys, with identical material, and those keys
/// include every one in `acknowledged`. (A create cut off by a crash after its key became
/// durable may leave a key nobody was told about; it must then be everywhere too.)
async fn converged(cluster: &Cluster, procs: &[&Proc], acknowledged: &[String]) -> Vec<String> {
    let connector = cluster.connector();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ids = loop {
        let mut all = Vec::new();
        for p in procs {
            all.push(all_ids(p.kmip, &connector).await);
        }
        let same = all.windows(2).all(|w| w[0] == w[1]);
        let complete = acknowledged
            .iter()
            .all(|id| all[0].binary_search(id).is_ok());
        if same && complete {
            break all.swap_remove(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas did not converge on the {} acknowledged keys: they hold {:?}",
            acknowledged.len(),
            all.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut clients = Vec::new();
    for p in procs {
        clients.push(KmipClient::connect(p.kmip, &connector).await.unwrap());
    }
    for id in &ids {
        let mut first = None;
        for c in &mut clients {
            let m = material(c, id).await.unwrap();
            assert_eq!(
                *first.get_or_insert_with(|| m.clone()),
                m,
                "key {id} differs between replicas"
            );
        }
    }
    ids
}

#[tokio::test]
async fn a_key_made_on_one_replica_is_served_by_all() {
    let cluster = Cluster::new("spread", 1);
    let (a, b, c) = (cluster.start(0), cluster.start(1), cluster.start(2));
    let connector = cluster.connector();
    let mut on_a = KmipClient::connect(a.kmip, &connector).await.unwrap();
    let id = create(&mut on_a).await.unwrap();
    let on_a_material = material(&mut on_a, &id).await.unwrap();
    // Pushed as it was made: B and C serve it at once or within a moment.
    let ids = converged(&cluster, &[&a, &b, &c], std::slice::from_ref(&id)).await;
    assert_eq!(ids, vec![id.clone()]);
    let mut on_b = KmipClient::connect(b.kmip, &connector).await.unwrap();
    assert_eq!(material(&mut on_b, &id).await.unwrap(), on_a_material);
}

#[tokio::test]
async fn sigkill_during_a_stream_of_creates_loses_no_acknowledged_key() {
    let cluster = Cluster::new("crash", 1);
    let a = cluster.start(0);
    let mut b = cluster.start(1);
    let c = cluster.start(2);
    let connector = cluster.connector();
    let mut client = KmipClient::connect(a.kmip, &connector).await.unwrap();
    let mut acknowledged = Vec::new();
    for n in 0..150 {
        if n == 40 {
            // A peer dies mid-stream: C still acknowledges, so creates go on.
            b.crash();
        }
        if let Ok(id) = create(&mut client).await {
            acknowledged.push(id);
        }
    }
    assert!(
        acknowledged.len() >= 140,
        "only {} creates succeeded",
        acknowledged.len()
    );
    let b = cluster.start(1);
    converged(&cluster, &[&a, &b, &c], &acknowledged).await;

    // Now the replica taking the creates dies mid-stream.
    drop(client);
    let mut a = a;
    let writer = {
        let connector = connector.clone();
        let addr = a.kmip;
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let Ok(mut client) = KmipClient::connect(addr, &connector).await else {
                return acked;
            };
            for _ in 0..2000 {
                match tokio::time::timeout(Duration::from_secs(5), create(&mut client)).await {
                    Ok(Ok(id)) => acked.push(id),
                    _ => break,
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.crash();
    let more = writer.await.unwrap();
    assert!(!more.is_empty(), "the stream was cut before any create");
    acknowledged.extend(more);
    let a = cluster.start(0);
    converged(&cluster, &[&a, &b, &c], &acknowledged).await;
}

#[tokio::test]
async fn a_replica_that_was_away_catches_up() {
    let cluster = Cluster::new("away", 1);
    let a = cluster.start(0);
    let mut b = cluster.start(1);
    let c = cluster.start(2);
    let connector = cluster.connector();
    b.crash();
    let mut on_a = KmipClient::connect(a.kmip, &connector).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..25 {
        ids.push(create(&mut on_a).await.unwrap());
    }
    let mut on_c = KmipClient::connect(c.kmip, &connector).await.unwrap();
    for _ in 0..25 {
        ids.push(create(&mut on_c).await.unwrap());
    }
    let b = cluster.start(1);
    ids.sort();
    assert_eq!(converged(&cluster, &[&a, &b, &c], &ids).await, ids);

    // The replicas agree on the keystore digest, through the admin API.
    let peer = peer_connector(&cluster.certs);
    let mut digests = Vec::new();
    for admin in &cluster.admins {
        let (status, body) = https::https(
            &admin.to_string(),
            &peer,
            hyper::Method::GET,
            "/v1/keystore/digest",
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(status, hyper::StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["keys"], 50);
        digests.push(v["digest"].as_str().unwrap().to_owned());
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
}

#[tokio::test]
async fn a_create_without_enough_peers_fails_and_leaves_nothing_visible() {
    let cluster = Cluster::new("quorum", 2);
    let a = cluster.start(0);
    let mut b = cluster.start(1);
    let c = cluster.start(2);
    let connector = cluster.connector();
    let mut on_a = KmipClient::connect(a.kmip, &connector).await.unwrap();
    let kept = create(&mut on_a).await.unwrap();
    b.crash();
    let started = tokio::time::Instant::now();
    assert_eq!(
        create(&mut on_a).await,
        Err(Failure::Refused(result_reason::GENERAL_FAILURE))
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fails within the ack timeout"
    );
    let b = cluster.start(1);
    // The aborted key reached nobody's clients; the earlier one is everywhere.
    let kept = vec![kept];
    assert_eq!(converged(&cluster, &[&a, &b, &c], &kept).await, kept);
}

#[tokio::test]
async fn the_admin_api_serves_probes_to_anyone_and_keys_only_to_peers() {
    let cluster = Cluster::new("admin", 1);
    let _a = cluster.start(0);
    let address = cluster.admins[0].to_string();
    let kmip_client = connector(&cluster.certs);
    let anonymous = https::connector(&https::ClientFiles {
        ca: cluster.certs.join("ca.pem"),
        cert: None,
        key: None,
    })
    .unwrap();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = https::https(&address, &anonymous, hyper::Method::GET, path, vec![])
            .await
            .unwrap();
        assert_eq!(status, hyper::StatusCode::OK, "{path}");
    }
    let (_, metrics) = https::https(&address, &anonymous, hyper::Method::GET, "/metrics", vec![])
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("shadowkeep_keystore_keys 0"), "{metrics}");
    assert!(
        metrics.contains("shadowkeep_replication_lag_seconds{peer=\"r1\"}"),
        "{metrics}"
    );
    for connector in [&anonymous, &kmip_client] {
        let (status, _) = https::https(
            &address,
            connector,
            hyper::Method::GET,
            "/v1/keystore/digest",
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(status, hyper::StatusCode::FORBIDDEN);
        let (status, _) = https::https(
            &address,
            connector,
            hyper::Method::POST,
            "/v1/keystore/merge",
            b"{}".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(status, hyper::StatusCode::FORBIDDEN);
    }
    let peer = peer_connector(&cluster.certs);
    let (status, body) = https::https(
        &address,
        &peer,
        hyper::Method::POST,
        "/v1/keystore/merge",
        b"not a keystore".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, hyper::StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("invalid keystore"));
}
