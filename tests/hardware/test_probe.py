"""Hardware probe against fixture trees laid out like /proc, /sys and /sys/fs/cgroup."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgerank.hardware import memory as hw_memory
from edgerank.hardware.cpu import parse_cpu_list, physical_cores, read_isa
from edgerank.hardware.facts import Gpu, Hardware, recommended_threads
from edgerank.hardware.gpu import detect_gpus, parse_nvidia_smi
from edgerank.hardware.memory import cgroup_cpu_quota, cgroup_memory, disk_free_mib, read_meminfo
from edgerank.hardware.probe import probe

MIB = 1024 * 1024
V1_UNLIMITED = "9223372036854771712"

MEMINFO = """\
MemTotal:       24684092 kB
MemFree:        23621920 kB
MemAvailable:   24265980 kB
Buffers:           12345 kB
Cached:           400000 kB
"""

# Real flag lines, trimmed of flags edgerank ignores.
AMD_ZEN3_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat sse sse2 ht syscall nx "
    "lm constant_tsc pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c "
    "rdrand hypervisor abm sse4a fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap "
    "clflushopt clwb sha_ni xsaveopt xsavec vaes vpclmulqdq rdpid fsrm"
)
SAPPHIRE_RAPIDS_FLAGS = (
    "fpu vme de pse tsc msr pae sse sse2 ht syscall nx lm ssse3 fma cx16 sse4_1 sse4_2 avx "
    "f16c avx2 bmi2 avx512f avx512dq rdseed adx avx512ifma avx512cd sha_ni avx512bw avx512vl "
    "avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg "
    "avx512_vpopcntdq avx_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8"
)
GRAVITON3_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
    "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg "
    "dcpodp svei8mm svebf16 i8mm bf16 dgh rng"
)
GRAVITON2_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
    "dcpop asimddp ssbs"
)


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """Write {relative path: content} under root and return root."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def x86_cpuinfo(flags: str, n: int = 2, cores: Sequence[int] | None = None) -> str:
    cores = list(range(n)) if cores is None else list(cores)
    return "\n".join(
        f"processor\t: {i}\nvendor_id\t: GenuineIntel\nphysical id\t: 0\n"
        f"core id\t\t: {cores[i]}\nflags\t\t: {flags}\n"
        for i in range(n)
    )


def arm_cpuinfo(features: str, n: int = 2) -> str:
    return "\n".join(
        f"processor\t: {i}\nBogoMIPS\t: 2100.00\nFeatures\t: {features}\nCPU part\t: 0xd40\n"
        for i in range(n)
    )


