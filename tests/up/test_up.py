"""`shadowkeep up` as a process: the quickstart estate on loopback addresses, used with
PyKMIP, stopped by SIGINT or killed by SIGKILL, restarted, fed a broken manifest and a
DriveTable edit.

The `shadowkeep` binary must exist (`cargo build -p shadowkeep`): $SHADOWKEEP, or
target/debug/shadowkeep in this repository. Every estate gets its own loopback range, so
tests never share an address.
"""

import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kmip.core import enums
from kmip.pie.client import ProxyKmipClient

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart"
_ranges = itertools.count(1)


def binary():
    path = Path(os.environ.get("SHADOWKEEP", REPO / "target" / "debug" / "shadowkeep"))
    if not path.exists():
        pytest.fail(f"{path} not found: build it with `cargo build -p shadowkeep`")
    return path


def wait_for(what, check, limit=90.0):
    """Polls `check` until it returns something true; fails naming `what` after `limit` s."""
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # the condition is not met yet
            last = e
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


def processes_using(path):
    """Pids of live processes whose command line names `path` (zombies do not count)."""
    found = []
    needle = str(path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "cmdline").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def parent_of(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def tree_digest(root):
    """Every path under `root` with a digest of its contents."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        out[str(p.relative_to(root))] = (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        )
    return out


class Up:
    """One `shadowkeep up` process."""

    def __init__(self, tmp_path, manifests, data_dir=None, base=None, extra=()):
        self.manifests = manifests
        self.extra = list(extra)
        self.data_dir = data_dir or tmp_path / "data"
        self.base = base or f"127.{100 + os.getpid() % 100}.{next(_ranges)}.2"
        self.log = tmp_path / f"up-{time.monotonic_ns()}.log"
        self.proc = None

    def start(self):
        self.out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [binary(), "up", str(self.manifests), "--data-dir", str(self.data_dir),
             "--address-base", self.base, *self.extra],
            stdout=self.out, stderr=subprocess.STDOUT,
        )
        return self

    def output(self):
        return self.log.read_text(errors="replace")

    def estate(self):
        return json.loads((self.data_dir / "estate.json").read_text())

    def wait_ready(self):
        """Waits until estate.json lists every server as a running child of this `up`."""
        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"up exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            e = self.estate()
            ok = e["servers"] and all(s["pid"] and parent_of(s["pid"]) == self.proc.pid for s in e["servers"])
            return e if ok else None
        return wait_for("estate.json listing running servers", ready)

    def interrupt(self):
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=60)
        self.out.close()
        return code

    def status(self):
        out = subprocess.run(
            [binary(), "status", "--data-dir", str(self.data_dir), "-o", "json"],
            capture_output=True, check=True, timeout=60,
        )
        return json.loads(out.stdout)


@pytest.fixture
def manifests(tmp_path):
    dest = tmp_path / "manifests"
    shutil.copytree(QUICKSTART, dest)
    return dest


@pytest.fixture
def up(tmp_path, manifests):
    running = Up(tmp_path, manifests).start()
    running.wait_ready()
    yield running
    if running.proc.poll() is None:
        code = running.interrupt()
        assert code == 0, running.output()[-4000:]
    wait_for("no server left", lambda: not processes_using(running.data_dir), limit=30)


def client(estate, server, identity=None):
    c = next(c for c in estate["clients"] if identity in (None, c["identity"]))
    host, port = server["kmip"].rsplit(":", 1)
    return ProxyKmipClient(
        hostname=host, port=int(port), cert=c["cert"], key=c["key"], ca=estate["ca"],
        ssl_version="PROTOCOL_TLSv1_2", kmip_version=enums.KMIPVersion.KMIP_1_2,
        config_file="/dev/null",
    )


def create(estate, server, name, identity=None):
    with client(estate, server, identity) as c:
        uid = c.create(enums.CryptographicAlgorithm.AES, 256, name=name)
        return uid, c.get(uid).value


def get(estate, server, uid, identity=None):
    with client(estate, server, identity) as c:
        return c.get(uid).value


def test_the_quickstart_serves_mirrored_keys_and_status_tells(up):
    estate = up.estate()
    replicas = [s for s in estate["servers"] if s["role"] == "replica"]
    assert [s["name"] for s in replicas] == ["tape-keys-0", "tape-keys-1"]
    assert len({s["kmip"].rsplit(":")[0] for s in replicas}) == 2, "each server has its own address"
    assert all(s["kmip"].endswith(":5696") and s["admin"].endswith(":9443") for s in replicas)
    uid, material = create(estate, replicas[0], "TAPE0001")
    # peerAcknowledgements: 1 — the Create answered once the other replica held the key.
    assert get(estate, replicas[1], uid) == material
    status = up.status()
    km = status["keyManagers"][0]
    assert (km["name"], km["replicas"], km["ready"]) == ("tape-keys", 2, 2)
    states = {s["name"]: (s["role"], s["state"]) for s in status["servers"]}
    assert states == {"tape-keys-0": ("replica", "Ready"), "tape-keys-1": ("replica", "Ready"),
                      "tape-keys-dr": ("shadow", "Shadowing")}
    # Ten KeyGroup keys made by the control core, and the one created here, on the
    # replicas and, once mirrored, on the shadow.
    assert wait_for("every server holding 12 keys",
                    lambda: all(s["keys"] == 11 + 1 for s in up.status()["servers"]))
    shadow = next(s for s in up.status()["servers"] if s["role"] == "shadow")
    assert shadow["lastSynchronized"], shadow

    def reported_ready():
        km = up.status()["keyManagers"][0]
        ready = next(c for c in km["conditions"] if c["type"] == "Ready")
        return km if ready["status"] == "True" else None

    km = wait_for("the KeyManager's status Ready, as the operator computes it", reported_ready)
    assert {c["type"] for c in km["conditions"]} >= {"Ready", "KeystoreInSync", "KeyHistoryAtRisk", "SingleServer"}


def test_a_stopped_server_is_unreachable_in_status_without_blocking_it(up):
    estate = up.estate()
    frozen = estate["servers"][1]["pid"]
    os.kill(frozen, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status = up.status()
        took = time.monotonic() - started
    finally:
        os.kill(frozen, signal.SIGCONT)
    states = {s["name"]: s["state"] for s in status["servers"]}
    assert states == {"tape-keys-0": "Ready", "tape-keys-1": "Unreachable", "tape-keys-dr": "Shadowing"}
    assert status["keyManagers"][0]["ready"] == 1
    assert took < 30, f"status took {took:.1f} s with one server frozen"


def test_sigint_stops_every_server_and_exits_zero(up):
    pids = [s["pid"] for s in up.estate()["servers"]]
    assert up.interrupt() == 0
    assert not processes_using(up.data_dir)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_sigkill_of_up_leaves_no_server(up):
    assert processes_using(up.data_dir)
    up.proc.kill()
    up.proc.wait(timeout=30)
    up.out.close()
    wait_for("every server gone after up was killed", lambda: not processes_using(up.data_dir), limit=30)


def test_a_second_up_on_the_same_directory_serves_the_same_keys(tmp_path, up):
    estate = up.estate()
    uid, material = create(estate, estate["servers"][0], "TAPE0002")
    ca_before = Path(estate["ca"]).read_bytes()
    assert up.interrupt() == 0
    wait_for("no server left", lambda: not processes_using(up.data_dir), limit=30)
    again = Up(tmp_path, up.manifests, data_dir=up.data_dir, base=up.base).start()
    try:
        again.wait_ready()
        estate2 = again.estate()
        assert [s["kmip"] for s in estate2["servers"]] == [s["kmip"] for s in estate["servers"]]
        assert Path(estate2["ca"]).read_bytes() == ca_before
        for server in (s for s in estate2["servers"] if s["role"] == "replica"):
            assert get(estate2, server, uid) == material
        # The shadow holds it too, and refuses to serve it while a replica answers.
        shadow = next(s for s in again.status()["servers"] if s["role"] == "shadow")
        assert wait_for("the shadow holding the key", lambda: next(
            s for s in again.status()["servers"] if s["role"] == "shadow")["keys"] == 12)
        assert shadow["state"] == "Shadowing"
    finally:
        assert again.interrupt() == 0


def test_two_ups_cannot_share_a_directory(tmp_path, up):
    second = Up(tmp_path, up.manifests, data_dir=up.data_dir).start()
    assert second.proc.wait(timeout=60) == 1
    second.out.close()
    assert "another `shadowkeep up` runs with" in second.output()


def test_an_invalid_manifest_starts_nothing_and_writes_nothing(tmp_path, manifests):
    broken = tmp_path / "broken"
    shutil.copytree(manifests, broken)
    (broken / "second.yaml").write_text(
        (REPO / "tests" / "invalid-manifests" / "drive-in-two-keymanagers.yaml").read_text()
    )
    fresh = Up(tmp_path, broken, data_dir=tmp_path / "fresh").start()
    assert fresh.proc.wait(timeout=60) == 1
    fresh.out.close()
    assert "nothing started, nothing written" in fresh.output()
    assert "error" in fresh.output()
    assert not (tmp_path / "fresh").exists()
    # A directory an earlier run left is not touched either.
    used = Up(tmp_path, manifests, data_dir=tmp_path / "used").start()
    used.wait_ready()
    assert used.interrupt() == 0
    before = tree_digest(tmp_path / "used")
    again = Up(tmp_path, broken, data_dir=tmp_path / "used").start()
    assert again.proc.wait(timeout=60) == 1
    again.out.close()
    assert tree_digest(tmp_path / "used") == before


def test_a_killed_server_is_restarted_and_loses_no_key(up):
    estate = up.estate()
    keys = [create(estate, estate["servers"][0], f"TAPE{n:04}") for n in range(5)]
    victim = estate["servers"][1]
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted():
        e = up.estate()
        s = next(s for s in e["servers"] if s["name"] == victim["name"])
        return e if s["pid"] and s["pid"] != victim["pid"] else None

    estate2 = wait_for("the killed server restarted and estate.json rewritten", restarted)
    assert "ended (signal: 9 (SIGKILL)); starting it again" in up.output()
    server = next(s for s in estate2["servers"] if s["name"] == victim["name"])
    for uid, material in keys:
        assert wait_for(f"key {uid} on the restarted server", lambda: get(estate2, server, uid) == material)


def test_a_drive_table_edit_admits_a_new_identity_without_restarting_up(up):
    pid = up.proc.pid
    table = up.manifests / "drivetable.yaml"
    table.write_text(table.read_text() + """    - serial: "2013000001"
      certificateIdentity: library-b.tape.example.com
      keyGroup: lto-default
      description: Library B, frame 1, drive 1
""")

    def admitted():
        e = up.estate()
        if not any(c["identity"] == "library-b.tape.example.com" for c in e["clients"]):
            return None
        if not all(s["pid"] for s in e["servers"]):
            return None
        return e

    estate = wait_for("library-b's certificate in estate.json", admitted)
    server = estate["servers"][0]

    def works():
        return create(estate, server, "TAPE-B-0001", identity="library-b.tape.example.com")

    uid, material = wait_for("library-b served", works)
    assert get(estate, estate["servers"][1], uid, identity="library-b.tape.example.com") == material
    assert up.proc.poll() is None and up.proc.pid == pid
    assert "the manifests changed" in up.output()


def test_a_broken_edit_is_not_applied_and_the_estate_keeps_running(up):
    estate = up.estate()
    (up.manifests / "keymanager.yaml").write_text("apiVersion: shadowkeep.io/v1alpha1\nkind: KeyManager\nmetadata: {name: tape-keys}\nspec: {replicas: -3}\n")
    wait_for("the broken edit reported", lambda: "not applied" in up.output())
    uid, material = create(estate, estate["servers"][0], "TAPE0009")
    assert get(estate, estate["servers"][1], uid) == material
    assert [s["pid"] for s in up.estate()["servers"]] == [s["pid"] for s in estate["servers"]]


def test_a_requested_reconcile_pulls_a_new_key_into_the_canonical_keystore(up):
    estate = up.estate()
    assert up.status()["keyManagers"][0]["keys"] == 11
    create(estate, estate["servers"][0], "TAPE0010")
    manifest = up.manifests / "keymanager.yaml"
    manifest.write_text(manifest.read_text().replace(
        "  name: tape-keys\n",
        "  name: tape-keys\n  annotations:\n    shadowkeep.io/reconcile-requested-at: \"2026-12-02T16:00:00Z\"\n",
        1,
    ))

    def pulled():
        km = up.status()["keyManagers"][0]
        return km if km["keys"] == 12 and km["keystoreInSync"] else None

    wait_for("the new key in the canonical keystore, every replica in sync", pulled)
    # An annotation is no configuration: no server was restarted for it.
    assert [s["pid"] for s in up.estate()["servers"]] == [s["pid"] for s in estate["servers"]]


def test_sigint_during_an_edit_stops_everything(up):
    table = up.manifests / "drivetable.yaml"
    table.write_text(table.read_text() + """    - serial: "3013000001"
      certificateIdentity: library-c.tape.example.com
""")
    wait_for("the edit noticed", lambda: "the manifests changed" in up.output())
    assert up.interrupt() == 0
    wait_for("no server left", lambda: not processes_using(up.data_dir), limit=30)


SECOND_KEY_MANAGER = """apiVersion: shadowkeep.io/v1alpha1
kind: KeyManager
metadata:
  name: vault-keys
spec:
  serverId: vault-keys-eu1
  replicas: 1
---
apiVersion: shadowkeep.io/v1alpha1
kind: DriveTable
metadata:
  name: library-v
spec:
  keyManagerRef:
    name: vault-keys
  drives:
    - serial: "7013000001"
      certificateIdentity: library-v.tape.example.com
"""


def test_a_drive_moved_to_another_key_manager_is_held_back_until_accepted(tmp_path, manifests):
    (manifests / "vault.yaml").write_text(SECOND_KEY_MANAGER)
    running = Up(tmp_path, manifests).start()
    try:
        running.wait_ready()
        assert len([s for s in running.estate()["servers"] if s["role"] == "replica"]) == 3
        # Move drive 1013000125 from tape-keys to vault-keys in one edit, without accepting.
        table = manifests / "drivetable.yaml"
        text = table.read_text()
        moved = """    - serial: "1013000125"
      certificateIdentity: library-a.tape.example.com
      description: Library A, frame 2, drive 1 (default key group)
"""
        assert moved in text
        table.write_text(text.replace(moved, ""))
        (manifests / "vault.yaml").write_text(SECOND_KEY_MANAGER + """    - serial: "1013000125"
      certificateIdentity: library-a.tape.example.com
""")

        def held_back():
            for km in running.status()["keyManagers"]:
                if km["name"] != "vault-keys":
                    continue
                risk = next((c for c in km["conditions"] if c["type"] == "KeyHistoryAtRisk"), None)
                if risk and risk["status"] == "True":
                    return risk
            return None

        risk = wait_for("the moved drive held back, with KeyHistoryAtRisk on vault-keys", held_back)
        assert "claimed by another KeyManager" in risk["message"]
        wait_for("up naming the drive and where its keys are", lambda: (
            'drive "1013000125" (DriveTable library-v) was served by KeyManager "default/tape-keys"'
            in running.output()))
        server_yaml = (running.data_dir / "servers" / "default" / "vault-keys-0" / "server.yaml").read_text()
        assert "1013000125" not in server_yaml, "a held-back drive is not served"
        assert "7013000001" in server_yaml
    finally:
        assert running.interrupt() == 0


def test_an_accepted_move_whose_carry_failed_is_served_once_a_later_reconcile_carries_it(tmp_path, manifests):
    (manifests / "vault.yaml").write_text(SECOND_KEY_MANAGER)
    running = Up(tmp_path, manifests).start()
    try:
        estate = running.wait_ready()
        tape = [s for s in estate["servers"] if s["keyManager"] == "tape-keys" and s["role"] == "replica"]
        uid, material = create(estate, tape[0], "TAPE-CARRIED")
        # A tape-keys replica frozen: the move is accepted, but its keys cannot be carried.
        os.kill(tape[1]["pid"], signal.SIGSTOP)
        try:
            table = manifests / "drivetable.yaml"
            text = table.read_text()
            moved = """    - serial: "1013000124"
      wwn: "500104F000AB1235"
      certificateIdentity: library-a.tape.example.com
      keyGroup: lto-default
      description: Library A, frame 1, drive 2
"""
            assert moved in text
            table.write_text(text.replace(moved, ""))
            (manifests / "vault.yaml").write_text(SECOND_KEY_MANAGER.replace(
                "  name: library-v\n",
                "  name: library-v\n  annotations:\n    shadowkeep.io/accept-drive-moves: \"1013000124\"\n",
            ) + """    - serial: "1013000124"
      certificateIdentity: library-a.tape.example.com
""")
            wait_for("the carry refused while a replica is frozen", lambda: (
                'drive "1013000124" (DriveTable library-v) was served by KeyManager "default/tape-keys", '
                "and the move is accepted, but its keys could not be carried" in running.output()))
        finally:
            os.kill(tape[1]["pid"], signal.SIGCONT)

        def client_listed():
            e = running.estate()
            return e if any(c["identity"] == "library-a.tape.example.com" and c["keyManager"] == "vault-keys"
                            for c in e["clients"]) else None
        # No edit: the next periodic reconcile (at most 30 s) carries the keys, and estate.json
        # lists the client certificate that reaches them on vault-keys.
        estate = wait_for("estate.json listing library-a's certificate for vault-keys", client_listed)
        vault = next(s for s in estate["servers"] if s["name"] == "vault-keys-0")
        c = next(c for c in estate["clients"]
                 if c["identity"] == "library-a.tape.example.com" and c["keyManager"] == "vault-keys")
        host, port = vault["kmip"].rsplit(":", 1)
        with ProxyKmipClient(hostname=host, port=int(port), cert=c["cert"], key=c["key"], ca=estate["ca"],
                             ssl_version="PROTOCOL_TLSv1_2", kmip_version=enums.KMIPVersion.KMIP_1_2,
                             config_file="/dev/null") as k:
            assert k.get(uid).value == material
    finally:
        assert running.interrupt() == 0


def test_an_address_outside_loopback_starts_nothing_and_writes_nothing(tmp_path, manifests):
    refused = Up(tmp_path, manifests, data_dir=tmp_path / "never", base="10.0.0.1").start()
    assert refused.proc.wait(timeout=60) == 1
    refused.out.close()
    assert "not a loopback address" in refused.output()
    assert not (tmp_path / "never").exists()


def admin_call(up, server, method, path, cert_dir, body=None):
    """One admin API call to `server`, presenting the certificate in `cert_dir`: status and body."""
    import http.client
    import ssl
    ctx = ssl.create_default_context(cafile=str(up.data_dir / "ca.pem"))
    ctx.load_cert_chain(str(cert_dir / "tls.crt"), str(cert_dir / "tls.key"))
    host, port = server["admin"].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json"})
        reply = conn.getresponse()
        return reply.status, reply.read().decode(errors="replace")
    finally:
        conn.close()


def operator_certs(up):
    return up.data_dir / "key-managers" / "default" / "tape-keys" / "tls"


def shadow_status(up):
    path = up.data_dir / "shadow-status" / "default" / "tape-keys-dr.json"
    return json.loads(path.read_text()) if path.exists() else None


def condition(status, type_):
    return next((c for c in status["conditions"] if c["type"] == type_), None)


def test_a_rotation_asked_for_in_the_shadow_file_completes_while_the_shadow_keeps_shadowing(up):
    estate = up.estate()
    replicas = [s for s in estate["servers"] if s["role"] == "replica"]
    record_path = up.data_dir / "key-managers" / "default" / "tape-keys" / "shadows" / "tape-keys-dr.json"
    old = json.loads(record_path.read_text())["current"]
    wait_for("the shadow registered at both replicas", lambda: all(
        '"tape-keys-dr"' in admin_call(up, r, "GET", "/v1/shadows", operator_certs(up))[1] for r in replicas))
    shadow_file = up.manifests / "shadow.yaml"
    shadow_file.write_text(shadow_file.read_text().replace(
        "  name: tape-keys-dr\n",
        "  name: tape-keys-dr\n  annotations:\n    shadowkeep.io/rotate-password-requested-at: \"first\"\n", 1))
    states = set()

    def rotated():
        states.update(s["state"] for s in up.status()["servers"] if s["role"] == "shadow")
        status = shadow_status(up)
        if not status or status.get("lastHandledRotationAt") != "first":
            return None
        c = condition(status, "PasswordRotation")
        return status if c and c["reason"] == "Rotated" else None

    status = wait_for("the rotation done", rotated)
    assert states == {"Shadowing"}, f"the shadow left Shadowing during the rotation: {states}"
    assert condition(status, "PasswordRotation")["status"] == "True"
    new = json.loads(record_path.read_text())
    assert new["current"]["issuedAt"] != old["issuedAt"]
    assert "retiring" not in new and "rotation" not in new
    for r in replicas:
        code, metrics = admin_call(up, r, "GET", "/metrics", operator_certs(up))
        assert code == 200
        refused = [l for l in metrics.splitlines()
                   if l.startswith("shadowkeep_shadow_registrations_total") and 'outcome="registered"' not in l
                   and not l.rstrip().endswith(" 0")]
        assert refused == [], f"the shadow failed to authenticate at {r['name']}: {refused}"
        code, shadows = admin_call(up, r, "GET", "/v1/shadows", operator_certs(up))
        registered = next(s for s in json.loads(shadows)["shadows"] if s["name"] == "tape-keys-dr")
        assert registered["verifierId"] == new["current"]["issuedAt"]
    # The old pair is refused once retired, at every replica; nothing secret in the answer.
    shadow_certs = up.data_dir / "servers" / "default" / "tape-keys-dr"
    request = json.dumps({"licence": old["licence"], "password": old["password"],
                          "instanceId": "00000000-0000-4000-8000-000000000001"})
    for r in replicas:
        code, answer = admin_call(up, r, "POST", "/v1/shadow/register", shadow_certs, request)
        assert "password-wrong" in answer, f"HTTP {code} from {r['name']}"
        assert old["password"] not in answer
    # The shadow still holds a working pair and mirrors.
    uid, material = create(estate, replicas[0], "TAPE-ROT-1")
    assert wait_for("the new key mirrored", lambda: all(
        s["keys"] == 12 for s in up.status()["servers"]))
    assert old["password"] not in up.output()


def test_with_its_replicas_frozen_the_shadow_serves_read_only_and_hands_back(up):
    estate = up.estate()
    replicas = [s for s in estate["servers"] if s["role"] == "replica"]
    uid, material = create(estate, replicas[0], "TAPE-DR-1")
    shadow_file = up.manifests / "shadow.yaml"
    shadow_file.write_text(shadow_file.read_text().replace("takeoverGracePeriod: 5m", "takeoverGracePeriod: 3s"))

    def restarted():
        e = up.estate()
        s = next(s for s in e["servers"] if s["role"] == "shadow")
        old = next(o for o in estate["servers"] if o["role"] == "shadow")
        return (e, s) if s["pid"] and s["pid"] != old["pid"] else None

    estate, shadow = wait_for("the shadow restarted with its new grace period", restarted)
    wait_for("the key mirrored", lambda: next(
        s for s in up.status()["servers"] if s["role"] == "shadow")["keys"] == 12)
    for r in replicas:
        os.kill(r["pid"], signal.SIGSTOP)
    try:
        def serving():
            s = next(s for s in up.status()["servers"] if s["role"] == "shadow")
            return s if s["state"] == "Serving" else None

        wait_for("the shadow serving", serving)
        assert get(estate, shadow, uid) == material
        with pytest.raises(Exception) as refused:
            create(estate, shadow, "TAPE-DR-2")
        assert "read-only" in str(refused.value) or "refused" in str(refused.value)
    finally:
        for r in replicas:
            os.kill(r["pid"], signal.SIGCONT)
    wait_for("the shadow handing back", lambda: next(
        s for s in up.status()["servers"] if s["role"] == "shadow")["state"] == "Shadowing")


def test_a_rotation_backs_off_while_a_replica_is_frozen_and_resumes_after_a_restart_of_up(tmp_path, up):
    estate = up.estate()
    replicas = [s for s in estate["servers"] if s["role"] == "replica"]
    record_path = up.data_dir / "key-managers" / "default" / "tape-keys" / "shadows" / "tape-keys-dr.json"
    password_file = up.data_dir / "servers" / "default" / "tape-keys-dr" / "password"
    wait_for("the shadow's first pair written", lambda: password_file.exists() and record_path.exists())
    working = password_file.read_bytes()
    old = json.loads(record_path.read_text())["current"]["issuedAt"]
    os.kill(replicas[1]["pid"], signal.SIGSTOP)
    try:
        shadow_file = up.manifests / "shadow.yaml"
        shadow_file.write_text(shadow_file.read_text().replace(
            "  name: tape-keys-dr\n",
            "  name: tape-keys-dr\n  annotations:\n    shadowkeep.io/rotate-password-requested-at: \"frozen\"\n", 1))

        def backing_off():
            status = shadow_status(up)
            c = status and condition(status, "PasswordRotation")
            return c if c and c["reason"] == "ReplicaUnreachable" else None

        c = wait_for("the rotation backing off", backing_off)
        assert c["status"] == "False" and "tape-keys-1" in c["message"] and "still works" in c["message"]
        record = json.loads(record_path.read_text())
        pending = record["rotation"]["next"]["issuedAt"]
        assert record["current"]["issuedAt"] == old, "nothing handed over while a replica cannot be asked"
        assert password_file.read_bytes() == working, "the shadow keeps its working password"
        code, shadows = admin_call(up, replicas[0], "GET", "/v1/shadows", operator_certs(up))
        registered = next(s for s in json.loads(shadows)["shadows"] if s["name"] == "tape-keys-dr")
        assert registered["licenceIssuedAt"] == old
    finally:
        os.kill(replicas[1]["pid"], signal.SIGCONT)
    # Stopped mid-rotation, and started again: the rotation resumes with the pair it issued.
    assert up.interrupt() == 0
    again = Up(tmp_path, up.manifests, data_dir=up.data_dir, base=up.base).start()
    try:
        again.wait_ready()

        def rotated():
            status = shadow_status(again)
            c = status and condition(status, "PasswordRotation")
            return status if c and c["reason"] == "Rotated" else None

        status = wait_for("the resumed rotation done", rotated)
        assert status["lastHandledRotationAt"] == "frozen"
        assert json.loads(record_path.read_text())["current"]["issuedAt"] == pending
        assert password_file.read_bytes() != working
    finally:
        assert again.interrupt() == 0


SYNC = "shadowkeep.io/sync-requested-at"
ROTATE = "shadowkeep.io/rotate-password-requested-at"


def annotated(text, name, annotations):
    """`text` (manifests without annotations) with `annotations` set on the object `name`."""
    block = "".join(f"    {k}: \"{v}\"\n" for k, v in annotations.items())
    assert f"  name: {name}\n" in text
    return text.replace(f"  name: {name}\n", f"  name: {name}\n  annotations:\n{block}", 1)


def the_shadow(up, name="tape-keys-dr"):
    return next(s for s in up.status()["servers"] if s["name"] == name)


def shadow_pid(up):
    return next(s for s in up.estate()["servers"] if s["role"] == "shadow")["pid"]


def rotated_on(up, request, name="tape-keys-dr"):
    path = up.data_dir / "shadow-status" / "default" / f"{name}.json"
    status = json.loads(path.read_text()) if path.exists() else None
    if not status or status.get("lastHandledRotationAt") != request:
        return None
    c = condition(status, "PasswordRotation")
    return status if c and c["reason"] == "Rotated" else None


def configuration_of(up, server):
    """The configuration `server` reports it runs with (`GET /v1/state`)."""
    status, body = admin_call(up, server, "GET", "/v1/state", operator_certs(up))
    assert status == 200, body
    return json.loads(body)["configuration"]


def test_a_drive_table_edit_reaches_every_replica_and_the_shadow_without_a_restart(up):
    # A short grace period first (a restart of the shadow: its own timing changed), so that
    # the shadow can be seen serving the new drive later.
    old_shadow = shadow_pid(up)
    shadow_file = up.manifests / "shadow.yaml"
    shadow_file.write_text(shadow_file.read_text().replace("takeoverGracePeriod: 5m", "takeoverGracePeriod: 3s"))
    wait_for("the shadow restarted with its new grace period", lambda: (
        shadow_pid(up) not in (None, old_shadow) and all(s["pid"] for s in up.estate()["servers"])))
    estate = up.estate()
    pids = {s["name"]: s["pid"] for s in estate["servers"]}
    before = {s["name"]: configuration_of(up, s)["digest"] for s in estate["servers"]}
    assert len(set(before.values())) == 1, before
    edited_at = len(up.output())

    table = up.manifests / "drivetable.yaml"
    table.write_text(table.read_text() + """    - serial: "2013000001"
      certificateIdentity: library-b.tape.example.com
      keyGroup: lto-default
""")
    estate = wait_for("library-b's certificate in estate.json", lambda: (
        (e := up.estate()) and any(c["identity"] == "library-b.tape.example.com" for c in e["clients"]) and e))

    def every_server_took_it():
        now = {s["name"]: configuration_of(up, s) for s in estate["servers"]}
        digests = {c["digest"] for c in now.values()}
        return now if len(digests) == 1 and digests != set(before.values()) else None

    taken = wait_for("every replica and the shadow on the new drive table", every_server_took_it)
    assert all("problem" not in c and "restartNeeded" not in c for c in taken.values()), taken

    def applied():
        km = next(k for k in up.status()["keyManagers"] if k["name"] == "tape-keys")
        c = next((c for c in km["conditions"] if c["type"] == "ConfigurationApplied"), None)
        return c if c and c["status"] == "True" else None
    # Recorded in the status as the operator records it: both replicas and the shadow.
    assert "(3 server(s))" in wait_for("ConfigurationApplied in the status", applied)["message"]
    replicas = [s for s in estate["servers"] if s["role"] == "replica"]
    shadow = next(s for s in estate["servers"] if s["role"] == "shadow")
    uid, material = wait_for("library-b served", lambda: create(
        estate, replicas[0], "TAPE-LIVE-1", identity="library-b.tape.example.com"))
    assert get(estate, replicas[1], uid, identity="library-b.tape.example.com") == material
    # No process restarted: the same pids, and `up` restarted nothing.
    assert {s["name"]: s["pid"] for s in up.estate()["servers"]} == pids
    assert "restarting" not in up.output()[edited_at:], up.output()[edited_at:]

    # The shadow admits library-b too: with the replicas frozen it serves the key to it.
    wait_for("the key mirrored", lambda: the_shadow(up)["keys"] == 12)
    for r in replicas:
        os.kill(r["pid"], signal.SIGSTOP)
    try:
        wait_for("the shadow serving", lambda: the_shadow(up)["state"] == "Serving")
        assert get(estate, shadow, uid, identity="library-b.tape.example.com") == material
    finally:
        for r in replicas:
            os.kill(r["pid"], signal.SIGCONT)
    assert {s["name"]: s["pid"] for s in up.estate()["servers"]} == pids


def test_a_requested_sync_mirrors_at_once_and_each_value_is_answered_once(up):
    estate = up.estate()
    replicas = [s for s in estate["servers"] if s["role"] == "replica"]
    shadow_file = up.manifests / "shadow.yaml"
    original = shadow_file.read_text()
    wait_for("the shadow holding the KeyGroups' keys", lambda: the_shadow(up)["keys"] == 11)
    uid, material = create(estate, replicas[0], "TAPE-SYNC-1")
    shadow_file.write_text(annotated(original, "tape-keys-dr", {SYNC: "sync-1"}))

    def handled(value):
        def check():
            status = shadow_status(up)
            return status if status and status.get("lastHandledSyncAt") == value else None
        return check

    wait_for("the sync request handled", handled("sync-1"))
    # The sync is answered only once its round and its mirroring are done, so the key is
    # there now. (Replicas also push new keys; the key alone does not prove the sync.)
    assert the_shadow(up)["keys"] == 12
    assert up.output().count('synchronized on request "sync-1"') == 1
    # The same value saved again, with a rotation request in the same edit, so that the
    # ticks that see the edit are known to have run once the rotation is done.
    shadow_file.write_text(annotated(original, "tape-keys-dr", {SYNC: "sync-1", ROTATE: "after-sync-1"}))
    wait_for("the rotation asked for in the same edit done", lambda: rotated_on(up, "after-sync-1"))
    assert up.output().count('synchronized on request "sync-1"') == 1, "the same value synced again"
    assert shadow_status(up)["lastHandledSyncAt"] == "sync-1"
    # A new value syncs again.
    shadow_file.write_text(annotated(original, "tape-keys-dr", {SYNC: "sync-2", ROTATE: "after-sync-1"}))
    wait_for("the second sync request handled", handled("sync-2"))
    assert up.output().count('synchronized on request "sync-2"') == 1
    assert up.output().count('synchronized on request "sync-1"') == 1


def test_the_desired_state_reaches_the_running_shadow_and_enabling_a_disabled_one_relicenses_it(up):
    shadow_file = up.manifests / "shadow.yaml"
    original = shadow_file.read_text()
    record_path = up.data_dir / "key-managers" / "default" / "tape-keys" / "shadows" / "tape-keys-dr.json"
    wait_for("the shadow Shadowing", lambda: the_shadow(up)["state"] == "Shadowing")
    pid = shadow_pid(up)

    def desire(state):
        assert "  state: Active\n" in original
        shadow_file.write_text(original.replace("  state: Active\n", f"  state: {state}\n", 1))

    def becomes(state):
        wait_for(f"the shadow {state}", lambda: the_shadow(up)["state"] == state)
        assert shadow_pid(up) == pid, f"the shadow was restarted to become {state}"

    desire("Inactive")
    becomes("Inactive")
    desire("Active")
    becomes("Shadowing")
    issued = json.loads(record_path.read_text())["current"]["issuedAt"]
    desire("Disabled")
    becomes("Disabled")
    assert json.loads(record_path.read_text())["current"]["issuedAt"] == issued
    desire("Active")

    def relicensed():
        current = json.loads(record_path.read_text())["current"]["issuedAt"]
        return current if current != issued else None

    new = wait_for("a new licence issued", relicensed)
    becomes("Shadowing")
    assert shadow_pid(up) == pid
    # The shadow holds the new licence, and the rotation that issued it completes.
    def done():
        status = shadow_status(up)
        c = status and condition(status, "PasswordRotation")
        return status if c and c["reason"] == "Rotated" else None

    wait_for("the rotation that re-enabled the shadow done", done)
    record = json.loads(record_path.read_text())
    assert record["current"]["issuedAt"] == new and "rotation" not in record and "retiring" not in record
    assert record["current"]["password"] not in up.output()


SECOND_SHADOW = """---
apiVersion: shadowkeep.io/v1alpha1
kind: Shadow
metadata:
  name: tape-keys-dr2
spec:
  keyManagerRef:
    name: tape-keys
  placement:
    zone: eu-central-1b
  priority: 5
  state: Active
"""


def test_two_shadows_asked_to_rotate_at_once_rotate_one_after_the_other(tmp_path, manifests):
    shadow_file = manifests / "shadow.yaml"
    original = shadow_file.read_text() + SECOND_SHADOW
    shadow_file.write_text(original)
    running = Up(tmp_path, manifests).start()
    names = ("tape-keys-dr", "tape-keys-dr2")
    records = running.data_dir / "key-managers" / "default" / "tape-keys" / "shadows"
    try:
        running.wait_ready()
        assert sorted(s["name"] for s in running.estate()["servers"] if s["role"] == "shadow") == list(names)
        wait_for("both shadows Shadowing", lambda: all(
            the_shadow(running, n)["state"] == "Shadowing" for n in names))
        both = annotated(annotated(original, names[0], {ROTATE: "both"}), names[1], {ROTATE: "both"})
        shadow_file.write_text(both)
        seen_rotating = set()
        samples = 0
        deadline = time.monotonic() + 240
        while not all(rotated_on(running, "both", n) for n in names):
            assert time.monotonic() < deadline, "timed out waiting for both rotations"
            assert running.proc.poll() is None, running.output()[-4000:]
            rotating = set()
            for n in names:
                record = json.loads((records / f"{n}.json").read_text())
                if "rotation" in record or "retiring" in record:
                    rotating.add(n)
            assert len(rotating) < 2, f"both shadows in the middle of a rotation at once: {rotating}"
            seen_rotating |= rotating
            samples += 1
            time.sleep(0.1)
        # The sampling saw each rotation under way: it could have seen them overlap.
        assert seen_rotating == set(names), f"rotations seen under way: {seen_rotating} in {samples} samples"
        for n in names:
            record = json.loads((records / f"{n}.json").read_text())
            assert "rotation" not in record and "retiring" not in record
    finally:
        assert running.interrupt() == 0


class Moto:
    """moto's S3 server on a free loopback port: a real S3 API for the backup tests.

    From $SHADOWKEEP_MOTO_SERVER, else beside this Python (.venv/bin/moto_server, which
    .ci/run installs). Missing, the test is skipped, loudly; with SHADOWKEEP_REQUIRE_MOTO
    set (as .ci/run sets it) it fails instead."""

    def __init__(self, tmp_path):
        path = Path(os.environ.get("SHADOWKEEP_MOTO_SERVER") or Path(sys.executable).parent / "moto_server")
        if not path.exists():
            if os.environ.get("SHADOWKEEP_REQUIRE_MOTO"):
                pytest.fail(f"moto_server is required (SHADOWKEEP_REQUIRE_MOTO) but {path} does not exist")
            pytest.skip(f"*** moto_server not found at {path}: install moto[server] (tests/requirements.txt) ***")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(tmp_path / "moto.log", "wb")
        self.proc = subprocess.Popen(
            [path, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"

        def listening():
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        wait_for("moto_server listening", listening, limit=60)

    def s3(self):
        """An S3 client of this server (boto3 comes with moto)."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="AKIDSHADOWKEEPTEST", aws_secret_access_key="test",
        )

    def keys(self, bucket, prefix):
        listed = self.s3().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()


