//! A replica's register of its shadows: who registered (licence, certificate identity and
//! password, judged by `Registrar::decide`), from where, with which instance id, and what
//! each last reported. It answers a shadow's polls with the configuration the shadow mirrors
//! (drive table, key groups, siblings), and gives the Shadows window and the hint list.
//!
//! Nothing here is persisted: a replica that restarts forgets its shadows, and each
//! registers again at its next poll (the replica answers `not-registered`).
//!
//! The accepted verifiers can be replaced while the replica runs (the verifiers file). A
//! registration stands only while the verifier its password matched is accepted and not
//! past its not-after: once it is not, the shadow is dropped, when the new set is taken or
//! at its next poll, and must register again with what it holds.
//!
//! [`PeerSightings`] does the same for the replica's peers: two instance ids calling as one
//! replica name are two running servers with one server id and ordinal.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use jiff::Timestamp;
use shadowkeep_api::license::LicenseVerifier;
use shadowkeep_api::server_config::DrivePolicy;
use shadowkeep_api::shadow::registration::{
    AcceptedVerifier, Refusal, Registered, Registrar, ShadowRegistration,
};
use shadowkeep_api::shadow::wire::{
    Duplicate, DuplicateKind, HintsReply, MAX_HINTS, RegisteredShadow, ShadowReport, ShadowView,
    ShadowsReply, SiblingAddress, VerifierLabel,
};

/// Accepted verifiers, by shadow name.
pub type Accepted = BTreeMap<String, Vec<AcceptedVerifier>>;

/// Registered shadows and what is needed to judge new registrations.
#[derive(Debug)]
pub struct Registry {
    server_id: String,
    verifier: LicenseVerifier,
    /// Swapped whole when the verifiers file changes; judges take a snapshot.
    accepted: RwLock<Arc<Accepted>>,
    /// The drive policy shadows mirror: swapped whole when the configuration changes.
    drives: RwLock<Arc<DrivePolicy>>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    shadows: BTreeMap<String, Entry>,
    duplicates: BTreeMap<String, Duplicate>,
}

#[derive(Clone, Debug)]
struct Entry {
    instance_id: uuid::Uuid,
    address: IpAddr,
    registered_at: Timestamp,
    last_seen: Option<Timestamp>,
    report: Option<ShadowReport>,
    /// The PHC string the password matched: the registration stands while it is accepted.
    verifier: String,
    verifier_id: Option<String>,
    licence_issued_at: Timestamp,
}

/// A duplicate seen for the first time, for the caller to log.
#[derive(Clone, Debug)]
pub struct NewDuplicate(pub Duplicate);

