"""Times keystore sync convergence under `shadowkeep up` after a burst of Creates: the
quickstart (two replicas, the shadow `tape-keys-dr`), ROUNDS bursts of BURST Creates from four
clients spread over both replicas, each timed from the burst's last acknowledgement until

- canonical: the canonical keystore holds every key and every replica holds exactly it
  (`KeystoreInSync`: pulled, merged, and pushed back), and
- every server: that, and the shadow holding the same keystore digest,

as `shadowkeep status` reports them. Rounds alternate between a reconcile requested at the
burst's end (the `shadowkeep.io/reconcile-requested-at` annotation saved, as `kubectl
annotate` would) and the periodic one: a KeyManager at rest is reconciled every
`syncInterval`, at least every 30 s (`core::prepare::resync_after`; the quickstart's 30 s
here). Replicas mirror each Create to each other as it is made; what this times is the
canonical keystore's pull, merge and push back to every replica and the shadow, which in a
cluster replaces waiting for the kubelet to refresh the keystore Secret.

Prints min/median/max of each, with a reference measured in the same run: the burst itself
(BURST Creates, end to end).

    .venv/bin/python bench/sync_convergence.py [BINARY] [ROUNDS] [BURST]

BINARY defaults to target/release/shadowkeep; ROUNDS to 10; BURST to 200.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kmip.core import enums

sys.path.insert(0, str(Path(__file__).resolve().parent))
import up as up_bench  # noqa: E402  (the `up` helpers: Up, client, until)

REPO = Path(__file__).resolve().parent.parent
BINARY = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "target" / "release" / "shadowkeep"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
BURST = int(sys.argv[3]) if len(sys.argv) > 3 else 200
CLIENTS = 4
up_bench.BINARY = BINARY


def status(data):
    out = subprocess.run([BINARY, "status", "--data-dir", str(data), "-o", "json"],
                         capture_output=True, check=True, timeout=60)
    return json.loads(out.stdout)


def burst(estate, n):
    """BURST Creates from CLIENTS threads, each on its own connection to one replica."""
    replicas = [s for s in estate["servers"] if s["role"] == "replica"]
    errors = []

    def one(k):
        try:
            with up_bench.client(estate, replicas[k % len(replicas)]) as c:
                for i in range(k, BURST, CLIENTS):
                    c.create(enums.CryptographicAlgorithm.AES, 256, name=f"BURST{n:03}-{i:05}")
        except Exception as e:  # counted: a burst must complete
            errors.append(e)
    threads = [threading.Thread(target=one, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"burst {n} failed: {errors[0]!r}")


def request_reconcile(manifests, n):
    path = manifests / "keymanager.yaml"
    text = path.read_text()
    marker = "    shadowkeep.io/reconcile-requested-at: "
    if marker not in text:
        text = text.replace("  name: tape-keys\n", f"  name: tape-keys\n  annotations:\n{marker}\"0\"\n", 1)
    head, rest = text.split(marker, 1)
    path.write_text(head + marker + f"\"bench-{n}\"\n" + rest.split("\n", 1)[1])


def main():
    work = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    manifests = work / "manifests"
    shutil.copytree(REPO / "examples" / "quickstart", manifests)
    data = work / "data"
    up = up_bench.Up(manifests, data, f"127.{150 + os.getpid() % 50}.1.2")
    try:
        estate = up.ready()
        keys = up_bench.until(lambda: status(data)["keyManagers"][0]["keys"], what="a canonical keystore")
        results = {"burst (reference)": [], "requested: canonical": [], "requested: every server": [],
                   "periodic: canonical": [], "periodic: every server": []}
        for n in range(ROUNDS):
            mode = "requested" if n % 2 == 0 else "periodic"
            started = time.monotonic()
            burst(estate, n)
            acked = time.monotonic()
            results["burst (reference)"].append(acked - started)
            keys += BURST
            if mode == "requested":
                request_reconcile(manifests, n)
            canonical_at = None
            while True:
                s = status(data)
                k = next(k for k in s["keyManagers"] if k["name"] == "tape-keys")
                now = time.monotonic()
                if canonical_at is None and k["keys"] == keys and k["keystoreInSync"]:
                    canonical_at = now
                servers = [v for v in s["servers"] if v["keyManager"] == "tape-keys"]
                digests = {v["digest"] for v in servers}
                if canonical_at is not None and len(digests) == 1 and None not in digests:
                    break
                if now - acked > 120:
                    raise SystemExit(f"round {n}: not converged after 120 s: {s}")
                time.sleep(0.05)
            results[f"{mode}: canonical"].append(canonical_at - acked)
            results[f"{mode}: every server"].append(now - acked)
        print(f"sync convergence under up, quickstart (2 replicas + shadow), {ROUNDS} rounds of "
              f"{BURST} Creates, {BINARY}")
        for name, values in results.items():
            values = sorted(values)
            print(f"{name:<24} min {values[0] * 1000:8.0f} ms   median "
                  f"{statistics.median(values) * 1000:8.0f} ms   max {values[-1] * 1000:8.0f} ms")
    finally:
        up.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