def topology(cores: Sequence[int], package: int = 0) -> dict[str, str]:
    """sysfs topology files: logical CPU i sits on core cores[i]."""
    files = {"sys/devices/system/cpu/online": f"0-{len(cores) - 1}\n"}
    for cpu, core in enumerate(cores):
        files[f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"] = f"{package}\n"
        files[f"sys/devices/system/cpu/cpu{cpu}/topology/core_id"] = f"{core}\n"
    return files


def no_gpus() -> tuple[Gpu, ...]:
    return ()


# --- RAM ----------------------------------------------------------------------------------


def test_meminfo_is_read_in_mib(tmp_path: Path) -> None:
    make_tree(tmp_path, {"proc/meminfo": MEMINFO})
    assert read_meminfo(tmp_path) == (24684092 // 1024, 24265980 // 1024)


def test_meminfo_without_memavailable_estimates_it(tmp_path: Path) -> None:
    text = "MemTotal: 2048000 kB\nMemFree: 100000 kB\nBuffers: 2400 kB\nCached: 300000 kB\n"
    make_tree(tmp_path, {"proc/meminfo": text})
    assert read_meminfo(tmp_path) == (2000, (100000 + 2400 + 300000) // 1024)


def test_meminfo_missing_or_garbage_gives_none(tmp_path: Path) -> None:
    assert read_meminfo(tmp_path) is None
    make_tree(tmp_path, {"proc/meminfo": "nonsense\n\x00\x01 : kB\n"})
    assert read_meminfo(tmp_path) is None


# --- cgroups ------------------------------------------------------------------------------


def cgroup2_container(root: Path, memory_max: str, cpu_max: str, current: int) -> Path:
    """A container with its own cgroup namespace: /proc/self/cgroup says "0::/"."""
    return make_tree(
        root,
        {
            "proc/meminfo": MEMINFO,
            "proc/self/cgroup": "0::/\n",
            "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
            "sys/fs/cgroup/memory.max": memory_max + "\n",
            "sys/fs/cgroup/memory.current": f"{current}\n",
            "sys/fs/cgroup/cpu.max": cpu_max + "\n",
            "proc/cpuinfo": x86_cpuinfo(AMD_ZEN3_FLAGS, n=4),
            **topology([0, 1, 2, 3]),
        },
    )


def test_cgroup2_container_limits(tmp_path: Path) -> None:
    root = cgroup2_container(tmp_path, str(512 * MIB), "150000 100000", current=100 * MIB)
    assert cgroup_memory(root) == (512, 100)
    assert cgroup_cpu_quota(root) == pytest.approx(1.5)

    hw = probe(root, affinity=lambda: {0, 1, 2, 3}, gpu_reader=no_gpus)
    assert hw.cgroup_limit_mib == 512
    assert hw.usable_cpus == pytest.approx(1.5)
    assert hw.physical_cores == 4
    assert hw.memory_budget_mib == 512 - 100  # the cgroup, not the 23 GiB host, is the bound
    assert recommended_threads(hw) == 1  # a 1.5-CPU quota pays for one full thread


def test_cgroup2_unlimited(tmp_path: Path) -> None:
    root = cgroup2_container(tmp_path, "max", "max 100000", current=300 * MIB)
    assert cgroup_memory(root) == (None, 300)
    assert cgroup_cpu_quota(root) is None

    hw = probe(root, affinity=lambda: {0, 1, 2}, gpu_reader=no_gpus)
    assert hw.cgroup_limit_mib is None
    assert hw.usable_cpus == 3
    assert hw.memory_budget_mib == 24265980 // 1024


def test_cgroup2_nested_parent_is_tighter(tmp_path: Path) -> None:
    """systemd: MemoryMax= on the slice binds a service whose own limit is looser."""
    make_tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/edgerank.slice/edgerank.service\n",
            "sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",  # the root cgroup has none, be safe
            "sys/fs/cgroup/edgerank.slice/memory.max": f"{256 * MIB}\n",
            "sys/fs/cgroup/edgerank.slice/memory.current": f"{120 * MIB}\n",
            "sys/fs/cgroup/edgerank.slice/cpu.max": "50000 100000\n",
            "sys/fs/cgroup/edgerank.slice/edgerank.service/memory.max": f"{1024 * MIB}\n",
            "sys/fs/cgroup/edgerank.slice/edgerank.service/memory.current": f"{100 * MIB}\n",
            "sys/fs/cgroup/edgerank.slice/edgerank.service/cpu.max": "200000 100000\n",
        },
    )
    assert cgroup_memory(tmp_path) == (256, 120)
    assert cgroup_cpu_quota(tmp_path) == pytest.approx(0.5)


def test_cgroup2_busy_parent_with_looser_limit_still_binds(tmp_path: Path) -> None:
    """Parent 1 GiB with 900 MiB used by siblings leaves 124 MiB; the child's own 512 MiB
    limit would claim 462 MiB of headroom that does not exist."""
    make_tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/pod/app\n",
            "sys/fs/cgroup/cgroup.controllers": "memory\n",
            "sys/fs/cgroup/pod/memory.max": f"{1024 * MIB}\n",
            "sys/fs/cgroup/pod/memory.current": f"{900 * MIB}\n",
            "sys/fs/cgroup/pod/app/memory.max": f"{512 * MIB}\n",
            "sys/fs/cgroup/pod/app/memory.current": f"{50 * MIB}\n",
        },
    )
    limit, usage = cgroup_memory(tmp_path)
    assert limit - usage == 124


