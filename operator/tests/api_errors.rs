//! The KeyManager reconcile when the API server refuses, against a scripted API server
//! (tower-test): the reconcile stops at the refused call with an error naming what it was
//! doing, makes no call after it (nothing half-written), and the error policy backs off.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::reflector;
use shadowkeep::controller::drive_moves::SharedDriveIndex;
use shadowkeep::controller::{Backoff, Context, Error, backoff_key, error_policy, key_manager};
use shadowkeep_api::crd::KeyManager;

/// How the scripted server answers one request: status and JSON body.
type Script = fn(&Method, &str) -> (StatusCode, serde_json::Value);

/// A client whose every request is answered by `script`; the requests are recorded as
/// `METHOD path`.
fn scripted(script: Script) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
    scripted_echoing(move |method, path, _| script(method, path))
}

/// [`scripted`], with the request's JSON body given to the script (to echo what was
/// written back, as the API server does).
fn scripted_echoing(
    script: impl Fn(&Method, &str, serde_json::Value) -> (StatusCode, serde_json::Value)
    + Send
    + 'static,
) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
    use http_body_util::BodyExt as _;

    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let path = request.uri().path().to_owned();
            let method = request.method().clone();
            record.lock().unwrap().push(format!("{method} {path}"));
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            let (status, body) = script(&method, &path, body);
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    (kube::Client::new(service, "default"), seen)
}

/// A failure as the API server reports it (kube reads `reason`, e.g. `NotFound`).
fn status(code: StatusCode, message: &str) -> (StatusCode, serde_json::Value) {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalError",
    };
    (
        code,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn empty_list(kind: &str) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::OK,
        serde_json::json!({"apiVersion": "shadowkeep.io/v1alpha1", "kind": kind,
                           "metadata": {}, "items": []}),
    )
}

fn context(client: kube::Client) -> Arc<Context> {
    let (key_managers, _writer) = reflector::store();
    Arc::new(Context {
        recorder: kube::runtime::events::Recorder::new(client.clone(), "shadowkeep-test".into()),
        client,
        metrics: shadowkeep::controller::telemetry::Metrics::new(),
        namespace: None,
        key_managers,
        drive_index: Arc::new(SharedDriveIndex::of(&[])),
        server_image: None,
        backoff: Backoff::default(),
        replica_resolver: None,
        applied: Arc::default(),
        shadow_resolver: None,
        rotation_locks: Arc::default(),
        git_cache: std::env::temp_dir().join("shadowkeep-git-unused"),
    })
}

fn key_manager() -> KeyManager {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyManager",
        "metadata": {"name": "tape-keys", "namespace": "default", "generation": 1,
                     "creationTimestamp": "2026-11-23T00:00:00Z"},
        "spec": {"serverId": "tape-keys", "replicas": 2},
    }))
    .unwrap()
}

async fn reconcile_against(script: Script) -> (Error, Vec<String>, Arc<Context>) {
    let (client, seen) = scripted(script);
    let ctx = context(client);
    let error = key_manager::reconcile(Arc::new(key_manager()), Arc::clone(&ctx))
        .await
        .unwrap_err();
    let seen = seen.lock().unwrap().clone();
    (error, seen, ctx)
}

#[tokio::test]
async fn an_unreachable_list_stops_the_reconcile_before_anything_is_written() {
    let (error, seen, ctx) =
        reconcile_against(|_, _| status(StatusCode::SERVICE_UNAVAILABLE, "etcd is down")).await;
    assert_eq!(
        seen,
        ["GET /apis/shadowkeep.io/v1alpha1/namespaces/default/drivetables"]
    );
    let message = error.to_string();
    assert!(
        message.contains("list DriveTable") && message.contains("etcd is down"),
        "{message}"
    );
    assert_eq!(error.metric_label(), "dereference");

    // The error policy backs off, longer each time, per object.
    let km = Arc::new(key_manager());
    let key = backoff_key(km.as_ref());
    for n in 1..=3 {
        let _ = error_policy(Arc::clone(&km), &error, Arc::clone(&ctx));
        assert_eq!(ctx.backoff.failures(&key), n);
    }
}

#[tokio::test]
async fn a_refused_kek_secret_stops_the_reconcile_with_the_secret_named() {
    let (error, seen, _) = reconcile_against(|method, path| match (method, path) {
        (&Method::GET, p) if p.ends_with("/drivetables") => empty_list("DriveTableList"),
        (&Method::GET, p) if p.ends_with("/keygroups") => empty_list("KeyGroupList"),
        (&Method::GET, p) if p.ends_with("/shadows") => empty_list("ShadowList"),
        (&Method::GET, _) => status(StatusCode::NOT_FOUND, "not found"),
        (&Method::POST, p) if p.ends_with("/secrets") => status(
            StatusCode::FORBIDDEN,
            "secrets is forbidden: User cannot create resource",
        ),
        _ => status(StatusCode::INTERNAL_SERVER_ERROR, "unexpected"),
    })
    .await;
    let message = error.to_string();
    assert!(
        message.contains("create Secret tape-keys-kek") && message.contains("forbidden"),
        "{message}"
    );
    // The refused create is the last call: no child, no status, no other Secret.
    assert_eq!(
        seen.last().map(String::as_str),
        Some("POST /api/v1/namespaces/default/secrets")
    );
    assert_eq!(
        seen.iter().filter(|r| !r.starts_with("GET ")).count(),
        1,
        "{seen:?}"
    );
}

