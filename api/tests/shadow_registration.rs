//! A replica's decision on a shadow registration: every refusal of issue #8's list with its
//! reason code, the right pair accepted, old and new passwords overlapping until the old one's
//! not-after, bounded decoding of the wire types, and no password in any text.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use argon2::Params;
use jiff::Timestamp;
use proptest::prelude::*;
use shadowkeep_api::license::{License, LicenseSigner};
use shadowkeep_api::password::Password;
use shadowkeep_api::shadow::registration::{
    AcceptedVerifier, DecodeError, MAX_LICENCE_CHARS, MAX_REQUEST_BYTES, PasswordText, Refusal,
    RefusalCode, Registered, Registrar, RegistrationReply, ShadowRegistration,
};
use uuid::Uuid;

const SERVER: &str = "tape-eu1";
const SHADOW: &str = "dr-site";

/// Cheap Argon2 parameters: the rules are about which verifier matches, not the hash cost.
fn light() -> Params {
    Params::new(8, 1, 1, None).unwrap()
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_790_000_000 + secs).unwrap()
}

struct Fixture {
    signer: LicenseSigner,
    password: Password,
    old_password: Password,
    licence: String,
    verifier: String,
    old_verifier: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let signer = LicenseSigner::generate();
    let password = Password::generate();
    let old_password = Password::generate();
    let verifier = password.verifier_with(light()).unwrap();
    let old_verifier = old_password.verifier_with(light()).unwrap();
    let licence = signer
        .sign(&License::shadow(SERVER, SHADOW, verifier.clone(), t(0)))
        .unwrap();
    Fixture {
        signer,
        password,
        old_password,
        licence,
        verifier,
        old_verifier,
    }
});

fn request(licence: &str, password: &Password) -> ShadowRegistration {
    ShadowRegistration {
        licence: licence.to_owned(),
        password: PasswordText::new(password),
        instance_id: Uuid::from_u128(7),
    }
}

fn accepted(verifiers: Vec<AcceptedVerifier>) -> BTreeMap<String, Vec<AcceptedVerifier>> {
    BTreeMap::from([(SHADOW.to_owned(), verifiers)])
}

fn current() -> Vec<AcceptedVerifier> {
    vec![AcceptedVerifier {
        verifier: FIXTURE.verifier.clone(),
        not_after: None,
        id: None,
    }]
}

/// Decides `request` as presented by `presenter` at `now` with the fixture's KeyManager.
fn decide(
    request: &ShadowRegistration,
    presenter: &str,
    verifiers: Vec<AcceptedVerifier>,
    now: Timestamp,
) -> Result<Registered, Refusal> {
    let key = FIXTURE.signer.verifier();
    let accepted = accepted(verifiers);
    let registrar = Registrar {
        server_id: SERVER,
        licence_verifier: &key,
        accepted: &accepted,
    };
    let decision = registrar.decide(request, presenter, now);
    if let Err(refusal) = &decision {
        // Whatever the refusal, its text and its reply never hold the password.
        let secret = request_password(request);
        let reply = serde_json::to_string(&RegistrationReply::from(&decision)).unwrap();
        assert!(!refusal.to_string().contains(&secret));
        assert!(!format!("{refusal:?}").contains(&secret));
        assert!(!reply.contains(&secret));
        assert!(reply.contains(refusal.code().as_str()));
    }
    decision
}

fn request_password(request: &ShadowRegistration) -> String {
    let json = serde_json::to_value(request).unwrap();
    json["password"].as_str().unwrap().to_owned()
}

fn code(decision: Result<Registered, Refusal>) -> RefusalCode {
    decision.unwrap_err().code()
}

#[test]
fn the_right_licence_and_password_register() {
    let f = &*FIXTURE;
    let registered = decide(&request(&f.licence, &f.password), SHADOW, current(), t(5)).unwrap();
    assert_eq!(
        registered,
        Registered {
            shadow: SHADOW.to_owned(),
            verifier_index: 0,
            verifier_not_after: None,
            verifier_id: None,
            licence_issued_at: t(0),
        }
    );
    assert_eq!(
        RegistrationReply::from(&Ok(registered)),
        RegistrationReply::Registered {
            shadow: SHADOW.to_owned(),
            verifier_not_after: None,
            licence_issued_at: t(0),
        }
    );
}

