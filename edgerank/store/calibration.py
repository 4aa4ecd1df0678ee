"""<home>/calibration.json: what `edgerank probe --calibrate` measured, kept per machine and
model, and read back for the planner.

A machine is a hash of the probe facts that set speed (arch, ISA, cores, CPU quota, RAM size,
GPUs) and the runtime versions; free memory is left out, since it changes between runs on the
same machine. A measurement also records a fingerprint of the store entry it ran, and is
dropped when that entry is replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from edgerank.hardware.facts import Hardware
from edgerank.planning.measured import Key, Measured
from edgerank.store.layout import StoreLayout

SCHEMA = 1
FILE = "calibration.json"
#: runtimes whose version is part of the machine
RUNTIMES = ("onnxruntime", "torch", "transformers", "llama_cpp_python")


def _versions() -> dict[str, str]:
    out = {}
    for dist in RUNTIMES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_facts(hw: Hardware) -> dict[str, Any]:
    """What sets speed here; not free RAM/VRAM or disk, which change from run to run."""
    return {
        "arch": hw.arch,
        "isa": sorted(hw.isa),
        "logical_cpus": hw.logical_cpus,
        "physical_cores": hw.physical_cores,
        "usable_cpus": hw.usable_cpus,
        "ram_total_gib": round(hw.ram_total_mib / 1024),
        "cgroup_limit_mib": hw.cgroup_limit_mib,
        "gpus": [[g.name, g.vram_total_mib, g.compute_capability] for g in hw.gpus],
        "runtimes": _versions(),
    }


def machine_key(hw: Hardware) -> str:
    text = json.dumps(machine_facts(hw), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CalibrationCache:
    """<home>/calibration.json: read tolerantly (a broken file is an empty cache), written
    atomically (a crash mid-write never leaves half a file)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def for_store(cls, store: StoreLayout) -> CalibrationCache:
        return cls(Path(store.root) / FILE)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"schema": SCHEMA, "machines": {}}
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            return {"schema": SCHEMA, "machines": {}}
        if not isinstance(data.get("machines"), dict):
            data["machines"] = {}
        return data

    def get(self, hw: Hardware, model: str | None = None) -> list[Measured]:
        machine = self._read()["machines"].get(machine_key(hw), {})
        out = []
        for name, rows in (machine.get("models") or {}).items():
            if model is not None and name != model:
                continue
            for row in rows:
                try:
                    out.append(Measured.from_dict(row))
                except (KeyError, TypeError, ValueError):
                    continue  # a row from another version: skip it, keep the rest
        return out

    def put(self, hw: Hardware, model: str, measured: list[Measured]) -> None:
        """Replace this machine's figures for ``model``."""
        data = self._read()
        machine = data["machines"].setdefault(machine_key(hw), {})
        machine["facts"] = machine_facts(hw)
        machine.setdefault("models", {})[model] = [m.to_dict() for m in measured]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".calibration-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2)
                fh.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def entry_fingerprint(store: StoreLayout, model: str, backend: str) -> str:
    """Hash of the entry's manifest (its files' sha256s); 'embedded' for the bi-encoder."""
    if backend == "biencoder":
        return "embedded"
    path = store.path(model, backend) / "manifest.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def lookup(store: StoreLayout, hw: Hardware) -> dict[Key, Measured]:
    """This machine's figures whose store entry is still the one that was measured."""
    out = {}
    for m in CalibrationCache.for_store(store).get(hw):
        if m.entry == entry_fingerprint(store, m.model, m.backend):
            out[m.key] = m
    return out
