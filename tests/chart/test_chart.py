"""The Helm chart in charts/shadowkeep: lint, render with the Helm v4 SDK (helm-python-sdk,
no helm binary), validate the rendered objects against the Kubernetes 1.32 schemas, and check
what matters: the operator's arguments, its security context, least-privilege RBAC, and that
the chart's CRDs are the generated ones."""

import os
import pathlib
import shutil
import subprocess
import sys

import helm_python as helm
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
SHADOWKEEP = os.environ.get("SHADOWKEEP", str(REPO / "target" / "debug" / "shadowkeep"))
CHART = REPO / "charts" / "shadowkeep"
VALIDATE = pathlib.Path(sys.executable).parent / "kubernetes-validate"
RELEASE = "shadowkeep"
NAMESPACE = "shadowkeep-system"
REFRESH = "cp crds/*.yaml charts/shadowkeep/crds/"

# What the operator may do, as (apiGroup, resource, verb): nothing more, nothing less.
WATCHED = {
    *{("shadowkeep.io", r, v)
      for r in ("keymanagers", "drivetables", "keygroups", "shadows", "gitsources")
      for v in ("get", "list", "watch")},
    *{("shadowkeep.io", f"{r}/status", v)
      for r in ("keymanagers", "drivetables", "keygroups", "shadows", "gitsources")
      for v in ("get", "patch", "update")},
    # Git sync applies a branch's objects and prunes removed ones, never a KeyManager.
    *{("shadowkeep.io", "keymanagers", v) for v in ("create", "patch")},
    *{("shadowkeep.io", r, v)
      for r in ("drivetables", "keygroups", "shadows")
      for v in ("create", "patch", "delete")},
    *{("", "services", v) for v in ("get", "list", "watch", "create", "patch")},
    # Drive histories are replaced (update) with a resourceVersion precondition.
    *{("", "configmaps", v) for v in ("get", "list", "watch", "create", "patch", "update")},
    # The canonical keystore is replaced (update) and old keystore backups pruned (delete).
    *{("", "secrets", v)
      for v in ("get", "list", "watch", "create", "patch", "update", "delete")},
    ("", "events", "create"), ("", "events", "patch"),
    ("events.k8s.io", "events", "create"), ("events.k8s.io", "events", "patch"),
    *{("apps", "statefulsets", v) for v in ("get", "list", "watch", "create", "patch")},
    *{("policy", "poddisruptionbudgets", v) for v in ("get", "list", "watch", "create", "patch")},
    # Replica certificates for KeyManagers that ask cert-manager (server-side apply).
    *{("cert-manager.io", "certificates", v) for v in ("get", "create", "patch")},
}
LEASES = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
CRD_NAMES = {
    "keymanagers.shadowkeep.io", "shadows.shadowkeep.io",
    "drivetables.shadowkeep.io", "keygroups.shadowkeep.io", "gitsources.shadowkeep.io",
}