impl Registry {
    /// A register for replicas of `server_id`, accepting `accepted` verifiers.
    pub fn new(
        server_id: &str,
        verifier: LicenseVerifier,
        accepted: Accepted,
        drives: DrivePolicy,
    ) -> Self {
        Self {
            server_id: server_id.to_owned(),
            verifier,
            accepted: RwLock::new(Arc::new(accepted)),
            drives: RwLock::new(Arc::new(drives)),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn accepted(&self) -> Arc<Accepted> {
        Arc::clone(
            &self
                .accepted
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the drive policy the shadows mirror, from their next poll on.
    pub fn set_drives(&self, drives: DrivePolicy) {
        *self
            .drives
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(drives);
    }

    /// Replaces the accepted verifiers and drops the registered shadows whose verifier is
    /// no longer accepted (or is past its not-after at `now`); returns their names.
    pub fn set_accepted(&self, accepted: Accepted, now: Timestamp) -> Vec<String> {
        *self
            .accepted
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(accepted);
        let accepted = self.accepted();
        let mut inner = self.inner();
        let mut dropped = Vec::new();
        inner.shadows.retain(|name, entry| {
            let stands = stands(&accepted, name, entry, now);
            if !stands {
                dropped.push(name.clone());
            }
            stands
        });
        dropped
    }

    /// The verifiers accepted now, by shadow: ids and not-afters, never a PHC string.
    pub fn accepted_labels(&self) -> BTreeMap<String, Vec<VerifierLabel>> {
        self.accepted()
            .iter()
            .map(|(name, list)| {
                let labels = list
                    .iter()
                    .map(|v| VerifierLabel {
                        id: v.id.clone(),
                        not_after: v.not_after,
                    })
                    .collect();
                (name.clone(), labels)
            })
            .collect()
    }

    /// The identity among `identities` to judge a registration by: the one the replica
    /// knows as a shadow, else the first (which the licence check then refuses).
    pub fn presenter<'a>(&self, identities: &'a [String]) -> Option<&'a str> {
        let accepted = self.accepted();
        identities
            .iter()
            .find(|id| accepted.contains_key(id.as_str()))
            .or_else(|| identities.first())
            .map(String::as_str)
    }

    /// Judges `request` from `presenter` at `address` (an Argon2 hash: call it off the
    /// async threads) and records an accepted shadow. A second instance id registering as
    /// one shadow is recorded as a duplicate and returned, and both go on.
    pub fn register(
        &self,
        request: &ShadowRegistration,
        presenter: &str,
        address: IpAddr,
        now: Timestamp,
    ) -> (Result<Registered, Refusal>, Option<NewDuplicate>) {
        let accepted = self.accepted();
        let registrar = Registrar {
            server_id: &self.server_id,
            licence_verifier: &self.verifier,
            accepted: &accepted,
        };
        let decision = registrar.decide(request, presenter, now);
        let Ok(registered) = &decision else {
            return (decision, None);
        };
        let matched = accepted
            .get(&registered.shadow)
            .and_then(|list| list.get(registered.verifier_index))
            .map(|v| v.verifier.clone())
            .unwrap_or_default();
        let mut inner = self.inner();
        let duplicate = inner
            .shadows
            .get(&registered.shadow)
            .filter(|old| old.instance_id != request.instance_id)
            .map(|old| Duplicate {
                kind: DuplicateKind::Shadow,
                name: registered.shadow.clone(),
                instance_ids: [old.instance_id, request.instance_id],
                addresses: [old.address, address],
                at: now,
            });
        inner.shadows.insert(
            registered.shadow.clone(),
            Entry {
                instance_id: request.instance_id,
                address,
                registered_at: now,
                last_seen: Some(now),
                report: None,
                verifier: matched,
                verifier_id: registered.verifier_id.clone(),
                licence_issued_at: registered.licence_issued_at,
            },
        );
        let new = duplicate.map(|d| record(&mut inner, d));
        (decision, new.flatten())
    }

    /// The registered shadow among `identities`, if any. A shadow whose verifier is no
    /// longer accepted at `now` is dropped here, so that its poll is answered
    /// `not-registered` and it registers again with what it holds; its name is returned as
    /// retired.
    pub fn registered(&self, identities: &[String], now: Timestamp) -> Registration {
        let accepted = self.accepted();
        let mut inner = self.inner();
        let Some(name) = identities
            .iter()
            .find(|id| inner.shadows.contains_key(id.as_str()))
            .cloned()
        else {
            return Registration::None;
        };
        let stands = inner
            .shadows
            .get(&name)
            .is_some_and(|entry| stands(&accepted, &name, entry, now));
        if stands {
            Registration::Registered(name)
        } else {
            inner.shadows.remove(&name);
            Registration::Retired(name)
        }
    }

    /// Takes a registered shadow's poll report and answers what it mirrors. A report from
    /// another instance id than the one registered is a duplicate, recorded and returned.
    pub fn report(
        &self,
        shadow: &str,
        report: ShadowReport,
        address: IpAddr,
        now: Timestamp,
    ) -> (ShadowView, Option<NewDuplicate>) {
        let mut inner = self.inner();
        let mut duplicate = None;
        if let Some(entry) = inner.shadows.get_mut(shadow) {
            if entry.instance_id == report.instance_id {
                entry.address = address;
                entry.last_seen = Some(now);
                entry.report = Some(report);
            } else {
                duplicate = Some(Duplicate {
                    kind: DuplicateKind::Shadow,
                    name: shadow.to_owned(),
                    instance_ids: [entry.instance_id, report.instance_id],
                    addresses: [entry.address, address],
                    at: now,
                });
            }
        }
        let siblings = inner
            .shadows
            .iter()
            .filter(|(name, _)| name.as_str() != shadow)
            .filter_map(|(name, e)| {
                let port = e.report.as_ref()?.admin_port;
                Some(SiblingAddress {
                    name: name.clone(),
                    address: SocketAddr::new(e.address, port).to_string(),
                })
            })
            .collect();
        let new = duplicate.and_then(|d| record(&mut inner, d));
        (
            ShadowView {
                drives: DrivePolicy::clone(
                    &self
                        .drives
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                ),
                siblings,
            },
            new,
        )
    }

    /// The Shadows window.
    pub fn list(&self) -> ShadowsReply {
        let inner = self.inner();
        ShadowsReply {
            shadows: inner
                .shadows
                .iter()
                .map(|(name, e)| RegisteredShadow {
                    name: name.clone(),
                    address: e.address,
                    kmip_address: e
                        .report
                        .as_ref()
                        .map(|r| SocketAddr::new(e.address, r.kmip_port)),
                    state: e.report.as_ref().map(|r| r.state),
                    last_synchronized: e.report.as_ref().and_then(|r| r.last_synchronized),
                    registered_at: e.registered_at,
                    licence_issued_at: e.licence_issued_at,
                    verifier_id: e.verifier_id.clone(),
                    last_seen: e.last_seen,
                })
                .collect(),
        }
    }

    /// The hint list: the shadows' KMIP addresses, by priority (higher first), at most
    /// [`MAX_HINTS`].
    pub fn hints(&self) -> HintsReply {
        let inner = self.inner();
        let mut known: Vec<(i32, &String, SocketAddr)> = inner
            .shadows
            .iter()
            .filter_map(|(name, e)| {
                let r = e.report.as_ref()?;
                Some((r.priority, name, SocketAddr::new(e.address, r.kmip_port)))
            })
            .collect();
        known.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for (_, _, address) in known {
            if !addresses.contains(&address) && addresses.len() < MAX_HINTS {
                addresses.push(address);
            }
        }
        HintsReply { addresses }
    }

    /// Each registered shadow's admin API, where it reported one.
    pub fn admin_addresses(&self) -> Vec<(String, SocketAddr)> {
        self.inner()
            .shadows
            .iter()
            .filter_map(|(name, e)| {
                let port = e.report.as_ref()?.admin_port;
                Some((name.clone(), SocketAddr::new(e.address, port)))
            })
            .collect()
    }

    /// The duplicates seen, one per shadow (the latest).
    pub fn duplicates(&self) -> Vec<Duplicate> {
        self.inner().duplicates.values().cloned().collect()
    }
}

/// Whether a caller is a registered shadow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    /// Registered, by this name.
    Registered(String),
    /// It was registered under this name, but the verifier its password matched is no
    /// longer accepted: dropped now.
    Retired(String),
    /// Not registered.
    None,
}

impl Registration {
    /// The name, when registered.
    pub fn name(self) -> Option<String> {
        match self {
            Self::Registered(name) => Some(name),
            Self::Retired(_) | Self::None => None,
        }
    }
}

/// Whether `entry`'s registration stands under `accepted` at `now`: the verifier it matched
/// (compared as PHC strings) is accepted for the shadow and not past its not-after.
fn stands(accepted: &Accepted, name: &str, entry: &Entry, now: Timestamp) -> bool {
    accepted.get(name).is_some_and(|list| {
        list.iter()
            .any(|v| v.verifier == entry.verifier && v.not_after.is_none_or(|at| now <= at))
    })
}

/// The peers that called this replica, by replica name and instance id, to tell two running
/// replicas with one name (one server id and ordinal) apart from one that restarted.
#[derive(Debug, Default)]
pub struct PeerSightings {
    inner: Mutex<Inner>,
    seen: Mutex<BTreeMap<String, Instances>>,
}

/// The instances seen under one name: where from, and when last.
type Instances = BTreeMap<uuid::Uuid, (IpAddr, Timestamp)>;

/// How recently two instances must both have called for them to count as running at once.
const TOGETHER: jiff::SignedDuration = jiff::SignedDuration::from_secs(120);

impl PeerSightings {
    /// Records a call from peer `name`, instance `instance`, at `address`; returns a
    /// duplicate seen for the first time.
    pub fn saw(
        &self,
        name: &str,
        instance: uuid::Uuid,
        address: IpAddr,
        now: Timestamp,
    ) -> Option<NewDuplicate> {
        let other = {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let instances = seen.entry(name.to_owned()).or_default();
            instances.insert(instance, (address, now));
            instances.retain(|_, (_, at)| now.duration_since(*at) < TOGETHER);
            instances
                .iter()
                .find(|(id, _)| **id != instance)
                .map(|(id, (ip, _))| (*id, *ip))
        }?;
        let duplicate = Duplicate {
            kind: DuplicateKind::Replica,
            name: name.to_owned(),
            instance_ids: [other.0, instance],
            addresses: [other.1, address],
            at: now,
        };
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        record(&mut inner, duplicate)
    }

