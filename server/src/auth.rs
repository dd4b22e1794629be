//! Who may ask for keys: the drive table applied to a connection.

use std::collections::BTreeSet;

use shadowkeep_api::server_config::DrivePolicy;

/// The drive table, indexed for lookups.
#[derive(Clone, Debug, Default)]
pub struct DriveTable {
    accept_unknown: bool,
    identities: BTreeSet<String>,
    serials: BTreeSet<String>,
}

/// The drive table's verdict on a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The client matched an entry (by this certificate identity or serial).
    Known(String),
    /// No entry matched, and unknown drives are accepted.
    Unknown,
    /// No entry matched, and unknown drives are refused.
    Refused,
}

impl Verdict {
    /// Whether the client may be served.
    pub fn allowed(&self) -> bool {
        !matches!(self, Self::Refused)
    }
}

impl DriveTable {
    /// Indexes a configured policy.
    pub fn new(policy: &DrivePolicy) -> Self {
        Self {
            accept_unknown: policy.accept_unknown,
            identities: policy
                .drives
                .iter()
                .filter_map(|d| d.certificate_identity.clone())
                .collect(),
            serials: policy.drives.iter().map(|d| d.serial.clone()).collect(),
        }
    }

    /// Judges a client by the names in its certificate and, when the request carries a
    /// Device credential, its serial number.
    pub fn judge(&self, identities: &[String], device_serial: Option<&str>) -> Verdict {
        if let Some(id) = identities.iter().find(|id| self.identities.contains(*id)) {
            return Verdict::Known(id.clone());
        }
        if let Some(serial) = device_serial.filter(|s| self.serials.contains(*s)) {
            return Verdict::Known(serial.to_owned());
        }
        if self.accept_unknown {
            Verdict::Unknown
        } else {
            Verdict::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use shadowkeep_api::server_config::DriveEntry;

    use super::*;

    #[test]
    fn clients_are_known_by_certificate_or_serial_else_policy_decides() {
        let mut policy = DrivePolicy {
            accept_unknown: false,
            drives: vec![DriveEntry {
                serial: "1013000123".to_owned(),
                certificate_identity: Some("library-a".to_owned()),
            }],
        };
        let table = DriveTable::new(&policy);
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            table.judge(&names(&["x", "library-a"]), None),
            Verdict::Known("library-a".to_owned())
        );
        assert_eq!(
            table.judge(&names(&["x"]), Some("1013000123")),
            Verdict::Known("1013000123".to_owned())
        );
        assert_eq!(table.judge(&names(&["x"]), Some("999")), Verdict::Refused);
        assert!(!Verdict::Refused.allowed());
        policy.accept_unknown = true;
        assert_eq!(
            DriveTable::new(&policy).judge(&names(&["x"]), None),
            Verdict::Unknown
        );
    }
}
