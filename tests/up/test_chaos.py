"""The chaos run (bench/chaos.py), short: tape-style Creates from three clients for 30 s while
replicas are killed, frozen and cut off, the shadow takes over and hands back, a password
rotation and an accepted drive move run. Every acknowledged key must then be served, with
the material its client saw, by both replicas, by the shadow, and by a new data directory
restored from the newest S3 backup (moto), and the moved drive's keys by the KeyManager it
moved to.

It needs root, `ip` (its own network namespace) and moto_server. Without them it skips, saying so —
except under `.ci/run` (SHADOWKEEP_CI set), where that is a failure.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_up import binary

REPO = Path(__file__).resolve().parents[2]


def test_a_short_chaos_run_loses_no_acknowledged_key(tmp_path):
    run = subprocess.run(
        [sys.executable, REPO / "bench" / "chaos.py", "--binary", str(binary()),
         "--seconds", "30", "--clients", "3", "--json"],
        capture_output=True, text=True, timeout=1500,
    )
    if run.returncode == 3:
        if os.environ.get("SHADOWKEEP_CI"):
            pytest.fail(f"the chaos run could not be set up in CI: {run.stderr[-2000:]}")
        pytest.skip(f"chaos run not possible here: {run.stderr.strip()[-300:]}")
    assert run.returncode in (0, 1), run.stderr[-6000:]
    assert run.stdout.strip(), f"no figures printed:\n{run.stderr[-6000:]}"
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps(figures))
    assert figures["lost"] == 0, run.stderr[-6000:]
    assert figures["conflicts"] == 0, run.stderr[-6000:]
    assert run.returncode == 0, run.stderr[-6000:]
    # The run did what it says: keys were made, every kind of fault happened, and every
    # server was read.
    assert figures["acknowledged"] >= 50, figures
    assert all(n >= 1 for n in figures["faults"].values()), figures
    assert figures["checkedOn"] == ["backup", "tape-keys-0", "tape-keys-1", "tape-keys-dr"], figures
    assert figures["movedDriveKeysCarried"] >= 1, figures
