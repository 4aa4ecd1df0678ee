"""Hardware facts read from /proc, /sys, cgroups and NVML.

Every reader takes a root directory (default "/") so that tests can point it at a fixture tree
laid out like /proc and /sys. Nothing here raises on a missing or odd file: the machine we run
on is whatever a user has (containers, VMs, old kernels), and a probe that crashes is worse
than one that falls back to a default.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
# cgroup v1 writes "no limit" as PAGE_COUNTER_MAX * page size (9223372036854771712 with 4 KiB
# pages, a different number with 64 KiB pages): treat anything this large as unlimited.
_UNLIMITED_BYTES = 1 << 60

X86_ISA = frozenset(
    {
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_int8",
        "amx_bf16",
        "amx_tile",
    }
)
ARM_ISA = frozenset({"asimddp", "i8mm", "bf16", "sve"})
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    vram_total_mib: int
    vram_free_mib: int
    compute_capability: str | None = None  # "9.0"


@dataclass(frozen=True)
class Hardware:
    arch: str  # "x86_64" | "aarch64"
    ram_total_mib: int  # physical RAM (MemTotal)
    ram_available_mib: int  # MemAvailable
    cgroup_limit_mib: int | None  # memory.max / limit_in_bytes, None if unlimited
    cgroup_usage_mib: int | None
    logical_cpus: int  # os.cpu_count()
    usable_cpus: float  # min(sched affinity, cgroup cpu.max quota)
    physical_cores: int  # distinct (package, core) pairs among usable CPUs
    # subset of X86_ISA (avx2 avx512f avx512_vnni avx512_bf16 avx_vnni amx_int8 amx_bf16
    # amx_tile) or ARM_ISA (asimddp i8mm bf16 sve)
    isa: frozenset[str]
    gpus: tuple[Gpu, ...]
    disk_free_mib: int | None  # free space where the model store lives

    @property
    def memory_budget_mib(self) -> int:
        """What this process may still use: the tighter of host and cgroup headroom."""
        budget = self.ram_available_mib
        if self.cgroup_limit_mib is not None:
            budget = min(budget, self.cgroup_limit_mib - (self.cgroup_usage_mib or 0))
        return max(budget, 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data for `edgerank probe --json`."""
        return {
            "arch": self.arch,
            "ram_total_mib": self.ram_total_mib,
            "ram_available_mib": self.ram_available_mib,
            "cgroup_limit_mib": self.cgroup_limit_mib,
            "cgroup_usage_mib": self.cgroup_usage_mib,
            "memory_budget_mib": self.memory_budget_mib,
            "logical_cpus": self.logical_cpus,
            "usable_cpus": self.usable_cpus,
            "physical_cores": self.physical_cores,
            "recommended_threads": recommended_threads(self),
            "isa": sorted(self.isa),
            "gpus": [
                {
                    "index": g.index,
                    "name": g.name,
                    "vram_total_mib": g.vram_total_mib,
                    "vram_free_mib": g.vram_free_mib,
                    "compute_capability": g.compute_capability,
                }
                for g in self.gpus
            ],
            "disk_free_mib": self.disk_free_mib,
        }

    def summary(self) -> str:
        """One human line: what a user needs to see at a glance."""
        cpus = f"{_num(self.usable_cpus)} usable CPUs ({self.physical_cores} cores"
        cpus += f", {self.logical_cpus} logical)"
        ram = f"RAM {_size(self.ram_available_mib)} free of {_size(self.ram_total_mib)}"
        if self.cgroup_limit_mib is not None:
            ram += f", cgroup limit {_size(self.cgroup_limit_mib)}"
        isa = "ISA " + (" ".join(sorted(self.isa)) or "baseline")
        if self.gpus:
            gpu = "; ".join(
                f"GPU{g.index} {g.name} {_size(g.vram_free_mib)}/{_size(g.vram_total_mib)} free"
                for g in self.gpus
            )
        else:
            gpu = "no GPU"
        disk = "disk ?" if self.disk_free_mib is None else f"disk {_size(self.disk_free_mib)} free"
        return f"{self.arch} | {cpus} | {ram} | {isa} | {gpu} | {disk}"


