"""What `edgerank probe --calibrate` measured, kept per machine and model in
<home>/calibration.json, and read back by the planner.

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
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from edgerank.hardware.facts import Hardware
from edgerank.store.layout import StoreLayout

SCHEMA = 1
FILE = "calibration.json"
#: the timed batch: pairs x tokens per call
PAIRS, TOKENS = 16, 128
#: mean Spearman against fp32 below this: the candidate ranks after faithful ones
FIDELITY_FLOOR = 0.99
#: runtimes whose version is part of the machine
RUNTIMES = ("onnxruntime", "torch", "transformers", "llama_cpp_python")
#: a batch shape within this share of the memory default's speed loses to it: two shapes
#: that differ by noise should not flip the choice from one calibration to the next
SHAPE_SLACK = 0.03

Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class Measured:
    """One (model, backend, precision, device) as measured on this machine."""

    model: str
    backend: str
    precision: str
    device: str
    #: threads -> pairs per second on the PAIRS x TOKENS batch (median of rounds)
    pairs_per_s: dict[int, float]
    #: rank agreement with the reference (fidelity.rank_agreement keys); None = unmeasured
    fidelity: dict[str, float] | None = None
    #: what fidelity was measured against ("torch fp32", "onnx fp32 at import", "itself")
    reference: str | None = None
    shape: str = f"{PAIRS}x{TOKENS}"
    #: fingerprint of the store entry that ran (a replaced entry invalidates the figure)
    entry: str = ""
    measured_at: str = ""
    #: batch shape (shape_key: token budget x pair cap) -> pairs per second on a mixed-length
    #: request, at best_threads (quality/shapes.py); empty = not measured (rows from before)
    shapes: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.model, self.backend, self.precision, self.device)

    @property
    def best_threads(self) -> int:
        return fastest_threads(self.pairs_per_s)

    @property
    def best_pairs_per_s(self) -> float:
        return self.pairs_per_s[self.best_threads] if self.pairs_per_s else 0.0

    def fastest_shape(self, limit: int) -> tuple[int, int | None] | None:
        """(token budget, pair cap or None) that scored fastest within ``limit`` padded
        tokens; the memory default (``limit``, no cap) unless another beat it by more than
        SHAPE_SLACK. None when no measured shape fits."""
        fits = {k: v for k, v in self.shapes.items() if parse_shape(k)[0] <= limit}
        if not fits:
            return None
        best = max(fits, key=lambda k: (fits[k], parse_shape(k)[0], -(parse_shape(k)[1] or 0)))
        default = shape_key(limit, None)
        if default in fits and fits[best] <= fits[default] * (1 + SHAPE_SLACK):
            best = default
        return parse_shape(best)

    @property
    def fidelity_ok(self) -> bool:
        if not self.fidelity or "spearman_mean" not in self.fidelity:
            return True
        return self.fidelity["spearman_mean"] >= FIDELITY_FLOOR

    def summary(self) -> str:
        speeds = ", ".join(f"{v:.0f} at {t}" for t, v in sorted(self.pairs_per_s.items()))
        line = f"{self.backend}/{self.precision} on {self.device}: pairs/s {speeds} threads"
        if self.reference == "itself":
            line += "; the fp32 reference"
        elif self.fidelity and "spearman_mean" in self.fidelity:
            f = self.fidelity
            line += f"; spearman {f['spearman_mean']:.4f}"
            if "top1_kept" in f:
                line += f", top-1 kept {f['top1_kept']:.0%}"
            line += f" vs {self.reference}"
        else:
            line += "; fidelity not measured"
        return line

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pairs_per_s"] = {str(t): v for t, v in self.pairs_per_s.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measured:
        data = dict(data)
        data["pairs_per_s"] = {int(t): float(v) for t, v in data["pairs_per_s"].items()}
        shapes = data.get("shapes") or {}
        if not isinstance(shapes, dict):
            raise TypeError("shapes must be a mapping")
        data["shapes"] = {shape_key(*parse_shape(k)): float(v) for k, v in shapes.items()}
        return cls(**data)


def fastest_threads(pairs_per_s: dict[int, float]) -> int:
    """The fastest thread count; the fewer threads when two measured alike."""
    return max(pairs_per_s, key=lambda t: (pairs_per_s[t], -t))


def shape_key(tokens: int, max_pairs: int | None) -> str:
    """'8192x0': padded tokens per batch x pairs per batch at most (0 = no cap)."""
    return f"{tokens}x{max_pairs or 0}"


def parse_shape(key: str) -> tuple[int, int | None]:
    """shape_key's inverse; ValueError for anything else."""
    tokens, _, pairs = key.partition("x")
    t, p = int(tokens), int(pairs)
    if t <= 0 or p < 0:
        raise ValueError(f"not a batch shape: {key!r}")
    return t, p or None


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
