"""Usable CPUs, physical cores and ISA flags (AVX2/AVX-512/VNNI/AMX on x86, dotprod/i8mm/bf16/SVE
on arm64): what decides the thread count and which INT8/BF16 kernels pay.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edgerank.hardware.facts import ARM_ISA, X86_ISA
from edgerank.hardware.sysfs import read_int, read_text


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
    text = read_text(root / "proc/cpuinfo") or ""
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
    online = parse_cpu_list(read_text(root / "sys/devices/system/cpu/online") or "")
    if online:
        return len(online)
    count = sum(1 for b in _cpuinfo_blocks(root) if "processor" in b)
    return count or None


def read_affinity(root: str | Path = "/") -> set[int] | None:
    """The CPUs this process may run on, as /proc/self/status tells (fixture-friendly)."""
    text = read_text(Path(root) / "proc/self/status") or ""
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
        package = read_int(topo / "physical_package_id")
        core = read_int(topo / "core_id")
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


#: the /proc/cpuinfo key and the extensions of interest, per architecture
_ISA_KEYS = {"x86_64": ("flags", X86_ISA), "aarch64": ("Features", ARM_ISA)}
#: arm64 hwcaps (asm/hwcap.h): name -> (getauxval type, bit); AT_HWCAP = 16, AT_HWCAP2 = 26
ARM_HWCAPS = {"asimddp": (16, 1 << 20), "sve": (16, 1 << 22), "i8mm": (26, 1 << 13),
              "bf16": (26, 1 << 14)}  # fmt: skip


def cpuinfo_isa(root: str | Path, arch: str | None) -> frozenset[str] | None:
    """The extensions of interest under the architecture's /proc/cpuinfo key, intersected
    across CPUs (a hybrid part is only as good as its weakest core); None when no block
    carries that key. Without `arch`, whichever key a block has."""
    keys = [_ISA_KEYS[arch]] if arch in _ISA_KEYS else list(_ISA_KEYS.values())
    found: set[str] | None = None
    for block in _cpuinfo_blocks(Path(root)):
        for key, known in keys:
            if key in block:
                have = set(block[key].split()) & known
                found = have if found is None else found & have
                break
    return None if found is None else frozenset(found)


def read_isa(root: str | Path = "/", arch: str | None = None) -> frozenset[str]:
    """The ISA extensions edgerank cares about, present on every CPU.

    x86 lists them under "flags", arm64 under "Features". Given `arch`, only that
    architecture's key counts: an aarch64 process under qemu-user (< 8.1) reads the x86
    host's /proc/cpuinfo, whose "flags" say nothing about the CPU it runs on.
    """
    return cpuinfo_isa(root, arch) or frozenset()


def read_arm_hwcaps() -> frozenset[str] | None:
    """The arm64 extensions the kernel (or qemu-user) hands this process in its auxiliary
    vector: the ground truth where /proc/cpuinfo has no "Features" line. Call it on aarch64
    only (the bits mean other things elsewhere); None where getauxval is missing."""
    import ctypes

    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    words = {at: getauxval(at) for at in {at for at, _ in ARM_HWCAPS.values()}}
    return frozenset(name for name, (at, bit) in ARM_HWCAPS.items() if words[at] & bit)
