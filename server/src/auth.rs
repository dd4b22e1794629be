//! Who may ask for keys: the drive table applied to a connection.

use std::collections::BTreeMap;

use jiff::Timestamp;
use shadowkeep_api::server_config::{DrivePolicy, live_digest};

/// The drive table, indexed for lookups. A running server swaps it whole (a new
/// configuration, a shadow's new mirror); a request judges by the one it took first.
#[derive(Clone, Debug)]
pub struct DriveTable {
    /// [`live_digest`] of the policy it was built from, and when it was built: what the
    /// server reports as its configuration in force.
    digest: String,
    built_at: Timestamp,
    accept_unknown: bool,
    /// Certificate identity to the key groups of the drives behind it, in table order: a
    /// library's drives usually share its one certificate.
    by_identity: BTreeMap<String, Vec<Option<String>>>,
    /// Serial to the certificate identity a client must carry to claim the drive by it
    /// (`None`: any client may) and the drive's key group. An entry without an identity is
    /// here only if it, or the table by accepting unknown drives, let any client claim it.
    by_serial: BTreeMap<String, (Option<String>, Option<String>)>,
    default_group: Option<String>,
}

/// The drive table's verdict on a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The client matched an entry by this certificate identity or serial; its keys belong
    /// to this key group.
    Known {
        /// What matched.
        by: String,
        /// The drive's key group, or the default group.
        key_group: Option<String>,
    },
    /// No entry matched, unknown drives are accepted, and use the default group.
    Unknown {
        /// The default key group.
        key_group: Option<String>,
    },
    /// No entry matched, and unknown drives are refused.
    Refused,
}

impl Verdict {
    /// Whether the client may be served.
    pub fn allowed(&self) -> bool {
        !matches!(self, Self::Refused)
    }

    /// The key group the client's new keys belong to.
    pub fn key_group(&self) -> Option<&str> {
        match self {
            Self::Known { key_group, .. } | Self::Unknown { key_group } => key_group.as_deref(),
            Self::Refused => None,
        }
    }
}

impl DriveTable {
    /// Indexes a configured policy.
    pub fn new(policy: &DrivePolicy) -> Self {
        let default_group = policy
            .key_groups
            .iter()
            .find(|g| g.default)
            .map(|g| g.name.clone());
        let group = |d: &shadowkeep_api::server_config::DriveEntry| {
            d.key_group.clone().or_else(|| default_group.clone())
        };
        let mut by_identity: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
        for d in &policy.drives {
            if let Some(identity) = &d.certificate_identity {
                by_identity
                    .entry(identity.clone())
                    .or_default()
                    .push(group(d));
            }
        }
        Self {
            digest: live_digest(policy),
            built_at: Timestamp::now(),
            accept_unknown: policy.accept_unknown,
            by_identity,
            by_serial: policy
                .drives
                .iter()
                .filter(|d| {
                    d.certificate_identity.is_some()
                        || d.accept_any_certificate
                        || policy.accept_unknown
                })
                .map(|d| (d.serial.clone(), (d.certificate_identity.clone(), group(d))))
                .collect(),
            default_group,
        }
    }

    /// [`live_digest`] of the policy the table was built from.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// When the table was built: when its policy was taken.
    pub fn built_at(&self) -> Timestamp {
        self.built_at
    }