def with_s3_backups(tmp_path, manifests, moto):
    """Declares target `offsite` (moto's bucket `backups-bucket`, prefix `estates`) and a new
    recovery key on the quickstart's KeyManager; its credentials as files under
    tmp_path/secrets. Returns the recovery key file."""
    moto.s3().create_bucket(Bucket="backups-bucket")
    key = tmp_path / "recovery.key"
    public = subprocess.run(
        [binary(), "recovery-key", "new", "--out", key], capture_output=True, check=True, timeout=60,
    ).stdout.decode().strip()
    assert public.startswith("age1") and oct(key.stat().st_mode & 0o777) == "0o600"
    secret = tmp_path / "secrets" / "default" / "backup-s3"
    secret.mkdir(parents=True)
    (secret / "accessKeyId").write_text("AKIDSHADOWKEEPTEST")
    (secret / "secretAccessKey").write_text("moto-secret-value-never-printed")
    manifest = manifests / "keymanager.yaml"
    manifest.write_text(manifest.read_text().replace(
        "    retention: 30\n",
        "    retention: 30\n"
        f"    recoveryRecipients: [{public}]\n"
        "    targets:\n"
        "      - name: offsite\n"
        f"        s3: {{endpoint: '{moto.endpoint}', allowHttp: true, bucket: backups-bucket,"
        " prefix: estates, credentialsSecretRef: {name: backup-s3}}\n",
        1,
    ))
    return key


