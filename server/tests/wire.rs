//! Byte-level KMIP against a real server process on 127.0.0.1: what PyKMIP cannot send —
//! batches, the ID Placeholder, continuation options — and malformed input, which must get
//! a KMIP error or a closed connection, never a crash, and change nothing.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::V12;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use shadowkeep_server::client::{
    self, KmipClient, application_specific, attribute, batch_items, create_aes, name, payload,
    reason, request, status, uids,
};
use shadowkeep_server::https::{self, ClientFiles};
use shadowkeep_server::kmip::enums::{key_format, operation, result_reason};
use shadowkeep_server::kmip::tag;
use shadowkeep_server::ttlv::{self, Item, Tag};
use tokio_rustls::TlsConnector;

/// A server process with a short or long idle timeout, and its certificates.
struct Server {
    proc: common::Proc,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Server {
    fn start(name: &str, idle_secs: u64) -> Self {
        let dir = common::certificates(&format!("wire-{name}"));
        let config = format!(
            "serverId: wire\nkmip: {{listen: \"127.0.0.1:0\", idleTimeoutSecs: {idle_secs}}}\ntls: {{cert: {d}/server.pem, key: {d}/server-key.pem, clientCa: {d}/ca.pem}}\ndataDir: {d}/store\nkekFile: {d}/kek.bin\ndrives: {{acceptUnknown: true}}\n",
            d = dir.display()
        );
        let config_path = dir.join("server.yaml");
        std::fs::write(&config_path, config).unwrap();
        let proc = common::Proc::start(&config_path);
        Self {
            addr: proc.kmip,
            proc,
            dir,
        }
    }

    fn connector(&self) -> TlsConnector {
        common::connector(&self.dir)
    }

    async fn client(&self) -> KmipClient {
        KmipClient::connect(self.addr, &self.connector())
            .await
            .unwrap()
    }

    fn alive(&mut self) -> bool {
        self.proc.alive()
    }
}

fn item(items: &[&Item], i: usize) -> Item {
    (*items.get(i).unwrap()).clone()
}

async fn create_tape_key(client: &mut KmipClient, barcode: &str, data: &str) -> String {
    let more = vec![
        attribute("Name", name(barcode)),
        attribute(
            "Application Specific Information",
            application_specific("LIBRARY-LTO", data),
        ),
    ];
    let response = client
        .call(&request(
            V12,
            vec![(operation::CREATE, create_aes(256, more))],
        ))
        .await
        .unwrap();
    let items = batch_items(&response);
    assert_eq!(status(items[0]), Some(0), "{response:?}");
    uids(payload(items[0]).unwrap())[0].clone()
}

async fn key_count(client: &mut KmipClient) -> usize {
    let response = client
        .call(&request(V12, vec![(operation::LOCATE, vec![])]))
        .await
        .unwrap();
    uids(payload(batch_items(&response)[0]).unwrap()).len()
}

#[tokio::test]
async fn locate_then_get_in_one_batch_uses_the_id_placeholder() {
    let server = Server::start("placeholder", 60);
    let mut c = server.client().await;
    let uid = create_tape_key(&mut c, "ABC123L6", "0123456789ABCDEF").await;
    create_tape_key(&mut c, "ABC124L6", "FEDCBA9876543210").await;

    // TL-M-3: Locate by Object Type and Application Specific Information, then Get with
    // an empty payload, in one batch.
    let locate = vec![
        attribute("Object Type", Item::enumeration(tag::ATTRIBUTE_VALUE, 2)),
        attribute(
            "Application Specific Information",
            application_specific("LIBRARY-LTO", "0123456789ABCDEF"),
        ),
    ];
    let response = c
        .call(&request(
            V12,
            vec![(operation::LOCATE, locate), (operation::GET, vec![])],
        ))
        .await
        .unwrap();
    let items = batch_items(&response);
    assert_eq!(items.len(), 2);
    assert_eq!(uids(payload(items[0]).unwrap()), vec![uid.clone()]);
    let get = payload(items[1]).unwrap();
    assert_eq!(uids(get), vec![uid.clone()]);
    let material = client::material(get).unwrap().to_vec();
    assert_eq!(material.len(), 32);

    // The same key by its id, in the transparent format.
    let by_id = vec![
        Item::text(tag::UNIQUE_IDENTIFIER, uid.clone()),
        Item::enumeration(tag::KEY_FORMAT_TYPE, key_format::TRANSPARENT_SYMMETRIC_KEY),
    ];
    let response = c
        .call(&request(V12, vec![(operation::GET, by_id)]))
        .await
        .unwrap();
    let get = item(&batch_items(&response), 0);
    let transparent = payload(&get)
        .and_then(|p| p.child(tag::SYMMETRIC_KEY))
        .and_then(|s| s.child(tag::KEY_BLOCK))
        .and_then(|b| b.child(tag::KEY_VALUE))
        .and_then(|v| v.child(tag::KEY_MATERIAL))
        .and_then(|m| m.child(tag::KEY))
        .and_then(Item::as_bytes)
        .unwrap();
    assert_eq!(transparent, material.as_slice());
}

#[tokio::test]
async fn create_activate_and_read_state_in_one_batch() {
    let server = Server::start("chain", 60);
    let mut c = server.client().await;
    let state_of = vec![Item::text(tag::ATTRIBUTE_NAME, "State")];
    let response = c
        .call(&request(
            V12,
            vec![
                (operation::CREATE, create_aes(128, vec![])),
                (operation::ACTIVATE, vec![]),
                (operation::GET_ATTRIBUTES, state_of),
            ],
        ))
        .await
        .unwrap();
    let items = batch_items(&response);
    assert!(items.iter().all(|i| status(i) == Some(0)), "{response:?}");
    let attrs = payload(items[2]).unwrap();
    let state = attrs
        .child(tag::ATTRIBUTE)
        .and_then(|a| a.child(tag::ATTRIBUTE_VALUE))
        .and_then(Item::as_enum);
    assert_eq!(state, Some(2), "Active");
}

fn header_with(items: Vec<(u32, Vec<Item>)>, continue_on_error: bool) -> Item {
    let mut message = request(V12, items);
    if continue_on_error
        && let shadowkeep_server::ttlv::Value::Structure(children) = &mut message.value
        && let shadowkeep_server::ttlv::Value::Structure(header) = &mut children[0].value
    {
        header.push(Item::enumeration(tag::BATCH_ERROR_CONTINUATION_OPTION, 1));
    }
    message
}

#[tokio::test]
async fn a_failed_item_stops_the_batch_unless_asked_to_continue() {
    let server = Server::start("continue", 60);
    let mut c = server.client().await;
    let bogus = vec![Item::text(tag::UNIQUE_IDENTIFIER, "no-such-key")];
    let items = || {
        vec![
            (operation::GET, bogus.clone()),
            (operation::CREATE, create_aes(256, vec![])),
        ]
    };
    let response = c.call(&header_with(items(), false)).await.unwrap();
    let out = batch_items(&response);
    assert_eq!(out.len(), 1, "stop: nothing after the failure runs");
    assert_eq!(reason(out[0]), Some(result_reason::ITEM_NOT_FOUND));
    assert_eq!(key_count(&mut c).await, 0);

    let response = c.call(&header_with(items(), true)).await.unwrap();
    let out = batch_items(&response);
    assert_eq!(out.len(), 2);
    assert_eq!(reason(out[0]), Some(result_reason::ITEM_NOT_FOUND));
    assert_eq!(status(out[1]), Some(0));
    assert_eq!(key_count(&mut c).await, 1);
}

#[tokio::test]
async fn batches_of_more_than_32_items_are_refused_whole() {
    let server = Server::start("batch33", 60);
    let mut c = server.client().await;
    let ok = vec![(operation::CREATE, create_aes(256, vec![])); 32];
    let response = c.call(&request(V12, ok)).await.unwrap();
    assert_eq!(batch_items(&response).len(), 32);
    let too_many = vec![(operation::CREATE, create_aes(256, vec![])); 33];
    let response = c.call(&request(V12, too_many)).await.unwrap();
    let out = batch_items(&response);
    assert_eq!(out.len(), 1);
    assert_eq!(reason(out[0]), Some(result_reason::INVALID_MESSAGE));
    assert!(client::message(out[0]).unwrap().contains("at most 32"));
    assert_eq!(
        key_count(&mut c).await,
        32,
        "the refused batch created nothing"
    );
}

#[tokio::test]
async fn unknown_operations_and_versions_get_clear_errors() {
    let server = Server::start("unsupported", 60);
    let mut c = server.client().await;
    let response = c.call(&request(V12, vec![(0x2C, vec![])])).await.unwrap();
    let out = batch_items(&response);
    assert_eq!(reason(out[0]), Some(result_reason::OPERATION_NOT_SUPPORTED));

    let response = c
        .call(&request(
            (3, 0),
            vec![(operation::CREATE, create_aes(256, vec![]))],
        ))
        .await
        .unwrap();
    let out = batch_items(&response);
    assert_eq!(reason(out[0]), Some(result_reason::INVALID_MESSAGE));
    assert!(client::message(out[0]).unwrap().contains("KMIP 1.0 to 1.4"));

    // Discover Versions works in any version, and answers the intersection.
    let asked = vec![
        shadowkeep_server::kmip::version_item((2, 0)),
        shadowkeep_server::kmip::version_item((1, 2)),
    ];
    let response = c
        .call(&request(
            (2, 0),
            vec![(operation::DISCOVER_VERSIONS, asked)],
        ))
        .await
        .unwrap();
    let versions: Vec<(i32, i32)> = payload(batch_items(&response)[0])
        .unwrap()
        .children_with(tag::PROTOCOL_VERSION)
        .filter_map(shadowkeep_server::kmip::parse_version)
        .collect();
    assert_eq!(versions, vec![(1, 2)]);
}

#[tokio::test]
async fn register_checks_the_material_against_the_length() {
    let server = Server::start("register", 60);
    let mut c = server.client().await;
    let block = |bytes: Vec<u8>| {
        Item::structure(
            tag::SYMMETRIC_KEY,
            vec![Item::structure(
                tag::KEY_BLOCK,
                vec![
                    Item::enumeration(tag::KEY_FORMAT_TYPE, key_format::RAW),
                    Item::structure(tag::KEY_VALUE, vec![Item::bytes(tag::KEY_MATERIAL, bytes)]),
                    Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, 3),
                    Item::integer(tag::CRYPTOGRAPHIC_LENGTH, 256),
                ],
            )],
        )
    };
    let register = |bytes: Vec<u8>| {
        vec![
            Item::enumeration(tag::OBJECT_TYPE, 2),
            Item::structure(tag::TEMPLATE_ATTRIBUTE, vec![]),
            block(bytes),
        ]
    };
    let response = c
        .call(&request(
            V12,
            vec![(operation::REGISTER, register(vec![7; 16]))],
        ))
        .await
        .unwrap();
    let out = batch_items(&response);
    assert_eq!(reason(out[0]), Some(result_reason::INVALID_FIELD));
    assert!(
        client::message(out[0])
            .unwrap()
            .contains("128 bits but Cryptographic Length says 256")
    );

