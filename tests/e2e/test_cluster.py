"""End-to-end against a real cluster: install the chart, apply the quickstart, wait for the
KeyManager to become Ready, its keystore to hold the KeyGroup's keys, and the operator to
reach every replica for keystore sync.

Runs only when KUBECONFIG points at a cluster (and kubectl is on PATH); otherwise every
test is skipped with the reason printed. The images must be pullable by the cluster:
SHADOWKEEP_IMAGE (operator, repository:tag) and SHADOWKEEP_SERVER_IMAGE (key server).
Nothing here has run in CI: CI has no cluster.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
NAMESPACE = "shadowkeep-e2e"

pytestmark = pytest.mark.skipif(
    not os.environ.get("KUBECONFIG") or shutil.which("kubectl") is None,
    reason="end-to-end suite skipped: set KUBECONFIG to a cluster (and put kubectl on PATH) to run it",
)


def kubectl(*args, stdin=None, check=True):
    return subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, check=check, timeout=300,
    )


@pytest.fixture(scope="module")
def installed():
    import helm_python as helm

    image = os.environ.get("SHADOWKEEP_IMAGE", "ghcr.io/shadowkeep/shadowkeep:0.1.0")
    repository, _, tag = image.rpartition(":")
    values = {"image": {"repository": repository, "tag": tag}}
    if os.environ.get("SHADOWKEEP_SERVER_IMAGE"):
        values["serverImage"] = os.environ["SHADOWKEEP_SERVER_IMAGE"]
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("create", "namespace", NAMESPACE, check=False)
    with helm.Chart.load(str(REPO / "charts" / "shadowkeep")) as chart:
        rendered = chart.render(values, name="shadowkeep", namespace=NAMESPACE, is_install=True)
    manifests = "\n---\n".join(t for p, t in rendered.items() if not p.endswith("NOTES.txt"))
    kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=manifests)
    kubectl("apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / "quickstart"))
    yield
    kubectl("delete", "-n", NAMESPACE, "-f", str(REPO / "examples" / "quickstart"), check=False)


def wait_for(what, probe, timeout=600):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(5)
    pytest.fail(f"timed out waiting for {what}; last seen: {last!r}")


def condition(kind, name, type_):
    out = kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json", check=False)
    if out.returncode != 0:
        return None
    status = json.loads(out.stdout).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def test_quickstart_key_manager_becomes_ready(installed):
    ready = wait_for(
        "KeyManager tape-keys Ready=True",
        lambda: (c := condition("keymanager", "tape-keys", "Ready")) and c["status"] == "True" and c,
    )
    assert ready["reason"] == "ReplicasReady"


def test_key_group_keys_reach_the_keystore(installed):
    group = wait_for(
        "KeyGroup lto-default to report its keys",
        lambda: json.loads(kubectl("get", "keygroup", "lto-default", "-n", NAMESPACE, "-o", "json").stdout)
        .get("status", {}).get("keys"),
    )
    assert group == 11
    km = json.loads(kubectl("get", "keymanager", "tape-keys", "-n", NAMESPACE, "-o", "json").stdout)
    assert km["status"]["keyCount"] >= 11
    assert km["status"]["keystoreDigest"].startswith("sha256:")


def test_the_operator_reaches_every_replica_for_keystore_sync(installed):
    # The operator's pod asks each replica's admin API (headless Service DNS, port 9443)
    # for its keys, presenting the replica certificate: this proves that path in a cluster.
    synced = wait_for(
        "KeyManager tape-keys KeystoreInSync=True",
        lambda: (c := condition("keymanager", "tape-keys", "KeystoreInSync")) and c["status"] == "True" and c,
    )
    assert synced["reason"] == "ReplicasSynced"


def shadow_status():
    out = kubectl("get", "shadow", "tape-keys-dr", "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}


def test_the_shadow_mirrors_syncs_on_request_rotates_and_deactivates(installed):
    # The quickstart Shadow runs in zone eu-central-1a: the cluster needs a node there.
    wait_for("Shadow tape-keys-dr Shadowing", lambda: shadow_status().get("state") == "Shadowing")
    km = json.loads(kubectl("get", "keymanager", "tape-keys", "-n", NAMESPACE, "-o", "json").stdout)
    assert [s["name"] for s in km["status"]["shadows"]] == ["tape-keys-dr"]
    assert km["status"]["shadowHints"] == ["192.0.2.10"]
    kubectl("annotate", "shadow", "tape-keys-dr", "-n", NAMESPACE, "--overwrite",
            "shadowkeep.io/sync-requested-at=e2e-sync")
    wait_for("the sync echoed", lambda: shadow_status().get("lastHandledSyncAt") == "e2e-sync")
    kubectl("annotate", "shadow", "tape-keys-dr", "-n", NAMESPACE, "--overwrite",
            "shadowkeep.io/rotate-password-requested-at=e2e-rotate")

    def rotated():
        s = shadow_status()
        c = next((c for c in s.get("conditions", []) if c["type"] == "PasswordRotation"), None)
        return s.get("lastHandledRotationAt") == "e2e-rotate" and c and c["reason"] == "Rotated"

    # A mounted Secret reaches its pod within a minute or two: give it time.
    wait_for("the rotation done", rotated, timeout=900)
    assert shadow_status().get("state") == "Shadowing"
    kubectl("patch", "shadow", "tape-keys-dr", "-n", NAMESPACE, "--type", "merge",
            "-p", '{"spec":{"state":"Inactive"}}')
    wait_for("the shadow Inactive", lambda: shadow_status().get("state") == "Inactive")
    kubectl("patch", "shadow", "tape-keys-dr", "-n", NAMESPACE, "--type", "merge",
            "-p", '{"spec":{"state":"Active"}}')
    wait_for("the shadow Shadowing again", lambda: shadow_status().get("state") == "Shadowing")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
