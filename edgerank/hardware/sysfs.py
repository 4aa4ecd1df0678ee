"""Readers of /proc and /sys files that never raise: containers, VMs and old kernels leave
files missing or odd, and a probe that crashes is worse than one that falls back to a default.
"""

from __future__ import annotations

from pathlib import Path


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return None


def read_int(path: Path) -> int | None:
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def is_real_root(root: Path) -> bool:
    try:
        return root.resolve() == Path("/")
    except OSError:
        return False
