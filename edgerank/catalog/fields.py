"""Typed reads of one models.toml table, each error naming the model and the field: the catalog's
validation is written once here and used for every key."""

from __future__ import annotations

import difflib
from typing import Any

from edgerank.errors import CatalogError


def no_unknown(table: dict[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CatalogError(f"{where}: unknown key {key!r}{hint}")


class Fields:
    """Typed accessors over one raw model table that raise one-line CatalogErrors."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where

    def fail(self, key: str, problem: str) -> CatalogError:
        return CatalogError(f"{self.where}: field {key!r}: {problem}")

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.raw:
            if required:
                raise self.fail(key, "missing")
            return None
        return self.raw[key]

    def str_(self, key: str, required: bool = True) -> str | None:
        v = self._get(key, required)
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            raise self.fail(key, "must be a non-empty string")
        return v

    def int_(self, key: str, required: bool = True) -> int | None:
        v = self._get(key, required)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise self.fail(key, f"must be a positive integer, got {v!r}")
        return v

    def num(self, key: str, required: bool = True) -> float | None:
        v = self._get(key, required)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise self.fail(key, f"must be a positive number, got {v!r}")
        return float(v)

    def bool_(self, key: str) -> bool:
        v = self.raw.get(key, False)
        if not isinstance(v, bool):
            raise self.fail(key, f"must be true or false, got {v!r}")
        return v

    def str_list(self, key: str) -> tuple[str, ...]:
        v = self._get(key, True)
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            raise self.fail(key, "must be a non-empty list of strings")
        if len(set(v)) != len(v):
            raise self.fail(key, "has duplicates")
        return tuple(v)

    def table(self, key: str, required: bool) -> dict[str, Any] | None:
        v = self._get(key, required)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise self.fail(key, "must be a table")
        return v
