//! The KMIP operations, run over the durable store.
//!
//! Each operation reads its payload strictly (a wrong type or a missing field is an error
//! naming the field) and changes nothing unless it succeeds. Writes reach the store only
//! through [`Store::commit`], so a key is on disk before any client can see it.

use std::collections::HashSet;
use std::sync::Arc;

use jiff::Timestamp;
use shadowkeep_api::keystore::{Algorithm, Kek, Key, KeyId, KeyState};
use tokio::sync::Mutex;

use super::attributes::{self, Attribute};
use super::enums::{
    algorithm, key_format, object_type, operation, query, result_reason, revocation,
};
use super::{
    BatchItem, DEFAULT_LOCATE_ITEMS, KmipError, MAX_FAILURE_LEN, MAX_RESPONSE_LEN, Outcome,
    Request, VERSIONS, enum_field, int_field, parse_version, supported, tag, text_field,
    version_item,
};
use crate::auth::Verdict;
use crate::metrics::{Metrics, OpLabels, OperationLabels};
use crate::replication::Replication;
use crate::shadow::Access;
use crate::shadow::push::ShadowPush;
use crate::store::{Store, StoreError};
use crate::ttlv::{Item, Value};

/// Attribute marking a key whose Create failed for want of peer acknowledgements: it stays
/// in the keystore (nothing is ever removed) but no client sees it.
pub const ABORTED: &str = "shadowkeep:aborted";

/// Room an answer to a change needs at most: its Unique Identifier and one attribute within
/// the attribute limits (an Application Specific Information of two 4,096-byte texts).
const CHANGE_ANSWER_ROOM: usize = 16 * 1024;

/// Application namespaces of the OASIS Tape Library Profile, reported by Query.
const TAPE_NAMESPACES: [&str; 4] = [
    "LIBRARY-LTO",
    "LIBRARY-LTO4",
    "LIBRARY-LTO5",
    "VENDOR-LIBRARY-LTO",
];

/// Serves KMIP operations for one key server.
pub struct Kmip {
    store: Store,
    kek: Kek,
    server_id: String,
    /// Serialises changes to existing keys, so that two concurrent changes of one key do
    /// not both read the old record. Creating keys does not need it.
    modify: Mutex<()>,
    /// Peers that new keys must reach before a Create succeeds.
    replication: Option<Arc<Replication>>,
    /// Shadows new keys are pushed to, and how many must take one before a Create succeeds.
    shadows: Option<Arc<ShadowPush>>,
    /// Keys stored locally whose peer acknowledgements are still awaited: not yet visible.
    inflight: std::sync::Mutex<HashSet<KeyId>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Kmip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kmip")
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

/// What an item leaves in the batch's ID Placeholder for the items after it.
enum Placeholder {
    /// Left as it was (operations that name no object).
    Keep,
    /// The object this item created, found or acted on.
    Set(KeyId),
    /// Emptied: a Locate that found nothing leaves no object for the next item (KMIP 1.x),
    /// rather than the one an earlier item named.
    Clear,
}

type OpResult = Result<(Vec<Item>, Placeholder), KmipError>;

impl Kmip {
    /// A KMIP service over `store`, sealing with `kek`.
    pub fn new(
        store: Store,
        kek: Kek,
        server_id: impl Into<String>,
        replication: Option<Arc<Replication>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            metrics,
            store,
            kek,
            server_id: server_id.into(),
            modify: Mutex::new(()),
            replication,
            shadows: None,
            inflight: std::sync::Mutex::new(HashSet::new()),
        }
    }

    /// Pushes new keys to registered shadows through `shadows` as well.
    #[must_use]
    pub fn with_shadows(mut self, shadows: Option<Arc<ShadowPush>>) -> Self {
        self.shadows = shadows;
        self
    }

