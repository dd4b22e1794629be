"""A chaos run of a whole estate under `shadowkeep up`: tape-style Creates from several clients
while replicas are killed, frozen, cut off and restarted, the shadow takes over and hands
back, a shadow password rotation and an accepted drive move run — then the count of what
was acknowledged and what was lost.

    .venv/bin/python bench/chaos.py [--binary BIN] [--seconds S] [--clients N] [--seed X] [--json]

Run as root: the run makes its own network namespace (`ip netns add`) and runs `up`, the
clients and the faults inside it, so cutting a server off touches nothing outside. A server
is cut off by taking its address out of the namespace's routing (a blackhole route for
packets to it and a blackhole rule for packets from it): no packet reaches it or leaves it,
while its process runs on.

The estate is the quickstart (tape-keys: two replicas with peerAcknowledgements 1, and the
shadow tape-keys-dr with a 3 s takeover grace period) plus vault-keys (one replica), which
receives drive 1013000124 during the run with `shadowkeep.io/accept-drive-moves`.

Faults, one at a time at random (seeded) among tape-keys' replicas and vault-keys': SIGKILL
(`up` restarts it), SIGSTOP for 2-5 s then SIGCONT, cut off for 2-5 s. At fixed points: a
password rotation asked for on the shadow, both tape-keys replicas frozen until the shadow
serves (a Get of an acknowledged key answered by it, a Create refused), then thawed until it
hands back, and the drive move.

At the end every fault is healed and the run waits until: both replicas and the shadow hold
the same keystore digest; every acknowledged key is served by both replicas with the
material the client saw; the rotation is done; the moved drive's keys are on vault-keys with
identical material. The shadow is then made to serve once more (both replicas frozen) and
every acknowledged key is read from it. Last, the latest backup: tape-keys backs up to an S3
bucket (moto's real S3 server, run inside the namespace) with its KEK sealed to a recovery
key; once the newest backup holds the replicas' keystore, it is restored with
`shadowkeep restore` into a new data directory, a second `up` serves it, and every
acknowledged key is read from that. It prints: acknowledged, lost (must be 0), conflicts
(a key whose material differs anywhere, must be 0), failed and unknown-outcome Creates,
faults by kind, and the time to converge after the last fault. Exit status 0 only when
nothing was lost, nothing conflicted and every check held; 3 when the run could not be set up.

BIN defaults to target/release/shadowkeep; S to 120; N to 4. moto_server is taken from beside
this Python (.venv/bin, `pip install -r tests/requirements.txt`) unless --moto names it.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROTATE = "shadowkeep.io/rotate-password-requested-at"
MOVED = "1013000124"
# Each Create and Get gives up after this many seconds: a frozen server answers nothing.
KMIP_TIMEOUT = 5

VAULT = """apiVersion: shadowkeep.io/v1alpha1
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
{annotations}spec:
  keyManagerRef:
    name: vault-keys
  drives:
    - serial: "7013000001"
      certificateIdentity: library-v.tape.example.com
{moved}"""

# The drive as tape-keys' table lists it, and as vault-keys' lists it: vault-keys has no
# KeyGroup lto-default; the drive's keys from that group are carried all the same.
MOVED_ENTRY = """    - serial: "1013000124"
      wwn: "500104F000AB1235"
      certificateIdentity: library-a.tape.example.com
      keyGroup: lto-default
      description: Library A, frame 1, drive 2
"""
RECEIVED_ENTRY = """    - serial: "1013000124"
      wwn: "500104F000AB1235"
      certificateIdentity: library-a.tape.example.com
