"""The container checks (test_container, test_systemd, test_kube_play) share one image, built
once per session by deploy/container/up.sh: from nothing, the Debian base (~2 min) and the
image (~1 min); each check then runs its script with --no-build."""

from __future__ import annotations

import pytest

from tests.support.deploy import lines, run_script


@pytest.fixture(scope="session")
def image() -> dict[str, list[str]]:
    """localhost/edgerank:latest, built (or found up to date) by up.sh --build-only."""
    run = run_script("deploy/container/up.sh", "--build-only")
    assert run.returncode == 0, run.stderr[-4000:]
    return lines(run.stdout)
