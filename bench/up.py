"""Times `shadowkeep up` on the quickstart, as whole processes on loopback addresses, and
prints min/median/max over TRIALS runs:

- cold start: a fresh data directory to every server listening (estate.json written);
- warm start: the same directory again (material reused);
- reference: one bare `shadowkeep server --config` from that directory to listening —
  what a start costs without `up`;
- edit propagation: a DriveTable edit saved to a Create by the new certificate identity
  answered on both replicas (validate, reconcile, the drive table pushed without a restart);
- restart: a replica killed with SIGKILL to it answering a Get again;
- stop: SIGINT to `up` exited with every server gone.

    .venv/bin/python bench/up.py [BINARY] [TRIALS]

BINARY defaults to target/release/shadowkeep (build it with `cargo build --release -p
shadowkeep`).
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kmip.core import enums
from kmip.pie.client import ProxyKmipClient

REPO = Path(__file__).resolve().parent.parent
BINARY = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "target" / "release" / "shadowkeep"
TRIALS = int(sys.argv[2]) if len(sys.argv) > 2 else 5


def until(check, limit=120, what=""):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.02)
    raise SystemExit(f"timed out: {what}")


def client(estate, server, identity=None):
    c = next(c for c in estate["clients"] if identity in (None, c["identity"]))
    host, port = server["kmip"].rsplit(":", 1)
    return ProxyKmipClient(hostname=host, port=int(port), cert=c["cert"], key=c["key"],
                           ca=estate["ca"], ssl_version="PROTOCOL_TLSv1_2",
                           kmip_version=enums.KMIPVersion.KMIP_1_2, config_file="/dev/null")


STARTED = []


class Up:
    def __init__(self, manifests, data, base):
        self.data = data
        self.proc = subprocess.Popen(
            [BINARY, "up", str(manifests), "--data-dir", str(data), "--address-base", base],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        STARTED.append(self.proc)

    def estate(self):
        return json.loads((self.data / "estate.json").read_text())

    def ready(self):
        def check():
            e = self.estate()
            return e if e["servers"] and all(
                s["pid"] and Path(f"/proc/{s['pid']}/stat").read_text().rsplit(")", 1)[1].split()[1]
                == str(self.proc.pid) for s in e["servers"]) else None
        return until(check, what="every server listening")

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)


def listening_alone(config):
    started = time.monotonic()
    proc = subprocess.Popen([BINARY, "server", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("admin listening on"):
            break
    took = time.monotonic() - started
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return took


def edit_propagation(up, manifests, n):
    """Adds drive `n` with a new certificate identity to the DriveTable; the seconds until
    that identity's Create is answered by every replica, and the estate then."""
    table = manifests / "drivetable.yaml"
    identity = f"library-{n}.bench.example.com"
    started = time.monotonic()
    table.write_text(table.read_text() + f"""    - serial: "90{n:08}"
      certificateIdentity: {identity}
""")

    def served():
        e = up.estate()
        if not any(c["identity"] == identity for c in e["clients"]):
            return None
        # Shadows refuse KMIP while a replica answers: only replicas are asked.
        for server in (s for s in e["servers"] if s["role"] == "replica"):
            with client(e, server, identity) as c:
                c.create(enums.CryptographicAlgorithm.AES, 256)
        return e
    estate = until(served, what="the edit served")
    return time.monotonic() - started, estate


def figures(name, values):
    values = sorted(values)
    print(f"{name:<22} min {values[0] * 1000:8.0f} ms   median {statistics.median(values) * 1000:8.0f} ms"
          f"   max {values[-1] * 1000:8.0f} ms")


def main():
    results = {k: [] for k in ("cold start", "warm start", "reference: one server",
                                "edit propagation", "restart after SIGKILL", "stop")}
    for trial in range(TRIALS):
        work = Path(tempfile.mkdtemp(prefix="up-bench-"))
        manifests = work / "manifests"
        shutil.copytree(REPO / "examples" / "quickstart", manifests)
        data = work / "data"
        base = f"127.{200 + os.getpid() % 50}.{trial + 1}.2"

        started = time.monotonic()
        up = Up(manifests, data, base)
        up.ready()
        results["cold start"].append(time.monotonic() - started)
        up.stop()

        started = time.monotonic()
        up = Up(manifests, data, base)
        estate = up.ready()
        results["warm start"].append(time.monotonic() - started)

        took, estate = edit_propagation(up, manifests, trial)
        results["edit propagation"].append(took)

        with client(estate, estate["servers"][0]) as c:
            uid = c.create(enums.CryptographicAlgorithm.AES, 256)
        victim = estate["servers"][1]
        started = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)

        def back():
            with client(estate, victim) as c:
                return c.get(uid).value
        until(back, what="the killed replica back")
        results["restart after SIGKILL"].append(time.monotonic() - started)

        started = time.monotonic()
        up.stop()
        results["stop"].append(time.monotonic() - started)

        config = data / "servers" / "default" / "tape-keys-0" / "server.yaml"
        results["reference: one server"].append(listening_alone(config))
        shutil.rmtree(work)
    print(f"shadowkeep up, quickstart (2 replicas), {TRIALS} trials, {BINARY}")
    for name, values in results.items():
        figures(name, values)


def stop_started():
    """Stops every `up` this run started and that still runs, and so its servers."""
    for proc in STARTED:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)


if __name__ == "__main__":
    try:
        main()
    finally:
        # A run that fails half-way stops the `up` it started.
        stop_started()
