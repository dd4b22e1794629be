//! An estate at rest costs the API server no write: a reconcile that finds everything as
//! it left it applies no child and writes no status. What changed is still written.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kube::api::Api;
use kube_fake_client::interceptor::Funcs;
use shadowkeep::controller::{Context, key_manager::reconcile};
use shadowkeep_api::crd::{DriveTable, KeyManager};

use common::{NS, cluster_with, edit, served};

/// Every write the fake API server is asked for, as `verb name`.
#[derive(Default)]
struct Writes(Mutex<Vec<String>>, AtomicUsize);

impl Writes {
    fn note(&self, verb: &str, name: &str) {
        self.0.lock().unwrap().push(format!("{verb} {name}"));
        self.1.fetch_add(1, Ordering::Relaxed);
    }

    fn since(&self, start: usize) -> Vec<String> {
        self.0.lock().unwrap()[start..].to_vec()
    }

    fn count(&self) -> usize {
        self.1.load(Ordering::Relaxed)
    }
}

fn counting(writes: &Arc<Writes>) -> Funcs {
    let noted = |verb: &'static str| {
        let writes = Arc::clone(writes);
        move |name: &str| writes.note(verb, name)
    };
    let (create, patch, patch_status, replace, delete) = (
        noted("create"),
        noted("patch"),
        noted("patch status"),
        noted("replace"),
        noted("delete"),
    );
    Funcs::new()
        .create(move |x| {
            create(x.object["metadata"]["name"].as_str().unwrap_or("?"));
            Ok(None)
        })
        .patch(move |x| {
            patch(x.name);
            Ok(None)
        })
        .patch_status(move |x| {
            patch_status(x.name);
            Ok(None)
        })
        .replace(move |x| {
            replace(x.name);
            Ok(None)
        })
        .delete(move |x| {
            delete(x.name);
            Ok(None)
        })
}

async fn run(client: &kube::Client, ctx: &Arc<Context>) {
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap();
    reconcile(Arc::new(km), Arc::clone(ctx)).await.unwrap();
}

#[tokio::test]
async fn a_reconcile_at_rest_writes_nothing_and_a_change_is_still_written() {
    let writes = Arc::new(Writes::default());
    let client = cluster_with(|_| {}, counting(&writes)).await;
    let ctx = Arc::new(
        Context::listed(client.clone(), "shadowkeep-test")
            .await
            .unwrap(),
    );
    run(&client, &ctx).await;
    assert!(writes.count() > 10, "the first reconcile made the estate");

    let before = writes.count();
    run(&client, &ctx).await;
    run(&client, &ctx).await;
    assert_eq!(
        writes.since(before),
        Vec::<String>::new(),
        "written by reconciles that found everything as they left it"
    );

    // A new drive: the configuration, the drive history and the table's count are written,
    // and nothing else: not the StatefulSet, whose pods take a new drive without a roll.
    let tables = Api::<DriveTable>::namespaced(client.clone(), NS);
    edit(&tables, "library-a", |t: &mut DriveTable| {
        let mut drive = t.spec.drives[0].clone();
        drive.serial = "1013000999".to_owned();
        drive.wwn = None;
        t.spec.drives.push(drive);
    })
    .await;
    let before = writes.count();
    run(&client, &ctx).await;
    let mut written = writes.since(before);
    written.sort();
    assert_eq!(
        written,
        [
            "patch status library-a",
            "patch tape-keys-config",
            "patch tape-keys-drive-history",
        ],
        "exactly what the new drive changes"
    );
    assert!(
        served(&client, "tape-keys")
            .await
            .contains(&"1013000999".to_owned())
    );
}
