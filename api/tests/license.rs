//! Properties of licenses and shadow passwords: a license verifies only unchanged, under its
//! own signer, for the server and shadow it names; passwords are strong or refused, and
//! never shown.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::sync::LazyLock;

use argon2::Params;
use jiff::Timestamp;
use proptest::prelude::*;
use shadowkeep_api::license::{Expected, License, LicenseError, LicenseSigner, Role};
use shadowkeep_api::password::{GENERATED_LEN, MIN_LEN, Password, PasswordError};

/// Cheap Argon2 parameters: the property is about the license, not the hash cost.
fn light() -> Params {
    Params::new(8, 1, 1, None).unwrap()
}

struct Fixture {
    signer: LicenseSigner,
    password: Password,
    shadow: String,
    primary: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let signer = LicenseSigner::generate();
    let password = Password::generate();
    let verifier = password.verifier_with(light()).unwrap();
    let issued = Timestamp::from_second(1_790_000_000).unwrap();
    let shadow = signer
        .sign(&License::shadow("tape-eu1", "dr-site", verifier, issued))
        .unwrap();
    let primary = signer.sign(&License::primary("tape-eu1", issued)).unwrap();
    Fixture {
        signer,
        password,
        shadow,
        primary,
    }
});

const SHADOW: Expected<'static> = Expected {
    server_id: "tape-eu1",
    role: Role::Shadow,
    shadow_name: Some("dr-site"),
};

#[test]
fn a_license_verifies_for_what_it_names() {
    let f = &*FIXTURE;
    let verifier = f.signer.verifier();
    let license = verifier.verify(&f.shadow, SHADOW).unwrap();
    assert_eq!(license.shadow_name.as_deref(), Some("dr-site"));
    license.check_password(&f.password).unwrap();
    let primary = Expected {
        server_id: "tape-eu1",
        role: Role::Primary,
        shadow_name: None,
    };
    assert_eq!(
        verifier.verify(&f.primary, primary).unwrap().role,
        Role::Primary
    );
}

#[test]
fn another_shadows_name_server_or_role_is_rejected() {
    let f = &*FIXTURE;
    let verifier = f.signer.verifier();
    let other_shadow = Expected {
        shadow_name: Some("branch-office"),
        ..SHADOW
    };
    assert_eq!(
        verifier.verify(&f.shadow, other_shadow).unwrap_err(),
        LicenseError::WrongHolder {
            found: "shadow \"dr-site\"".to_owned(),
            expected: "shadow \"branch-office\"".to_owned(),
        }
    );
    let other_server = Expected {
        server_id: "tape-us1",
        ..SHADOW
    };
    assert!(matches!(
        verifier.verify(&f.shadow, other_server),
        Err(LicenseError::WrongServer { .. })
    ));
    // A primary's license does not make a shadow, nor the reverse.
    assert!(matches!(
        verifier.verify(&f.primary, SHADOW),
        Err(LicenseError::WrongHolder { .. })
    ));
}

#[test]
fn another_signer_is_rejected() {
    let f = &*FIXTURE;
    let stranger = LicenseSigner::generate();
    assert_eq!(
        stranger.verifier().verify(&f.shadow, SHADOW).unwrap_err(),
        LicenseError::BadSignature
    );
    // A license the stranger signs itself, naming our server, is just as useless to us.
    let forged = stranger
        .sign(&License::primary("tape-eu1", Timestamp::UNIX_EPOCH))
        .unwrap();
    let primary = Expected {
        server_id: "tape-eu1",
        role: Role::Primary,
        shadow_name: None,
    };
    assert_eq!(
        f.signer.verifier().verify(&forged, primary).unwrap_err(),
        LicenseError::BadSignature
    );
}

#[test]
fn the_wrong_password_is_rejected() {
    let f = &*FIXTURE;
    let license = f.signer.verifier().verify(&f.shadow, SHADOW).unwrap();
    assert_eq!(
        license.check_password(&Password::generate()).unwrap_err(),
        LicenseError::WrongPassword
    );
}

