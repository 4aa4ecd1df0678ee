"""The JSON the HTTP face reads and writes: typed request fields with errors that name the
field and the type it needs, the Cohere/Jina result items, and TEI's /info and error types."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

from edgerank.engine.requests import Reranked
from edgerank.engine.service import Service
from edgerank.errors import InvalidInput
from edgerank.server import tei as tei_rules

JSON_TYPES = {str: "a string", int: "an integer", bool: "a boolean", list: "an array"}
#: status.py's reasons -> the `error_type` TEI's server puts on the wire (its serde enum
#: ErrorType, variant names as they are; its OpenAPI examples spell them in lower case)
TEI_ERROR_TYPES = {
    "empty": "Empty",
    "invalid_input": "Validation",
    "too_large": "Validation",
    "unknown_model": "Validation",
    "read_timeout": "Validation",
    "overloaded": "Overloaded",
    "unavailable": "Unhealthy",
}


_REQUIRED = object()


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number")):
        if isinstance(value, kind):
            return name
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), "a value")


def get_field(data: dict[str, Any], name: str, kind: type, default: Any = _REQUIRED) -> Any:
    """A field of the JSON body, of exactly `kind` (JSON booleans are not integers here)."""
    value = data.get(name)
    if value is None:
        if default is _REQUIRED:
            raise InvalidInput(f"missing field {name!r}")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"{name} must be {JSON_TYPES[kind]}, got {kind_of(value)}")
    return value


def string_list(data: dict[str, Any], name: str, *, objects: bool = False) -> list[str]:
    """An array of strings; with `objects`, {"text": str} items are accepted too (Jina)."""
    items = get_field(data, name, list)
    out = []
    for i, item in enumerate(items):
        if objects and isinstance(item, dict):
            item = item.get("text")
        if not isinstance(item, str):
            shape = 'a string or an object {"text": string}' if objects else "a string"
            raise InvalidInput(f"{name}[{i}] must be {shape}, got {kind_of(items[i])}")
        out.append(item)
    return out


def no_surrogates(value: Any) -> None:
    """Refuse a lone UTF-16 surrogate (valid JSON escape, invalid text for any tokenizer)."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidInput(
                "a string holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape "
                "without its pair): send valid Unicode"
            ) from None
    elif isinstance(value, dict):
        for item in value.values():
            no_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            no_surrogates(item)


def top_n_of(data: dict[str, Any]) -> int:
    top_n = get_field(data, "top_n", int, 0)
    if top_n < 0:
        raise InvalidInput(f"top_n must be >= 0 (0 or absent = all), got {top_n}")
    return top_n


def direction_of(data: dict[str, Any]) -> str:
    value = get_field(data, "truncation_direction", str, "right").lower()
    if value not in ("right", "left"):
        raise InvalidInput(f'truncation_direction must be "right" or "left", got {value!r}')
    return value


def result_items(reranked: Reranked, documents: Sequence[str], with_docs: bool) -> list[dict]:
    """Cohere's and Jina's result items: index, normalised score, the text on request."""
    results = []
    for r in reranked.ranked:
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
        if with_docs:
            item["document"] = {"text": documents[r.index]}
        results.append(item)
    return results


def tei_info(service: Service) -> dict[str, Any]:
    """TEI's /info body for this daemon (a single-label reranker): server/tei.py's facts, as
    tei.v1.Info reports them, in TEI's JSON; plus the served names."""
    labels = {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    facts = dataclasses.asdict(tei_rules.info(service))
    return facts | {
        "model_sha": None,
        "model_type": {"reranker": labels},
        "auto_truncate": False,
        "sha": None,
        "docker_label": None,
        "served_model_names": service.served_names(),
        "backend": service.info.backend,
    }


def cohere_body(model: str, tokens: int, results: list[dict]) -> dict[str, Any]:
    """Cohere v2's answer, with the `model`, `object` and `usage` Infinity's and vLLM's add."""
    meta = {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": tokens, "output_tokens": 0},
    }
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    out = {"id": str(uuid.uuid4()), "object": "rerank", "model": model, "results": results}
    return out | {"meta": meta, "usage": usage}


def jina_body(model: str, tokens: int, results: list[dict]) -> dict[str, Any]:
    """Jina's answer, with Cohere v1's `id` and `meta` (the two share /v1/rerank)."""
    usage = {"total_tokens": tokens, "prompt_tokens": tokens}
    meta = {"billed_units": {"search_units": 1}}
    return {"id": str(uuid.uuid4()), "model": model, "usage": usage, "results": results} | {
        "meta": meta
    }
