"""deploy/k8s/base renders with `kubectl kustomize` and validates against the Kubernetes API
schemas (kubernetes-validate, offline, strict: an unknown field is an error), and says what
the issue asks of it. kubectl missing is a failure, not a skip: .ci/run installs it."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgerank import client

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s" / "base"
#: the Kubernetes version the manifests are written for (native gRPC probes: >= 1.27)
K8S_VERSION = "1.32"


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str], dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (apt-get install kubernetes-client; .ci/run does)")
    out = subprocess.run(
        [kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_every_resource_validates_against_the_kubernetes_schemas(rendered) -> None:
    import kubernetes_validate

    assert set(rendered) == {
        ("Deployment", "edgerank"),
        ("Service", "edgerank"),
        ("Service", "edgerank-headless"),
        ("PodDisruptionBudget", "edgerank"),
        ("HorizontalPodAutoscaler", "edgerank"),
    }
    for doc in rendered.values():
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def test_the_validator_rejects_a_misspelt_field(rendered) -> None:
    """The check above can fail: a typo'd security field is caught, not ignored."""
    import kubernetes_validate

    bad = copy.deepcopy(rendered[("Deployment", "edgerank")])
    ctx = bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    ctx["readOnlyRootFileSystem"] = ctx.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def _pod(rendered) -> dict:
    return rendered[("Deployment", "edgerank")]["spec"]["template"]


def _container(rendered) -> dict:
    (c,) = _pod(rendered)["spec"]["containers"]
    return c


def test_pod_is_locked_down(rendered) -> None:
    spec, c = _pod(rendered)["spec"], _container(rendered)
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # the one writable place is a small tmpfs
    (tmp,) = c["volumeMounts"]
    assert tmp["mountPath"] == "/tmp"


def test_probes_are_native_grpc_health_on_the_listening_port(rendered) -> None:
    c = _container(rendered)
    env = {e["name"]: e["value"] for e in c["env"]}
    port = int(env["EDGERANK_LISTEN"].rpartition(":")[2])
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == port, probe
    # readiness follows the service clients health-check (client.HEALTH_SERVICE)
    assert c["readinessProbe"]["grpc"]["service"] == client.HEALTH_SERVICE
    # a drain must outlast neither the grace period nor be cut short by liveness
    drain = float(env["EDGERANK_DRAIN_TIMEOUT_S"])
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert _pod(rendered)["spec"]["terminationGracePeriodSeconds"] > drain + pre_stop
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > drain + pre_stop


def test_services_pdb_hpa_and_spread_select_the_pods(rendered) -> None:
    labels = _pod(rendered)["metadata"]["labels"]

    def selects(selector: dict) -> bool:
        return selector.items() <= labels.items()

    assert selects(rendered[("Deployment", "edgerank")]["spec"]["selector"]["matchLabels"])
    assert selects(rendered[("Service", "edgerank")]["spec"]["selector"])
    headless = rendered[("Service", "edgerank-headless")]["spec"]
    assert headless["clusterIP"] == "None" and selects(headless["selector"])
    assert selects(rendered[("PodDisruptionBudget", "edgerank")]["spec"]["selector"]["matchLabels"])
    hpa = rendered[("HorizontalPodAutoscaler", "edgerank")]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "edgerank",
    }
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    spread = _pod(rendered)["spec"]["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} >= {"kubernetes.io/hostname"}
    assert all(selects(s["labelSelector"]["matchLabels"]) for s in spread)


def test_resources_are_derived_from_the_models_memory_figure(rendered) -> None:
    sys.path.insert(0, str(ROOT / "deploy" / "k8s"))
    try:
        import resources
    finally:
        sys.path.pop(0)
    c = _container(rendered)
    env = {e["name"]: e["value"] for e in c["env"]}
    rows = {r["name"]: r for r in resources.catalog_rows([sys.executable, "-m", "edgerank"])}
    want = resources.resources(
        rows[env["EDGERANK_MODEL"]], "int8", int(env["EDGERANK_MAX_BATCH_TOKENS"])
    )
    want.pop("_breakdown")
    assert c["resources"] == want
