"""What edgerank knows about a machine: plain records that the planner reads, built by
probe.py on a real machine and by hand in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024


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
#: int8 kernels that add pairs of u8 x s8 products into int16 (vpmaddubsw) and can saturate
SATURATING_INT8 = frozenset({"avx2", "avx512"})


def int8_kernel(isa: frozenset[str]) -> str:
    """The integer dot-product path onnxruntime's MLAS takes on this ISA: what an INT8
    file's fidelity and speed are measured with. AVX2's (and AVX-512 without VNNI) u8 x s8
    path can saturate with full 8-bit weights; VNNI, AMX and Arm's dot products accumulate
    in int32 and cannot, so a fidelity measured on one of them does not carry over to a
    saturating box (Manifest.fidelity_note says so there)."""
    if "amx_int8" in isa and "amx_tile" in isa:
        return "amx"
    if "avx512_vnni" in isa or "avx_vnni" in isa:
        return "vnni"
    if "avx512f" in isa:
        return "avx512"
    if "avx2" in isa:
        return "avx2"
    if "i8mm" in isa:
        return "arm-i8mm"
    if "asimddp" in isa:
        return "arm-dot"
    return "baseline"


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


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0")


def _size(mib: int) -> str:
    return f"{mib} MiB" if abs(mib) < 1024 else f"{mib / 1024:.1f} GiB"
