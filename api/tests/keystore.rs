//! Properties of the keystore: merge is a join (commutative, associative, idempotent) that
//! never loses an id, the digest tells contents apart exactly, the serialisation round-trips,
//! conflicts overwrite nothing, and sealed material opens only with its KEK and id.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use jiff::Timestamp;
use proptest::prelude::*;
use shadowkeep_api::keystore::{
    Algorithm, AttributeValue, FORMAT_VERSION, Kek, Key, KeyId, KeyState, Keystore, KeystoreError,
    SealError,
};

/// The keys replicas may hold: fixed identities and material, so that two stores built from
/// them never conflict and differ only in which keys they hold and how far each has moved.
static UNIVERSE: LazyLock<(Kek, Vec<Key>)> = LazyLock::new(|| {
    let kek = Kek::generate();
    let keys = (0..12)
        .map(|i| {
            let created = Timestamp::from_second(1_700_000_000 + i).unwrap();
            let length = if i % 3 == 0 { 128 } else { 256 };
            Key::generate(&kek, format!("TAPE{i:04}"), Algorithm::Aes, length, created).unwrap()
        })
        .collect();
    (kek, keys)
});

fn state() -> impl Strategy<Value = KeyState> {
    prop_oneof![
        Just(KeyState::PreActive),
        Just(KeyState::Active),
        Just(KeyState::Deactivated),
        Just(KeyState::Compromised),
        Just(KeyState::Destroyed),
    ]
}

fn attributes() -> impl Strategy<Value = BTreeMap<String, AttributeValue>> {
    prop::collection::btree_map(
        prop::sample::select(vec![
            "x-Barcode",
            "x-Pool",
            "ApplicationSpecificInformation",
        ]),
        (
            0i64..4,
            prop::option::of(prop::sample::select(vec!["A", "B", "C"])),
        ),
        0..3,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(k, (t, v))| {
                let value = AttributeValue {
                    updated_at_ms: t,
                    value: v.map(str::to_owned),
                };
                (k.to_owned(), value)
            })
            .collect()
    })
}

/// A keystore holding some keys of the universe, each in some state with some attributes.
fn keystore() -> impl Strategy<Value = Keystore> {
    prop::collection::vec((0..UNIVERSE.1.len(), state(), attributes()), 0..8).prop_map(|entries| {
        let mut store = Keystore::new();
        for (i, state, attributes) in entries {
            let mut key = UNIVERSE.1[i].clone();
            key.state = state;
            key.attributes = attributes;
            store.insert(key).unwrap();
        }
        store
    })
}

fn merged(a: &Keystore, b: &Keystore) -> Keystore {
    let mut out = a.clone();
    let report = out.merge(b).unwrap();
    assert!(report.conflicts.is_empty());
    out
}