#[test]
fn a_wrong_password_is_refused() {
    let f = &*FIXTURE;
    let wrong = Password::generate();
    let refusal = decide(&request(&f.licence, &wrong), SHADOW, current(), t(5)).unwrap_err();
    assert_eq!(refusal.code(), RefusalCode::PasswordWrong);
    assert_eq!(
        refusal.to_string(),
        "shadow registration refused (password-wrong): the password is not one accepted for this shadow"
    );
    // A password too weak to have been issued is simply wrong, with nothing said about it.
    let weak = ShadowRegistration {
        password: serde_json::from_str("\"Sassafras\"").unwrap(),
        ..request(&f.licence, &f.password)
    };
    assert_eq!(
        code(decide(&weak, SHADOW, current(), t(5))),
        RefusalCode::PasswordWrong
    );
}

#[test]
fn a_licence_signed_by_another_key_manager_is_refused() {
    let f = &*FIXTURE;
    let other = LicenseSigner::generate()
        .sign(&License::shadow(SERVER, SHADOW, f.verifier.clone(), t(0)))
        .unwrap();
    assert_eq!(
        code(decide(
            &request(&other, &f.password),
            SHADOW,
            current(),
            t(5)
        )),
        RefusalCode::LicenceBadSignature
    );
}

#[test]
fn a_licence_for_another_server_id_is_refused() {
    let f = &*FIXTURE;
    let other = f
        .signer
        .sign(&License::shadow(
            "tape-us1",
            SHADOW,
            f.verifier.clone(),
            t(0),
        ))
        .unwrap();
    let refusal = decide(&request(&other, &f.password), SHADOW, current(), t(5)).unwrap_err();
    assert_eq!(refusal.code(), RefusalCode::LicenceOtherServer);
    assert!(refusal.to_string().contains("tape-us1"), "{refusal}");
}

#[test]
fn a_replica_licence_is_not_a_shadow_licence() {
    let f = &*FIXTURE;
    let primary = f.signer.sign(&License::primary(SERVER, t(0))).unwrap();
    assert_eq!(
        code(decide(
            &request(&primary, &f.password),
            SHADOW,
            current(),
            t(5)
        )),
        RefusalCode::LicenceNotShadow
    );
}

#[test]
fn a_licence_shown_with_another_shadows_certificate_is_refused() {
    let f = &*FIXTURE;
    // The copy comes with the right password, and the other shadow is known: still refused.
    let mut verifiers = accepted(current());
    verifiers.insert("branch".to_owned(), current());
    let key = f.signer.verifier();
    let registrar = Registrar {
        server_id: SERVER,
        licence_verifier: &key,
        accepted: &verifiers,
    };
    let refusal = registrar
        .decide(&request(&f.licence, &f.password), "branch", t(5))
        .unwrap_err();
    assert_eq!(refusal.code(), RefusalCode::IdentityMismatch);
    assert!(refusal.to_string().contains("\"branch\""), "{refusal}");
}

#[test]
fn a_shadow_with_no_accepted_verifier_is_unknown() {
    let f = &*FIXTURE;
    assert_eq!(
        code(decide(
            &request(&f.licence, &f.password),
            SHADOW,
            vec![],
            t(5)
        )),
        RefusalCode::UnknownShadow
    );
}

#[test]
fn an_expired_verifier_is_refused_as_expired() {
    let f = &*FIXTURE;
    let expired = vec![AcceptedVerifier {
        verifier: f.verifier.clone(),
        not_after: Some(t(10)),
        id: None,
    }];
    let refusal = decide(&request(&f.licence, &f.password), SHADOW, expired, t(11)).unwrap_err();
    assert_eq!(refusal, Refusal::VerifierExpired { not_after: t(10) });
    assert_eq!(
        RegistrationReply::from(&Err(refusal)),
        RegistrationReply::Refused {
            reason: RefusalCode::VerifierExpired,
            message: format!(
                "shadow registration refused (verifier-expired): the password was accepted until {}; the shadow needs its new one",
                t(10)
            ),
        }
    );
}

#[test]
fn old_and_new_passwords_overlap_until_the_old_ones_not_after() {
    let f = &*FIXTURE;
    let overlap = || {
        vec![
            AcceptedVerifier {
                verifier: f.old_verifier.clone(),
                not_after: Some(t(100)),
                id: None,
            },
            AcceptedVerifier {
                verifier: f.verifier.clone(),
                not_after: None,
                id: None,
            },
        ]
    };
    let old = request(&f.licence, &f.old_password);
    let new = request(&f.licence, &f.password);
    for now in [t(1), t(100)] {
        let by_old = decide(&old, SHADOW, overlap(), now).unwrap();
        assert_eq!(
            (by_old.verifier_index, by_old.verifier_not_after),
            (0, Some(t(100)))
        );
        assert_eq!(
            decide(&new, SHADOW, overlap(), now).unwrap().verifier_index,
            1
        );
    }
    assert_eq!(
        code(decide(&old, SHADOW, overlap(), t(101))),
        RefusalCode::VerifierExpired
    );
    assert_eq!(
        decide(&new, SHADOW, overlap(), t(101))
            .unwrap()
            .verifier_index,
        1
    );
}

