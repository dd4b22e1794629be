//! What the operator's integration tests share: the quickstart estate in an in-memory API
//! server, and readers of what the operator wrote.

// Each test file uses its own share of these.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use kube_fake_client::ClientBuilder;
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager, Shadow};
use shadowkeep_api::manifest::{Decoded, Decoder, Resource, parse_yaml_documents};

/// The namespace the quickstart is put in.
pub const NS: &str = "default";

/// An in-memory API holding the quickstart manifests (in namespace `default`).
pub async fn cluster(edit: impl Fn(&mut KeyManager)) -> kube::Client {
    cluster_with(edit, kube_fake_client::interceptor::Funcs::new()).await
}

/// [`cluster`], whose requests pass through `interceptors` first (to make it refuse one).
pub async fn cluster_with(
    edit: impl Fn(&mut KeyManager),
    interceptors: kube_fake_client::interceptor::Funcs,
) -> kube::Client {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    let decoder = Decoder::new();
    let mut builder = ClientBuilder::new()
        .with_interceptor_funcs(interceptors)
        .with_resource::<KeyManager>()
        .with_resource::<DriveTable>()
        .with_resource::<KeyGroup>()
        .with_resource::<Shadow>();
    for file in [
        "keymanager.yaml",
        "keygroup.yaml",
        "drivetable.yaml",
        "shadow.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for doc in parse_yaml_documents(&text).unwrap() {
            let Ok(Decoded::Resource(resource)) = decoder.decode(&doc) else {
                panic!("{file} does not decode");
            };
            builder = match *resource {
                Resource::KeyManager(mut o) => {
                    o.metadata.namespace = Some(NS.to_owned());
                    edit(&mut o);
                    builder.with_object(o)
                }
                Resource::DriveTable(mut o) => {
                    o.metadata.namespace = Some(NS.to_owned());
                    builder.with_object(o)
                }
                Resource::KeyGroup(mut o) => {
                    o.metadata.namespace = Some(NS.to_owned());
                    builder.with_object(o)
                }
                Resource::Shadow(mut o) => {
                    o.metadata.namespace = Some(NS.to_owned());
                    builder.with_object(o)
                }
            };
        }
    }
    builder.build().await.unwrap()
}

/// A value of a Secret.
pub fn data(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> Vec<u8> {
    secret.data.as_ref().unwrap()[key].0.clone()
}

/// The drive serials in the applied configuration of KeyManager `name` in `default`.
pub async fn served(client: &kube::Client, name: &str) -> Vec<String> {
    served_in(client, NS, name).await
}

/// The drive serials in the applied configuration of KeyManager `name` in `ns`.
pub async fn served_in(client: &kube::Client, ns: &str, name: &str) -> Vec<String> {
    let config = kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .get(&format!("{name}-config"))
        .await
        .unwrap();
    shadowkeep_api::server_config::ServerConfig::from_yaml(&config.data.unwrap()["server.yaml"])
        .unwrap()
        .drives
        .drives
        .into_iter()
        .map(|d| d.serial)
        .collect()
}

/// Creates the object `value` describes, in the namespace its metadata names.
pub async fn create<K>(client: &kube::Client, value: serde_json::Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).unwrap();
    let ns = object.meta().namespace.clone().unwrap();
    kube::Api::<K>::namespaced(client.clone(), &ns)
        .create(&kube::api::PostParams::default(), &object)
        .await
        .unwrap()
}

/// Reads object `name`, changes it with `change`, and writes it back.
pub async fn edit<K>(api: &kube::Api<K>, name: &str, change: impl FnOnce(&mut K))
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut object = api.get(name).await.unwrap();
    change(&mut object);
    api.replace(name, &kube::api::PostParams::default(), &object)
        .await
        .unwrap();
}

/// Sets annotation `key` to `value` on object `name`.
pub async fn annotate<K>(api: &kube::Api<K>, name: &str, key: &str, value: &str)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    edit(api, name, |o: &mut K| {
        o.meta_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value.to_owned());
    })
    .await;
}
