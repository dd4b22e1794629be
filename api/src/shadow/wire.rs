//! The admin API's shadow contract besides registration: what a shadow reports when it polls
//! a replica and what the replica answers (the configuration a shadow mirrors), the state
//! every server reports on `GET /v1/state`, the desired state the operator sets, and a
//! replica's Shadows window and hint list. Server and operator use these types alike.
//!
//! Requests decode with size bounds and name the field at fault, never its value.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::registration::DecodeError;
use super::state::{DesiredShadowState, ShadowState};
use crate::server_config::{ConfigurationReport, DrivePolicy};

/// Largest poll report or desired-state request accepted, in bytes.
pub const MAX_SMALL_REQUEST_BYTES: usize = 4 * 1024;
pub use crate::crd::MAX_HINTS;

/// What a registered shadow tells a replica at each poll. The answer is a [`ShadowView`];
/// answering in time is what "a replica answered" means.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowReport {
    /// The shadow's persistent instance id.
    pub instance_id: uuid::Uuid,
    /// Its state now.
    pub state: ShadowState,
    /// Its priority among siblings.
    pub priority: i32,
    /// When it last held every key a replica offered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synchronized: Option<Timestamp>,
    /// The port of its admin API, on the address it polls from: where siblings reach it.
    pub admin_port: u16,
    /// The port of its KMIP listener, on the same address: what the hint list publishes.
    pub kmip_port: u16,
}

impl ShadowReport {
    /// Decodes a request body with its size bound.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        super::registration::decode(bytes, MAX_SMALL_REQUEST_BYTES)
    }
}

/// A replica's answer to a poll: the configuration a shadow mirrors besides the keystore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowView {
    /// The KeyManager's drive table and key groups: whom the shadow serves when it serves.
    pub drives: DrivePolicy,
    /// The other shadows registered with this replica, for the sibling rule.
    pub siblings: Vec<SiblingAddress>,
}

/// Where a sibling shadow's admin API answers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiblingAddress {
    /// The sibling's Shadow name.
    pub name: String,
    /// `ip:port` of its admin API.
    pub address: String,
}

/// What a server is, for `GET /v1/state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    /// A replica of the KeyManager (licensed, or unlicensed in development).
    Replica,
    /// A shadow.
    Shadow,
}

/// `GET /v1/state`: what a server is and does. Never a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateReport {
    /// Replica or shadow, as the licence says.
    pub role: ServerRole,
    /// The KeyManager's server id.
    pub server_id: String,
    /// This process's persistent instance id (kept in its data directory).
    pub instance_id: uuid::Uuid,
    /// For a shadow, its state machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStateReport>,
    /// Duplicates a replica has seen: two instances registering as one shadow, or calling
    /// as one peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<Duplicate>,
    /// On a licensed replica: the verifiers it accepts now, by shadow, as ids and
    /// not-afters only, so that the operator sees a new verifier taken before it hands the
    /// new password over.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub accepted_verifiers: BTreeMap<String, Vec<VerifierLabel>>,
    /// The configuration in force: its live part's digest, when it was taken, and what of
    /// the last one read or pushed was refused or waits for a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<ConfigurationReport>,
}

/// An accepted verifier as `GET /v1/state` shows it: never the PHC string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifierLabel {
    /// The verifier's id (the `issuedAt` of the licence carrying its password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The last moment it is accepted; none while it is the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
}

/// A shadow's state, clocks and view of its replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowStateReport {
    /// The Shadow's name, from its licence.
    pub name: String,
    /// The KeyManager (server id) the licence names.
    pub key_manager: String,
    /// Rank among siblings.
    pub priority: i32,
    /// The state now.
    pub state: ShadowState,
    /// The state the operator last asked for, as far as it still holds
    /// (`Machine::desired`).
    #[serde(default)]
    pub desired: DesiredShadowState,
    /// Since when.
    pub since: Timestamp,
    /// When the shadow last held every key a replica offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synchronized: Option<Timestamp>,
    /// Start of the current stretch of service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_since: Option<Timestamp>,
    /// When a replica last answered.
    pub last_contact: Timestamp,
    /// The `issuedAt` of the licence in force (a new one is taken while running).
    pub licence_issued_at: Timestamp,
    /// Each replica, as last polled.
    pub replicas: Vec<ReplicaReachability>,
}

/// One replica as a shadow last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaReachability {
    /// The replica's configured name.
    pub name: String,
    /// Its admin API address.
    pub address: String,
    /// Whether it answered the last poll in time.
    pub reachable: bool,
    /// When it last answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_answer: Option<Timestamp>,
    /// Why the last poll got no answer (a refusal's reason code, a timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What two processes claimed to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicateKind {
    /// Two instances registered or polled as one shadow.
    Shadow,
    /// Two instances called this replica as one peer (one server id and replica name).
    Replica,
}

/// Two processes claiming one identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Duplicate {
    /// A shadow or a replica.
    pub kind: DuplicateKind,
    /// The shadow's name, or the replica's (its pod name, the ordinal in it).
    pub name: String,
    /// Both instance ids.
    pub instance_ids: [uuid::Uuid; 2],
    /// The addresses they registered from.
    pub addresses: [IpAddr; 2],
    /// When it was last seen.
    pub at: Timestamp,
}

/// `PUT /v1/shadow/desired-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DesiredStateRequest {
    /// `Active`, `Inactive` or `Disabled`.
    pub state: DesiredShadowState,
}

impl DesiredStateRequest {
    /// Decodes a request body with its size bound.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        super::registration::decode(bytes, MAX_SMALL_REQUEST_BYTES)
    }
}

/// One row of a replica's Shadows window (`GET /v1/shadows`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisteredShadow {
    /// The Shadow's name.
    pub name: String,
    /// The address it last registered or polled from.
    pub address: IpAddr,
    /// Its KMIP address, as the hint list gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kmip_address: Option<SocketAddr>,
    /// The state it last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ShadowState>,
    /// When it last synchronized, as it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synchronized: Option<Timestamp>,
    /// When it last registered.
    pub registered_at: Timestamp,
    /// The `issuedAt` of the licence it registered with.
    pub licence_issued_at: Timestamp,
    /// The id of the verifier its password matched, if that verifier has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier_id: Option<String>,
    /// When it last polled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
}

/// `GET /v1/shadows`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowsReply {
    /// The registered shadows, by name.
    pub shadows: Vec<RegisteredShadow>,
}

/// `GET /v1/hints`: where clients may find shadows when no replica answers. IP addresses
/// only, never host names (DNS may be down when they are needed), at most [`MAX_HINTS`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HintsReply {
    /// The shadows' KMIP addresses.
    pub addresses: Vec<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_state_is_one_of_three_and_the_error_names_no_value() {
        let ok = DesiredStateRequest::from_json(br#"{"state":"Inactive"}"#).unwrap();
        assert_eq!(ok.state, DesiredShadowState::Inactive);
        let err = DesiredStateRequest::from_json(br#"{"state":"Serving-hunter2"}"#).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`state`"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let big = vec![b' '; MAX_SMALL_REQUEST_BYTES + 1];
        assert!(matches!(
            DesiredStateRequest::from_json(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