def recommended_threads(hw: Hardware) -> int:
    """Intra-op threads to use: one per physical core, within the CPU quota, at least one.

    Hyperthread siblings share one core's vector units, so a second thread on the same core
    mostly adds contention for GEMM-bound inference. A fractional quota is rounded down, since
    running more threads than the quota pays makes the kernel throttle the whole process.
    """
    return max(1, min(hw.physical_cores, int(hw.usable_cpus)))


# --- small safe file helpers -------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _is_real_root(root: Path) -> bool:
    try:
        return root.resolve() == Path("/")
    except OSError:
        return False


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0")


def _size(mib: int) -> str:
    return f"{mib} MiB" if abs(mib) < 1024 else f"{mib / 1024:.1f} GiB"


# --- RAM --------------------------------------------------------------------------------


def read_meminfo(root: str | Path = "/") -> tuple[int, int] | None:
    """(MemTotal, MemAvailable) in MiB, or None if /proc/meminfo is unreadable.

    Kernels before 3.14 lack MemAvailable: estimate it as MemFree + Buffers + Cached.
    """
    text = _read(Path(root) / "proc/meminfo")
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


def _sysconf_ram_mib() -> tuple[int, int]:
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


# --- cgroups ----------------------------------------------------------------------------


def _self_cgroups(root: Path) -> tuple[str | None, dict[str, str]]:
    """Parse /proc/self/cgroup into (v2 path, {v1 controller: path})."""
    text = _read(root / "proc/self/cgroup") or ""
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
        if _is_dir(candidate):
            dirs.append(candidate)
    return dirs


def _is_cgroup2(root: Path) -> bool:
    """Unified hierarchy mounted at /sys/fs/cgroup (not the hybrid layout's cgroup/unified)."""
    return _is_file(root / "sys/fs/cgroup/cgroup.controllers")


def _v1_mount(root: Path, controller: str) -> Path | None:
    base = root / "sys/fs/cgroup"
    for name in (controller, f"{controller},cpuacct", f"cpuacct,{controller}"):
        if _is_dir(base / name):
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
    leaf_usage = _read_int(dirs[0] / usage_name)
    best: tuple[int, int, int | None] | None = None  # (headroom, limit, usage)
    for d in dirs:
        limit = _read_int(d / limit_name)  # v2 "max" does not parse: unlimited
        if limit is None or limit < 0 or limit >= _UNLIMITED_BYTES:
            continue
        usage = _read_int(d / usage_name)
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
            fields = (_read(d / "cpu.max") or "").split()
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
            quota = _read_int(d / "cpu.cfs_quota_us")  # -1 = no quota
            period = _read_int(d / "cpu.cfs_period_us")
            if quota is not None and period and quota > 0 and period > 0:
                quotas.append(quota / period)
    return min(quotas) if quotas else None


# --- CPUs -------------------------------------------------------------------------------


def parse_cpu_list(text: str) -> set[int] | None:
    """Parse the kernel's CPU list format ("0-3,8,10-11"); None if malformed or empty."""
    cpus: set[int] = set()
    for item in text.strip().split(","):
        item = item.strip()
        if not item:
            continue
        lo, sep, hi = item.partition("-")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            return None
        if first < 0 or last < first:
            return None
        cpus.update(range(first, last + 1))
    return cpus or None


def _cpuinfo_blocks(root: Path) -> list[dict[str, str]]:
    """/proc/cpuinfo as one key -> value dict per blank-line-separated block."""
    text = _read(root / "proc/cpuinfo") or ""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def logical_cpus(root: str | Path = "/") -> int | None:
    """Online CPUs from /sys/devices/system/cpu/online, else /proc/cpuinfo's processors."""
    root = Path(root)
    online = parse_cpu_list(_read(root / "sys/devices/system/cpu/online") or "")
    if online:
        return len(online)
    count = sum(1 for b in _cpuinfo_blocks(root) if "processor" in b)
    return count or None