/// Every write succeeds (echoed back) and every read finds nothing, except the requests
/// `refuse` names, which fail with a 500.
fn refusing(
    method: &Method,
    path: &str,
    body: serde_json::Value,
    refuse: impl Fn(&Method, &str) -> bool,
) -> (StatusCode, serde_json::Value) {
    if refuse(method, path) {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "refused by the test");
    }
    match *method {
        Method::GET if path.ends_with("/drivetables") => empty_list("DriveTableList"),
        Method::GET if path.ends_with("/keygroups") => empty_list("KeyGroupList"),
        Method::GET if path.ends_with("/shadows") => empty_list("ShadowList"),
        Method::GET => status(StatusCode::NOT_FOUND, "not found"),
        _ => (StatusCode::OK, body),
    }
}

/// Reconciles through the measured path the controller runs, against `script`.
async fn measured_against(
    script: fn(&Method, &str, serde_json::Value) -> (StatusCode, serde_json::Value),
) -> (Error, Vec<String>, Arc<Context>) {
    let (client, seen) = scripted_echoing(script);
    let ctx = context(client);
    let km = Arc::new(key_manager());
    let error = shadowkeep::controller::measured(
        &ctx,
        km.as_ref(),
        key_manager::reconcile(Arc::clone(&km), Arc::clone(&ctx)),
    )
    .await
    .unwrap_err();
    let seen = seen.lock().unwrap().clone();
    (error, seen, ctx)
}

#[tokio::test]
async fn a_refused_child_fails_the_apply_step_and_is_counted_and_reported_as_such() {
    let (error, seen, ctx) = measured_against(|method, path, body| {
        refusing(method, path, body, |m, p| {
            *m == Method::PATCH && p.contains("/statefulsets/")
        })
    })
    .await;
    assert_eq!(error.metric_label(), "apply");
    let message = error.to_string();
    assert!(
        message.starts_with("failed to apply StatefulSet tape-keys: "),
        "{message}"
    );
    // The children before it were applied in the builder's order; nothing after it.
    let patched: Vec<&str> = seen
        .iter()
        .filter(|r| r.starts_with("PATCH "))
        .map(String::as_str)
        .collect();
    assert_eq!(
        patched,
        [
            "PATCH /api/v1/namespaces/default/secrets/tape-keys-license",
            "PATCH /api/v1/namespaces/default/secrets/tape-keys-shadow-verifiers",
            "PATCH /api/v1/namespaces/default/configmaps/tape-keys-shadow-hints",
            "PATCH /api/v1/namespaces/default/configmaps/tape-keys-config",
            "PATCH /api/v1/namespaces/default/services/tape-keys-peers",
            "PATCH /api/v1/namespaces/default/services/tape-keys-kmip",
            "PATCH /apis/apps/v1/namespaces/default/statefulsets/tape-keys",
        ]
    );
    // A Warning Event names the step; the failure is counted under it.
    assert_eq!(
        seen.last().map(String::as_str),
        Some("POST /apis/events.k8s.io/v1/namespaces/default/events")
    );
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains(
            "shadowkeep_operator_reconcile_failures_total{kind=\"KeyManager\",category=\"apply\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "shadowkeep_operator_reconcile_duration_seconds_count{kind=\"KeyManager\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn each_step_fails_under_its_own_category() {
    let (error, ..) = measured_against(|method, path, body| {
        refusing(method, path, body, |m, p| {
            *m == Method::POST && p.ends_with("/secrets")
        })
    })
    .await;
    assert_eq!(error.metric_label(), "material");
    assert!(
        error
            .to_string()
            .starts_with("failed to create Secret tape-keys-kek: "),
        "{error}"
    );
    let (error, ..) = measured_against(|method, path, body| {
        refusing(method, path, body, |m, p| {
            *m == Method::PATCH && p.ends_with("/keymanagers/tape-keys/status")
        })
    })
    .await;
    assert_eq!(error.metric_label(), "status");
    assert_eq!(error.event_reason(), "StatusFailed");
    assert!(
        error
            .to_string()
            .starts_with("failed to update the status of KeyManager default/tape-keys: "),
        "{error}"
    );
}
