"""Loading what the plan names: the runtime with its options, and an INT8 entry's FP32
rescoring of near-ties beside it. The hardware is probed once here and handed to everything
that needs it (thread count, torch placement, the choice); the daemon reports the same record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerank.backends import biencoder
from edgerank.backends.base import Backend
from edgerank.backends.registry import open_entry
from edgerank.engine.cascade import Cascade, open_cascade
from edgerank.hardware import probe as hw_probe
from edgerank.hardware.facts import Hardware, recommended_threads
from edgerank.models.manifest import MANIFEST
from edgerank.models.serving import RequestShape
from edgerank.planning.candidates import Wishes
from edgerank.planning.memory import CPU_TOKEN_BUDGETS
from edgerank.startup.resolve import Ask, Plan, resolve
from edgerank.store.layout import StoreLayout


@dataclass
class Loaded:
    backend: Backend
    #: the machine it was loaded for (probed once, reported by the daemon)
    hardware: Hardware
    #: a line for stderr when the user should know something (fallback in use)
    note: str | None = None
    #: the batch shape: padded tokens per batch and pairs per batch at most (None = no cap)
    token_budget: int = CPU_TOKEN_BUDGETS[0]
    max_pairs: int | None = None
    #: the entry's FP32 rescoring of near-ties (an INT8 install's recipe), opened with it
    cascade: Cascade | None = None
    #: what was decided, and why (None for a backend opened by hand)
    plan: Plan | None = None

    def close(self) -> None:
        self.backend.close()
        if self.cascade is not None:
            self.cascade.close()


def load(
    model: str | None,
    *,
    backend: str | None = None,
    threads: int | None = None,
    store: StoreLayout | None = None,
    languages: tuple[str, ...] = ("en",),
    allow_remote_code: bool = False,
    cascade: bool = True,
    request_shape: str | None = None,
) -> Loaded:
    """Probe, resolve and open. ``threads`` None: one per usable physical core.
    ``allow_remote_code``: let torch run modelling code a checkpoint ships (opt-in). An INT8
    ONNX entry whose recipe rescores near-ties in FP32 comes with its cascade, on the same
    threads, unless ``cascade`` is False (the bench times the model alone). ``request_shape``
    ('32x128-256'): the requests served, for an entry that holds INT8 and FP32 options
    (models/serving.served); None: the shape it was installed for."""
    shape = RequestShape.parse(request_shape) if request_shape else None
    store = store or StoreLayout()
    hardware = hw_probe.probe(store_path=store.root if store.root.exists() else None)
    wishes = Wishes(languages=languages, allow_remote_code=allow_remote_code)
    plan = resolve(Ask(model, backend, wishes), store, hardware)
    return open_plan(
        plan, hardware, threads=threads or recommended_threads(hardware),
        allow_remote_code=allow_remote_code, cascade=cascade, request_shape=shape,
    )  # fmt: skip


def open_plan(
    plan: Plan, hardware: Hardware, *, threads: int, allow_remote_code: bool = False,
    cascade: bool = True, request_shape: RequestShape | None = None,
) -> Loaded:  # fmt: skip
    """Open the plan's runtime (and its cascade, as the file that serves at
    ``request_shape`` has it); a CUDA fallback becomes a note."""
    if plan.backend == "biencoder":
        be: Backend = biencoder.BiEncoderBackend(threads=threads)
    else:
        be = _open_runtime(plan, threads, allow_remote_code, request_shape)
    loaded = Loaded(be, hardware, plan.note, plan.token_budget, plan.max_pairs, plan=plan)
    info = be.info()
    if plan.backend == "torch" and (fallback := info.details.get("fallback")):
        loaded.note = f"CUDA failed to start ({fallback}): running on the CPU ({info.precision})"
    # only entries kept on disk (ONNX) have a directory where an FP32 reference can sit
    model_dir = getattr(be, "model_dir", None)
    if cascade and model_dir is not None:
        try:
            served = getattr(be, "manifest", None)  # the file chosen for the shape
            loaded.cascade = open_cascade(model_dir, threads=info.threads, manifest=served)
        except BaseException:
            be.close()
            raise
    return loaded


def _open_runtime(
    plan: Plan, threads: int, allow_remote_code: bool, shape: RequestShape | None
) -> Backend:
    options: dict[str, Any] = {}
    if plan.backend == "onnx":
        options["request_shape"] = shape
    if plan.quant is not None:
        options["precision"] = plan.quant
    if plan.placement is not None:
        device, precision, cpu_precision = plan.placement
        options.update(device=device, precision=precision, cpu_precision=cpu_precision,
                       allow_remote_code=allow_remote_code)  # fmt: skip
    if plan.source == "checkpoint":
        from edgerank.backends.torch import open_torch

        return open_torch(plan.path, threads=threads, **options)
    return open_entry(plan.path, threads=threads, **options)


def reference_dir(model: str, served: str, store: StoreLayout) -> Path:
    """Where the served entry lives: the directory the model setting names, else the store
    entry of the served model's name (an automatic choice is installed under its name)."""
    if model and (Path(model) / MANIFEST).is_file():
        return Path(model)
    return store.path(model or served, "onnx")
