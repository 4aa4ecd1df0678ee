"""deploy/k8s/base, run: rendered with kubectl kustomize and played with `podman kube play`
(deploy/k8s/play.sh), serving through the published port, its gRPC probes' questions
answered, and the pod taken down losing no request (issue 30 part 3)."""

from __future__ import annotations

import json

import pytest

from tests.support.deploy import first_index, json_after, lines, requires_container, run_script

pytestmark = requires_container


@pytest.fixture(scope="module")
def played(image) -> dict[str, list[str]]:
    run = run_script("deploy/k8s/play.sh", "--no-build")
    out = lines(run.stdout)
    assert not out.get("FAIL"), out.get("FAIL")
    assert run.returncode == 0, run.stderr[-4000:]
    return out


def test_the_deployment_comes_up_as_the_manifest_says(played) -> None:
    assert "Deployment" in played["RENDERED"][0]
    (pod,) = played["POD"]
    assert "Running" in pod
    kept = played["KEPT"][0]
    # runAsUser, readOnlyRootFilesystem and the memory limit reach the container
    assert "user=10001:10001" in kept and "read_only=true" in kept
    assert "memory_limit=671088640" in kept  # limits.memory: 640Mi


def test_the_pod_serves_through_the_published_ports(played) -> None:
    assert first_index(json_after(played["RERANK_GRPC"][0])) == 1
    assert first_index(json_after(played["RERANK_HTTP"][0])) == 1


def test_the_probes_questions_are_answered_serving(played) -> None:
    probes = {p.split()[0]: p for p in played["PROBE"]}
    assert set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}
    assert all(p.endswith("-> SERVING") for p in probes.values())


def test_taking_the_pod_down_drains_it_with_no_request_lost(played) -> None:
    """In the kubelet's order (preStop, SIGTERM with the grace period, the pod's network
    last), then `podman kube down`. A bare `kube down` is shown, not asserted: podman 4.3
    stops the pod's network with the app, so the answers of a drain cannot get out."""
    drained = json.loads(played["DRAINED_TRAFFIC"][0])
    assert drained["lost"] == 0, drained
    assert drained["in_flight_at_mark"] >= 1
    assert drained["in_flight_answered"] == drained["in_flight_at_mark"]
    assert "app exited 0" in played["DRAINED"]
    assert any("SIGTERM: draining" in line for line in played["DRAINED_LOG"])
    # no call reached the drain deadline (the line says how far it stayed from it)
    assert any("every accepted call answered in" in line for line in played["DRAINED_LOG"])
    assert not any("drain timeout" in line for line in played["DRAINED_LOG"])
    assert played["LEFT"] == ["0 pods", "0 pods"]
