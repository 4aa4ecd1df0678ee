"""`edgerank probe --calibrate`: which runtime serves a model fastest here, and how faithfully.

Published figures rank models, but which backend runs one model fastest on one machine (INT8
ONNX, torch BF16 on AMX, FP16 on a GPU) and at how many threads is an empirical question,
and a fast backend that ranks unlike fp32 is no win. So each installed backend of the chosen
model runs for a few seconds: pairs/s at 1..n threads on a fixed batch (interleaved rounds,
medians) and fidelity against torch fp32 when the model has a torch entry (its checkpoint is
the reference), else the ONNX entry's fidelity measured at import against ONNX fp32.

The figures are cached per machine and model in <home>/calibration.json. A machine is a
hash of the probe facts that set speed (arch, ISA, cores, CPU quota, RAM size, GPUs) and
the runtime versions; free memory is left out, since it changes between runs on the same
machine. A measurement also records a fingerprint of the store entry it ran, and is
dropped when that entry is replaced. choose() then uses them (see choose.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from edgerank.probe import Hardware, recommended_threads

SCHEMA = 1
FILE = "calibration.json"
#: mean Spearman against fp32 below this: the candidate ranks after faithful ones
FIDELITY_FLOOR = 0.99
#: the timed batch: pairs x tokens per call
PAIRS, TOKENS = 16, 128
#: runtimes whose version is part of the machine
RUNTIMES = ("onnxruntime", "torch", "transformers", "llama_cpp_python")
#: probe groups for fidelity (smaller than at import: a few seconds in all)
FIDELITY_GROUPS, FIDELITY_PER_GROUP = 8, 8

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

    @property
    def key(self) -> Key:
        return (self.model, self.backend, self.precision, self.device)

    @property
    def best_threads(self) -> int:
        """The fastest thread count; the fewer threads when two measured alike."""
        return max(self.pairs_per_s, key=lambda t: (self.pairs_per_s[t], -t))

    @property
    def best_pairs_per_s(self) -> float:
        return self.pairs_per_s[self.best_threads] if self.pairs_per_s else 0.0

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
        return cls(**data)


# ---------------------------------------------------------------------------- machine


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


# ------------------------------------------------------------------------------ cache


class CalibrationCache:
    """<home>/calibration.json: read tolerantly (a broken file is an empty cache), written
    atomically (a crash mid-write never leaves half a file)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def for_store(cls, store: Any) -> CalibrationCache:
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


def entry_fingerprint(store: Any, model: str, backend: str) -> str:
    """Hash of the entry's manifest (its files' sha256s); 'embedded' for the bi-encoder."""
    if backend == "biencoder":
        return "embedded"
    path = store.path(model, backend) / "manifest.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def lookup(store: Any, hw: Hardware) -> dict[Key, Measured]:
    """This machine's figures whose store entry is still the one that was measured."""
    out = {}
    for m in CalibrationCache.for_store(store).get(hw):
        if m.entry == entry_fingerprint(store, m.model, m.backend):
            out[m.key] = m
    return out


# ---------------------------------------------------------------------------- measure


@dataclass
class _Target:
    backend: str
    precision: str
    device: str
    open: Callable[[int], Any]
    reference: dict[str, Any] | None = field(default=None)


def _targets(store: Any, hw: Hardware, model: str, allow_remote_code: bool) -> list[_Target]:
    """Every way this machine could serve the installed model (what choose() could pick)."""
    from edgerank.backends import available_backends

    installed = store.installed().get(model, [])
    have = available_backends()
    targets: list[_Target] = []
    from edgerank.backends import biencoder

    if model == biencoder.NAME and not installed:
        opener = biencoder.BiEncoderBackend
        return [_Target("biencoder", "int8", "cpu", lambda t: opener(threads=t))]
    if "onnx" in installed and "onnx" in have:
        manifest = store.manifest(model, "onnx")
        fid = manifest.fidelity if manifest.fidelity.get("spearman_mean") is not None else None
        targets.append(
            _Target(
                "onnx",
                manifest.precision,
                "cpu",
                lambda t: store.open(model, "onnx", threads=t),
                reference=fid,
            )
        )
    if "torch" in installed and "torch" in have:
        from edgerank.backends.torch import placement

        device, precision, cpu = placement(hw)
        places = [("cpu", "fp32")]
        if cpu != "fp32":
            places.append(("cpu", cpu))
        if device != "cpu":
            places.append((device, precision))
        for dev, prec in places:

            def opener(t: int, d: str = dev, p: str = prec) -> Any:
                # a CUDA target that fails to start falls back to the CPU precision
                return store.open(
                    model, "torch", threads=t, device=d, precision=p,
                    cpu_precision=p if d == "cpu" else cpu, allow_remote_code=allow_remote_code,
                )  # fmt: skip

            targets.append(_Target("torch", prec, dev, opener))
    return targets


