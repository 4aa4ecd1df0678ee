"""`edgerank probe --calibrate`: which runtime serves a model fastest here, and how faithfully.

Published figures rank models, but which backend runs one model fastest on one machine (INT8
ONNX, torch BF16 on AMX, FP16 on a GPU) and at how many threads is an empirical question,
and a fast backend that ranks unlike fp32 is no win. So each installed backend of the chosen
model runs for a few seconds: pairs/s at 1..n threads on a fixed batch (interleaved rounds,
medians) and fidelity against torch fp32 when the model has a torch entry (its checkpoint is
the reference), else the ONNX entry's fidelity measured at import against ONNX fp32. Then each
CPU backend times batch shapes (token budget x pair cap, quality/shapes.py) at its fastest
thread count, on a mixed-length request of natural text: the planner runs the fastest shape
that fits the memory budget.

The figures are cached per machine and model in <home>/calibration.json. A machine is a
hash of the probe facts that set speed (arch, ISA, cores, CPU quota, RAM size, GPUs) and
the runtime versions; free memory is left out, since it changes between runs on the same
machine. A measurement also records a fingerprint of the store entry it ran, and is
dropped when that entry is replaced. choose() then uses them (planning/ranking.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgerank.backends.base import Backend, Encoded
from edgerank.backends.registry import open_entry
from edgerank.hardware.facts import Hardware, recommended_threads
from edgerank.planning.measured import PAIRS, TOKENS, Key, Measured, fastest_threads
from edgerank.store.calibration import CalibrationCache, entry_fingerprint
from edgerank.store.layout import StoreLayout

#: probe groups for fidelity (smaller than at import: a few seconds in all)
FIDELITY_GROUPS, FIDELITY_PER_GROUP = 8, 8


# ---------------------------------------------------------------------------- machine


# ------------------------------------------------------------------------------ cache


# ---------------------------------------------------------------------------- measure


@dataclass
class _Target:
    backend: str
    precision: str
    device: str
    open: Callable[[int], Any]
    reference: dict[str, Any] | None = field(default=None)


def _targets(
    store: StoreLayout, hw: Hardware, model: str, allow_remote_code: bool
) -> list[_Target]:
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
                lambda t: open_entry(store.entry(model, "onnx"), threads=t),
                reference=fid,
            )
        )
    if "torch" in installed and "torch" in have:
        from edgerank.planning.candidates import torch_placement as placement

        device, precision, cpu = placement(hw)
        places = [("cpu", "fp32")]
        if cpu != "fp32":
            places.append(("cpu", cpu))
        if device != "cpu":
            places.append((device, precision))
        for dev, prec in places:

            def opener(t: int, d: str = dev, p: str = prec) -> Any:
                # a CUDA target that fails to start falls back to the CPU precision
                return open_entry(store.entry(model, "torch"), threads=t, device=d, precision=p,
                    cpu_precision=p if d == "cpu" else cpu, allow_remote_code=allow_remote_code,
                )  # fmt: skip

            targets.append(_Target("torch", prec, dev, opener))
    return targets


def _batch(backend: Backend, seed: int = 0) -> list[Encoded]:
    """PAIRS items cut to TOKENS tokens from long synthetic passages."""
    from edgerank.backends.base import ScoreOptions
    from edgerank.quality.bench import synthetic_text

    rng = random.Random(seed)
    query = synthetic_text(8, rng)
    passages = [synthetic_text(TOKENS * 2, rng) for _ in range(PAIRS)]
    return backend.encode(query, passages, ScoreOptions(max_tokens_per_doc=TOKENS))


def _time(opened: dict[str, Any], seconds: float) -> dict[str, float]:
    """pairs/s per backend: one warm-up call each, then interleaved rounds that fill
    ``seconds`` (bench.rounds_to_fill)."""
    from edgerank.quality.bench import interleaved, rounds_to_fill

    calls = {}
    spent = 0.0
    for name, be in opened.items():
        items = _batch(be)
        calls[name] = (lambda b=be, x=items: b.score(x), len(items))
        t0 = time.perf_counter()
        calls[name][0]()
        spent += time.perf_counter() - t0
    rounds = rounds_to_fill(seconds, spent)
    timings = interleaved({n: c for n, (c, _) in calls.items()}, rounds=rounds, warmup=0)
    return {n: calls[n][1] / timings[n].median for n in calls}


def calibrate(
    store: StoreLayout,
    hw: Hardware,
    model: str,
    *,
    seconds: float = 4.0,
    threads: tuple[int, ...] | None = None,
    allow_remote_code: bool = False,
    progress: Callable[[str], None] = lambda msg: None,
) -> list[Measured]:
    """Measure every installed backend of ``model`` here and cache the figures.

    ``seconds``: timing budget per thread count (all backends share it), and per CPU backend
    for its batch shapes; ``threads``: counts to try, default 1..recommended_threads(hw).
    """
    from edgerank.errors import BackendUnavailable
    from edgerank.quality.fidelity import compare
    from edgerank.quality.texts import probe_groups

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

    shapes = _shapes(targets, speeds, actual, seconds, _limit(hw, model), progress)
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
            shapes=shapes.get(name, {}),
        )
        results.setdefault(m.key, m)  # a fallback duplicate keeps the first (real) one
    measured = sorted(results.values(), key=lambda m: -m.best_pairs_per_s)
    CalibrationCache.for_store(store).put(hw, model, measured)
    return measured


def _limit(hw: Hardware, model: str) -> Callable[[str, str], int]:
    """(backend, precision) -> the padded tokens per batch the memory model allows now: a
    shape the planner could never run is not worth the time, nor the memory."""
    from edgerank.catalog.load import load_catalog
    from edgerank.errors import EdgerankError
    from edgerank.planning.memory import CPU_TOKEN_BUDGETS, memory_need

    try:
        spec = load_catalog().get(model)
    except EdgerankError:
        spec = None

    def limit(backend: str, precision: str) -> int:
        if spec is None:  # a custom import: the planner knows no size for it
            return CPU_TOKEN_BUDGETS[0]
        try:
            return memory_need(spec, backend, precision, False, hw.memory_budget_mib)[1]
        except KeyError:  # the catalog has no size at this precision
            return CPU_TOKEN_BUDGETS[0]

    return limit


def _shapes(targets, speeds, actual, seconds, limit, progress) -> dict[str, dict[str, float]]:
    """name -> shape_key -> pairs/s for every measured CPU target, at its best thread count.
    A GPU keeps the memory budget: the grid is sized for a CPU's caches."""
    from edgerank.quality import shapes

    out: dict[str, dict[str, float]] = {}
    seen = set()
    for tg in targets:
        name = f"{tg.backend}/{tg.precision}/{tg.device}"
        ran = (tg.backend, *actual.get(name, ("", "")))
        if name not in speeds or ran[2] != "cpu" or ran in seen:
            continue  # a CUDA target that fell back to the CPU duplicates a CPU one
        seen.add(ran)
        t = fastest_threads(speeds[name])
        progress(f"timing batch shapes of {name} at {t} thread(s)")
        be = tg.open(t)
        try:
            out[name] = shapes.measure(be, seconds, speeds[name][t], limit(*ran[:2]))
        finally:
            be.close()
    return out


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
