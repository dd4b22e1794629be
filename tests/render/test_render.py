"""`shadowkeep render` output is valid Kubernetes: every object passes kubernetes-validate
--strict against the Kubernetes 1.32 schemas (unknown fields are errors)."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
SHADOWKEEP = os.environ.get("SHADOWKEEP", str(REPO / "target" / "debug" / "shadowkeep"))
VALIDATE = pathlib.Path(sys.executable).parent / "kubernetes-validate"


def test_quickstart_renders_objects_that_pass_strict_validation(tmp_path):
    assert pathlib.Path(SHADOWKEEP).exists(), f"build the command first: {SHADOWKEEP} is missing"
    rendered = subprocess.run(
        [SHADOWKEEP, "render", "examples/quickstart"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout
    manifest = tmp_path / "quickstart.yaml"
    manifest.write_bytes(rendered)
    result = subprocess.run(
        [str(VALIDATE), "--strict", "-k", "1.32.0", str(manifest)],
        capture_output=True, text=True, timeout=120,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    kinds = [
        "secret/tape-keys-kek", "secret/tape-keys-keystore", "secret/tape-keys-ca", "secret/tape-keys-tls",
        "secret/tape-keys-license", "secret/tape-keys-shadow-verifiers", "configmap/tape-keys-config",
        "service/tape-keys-peers", "service/tape-keys-kmip", "statefulset/tape-keys",
        "poddisruptionbudget/tape-keys",
        *shadow_kinds("tape-keys-dr"),
    ]
    for kind in kinds:
        assert f"passed for resource {kind} " in report, report
    assert "failed" not in report


def shadow_kinds(shadow):
    return [
        f"secret/{shadow}-license", f"secret/{shadow}-password", f"secret/{shadow}-tls",
        f"configmap/{shadow}-config", f"service/{shadow}-admin", f"service/{shadow}-kmip",
        f"statefulset/{shadow}",
    ]


def test_shadows_render_objects_that_pass_strict_validation(tmp_path):
    """Shadows with node selectors and tolerations (tests/render/shadows)."""
    rendered = subprocess.run(
        [SHADOWKEEP, "render", "tests/render/shadows"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout
    manifest = tmp_path / "shadows.yaml"
    manifest.write_bytes(rendered)
    result = subprocess.run(
        [str(VALIDATE), "--strict", "-k", "1.32.0", str(manifest)],
        capture_output=True, text=True, timeout=120,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    for kind in ["statefulset/vault", *shadow_kinds("vault-dr"), *shadow_kinds("vault-dr2")]:
        assert f"passed for resource {kind} " in report, report
    assert "failed" not in report
    assert "tolerations:" in rendered.decode()


def test_strict_validation_would_catch_a_wrong_field(tmp_path):
    """The check above can fail: a misspelled field in a rendered object is refused."""
    rendered = subprocess.run(
        [SHADOWKEEP, "render", "examples/quickstart"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout.decode()
    broken = tmp_path / "broken.yaml"
    broken.write_text(rendered.replace("podManagementPolicy:", "podManagmentPolicy:", 1))
    result = subprocess.run(
        [str(VALIDATE), "--strict", "-k", "1.32.0", str(broken)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "podManagmentPolicy" in result.stdout + result.stderr
