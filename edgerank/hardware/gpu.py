"""GPUs and their free VRAM, from NVML when the driver's library loads, else nvidia-smi; no GPU is
an answer, not an error.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from edgerank.hardware.facts import MIB, Gpu

Runner = Callable[[Sequence[str]], str]


def _run_nvidia_smi(args: Sequence[str]) -> str:
    """Run nvidia-smi and return stdout; raise if it is absent, fails or hangs."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise FileNotFoundError("nvidia-smi not on PATH")
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=15, check=True)
    return done.stdout


def parse_nvidia_smi(text: str, with_compute_cap: bool = True) -> tuple[Gpu, ...]:
    """Parse `nvidia-smi --query-gpu=index,name,memory.total,memory.free[,compute_cap]
    --format=csv,noheader,nounits`; lines that do not fit are skipped, never guessed."""
    numeric = 3 if with_compute_cap else 2  # trailing fields after the name
    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 2 + numeric:
            continue
        name = ", ".join(cells[1 : len(cells) - numeric])  # a name may itself hold a comma
        tail = cells[len(cells) - numeric :]
        try:
            index, total, free = int(cells[0]), int(tail[0]), int(tail[1])
        except ValueError:
            continue
        if not name or index < 0 or total <= 0 or not 0 <= free <= total:
            continue
        cc = tail[2] if with_compute_cap and _CC_RE.fullmatch(tail[2]) else None
        gpus.append(Gpu(index, name, total, free, cc))
    return tuple(gpus)


def _smi_gpus(run: Runner) -> tuple[Gpu, ...]:
    fmt = "--format=csv,noheader,nounits"
    failures = (OSError, subprocess.SubprocessError, ValueError)
    try:
        return parse_nvidia_smi(run([f"--query-gpu={','.join(_SMI_FIELDS)}", fmt]))
    except subprocess.CalledProcessError:
        pass  # drivers before 510 reject the compute_cap field: ask again without it
    except failures:
        return ()
    try:
        return parse_nvidia_smi(run([f"--query-gpu={','.join(_SMI_FIELDS[:4])}", fmt]), False)
    except failures:
        return ()


def _nvml_gpus(nvml: Any) -> tuple[Gpu, ...] | None:
    """GPUs through NVML, or None when NVML is missing or fails (then nvidia-smi is asked).

    NVML raises its own error classes (one per return code) from an optional module, and a
    broken driver must never break the probe, so its calls are guarded broadly.
    """
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py; optional, so imported only here
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return None
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):  # nvidia-ml-py < 11.515 returns bytes
                name = name.decode(errors="replace")
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                cc: str | None = f"{major}.{minor}"
            except Exception:  # noqa: BLE001 - old drivers: NVMLError_FunctionNotFound
                cc = None
            gpus.append(Gpu(i, str(name), int(mem.total) // MIB, int(mem.free) // MIB, cc))
        return tuple(gpus)
    except Exception:  # noqa: BLE001 - any NVML error: fall back to nvidia-smi
        return None
    finally:
        with contextlib.suppress(Exception):  # shutdown failing changes nothing we report
            nvml.nvmlShutdown()


def detect_gpus(nvml: Any = None, run: Runner | None = None) -> tuple[Gpu, ...]:
    """NVIDIA GPUs with total/free VRAM: NVML, else nvidia-smi, else none. Never raises.

    `nvml` stands in for the pynvml module and `run` for the nvidia-smi runner, for tests.
    """
    gpus = _nvml_gpus(nvml)
    if gpus is not None:
        return gpus
    return _smi_gpus(run or _run_nvidia_smi)


_SMI_FIELDS = ("index", "name", "memory.total", "memory.free", "compute_cap")


_CC_RE = re.compile(r"\d+\.\d+")
