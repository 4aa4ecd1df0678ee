"""The few lines `import` and `pull` end with: what was installed and why, the fidelity and
speed the install measured, the disk and memory it takes, and what the install itself cost.

Read from the manifest the install wrote (through cli/entries.py), so the words follow the
install's decision whichever code made it.
"""

from __future__ import annotations

import resource
import sys

from edgerank.cli.entries import MIB, Entry


def peak_rss_bytes() -> int:
    """The largest resident set of this process or a child it waited for (the converters)."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * scale


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def summary(entry: Entry, how: str, seconds: float, peak_bytes: int) -> list[str]:
    """``how``: the words after "installed NAME (BACKEND)" ("from ./ckpt", "from the hub")."""
    lines = [f"installed {entry.name} ({entry.backend}) {how}, in {entry.path}"]
    what = entry.what + (" + FP32 rescoring of the leader's near-ties" if entry.cascade else "")
    lines.append(f"  what:     {what}")
    if entry.why:
        lines.append(f"  why:      {entry.why}")
    lines.append(f"  fidelity: {entry.fidelity or 'not measured'}")
    if entry.speed:
        lines.append(f"  speed:    {entry.speed}")
    weights = "the model file"
    if entry.reference_bytes:
        weights += f" and its FP32 reference, {entry.reference_bytes / MIB:.1f} MiB mapped"
    if entry.backend == "gguf":
        weights = "the served quant's file"
    lines.append(
        f"  size:     {entry.disk_bytes / MIB:.1f} MiB on disk; serving loads "
        f"{entry.loaded_bytes / MIB:.1f} MiB ({weights}) plus a batch's activations"
    )
    lines.append(f"  took:     {duration(seconds)}, peak memory {peak_bytes / (1 << 30):.2f} GiB")
    if entry.warning:
        lines.append(f"  warning:  {entry.warning}")
    return lines