def _batch(backend: Any, seed: int = 0) -> list[Any]:
    """PAIRS items cut to TOKENS tokens from long synthetic passages."""
    from edgerank.backends.base import ScoreOptions
    from edgerank.bench import synthetic_text

    rng = random.Random(seed)
    query = synthetic_text(8, rng)
    passages = [synthetic_text(TOKENS * 2, rng) for _ in range(PAIRS)]
    return backend.encode(query, passages, ScoreOptions(max_tokens_per_doc=TOKENS))


def _time(opened: dict[str, Any], seconds: float) -> dict[str, float]:
    """pairs/s per backend: one warm-up call each, then interleaved rounds that fill
    ``seconds`` (at least 3 rounds, at most 15)."""
    from edgerank.bench import interleaved

    calls = {}
    spent = 0.0
    for name, be in opened.items():
        items = _batch(be)
        calls[name] = (lambda b=be, x=items: b.score(x), len(items))
        t0 = time.perf_counter()
        calls[name][0]()
        spent += time.perf_counter() - t0
    rounds = max(3, min(15, int(seconds / max(spent, 1e-6))))
    timings = interleaved({n: c for n, (c, _) in calls.items()}, rounds=rounds, warmup=0)
    return {n: calls[n][1] / timings[n].median for n in calls}


def calibrate(
    store: Any,
    hw: Hardware,
    model: str,
    *,
    seconds: float = 4.0,
    threads: tuple[int, ...] | None = None,
    allow_remote_code: bool = False,
    progress: Callable[[str], None] = lambda msg: None,
) -> list[Measured]:
    """Measure every installed backend of ``model`` here and cache the figures.

    ``seconds``: timing budget per thread count (all backends share it); ``threads``:
    counts to try, default 1..recommended_threads(hw).
    """
    from edgerank.errors import BackendUnavailable
    from edgerank.fidelity import compare, probe_groups

    counts = threads or tuple(range(1, recommended_threads(hw) + 1))
    targets = _targets(store, hw, model, allow_remote_code)
    if not targets:
        raise BackendUnavailable(f"nothing installed to calibrate for {model}")
    speeds: dict[str, dict[int, float]] = {}
    actual: dict[str, tuple[str, str]] = {}
    for t in counts:
        opened = {}
        for tg in targets:
            name = f"{tg.backend}/{tg.precision}/{tg.device}"
            try:
                be = tg.open(t)
            except BackendUnavailable as exc:
                progress(f"skipping {name}: {exc}")
                continue
            info = be.info()
            actual[name] = (info.precision, info.device)  # a CUDA fallback runs on the CPU
            opened[name] = be
        progress(f"timing {', '.join(opened)} at {t} thread(s)")
        try:
            for name, rate in _time(opened, seconds).items():
                speeds.setdefault(name, {})[t] = rate
        finally:
            for be in opened.values():
                be.close()

    fidelity = _fidelity(targets, speeds, max(counts), compare, probe_groups, progress)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results: dict[Key, Measured] = {}
    for tg in targets:
        name = f"{tg.backend}/{tg.precision}/{tg.device}"
        if name not in speeds:
            continue
        precision, device = actual[name]
        fid, ref = fidelity.get(name, (None, None))
        m = Measured(
            model,
            tg.backend,
            precision,
            device,
            speeds[name],
            fid,
            ref,
            entry=entry_fingerprint(store, model, tg.backend),
            measured_at=stamp,
        )
        results.setdefault(m.key, m)  # a fallback duplicate keeps the first (real) one
    measured = sorted(results.values(), key=lambda m: -m.best_pairs_per_s)
    CalibrationCache.for_store(store).put(hw, model, measured)
    return measured


def _fidelity(targets, speeds, t, compare, probe_groups, progress) -> dict[str, tuple]:
    """name -> (rank agreement, reference) for every measured target."""
    groups = probe_groups(FIDELITY_GROUPS, FIDELITY_PER_GROUP)
    ref_target = next(
        (tg for tg in targets if (tg.backend, tg.precision, tg.device) == ("torch", "fp32", "cpu")),
        None,
    )
    out: dict[str, tuple] = {}
    for tg in targets:
        name = f"{tg.backend}/{tg.precision}/{tg.device}"
        if name in speeds and tg.reference is not None:
            out[name] = (_agreement(tg.reference), "onnx fp32 at import")
    if ref_target is None or "torch/fp32/cpu" not in speeds:
        return out
    out["torch/fp32/cpu"] = (None, "itself")
    ref = ref_target.open(t)
    try:
        for tg in targets:
            name = f"{tg.backend}/{tg.precision}/{tg.device}"
            if tg is ref_target or name not in speeds:
                continue
            progress(f"fidelity of {name} against torch fp32")
            cand = tg.open(t)
            try:
                out[name] = (_agreement(compare(ref, cand, groups)), "torch fp32")
            finally:
                cand.close()
    finally:
        ref.close()
    return out


def _agreement(figures: Mapping[str, Any]) -> dict[str, float]:
    keys = ("spearman_mean", "spearman_min", "top1_kept", "max_abs_diff", "groups")
    return {k: float(figures[k]) for k in keys if isinstance(figures.get(k), (int, float))}
