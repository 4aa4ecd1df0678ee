"""deploy/container/up.sh builds the image on a box with no registry and runs it;
deploy/container/check.sh checks what runs (issue 29 item 7)."""

from __future__ import annotations

import pytest

from tests.support.deploy import first_index, json_after, lines, requires_container, run_script

pytestmark = requires_container


@pytest.fixture(scope="module")
def checked(image) -> dict[str, list[str]]:
    run = run_script("deploy/container/check.sh", "--no-build")
    assert run.returncode == 0, run.stderr[-4000:]
    return lines(run.stdout)


def test_the_image_keeps_its_healthcheck(image) -> None:
    # podman's default OCI format drops HEALTHCHECK; up.sh builds in Docker format
    assert "healthcheck.py" in image["HEALTHCHECK"][0]
    assert int(image["IMAGE_SIZE"][0]) > 0


def test_it_runs_as_10001_on_a_read_only_root_and_is_healthy(checked) -> None:
    assert checked["USER"] == ["10001"]
    assert checked["READ_ONLY"] == ["true"]
    assert checked["HEALTH"] == ["healthy"]


def test_it_reranks_over_grpc_and_http_through_the_published_ports(checked) -> None:
    assert first_index(json_after(checked["GRPC"][0])) == 1  # the router document
    assert first_index(json_after(checked["HTTP"][0])) == 1


def test_sigterm_exits_0(checked) -> None:
    assert checked["EXIT_CODE"] == ["0"]
