"""Times live configuration under `shadowkeep up`: N DriveTable edits on the quickstart
(two replicas and the shadow `tape-keys-dr`), each timed from the file saved to every
server running with the new drive table, without a restart:

- replicas: the new certificate identity's Create answered by both replicas;
- every server: that, and the shadow reporting the replicas' new drive-table digest on
  `GET /v1/state` (a shadow refuses KMIP while a replica answers, so its digest is what
  says it admits the drive; tests/up shows it serving the new identity once it takes over).

Prints min/median/p99/max of each against the 2 s p99 target, and a reference measured in
the same run and estate: one KMIP Create round trip on a new connection by an identity
already served. It also checks that no server restarted (the same pids throughout).

    .venv/bin/python bench/config_propagation.py [BINARY] [EDITS]

BINARY defaults to target/release/shadowkeep (build it with `cargo build --release -p
shadowkeep`); EDITS to 50.
"""
import http.client
import json
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kmip.core import enums

sys.path.insert(0, str(Path(__file__).resolve().parent))
import up as up_bench  # noqa: E402  (the `up` helpers: Up, client, until)

REPO = Path(__file__).resolve().parent.parent
BINARY = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "target" / "release" / "shadowkeep"
EDITS = int(sys.argv[2]) if len(sys.argv) > 2 else 50
TARGET_P99 = 2.0
up_bench.BINARY = BINARY


def digest_of(data, server):
    """The drive-table digest `server` reports, asked with the replica certificate."""
    certs = data / "key-managers" / "default" / "tape-keys" / "tls"
    ctx = ssl.create_default_context(cafile=str(data / "ca.pem"))
    ctx.load_cert_chain(str(certs / "tls.crt"), str(certs / "tls.key"))
    host, port = server["admin"].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    try:
        conn.request("GET", "/v1/state")
        return json.loads(conn.getresponse().read())["configuration"]["digest"]
    finally:
        conn.close()


def p99(values):
    values = sorted(values)
    return values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]


def figures(name, values):
    values = sorted(values)
    print(f"{name:<44} min {values[0] * 1000:7.0f} ms   median {statistics.median(values) * 1000:7.0f} ms"
          f"   p99 {p99(values) * 1000:7.0f} ms   max {values[-1] * 1000:7.0f} ms")


def main():
    work = Path(tempfile.mkdtemp(prefix="config-bench-"))
    manifests = work / "manifests"
    shutil.copytree(REPO / "examples" / "quickstart", manifests)
    data = work / "data"
    up = up_bench.Up(manifests, data, f"127.{150 + os.getpid() % 50}.1.2")
    estate = up.ready()
    pids = {s["name"]: s["pid"] for s in estate["servers"]}
    replicas = [s for s in estate["servers"] if s["role"] == "replica"]
    shadow = next(s for s in estate["servers"] if s["role"] == "shadow")
    table = manifests / "drivetable.yaml"
    results = {"replicas": [], "every server": [], "reference": []}
    try:
        for n in range(EDITS):
            before = digest_of(data, replicas[0])
            identity = f"library-{n}.bench.example.com"
            started = time.monotonic()
            table.write_text(table.read_text() + f"""    - serial: "91{n:08}"
      certificateIdentity: {identity}
""")

            def served():
                e = up.estate()
                if not any(c["identity"] == identity for c in e["clients"]):
                    return None
                for server in replicas:
                    with up_bench.client(e, server, identity) as c:
                        c.create(enums.CryptographicAlgorithm.AES, 256)
                return e
            up_bench.until(served, what=f"edit {n} served by the replicas")
            results["replicas"].append(time.monotonic() - started)
            new = digest_of(data, replicas[0])
            assert new != before and digest_of(data, replicas[1]) == new
            up_bench.until(lambda: digest_of(data, shadow) == new, what=f"edit {n} on the shadow")
            results["every server"].append(time.monotonic() - started)

            e = up.estate()
            started = time.monotonic()
            with up_bench.client(e, replicas[n % 2], "library-a.tape.example.com") as c:
                c.create(enums.CryptographicAlgorithm.AES, 256)
            results["reference"].append(time.monotonic() - started)
        now = {s["name"]: s["pid"] for s in up.estate()["servers"]}
        assert now == pids, f"a server restarted: {pids} -> {now}"
    finally:
        up.stop()
        shutil.rmtree(work)
    print(f"live configuration under shadowkeep up, quickstart (2 replicas, 1 shadow), "
          f"{EDITS} DriveTable edits, {BINARY}")
    figures("edit saved -> new identity served by replicas", results["replicas"])
    figures("edit saved -> every server (and the shadow)", results["every server"])
    figures("reference: one KMIP Create, new connection", results["reference"])
    worst = p99(results["every server"])
    verdict = "within" if worst <= TARGET_P99 else "OVER"
    print(f"p99 {worst * 1000:.0f} ms: {verdict} the {TARGET_P99 * 1000:.0f} ms target; "
          f"no server restarted ({len(pids)} pids unchanged)")


if __name__ == "__main__":
    try:
        main()
    finally:
        up_bench.stop_started()
