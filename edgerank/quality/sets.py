"""Natural-text query groups: the shipped calibration and probe sets, and a user's own file.

Both shipped sets are real prose cut from Debian packages (edgerank/quality/data/SOURCES.md
says which, under which licence, and how): calibration = Python tutorial/HOWTO paragraphs,
WordNet glosses and German/Spanish/Italian quotations and recipes; probe = the Debian
Reference in English, French, Spanish, German, Japanese and Chinese; probe-more = other
sections of it (and Portuguese), asked only when a probe figure is within noise of the
floor. Calibration and probes share no source, so the figures the probes give are for text
the quantization never saw.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from edgerank.errors import InvalidInput

Group = tuple[str, list[str]]
CALIBRATION = "calibration.jsonl"
PROBE = "probe.jsonl"
#: the second held-out set: more probe groups, read when a figure is within noise of the floor
PROBE_MORE = "probe-more.jsonl"


def shipped(name: str) -> tuple[list[Group], dict]:
    """A shipped set and its description for the manifest."""
    text = resources.files("edgerank.quality").joinpath("data", name).read_text("utf-8")
    groups = parse(text.splitlines(), name)
    return groups, describe(name, text, groups, origin="shipped")


def languages(name: str) -> list[str]:
    """Each group's language in a shipped set ("?" where a line names none)."""
    text = resources.files("edgerank.quality").joinpath("data", name).read_text("utf-8")
    return [str(json.loads(line).get("lang", "?")) for line in text.splitlines() if line.strip()]


def from_file(path: str | Path) -> tuple[list[Group], dict]:
    """A user's calibration file: JSONL, one {"query": str, "documents": [str, ...]} a line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read calibration file {path}: {exc}") from exc
    groups = parse(text.splitlines(), str(path))
    return groups, describe(path.name, text, groups, origin=str(path.resolve()))


def parse(lines: list[str], where: str) -> list[Group]:
    groups: list[Group] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InvalidInput(f"{where} line {n}: not JSON ({exc})") from exc
        query = row.get("query") if isinstance(row, dict) else None
        docs = row.get("documents") if isinstance(row, dict) else None
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput(f'{where} line {n}: needs a non-empty "query" string')
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
            raise InvalidInput(f'{where} line {n}: needs "documents", a list of strings')
        groups.append((query, [d for d in docs if d.strip()] or docs))
    if not groups:
        raise InvalidInput(f"{where} holds no query groups")
    return groups


def describe(name: str, text: str, groups: list[Group], origin: str) -> dict:
    return {
        "name": name,
        "origin": origin,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "groups": len(groups),
        "pairs": sum(len(d) for _, d in groups),
    }


def pairs_of(groups: list[Group], per_group: int | None = None) -> list[tuple[str, str]]:
    return [(q, d) for q, docs in groups for d in docs[:per_group]]