    /// The duplicates seen, one per replica name (the latest).
    pub fn duplicates(&self) -> Vec<Duplicate> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .duplicates
            .values()
            .cloned()
            .collect()
    }
}

/// Keeps `d`; returns it when this pair of instances had not been seen before.
fn record(inner: &mut Inner, d: Duplicate) -> Option<NewDuplicate> {
    let same_pair = inner.duplicates.get(&d.name).is_some_and(|old| {
        let mut a = old.instance_ids;
        let mut b = d.instance_ids;
        a.sort();
        b.sort();
        a == b
    });
    inner.duplicates.insert(d.name.clone(), d.clone());
    (!same_pair).then_some(NewDuplicate(d))
}

#[cfg(test)]
mod tests {
    use shadowkeep_api::license::{License, LicenseSigner};
    use shadowkeep_api::password::Password;
    use shadowkeep_api::shadow::registration::{PasswordText, RefusalCode};

    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn verifier(password: &Password, id: &str, not_after: Option<Timestamp>) -> AcceptedVerifier {
        AcceptedVerifier {
            verifier: password.verifier().unwrap(),
            not_after,
            id: Some(id.to_owned()),
        }
    }

    #[test]
    fn a_registration_stands_only_while_its_verifier_is_accepted_and_not_past_its_not_after() {
        let signer = LicenseSigner::generate();
        let (old, new) = (Password::generate(), Password::generate());
        let old_v = verifier(&old, "old", Some(t(100)));
        let new_v = verifier(&new, "new", None);
        let registry = Registry::new(
            "tape",
            signer.verifier(),
            BTreeMap::from([("s".to_owned(), vec![old_v.clone(), new_v.clone()])]),
            DrivePolicy::default(),
        );
        let licence = signer
            .sign(&License::shadow("tape", "s", old.verifier().unwrap(), t(0)))
            .unwrap();
        let register = |password: &Password, now: Timestamp| {
            let request = ShadowRegistration {
                licence: licence.clone(),
                password: PasswordText::new(password),
                instance_id: uuid::Uuid::nil(),
            };
            registry
                .register(&request, "s", IpAddr::from([127, 0, 0, 1]), now)
                .0
        };
        let me = ["s".to_owned()];
        register(&old, t(1)).unwrap();
        let listed = registry.list().shadows;
        assert_eq!(listed[0].verifier_id.as_deref(), Some("old"));
        assert_eq!(listed[0].licence_issued_at, t(0));
        // Still accepted up to its not-after, inclusive; dropped past it.
        assert_eq!(
            registry.registered(&me, t(100)),
            Registration::Registered("s".to_owned())
        );
        assert_eq!(
            registry.registered(&me, t(101)),
            Registration::Retired("s".to_owned())
        );
        assert_eq!(registry.registered(&me, t(101)), Registration::None);
        // Retired by a new set without it: dropped when the set is taken.
        register(&old, t(2)).unwrap();
        let dropped = registry.set_accepted(
            BTreeMap::from([("s".to_owned(), vec![new_v.clone()])]),
            t(3),
        );
        assert_eq!(dropped, ["s"]);
        assert_eq!(registry.registered(&me, t(3)), Registration::None);
        assert_eq!(
            register(&old, t(4)).unwrap_err().code(),
            RefusalCode::PasswordWrong
        );
        // A set that keeps the verifier (same PHC string, wherever it stands) keeps the
        // registration.
        register(&new, t(5)).unwrap();
        let dropped =
            registry.set_accepted(BTreeMap::from([("s".to_owned(), vec![old_v, new_v])]), t(6));
        assert!(dropped.is_empty());
        assert_eq!(
            registry.registered(&me, t(6)),
            Registration::Registered("s".to_owned())
        );
        assert_eq!(
            registry.list().shadows[0].verifier_id.as_deref(),
            Some("new")
        );
        assert_eq!(
            registry.accepted_labels()["s"],
            [
                VerifierLabel {
                    id: Some("old".to_owned()),
                    not_after: Some(t(100))
                },
                VerifierLabel {
                    id: Some("new".to_owned()),
                    not_after: None
                },
            ]
        );
    }
}