def read_affinity(root: str | Path = "/") -> set[int] | None:
    """The CPUs this process may run on, as /proc/self/status tells (fixture-friendly)."""
    text = _read(Path(root) / "proc/self/status") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Cpus_allowed_list":
            return parse_cpu_list(value)
    return None


def physical_cores(root: str | Path, cpus: Iterable[int]) -> int:
    """Distinct (package, core) pairs among `cpus`: hyperthread siblings count once.

    sysfs topology first, then "physical id"/"core id" in /proc/cpuinfo (absent on arm64 and
    in some VMs), then one core per logical CPU. A source is used only if it covers every CPU,
    so that two sources never mix their numbering.
    """
    root = Path(root)
    cpus = sorted(set(cpus))
    if not cpus:
        return 1
    keys: set[tuple[int, int]] = set()
    for n in cpus:
        topo = root / f"sys/devices/system/cpu/cpu{n}/topology"
        package = _read_int(topo / "physical_package_id")
        core = _read_int(topo / "core_id")
        if package is None or core is None:
            break
        keys.add((package, core))
    else:
        return len(keys)
    by_cpu: dict[int, tuple[int, int]] = {}
    for block in _cpuinfo_blocks(root):
        try:
            by_cpu[int(block["processor"])] = (int(block["physical id"]), int(block["core id"]))
        except (KeyError, ValueError):
            continue
    if all(n in by_cpu for n in cpus):
        return len({by_cpu[n] for n in cpus})
    return len(cpus)


def read_isa(root: str | Path = "/") -> frozenset[str]:
    """The ISA extensions edgerank cares about, present on every CPU.

    x86 lists them under "flags", arm64 under "Features"; the intersection across CPUs keeps
    a hybrid part honest about what every core can run.
    """
    found: set[str] | None = None
    for block in _cpuinfo_blocks(Path(root)):
        if "flags" in block:
            have = set(block["flags"].split()) & X86_ISA
        elif "Features" in block:
            have = set(block["Features"].split()) & ARM_ISA
        else:
            continue
        found = have if found is None else found & have
    return frozenset(found or ())


# --- GPUs -------------------------------------------------------------------------------

Runner = Callable[[Sequence[str]], str]
_SMI_FIELDS = ("index", "name", "memory.total", "memory.free", "compute_cap")
_CC_RE = re.compile(r"\d+\.\d+")


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


# --- disk -------------------------------------------------------------------------------


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


# --- all together -----------------------------------------------------------------------


def probe(
    root: str | Path = "/",
    store_path: str | Path | None = None,
    *,
    machine: str | None = None,
    affinity: Callable[[], Iterable[int]] | None = None,
    gpu_reader: Callable[[], tuple[Gpu, ...]] = detect_gpus,
) -> Hardware:
    """Assemble every fact into a Hardware record; missing facts become defaults, not errors.

    On the real root the process affinity comes from os.sched_getaffinity; under a fixture
    root it comes from the tree's /proc/self/status, so a test sees only its own tree.
    `store_path` None leaves disk_free_mib None (the caller knows where the store is).
    """
    root = Path(root)
    real = _is_real_root(root)

    arch = (machine if machine is not None else platform.machine()).lower() or "unknown"
    arch = _ARCH_ALIASES.get(arch, arch)

    mem = read_meminfo(root)
    if mem is None:
        mem = _sysconf_ram_mib() if real else (0, 0)
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

    return Hardware(
        arch=arch,
        ram_total_mib=mem[0],
        ram_available_mib=mem[1],
        cgroup_limit_mib=limit,
        cgroup_usage_mib=usage,
        logical_cpus=logical,
        usable_cpus=usable,
        physical_cores=physical_cores(root, cpus),
        isa=read_isa(root),
        gpus=gpu_reader(),
        disk_free_mib=None if store_path is None else disk_free_mib(store_path),
    )