#[test]
fn the_wire_types_round_trip() {
    let f = &*FIXTURE;
    let req = request(&f.licence, &f.password);
    let json = serde_json::to_vec(&req).unwrap();
    assert_eq!(ShadowRegistration::from_json(&json).unwrap(), req);
    assert!(!format!("{req:?}").contains(f.password.expose()));
    for reply in [
        RegistrationReply::from(&decide(&req, SHADOW, current(), t(5))),
        RegistrationReply::from(&decide(&req, "branch", current(), t(5))),
    ] {
        let json = serde_json::to_vec(&reply).unwrap();
        assert_eq!(RegistrationReply::from_json(&json).unwrap(), reply);
    }
}

#[test]
fn oversized_and_malformed_bodies_are_refused_by_field_without_values() {
    let f = &*FIXTURE;
    let secret = f.password.expose();
    let big = vec![b' '; MAX_REQUEST_BYTES + 1];
    assert_eq!(
        ShadowRegistration::from_json(&big).unwrap_err(),
        DecodeError::TooLarge {
            len: MAX_REQUEST_BYTES + 1,
            max: MAX_REQUEST_BYTES
        }
    );
    let long = serde_json::json!({
        "licence": "x".repeat(MAX_LICENCE_CHARS + 1),
        "password": secret,
        "instanceId": Uuid::from_u128(1),
    });
    assert_eq!(
        ShadowRegistration::from_json(&serde_json::to_vec(&long).unwrap()).unwrap_err(),
        DecodeError::FieldTooLong {
            field: "licence",
            len: MAX_LICENCE_CHARS + 1,
            max: MAX_LICENCE_CHARS
        }
    );
    // The password put where the instance id belongs: the error names the field, not the value.
    let misplaced = serde_json::json!({
        "licence": f.licence,
        "password": secret,
        "instanceId": secret,
    });
    let err = ShadowRegistration::from_json(&serde_json::to_vec(&misplaced).unwrap()).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Malformed { path, .. } if path == "instanceId"),
        "{err}"
    );
    assert!(!err.to_string().contains(secret), "{err}");
    let unknown = br#"{"licence":"x","password":"y","instanceId":"00000000-0000-0000-0000-000000000001","shadow":"z"}"#;
    let err = ShadowRegistration::from_json(unknown).unwrap_err();
    assert!(err.to_string().contains("wrongly typed field"), "{err}");
    for bad in [&b"{"[..], b"[]", b"null", b"{} {}", b"\xff"] {
        assert!(matches!(
            ShadowRegistration::from_json(bad),
            Err(DecodeError::Malformed { .. })
        ));
    }
    let refused_unknown_reason = br#"{"outcome":"refused","reason":"tired","message":"no"}"#;
    assert!(RegistrationReply::from_json(refused_unknown_reason).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any changed byte of the licence is refused as a licence problem, however the change
    /// lands (the body, the signature or the framing), before the password is looked at.
    #[test]
    fn any_changed_byte_of_the_licence_is_refused(
        at in any::<prop::sample::Index>(),
        with in prop::sample::select(b"ABCXYZabcxyz0189-_.=+/ ".to_vec()),
    ) {
        let f = &*FIXTURE;
        let mut bytes = f.licence.clone().into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != with);
        // Whitespace at either end is trimmed by the licence reader, so it changes nothing.
        prop_assume!(!(with == b' ' && (i == 0 || i == bytes.len() - 1)));
        bytes[i] = with;
        let text = String::from_utf8(bytes).unwrap();
        let refused = code(decide(&request(&text, &f.password), SHADOW, current(), t(5)));
        prop_assert!(
            matches!(refused, RefusalCode::LicenceInvalid | RefusalCode::LicenceBadSignature),
            "{}", refused
        );
    }

    /// Arbitrary bytes never panic the decoders.
    #[test]
    fn arbitrary_bodies_decode_or_fail_cleanly(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ShadowRegistration::from_json(&body);
        let _ = RegistrationReply::from_json(&body);
    }
}