fn ids(store: &Keystore) -> BTreeSet<KeyId> {
    store.ids().cloned().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn merge_is_commutative(a in keystore(), b in keystore()) {
        let ab = merged(&a, &b);
        let ba = merged(&b, &a);
        prop_assert_eq!(&ab, &ba);
        prop_assert_eq!(ab.digest().unwrap(), ba.digest().unwrap());
    }

    #[test]
    fn merge_is_associative(a in keystore(), b in keystore(), c in keystore()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn merge_is_idempotent(a in keystore(), b in keystore()) {
        let mut again = a.clone();
        let report = again.merge(&a).unwrap();
        prop_assert!(!report.changed());
        prop_assert_eq!(&again, &a);
        let ab = merged(&a, &b);
        prop_assert_eq!(merged(&ab, &b), ab);
    }

    #[test]
    fn merge_never_loses_an_id_or_moves_a_key_back(a in keystore(), b in keystore()) {
        let ab = merged(&a, &b);
        let union: BTreeSet<KeyId> = ids(&a).union(&ids(&b)).cloned().collect();
        prop_assert_eq!(ids(&ab), union);
        for side in [&a, &b] {
            for key in side.keys() {
                let now = ab.get(&key.id).unwrap();
                prop_assert!(now.same_key(key));
                prop_assert!(now.state >= key.state);
                for (name, value) in &key.attributes {
                    prop_assert!(now.attributes[name] >= *value);
                }
            }
        }
    }

    #[test]
    fn delta_brings_the_other_side_level(a in keystore(), b in keystore()) {
        let mut b_caught_up = b.clone();
        b_caught_up.merge(&a.delta_for(&b)).unwrap();
        prop_assert_eq!(b_caught_up, merged(&b, &a));
        prop_assert!(a.delta_for(&merged(&a, &b)).is_empty());
    }

    #[test]
    fn digest_is_equal_exactly_when_contents_are(a in keystore(), b in keystore()) {
        prop_assert_eq!(a.digest().unwrap() == b.digest().unwrap(), a == b);
    }

    #[test]
    fn serialisation_round_trips(a in keystore()) {
        let bytes = a.to_bytes().unwrap();
        let back = Keystore::from_bytes(&bytes).unwrap();
        prop_assert_eq!(back.digest().unwrap(), a.digest().unwrap());
        prop_assert_eq!(back, a);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Keystore::from_bytes(&bytes);
    }

    #[test]
    fn a_changed_byte_changes_the_digest_or_fails_to_decode(a in keystore(), at in any::<prop::sample::Index>(), flip in 1u8..) {
        let mut bytes = a.to_bytes().unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        if let Ok(changed) = Keystore::from_bytes(&bytes) {
            // JSON may accept the change (a letter in a name): then it is a different store.
            prop_assert_ne!(changed.digest().unwrap(), a.digest().unwrap());
        }
    }
}

#[test]
fn a_single_attribute_change_changes_the_digest() {
    let mut store = Keystore::new();
    let key = UNIVERSE.1[0].clone();
    store.insert(key.clone()).unwrap();
    let before = store.digest().unwrap();
    let mut newer = key;
    newer.attributes.insert(
        "x-Pool".to_owned(),
        AttributeValue {
            updated_at_ms: 1,
            value: Some("scratch".to_owned()),
        },
    );
    let report = store.insert(newer).unwrap();
    assert_eq!(report.updated.len(), 1);
    assert_ne!(store.digest().unwrap(), before);
    assert!(before.to_string().starts_with("sha256:"));
}

#[test]
fn same_id_with_other_material_is_a_conflict_that_overwrites_nothing() {
    let (kek, keys) = &*UNIVERSE;
    let ours = keys[1].clone();
    let mut theirs =
        Key::generate(kek, "IMPOSTOR", Algorithm::Aes, 256, Timestamp::UNIX_EPOCH).unwrap();
    theirs.id = ours.id.clone();

    let mut store = Keystore::new();
    store.insert(ours.clone()).unwrap();
    let mut other = Keystore::new();
    other.insert(theirs.clone()).unwrap();
    other.insert(keys[2].clone()).unwrap();

    let report = store.merge(&other).unwrap();
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.added, vec![keys[2].id.clone()]);
    let message = report.conflicts[0].to_string();
    assert!(
        message.contains(ours.id.as_str()) && message.contains("IMPOSTOR"),
        "{message}"
    );
    // The key already held is untouched; the other record is kept aside, not dropped.
    assert_eq!(store.get(&ours.id), Some(&ours));
    assert_eq!(store.quarantined().unwrap(), vec![theirs]);
    assert_eq!(store.len(), 2);
    // Seeing the same conflict again reports nothing new and changes nothing.
    let before = store.digest().unwrap();
    assert!(!store.merge(&other).unwrap().changed());
    assert_eq!(store.digest().unwrap(), before);
    // The quarantine survives serialisation.
    assert_eq!(
        Keystore::from_bytes(&store.to_bytes().unwrap()).unwrap(),
        store
    );
}