def test_cgroup1_limits(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            "proc/meminfo": MEMINFO,
            "proc/self/cgroup": "5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n1:name=systemd:/",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{2048 * MIB}\n",
            "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes": f"{700 * MIB}\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_memory(tmp_path) == (2048, 700)
    assert cgroup_cpu_quota(tmp_path) == pytest.approx(2.5)
    hw = probe(tmp_path, affinity=lambda: range(8), gpu_reader=no_gpus)
    assert (hw.usable_cpus, hw.cgroup_limit_mib) == (pytest.approx(2.5), 2048)


def test_cgroup1_unlimited_like_this_machine(tmp_path: Path) -> None:
    """Hybrid layout (v1 controllers + cgroup/unified) with no limits, as on the dev box."""
    make_tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/process_api/b758\n1:cpu:/\n0::/\n",
            "sys/fs/cgroup/unified/cgroup.controllers": "",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
            "sys/fs/cgroup/memory/process_api/memory.limit_in_bytes": V1_UNLIMITED,
            "sys/fs/cgroup/memory/process_api/b758/memory.limit_in_bytes": V1_UNLIMITED,
            "sys/fs/cgroup/memory/process_api/b758/memory.usage_in_bytes": f"{8 * MIB}\n",
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_memory(tmp_path) == (None, 8)
    assert cgroup_cpu_quota(tmp_path) is None


def test_cgroup1_host_path_not_visible_reads_mount_root(tmp_path: Path) -> None:
    """Docker without a cgroup namespace: /proc/self/cgroup names the host path, but the
    container's own cgroup is mounted at the controller root."""
    make_tree(
        tmp_path,
        {
            "proc/self/cgroup": "9:memory:/docker/0123abcd\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": f"{768 * MIB}\n",
            "sys/fs/cgroup/memory/memory.usage_in_bytes": f"{64 * MIB}\n",
        },
    )
    assert cgroup_memory(tmp_path) == (768, 64)


def test_no_cgroup_information(tmp_path: Path) -> None:
    assert cgroup_memory(tmp_path) == (None, None)
    assert cgroup_cpu_quota(tmp_path) is None


# --- CPUs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0-3", {0, 1, 2, 3}), ("0,2,4-5\n", {0, 2, 4, 5}), ("7", {7}), ("", None), ("3-1", None)],
)
def test_parse_cpu_list(text: str, expected: set[int] | None) -> None:
    assert parse_cpu_list(text) == expected


def test_hyperthreaded_topology_counts_cores(tmp_path: Path) -> None:
    # Intel numbering: cpu0/cpu2 share core 0, cpu1/cpu3 share core 1.
    make_tree(tmp_path, topology([0, 1, 0, 1]))
    assert physical_cores(tmp_path, [0, 1, 2, 3]) == 2
    assert physical_cores(tmp_path, [0, 2]) == 1  # pinned to one core's two siblings
    assert physical_cores(tmp_path, [0, 1]) == 2

    hw = probe(tmp_path, affinity=lambda: {0, 1, 2, 3}, gpu_reader=no_gpus)
    assert (hw.logical_cpus, hw.usable_cpus, hw.physical_cores) == (4, 4, 2)
    assert recommended_threads(hw) == 2


def test_two_packages_with_same_core_ids_are_distinct(tmp_path: Path) -> None:
    files = topology([0, 1])
    files.update({k.replace("cpu0", "cpu2").replace("cpu1", "cpu3"): v for k, v in files.items()})
    files["sys/devices/system/cpu/cpu2/topology/physical_package_id"] = "1\n"
    files["sys/devices/system/cpu/cpu3/topology/physical_package_id"] = "1\n"
    make_tree(tmp_path, files)
    assert physical_cores(tmp_path, range(4)) == 4


def test_topology_falls_back_to_cpuinfo_then_logical(tmp_path: Path) -> None:
    make_tree(tmp_path, {"proc/cpuinfo": x86_cpuinfo(AMD_ZEN3_FLAGS, n=4, cores=[0, 0, 1, 1])})
    assert physical_cores(tmp_path, range(4)) == 2

    arm = make_tree(tmp_path / "arm", {"proc/cpuinfo": arm_cpuinfo(GRAVITON3_FEATURES, n=3)})
    assert physical_cores(arm, range(3)) == 3  # no core ids anywhere: one per logical CPU


def test_affinity_from_fixture_status_when_not_injected(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            "proc/self/status": "Name:\tpython\nCpus_allowed:\t5\nCpus_allowed_list:\t0,2\n",
            **topology([0, 1, 2, 3]),
        },
    )
    hw = probe(tmp_path, gpu_reader=no_gpus)
    assert (hw.logical_cpus, hw.usable_cpus, hw.physical_cores) == (4, 2, 2)