@pytest.fixture(scope="module")
def chart():
    helm.disable_logging()
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_raw(chart, values=None):
    """{template path: manifest text} as Helm would install it into shadowkeep-system."""
    return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(chart, values=None):
    """The rendered objects, parsed (NOTES.txt left out)."""
    objects = []
    for path, text in sorted(render_raw(chart, values).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def of_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def operator_container(objects):
    [deployment] = of_kind(objects, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def permissions(roles):
    """The (apiGroup, resource, verb) triples the roles grant; no wildcard anywhere."""
    granted = set()
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"wildcard in {role['kind']} {role['metadata']['name']}: {rule}"
            assert "nonResourceURLs" not in rule, rule
            granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return granted


def test_lint_strict_has_no_errors_or_warnings():
    report = helm.lint(CHART, strict=True, kube_version="v1.32.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [], report
    # Severity 1 is information (e.g. "icon is recommended"); 2 warning, 3 error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_lint_would_catch_a_broken_template(tmp_path):
    """The lint above can fail: a template that is not valid YAML is an error."""
    broken = tmp_path / "shadowkeep"
    shutil.copytree(CHART, broken)
    service = broken / "templates" / "service.yaml"
    service.write_text(service.read_text().replace("  type: ClusterIP", "  type: [ClusterIP"))
    report = helm.lint(broken, strict=True)
    assert [m["path"] for m in report["messages"] if m["severity"] == 3] == ["templates/service.yaml"], report


def test_every_rendered_object_passes_strict_validation(chart, tmp_path):
    renders = {
        "default": {},
        "one-namespace": {"watchNamespaces": ["tapes"], "backupNamespaces": ["tape-backups"]},
        "no-leader-election": {"leaderElection": {"enabled": False}, "serverImage": "example.org/s:1"},
    }
    files, expected = [], []
    for label, values in renders.items():
        # The manifests exactly as rendered (not re-serialised: a duplicate key would show).
        raw = {path: text for path, text in render_raw(chart, values).items() if not path.endswith("NOTES.txt")}
        objects = render(chart, values)
        manifest = tmp_path / f"{label}.yaml"
        manifest.write_text("\n---\n".join(raw[path] for path in sorted(raw)))
        files.append(str(manifest))
        expected += [f"passed for resource {o['kind'].lower()}/{o['metadata']['name']} " for o in objects]
    result = subprocess.run(
        [str(VALIDATE), "--strict", "-k", "1.32.0", *files],
        capture_output=True, text=True, timeout=120,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    for line in expected:
        assert line in report, report
    assert "failed" not in report, report
    kinds = {o["kind"] for o in render(chart)}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                     "Deployment", "Service"}


def test_default_deployment_runs_the_operator_with_leader_election(chart):
    objects = render(chart)
    deployment, container = operator_container(objects)
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["spec"]["replicas"] == 1
    assert container["command"] == ["/usr/local/bin/shadowkeep"]  # where operator/Dockerfile puts it
    args = container["args"]
    assert args[0] == "operator"
    assert args[args.index("--listen") + 1] == "0.0.0.0:8080"
    assert args[args.index("--concurrency") + 1] == "4"
    assert "--leader-elect" in args
    assert "--namespace" not in args
    # GitSources fetch into a writable emptyDir: the root file system is read-only.
    cache = args[args.index("--git-cache") + 1]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == cache]
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume

    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["RUST_LOG"]["value"] == "info"
    assert "SHADOWKEEP_SERVER_IMAGE" not in env

    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}

    [service] = of_kind(objects, "Service")
    assert service["spec"]["ports"][0]["port"] == 8080
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert labels["app.kubernetes.io/name"] == "shadowkeep"
    assert labels["app.kubernetes.io/instance"] == RELEASE


def test_operator_runs_non_root_read_only_with_no_capabilities(chart):
    deployment, container = operator_container(render(chart))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    [account] = of_kind(render(chart), "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_rbac_is_exactly_what_the_operator_uses(chart):
    objects = render(chart)
    [cluster_role] = of_kind(objects, "ClusterRole")
    assert permissions([cluster_role]) == WATCHED
    # Leases only in a Role of the release namespace, never cluster-wide.
    [lease_role] = of_kind(objects, "Role")
    assert lease_role["metadata"]["namespace"] == NAMESPACE
    assert permissions([lease_role]) == LEASES
    assert permissions(of_kind(objects, "ClusterRole") + of_kind(objects, "Role")) == WATCHED | LEASES

    [account] = of_kind(objects, "ServiceAccount")
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    [cluster_binding] = of_kind(objects, "ClusterRoleBinding")
    assert cluster_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                          "name": cluster_role["metadata"]["name"]}
    assert cluster_binding["subjects"] == [subject]
    [lease_binding] = of_kind(objects, "RoleBinding")
    assert lease_binding["metadata"]["namespace"] == NAMESPACE
    assert lease_binding["roleRef"]["name"] == lease_role["metadata"]["name"]
    assert lease_binding["subjects"] == [subject]


def test_one_watched_namespace_gets_a_role_and_the_namespace_flag(chart):
    objects = render(chart, {"watchNamespaces": ["tapes"]})
    assert of_kind(objects, "ClusterRole") == []
    assert of_kind(objects, "ClusterRoleBinding") == []
    roles = {r["metadata"]["namespace"]: r for r in of_kind(objects, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(objects, "RoleBinding")}
    assert set(roles) == {"tapes", NAMESPACE}
    assert permissions([roles["tapes"]]) == WATCHED
    assert permissions([roles[NAMESPACE]]) == LEASES
    assert bindings["tapes"]["roleRef"]["name"] == roles["tapes"]["metadata"]["name"]
    assert bindings["tapes"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "shadowkeep", "namespace": NAMESPACE}
    ]
    _, container = operator_container(objects)
    args = container["args"]
    assert args[args.index("--namespace") + 1] == "tapes"
    assert args.count("--namespace") == 1


def test_backup_namespaces_get_a_role_for_backup_secrets_only(chart):
    objects = render(chart, {"watchNamespaces": ["tapes"], "backupNamespaces": ["tape-backups"]})
    roles = {r["metadata"]["namespace"]: r for r in of_kind(objects, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(objects, "RoleBinding")}
    assert set(roles) == {"tapes", "tape-backups", NAMESPACE}
    assert permissions([roles["tape-backups"]]) == {
        ("", "secrets", v) for v in ("get", "list", "create", "delete")
    }
    assert bindings["tape-backups"]["roleRef"]["name"] == roles["tape-backups"]["metadata"]["name"]
    assert bindings["tape-backups"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "shadowkeep", "namespace": NAMESPACE}
    ]
    # Watching every namespace, the ClusterRole covers them: no extra Role.
    everywhere = render(chart, {"backupNamespaces": ["tape-backups"]})
    assert [r["metadata"]["namespace"] for r in of_kind(everywhere, "Role")] == [NAMESPACE]


def test_two_watched_namespaces_fail_the_render_clearly(chart):
    with pytest.raises(helm.HelmRenderError) as failure:
        render_raw(chart, {"watchNamespaces": ["tapes", "disks"]})
    message = str(failure.value)
    assert "only one namespace is supported for now" in message, message
    assert "tapes, disks" in message, message


def test_two_replicas_need_leader_election(chart):
    deployment, container = operator_container(render(chart, {"replicaCount": 2}))
    assert deployment["spec"]["replicas"] == 2 and "--leader-elect" in container["args"]
    with pytest.raises(helm.HelmRenderError) as failure:
        render_raw(chart, {"replicaCount": 2, "leaderElection": {"enabled": False}})
    assert "replicaCount > 1 needs leaderElection.enabled=true" in str(failure.value)


def test_a_single_namespace_given_as_a_string_is_taken_as_a_list(chart):
    """`--set watchNamespaces=tapes` (a string, not a list) means the same as [tapes]."""
    objects = render(chart, {"watchNamespaces": "tapes"})
    _, container = operator_container(objects)
    assert container["args"][container["args"].index("--namespace") + 1] == "tapes"
    assert of_kind(objects, "ClusterRole") == []


def test_without_leader_election_there_is_no_flag_and_no_lease_permission(chart):
    objects = render(chart, {"leaderElection": {"enabled": False}})
    _, container = operator_container(objects)
    assert "--leader-elect" not in container["args"]
    assert of_kind(objects, "Role") == []
    assert of_kind(objects, "RoleBinding") == []
    granted = permissions(of_kind(objects, "ClusterRole") + of_kind(objects, "Role"))
    assert granted == WATCHED
    assert not {g for g in granted if g[1] == "leases"}

    # With one namespace and no leader election: only the Role in that namespace.
    objects = render(chart, {"leaderElection": {"enabled": False}, "watchNamespaces": ["tapes"]})
    assert [r["metadata"]["namespace"] for r in of_kind(objects, "Role")] == ["tapes"]
    assert permissions(of_kind(objects, "Role")) == WATCHED


def test_chart_crds_are_the_generated_crds_byte_for_byte():
    generated = sorted((REPO / "crds").glob("*.yaml"))
    assert len(generated) == 5, generated
    copies = sorted((CHART / "crds").glob("*.yaml"))
    assert [p.name for p in copies] == [p.name for p in generated], (
        f"charts/shadowkeep/crds/ lists other files than crds/; refresh with `{REFRESH}` "
        "(and remove stale copies)"
    )
    for source in generated:
        copy = CHART / "crds" / source.name
        assert copy.read_bytes() == source.read_bytes(), (
            f"charts/shadowkeep/crds/{source.name} differs from crds/{source.name}; "
            f"refresh with `{REFRESH}`"
        )


def test_loaded_chart_lists_the_five_crds(chart):
    crds = chart.crds
    assert len(crds) == 5
    names, kinds = set(), set()
    for crd in crds:
        [doc] = [d for d in yaml.safe_load_all(crd["data"]) if d]
        assert doc["kind"] == "CustomResourceDefinition"
        assert doc["spec"]["group"] == "shadowkeep.io"
        assert doc["spec"]["scope"] == "Namespaced"
        assert [v["name"] for v in doc["spec"]["versions"]] == ["v1alpha1"]
        names.add(doc["metadata"]["name"])
        kinds.add(doc["spec"]["names"]["kind"])
    assert names == CRD_NAMES
    assert kinds == {"KeyManager", "Shadow", "DriveTable", "KeyGroup", "GitSource"}
    # CRDs are not templates: none is rendered with the release.
    assert not [o for o in render(chart) if o["kind"] == "CustomResourceDefinition"]


def test_image_tag_defaults_to_app_version_and_can_be_overridden(chart):
    app_version = chart.metadata["appVersion"]
    assert app_version == "0.1.0"
    _, container = operator_container(render(chart))
    assert container["image"] == f"ghcr.io/shadowkeep/shadowkeep:{app_version}"
    assert container["imagePullPolicy"] == "IfNotPresent"

    _, container = operator_container(render(chart, {"image": {"tag": "0.2.0-rc.1", "pullPolicy": "Always"}}))
    assert container["image"] == "ghcr.io/shadowkeep/shadowkeep:0.2.0-rc.1"
    assert container["imagePullPolicy"] == "Always"

    _, container = operator_container(render(chart, {"image": {"repository": "registry.example/sk"}}))
    assert container["image"] == f"registry.example/sk:{app_version}"


def test_values_reach_the_deployment(chart):
    objects = render(chart, {
        "serverImage": "registry.example/shadowkeep-server:0.1.0",
        "logLevel": "shadowkeep=debug,info",
        "metrics": {"port": 9090},
        "concurrency": 16,
        "replicaCount": 2,
        "imagePullSecrets": [{"name": "regcred"}],
        "podAnnotations": {"prometheus.io/scrape": "true"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "serviceAccount": {"create": True, "name": "sk-op", "annotations": {"a": "b"}},
    })
    deployment, container = operator_container(objects)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SHADOWKEEP_SERVER_IMAGE"] == "registry.example/shadowkeep-server:0.1.0"
    assert env["RUST_LOG"] == "shadowkeep=debug,info"
    args = container["args"]
    assert args[args.index("--listen") + 1] == "0.0.0.0:9090"
    assert args[args.index("--concurrency") + 1] == "16"
    assert container["ports"][0]["containerPort"] == 9090
    [service] = of_kind(objects, "Service")
    assert service["spec"]["ports"][0]["port"] == 9090
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"
    assert pod["spec"]["serviceAccountName"] == "sk-op"
    [account] = of_kind(objects, "ServiceAccount")
    assert account["metadata"] == account["metadata"] | {"name": "sk-op", "annotations": {"a": "b"}}
    assert {s["name"] for b in of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding")
            for s in b["subjects"]} == {"sk-op"}

    # An existing ServiceAccount: none is created, the bindings name it.
    objects = render(chart, {"serviceAccount": {"create": False, "name": "existing"}})
    assert of_kind(objects, "ServiceAccount") == []
    assert operator_container(objects)[0]["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_notes_tell_how_to_apply_the_quickstart(chart):
    notes = render_raw(chart)["shadowkeep/templates/NOTES.txt"]
    assert "kubectl apply -f examples/quickstart/" in notes
    assert "kubectl get keymanagers,shadows" in notes
    assert "kubectl apply -f charts/shadowkeep/crds/" in notes


def test_images_provide_what_the_chart_and_the_operator_run():
    """The Dockerfiles cannot be built here (no Docker engine); check what the rest relies on:
    the operator binary where the chart's command points, the server binary as the entrypoint
    (the operator's StatefulSets pass only args), uid 65532 as in the pod security contexts,
    and the build image on the toolchain of rust-toolchain.toml."""
    channel = (REPO / "rust-toolchain.toml").read_text().split('channel = "')[1].split('"')[0]
    rust_image = "rust:" + ".".join(channel.split(".")[:2]) + "-bookworm"
    for dockerfile, package, binary in [
        ("operator/Dockerfile", "-p shadowkeep", "shadowkeep"),
        ("server/Dockerfile", "-p shadowkeep-server --bin shadowkeep-server", "shadowkeep-server"),
    ]:
        text = (REPO / dockerfile).read_text()
        lines = [line.strip() for line in text.splitlines()]
        froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
        assert froms == [rust_image, "gcr.io/distroless/cc-debian12:nonroot"], (dockerfile, froms)
        assert f"cargo build --release --locked {package}" in text, dockerfile
        assert f"COPY --from=build /out/{binary} /usr/local/bin/{binary}" in lines, dockerfile
        assert "USER 65532:65532" in lines, dockerfile
        assert f'ENTRYPOINT ["/usr/local/bin/{binary}"]' in lines, dockerfile
        assert f"docker build -f {dockerfile} " in text, dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"target/", ".venv/", "server/fuzz/target/"} <= set(ignored)


def test_every_flag_the_chart_passes_is_one_the_operator_takes(chart):
    """A flag the binary does not know would crash-loop the operator pod on install."""
    help_text = subprocess.run(
        [SHADOWKEEP, "operator", "--help"], check=True, capture_output=True, text=True
    ).stdout
    for values in [{}, {"watchNamespaces": ["tapes"], "concurrency": 8}]:
        _, container = operator_container(render(chart, values))
        assert container["args"][0] == "operator"
        flags = [a for a in container["args"] if a.startswith("--")]
        assert "--concurrency" in flags
        for flag in flags:
            assert flag in help_text, f"the chart passes {flag}, which `shadowkeep operator` does not take"
