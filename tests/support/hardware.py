"""A hand-built machine for tests whose outcome would otherwise follow the CPU they run on
(torch places BF16 on AVX512-BF16/AMX CPUs and FP32 elsewhere)."""

from __future__ import annotations

import dataclasses

from edgerank.hardware.facts import Hardware


def avx2_machine(**changes) -> Hardware:
    base = Hardware(
        arch="x86_64",
        ram_total_mib=24000,
        ram_available_mib=20000,
        cgroup_limit_mib=None,
        cgroup_usage_mib=None,
        logical_cpus=2,
        usable_cpus=2.0,
        physical_cores=2,
        isa=frozenset({"avx2"}),
        gpus=(),
        disk_free_mib=None,
    )
    return dataclasses.replace(base, **changes)


def pretend_avx2(monkeypatch) -> None:
    """Every probe in this test sees the AVX2-only machine above."""
    from edgerank.hardware import probe

    monkeypatch.setattr(probe, "probe", lambda *a, **kw: avx2_machine())
