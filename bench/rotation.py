"""Times a shadow's password rotation under a release `shadowkeep up` on the quickstart, and
prints min/median/max over N rotations:

- rotation: the annotation `shadowkeep.io/rotate-password-requested-at` saved on the Shadow
  to its status file (DATA/shadow-status/default/tape-keys-dr.json) saying PasswordRotation
  `Rotated` with `lastHandledRotationAt` the saved value: the new pair issued, accepted by
  both replicas, handed over, taken by the shadow, the old verifier retired everywhere;
- reference, in the same run and estate: a DriveTable edit saved to the new certificate
  identity's Create answered by every replica (bench/up.py's edit propagation).

    .venv/bin/python bench/rotation.py [BINARY] [N]

BINARY defaults to target/release/shadowkeep (build it with `cargo build --release -p
shadowkeep`); N to 10.
"""
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import up as bench_up  # noqa: E402  (bench/up.py, beside this file)

REPO = Path(__file__).resolve().parent.parent
BINARY = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "target" / "release" / "shadowkeep"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10
ROTATE = "shadowkeep.io/rotate-password-requested-at"


def rotated(status_file, request):
    status = json.loads(status_file.read_text())
    if status.get("lastHandledRotationAt") != request:
        return None
    c = next((c for c in status["conditions"] if c["type"] == "PasswordRotation"), None)
    return status if c and c["reason"] == "Rotated" else None


def main():
    bench_up.BINARY = BINARY
    work = Path(tempfile.mkdtemp(prefix="rotation-bench-"))
    manifests = work / "manifests"
    shutil.copytree(REPO / "examples" / "quickstart", manifests)
    data = work / "data"
    up = bench_up.Up(manifests, data, f"127.{200 + os.getpid() % 50}.99.2")
    up.ready()
    shadow_file = manifests / "shadow.yaml"
    original = shadow_file.read_text()
    status_file = data / "shadow-status" / "default" / "tape-keys-dr.json"
    # The first rotation starts once the shadow has mirrored from a replica, so it is timed
    # from a shadow that runs and is registered.
    bench_up.until(lambda: json.loads(status_file.read_text()).get("lastSynchronized"),
                   what="the shadow synchronized")
    results = {"rotation": [], "reference: drive edit": []}
    for n in range(N):
        request = f"bench-{n}"
        started = time.monotonic()
        shadow_file.write_text(original.replace(
            "  name: tape-keys-dr\n",
            f"  name: tape-keys-dr\n  annotations:\n    {ROTATE}: \"{request}\"\n", 1))
        bench_up.until(lambda: rotated(status_file, request), limit=300, what=f"rotation {request}")
        results["rotation"].append(time.monotonic() - started)
    for n in range(N):
        took, _ = bench_up.edit_propagation(up, manifests, n)
        results["reference: drive edit"].append(took)
    up.stop()
    shutil.rmtree(work)
    print(f"shadow password rotation under up, quickstart (2 replicas, 1 shadow), N={N}, {BINARY}")
    for name, values in results.items():
        bench_up.figures(name, values)


try:
    main()
finally:
    bench_up.stop_started()