# --- ISA ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (x86_cpuinfo(AMD_ZEN3_FLAGS), {"avx2"}),
        (
            x86_cpuinfo(SAPPHIRE_RAPIDS_FLAGS),
            {
                "avx2",
                "avx512f",
                "avx512_vnni",
                "avx512_bf16",
                "avx_vnni",
                "amx_int8",
                "amx_bf16",
                "amx_tile",
            },
        ),
        (arm_cpuinfo(GRAVITON3_FEATURES), {"asimddp", "i8mm", "bf16", "sve"}),
        (arm_cpuinfo(GRAVITON2_FEATURES), {"asimddp"}),
    ],
    ids=["amd-zen3-avx2-only", "sapphire-rapids-amx", "graviton3", "graviton2"],
)
def test_isa_flags(tmp_path: Path, cpuinfo: str, expected: set[str]) -> None:
    make_tree(tmp_path, {"proc/cpuinfo": cpuinfo})
    assert read_isa(tmp_path) == frozenset(expected)


def test_isa_is_what_every_cpu_has(tmp_path: Path) -> None:
    mixed = x86_cpuinfo(SAPPHIRE_RAPIDS_FLAGS, n=1) + "\n" + x86_cpuinfo(AMD_ZEN3_FLAGS, n=1)
    make_tree(tmp_path, {"proc/cpuinfo": mixed})
    assert read_isa(tmp_path) == frozenset({"avx2"})


def test_arm_probe_reports_arch_and_features(tmp_path: Path) -> None:
    make_tree(tmp_path, {"proc/cpuinfo": arm_cpuinfo(GRAVITON2_FEATURES, n=2)})
    hw = probe(tmp_path, machine="arm64", gpu_reader=no_gpus)
    assert hw.arch == "aarch64"
    assert hw.isa == frozenset({"asimddp"})


def test_arm64_under_qemu_user_ignores_the_hosts_x86_flags(tmp_path: Path) -> None:
    """qemu-user before 8.1 shows an aarch64 process the x86 host's /proc/cpuinfo: its
    "flags" must not turn into aarch64 features; the auxiliary vector's hwcaps tell."""
    make_tree(tmp_path, {"proc/cpuinfo": x86_cpuinfo(SAPPHIRE_RAPIDS_FLAGS, n=2)})
    assert read_isa(tmp_path, "aarch64") == frozenset()
    hw = probe(tmp_path, machine="aarch64", gpu_reader=no_gpus)
    assert hw.arch == "aarch64" and hw.isa == frozenset()  # fixture root: no hwcaps read
    hw = probe(
        tmp_path, machine="aarch64", gpu_reader=no_gpus,
        hwcap_reader=lambda: frozenset({"asimddp", "sve"}),
    )  # fmt: skip
    assert hw.isa == frozenset({"asimddp", "sve"})


def test_arm64_cpuinfo_features_come_before_hwcaps(tmp_path: Path) -> None:
    make_tree(tmp_path, {"proc/cpuinfo": arm_cpuinfo(GRAVITON2_FEATURES, n=2)})

    def never() -> frozenset[str]:
        raise AssertionError("hwcaps read although /proc/cpuinfo has Features")

    hw = probe(tmp_path, machine="aarch64", gpu_reader=no_gpus, hwcap_reader=never)
    assert hw.isa == frozenset({"asimddp"})
    # and an x86 box never reads an arm "Features" line as its own
    assert read_isa(tmp_path, "x86_64") == frozenset()


# --- GPUs ---------------------------------------------------------------------------------

SMI_TWO_GPUS = """\
0, NVIDIA H100 80GB HBM3, 81559, 80989, 9.0
1, NVIDIA GeForce RTX 4090, 24564, 1200, 8.9
"""


def smi_runner(output: str) -> tuple[list[list[str]], object]:
    calls: list[list[str]] = []

    def run(args: Sequence[str]) -> str:
        calls.append(list(args))
        return output

    return calls, run


def broken_nvml() -> SimpleNamespace:
    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    return SimpleNamespace(nvmlInit=fail, nvmlShutdown=fail)


def test_nvidia_smi_two_gpus() -> None:
    calls, run = smi_runner(SMI_TWO_GPUS)
    gpus = detect_gpus(nvml=broken_nvml(), run=run)
    assert gpus == (
        Gpu(0, "NVIDIA H100 80GB HBM3", 81559, 80989, "9.0"),
        Gpu(1, "NVIDIA GeForce RTX 4090", 24564, 1200, "8.9"),
    )
    assert "--query-gpu=index,name,memory.total,memory.free,compute_cap" in calls[0]
    assert "--format=csv,noheader,nounits" in calls[0]