    let response = c
        .call(&request(
            V12,
            vec![
                (operation::REGISTER, register(vec![7; 32])),
                (operation::GET, vec![]),
            ],
        ))
        .await
        .unwrap();
    let out = batch_items(&response);
    assert_eq!(
        client::material(payload(out[1]).unwrap()),
        Some(&[7u8; 32][..])
    );
}

#[tokio::test]
async fn malformed_messages_get_errors_and_change_nothing() {
    let mut server = Server::start("malformed", 60);
    let mut c = server.client().await;
    create_tape_key(&mut c, "KEEP0001", "00").await;

    // Well framed, but the body is not TTLV: answered, and the connection stays usable.
    let mut bad = ttlv::encode(&request(
        V12,
        vec![(operation::CREATE, create_aes(256, vec![]))],
    ));
    bad[8 + 3] = 0x0F; // the first child's type byte: no such type
    let response = c.send_raw(&bad).await.unwrap();
    assert_eq!(
        reason(batch_items(&response)[0]),
        Some(result_reason::INVALID_MESSAGE)
    );
    assert_eq!(key_count(&mut c).await, 1);

    // A structure that is not a Request Message: answered, then closed.
    let wrong = ttlv::encode(&Item::structure(Tag(0x42_007B), vec![]));
    let response = c.send_raw(&wrong).await.unwrap();
    assert_eq!(
        reason(batch_items(&response)[0]),
        Some(result_reason::INVALID_MESSAGE)
    );
    assert!(c.is_closed().await);

    // A header claiming 16 MiB: refused at once, without waiting for the bytes.
    let mut c = server.client().await;
    let mut huge = vec![0x42, 0x00, 0x78, 0x01];
    huge.extend_from_slice(&(16u32 << 20).to_be_bytes());
    let response = tokio::time::timeout(Duration::from_secs(5), c.send_raw(&huge))
        .await
        .unwrap()
        .unwrap();
    assert!(
        client::message(batch_items(&response)[0])
            .unwrap()
            .contains("1048576")
    );
    assert!(c.is_closed().await);

    // A request header with a Batch Count that lies.
    let mut c = server.client().await;
    let mut lying = request(V12, vec![(operation::LOCATE, vec![])]);
    if let shadowkeep_server::ttlv::Value::Structure(children) = &mut lying.value
        && let shadowkeep_server::ttlv::Value::Structure(header) = &mut children[0].value
    {
        header[1] = Item::integer(tag::BATCH_COUNT, 5);
    }
    let response = c.call(&lying).await.unwrap();
    assert!(
        client::message(batch_items(&response)[0])
            .unwrap()
            .contains("Batch Count says 5")
    );

    assert!(server.alive());
    let mut c = server.client().await;
    assert_eq!(key_count(&mut c).await, 1, "nothing was created or lost");
}