#[test]
fn signer_and_verifier_survive_their_byte_forms() {
    let f = &*FIXTURE;
    let again = LicenseSigner::from_seed(&*f.signer.seed()).unwrap();
    assert_eq!(again.verifier(), f.signer.verifier());
    let verifier =
        shadowkeep_api::license::LicenseVerifier::from_bytes(&f.signer.verifier().to_bytes())
            .unwrap();
    verifier.verify(&f.shadow, SHADOW).unwrap();
    assert!(LicenseSigner::from_seed(&[0; 31]).is_err());
}

#[test]
fn licenses_of_the_wrong_shape_are_not_signed() {
    let mut license = License::primary("tape-eu1", Timestamp::UNIX_EPOCH);
    license.shadow_name = Some("dr".to_owned());
    assert!(matches!(
        FIXTURE.signer.sign(&license),
        Err(LicenseError::Malformed(_))
    ));
}

/// Characters a license text is made of, and a few it is not.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_changed_byte_is_rejected(at in any::<prop::sample::Index>(), with in prop::sample::select(ALPHABET)) {
        let f = &*FIXTURE;
        let mut bytes = f.shadow.clone().into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != with);
        bytes[i] = with;
        let text = String::from_utf8(bytes).unwrap();
        prop_assert!(f.signer.verifier().verify(&text, SHADOW).is_err());
    }

    #[test]
    fn arbitrary_text_is_rejected_without_panic(text in ".{0,300}") {
        prop_assert!(FIXTURE.signer.verifier().verify(&text, SHADOW).is_err());
    }

    #[test]
    fn short_passwords_are_refused(candidate in ".{0,15}") {
        let refused = Password::parse(&candidate).unwrap_err();
        let expected = matches!(refused, PasswordError::TooShort { .. } | PasswordError::WellKnown);
        prop_assert!(expected, "{:?}", refused);
    }

    #[test]
    fn refusals_never_repeat_the_password(candidate in "[a-zA-Z0-9]{4,40}") {
        if let Err(e) = Password::parse(&candidate) {
            prop_assert!(!e.to_string().contains(&candidate));
        }
    }

    #[test]
    fn well_known_defaults_are_refused_in_any_dress(
        word in prop::sample::select(vec!["Sassafras", "password", "KeyServer", "changeme", "admin"]),
        upper in any::<bool>(),
        suffix in "[!0-9]{0,8}",
    ) {
        let word = if upper { word.to_uppercase() } else { word.to_owned() };
        let candidate = format!("{word}{suffix}");
        prop_assert!(Password::parse(&candidate).is_err(), "{}", candidate);
        let doubled = format!("{word}-{word}-{suffix}");
        prop_assert!(Password::parse(&doubled).is_err(), "{}", doubled);
    }
}

#[test]
fn sassafras_is_refused_as_a_default() {
    assert_eq!(
        Password::parse("Sassafras").unwrap_err(),
        PasswordError::WellKnown
    );
    assert_eq!(
        Password::parse("Sassafras2026!!!!").unwrap_err(),
        PasswordError::WellKnown
    );
    assert_eq!(
        Password::parse("aaaaaaaabbbbbbbb").unwrap_err(),
        PasswordError::Repetitive { distinct: 2 }
    );
    assert!(Password::parse("correct horse battery staple").is_ok());
}

#[test]
fn generated_passwords_carry_at_least_128_bits_and_are_accepted() {
    let bits = f64::from(u32::try_from(GENERATED_LEN).unwrap()) * 62f64.log2();
    assert!(bits >= 128.0, "{bits}");
    const { assert!(GENERATED_LEN >= MIN_LEN) };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        let p = Password::generate();
        assert_eq!(p.expose().len(), GENERATED_LEN);
        assert!(p.expose().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(Password::parse(p.expose()).is_ok());
        assert!(seen.insert(p.expose().to_owned()));
    }
}

#[test]
fn passwords_never_print_and_verify_only_themselves() {
    let p = Password::generate();
    assert_eq!(format!("{p:?}"), "Password(<redacted>)");
    let verifier = p.verifier_with(light()).unwrap();
    assert!(verifier.starts_with("$argon2id$"));
    assert!(!verifier.contains(p.expose()));
    assert!(p.matches(&verifier));
    assert!(!Password::generate().matches(&verifier));
    assert!(!p.matches("not a verifier"));
    // The standard cost is what production uses; one hash keeps it honest.
    assert!(p.matches(&p.verifier().unwrap()));
}
