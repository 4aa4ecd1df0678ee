"""RAM, cgroup (v1 and v2) memory and CPU limits, and free disk: the budget a model must fit.

Every reader takes a root directory (default "/") so tests point it at a fixture tree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgerank.hardware.facts import MIB
from edgerank.hardware.sysfs import is_dir, is_file, read_int, read_text

# cgroup v1 writes "no limit" as PAGE_COUNTER_MAX * page size (9223372036854771712 with 4 KiB
# pages, a different number with 64 KiB pages): treat anything this large as unlimited.
_UNLIMITED_BYTES = 1 << 60


def read_meminfo(root: str | Path = "/") -> tuple[int, int] | None:
    """(MemTotal, MemAvailable) in MiB, or None if /proc/meminfo is unreadable.

    Kernels before 3.14 lack MemAvailable: estimate it as MemFree + Buffers + Cached.
    """
    text = read_text(Path(root) / "proc/meminfo")
    if text is None:
        return None
    kib: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kib[key.strip()] = int(fields[0])
    if "MemTotal" not in kib:
        return None
    if "MemAvailable" in kib:
        available = kib["MemAvailable"]
    else:
        available = kib.get("MemFree", 0) + kib.get("Buffers", 0) + kib.get("Cached", 0)
    return kib["MemTotal"] // 1024, min(available, kib["MemTotal"]) // 1024


def sysconf_ram_mib() -> tuple[int, int]:
    """Last resort on the real machine (no /proc): what libc reports."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page // MIB
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * page // MIB
        except (ValueError, OSError):
            free = total
        return total, free
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _self_cgroups(root: Path) -> tuple[str | None, dict[str, str]]:
    """Parse /proc/self/cgroup into (v2 path, {v1 controller: path})."""
    text = read_text(root / "proc/self/cgroup") or ""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        else:
            for name in controllers.split(","):
                if name:
                    v1[name] = path
    return v2, v1


def _cgroup_dirs(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and its ancestors up to the mount, deepest first.

    Only directories that exist are returned: a container without its own cgroup namespace
    sees the host's path in /proc/self/cgroup while its mount starts at its own cgroup, so the
    path is cut back until something exists, ending at the mount itself.
    """
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    dirs = []
    for depth in range(len(parts), -1, -1):
        candidate = mount.joinpath(*parts[:depth])
        if is_dir(candidate):
            dirs.append(candidate)
    return dirs


def _is_cgroup2(root: Path) -> bool:
    """Unified hierarchy mounted at /sys/fs/cgroup (not the hybrid layout's cgroup/unified)."""
    return is_file(root / "sys/fs/cgroup/cgroup.controllers")


def _v1_mount(root: Path, controller: str) -> Path | None:
    base = root / "sys/fs/cgroup"
    for name in (controller, f"{controller},cpuacct", f"cpuacct,{controller}"):
        if is_dir(base / name):
            return base / name
    return None


def cgroup_memory(root: str | Path = "/") -> tuple[int | None, int | None]:
    """(limit, usage) in MiB of the memory cgroup that bounds this process; limit None = unlimited.

    Every ancestor's limit applies, so the hierarchy is walked up and the cgroup with the least
    headroom (limit - usage) wins: a parent with a looser limit but busy siblings can still be
    the real bound. systemd's MemoryMax= is the v2 memory.max of the unit's cgroup.
    """
    root = Path(root)
    v2, v1 = _self_cgroups(root)
    if _is_cgroup2(root):
        dirs = _cgroup_dirs(root / "sys/fs/cgroup", v2 or "/")
        limit_name, usage_name = "memory.max", "memory.current"
    else:
        mount = _v1_mount(root, "memory")
        if mount is None:
            return None, None
        dirs = _cgroup_dirs(mount, v1.get("memory", "/"))
        limit_name, usage_name = "memory.limit_in_bytes", "memory.usage_in_bytes"
    if not dirs:
        return None, None
    leaf_usage = read_int(dirs[0] / usage_name)
    best: tuple[int, int, int | None] | None = None  # (headroom, limit, usage)
    for d in dirs:
        limit = read_int(d / limit_name)  # v2 "max" does not parse: unlimited
        if limit is None or limit < 0 or limit >= _UNLIMITED_BYTES:
            continue
        usage = read_int(d / usage_name)
        if usage is None:
            usage = leaf_usage
        headroom = limit - (usage or 0)
        if best is None or headroom < best[0]:
            best = (headroom, limit, usage)
    if best is None:
        return None, None if leaf_usage is None else leaf_usage // MIB
    _, limit, usage = best
    return limit // MIB, None if usage is None else usage // MIB


def cgroup_cpu_quota(root: str | Path = "/") -> float | None:
    """CPUs' worth of time the cgroup quota allows (1.5 = 150 ms per 100 ms), None = no quota.

    Quotas nest like memory limits, so the smallest along the hierarchy applies.
    """
    root = Path(root)
    v2, v1 = _self_cgroups(root)
    quotas: list[float] = []
    if _is_cgroup2(root):
        for d in _cgroup_dirs(root / "sys/fs/cgroup", v2 or "/"):
            fields = (read_text(d / "cpu.max") or "").split()
            if len(fields) != 2 or fields[0] == "max":
                continue
            try:
                quota, period = int(fields[0]), int(fields[1])
            except ValueError:
                continue
            if quota > 0 and period > 0:
                quotas.append(quota / period)
    else:
        mount = _v1_mount(root, "cpu")
        if mount is None:
            return None
        for d in _cgroup_dirs(mount, v1.get("cpu", "/")):
            quota = read_int(d / "cpu.cfs_quota_us")  # -1 = no quota
            period = read_int(d / "cpu.cfs_period_us")
            if quota is not None and period and quota > 0 and period > 0:
                quotas.append(quota / period)
    return min(quotas) if quotas else None


def disk_free_mib(path: str | Path) -> int | None:
    """Free MiB on the filesystem that holds (or will hold) `path`: the store may not exist
    yet, so the nearest existing parent is measured."""
    try:
        p = Path(path).expanduser().absolute()
        while not p.exists() and p != p.parent:
            p = p.parent
        return shutil.disk_usage(p).free // MIB
    except (OSError, ValueError):
        return None