    /// Judges a client by the names in its certificate and, when the request carries a
    /// Device credential, its serial number.
    ///
    /// The serial is what the client says, so it counts only for a drive whose entry names
    /// a certificate identity the client's certificate carries (a library cannot take
    /// another library's drive's key group by naming its serial), or names none and lets
    /// any certificate claim it: by `acceptAnyCertificate`, or because unknown drives are
    /// accepted and every client is served anyway. A serial that counts is the most
    /// specific match, and wins: drives behind one library certificate may belong to
    /// different key groups. Without one, the certificate identity decides, in the key
    /// group of the first of its drives in the table.
    pub fn judge(&self, identities: &[String], device_serial: Option<&str>) -> Verdict {
        let by_serial = device_serial.and_then(|serial| {
            let (identity, key_group) = self.by_serial.get(serial)?;
            identity
                .as_ref()
                .is_none_or(|id| identities.contains(id))
                .then_some((serial, key_group))
        });
        let by_identity = || {
            identities.iter().find_map(|id| {
                let first = self.by_identity.get(id)?.first()?;
                Some((id.as_str(), first))
            })
        };
        if let Some((by, key_group)) = by_serial.or_else(by_identity) {
            return Verdict::Known {
                by: by.to_owned(),
                key_group: key_group.clone(),
            };
        }
        if self.accept_unknown {
            Verdict::Unknown {
                key_group: self.default_group.clone(),
            }
        } else {
            Verdict::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use shadowkeep_api::server_config::{DriveEntry, KeyGroupEntry};

    use super::*;

    #[test]
    fn clients_are_known_by_certificate_or_serial_else_policy_decides() {
        let mut policy = DrivePolicy {
            accept_unknown: false,
            drives: vec![
                DriveEntry {
                    serial: "1013000123".to_owned(),
                    certificate_identity: Some("library-a".to_owned()),
                    accept_any_certificate: false,
                    key_group: Some("gold".to_owned()),
                },
                DriveEntry {
                    serial: "1013000124".to_owned(),
                    certificate_identity: None,
                    accept_any_certificate: true,
                    key_group: None,
                },
                DriveEntry {
                    serial: "1013000125".to_owned(),
                    certificate_identity: None,
                    accept_any_certificate: false,
                    key_group: Some("gold".to_owned()),
                },
            ],
            key_groups: vec![
                KeyGroupEntry {
                    name: "gold".to_owned(),
                    default: false,
                },
                KeyGroupEntry {
                    name: "lto".to_owned(),
                    default: true,
                },
            ],
        };
        let table = DriveTable::new(&policy);
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let known = table.judge(&names(&["x", "library-a"]), None);
        assert_eq!(known.key_group(), Some("gold"));
        assert!(matches!(known, Verdict::Known { by, .. } if by == "library-a"));
        let by_serial = table.judge(&names(&["x"]), Some("1013000124"));
        assert_eq!(by_serial.key_group(), Some("lto"), "the default group");
        assert_eq!(table.judge(&names(&["x"]), Some("999")), Verdict::Refused);
        // No identity and no opt-in: anyone could name the serial, so it counts for nothing.
        assert_eq!(
            table.judge(&names(&["x"]), Some("1013000125")),
            Verdict::Refused
        );
        assert!(!Verdict::Refused.allowed());
        // A serial the certificate does not back counts for nothing.
        assert_eq!(
            table.judge(&names(&["library-b"]), Some("1013000123")),
            Verdict::Refused
        );
        policy.accept_unknown = true;
        let open = DriveTable::new(&policy);
        let unknown = open.judge(&names(&["x"]), None);
        assert_eq!(
            unknown,
            Verdict::Unknown {
                key_group: Some("lto".to_owned())
            }
        );
        // Served anyway, the client may as well claim the drive's own group.
        assert_eq!(
            open.judge(&names(&["x"]), Some("1013000125")).key_group(),
            Some("gold")
        );
    }
}

#[cfg(test)]
mod shared_certificate {
    use shadowkeep_api::server_config::{DriveEntry, KeyGroupEntry};

    use super::*;

    fn drive(serial: &str, identity: &str, group: &str) -> DriveEntry {
        DriveEntry {
            serial: serial.to_owned(),
            certificate_identity: Some(identity.to_owned()),
            accept_any_certificate: false,
            key_group: Some(group.to_owned()),
        }
    }

    #[test]
    fn drives_behind_one_library_certificate_keep_their_own_key_groups() {
        let policy = DrivePolicy {
            accept_unknown: false,
            drives: vec![
                drive("D1", "library-a", "gold"),
                drive("D2", "library-a", "silver"),
                drive("D3", "library-b", "bronze"),
            ],
            key_groups: ["gold", "silver", "bronze"]
                .iter()
                .map(|g| KeyGroupEntry {
                    name: (*g).to_owned(),
                    default: false,
                })
                .collect(),
        };
        let table = DriveTable::new(&policy);
        let a = ["library-a".to_owned()];
        assert_eq!(table.judge(&a, Some("D1")).key_group(), Some("gold"));
        assert_eq!(table.judge(&a, Some("D2")).key_group(), Some("silver"));
        // No serial: the certificate's first drive, whatever order the groups sort in.
        assert_eq!(table.judge(&a, None).key_group(), Some("gold"));
        // Another library's serial: only the certificate counts.
        assert_eq!(table.judge(&a, Some("D3")).key_group(), Some("gold"));
        let b = ["library-b".to_owned()];
        assert_eq!(table.judge(&b, Some("D1")).key_group(), Some("bronze"));
    }
}
