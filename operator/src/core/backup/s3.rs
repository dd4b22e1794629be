//! An S3-compatible bucket as a backup target, through `object_store`: both shells use
//! it; only where the credentials come from differs (a Secret, or files laid out like one).

use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, RetryConfig,
};
use shadowkeep_api::crd::S3BackupTarget;
use zeroize::Zeroizing;

use super::archive::{MAX_BYTES, is_backup_name};
use super::{Target, TargetError};
use crate::core::state::Owner;

/// An S3 access key, read from where the target's `credentialsSecretRef` points. Never
/// printed.
pub struct Credentials {
    /// The access key id.
    pub access_key_id: Zeroizing<String>,
    /// The secret access key.
    pub secret_access_key: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials from the values of the two keys, `what` naming where they were read
    /// (for the error when one is missing, empty or not text).
    pub fn of(
        access_key_id: Option<&[u8]>,
        secret_access_key: Option<&[u8]>,
        spec: &S3BackupTarget,
        what: &str,
    ) -> Result<Self, String> {
        let text = |value: Option<&[u8]>, key: &str| -> Result<Zeroizing<String>, String> {
            let value = value.ok_or_else(|| format!("{what} has no key {key:?}"))?;
            let text = std::str::from_utf8(value)
                .map_err(|_| format!("{what} key {key:?} is not text"))?
                .trim();
            if text.is_empty() {
                return Err(format!("{what} key {key:?} is empty"));
            }
            Ok(Zeroizing::new(text.to_owned()))
        };
        let keys = &spec.credentials_secret_ref;
        Ok(Self {
            access_key_id: text(access_key_id, keys.access_key_id_key())?,
            secret_access_key: text(secret_access_key, keys.secret_access_key_key())?,
        })
    }
}

/// How long one request may take, and how long it is retried: a target that hangs
/// delays only the backup, and never for long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// A bucket's `PREFIX/NAMESPACE/NAME/` as a backup target.
pub struct S3 {
    store: AmazonS3,
    dir: Path,
    shown: String,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("at", &self.shown)
            .finish_non_exhaustive()
    }
}

/// The S3 target `spec` for the backups of `owner`, signing with `credentials`.
pub fn open(owner: &Owner, spec: &S3BackupTarget, credentials: &Credentials) -> Result<S3, String> {
    // reqwest is built without a provider of its own; the workspace's is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&spec.bucket)
        .with_region(spec.region.as_deref().unwrap_or("us-east-1"))
        .with_access_key_id(credentials.access_key_id.as_str())
        .with_secret_access_key(credentials.secret_access_key.as_str())
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_client_options(
            ClientOptions::new()
                .with_timeout(REQUEST_TIMEOUT)
                .with_connect_timeout(Duration::from_secs(5))
                .with_allow_http(spec.allow_http),
        )
        .with_retry(RetryConfig {
            max_retries: 2,
            retry_timeout: RETRY_TIMEOUT,
            ..RetryConfig::default()
        });
    if let Some(endpoint) = &spec.endpoint {
        if endpoint.starts_with("http://") && !spec.allow_http {
            return Err(format!(
                "endpoint {endpoint} is plain HTTP; set allowHttp: true to use it"
            ));
        }
        builder = builder.with_endpoint(endpoint);
    }
    let store = builder
        .build()
        .map_err(|e| format!("failed to configure the S3 client: {e}"))?;
    let mut parts: Vec<String> = spec
        .prefix
        .as_deref()
        .unwrap_or_default()
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    parts.extend([owner.namespace.clone(), owner.name.clone()]);
    let dir = parts.iter().map(String::as_str).collect::<Path>();
    let shown = format!("s3://{}/{dir}/", spec.bucket);
    Ok(S3 { store, dir, shown })
}

impl Target for S3 {
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, TargetError>> {
        Box::pin(async move {
            let mut listed = self.store.list(Some(&self.dir));
            let mut names = Vec::new();
            while let Some(meta) = listed.next().await {
                let meta = meta.map_err(|e| {
                    TargetError::Failed(format!("failed to list {}: {e}", self.shown))
                })?;
                if let Some(name) = meta.location.filename()
                    && meta.location.prefix_matches(&self.dir)
                    && meta.location.parts_count() == self.dir.parts_count() + 1
                    && is_backup_name(name)
                {
                    names.push(name.to_owned());
                }
            }
            Ok(names)
        })
    }

    fn create<'a>(
        &'a self,
        name: &'a str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            let location = self.dir.clone().join(name);
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self.store.put_opts(&location, bytes.into(), options).await {
                Ok(_) => Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => Err(TargetError::Exists),
                Err(e) => Err(TargetError::Failed(format!(
                    "failed to write {}{name}: {e}",
                    self.shown
                ))),
            }
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            self.store
                .delete(&self.dir.clone().join(name))
                .await
                .map_err(|e| {
                    TargetError::Failed(format!("failed to delete {}{name}: {e}", self.shown))
                })
        })
    }

    fn read<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<u8>, TargetError>> {
        Box::pin(async move {
            let failed = |e: object_store::Error| {
                TargetError::Failed(format!("failed to read {}{name}: {e}", self.shown))
            };
            let got = self
                .store
                .get(&self.dir.clone().join(name))
                .await
                .map_err(failed)?;
            if usize::try_from(got.meta.size).unwrap_or(usize::MAX) > MAX_BYTES {
                return Err(TargetError::Failed(format!(
                    "failed to read {}{name}: {} bytes is more than a backup may hold",
                    self.shown, got.meta.size
                )));
            }
            Ok(got.bytes().await.map_err(failed)?.to_vec())
        })
    }
}