"""


class Failed(Exception):
    """A check of the run did not hold."""


def arguments():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "shadowkeep")
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--moto", type=Path, default=Path(sys.executable).parent / "moto_server",
                   help="moto's S3 server, for the backups")
    p.add_argument("--inside", help=argparse.SUPPRESS)
    return p.parse_args()


def say(*parts):
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def until(what, check, limit=120.0, every=0.2):
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Failed:
            raise
        except Exception as e:  # not there yet
            last = e
        time.sleep(every)
    raise Failed(f"timed out after {limit:.0f} s waiting for {what}; last: {last!r}")


# ------------------------------------------------------------------ the namespace


def outside(args):
    """Makes a network namespace, runs this script inside it, and removes it."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("chaos run not possible: it needs root and iproute2's `ip` to make its own "
              "network namespace", file=sys.stderr)
        return 3
    if not args.moto.exists():
        print(f"chaos run not possible: no moto_server at {args.moto} for the backups "
              "(pip install -r tests/requirements.txt, or --moto PATH)", file=sys.stderr)
        return 3
    name = f"skchaos{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        print(f"chaos run not possible: ip netns add {name}: {made.stderr.strip()}", file=sys.stderr)
        return 3
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        return subprocess.run(["ip", "netns", "exec", name, sys.executable, __file__,
                               "--inside", name, *sys.argv[1:]]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def cut(address):
    subprocess.run(["ip", "route", "add", "blackhole", f"{address}/32", "table", "local"], check=True)
    subprocess.run(["ip", "rule", "add", "from", address, "blackhole", "pref", "10"], check=True)


def reconnect(address):
    subprocess.run(["ip", "route", "del", "blackhole", f"{address}/32", "table", "local"],
                   capture_output=True)
    subprocess.run(["ip", "rule", "del", "from", address, "blackhole", "pref", "10"],
                   capture_output=True)


# ------------------------------------------------------------------ KMIP


def kmip_client(estate, server, identity="library-a.tape.example.com"):
    from kmip.core import enums
    from kmip.pie.client import ProxyKmipClient
    c = next(c for c in estate["clients"]
             if c["identity"] == identity and c["keyManager"] == server["keyManager"])
    host, port = server["kmip"].rsplit(":", 1)
    client = ProxyKmipClient(hostname=host, port=int(port), cert=c["cert"], key=c["key"],
                             ca=estate["ca"], ssl_version="PROTOCOL_TLSv1_2",
                             kmip_version=enums.KMIPVersion.KMIP_1_2, config_file="/dev/null")
    client.proxy.timeout = KMIP_TIMEOUT
    return client


def tape_template(barcode):
    """An AES-256 key as a tape library asks for one: its cartridge's barcode as the name
    and as LIBRARY-LTO application data."""
    from kmip.core import enums
    from kmip.core.factories.attributes import AttributeFactory
    from kmip.core.objects import TemplateAttribute
    AT = enums.AttributeType
    f = AttributeFactory()
    return TemplateAttribute(attributes=[
        f.create_attribute(AT.CRYPTOGRAPHIC_ALGORITHM, enums.CryptographicAlgorithm.AES),
        f.create_attribute(AT.CRYPTOGRAPHIC_LENGTH, 256),
        f.create_attribute(AT.CRYPTOGRAPHIC_USAGE_MASK, [
            enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]),
        f.create_attribute(AT.NAME, barcode),
        f.create_attribute(AT.APPLICATION_SPECIFIC_INFORMATION, {
            "application_namespace": "LIBRARY-LTO", "application_data": barcode}),
    ])


def create(estate, server, barcode):
    """Creates the key of `barcode` on `server`: (uid, material) once acknowledged, material
    None when the Get after it did not answer; raises when the Create was not."""
    from kmip.core import enums
    with kmip_client(estate, server) as c:
        result = c.proxy.create(enums.ObjectType.SYMMETRIC_KEY, tape_template(barcode))
        if result.result_status.value != enums.ResultStatus.SUCCESS:
            raise RuntimeError(f"refused: {result.result_reason}")
        uid = result.uuid
    try:
        with kmip_client(estate, server) as c:
            return uid, bytes(c.get(uid).value)
    except Exception:
        return uid, None


def read_all(estate, server, uids):
    """The material `server` serves for each of `uids` (None where it answers none)."""
    out = {}
    with kmip_client(estate, server) as c:
        for uid in uids:
            try:
                out[uid] = bytes(c.get(uid).value)
            except Exception:
                out[uid] = None
    return out


def read_everything(up, name, uids, tries=3):
    """What server `name` serves for each of `uids`; a key it does not answer is asked for
    again (a connection can drop) before it counts as missing."""
    served = {}
    missing = list(uids)
    for attempt in range(tries):
        served.update(read_all(up.estate(), up.server(name), missing))
        missing = [u for u in missing if served[u] is None]
        if not missing:
            break
        time.sleep(1.0)
    return served


# ------------------------------------------------------------------ the estate


class Up:
    def __init__(self, binary, manifests, data, log, secrets, base="127.0.1.2"):
        self.data = data
        self.log_path = log
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            [binary, "up", str(manifests), "--data-dir", str(data), "--address-base", base,
             "--secrets", str(secrets)],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.binary = binary

    def estate(self):
        return json.loads((self.data / "estate.json").read_text())

    def server(self, name):
        return next(s for s in self.estate()["servers"] if s["name"] == name)

    def ready(self):
        def check():
            if self.proc.poll() is not None:
                raise Failed(f"up exited with {self.proc.returncode}")
            e = self.estate()
            return e if e["servers"] and all(s["pid"] for s in e["servers"]) else None
        return until("every server listening", check, limit=180)

    def status(self):
        out = subprocess.run([self.binary, "status", "--data-dir", str(self.data), "-o", "json"],
                             capture_output=True, check=True, timeout=60)
        return json.loads(out.stdout)

    def log_size(self):
        return self.log_path.stat().st_size

    def refused_since(self, offset):
        """Raises when `up` refused an edit after `offset` bytes of its log."""
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            tail = f.read().decode(errors="replace")
        if "not applied" in tail:
            raise Failed("up refused an edit of the run:\n" + "\n".join(
                line for line in tail.splitlines() if "error" in line or "not applied" in line))

    def shadow_status(self):
        return json.loads((self.data / "shadow-status" / "default" / "tape-keys-dr.json").read_text())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def annotate(path, name, key, value):
    text = path.read_text()
    header = f"  name: {name}\n"
    assert header in text, f"{name} not in {path}"
    path.write_text(text.replace(header, f"{header}  annotations:\n    {key}: \"{value}\"\n", 1))


def write_vault(manifests, moved):
    annotations = (f"  annotations:\n    shadowkeep.io/accept-drive-moves: \"{MOVED}\"\n"
                   if moved else "")
    (manifests / "vault.yaml").write_text(
        VAULT.format(annotations=annotations, moved=RECEIVED_ENTRY if moved else ""))


class Moto:
    """moto's S3 server on 127.0.0.1 inside the namespace (no fault touches that address),
    holding tape-keys' backups."""

    BUCKET = "chaos-backups"
    PREFIX = "estates/default/tape-keys/"

    def __init__(self, path, work):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(work / "moto.log", "wb")
        self.proc = subprocess.Popen([path, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.endpoint = f"http://127.0.0.1:{self.port}"

        def listening():
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        until("moto_server listening", listening, limit=60)
        self.s3().create_bucket(Bucket=self.BUCKET)

    def s3(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="AKIDCHAOS", aws_secret_access_key="chaos")

    def declare(self, binary, keymanager, recovery_key, secrets):
        """A recovery key, the credentials as `up --secrets` files, and target `offsite` in
        the KeyManager's manifest."""
        public = subprocess.run([binary, "recovery-key", "new", "--out", recovery_key],
                                capture_output=True, check=True, timeout=60).stdout.decode().strip()
        creds = secrets / "default" / "backup-s3"
        creds.mkdir(parents=True)
        (creds / "accessKeyId").write_text("AKIDCHAOS")
        (creds / "secretAccessKey").write_text("chaos")
        text = keymanager.read_text()
        assert "    retention: 30\n" in text
        keymanager.write_text(text.replace(
            "    retention: 30\n",
            "    retention: 30\n"
            f"    recoveryRecipients: [{public}]\n"
            "    targets:\n"
            f"      - name: offsite\n        s3: {{endpoint: '{self.endpoint}', allowHttp: true, "
            f"bucket: {self.BUCKET}, prefix: estates, credentialsSecretRef: {{name: backup-s3}}}}\n",
            1))

    def newest(self, into):
        """The newest backup, copied to file `into`; its name."""
        listed = self.s3().list_objects_v2(Bucket=self.BUCKET, Prefix=self.PREFIX)
        names = sorted(o["Key"] for o in listed.get("Contents", []))
        if not names:
            return None
        into.write_bytes(self.s3().get_object(Bucket=self.BUCKET, Key=names[-1])["Body"].read())
        return names[-1]

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()


# ------------------------------------------------------------------ the run


class Run:
    def __init__(self, args, work):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = work
        self.manifests = work / "manifests"
        shutil.copytree(REPO / "examples" / "quickstart", self.manifests)
        shadow = self.manifests / "shadow.yaml"
        shadow.write_text(shadow.read_text().replace("takeoverGracePeriod: 5m",
                                                     "takeoverGracePeriod: 3s"))
        write_vault(self.manifests, moved=False)
        self.moto = Moto(args.moto, work)
        self.recovery_key = work / "recovery.key"
        self.secrets = work / "secrets"
        self.moto.declare(args.binary, self.manifests / "keymanager.yaml", self.recovery_key,
                          self.secrets)
        self.up = Up(args.binary, self.manifests, work / "data", work / "up.log", self.secrets)
        self.lock = threading.Lock()
        self.acked = {}       # uid -> (barcode, material or None, when acknowledged)
        self.failed = 0       # Creates answered with an error or refused at connect
        self.unknown = 0      # Creates that timed out: acknowledged or not, nobody knows
        self.faults = {"kill": 0, "freeze": 0, "cut": 0}
        self.events = []
        self.stop = threading.Event()
        self.frozen = set()
        self.cut_off = set()
        self.kinds = []

    def note(self, what):
        say(what)
        self.events.append((round(time.monotonic() - self.started, 1), what))

    # the clients

    def client(self, n):
        # Its own generator: the faults' sequence stays the seed's, however the clients run.
        rng = random.Random(f"{self.args.seed}-client-{n}")
        seq = 0
        while not self.stop.is_set():
            seq += 1
            barcode = f"{chr(65 + n % 26)}{seq:05d}L8"
            estate = self.up.estate()
            replicas = [s for s in estate["servers"] if s["keyManager"] == "tape-keys"
                        and s["role"] == "replica"]
            server = rng.choice(replicas)
            try:
                uid, material = create(estate, server, barcode)
            except TimeoutError:
                with self.lock:
                    self.unknown += 1
                continue
            except Exception as e:
                with self.lock:
                    if "timed out" in str(e):
                        self.unknown += 1
                    else:
                        self.failed += 1
                time.sleep(0.2)
                continue
            with self.lock:
                if uid in self.acked:
                    raise Failed(f"uid {uid} acknowledged twice")
                self.acked[uid] = (barcode, material, time.monotonic())

    # the faults

    def victims(self):
        return [s for s in self.up.estate()["servers"] if s["role"] == "replica"]

    def tape_replicas(self):
        """tape-keys' replicas once estate.json names a live process for each (a killed
        one is restarted by `up` first)."""
        def alive():
            found = [s for s in self.victims() if s["keyManager"] == "tape-keys"]
            for s in found:
                if not s["pid"]:
                    return None
                os.kill(s["pid"], 0)
            return found if len(found) == 2 else None
        return until("both tape-keys replicas running", alive, limit=120)

    def random_fault(self):
        victims = [v for v in self.victims() if v["pid"]]
        if not victims:
            self.stop.wait(0.5)
            return
        victim = self.rng.choice(victims)
        # Every kind in turn, in an order of the seed's: even a short run meets each.
        if not self.kinds:
            self.kinds = ["kill", "freeze", "cut"]
            self.rng.shuffle(self.kinds)
        kind = self.kinds.pop()
        length = self.rng.uniform(2, 5)
        address = victim["kmip"].rsplit(":", 1)[0]
        try:
            if kind == "kill":
                os.kill(victim["pid"], signal.SIGKILL)
                self.note(f"SIGKILL {victim['name']} (pid {victim['pid']})")
                self.faults[kind] += 1
                self.stop.wait(length)
            elif kind == "freeze":
                self.frozen.add(victim["pid"])
                os.kill(victim["pid"], signal.SIGSTOP)
                self.note(f"SIGSTOP {victim['name']} for {length:.1f} s")
                self.faults[kind] += 1
                try:
                    self.stop.wait(length)
                finally:
                    os.kill(victim["pid"], signal.SIGCONT)
                    self.frozen.discard(victim["pid"])
            else:
                self.note(f"cut off {victim['name']} ({address}) for {length:.1f} s")
                self.faults[kind] += 1
                self.cut_off.add(address)
                cut(address)
                try:
                    self.stop.wait(length)
                finally:
                    reconnect(address)
                    self.cut_off.discard(address)
        except ProcessLookupError:
            # estate.json still named a process `up` had already restarted: the next
            # fault picks again.
            self.frozen.discard(victim["pid"])
            self.kinds.append(kind)

    def takeover(self):
        """Freezes both tape-keys replicas until the shadow serves an acknowledged key and
        refuses a Create, then thaws them until it hands back."""
        with self.lock:
            known = [(u, m) for u, (_, m, _) in self.acked.items() if m is not None]
        replicas = self.tape_replicas()
        self.note("SIGSTOP both tape-keys replicas: the shadow should take over")
        for r in replicas:
            self.frozen.add(r["pid"])
            os.kill(r["pid"], signal.SIGSTOP)
        began = time.monotonic()
        try:
            shadow = self.up.server("tape-keys-dr")
            until("the shadow serving", lambda: self.up.status() and next(
                s for s in self.up.status()["servers"] if s["name"] == "tape-keys-dr"
            )["state"] == "Serving", limit=120, every=0.5)
            self.takeover_seconds = time.monotonic() - began
            self.note(f"the shadow serves, {self.takeover_seconds:.1f} s after the freeze")
            # Only keys the shadow had mirrored before the freeze can be there; the final
            # check reads every key from it.
            if known:
                uid, material = known[0]
                served = read_all(self.up.estate(), shadow, [uid])[uid]
                if served != material:
                    raise Failed(f"the serving shadow answered key {uid} wrongly or not at all")
            try:
                create(self.up.estate(), shadow, "SHADOW1L8")
                raise Failed("the serving shadow acknowledged a Create")
            except Failed:
                raise
            except Exception:
                pass
        finally:
            for r in replicas:
                os.kill(r["pid"], signal.SIGCONT)
                self.frozen.discard(r["pid"])
        self.note("thawed: the shadow should hand back")
        until("the shadow handing back", lambda: next(
            s for s in self.up.status()["servers"] if s["name"] == "tape-keys-dr"
        )["state"] == "Shadowing", limit=120, every=0.5)
        self.note("the shadow handed back")

    def faults_loop(self):
        planned = [(0.25, "rotation"), (0.45, "takeover"), (0.65, "move")]
        end = self.started + self.args.seconds
        # The fixed points all happen: on a slow machine a takeover can push the next one
        # past the end, and it then runs right after the last random fault.
        while not self.stop.is_set() and (time.monotonic() < end or planned):
            elapsed = (time.monotonic() - self.started) / self.args.seconds
            if planned and (elapsed >= planned[0][0] or time.monotonic() >= end):
                _, what = planned.pop(0)
                if what == "rotation":
                    annotate(self.manifests / "shadow.yaml", "tape-keys-dr", ROTATE, "chaos")
                    self.note("password rotation asked for on tape-keys-dr")
                elif what == "takeover":
                    self.takeover()
                else:
                    self.move_mark = self.up.log_size()
                    self.moved_at = time.monotonic()
                    table = self.manifests / "drivetable.yaml"
                    text = table.read_text()
                    table.write_text(text.replace(MOVED_ENTRY, ""))
                    write_vault(self.manifests, moved=True)
                    self.note(f"drive {MOVED} moved to vault-keys, accepted")
                continue
            self.random_fault()
            self.stop.wait(self.rng.uniform(0.5, 2.0))

    def heal(self):
        for pid in list(self.frozen):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for address in list(self.cut_off):
            reconnect(address)

    # the end

    def converge(self):
        acked = dict(self.acked)
        uids = sorted(acked)

        def same_keystore():
            servers = [s for s in self.up.status()["servers"] if s["keyManager"] == "tape-keys"]
            digests = {s["digest"] for s in servers}
            return len(servers) == 3 and len(digests) == 1 and None not in digests

        until("both tape-keys replicas and the shadow holding the same keystore",
              same_keystore, limit=300, every=0.5)
        self.converge_seconds = time.monotonic() - self.healed_at
        self.note(f"converged {self.converge_seconds:.1f} s after the last fault")

        self.served = {}
        for name in ("tape-keys-0", "tape-keys-1"):
            self.served[name] = read_everything(self.up, name, uids)

        def rotated():
            s = self.up.shadow_status()
            c = next((c for c in s["conditions"] if c["type"] == "PasswordRotation"), None)
            return s.get("lastHandledRotationAt") == "chaos" and c and c["reason"] == "Rotated"
        until("the password rotation done", rotated, limit=600, every=1.0)
        self.note("the password rotation is done")

        # The shadow serves every acknowledged key once both replicas are gone.
        replicas = self.tape_replicas()
        for r in replicas:
            os.kill(r["pid"], signal.SIGSTOP)
            self.frozen.add(r["pid"])
        try:
            until("the shadow serving for the final read", lambda: next(
                s for s in self.up.status()["servers"] if s["name"] == "tape-keys-dr"
            )["state"] == "Serving", limit=120, every=0.5)
            self.served["tape-keys-dr"] = read_everything(self.up, "tape-keys-dr", uids)
        finally:
            self.heal()
            self.frozen.clear()

    def moved_keys(self):
        """The keys drive 1013000124's KeyGroup held when it moved: every one acknowledged
        before the move is served by vault-keys, where the accepted move carried it, with
        the material tape-keys serves. Returns how many were checked, missing and differing."""
        def carried():
            self.up.refused_since(self.move_mark)
            if f'drive "{MOVED}": ' not in self.up.log_path.read_text(errors="replace"):
                return False
            # Logged during the reconcile; estate.json lists the client once it ends.
            return any(c["identity"] == "library-a.tape.example.com" and c["keyManager"] == "vault-keys"
                       for c in self.up.estate()["clients"])
        until("up reporting the moved drive's keys carried to vault-keys, and its client listed",
              carried, limit=300, every=1.0)
        self.note("up reports the moved drive's keys carried to vault-keys")
        before = [u for u, (_, _, when) in self.acked.items() if when < self.moved_at]
        if not before:
            raise Failed("no Create was acknowledged before the drive moved")
        there = read_everything(self.up, "vault-keys-0", before)
        here = self.served["tape-keys-0"]
        missing = sum(1 for u in before if there[u] is None)
        differ = sum(1 for u in before if there[u] is not None and here[u] != there[u])
        return len(before), missing, differ

    def latest_backup(self, uids):
        """Waits until the newest backup holds the keystore the replicas converged on, restores
        it into a new data directory, serves that with a second `up`, and reads every
        acknowledged key from it."""
        servers = [s for s in self.up.status()["servers"] if s["keyManager"] == "tape-keys"]
        digest = servers[0]["digest"]
        # A reconcile now, rather than at the next sync interval: it pulls, then backs up.
        annotate(self.manifests / "keymanager.yaml", "tape-keys",
                 "shadowkeep.io/reconcile-requested-at", "chaos")
        copy = self.work / "newest.skb"

        def holds_it():
            if not self.moto.newest(copy):
                return None
            verified = subprocess.run(
                [self.args.binary, "backup", "verify", copy, "--recovery-key", self.recovery_key],
                capture_output=True, check=True, timeout=120)
            found = json.loads(verified.stdout)
            return found if found["keystoreDigest"] == digest and found["recovered"] else None
        found = until("the newest backup holding the converged keystore", holds_it,
                      limit=300, every=1.0)
        restored_dir = self.work / "restored"
        done = subprocess.run(
            [self.args.binary, "restore", "--from", copy, "--recovery-key", self.recovery_key,
             "--data-dir", restored_dir, "-o", "json"],
            capture_output=True, timeout=300)
        if done.returncode != 0:
            raise Failed(f"restore of the newest backup failed: {done.stderr.decode()[-2000:]}")
        report = json.loads(done.stdout)
        self.note(f"the newest backup ({found['keys']} keys) restored into a new data directory: "
                  f"{report['how']}, {report['added']} keys")
        second = Up(self.args.binary, self.manifests, restored_dir, self.work / "restored-up.log",
                    self.secrets, base="127.0.2.2")
        try:
            second.ready()
            self.served["backup"] = read_everything(second, "tape-keys-0", uids)
        finally:
            second.stop()

    def run(self):
        self.up.ready()
        self.started = time.monotonic()
        self.note(f"estate up; {self.args.clients} clients, {self.args.seconds:.0f} s of faults, "
                  f"seed {self.args.seed}")
        clients = [threading.Thread(target=self.client, args=(n,), daemon=True)
                   for n in range(self.args.clients)]
        for t in clients:
            t.start()
        try:
            self.faults_loop()
        finally:
            self.stop.set()
            self.heal()
            self.healed_at = time.monotonic()
        for t in clients:
            t.join(timeout=60)
        self.note(f"faults over; {len(self.acked)} Creates acknowledged")
        self.converge()
        moved, moved_lost, moved_conflicts = self.moved_keys()
        self.latest_backup(sorted(self.acked))
        lost = 0
        conflicts = 0
        for uid, (barcode, material, _) in self.acked.items():
            copies = [served.get(uid) for served in self.served.values()]
            if any(c is None for c in copies):
                lost += 1
                say(f"LOST: key {uid} ({barcode}) missing on "
                    f"{[n for n, s in self.served.items() if s.get(uid) is None]}")
            elif len({*copies, *([material] if material is not None else [])}) != 1:
                conflicts += 1
                say(f"CONFLICT: key {uid} ({barcode}) differs between servers")
        return {
            "seconds": self.args.seconds,
            "clients": self.args.clients,
            "seed": self.args.seed,
            "acknowledged": len(self.acked),
            "lost": lost + moved_lost,
            "conflicts": conflicts + moved_conflicts,
            "failedCreates": self.failed,
            "unknownOutcomeCreates": self.unknown,
            "faults": self.faults,
            "takeoverSeconds": round(self.takeover_seconds, 1),
            "convergeSeconds": round(self.converge_seconds, 1),
            "checkedOn": sorted(self.served),
            "movedDriveKeysCarried": moved,
            "events": len(self.events),
        }


def inside(args):
    import logging
    # PyKMIP logs every refused connection; the run counts them instead.
    logging.disable(logging.CRITICAL)
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    work = Path(tempfile.mkdtemp(prefix="shadowkeep-chaos-"))
    run = Run(args, work)
    try:
        result = run.run()
    except Failed as e:
        say(f"FAILED: {e}")
        say(f"up's log: {work / 'up.log'}")
        return 1
    finally:
        # Whatever ended the run, nothing it started outlives it (an `up` left running
        # would hold its addresses for the next run).
        run.heal()
        run.up.stop()
        run.moto.stop()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    if not args.keep and result["lost"] == 0 and result["conflicts"] == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"work directory kept: {work}")
    return 0 if result["lost"] == 0 and result["conflicts"] == 0 else 1


def main():
    args = arguments()
    if args.inside:
        sys.argv = [a for a in sys.argv if a not in ("--inside", args.inside)]
        return inside(args)
    return outside(args)


if __name__ == "__main__":
    sys.exit(main())