#[tokio::test]
async fn random_corruption_never_crashes_the_server_or_changes_the_keystore() {
    let mut server = Server::start("random", 1);
    let connector = server.connector();
    let mut c = server.client().await;
    create_tape_key(&mut c, "KEEP0002", "01").await;
    let good = ttlv::encode(&request(
        V12,
        vec![
            (
                operation::GET_ATTRIBUTES,
                vec![Item::text(tag::UNIQUE_IDENTIFIER, "x")],
            ),
            (operation::DISCOVER_VERSIONS, vec![]),
        ],
    ));
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut answered = 0;
    for round in 0..300 {
        let mut bytes = good.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.r#gen();
        }
        if round % 50 == 0 {
            bytes.truncate(rng.gen_range(9..bytes.len()));
        }
        let mut client = KmipClient::connect(server.addr, &connector).await.unwrap();
        // Either a response (of any verdict) or a closed connection; never a hang. A
        // truncated message leaves the server waiting for the rest until its idle timeout.
        if let Ok(Ok(response)) =
            tokio::time::timeout(Duration::from_secs(2), client.send_raw(&bytes)).await
        {
            assert_eq!(response.tag, tag::RESPONSE_MESSAGE);
            answered += 1;
        }
    }
    assert!(
        answered > 100,
        "only {answered} of 300 corrupted messages were answered"
    );
    assert!(server.alive());
    let mut c = server.client().await;
    assert_eq!(key_count(&mut c).await, 1);
}