@pytest.mark.parametrize(
    "output",
    [
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
        "0, Tesla T4, [N/A], [N/A], 7.5\n",
        "zero, Tesla T4, 15360, 15000, 7.5\n",
        "0, Tesla T4, 15360\n",
        "0, Tesla T4, 15360, 99999, 7.5\n",  # more free than total: not a real reading
        "",
    ],
)
def test_malformed_nvidia_smi_gives_no_gpus(output: str) -> None:
    _, run = smi_runner(output)
    assert detect_gpus(nvml=broken_nvml(), run=run) == ()


def test_nvidia_smi_keeps_good_lines_and_odd_names() -> None:
    text = "garbage line\n0, NVIDIA A10, Rev 2, 23028, 22000, [N/A]\n"
    assert parse_nvidia_smi(text) == (Gpu(0, "NVIDIA A10, Rev 2", 23028, 22000, None),)


@pytest.mark.parametrize(
    "error",
    [
        subprocess.CalledProcessError(9, ["nvidia-smi"]),
        FileNotFoundError("nvidia-smi"),
        subprocess.TimeoutExpired(["nvidia-smi"], 15),
    ],
)
def test_failing_nvidia_smi_gives_no_gpus(error: Exception) -> None:
    def run(args: Sequence[str]) -> str:
        raise error

    assert detect_gpus(nvml=broken_nvml(), run=run) == ()


def test_old_driver_without_compute_cap_field() -> None:
    def run(args: Sequence[str]) -> str:
        if "compute_cap" in args[0]:
            raise subprocess.CalledProcessError(2, ["nvidia-smi"], 'Field "compute_cap" invalid')
        return "0, Tesla V100-SXM2-16GB, 16160, 15000\n"

    assert detect_gpus(nvml=broken_nvml(), run=run) == (
        Gpu(0, "Tesla V100-SXM2-16GB", 16160, 15000, None),
    )


def fake_nvml(devices: list[tuple[bytes | str, int, int, tuple[int, int]]]) -> SimpleNamespace:
    state = {"shutdown": False}
    return SimpleNamespace(
        state=state,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: state.update(shutdown=True),
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: devices[i],
        nvmlDeviceGetName=lambda h: h[0],
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=h[1], free=h[2], used=h[1] - h[2]),
        nvmlDeviceGetCudaComputeCapability=lambda h: h[3],
    )


def test_nvml_is_preferred_over_nvidia_smi() -> None:
    nvml = fake_nvml(
        [("NVIDIA L4", 23034 * MIB, 22000 * MIB, (8, 9)), (b"Tesla T4", 15360 * MIB, 100, (7, 5))]
    )
    calls, run = smi_runner(SMI_TWO_GPUS)
    gpus = detect_gpus(nvml=nvml, run=run)
    assert gpus == (Gpu(0, "NVIDIA L4", 23034, 22000, "8.9"), Gpu(1, "Tesla T4", 15360, 0, "7.5"))
    assert calls == []
    assert nvml.state["shutdown"]


def test_nvml_error_mid_way_falls_back_to_nvidia_smi() -> None:
    nvml = fake_nvml([("NVIDIA L4", 23034 * MIB, 22000 * MIB, (8, 9))])

    def lost(h: object) -> object:
        raise RuntimeError("GPU is lost")

    nvml.nvmlDeviceGetMemoryInfo = lost
    _, run = smi_runner(SMI_TWO_GPUS)
    assert len(detect_gpus(nvml=nvml, run=run)) == 2


# --- disk ---------------------------------------------------------------------------------


def test_disk_free_measures_nearest_existing_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []

    def fake_usage(path: Path) -> SimpleNamespace:
        seen.append(Path(path))
        return SimpleNamespace(total=100 * MIB, used=58 * MIB, free=42 * MIB)

    monkeypatch.setattr(hw_memory.shutil, "disk_usage", fake_usage)
    assert disk_free_mib(tmp_path / "not" / "yet" / "models") == 42
    assert seen == [tmp_path]


def test_disk_free_real(tmp_path: Path) -> None:
    free = disk_free_mib(tmp_path / "store")
    assert free is not None and free >= 0


# --- whole probe --------------------------------------------------------------------------