def request_reconcile(manifests, at):
    """Edits the KeyManager's reconcile-requested-at annotation to `at`: `up` reconciles it
    at once (pulling new keys into the canonical keystore, then backing it up)."""
    manifest = manifests / "keymanager.yaml"
    text = manifest.read_text()
    marker = "    shadowkeep.io/reconcile-requested-at: "
    if marker in text:
        head, rest = text.split(marker, 1)
        text = head + marker + f'"{at}"\n' + rest.split("\n", 1)[1]
    else:
        text = text.replace(
            "  name: tape-keys\n",
            f'  name: tape-keys\n  annotations:\n{marker}"{at}"\n',
            1,
        )
    manifest.write_text(text)


def test_up_backs_up_to_s3_after_a_create_and_the_backup_opens_with_the_recovery_key(tmp_path, manifests):
    moto = Moto(tmp_path)
    try:
        key = with_s3_backups(tmp_path, manifests, moto)
        up = Up(tmp_path, manifests, extra=["--secrets", str(tmp_path / "secrets")]).start()
        try:
            up.wait_ready()
            status_file = up.data_dir / "key-managers" / "default" / "tape-keys" / "status.json"

            def backed_up(previous=None):
                s = json.loads(status_file.read_text())
                b = s.get("backups", [{}])[0]
                new = b.get("lastBackup") and b.get("lastBackup") != previous and not b.get("error")
                return (s, b) if new else None

            _, first = wait_for("a first backup in the bucket", backed_up)
            assert first["escrowed"] is True
            estate = up.estate()
            create(estate, estate["servers"][0], "TAPE0100")
            request_reconcile(manifests, "2026-12-02T23:00:00Z")
            status, second = wait_for(
                "a second backup after the Create", lambda: backed_up(first["lastBackup"]),
            )
            assert second["keystoreSha256"] != first["keystoreSha256"]
            prefix = "estates/default/tape-keys/"
            names = moto.keys("backups-bucket", prefix)
            assert names == [prefix + first["lastBackup"], prefix + second["lastBackup"]], names
            newest = tmp_path / second["lastBackup"]
            newest.write_bytes(moto.s3().get_object(Bucket="backups-bucket", Key=names[-1])["Body"].read())
            verified = json.loads(subprocess.run(
                [binary(), "backup", "verify", newest, "--recovery-key", key],
                capture_output=True, check=True, timeout=60,
            ).stdout)
            assert verified["keyManager"] == "default/tape-keys"
            assert verified["recovered"] is True and verified["escrowed"] is True
            assert verified["keystoreDigest"] == status["keystoreDigest"]
            assert verified["keys"] == status["keyCount"] == 12
            assert verified["keystoreSha256"].startswith(second["keystoreSha256"])
            # A wrong recovery key is refused, naming the backup.
            wrong = tmp_path / "wrong.key"
            subprocess.run([binary(), "recovery-key", "new", "--out", wrong], capture_output=True, check=True, timeout=60)
            refused = subprocess.run(
                [binary(), "backup", "verify", newest, "--recovery-key", wrong], capture_output=True, timeout=60,
            )
            assert refused.returncode == 1
            assert second["lastBackup"] in refused.stderr.decode() and "wrong recovery key" in refused.stderr.decode()
            assert "moto-secret-value-never-printed" not in up.output()
        finally:
            assert up.interrupt() == 0, up.output()[-4000:]
    finally:
        moto.stop()