#[tokio::test]
async fn silent_and_certificate_less_clients_are_cut_off() {
    let mut server = Server::start("idle", 1);
    // A client that stops halfway through a message is closed after the idle timeout.
    let mut c = server.client().await;
    let whole = ttlv::encode(&request(V12, vec![(operation::LOCATE, vec![])]));
    let started = tokio::time::Instant::now();
    let result = c.send_raw(&whole[..whole.len() / 2]).await;
    assert!(result.is_err(), "a half message gets no answer");
    assert!(started.elapsed() < Duration::from_secs(5));

    // TLS without a client certificate: no KMIP at all.
    let anonymous = https::connector(&ClientFiles {
        ca: server.dir.join("ca.pem"),
        cert: None,
        key: None,
    })
    .unwrap();
    let refused = match KmipClient::connect(server.addr, &anonymous).await {
        Err(_) => true,
        Ok(mut c) => c
            .call(&request(V12, vec![(operation::LOCATE, vec![])]))
            .await
            .is_err(),
    };
    assert!(refused);
    assert!(server.alive());
    let mut c = server.client().await;
    assert_eq!(key_count(&mut c).await, 0);
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish() {
    let mut server = Server::start("sigterm", 60);
    let mut c = server.client().await;
    let batch = request(V12, vec![(operation::CREATE, create_aes(256, vec![])); 32]);
    let pending = tokio::spawn(async move {
        let response = c.call(&batch).await;
        (response, c)
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let pid = server.proc.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let (response, mut c) = pending.await.unwrap();
    let response = response.expect("the batch in flight is answered");
    let items = batch_items(&response);
    assert_eq!(items.len(), 32);
    assert!(items.iter().all(|i| status(i) == Some(0)));
    assert!(c.is_closed().await, "then the connection is closed");
    let exit = server.proc.child.wait().unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");
    assert!(!server.alive());
}

#[tokio::test]
async fn keys_a_known_drive_creates_carry_its_key_group() {
    let dir = common::certificates("wire-groups");
    let config = format!(
        "serverId: wire\nkmip: {{listen: \"127.0.0.1:0\"}}\ntls: {{cert: {d}/server.pem, key: {d}/server-key.pem, clientCa: {d}/ca.pem}}\ndataDir: {d}/store\nkekFile: {d}/kek.bin\ndrives:\n  acceptUnknown: false\n  keyGroups: [{{name: lto-default, default: true}}, {{name: vault}}]\n  drives:\n    - {{serial: \"1013000123\", certificateIdentity: shadowkeep-dev-client, keyGroup: vault}}\n",
        d = dir.display()
    );
    let path = dir.join("server.yaml");
    std::fs::write(&path, config).unwrap();
    let proc = common::Proc::start(&path);
    let mut c = KmipClient::connect(proc.kmip, &common::connector(&dir))
        .await
        .unwrap();
    let group_of = vec![Item::text(tag::ATTRIBUTE_NAME, "y-KeyGroup")];
    let response = c
        .call(&request(
            V12,
            vec![
                (operation::CREATE, create_aes(256, vec![])),
                (operation::GET_ATTRIBUTES, group_of),
            ],
        ))
        .await
        .unwrap();
    let items = batch_items(&response);
    let group = payload(items[1])
        .and_then(|p| p.child(tag::ATTRIBUTE))
        .and_then(|a| a.child(tag::ATTRIBUTE_VALUE))
        .and_then(Item::as_text);
    assert_eq!(group, Some("vault"));

    // Clients cannot forge or change a server-defined attribute.
    let forged = vec![attribute(
        "y-KeyGroup",
        Item::text(tag::ATTRIBUTE_VALUE, "lto-default"),
    )];
    let response = c
        .call(&request(
            V12,
            vec![(operation::CREATE, create_aes(256, forged))],
        ))
        .await
        .unwrap();
    assert_eq!(
        reason(batch_items(&response)[0]),
        Some(result_reason::PERMISSION_DENIED)
    );
}

#[tokio::test]
async fn a_key_revoked_for_compromise_is_compromised_then_destroyed_compromised() {
    let server = Server::start("compromise", 60);
    let mut c = server.client().await;
    let state_and_date = || {
        vec![
            Item::text(tag::ATTRIBUTE_NAME, "State"),
            Item::text(tag::ATTRIBUTE_NAME, "Compromise Occurrence Date"),
        ]
    };
    let revoke = vec![
        Item::structure(
            tag::REVOCATION_REASON,
            vec![Item::enumeration(tag::REVOCATION_REASON_CODE, 2)],
        ),
        Item::date_time(tag::COMPROMISE_OCCURRENCE_DATE, 1_700_000_000),
    ];
    let response = c
        .call(&request(
            V12,
            vec![
                (operation::CREATE, create_aes(256, vec![])),
                (operation::ACTIVATE, vec![]),
                (operation::REVOKE, revoke),
                (operation::GET_ATTRIBUTES, state_and_date()),
                (operation::GET, vec![]),
                (operation::DESTROY, vec![]),
                (operation::GET_ATTRIBUTES, state_and_date()),
            ],
        ))
        .await
        .unwrap();
    let items = batch_items(&response);
    assert!(items.iter().all(|i| status(i) == Some(0)), "{response:?}");
    let values = |i: usize| -> Vec<Item> {
        payload(items[i])
            .unwrap()
            .children_with(tag::ATTRIBUTE)
            .map(|a| a.child(tag::ATTRIBUTE_VALUE).unwrap().clone())
            .collect()
    };
    let compromised = values(3);
    assert_eq!(compromised[0].as_enum(), Some(4), "Compromised");
    assert_eq!(compromised[1].as_date_time(), Some(1_700_000_000));
    assert_eq!(
        client::material(payload(items[4]).unwrap()).unwrap().len(),
        32
    );
    assert_eq!(values(6)[0].as_enum(), Some(6), "Destroyed Compromised");
}

/// Creates a key and reads its key group, in one request whose Device credential
/// presents `serial`.
fn create_as_device(serial: &str) -> Item {
    let group_of = vec![Item::text(tag::ATTRIBUTE_NAME, "y-KeyGroup")];
    let mut message = request(
        V12,
        vec![
            (operation::CREATE, create_aes(256, vec![])),
            (operation::GET_ATTRIBUTES, group_of),
        ],
    );
    let credential = Item::structure(
        tag::AUTHENTICATION,
        vec![Item::structure(
            tag::CREDENTIAL,
            vec![
                Item::enumeration(tag::CREDENTIAL_TYPE, 2),
                Item::structure(
                    tag::CREDENTIAL_VALUE,
                    vec![Item::text(tag::DEVICE_SERIAL_NUMBER, serial)],
                ),
            ],
        )],
    );
    if let shadowkeep_server::ttlv::Value::Structure(children) = &mut message.value
        && let shadowkeep_server::ttlv::Value::Structure(header) = &mut children[0].value
    {
        header.insert(1, credential);
    }
    message
}

/// Whether the server admitted a `create_as_device` request, and the new key's group.
async fn admitted_as(c: &mut KmipClient, serial: &str) -> Result<Option<String>, Option<u32>> {
    let response = c.call(&create_as_device(serial)).await.unwrap();
    let items = batch_items(&response);
    if status(items[0]) != Some(0) {
        return Err(reason(items[0]));
    }
    Ok(payload(items[1])
        .and_then(|p| p.child(tag::ATTRIBUTE))
        .and_then(|a| a.child(tag::ATTRIBUTE_VALUE))
        .and_then(Item::as_text)
        .map(str::to_owned))
}

#[tokio::test]
async fn a_serial_alone_admits_a_drive_only_when_its_entry_or_the_table_opts_in() {
    let dir = common::certificates("wire-serial");
    // The client certificate is the development one, which no entry names: only a serial
    // in the Device credential can tie it to a drive.
    let serve = |name: &str, drives: &str| {
        let config = format!(
            "serverId: wire\nkmip: {{listen: \"127.0.0.1:0\"}}\ntls: {{cert: {d}/server.pem, key: {d}/server-key.pem, clientCa: {d}/ca.pem}}\ndataDir: {d}/store-{name}\nkekFile: {d}/kek.bin\ndrives:\n  keyGroups: [{{name: lto-default, default: true}}, {{name: vault}}]\n{drives}",
            d = dir.display()
        );
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).unwrap();
        common::Proc::start(&path)
    };
    let denied = Err(Some(result_reason::PERMISSION_DENIED));

    let proc = serve(
        "serial-only",
        "  drives: [{serial: \"1013000123\", keyGroup: vault}]\n",
    );
    let mut c = KmipClient::connect(proc.kmip, &common::connector(&dir))
        .await
        .unwrap();
    assert_eq!(admitted_as(&mut c, "1013000123").await, denied);
    drop(proc);

    let proc = serve(
        "opted-in",
        "  drives: [{serial: \"1013000123\", keyGroup: vault, acceptAnyCertificate: true}]\n",
    );
    let mut c = KmipClient::connect(proc.kmip, &common::connector(&dir))
        .await
        .unwrap();
    assert_eq!(
        admitted_as(&mut c, "1013000123").await,
        Ok(Some("vault".to_owned()))
    );
    assert_eq!(admitted_as(&mut c, "9999999999").await, denied);
    drop(proc);

    // Unknown drives are served anyway; the entry still gives the drive its own group.
    let proc = serve(
        "open",
        "  acceptUnknown: true\n  drives: [{serial: \"1013000123\", keyGroup: vault}]\n",
    );
    let mut c = KmipClient::connect(proc.kmip, &common::connector(&dir))
        .await
        .unwrap();
    assert_eq!(
        admitted_as(&mut c, "1013000123").await,
        Ok(Some("vault".to_owned()))
    );
    assert_eq!(
        admitted_as(&mut c, "9999999999").await,
        Ok(Some("lto-default".to_owned()))
    );
}

#[tokio::test]
async fn the_operators_keystore_file_is_merged_at_start_and_on_change_and_never_shrinks() {
    use shadowkeep_api::keystore::{Algorithm, Kek, Key, Keystore};

    let dir = common::certificates("wire-import");
    let kek = Kek::from_bytes(&std::fs::read(dir.join("kek.bin")).unwrap()).unwrap();
    let made = |name: &str| {
        Key::generate(&kek, name, Algorithm::Aes, 256, jiff::Timestamp::now()).unwrap()
    };
    let (first, second) = (made("FROM-SECRET-1"), made("FROM-SECRET-2"));
    let write = |keys: &[&Key]| {
        let mut ks = Keystore::new();
        for k in keys {
            ks.insert((*k).clone()).unwrap();
        }
        let tmp = dir.join("keystore.tmp");
        std::fs::write(&tmp, ks.to_bytes().unwrap()).unwrap();
        // Swapped in whole, as a mounted Secret is.
        std::fs::rename(&tmp, dir.join("keystore")).unwrap();
    };
    write(&[&first]);
    let config = format!(
        "serverId: wire\nkmip: {{listen: \"127.0.0.1:0\"}}\ntls: {{cert: {d}/server.pem, key: {d}/server-key.pem, clientCa: {d}/ca.pem}}\ndataDir: {d}/store\nkekFile: {d}/kek.bin\ndrives: {{acceptUnknown: true}}\nkeystoreFile: {d}/keystore\n",
        d = dir.display()
    );
    let path = dir.join("server.yaml");
    std::fs::write(&path, config).unwrap();
    let proc = common::Proc::start(&path);
    let connector = common::connector(&dir);
    let ids = |keys: &[&Key]| {
        let mut ids: Vec<String> = keys.iter().map(|k| k.id.to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(common::all_ids(proc.kmip, &connector).await, ids(&[&first]));

    write(&[&first, &second]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while common::all_ids(proc.kmip, &connector).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changed file was not merged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A file that lost a key takes nothing away.
    write(&[&second]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        common::all_ids(proc.kmip, &connector).await,
        ids(&[&first, &second])
    );
    let mut c = KmipClient::connect(proc.kmip, &connector).await.unwrap();
    let served = common::material(&mut c, first.id.as_str()).await.unwrap();
    assert_eq!(
        served,
        kek.open(&first.id, &first.material).unwrap().to_vec()
    );
}

#[tokio::test]
async fn a_locate_that_finds_nothing_empties_the_id_placeholder() {
    let server = Server::start("empty-locate", 60);
    let mut c = server.client().await;
    let nothing = vec![attribute("Name", name("NO-SUCH-TAPE"))];
    let response = c
        .call(&header_with(
            vec![
                (operation::CREATE, create_aes(256, vec![])),
                (operation::LOCATE, nothing),
                (operation::DESTROY, vec![]),
            ],
            true,
        ))
        .await
        .unwrap();
    let items = batch_items(&response);
    assert_eq!(items.len(), 3);
    assert_eq!(status(items[0]), Some(0), "{response:?}");
    assert_eq!(status(items[1]), Some(0), "{response:?}");
    assert!(uids(payload(items[1]).unwrap()).is_empty());
    // KMIP 1.x: the Destroy has no object to act on, not the key the Create made.
    assert_eq!(reason(items[2]), Some(result_reason::MISSING_DATA));
    assert!(
        client::message(items[2])
            .unwrap()
            .contains("ID Placeholder"),
        "{response:?}"
    );
    let created = uids(payload(items[0]).unwrap())[0].clone();
    assert_eq!(
        common::material(&mut c, &created).await.map(|m| m.len()),
        Some(32),
        "the created key was not destroyed"
    );
}

/// A server started over a keystore file holding `keys` (as the operator's Secret would),
/// with the KEK they were sealed under.
fn server_with_keystore(
    name: &str,
    keys: impl FnOnce(&shadowkeep_api::keystore::Kek) -> Vec<shadowkeep_api::keystore::Key>,
) -> (common::Proc, PathBuf) {
    use shadowkeep_api::keystore::{Kek, Keystore};

    let dir = common::certificates(name);
    let kek = Kek::from_bytes(&std::fs::read(dir.join("kek.bin")).unwrap()).unwrap();
    let mut ks = Keystore::new();
    for key in keys(&kek) {
        ks.insert(key).unwrap();
    }
    std::fs::write(dir.join("keystore"), ks.to_bytes().unwrap()).unwrap();
    let config = format!(
        "serverId: wire\nkmip: {{listen: \"127.0.0.1:0\"}}\ntls: {{cert: {d}/server.pem, key: {d}/server-key.pem, clientCa: {d}/ca.pem}}\ndataDir: {d}/store\nkekFile: {d}/kek.bin\ndrives: {{acceptUnknown: true}}\nkeystoreFile: {d}/keystore\n",
        d = dir.display()
    );
    let path = dir.join("server.yaml");
    std::fs::write(&path, config).unwrap();
    (common::Proc::start(&path), dir)
}

#[tokio::test]
async fn attribute_times_at_the_end_of_the_range_from_a_merge_get_errors_not_panics() {
    use shadowkeep_api::keystore::{Algorithm, AttributeValue, Key};

    let mut id = String::new();
    let (mut proc, dir) = server_with_keystore("wire-end-of-time", |kek| {
        let mut key = Key::generate(
            kek,
            "END-OF-TIME",
            Algorithm::Aes,
            256,
            jiff::Timestamp::now(),
        )
        .unwrap();
        for (name, value) in [
            ("kmip:x-shelf#0", r#"{"TextString":"A1"}"#),
            ("kmip:Activation Date#0", r#"{"DateTime":0}"#),
        ] {
            key.attributes.insert(
                name.to_owned(),
                AttributeValue {
                    updated_at_ms: i64::MAX,
                    value: Some(value.to_owned()),
                },
            );
        }
        id = key.id.to_string();
        vec![key]
    });
    let mut c = KmipClient::connect(proc.kmip, &common::connector(&dir))
        .await
        .unwrap();
    let uid = || Item::text(tag::UNIQUE_IDENTIFIER, id.clone());
    let modify = vec![
        uid(),
        attribute("x-shelf", Item::text(tag::ATTRIBUTE_VALUE, "B2")),
    ];
    let response = c
        .call(&request(V12, vec![(operation::MODIFY_ATTRIBUTE, modify)]))
        .await
        .expect("a KMIP answer, not a dropped connection");
    let out = batch_items(&response);
    assert_eq!(reason(out[0]), Some(result_reason::ILLEGAL_OPERATION));
    assert!(
        client::message(out[0])
            .unwrap()
            .contains("nothing was changed"),
        "{response:?}"
    );

    // A state change still happens: the server-set date that cannot be restamped is left
    // as the merge has it.
    let response = c
        .call(&request(
            V12,
            vec![
                (operation::ACTIVATE, vec![uid()]),
                (
                    operation::GET_ATTRIBUTES,
                    vec![
                        uid(),
                        Item::text(tag::ATTRIBUTE_NAME, "State"),
                        Item::text(tag::ATTRIBUTE_NAME, "x-shelf"),
                    ],
                ),
            ],
        ))
        .await
        .unwrap();
    let out = batch_items(&response);
    assert!(out.iter().all(|i| status(i) == Some(0)), "{response:?}");
    let values: Vec<Item> = payload(out[1])
        .unwrap()
        .children_with(tag::ATTRIBUTE)
        .map(|a| a.child(tag::ATTRIBUTE_VALUE).unwrap().clone())
        .collect();
    assert_eq!(values[0].as_enum(), Some(2), "Active");
    assert_eq!(
        values[1].as_text(),
        Some("A1"),
        "the refused change changed nothing"
    );
    assert!(proc.alive());
}

fn add_attribute(uid: &str, name: &str, value: Item) -> (u32, Vec<Item>) {
    (
        operation::ADD_ATTRIBUTE,
        vec![
            Item::text(tag::UNIQUE_IDENTIFIER, uid),
            attribute(name, value),
        ],
    )
}

fn text_value(len: usize) -> Item {
    Item::text(tag::ATTRIBUTE_VALUE, "N".repeat(len))
}

#[tokio::test]
async fn a_create_with_more_attributes_than_an_object_may_hold_is_refused_and_stores_nothing() {
    let server = Server::start("create-limits", 60);
    let mut c = server.client().await;
    let many = |count: usize, value: &dyn Fn(usize) -> Item| -> Vec<Item> {
        (0..count)
            .map(|i| attribute(&format!("x-note-{i:03}"), value(i)))
            .collect()
    };
    // 100 x 4 KiB, as text and as bytes (whose log record would be ~1.6 MB).
    let texts = many(100, &|_| text_value(4096));
    let bytes = many(100, &|i| {
        Item::bytes(
            tag::ATTRIBUTE_VALUE,
            vec![u8::try_from(i).unwrap() | 0x80; 4096],
        )
    });
    for template in [texts, bytes] {
        let response = c
            .call(&request(
                V12,
                vec![(operation::CREATE, create_aes(256, template))],
            ))
            .await
            .unwrap();
        let out = batch_items(&response);
        assert_eq!(reason(out[0]), Some(result_reason::INVALID_FIELD));
        let message = client::message(out[0]).unwrap();
        assert!(
            message.contains("over the limit of 64") && message.contains("nothing was changed"),
            "{message}"
        );
    }
    // Within the count but over the size: 60 x 4 KiB of bytes.
    let big = many(60, &|_| Item::bytes(tag::ATTRIBUTE_VALUE, vec![0xFF; 4096]));
    let response = c
        .call(&request(
            V12,
            vec![(operation::CREATE, create_aes(256, big))],
        ))
        .await
        .unwrap();
    let message = client::message(batch_items(&response)[0]).unwrap();
    assert!(message.contains("bytes per object"), "{message}");
    assert_eq!(key_count(&mut c).await, 0, "nothing was stored");

    // A name longer than the limit is refused without being echoed.
    let long = vec![attribute(&format!("x-{}", "n".repeat(200)), text_value(4))];
    let response = c
        .call(&request(
            V12,
            vec![(operation::CREATE, create_aes(256, long))],
        ))
        .await
        .unwrap();
    let out = batch_items(&response);
    assert_eq!(reason(out[0]), Some(result_reason::INVALID_FIELD));
    let message = client::message(out[0]).unwrap();
    assert!(
        message.contains("202 bytes") && message.contains("limit of 128") && message.len() < 200,
        "{message}"
    );

    // The tape library profile: 30 custom attributes of 255+ characters (here the most a
    // value may hold), and a Name.
    let mut profile = many(30, &|_| text_value(4096));
    profile.push(attribute("Name", name("PROFILE1")));
    let response = c
        .call(&request(
            V12,
            vec![(operation::CREATE, create_aes(256, profile))],
        ))
        .await
        .unwrap();
    assert_eq!(status(batch_items(&response)[0]), Some(0), "{response:?}");
    assert_eq!(key_count(&mut c).await, 1);
}

#[tokio::test]
async fn a_thousand_add_attributes_stop_at_the_limit_and_a_restart_keeps_every_key() {
    let mut server = Server::start("grow", 60);
    let mut c = server.client().await;
    let uid = create_tape_key(&mut c, "GROW0001", "00").await;
    let other = create_tape_key(&mut c, "GROW0002", "01").await;

    let mut outcomes = Vec::new();
    for batch in 0..(1000 / 25) {
        let items = (0..25)
            .map(|i| {
                add_attribute(
                    &uid,
                    &format!("x-note-{}", batch * 25 + i),
                    text_value(4096),
                )
            })
            .collect();
        let response = c.call(&header_with(items, true)).await.unwrap();
        for item in batch_items(&response) {
            outcomes.push((
                status(item),
                reason(item),
                client::message(item).map(str::to_owned),
            ));
        }
    }
    assert_eq!(outcomes.len(), 1000);
    let added = outcomes.iter().take_while(|o| o.0 == Some(0)).count();
    assert!(
        (30..=64).contains(&added),
        "{added} Add Attribute calls succeeded"
    );
    for (_, why, message) in &outcomes[added..] {
        assert_eq!(*why, Some(result_reason::INVALID_FIELD), "{message:?}");
        let message = message.as_deref().unwrap();
        assert!(
            message.contains("per object") && message.contains("nothing was changed"),
            "{message}"
        );
    }

    // Adding and deleting over and over reuses the deleted instance's index.
    let cycle = |i: usize| {
        vec![
            add_attribute(
                &other,
                "x-cycle",
                Item::text(tag::ATTRIBUTE_VALUE, format!("v{i}")),
            ),
            (
                operation::DELETE_ATTRIBUTE,
                vec![
                    Item::text(tag::UNIQUE_IDENTIFIER, other.clone()),
                    Item::text(tag::ATTRIBUTE_NAME, "x-cycle"),
                ],
            ),
        ]
    };
    for round in 0..100 {
        let response = c.call(&header_with(cycle(round), false)).await.unwrap();
        let out = batch_items(&response);
        assert!(out.iter().all(|i| status(i) == Some(0)), "{response:?}");
        let index = payload(out[0])
            .and_then(|p| p.child(tag::ATTRIBUTE))
            .and_then(|a| a.child(tag::ATTRIBUTE_INDEX));
        assert!(index.is_none(), "round {round}: index {index:?}, not 0");
    }

    // A crash and a restart keep every acknowledged key and change.
    let mut ids = vec![uid.clone(), other.clone()];
    ids.sort();
    server.proc.crash();
    server.proc = common::Proc::start(&server.dir.join("server.yaml"));
    server.addr = server.proc.kmip;
    assert_eq!(common::all_ids(server.addr, &server.connector()).await, ids);
    let mut c = server.client().await;
    let response = c
        .call(&request(
            V12,
            vec![(
                operation::GET_ATTRIBUTE_LIST,
                vec![Item::text(tag::UNIQUE_IDENTIFIER, uid.clone())],
            )],
        ))
        .await
        .unwrap();
    let names = payload(batch_items(&response)[0])
        .unwrap()
        .children_with(tag::ATTRIBUTE_NAME)
        .filter(|n| n.as_text().is_some_and(|n| n.starts_with("x-note-")))
        .count();
    assert_eq!(names, added);
    assert_eq!(
        common::material(&mut c, &uid).await.map(|m| m.len()),
        Some(32)
    );
}

#[tokio::test]
async fn a_revocation_message_over_the_text_limit_is_refused_and_changes_nothing() {
    let server = Server::start("revocation-message", 60);
    let mut c = server.client().await;
    let revoke = |message: usize| {
        vec![Item::structure(
            tag::REVOCATION_REASON,
            vec![
                Item::enumeration(tag::REVOCATION_REASON_CODE, 5),
                Item::text(Tag(0x42_0080), "M".repeat(message)),
            ],
        )]
    };
    let state = vec![Item::text(tag::ATTRIBUTE_NAME, "State")];
    let response = c
        .call(&header_with(
            vec![
                (operation::CREATE, create_aes(256, vec![])),
                (operation::ACTIVATE, vec![]),
                (operation::REVOKE, revoke(8192)),
                (operation::GET_ATTRIBUTES, state.clone()),
                (operation::REVOKE, revoke(4096)),
                (operation::GET_ATTRIBUTES, state),
            ],
            true,
        ))
        .await
        .unwrap();
    let out = batch_items(&response);
    assert_eq!(reason(out[2]), Some(result_reason::INVALID_FIELD));
    assert!(
        client::message(out[2])
            .unwrap()
            .contains("Revocation Message"),
        "{:?}",
        client::message(out[2])
    );
    let state_of = |i: usize| {
        payload(out[i])
            .and_then(|p| p.child(tag::ATTRIBUTE))
            .and_then(|a| a.child(tag::ATTRIBUTE_VALUE))
            .and_then(Item::as_enum)
    };
    assert_eq!(state_of(3), Some(2), "still Active");
    assert_eq!(status(out[4]), Some(0), "{response:?}");
    assert_eq!(state_of(5), Some(3), "Deactivated");
}

fn locate_page(max: Option<i32>, offset: Option<i32>) -> (u32, Vec<Item>) {
    let mut payload = Vec::new();
    if let Some(max) = max {
        payload.push(Item::integer(tag::MAXIMUM_ITEMS, max));
    }
    if let Some(offset) = offset {
        payload.push(Item::integer(tag::OFFSET_ITEMS, offset));
    }
    (operation::LOCATE, payload)
}

/// Keys in the bulk keystore of the Locate tests: their identifiers take more than a response
/// may hold.
const BULK_KEYS: usize = 25_000;

const V14: (i32, i32) = (1, 4);

/// A server over a keystore of [`BULK_KEYS`] keys, created a millisecond apart, and a
/// client of it.
async fn bulk_server(name: &str) -> (common::Proc, KmipClient) {
    use shadowkeep_api::keystore::{Algorithm, Key};

    let (proc, dir) = server_with_keystore(name, |kek| {
        let start = jiff::Timestamp::now();
        (0..BULK_KEYS)
            .map(|i| {
                let at = start - jiff::SignedDuration::from_millis(i64::try_from(i).unwrap());
                Key::generate(kek, format!("BULK{i:05}"), Algorithm::Aes, 256, at).unwrap()
            })
            .collect()
    });
    let c = KmipClient::connect(proc.kmip, &common::connector(&dir))
        .await
        .unwrap();
    (proc, c)
}

#[tokio::test]
async fn locate_answers_a_default_maximum_newest_first_and_pages_through_the_rest() {
    use shadowkeep_server::kmip::DEFAULT_LOCATE_ITEMS;

    let (_proc, mut c) = bulk_server("wire-locate-pages").await;
    // No Maximum Items: the default, newest first, and (KMIP 1.3+) how many matched.
    let response = c
        .call(&request(V14, vec![locate_page(None, None)]))
        .await
        .unwrap();
    let first = payload(batch_items(&response)[0]).unwrap().clone();
    assert_eq!(uids(&first).len(), DEFAULT_LOCATE_ITEMS);
    assert_eq!(
        first.child(tag::LOCATED_ITEMS).and_then(Item::as_int),
        Some(i32::try_from(BULK_KEYS).unwrap())
    );

    // Every key, page by page with Offset Items, each page newest first.
    let mut all = Vec::new();
    for page in 0..BULK_KEYS.div_ceil(5_000) {
        let offset = i32::try_from(page * 5_000).unwrap();
        let response = c
            .call(&request(V14, vec![locate_page(Some(5_000), Some(offset))]))
            .await
            .unwrap();
        all.extend(uids(payload(batch_items(&response)[0]).unwrap()));
    }
    assert_eq!(all[..DEFAULT_LOCATE_ITEMS], uids(&first)[..]);
    let mut distinct = all.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((all.len(), distinct.len()), (BULK_KEYS, BULK_KEYS));

    // Located Items is KMIP 1.3 and later.
    let response = c
        .call(&request(V12, vec![locate_page(Some(200), None)]))
        .await
        .unwrap();
    let payload = payload(batch_items(&response)[0]).unwrap();
    assert_eq!(uids(payload).len(), 200);
    assert!(payload.child(tag::LOCATED_ITEMS).is_none());
}

#[tokio::test]
async fn answers_that_would_not_fit_in_a_response_are_refused_before_they_are_built() {
    use shadowkeep_server::kmip::{DEFAULT_LOCATE_ITEMS, MAX_RESPONSE_LEN};

    let (_proc, mut c) = bulk_server("wire-locate-limit").await;
    // Asking for everything at once would answer more than a response may hold: refused,
    // saying how many would fit.
    let response = c
        .call(&request(V14, vec![locate_page(Some(100_000), None)]))
        .await
        .unwrap();
    assert!(ttlv::encode(&response).len() <= MAX_RESPONSE_LEN);
    let out = batch_items(&response);
    assert_eq!(reason(out[0]), Some(result_reason::RESPONSE_TOO_LARGE));
    let message = client::message(out[0]).unwrap();
    assert!(
        message.contains("25000") && message.contains("Offset Items"),
        "{message}"
    );

    // A batch of 32 default Locates: answered within the limit; the items that no longer
    // fit say so, and the ones before them are whole.
    let response = c
        .call(&header_with(vec![locate_page(None, None); 32], true))
        .await
        .unwrap();
    assert!(ttlv::encode(&response).len() <= MAX_RESPONSE_LEN);
    let out = batch_items(&response);
    assert_eq!(out.len(), 32);
    let whole = out.iter().take_while(|i| status(i) == Some(0)).count();
    assert!((1..32).contains(&whole), "{whole} whole answers");
    for item in &out[..whole] {
        assert_eq!(uids(payload(item).unwrap()).len(), DEFAULT_LOCATE_ITEMS);
    }
    for item in &out[whole..] {
        assert_eq!(reason(item), Some(result_reason::RESPONSE_TOO_LARGE));
    }

    // A change that would find no room for its answer is refused before it runs.
    let response = c
        .call(&header_with(
            vec![
                locate_page(Some(21_600), None),
                (operation::CREATE, create_aes(256, vec![])),
            ],
            true,
        ))
        .await
        .unwrap();
    assert!(ttlv::encode(&response).len() <= MAX_RESPONSE_LEN);
    let out = batch_items(&response);
    assert_eq!(uids(payload(out[0]).unwrap()).len(), 21_600);
    assert_eq!(reason(out[1]), Some(result_reason::RESPONSE_TOO_LARGE));
    assert!(
        client::message(out[1])
            .unwrap()
            .contains("nothing was changed")
    );
    let response = c
        .call(&request(V14, vec![locate_page(Some(0), None)]))
        .await
        .unwrap();
    assert_eq!(
        payload(batch_items(&response)[0])
            .and_then(|p| p.child(tag::LOCATED_ITEMS))
            .and_then(Item::as_int),
        Some(i32::try_from(BULK_KEYS).unwrap()),
        "no key was created"
    );

    // The client's own Maximum Response Size is honoured too.
    let mut small = request(V14, vec![locate_page(Some(200), None)]);
    if let shadowkeep_server::ttlv::Value::Structure(children) = &mut small.value
        && let shadowkeep_server::ttlv::Value::Structure(header) = &mut children[0].value
    {
        header.insert(1, Item::integer(tag::MAXIMUM_RESPONSE_SIZE, 4096));
    }
    let response = c.call(&small).await.unwrap();
    assert_eq!(
        reason(batch_items(&response)[0]),
        Some(result_reason::RESPONSE_TOO_LARGE)
    );
}

#[tokio::test]
async fn echoed_fields_are_bounded() {
    let server = Server::start("echoes", 60);
    let mut c = server.client().await;
    // A Unique Identifier of 100 KiB is named in the error only in part.
    let response = c
        .call(&request(
            V12,
            vec![(
                operation::GET,
                vec![Item::text(tag::UNIQUE_IDENTIFIER, "U".repeat(100 * 1024))],
            )],
        ))
        .await
        .unwrap();
    let out = batch_items(&response);
    assert_eq!(reason(out[0]), Some(result_reason::ITEM_NOT_FOUND));
    assert!(client::message(out[0]).unwrap().len() <= 1024);

    // A Unique Batch Item ID longer than 64 bytes is refused, not echoed.
    let mut message = request(V12, vec![(operation::DISCOVER_VERSIONS, vec![])]);
    if let shadowkeep_server::ttlv::Value::Structure(children) = &mut message.value
        && let shadowkeep_server::ttlv::Value::Structure(item) = &mut children[1].value
    {
        item.insert(1, Item::bytes(tag::UNIQUE_BATCH_ITEM_ID, vec![7; 65]));
    }
    let response = c.call(&message).await.unwrap();
    let out = batch_items(&response);
    assert_eq!(reason(out[0]), Some(result_reason::INVALID_MESSAGE));
    assert!(
        client::message(out[0])
            .unwrap()
            .contains("Unique Batch Item ID"),
        "{response:?}"
    );
    assert!(out[0].child(tag::UNIQUE_BATCH_ITEM_ID).is_none());
}
