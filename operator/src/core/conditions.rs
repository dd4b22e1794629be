//! Status conditions: computed fresh each reconcile, merged with the previous ones so that
//! `lastTransitionTime` moves only when a condition's status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod types {
    /// Every replica is ready.
    pub const READY: &str = "Ready";
    /// Replicas are being created or rolled.
    pub const PROGRESSING: &str = "Progressing";
    /// More than one replica is missing: keys are at risk if another fails.
    pub const DEGRADED: &str = "Degraded";
    /// One replica and no Shadow.
    pub const SINGLE_SERVER: &str = "SingleServer";
    /// Another KeyManager has the same server id.
    pub const DUPLICATE_SERVER_ID: &str = "DuplicateServerId";
    /// A drive is listed under two KeyManagers: its keys would be split between them.
    pub const KEY_HISTORY_AT_RISK: &str = "KeyHistoryAtRisk";
    /// Every replica's keys are in the canonical keystore.
    pub const KEYSTORE_IN_SYNC: &str = "KeystoreInSync";
    /// Every replica and active shadow runs with the configuration's drive table.
    pub const CONFIGURATION_APPLIED: &str = "ConfigurationApplied";
    /// The KEK is sealed to recovery keys in every backup: losing the cluster loses no key.
    pub const KEK_ESCROWED: &str = "KekEscrowed";
    /// Every backup target holds the current keystore.
    pub const BACKUPS_CURRENT: &str = "BackupsCurrent";
}

/// Condition reasons (CamelCase, as Kubernetes conventions ask).
pub mod reasons {
    /// All replicas ready.
    pub const REPLICAS_READY: &str = "ReplicasReady";
    /// Not all replicas ready yet.
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    /// The spec was refused; nothing was changed.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Nothing to report.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// One replica, no shadow.
    pub const SINGLE_SERVER: &str = "SingleServer";
    /// Server id shared with another KeyManager.
    pub const DUPLICATE_SERVER_ID: &str = "DuplicateServerId";
    /// Replicas are missing.
    pub const REPLICAS_MISSING: &str = "ReplicasMissing";
    /// A drive is claimed by another KeyManager.
    pub const KEY_HISTORY_AT_RISK: &str = "KeyHistoryAtRisk";
    /// Every replica answered the keystore sync.
    pub const REPLICAS_SYNCED: &str = "ReplicasSynced";
    /// A replica answered but does not hold the canonical keystore yet.
    pub const REPLICAS_BEHIND: &str = "ReplicasBehind";
    /// A replica did not answer the keystore sync.
    pub const REPLICA_UNREACHABLE: &str = "ReplicaUnreachable";
    /// No replica is ready to be asked.
    pub const NO_REPLICA_READY: &str = "NoReplicaReady";
    /// Every server runs with the configuration's drive table.
    pub const CONFIGURATION_IN_FORCE: &str = "ConfigurationInForce";
    /// A server could not be asked, or did not take the configuration.
    pub const SERVERS_BEHIND: &str = "ServersBehind";
    /// Another writer changed the keystore or a drive history during the reconcile; it
    /// runs again from what is stored.
    pub const STATE_CHANGED: &str = "StateChanged";
    /// No recovery recipient: the KEK is in the cluster only.
    pub const NO_RECOVERY_KEY: &str = "NoRecoveryKey";
    /// A recovery recipient is not an age public key.
    pub const INVALID_RECIPIENT: &str = "InvalidRecipient";
    /// The KEK is sealed to the recovery recipients.
    pub const RECOVERY_KEYS_SET: &str = "RecoveryKeysSet";
    /// No backup target is set.
    pub const NO_BACKUP_TARGET: &str = "NoBackupTarget";
    /// Every backup target holds the current keystore.
    pub const BACKUPS_CURRENT: &str = "BackupsCurrent";
    /// A backup target could not be written.
    pub const BACKUP_TARGET_FAILED: &str = "BackupTargetFailed";
}

/// A condition as computed now.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// The previous conditions with `next` written over them by type, sorted by type. Other
/// types are kept (a status patch replaces the whole list), and a condition whose status
/// is unchanged keeps its `lastTransitionTime`.
pub fn merge(previous: &[Condition], next: Vec<Condition>) -> Vec<Condition> {
    let mut all = previous.to_vec();
    for mut c in next {
        if let Some(old) = previous.iter().find(|o| o.type_ == c.type_)
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
        all.retain(|o| o.type_ != c.type_);
        all.push(c);
    }
    all.sort_by(|a, b| a.type_.cmp(&b.type_));
    all
}
