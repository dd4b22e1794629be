//! The persistent instance id: one per data directory, so that a replica can tell two
//! processes that claim one identity (a shadow's data directory copied to a second host)
//! apart from one process that restarted.

use std::path::Path;

use crate::durable;

/// The file in the data directory.
pub const FILE: &str = "instance-id";

/// The instance id kept in `dir`, made (durably) the first time.
pub fn load_or_create(dir: &Path) -> Result<uuid::Uuid, String> {
    let path = dir.join(FILE);
    let fail = |e: &dyn std::fmt::Display| format!("failed to read {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    if let Some(bytes) = durable::read_optional(&path).map_err(|e| fail(&e))? {
        let text = String::from_utf8_lossy(&bytes);
        return uuid::Uuid::parse_str(text.trim()).map_err(|_| fail(&"not a UUID"));
    }
    let id = uuid::Uuid::new_v4();
    durable::write_atomically(dir, FILE, format!("{id}\n").as_bytes())
        .map_err(|e| format!("failed to write {}: {e}", path.display()))?;
    Ok(id)
}
