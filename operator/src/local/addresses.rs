//! Each local key server listens on its own loopback address (127.0.0.x) with the standard
//! ports, as a pod has its own IP. An address, once given to a server, stays its own across
//! runs, so that its certificate and a client's configuration keep working; a new server
//! takes the lowest free address from the base.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use shadowkeep_server::durable::{read_optional, write_atomically};

/// The addresses given out, and the base they were given from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Addresses {
    /// The first address given out.
    pub base: Ipv4Addr,
    /// Each server's address, by key (`namespace/name`).
    pub assigned: BTreeMap<String, Ipv4Addr>,
}

/// Why addresses could not be given out or kept.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// The base is not a loopback address a server can take.
    #[error("--address-base {0}: not a loopback address (127.0.0.1 to 127.255.255.254)")]
    NotLoopback(Ipv4Addr),
    /// The loopback range ran out above the base.
    #[error("no free loopback address above {0}")]
    Exhausted(Ipv4Addr),
    /// The file could not be read or written.
    #[error("failed to {action} {path}: {reason}")]
    File {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// Why it failed.
        reason: String,
    },
}

fn usable(ip: Ipv4Addr) -> bool {
    ip.is_loopback() && ip != Ipv4Addr::new(127, 0, 0, 0) && ip != Ipv4Addr::new(127, 255, 255, 255)
}

impl Addresses {
    /// No address given out yet, from `base`.
    pub fn new(base: Ipv4Addr) -> Result<Self, AddressError> {
        if !usable(base) {
            return Err(AddressError::NotLoopback(base));
        }
        Ok(Self {
            base,
            assigned: BTreeMap::new(),
        })
    }

    /// The addresses kept in `path` when they were given from `base`; a fresh start
    /// otherwise (a new base moves every server).
    pub fn load(path: &Path, base: Ipv4Addr) -> Result<Self, AddressError> {
        let fresh = Self::new(base)?;
        let failed = |action, reason: String| AddressError::File {
            action,
            path: path.display().to_string(),
            reason,
        };
        let Some(bytes) = read_optional(path).map_err(|e| failed("read", e.to_string()))? else {
            return Ok(fresh);
        };
        let stored: Self =
            serde_json::from_slice(&bytes).map_err(|e| failed("read", e.to_string()))?;
        if stored.base != base || !stored.assigned.values().all(|ip| usable(*ip)) {
            return Ok(fresh);
        }
        Ok(stored)
    }

    /// Writes the addresses to `path`.
    pub fn save(&self, path: &Path) -> Result<(), AddressError> {
        let failed = |reason: String| AddressError::File {
            action: "write",
            path: path.display().to_string(),
            reason,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| failed(e.to_string()))?;
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(failed("not a file path".to_owned()));
        };
        write_atomically(dir, name, &bytes).map_err(|e| failed(e.to_string()))
    }

    /// Gives every server of `keys` an address: the one it had, or the lowest free one.
    pub fn assign<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), AddressError> {
        for key in keys {
            if self.assigned.contains_key(key) {
                continue;
            }
            let taken: std::collections::BTreeSet<Ipv4Addr> =
                self.assigned.values().copied().collect();
            let mut next = u32::from(self.base);
            let ip = loop {
                let ip = Ipv4Addr::from(next);
                if !usable(ip) {
                    return Err(AddressError::Exhausted(self.base));
                }
                if !taken.contains(&ip) {
                    break ip;
                }
                next += 1;
            };
            self.assigned.insert(key.to_owned(), ip);
        }
        Ok(())
    }

    /// The address of server `key`.
    pub fn of(&self, key: &str) -> Option<Ipv4Addr> {
        self.assigned.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_stays_with_its_server_and_new_ones_fill_gaps() {
        let mut a = Addresses::new(Ipv4Addr::new(127, 0, 3, 2)).unwrap();
        a.assign(["ns/a-0", "ns/a-1", "ns/b-0"]).unwrap();
        assert_eq!(a.of("ns/a-1"), Some(Ipv4Addr::new(127, 0, 3, 3)));
        a.assigned.remove("ns/a-0");
        a.assign(["ns/c-0", "ns/a-1"]).unwrap();
        assert_eq!(a.of("ns/c-0"), Some(Ipv4Addr::new(127, 0, 3, 2)));
        assert_eq!(a.of("ns/a-1"), Some(Ipv4Addr::new(127, 0, 3, 3)));
    }

    #[test]
    fn a_base_outside_loopback_or_a_full_range_is_refused() {
        assert!(Addresses::new(Ipv4Addr::new(10, 0, 0, 1)).is_err());
        assert!(Addresses::new(Ipv4Addr::new(127, 255, 255, 255)).is_err());
        let mut a = Addresses::new(Ipv4Addr::new(127, 255, 255, 254)).unwrap();
        a.assign(["x"]).unwrap();
        assert!(matches!(a.assign(["y"]), Err(AddressError::Exhausted(_))));
    }

    #[test]
    fn addresses_survive_a_restart_unless_the_base_moves() {
        let dir = std::env::temp_dir().join(format!("sk-addr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("addresses.json");
        let base = Ipv4Addr::new(127, 0, 4, 2);
        let mut a = Addresses::new(base).unwrap();
        a.assign(["ns/b-0", "ns/a-0"]).unwrap();
        a.save(&path).unwrap();
        assert_eq!(Addresses::load(&path, base).unwrap(), a);
        let moved = Addresses::load(&path, Ipv4Addr::new(127, 0, 5, 2)).unwrap();
        assert!(moved.assigned.is_empty());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Addresses::load(&path, base).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
