"""probe(): every hardware fact assembled into one Hardware record.

Every reader takes a root directory (default "/") so that tests can point it at a fixture tree
laid out like /proc and /sys. Nothing here raises on a missing or odd file: the machine we run
on is whatever a user has (containers, VMs, old kernels), and a probe that crashes is worse
than one that falls back to a default.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable
from pathlib import Path

from edgerank.hardware.cpu import (
    cpuinfo_isa,
    logical_cpus,
    physical_cores,
    read_affinity,
    read_arm_hwcaps,
)
from edgerank.hardware.facts import Gpu, Hardware, int8_kernel
from edgerank.hardware.gpu import detect_gpus
from edgerank.hardware.memory import (
    cgroup_cpu_quota,
    cgroup_memory,
    disk_free_mib,
    read_meminfo,
    sysconf_ram_mib,
)
from edgerank.hardware.sysfs import is_real_root

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


# --- small safe file helpers -------------------------------------------------------------


# --- RAM --------------------------------------------------------------------------------


# --- cgroups ----------------------------------------------------------------------------


# --- CPUs -------------------------------------------------------------------------------


# --- GPUs -------------------------------------------------------------------------------


# --- disk -------------------------------------------------------------------------------


# --- all together -----------------------------------------------------------------------


def probe(
    root: str | Path = "/",
    store_path: str | Path | None = None,
    *,
    machine: str | None = None,
    affinity: Callable[[], Iterable[int]] | None = None,
    gpu_reader: Callable[[], tuple[Gpu, ...]] = detect_gpus,
    hwcap_reader: Callable[[], frozenset[str] | None] | None = None,
) -> Hardware:
    """Assemble every fact into a Hardware record; missing facts become defaults, not errors.

    On the real root the process affinity comes from os.sched_getaffinity; under a fixture
    root it comes from the tree's /proc/self/status, so a test sees only its own tree.
    `store_path` None leaves disk_free_mib None (the caller knows where the store is).
    On aarch64 with no "Features" in /proc/cpuinfo, the ISA comes from the auxiliary vector
    (read_arm_hwcaps; on the real root, or from `hwcap_reader`).
    """
    root = Path(root)
    real = is_real_root(root)

    arch = (machine if machine is not None else platform.machine()).lower() or "unknown"
    arch = _ARCH_ALIASES.get(arch, arch)

    mem = read_meminfo(root)
    if mem is None:
        mem = sysconf_ram_mib() if real else (0, 0)
    limit, usage = cgroup_memory(root)

    logical = logical_cpus(root) or ((os.cpu_count() or 0) if real else 0)
    cpus: set[int] | None = None
    try:
        if affinity is not None:
            cpus = set(affinity())
        elif real and hasattr(os, "sched_getaffinity"):
            cpus = set(os.sched_getaffinity(0))
    except OSError:
        cpus = None
    if not cpus:
        cpus = read_affinity(root) or set(range(max(logical, 1)))
    logical = max(logical, len(cpus))
    usable: float = float(len(cpus))
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        usable = min(usable, quota)

    isa = cpuinfo_isa(root, arch)
    if isa is None and arch == "aarch64":
        reader = hwcap_reader or (read_arm_hwcaps if real else None)
        isa = reader() if reader is not None else None

    return Hardware(
        arch=arch,
        ram_total_mib=mem[0],
        ram_available_mib=mem[1],
        cgroup_limit_mib=limit,
        cgroup_usage_mib=usage,
        logical_cpus=logical,
        usable_cpus=usable,
        physical_cores=physical_cores(root, cpus),
        isa=isa or frozenset(),
        gpus=gpu_reader(),
        disk_free_mib=None if store_path is None else disk_free_mib(store_path),
    )


def int8_kernel_here() -> str:
    """This CPU's int8 kernel (facts.int8_kernel), without the rest of the probe: the
    fidelity notes compare it with the kernel an INT8 file was measured with."""
    arch = platform.machine().lower()
    arch = _ARCH_ALIASES.get(arch, arch)
    isa = cpuinfo_isa("/", arch)
    if isa is None and arch == "aarch64":
        isa = read_arm_hwcaps()
    return int8_kernel(isa or frozenset())
