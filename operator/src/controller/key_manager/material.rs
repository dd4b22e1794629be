//! The material and carry step: the control core's [`prepare`](crate::core::prepare), in
//! the Kubernetes shell — the state in Secrets and ConfigMaps, the drive index from the
//! watch of every drive history, the replicas at their pod DNS names.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shadowkeep_api::crd::TlsSource;

use super::dereference::Dereferenced;
use crate::build::{Inputs, Material};
use crate::controller::Context;
use crate::controller::backup::KubeTargets;
use crate::controller::state::{Kube, certificate_of, replicas};
use crate::core::Error;
use crate::core::keystore_sync::Replicas;
pub use crate::core::prepare::{Outcome, Prepared, Waiting};
use crate::core::prepare::{Surroundings, prepare as core_prepare};

/// Runs the step.
pub async fn prepare(ctx: &Context, read: &Dereferenced, now: &Time) -> Result<Outcome, Error> {
    let state = Kube::new(ctx.client.clone());
    let base = Inputs::of_key_manager(&read.key_manager);
    let ready = read
        .statefulset
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let user_certificate = read.replica_certificate.as_ref().map(certificate_of);
    let own = |material: &Material| -> Replicas {
        let certificate = if read.key_manager.spec.tls.source == TlsSource::Generated {
            material.tls.clone()
        } else {
            user_certificate.clone()
        };
        replicas(
            ctx,
            &base,
            ready,
            certificate
                .as_ref()
                .map(|(crt, key, ca)| (crt.as_slice(), key.as_slice(), ca.as_slice())),
            &base.tls_secret_name(),
        )
    };
    let others = |serial: &str, me: &str| ctx.drive_index.others_serving(serial, me);
    let targets = KubeTargets::new(ctx.client.clone());
    let around = Surroundings {
        origins: ctx,
        others_serving: &others,
        replicas: &own,
        targets: &targets,
    };
    core_prepare(&state, &around, &read.declared(), now).await
}
