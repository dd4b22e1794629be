//! Who may ask for keys: the drive table applied to a connection.

use std::collections::BTreeMap;

use shadowkeep_api::server_config::DrivePolicy;

/// The drive table, indexed for lookups.
#[derive(Clone, Debug, Default)]
pub struct DriveTable {
    accept_unknown: bool,
    /// Certificate identity or serial to the drive's key group.
    by_identity: BTreeMap<String, Option<String>>,
    by_serial: BTreeMap<String, Option<String>>,
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
        Self {
            accept_unknown: policy.accept_unknown,
            by_identity: policy
                .drives
                .iter()
                .filter_map(|d| Some((d.certificate_identity.clone()?, group(d))))
                .collect(),
            by_serial: policy
                .drives
                .iter()
                .map(|d| (d.serial.clone(), group(d)))
                .collect(),
            default_group,
        }
    }

    /// Judges a client by the names in its certificate and, when the request carries a
    /// Device credential, its serial number.
    pub fn judge(&self, identities: &[String], device_serial: Option<&str>) -> Verdict {
        let by_identity = identities
            .iter()
            .find_map(|id| Some((id, self.by_identity.get(id)?)));
        let by_serial = device_serial.and_then(|s| Some((s, self.by_serial.get(s)?)));
        if let Some((by, key_group)) = by_identity.map(|(a, g)| (a.as_str(), g)).or(by_serial) {
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
                    key_group: Some("gold".to_owned()),
                },
                DriveEntry {
                    serial: "1013000124".to_owned(),
                    certificate_identity: None,
                    key_group: None,
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
        assert!(!Verdict::Refused.allowed());
        policy.accept_unknown = true;
        let unknown = DriveTable::new(&policy).judge(&names(&["x"]), None);
        assert_eq!(
            unknown,
            Verdict::Unknown {
                key_group: Some("lto".to_owned())
            }
        );
    }
}