#[test]
fn sealed_material_opens_only_with_its_kek_and_id() {
    let (kek, keys) = &*UNIVERSE;
    let key = &keys[0];
    let material = kek.open(&key.id, &key.material).unwrap();
    assert_eq!(material.len(), usize::from(key.length / 8));

    let other = Kek::generate();
    let err = other.open(&key.id, &key.material).unwrap_err();
    assert!(matches!(err, SealError::Open { .. }));
    let text = err.to_string();
    assert!(
        text.contains(kek.fingerprint()) && text.contains(other.fingerprint()),
        "{text}"
    );

    // Material moved onto another key's record does not open.
    assert!(kek.open(&keys[1].id, &key.material).is_err());

    // Every single-bit change of the ciphertext is detected.
    for i in 0..key.material.ciphertext.len() {
        let mut tampered = key.material.clone();
        tampered.ciphertext[i] ^= 0x01;
        assert!(kek.open(&key.id, &tampered).is_err(), "byte {i}");
    }
    let mut short_nonce = key.material.clone();
    short_nonce.nonce.pop();
    assert!(kek.open(&key.id, &short_nonce).is_err());
}

#[test]
fn kek_and_material_never_print_their_secrets() {
    let (kek, keys) = &*UNIVERSE;
    let shown = format!("{kek:?} {:?}", keys[0]);
    let raw = hex_of(kek.as_bytes());
    assert!(!shown.contains(&raw));
    let plain = kek.open(&keys[0].id, &keys[0].material).unwrap();
    assert!(!shown.contains(&hex_of(&plain)));
    assert!(!shown.contains(&format!("{:?}", &keys[0].material.ciphertext)));
}

fn hex_of(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[test]
fn kek_must_be_32_bytes() {
    assert_eq!(
        Kek::from_bytes(&[0; 16]).unwrap_err(),
        SealError::KekLength { len: 16 }
    );
    let kek = Kek::generate();
    let again = Kek::from_bytes(kek.as_bytes()).unwrap();
    assert_eq!(again.fingerprint(), kek.fingerprint());
}

#[test]
fn decoding_refuses_newer_formats_duplicates_and_bad_ids() {
    let newer = format!(r#"{{"format":{},"keys":[]}}"#, FORMAT_VERSION + 1);
    assert_eq!(
        Keystore::from_bytes(newer.as_bytes()).unwrap_err(),
        KeystoreError::UnsupportedFormat {
            found: FORMAT_VERSION + 1
        }
    );
    let mut store = Keystore::new();
    store.insert(UNIVERSE.1[0].clone()).unwrap();
    let text = String::from_utf8(store.to_bytes().unwrap()).unwrap();
    let key_json = &text[text.find("[{").unwrap() + 1..=text.find("}],").unwrap()];
    let doubled = text.replacen(key_json, &format!("{key_json},{key_json}"), 1);
    assert!(matches!(
        Keystore::from_bytes(doubled.as_bytes()).unwrap_err(),
        KeystoreError::DuplicateId { .. }
    ));
    let bad_id = text.replacen(UNIVERSE.1[0].id.as_str(), "has space", 1);
    let err = Keystore::from_bytes(bad_id.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("invalid key id"), "{err}");
    let unknown = text.replacen("\"format\"", "\"extra\":1,\"format\"", 1);
    assert!(Keystore::from_bytes(unknown.as_bytes()).is_err());
}

#[test]
fn key_lengths_follow_the_cipher() {
    let (kek, _) = &*UNIVERSE;
    let err = Key::generate(kek, "k", Algorithm::Aes, 512, Timestamp::UNIX_EPOCH).unwrap_err();
    assert_eq!(err.to_string(), "invalid key length 512 for Aes");
    for bits in [128, 192, 256] {
        let key = Key::generate(kek, "k", Algorithm::Aes, bits, Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(
            kek.open(&key.id, &key.material).unwrap().len(),
            usize::from(bits / 8)
        );
        assert_eq!(key.state, KeyState::PreActive);
    }
}