def test_probe_on_empty_tree_gives_defaults(tmp_path: Path) -> None:
    hw = probe(tmp_path, machine="x86_64", gpu_reader=no_gpus)
    assert hw == Hardware(
        arch="x86_64",
        ram_total_mib=0,
        ram_available_mib=0,
        cgroup_limit_mib=None,
        cgroup_usage_mib=None,
        logical_cpus=1,
        usable_cpus=1.0,
        physical_cores=1,
        isa=frozenset(),
        gpus=(),
        disk_free_mib=None,
    )


def test_probe_survives_garbage_files(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            "proc/meminfo": "MemTotal: lots\n",
            "proc/cpuinfo": "processor : x\nflags :\n\n\n::::\n",
            "proc/self/cgroup": "garbage\n0::\n::::\n",
            "proc/self/status": "Cpus_allowed_list:\t9-2\n",
            "sys/fs/cgroup/cgroup.controllers": "",
            "sys/fs/cgroup/memory.max": "lots\n",
            "sys/fs/cgroup/memory.current": "\xff\xfe\n",
            "sys/fs/cgroup/cpu.max": "150000\n",
            "sys/devices/system/cpu/online": "zero\n",
            "sys/devices/system/cpu/cpu0/topology/core_id": "a\n",
        },
    )
    (tmp_path / "sys/devices/system/cpu/cpu0/topology/physical_package_id").mkdir(parents=True)
    hw = probe(tmp_path, gpu_reader=no_gpus)
    assert hw.usable_cpus >= 1 and hw.physical_cores >= 1 and hw.logical_cpus >= 1
    assert hw.cgroup_limit_mib is None and hw.isa == frozenset()


def test_to_dict_and_summary(tmp_path: Path) -> None:
    root = cgroup2_container(tmp_path, str(512 * MIB), "150000 100000", current=100 * MIB)
    gpu = Gpu(0, "NVIDIA L4", 23034, 22000, "8.9")
    hw = probe(root, tmp_path, affinity=lambda: {0, 1}, gpu_reader=lambda: (gpu,))
    data = json.loads(json.dumps(hw.to_dict()))
    assert data["cgroup_limit_mib"] == 512
    assert data["memory_budget_mib"] == 412
    assert data["recommended_threads"] == 1
    assert data["isa"] == ["avx2"]
    assert data["gpus"][0]["compute_capability"] == "8.9"
    assert hw.disk_free_mib is not None
    assert data["disk_free_mib"] == hw.disk_free_mib

    line = hw.summary()
    assert "\n" not in line
    assert "1.5 usable CPUs" in line and "cgroup limit 512 MiB" in line and "NVIDIA L4" in line


def test_probe_real_machine_smoke(tmp_path: Path) -> None:
    hw = probe(store_path=tmp_path)
    assert hw.arch
    assert hw.ram_total_mib > 0 and 0 <= hw.ram_available_mib <= hw.ram_total_mib
    assert hw.usable_cpus > 0  # below 1 only under a fractional cgroup quota
    assert 1 <= hw.physical_cores <= hw.logical_cpus
    assert 1 <= recommended_threads(hw) <= hw.logical_cpus
    assert hw.disk_free_mib is not None and hw.disk_free_mib >= 0
    assert all(g.vram_total_mib > 0 for g in hw.gpus)
    json.dumps(hw.to_dict())


@pytest.mark.parametrize(
    "isa, kernel",
    [({"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_tile"}, "amx"),
     ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "vnni"),  # this project's Zen 4 VMs
     ({"avx2", "avx_vnni"}, "vnni"),  # Alder Lake and later client cores
     ({"avx2", "avx512f"}, "avx512"),  # Skylake-SP: no VNNI
     ({"avx2"}, "avx2"),
     ({"asimddp", "i8mm", "bf16", "sve"}, "arm-i8mm"),  # Graviton 3
     ({"asimddp"}, "arm-dot"),  # Raspberry Pi 5
     (set(), "baseline"),
     ({"amx_int8"}, "baseline")],  # no tiles: not a usable AMX
)  # fmt: skip
def test_int8_kernel_is_chosen_from_the_isa(isa, kernel):
    from edgerank.hardware.facts import SATURATING_INT8, int8_kernel

    assert int8_kernel(frozenset(isa)) == kernel
    assert (kernel in SATURATING_INT8) == (kernel in ("avx2", "avx512"))


def test_int8_kernel_here_reads_this_cpu():
    from edgerank.hardware.facts import int8_kernel
    from edgerank.hardware.probe import int8_kernel_here, probe

    assert int8_kernel_here() == int8_kernel(probe().isa)
