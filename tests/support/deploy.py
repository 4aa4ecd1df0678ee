"""Running the deploy scripts (deploy/**/*.sh) from tests: each prints `KEY rest` lines that
the tests read. The container checks need root and podman, so they run only with
EDGERANK_CONTAINER=1 (.ci/run sets it and installs podman; there a failure is a failure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

requires_container = pytest.mark.skipif(
    os.environ.get("EDGERANK_CONTAINER") != "1",
    reason="container checks: root, podman, ~10 min from nothing; EDGERANK_CONTAINER=1 "
    "runs them (CI does)",
)


def lines(out: str) -> dict[str, list[str]]:
    """A script's `KEY rest` lines, by KEY (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        if key and key.replace("_", "").isalpha() and key.isupper():
            found.setdefault(key, []).append(rest)
    return found


def run_script(relative: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a deploy script with this interpreter as its client; the timeout is a hang guard."""
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        [str(ROOT / relative), *args],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=ROOT,
        env=env,
    )
    print(f"\n{run.stdout}\n--- stderr (tail)\n{run.stderr[-3000:]}")
    return run


def json_after(line: str) -> dict:
    """The JSON object a line ends with."""
    return json.loads(line[line.index("{") :])


def first_index(reply: dict) -> int:
    """The request index of the best result, in edgerank's JSON or Cohere's."""
    return reply["results"][0]["index"]