    /// Whether clients may see `key`: not aborted, not awaiting acknowledgements.
    fn visible(&self, key: &Key) -> bool {
        key.attribute(ABORTED).is_none()
            && !self
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&key.id)
    }

    fn set_inflight(&self, id: &KeyId, inflight: bool) {
        let mut set = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inflight {
            set.insert(id.clone());
        } else {
            set.remove(id);
        }
    }

    /// Stores a new key locally, on the required number of peers and of shadows. If they do
    /// not acknowledge it in time, the key is marked aborted (and stays hidden) and the client
    /// is told nothing was created. Shadows get every new key, waited for or not.
    async fn commit_new(&self, key: Key) -> Result<(), KmipError> {
        let peers = self.replication.clone().filter(|r| r.required() > 0);
        let shadows = self.shadows.clone().filter(|s| s.required() > 0);
        if peers.is_none() && shadows.is_none() {
            self.commit(key.clone()).await?;
            if let Some(shadows) = &self.shadows {
                shadows.publish(std::slice::from_ref(&key));
            }
            return Ok(());
        }
        self.set_inflight(&key.id, true);
        let result = self
            .replicate_new(peers.as_deref(), shadows.as_deref(), key)
            .await;
        if let Err((id, _)) = &result {
            self.set_inflight(id, false);
        }
        result.map_err(|(_, e)| e)
    }

    async fn replicate_new(
        &self,
        peers: Option<&Replication>,
        shadows: Option<&ShadowPush>,
        key: Key,
    ) -> Result<(), (KeyId, KmipError)> {
        let id = key.id.clone();
        self.commit(key.clone())
            .await
            .map_err(|e| (id.clone(), e))?;
        let one = std::slice::from_ref(&key);
        let (peer_acks, shadow_acks) = tokio::join!(
            async {
                match peers {
                    Some(p) => p.replicate(one).await,
                    None => 0,
                }
            },
            async {
                match (shadows, &self.shadows) {
                    (Some(s), _) => s.push(one).await,
                    (None, Some(s)) => {
                        s.publish(one);
                        0
                    }
                    (None, None) => 0,
                }
            }
        );
        let peers_needed = peers.map_or(0, Replication::required);
        let shadows_needed = shadows.map_or(0, ShadowPush::required);
        if peer_acks >= peers_needed && shadow_acks >= shadows_needed {
            self.set_inflight(&id, false);
            return Ok(());
        }
        let mut aborted = key;
        let now = Timestamp::now();
        aborted.attributes.insert(
            ABORTED.to_owned(),
            shadowkeep_api::keystore::AttributeValue {
                updated_at_ms: now.as_millisecond(),
                value: Some(format!(
                    "{peer_acks} of {peers_needed} peer and {shadow_acks} of {shadows_needed} shadow acknowledgements"
                )),
            },
        );
        let stored = self.commit(aborted.clone()).await;
        if let Some(replication) = &self.replication {
            replication.publish(std::slice::from_ref(&aborted));
        }
        if let Some(s) = &self.shadows {
            s.publish(std::slice::from_ref(&aborted));
        }
        self.set_inflight(&id, false);
        tracing::warn!(key = %id, peer_acks, peers_needed, shadow_acks, shadows_needed, "new key not acknowledged by enough peers and shadows; aborted");
        stored.map_err(|e| (id.clone(), e))?;
        let missing = if peer_acks < peers_needed {
            format!(
                "{peer_acks} of the {peers_needed} required peer replicas acknowledged it in time; retry when the replicas are reachable"
            )
        } else {
            format!(
                "{shadow_acks} of the {shadows_needed} required shadows acknowledged it in time (durability.shadowAcknowledgements); retry when the shadows are reachable"
            )
        };
        Err((
            id,
            KmipError::new(
                result_reason::GENERAL_FAILURE,
                format!("the key was not created: {missing}"),
            ),
        ))
    }

    /// The store served.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs a request's batch for a client the drive table judged: a refused client gets a
    /// permission error for every item, and keys a known client creates are tagged with
    /// its key group. The answers are kept within the response limit (see the
    /// [module docs](super)) as they are made.
    ///
    /// `access` is what the server's role allows now: a shadow that does not serve refuses
    /// every item, and a serving one every change, each with a KMIP error that says so.
    pub async fn handle(
        &self,
        request: &Request,
        client: &Verdict,
        access: &Access,
    ) -> Vec<Outcome> {
        let allowed = client.allowed();
        let limit = request
            .max_response_size
            .map_or(MAX_RESPONSE_LEN, |m| m.min(MAX_RESPONSE_LEN));
        let mut used = super::response_overhead(request.version);
        let mut outcomes = Vec::with_capacity(request.items.len());
        let mut placeholder: Option<KeyId> = None;
        for (i, item) in request.items.iter().enumerate() {
            let started = std::time::Instant::now();
            // Each later item may yet fail, and its failure must fit too.
            let later = (request.items.len() - i - 1) * MAX_FAILURE_LEN;
            let room = limit.saturating_sub(used + later + Outcome::success_overhead(item));
            let result = if let Access::Closed(why) = access {
                Err(KmipError::new(
                    result_reason::PERMISSION_DENIED,
                    why.clone(),
                ))
            } else if !allowed {
                Err(KmipError::new(
                    result_reason::PERMISSION_DENIED,
                    "this client is not in the drive table and unknown drives are not accepted",
                ))
            } else if !supported(request.version) && item.operation != operation::DISCOVER_VERSIONS
            {
                Err(KmipError::new(
                    result_reason::INVALID_MESSAGE,
                    format!(
                        "protocol version {}.{} is not supported; this server speaks KMIP 1.0 to 1.4 (ask with Discover Versions)",
                        request.version.0, request.version.1
                    ),
                ))
            } else if let (Access::ReadOnly(why), true) = (access, changes(item.operation)) {
                Err(KmipError::new(
                    result_reason::PERMISSION_DENIED,
                    format!("{} refused: {why}", super::operation_name(item.operation)),
                ))
            } else if changes(item.operation) && room < CHANGE_ANSWER_ROOM {
                Err(KmipError::too_large(format!(
                    "no room is left in this response ({limit} bytes at most) for the answer to this item; nothing was changed; send it in a batch of its own"
                )))
            } else {
                self.run(
                    item,
                    placeholder.as_ref(),
                    client.key_group(),
                    request.version,
                    room,
                )
                .await
            };
            let result = result.and_then(|(mut payload, next)| {
                let len: usize = payload.iter().map(Item::encoded_len).sum();
                // A change is answered whatever its size: it has been made.
                if len > room && !changes(item.operation) {
                    payload.iter_mut().for_each(crate::ttlv::wipe);
                    return Err(KmipError::too_large(format!(
                        "the answer to this item would take {len} bytes, more than the {room} left in this response ({limit} bytes at most); ask for less, or in a batch of its own"
                    )));
                }
                Ok((payload, next))
            });
            let failed = result.is_err();
            let operation = super::operation_name(item.operation).to_owned();
            self.metrics
                .latency
                .get_or_create(&OperationLabels {
                    operation: operation.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .requests
                .get_or_create(&OpLabels {
                    operation,
                    result: result
                        .as_ref()
                        .err()
                        .map_or("ok", KmipError::label)
                        .to_owned(),
                })
                .inc();
            let result = result.map(|(payload, next)| {
                match next {
                    Placeholder::Keep => {}
                    Placeholder::Set(id) => placeholder = Some(id),
                    Placeholder::Clear => placeholder = None,
                }
                payload
            });
            let outcome = Outcome {
                operation: Some(item.operation),
                unique_id: item.unique_id.clone(),
                result,
            };
            used += outcome.encoded_len();
            outcomes.push(outcome);
            if failed && !request.continue_on_error {
                break;
            }
        }
        outcomes
    }

    /// Runs one item. `room` is how many bytes its answer's payload may take.
    async fn run(
        &self,
        item: &BatchItem,
        placeholder: Option<&KeyId>,
        group: Option<&str>,
        version: (i32, i32),
        room: usize,
    ) -> OpResult {
        let p = &item.payload;
        match item.operation {
            operation::DISCOVER_VERSIONS => Ok((discover_versions(p), Placeholder::Keep)),
            operation::QUERY => self.query(p),
            operation::CREATE => self.create(p, group).await,
            operation::REGISTER => self.register(p, group).await,
            operation::GET => self.get(p, placeholder),
            operation::LOCATE => self.locate(p, version, room),
            operation::GET_ATTRIBUTES => self.get_attributes(p, placeholder),
            operation::GET_ATTRIBUTE_LIST => self.get_attribute_list(p, placeholder),
            operation::ADD_ATTRIBUTE => self.add_attribute(p, placeholder).await,
            operation::MODIFY_ATTRIBUTE => self.modify_attribute(p, placeholder).await,
            operation::DELETE_ATTRIBUTE => self.delete_attribute(p, placeholder).await,
            operation::ACTIVATE => self.activate(p, placeholder).await,
            operation::REVOKE => self.revoke(p, placeholder).await,
            operation::DESTROY => self.destroy(p, placeholder).await,
            other => Err(KmipError::new(
                result_reason::OPERATION_NOT_SUPPORTED,
                format!("operation {other:#x} is not supported"),
            )),
        }
    }

    fn query(&self, p: &Item) -> OpResult {
        let mut out = Vec::new();
        for function in p.children_with(tag::QUERY_FUNCTION) {
            match function.as_enum() {
                Some(query::OPERATIONS) => out.extend(
                    operation::SUPPORTED
                        .iter()
                        .map(|op| Item::enumeration(tag::OPERATION, *op)),
                ),
                Some(query::OBJECTS) => {
                    out.push(Item::enumeration(
                        tag::OBJECT_TYPE,
                        object_type::SYMMETRIC_KEY,
                    ));
                }
                Some(query::SERVER_INFORMATION) => {
                    out.push(Item::text(
                        tag::VENDOR_IDENTIFICATION,
                        format!(
                            "shadowkeep {} (server {})",
                            env!("CARGO_PKG_VERSION"),
                            self.server_id
                        ),
                    ));
                    out.push(Item::structure(tag::SERVER_INFORMATION, Vec::new()));
                }
                Some(query::APPLICATION_NAMESPACES) => out.extend(
                    TAPE_NAMESPACES
                        .iter()
                        .map(|ns| Item::text(tag::APPLICATION_NAMESPACE, *ns)),
                ),
                Some(_) => {}
                None => return Err(KmipError::invalid("Query Function must be an Enumeration")),
            }
        }
        // Query answers in a fixed field order: operations, object types, vendor, namespaces.
        out.sort_by_key(|i| match i.tag {
            t if t == tag::OPERATION => 0,
            t if t == tag::OBJECT_TYPE => 1,
            t if t == tag::VENDOR_IDENTIFICATION => 2,
            t if t == tag::SERVER_INFORMATION => 3,
            _ => 4,
        });
        Ok((out, Placeholder::Keep))
    }

    async fn create(&self, p: &Item, group: Option<&str>) -> OpResult {
        require_symmetric(p)?;
        let template = template_attributes(p)?;
        let (length, rest) = take_cipher(template)?;
        let now = Timestamp::now();
        let mut key = Key::generate(&self.kek, first_name(&rest), Algorithm::Aes, length, now)
            .map_err(|e| KmipError::new(result_reason::CRYPTOGRAPHIC_FAILURE, e.to_string()))?;
        apply_template(&mut key, rest, now.as_millisecond())?;
        tag_group(&mut key, group, now.as_millisecond())?;
        attributes::within_limits(&key, None)?;
        self.commit_new(key.clone()).await?;
        Ok((
            vec![
                Item::enumeration(tag::OBJECT_TYPE, object_type::SYMMETRIC_KEY),
                uid_item(&key.id),
            ],
            Placeholder::Set(key.id),
        ))
    }

    async fn register(&self, p: &Item, group: Option<&str>) -> OpResult {
        require_symmetric(p)?;
        let template = template_attributes(p)?;
        let block = p
            .child(tag::SYMMETRIC_KEY)
            .ok_or_else(|| KmipError::missing("Symmetric Key"))?
            .child(tag::KEY_BLOCK)
            .ok_or_else(|| KmipError::missing("Symmetric Key: Key Block"))?;
        if block.child(tag::KEY_WRAPPING_DATA).is_some() {
            return Err(KmipError::new(
                result_reason::FEATURE_NOT_SUPPORTED,
                "wrapped key material cannot be registered; send it unwrapped over the TLS connection",
            ));
        }
        let format = enum_field(block, tag::KEY_FORMAT_TYPE, "Key Format Type")?
            .ok_or_else(|| KmipError::missing("Key Block: Key Format Type"))?;
        let key_value = block
            .child(tag::KEY_VALUE)
            .ok_or_else(|| KmipError::missing("Key Block: Key Value"))?;
        let material_item = key_value
            .child(tag::KEY_MATERIAL)
            .ok_or_else(|| KmipError::missing("Key Value: Key Material"))?;
        let material = match format {
            key_format::RAW => material_item.as_bytes(),
            key_format::TRANSPARENT_SYMMETRIC_KEY => material_item.child(tag::KEY).and_then(Item::as_bytes),
            other => {
                return Err(KmipError::new(
                    result_reason::KEY_FORMAT_TYPE_NOT_SUPPORTED,
                    format!("Key Format Type {other:#x} is not supported; use Raw or Transparent Symmetric Key"),
                ));
            }
        }
        .ok_or_else(|| KmipError::invalid("Key Material must hold the key bytes"))?;
        let block_alg = enum_field(
            block,
            tag::CRYPTOGRAPHIC_ALGORITHM,
            "Cryptographic Algorithm",
        )?;
        let block_len = int_field(block, tag::CRYPTOGRAPHIC_LENGTH, "Cryptographic Length")?;
        let mut template = template;
        // The key block states the cipher; the template may repeat it.
        if let Some(alg) = block_alg {
            template.retain(|a| a.0 != "Cryptographic Algorithm");
            template.push((
                "Cryptographic Algorithm".to_owned(),
                Value::Enumeration(alg),
            ));
        }
        if let Some(len) = block_len {
            template.retain(|a| a.0 != "Cryptographic Length");
            template.push(("Cryptographic Length".to_owned(), Value::Integer(len)));
        }
        let (length, rest) = take_cipher(template)?;
        if material.len() * 8 != usize::from(length) {
            return Err(KmipError::invalid(format!(
                "Key Material holds {} bits but Cryptographic Length says {length}",
                material.len() * 8
            )));
        }
        let now = Timestamp::now();
        let mut key = Key::from_material(
            &self.kek,
            first_name(&rest),
            Algorithm::Aes,
            length,
            material,
            now,
        )
        .map_err(|e| KmipError::invalid(e.to_string()))?;
        apply_template(&mut key, rest, now.as_millisecond())?;
        tag_group(&mut key, group, now.as_millisecond())?;
        attributes::within_limits(&key, None)?;
        self.commit_new(key.clone()).await?;
        Ok((vec![uid_item(&key.id)], Placeholder::Set(key.id)))
    }

    fn get(&self, p: &Item, placeholder: Option<&KeyId>) -> OpResult {
        let key = self.key(p, placeholder)?;
        if key.state == KeyState::Destroyed {
            return Err(KmipError::new(
                result_reason::ITEM_NOT_FOUND,
                format!(
                    "key {} is destroyed; its material is no longer served",
                    key.id
                ),
            ));
        }
        if p.child(tag::KEY_WRAPPING_SPECIFICATION).is_some()
            || p.child(tag::KEY_COMPRESSION_TYPE).is_some()
        {
            return Err(KmipError::new(
                result_reason::FEATURE_NOT_SUPPORTED,
                "key wrapping and compression are not supported; the key travels over the TLS connection",
            ));
        }
        let format =
            enum_field(p, tag::KEY_FORMAT_TYPE, "Key Format Type")?.unwrap_or(key_format::RAW);
        let plaintext = self.kek.open(&key.id, &key.material).map_err(|e| {
            tracing::error!(key = %key.id, error = %e, "failed to open key material");
            KmipError::new(
                result_reason::CRYPTOGRAPHIC_FAILURE,
                format!("key {} cannot be opened on this server", key.id),
            )
        })?;
        let material = match format {
            key_format::RAW => Item::bytes(tag::KEY_MATERIAL, plaintext.to_vec()),
            key_format::TRANSPARENT_SYMMETRIC_KEY => Item::structure(
                tag::KEY_MATERIAL,
                vec![Item::bytes(tag::KEY, plaintext.to_vec())],
            ),
            other => {
                return Err(KmipError::new(
                    result_reason::KEY_FORMAT_TYPE_NOT_SUPPORTED,
                    format!(
                        "Key Format Type {other:#x} is not supported; use Raw or Transparent Symmetric Key"
                    ),
                ));
            }
        };
        let block = Item::structure(
            tag::KEY_BLOCK,
            vec![
                Item::enumeration(tag::KEY_FORMAT_TYPE, format),
                Item::structure(tag::KEY_VALUE, vec![material]),
                Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, algorithm::AES),
                Item::integer(tag::CRYPTOGRAPHIC_LENGTH, i32::from(key.length)),
            ],
        );
        Ok((
            vec![
                Item::enumeration(tag::OBJECT_TYPE, object_type::SYMMETRIC_KEY),
                uid_item(&key.id),
                Item::structure(tag::SYMMETRIC_KEY, vec![block]),
            ],
            Placeholder::Set(key.id),
        ))
    }

    fn locate(&self, p: &Item, version: (i32, i32), room: usize) -> OpResult {
        let count = |t, name: &str, default: usize| -> Result<usize, KmipError> {
            int_field(p, t, name)?.map_or(Ok(default), |n| {
                usize::try_from(n)
                    .map_err(|_| KmipError::invalid(format!("{name} must not be negative")))
            })
        };
        let max = count(tag::MAXIMUM_ITEMS, "Maximum Items", DEFAULT_LOCATE_ITEMS)?;
        let offset = count(tag::OFFSET_ITEMS, "Offset Items", 0)?;
        let criteria = p
            .children_with(tag::ATTRIBUTE)
            .map(|a| attributes::parse(a).map(|(name, _, value)| (name, value)))
            .collect::<Result<Vec<_>, _>>()?;
        // Located Items is KMIP 1.3; earlier clients do not expect it.
        let with_total = version >= (1, 3);
        let page = self.store.read(|ks| {
            let mut found: Vec<(Timestamp, &KeyId)> = ks
                .keys()
                .filter(|k| self.visible(k))
                .filter(|k| {
                    criteria
                        .iter()
                        .all(|(name, value)| attributes::matches(k, name, value))
                })
                .map(|k| (k.created_at, &k.id))
                .collect();
            let total = found.len();
            // Newest first: a tape library that finds several keys for a barcode wants the
            // one it wrote last. Only the keys up to the end of the page are ordered.
            let end = offset.saturating_add(max).min(total);
            if end > 0 && end < total {
                found.select_nth_unstable_by(end - 1, |a, b| b.cmp(a));
            }
            found.truncate(end);
            found.sort_unstable_by(|a, b| b.cmp(a));
            let ids = found.get(offset..).unwrap_or_default();
            // Measured before anything is built, so that an answer too large costs nothing.
            // Located Items is an Integer: its header and 4 bytes padded to 8.
            let mut len = if with_total { 16 } else { 0 };
            let mut fit = 0;
            for (_, id) in ids {
                len += uid_len(id);
                if len <= room {
                    fit += 1;
                }
            }
            if fit < ids.len() {
                return Err(KmipError::too_large(format!(
                    "Locate found {total} keys; the {} asked for would take {len} bytes, more than the {room} left in this response, where {fit} fit; ask for fewer with Maximum Items and page with Offset Items",
                    ids.len()
                )));
            }
            Ok((total, ids.iter().map(|(_, id)| (*id).clone()).collect::<Vec<_>>()))
        });
        let (total, ids) = page?;
        let next = ids
            .first()
            .map_or(Placeholder::Clear, |id| Placeholder::Set(id.clone()));
        let mut out = Vec::with_capacity(ids.len() + 1);
        if with_total {
            out.push(Item::integer(
                tag::LOCATED_ITEMS,
                i32::try_from(total).unwrap_or(i32::MAX),
            ));
        }
        out.extend(ids.iter().map(uid_item));
        Ok((out, next))
    }

    fn get_attributes(&self, p: &Item, placeholder: Option<&KeyId>) -> OpResult {
        let key = self.key(p, placeholder)?;
        let names = p
            .children_with(tag::ATTRIBUTE_NAME)
            .map(|n| {
                n.as_text()
                    .ok_or_else(|| KmipError::invalid("Attribute Name must be a Text String"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let attrs = if names.is_empty() {
            attributes::all(&key)
        } else {
            names
                .iter()
                .flat_map(|n| attributes::named(&key, n))
                .collect()
        };
        let mut out = vec![uid_item(&key.id)];
        out.extend(attrs.iter().map(|a| a.to_item(true)));
        Ok((out, Placeholder::Set(key.id)))
    }

    fn get_attribute_list(&self, p: &Item, placeholder: Option<&KeyId>) -> OpResult {
        let key = self.key(p, placeholder)?;
        let mut names: Vec<String> = attributes::all(&key).into_iter().map(|a| a.name).collect();
        names.dedup();
        let mut out = vec![uid_item(&key.id)];
        out.extend(
            names
                .into_iter()
                .map(|n| Item::text(tag::ATTRIBUTE_NAME, n)),
        );
        Ok((out, Placeholder::Set(key.id)))
    }

    async fn add_attribute(&self, p: &Item, placeholder: Option<&KeyId>) -> OpResult {
        let (name, index, value) = attributes::parse(
            p.child(tag::ATTRIBUTE)
                .ok_or_else(|| KmipError::missing("Attribute"))?,
        )?;
        if index.is_some() {
            return Err(KmipError::invalid(
                "Add Attribute takes no Attribute Index; the server assigns it",
            ));
        }
        let multi = attributes::settable(&name)?;
        attributes::check_value(&name, &value)?;
        self.change(p, placeholder, |key, now_ms| {
            if !multi && !attributes::instances(key, &name).is_empty() {
                return Err(KmipError::new(
                    result_reason::ILLEGAL_OPERATION,
                    format!("{name} has a single instance already; use Modify Attribute"),
                ));
            }
            let attr = Attribute {
                // KMIP gives a single-instance attribute index 0, always.
                index: if multi {
                    attributes::next_index(key, &name)
                } else {
                    0
                },
                name: name.clone(),
                value: value.clone(),
            };
            attributes::set(key, &attr, now_ms)?;
            Ok(attr)
        })
        .await
    }

    async fn modify_attribute(&self, p: &Item, placeholder: Option<&KeyId>) -> OpResult {
        let (name, index, value) = attributes::parse(
            p.child(tag::ATTRIBUTE)
                .ok_or_else(|| KmipError::missing("Attribute"))?,
        )?;
        attributes::settable(&name)?;
        attributes::check_value(&name, &value)?;
        let index = index.unwrap_or(0);
        self.change(p, placeholder, |key, now_ms| {
            if !attributes::instances(key, &name)
                .iter()
                .any(|a| a.index == index)
            {
                return Err(KmipError::new(
                    result_reason::ITEM_NOT_FOUND,
                    format!("{name} has no instance with index {index}"),
                ));
            }
            let attr = Attribute {
                name: name.clone(),
                index,
                value: value.clone(),
            };
            attributes::set(key, &attr, now_ms)?;
            Ok(attr)
        })
        .await
    }

    async fn delete_attribute(&self, p: &Item, placeholder: Option<&KeyId>) -> OpResult {
        let name = text_field(p, tag::ATTRIBUTE_NAME, "Attribute Name")?
            .ok_or_else(|| KmipError::missing("Attribute Name"))?
            .to_owned();
        let index = int_field(p, tag::ATTRIBUTE_INDEX, "Attribute Index")?.unwrap_or(0);
        let index = u32::try_from(index)
            .map_err(|_| KmipError::invalid("Attribute Index must not be negative"))?;
        attributes::settable(&name)?;
        self.change(p, placeholder, |key, now_ms| {
            let old = attributes::instances(key, &name)
                .into_iter()
                .find(|a| a.index == index)
                .ok_or_else(|| {
                    KmipError::new(
                        result_reason::ITEM_NOT_FOUND,
                        format!("{name} has no instance with index {index}"),
                    )
                })?;
            attributes::delete(key, &name, index, now_ms)?;
            Ok(old)
        })
        .await
    }

    async fn activate(&self, p: &Item, placeholder: Option<&KeyId>) -> OpResult {
        self.transition(p, placeholder, |key, now| {
            if key.state != KeyState::PreActive {
                return Err(wrong_state(key, "activated", "Pre-Active"));
            }
            key.state = KeyState::Active;
            attributes::set_date(
                key,
                "Activation Date",
                now.as_second(),
                now.as_millisecond(),
            )
        })
        .await
    }

    async fn revoke(&self, p: &Item, placeholder: Option<&KeyId>) -> OpResult {
        let reason = p
            .child(tag::REVOCATION_REASON)
            .ok_or_else(|| KmipError::missing("Revocation Reason"))?;
        let code = enum_field(
            reason,
            tag::REVOCATION_REASON_CODE,
            "Revocation Reason Code",
        )?
        .ok_or_else(|| KmipError::missing("Revocation Reason: Revocation Reason Code"))?;
        // The reason is kept on the key, so it is held to the attribute limits.
        match text_field(reason, tag::REVOCATION_MESSAGE, "Revocation Message")? {
            Some(m) if m.len() > attributes::MAX_TEXT => {
                return Err(KmipError::invalid(format!(
                    "Revocation Message is {} bytes long, over the limit of {} bytes",
                    m.len(),
                    attributes::MAX_TEXT
                )));
            }
            _ => {}
        }
        if let Some(other) = reason
            .children()
            .iter()
            .find(|c| c.tag != tag::REVOCATION_REASON_CODE && c.tag != tag::REVOCATION_MESSAGE)
        {
            return Err(KmipError::invalid(format!(
                "Revocation Reason holds only a Revocation Reason Code and a Revocation Message, not {}",
                other.tag
            )));
        }
        let compromised = matches!(code, revocation::KEY_COMPROMISE | revocation::CA_COMPROMISE);
        let occurred = match p.child(tag::COMPROMISE_OCCURRENCE_DATE) {
            None => None,
            Some(d) => Some(d.as_date_time().ok_or_else(|| {
                KmipError::invalid("Compromise Occurrence Date must be a Date-Time")
            })?),
        };
        let reason = reason.value.clone();
        self.transition(p, placeholder, |key, now| {
            // A compromised key may be revoked again (from any state but Destroyed, KMIP
            // 1.4 section 4.20); otherwise only a usable key is revoked.
            let allowed = if compromised {
                key.state != KeyState::Destroyed
            } else {
                matches!(key.state, KeyState::PreActive | KeyState::Active)
            };
            if !allowed {
                return Err(wrong_state(key, "revoked", "Pre-Active or Active"));
            }
            let ms = now.as_millisecond();
            if compromised {
                key.state = KeyState::Compromised;
                attributes::set_date(key, "Compromise Date", now.as_second(), ms)?;
                attributes::set_date(
                    key,
                    "Compromise Occurrence Date",
                    occurred.unwrap_or_else(|| now.as_second()),
                    ms,
                )?;
            } else {
                key.state = KeyState::Deactivated;
            }
            if attributes::instances(key, "Deactivation Date").is_empty() {
                attributes::set_date(key, "Deactivation Date", now.as_second(), ms)?;
            }
            attributes::set_by_server(
                key,
                &Attribute {
                    name: "Revocation Reason".to_owned(),
                    index: 0,
                    value: reason.clone(),
                },
                ms,
            )
        })
        .await
    }

    async fn destroy(&self, p: &Item, placeholder: Option<&KeyId>) -> OpResult {
        self.transition(p, placeholder, |key, now| {
            match key.state {
                KeyState::Active => {
                    return Err(KmipError::new(
                        result_reason::PERMISSION_DENIED,
                        format!("key {} is active; revoke it before destroying it", key.id),
                    ));
                }
                KeyState::Destroyed => {
                    return Err(wrong_state(key, "destroyed", "Pre-Active or Deactivated"));
                }
                KeyState::PreActive | KeyState::Deactivated | KeyState::Compromised => {}
            }
            key.state = KeyState::Destroyed;
            attributes::set_date(key, "Destroy Date", now.as_second(), now.as_millisecond())
        })
        .await
    }

    /// A state change: applies `f` to the key and answers with its Unique Identifier.
    async fn transition(
        &self,
        p: &Item,
        placeholder: Option<&KeyId>,
        f: impl FnOnce(&mut Key, Timestamp) -> Result<(), KmipError>,
    ) -> OpResult {
        let guard = self.modify.lock().await;
        let mut key = self.key(p, placeholder)?;
        f(&mut key, Timestamp::now())?;
        self.commit(key.clone()).await?;
        drop(guard);
        if let Some(r) = &self.replication {
            r.publish(std::slice::from_ref(&key));
        }
        Ok((vec![uid_item(&key.id)], Placeholder::Set(key.id)))
    }

    /// An attribute change: applies `f` and answers with the Unique Identifier and the
    /// attribute `f` returns.
    async fn change(
        &self,
        p: &Item,
        placeholder: Option<&KeyId>,
        f: impl FnOnce(&mut Key, i64) -> Result<Attribute, KmipError>,
    ) -> OpResult {
        let guard = self.modify.lock().await;
        let mut key = self.key(p, placeholder)?;
        if key.state == KeyState::Destroyed {
            return Err(KmipError::new(
                result_reason::PERMISSION_DENIED,
                format!("key {} is destroyed; its attributes are frozen", key.id),
            ));
        }
        let before = key.clone();
        let attr = f(&mut key, Timestamp::now().as_millisecond())?;
        attributes::within_limits(&key, Some(&before))?;
        self.commit(key.clone()).await?;
        drop(guard);
        if let Some(r) = &self.replication {
            r.publish(std::slice::from_ref(&key));
        }
        Ok((
            vec![uid_item(&key.id), attr.to_item(true)],
            Placeholder::Set(key.id),
        ))
    }

    async fn commit(&self, key: Key) -> Result<(), KmipError> {
        let id = key.id.clone();
        self.store.commit(vec![key]).await.map_err(|e| {
            if let StoreError::TooLarge { bytes, limit, .. } = e {
                return KmipError::new(
                    result_reason::INVALID_FIELD,
                    format!(
                        "key {id} would grow to {bytes} bytes, over the server's limit of {limit} bytes per object; nothing was changed"
                    ),
                );
            }
            tracing::error!(key = %id, error = %e, "failed to store key");
            KmipError::new(
                result_reason::GENERAL_FAILURE,
                format!("key {id} could not be stored durably; nothing was changed"),
            )
        })
    }

    /// The key the payload names, or the ID Placeholder's.
    fn key(&self, p: &Item, placeholder: Option<&KeyId>) -> Result<Key, KmipError> {
        let id = match text_field(p, tag::UNIQUE_IDENTIFIER, "Unique Identifier")? {
            Some(text) => KeyId::try_from(text.to_owned()).map_err(|_| not_found(text))?,
            None => placeholder.cloned().ok_or_else(|| {
                KmipError::new(
                    result_reason::MISSING_DATA,
                    "Unique Identifier is required: the ID Placeholder is empty (no earlier item of this batch named a key, or a Locate found none)",
                )
            })?,
        };
        self.store
            .get(&id)
            .filter(|k| self.visible(k))
            .ok_or_else(|| not_found(id.as_str()))
    }
}

fn not_found(id: &str) -> KmipError {
    KmipError::new(
        result_reason::ITEM_NOT_FOUND,
        format!("no key with Unique Identifier {id:?}"),
    )
}

fn wrong_state(key: &Key, action: &str, needed: &str) -> KmipError {
    KmipError::new(
        result_reason::PERMISSION_DENIED,
        format!(
            "key {} is {:?} and cannot be {action}; it must be {needed}",
            key.id, key.state
        ),
    )
}

fn uid_item(id: &KeyId) -> Item {
    Item::text(tag::UNIQUE_IDENTIFIER, id.as_str())
}

/// The encoded size of [`uid_item`]'s answer, without building it.
fn uid_len(id: &KeyId) -> usize {
    crate::ttlv::HEADER_LEN + crate::ttlv::padded_len(id.as_str().len())
}

/// Whether `op` changes a key: its answer is sent whatever its size, so room for it is
/// checked before it runs.
fn changes(op: u32) -> bool {
    matches!(
        op,
        operation::CREATE
            | operation::REGISTER
            | operation::ADD_ATTRIBUTE
            | operation::MODIFY_ATTRIBUTE
            | operation::DELETE_ATTRIBUTE
            | operation::ACTIVATE
            | operation::REVOKE
            | operation::DESTROY
    )
}

fn discover_versions(p: &Item) -> Vec<Item> {
    let asked: Vec<(i32, i32)> = p
        .children_with(tag::PROTOCOL_VERSION)
        .filter_map(parse_version)
        .collect();
    VERSIONS
        .iter()
        .filter(|v| asked.is_empty() || asked.contains(v))
        .map(|v| version_item(*v))
        .collect()
}

fn require_symmetric(p: &Item) -> Result<(), KmipError> {
    match enum_field(p, tag::OBJECT_TYPE, "Object Type")? {
        Some(object_type::SYMMETRIC_KEY) => Ok(()),
        Some(other) => Err(KmipError::new(
            result_reason::FEATURE_NOT_SUPPORTED,
            format!(
                "Object Type {other:#x} is not supported; this server keeps symmetric keys (2)"
            ),
        )),
        None => Err(KmipError::missing("Object Type")),
    }
}

/// The attributes of a Template-Attribute, in order.
fn template_attributes(p: &Item) -> Result<Vec<(String, Value)>, KmipError> {
    let Some(template) = p.child(tag::TEMPLATE_ATTRIBUTE) else {
        return Ok(Vec::new());
    };
    if template.child(tag::NAME).is_some() {
        return Err(KmipError::new(
            result_reason::FEATURE_NOT_SUPPORTED,
            "named templates are not supported; give the attributes themselves",
        ));
    }
    template
        .children_with(tag::ATTRIBUTE)
        .map(|a| attributes::parse(a).map(|(name, _, value)| (name, value)))
        .collect()
}

/// Takes the cipher out of a template: AES, 128/192/256 bits.
fn take_cipher(template: Vec<(String, Value)>) -> Result<(u16, Vec<(String, Value)>), KmipError> {
    let mut alg = None;
    let mut len = None;
    let mut rest = Vec::new();
    for (name, value) in template {
        match (name.as_str(), &value) {
            ("Cryptographic Algorithm", Value::Enumeration(a)) => alg = Some(*a),
            ("Cryptographic Length", Value::Integer(l)) => len = Some(*l),
            ("Cryptographic Algorithm", _) => {
                return Err(KmipError::invalid(
                    "Cryptographic Algorithm must be an Enumeration",
                ));
            }
            ("Cryptographic Length", _) => {
                return Err(KmipError::invalid(
                    "Cryptographic Length must be an Integer",
                ));
            }
            _ => rest.push((name, value)),
        }
    }
    match alg {
        Some(algorithm::AES) => {}
        Some(other) => {
            return Err(KmipError::new(
                result_reason::FEATURE_NOT_SUPPORTED,
                format!("Cryptographic Algorithm {other:#x} is not supported; use AES (3)"),
            ));
        }
        None => return Err(KmipError::missing("Cryptographic Algorithm")),
    }
    let len = len.ok_or_else(|| KmipError::missing("Cryptographic Length"))?;
    match u16::try_from(len) {
        Ok(bits @ (128 | 192 | 256)) => Ok((bits, rest)),
        _ => Err(KmipError::invalid(format!(
            "Cryptographic Length {len} is not an AES key length (128, 192, 256)"
        ))),
    }
}

/// The first Name's value, used as the key's label.
fn first_name(template: &[(String, Value)]) -> String {
    template
        .iter()
        .find(|(n, _)| n == "Name")
        .and_then(|(_, v)| match v {
            Value::Structure(children) => children
                .iter()
                .find(|c| c.tag == tag::NAME_VALUE)?
                .as_text()
                .map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

/// Tags a new key with the key group of the drive that made it.
fn tag_group(key: &mut Key, group: Option<&str>, now_ms: i64) -> Result<(), KmipError> {
    let Some(group) = group else { return Ok(()) };
    attributes::set(
        key,
        &Attribute {
            name: attributes::KEY_GROUP.to_owned(),
            index: 0,
            value: Value::TextString(group.to_owned()),
        },
        now_ms,
    )
}

/// Stores the client's template attributes on a new key, checking each.
fn apply_template(
    key: &mut Key,
    template: Vec<(String, Value)>,
    now_ms: i64,
) -> Result<(), KmipError> {
    for (name, value) in template {
        let multi = attributes::settable(&name)?;
        attributes::check_value(&name, &value)?;
        let index = attributes::next_index(key, &name);
        if index > 0 && !multi {
            return Err(KmipError::invalid(format!("{name} may be given only once")));
        }
        attributes::set(key, &Attribute { name, index, value }, now_ms)?;
    }
    Ok(())
}
