"""Score-cache entries: a key covers everything that fixes a score; a value keeps its bits."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from edgerank.backends.base import BackendInfo, ScoreOptions
from edgerank.engine.cache_entries import (
    Scores,
    model_digest,
    options_bytes,
    pack,
    pair_keys,
    unpack,
)
from edgerank.models.manifest import Manifest

INFO = BackendInfo("onnx", "m", "int8", "cpu", 512, 2, identity="a" * 64)
MODEL = model_digest(INFO)


# -- keys --------------------------------------------------------------------------------


def test_key_covers_the_model_identity_and_runtime():
    assert model_digest(dataclasses.replace(INFO, identity="")) is None  # unknown: no cache
    variants = [
        dict(identity="b" * 64),
        dict(precision="fp32"),
        dict(backend="gguf"),
        dict(device="cuda:0"),
        dict(max_length=256),
    ]
    digests = {model_digest(dataclasses.replace(INFO, **v)) for v in variants} | {MODEL}
    assert len(digests) == len(variants) + 1
    # what does not change a score does not split the cache
    same = dict(threads=8, model="renamed", details={"note": "x"})
    assert model_digest(dataclasses.replace(INFO, **same)) == MODEL
    gpu = dataclasses.replace(INFO, device="cuda:0")
    assert model_digest(gpu) == model_digest(dataclasses.replace(INFO, device="cuda:1"))


def test_key_covers_every_option_the_query_and_the_passage():
    base = pair_keys(MODEL, "q", ["p"], ScoreOptions())[0]
    changed = [
        dict(truncation="chunk"),
        dict(direction="left"),
        dict(instruction="judge relevance"),
        dict(instruction=""),
        dict(max_tokens_per_doc=64),
        dict(chunk_overlap=8),
    ]
    keys = {pair_keys(MODEL, "q", ["p"], ScoreOptions(**c))[0] for c in changed}
    assert base not in keys and len(keys) == len(changed)
    # every field is part of the key, so a field added to ScoreOptions later is too
    fields = {f.name for f in dataclasses.fields(ScoreOptions)}
    assert set(json.loads(options_bytes(ScoreOptions()))) == fields
    assert pair_keys(MODEL, "Q", ["p"], ScoreOptions())[0] != base
    assert pair_keys(MODEL, "q", ["p "], ScoreOptions())[0] != base
    other_model = model_digest(dataclasses.replace(INFO, identity="c" * 64))
    assert pair_keys(other_model, "q", ["p"], ScoreOptions())[0] != base
    # length-prefixed: moving text between query and passage is another key
    assert pair_keys(MODEL, "ab", ["c"], ScoreOptions()) != pair_keys(
        MODEL, "a", ["bc"], ScoreOptions()
    )
    # a lone surrogate (legal in JSON) is hashed, not an encoding error
    assert len(pair_keys(MODEL, "q\ud800", ["p"], ScoreOptions())[0]) == 16
    # one query, many passages: one key each, the same as asking one by one
    many = pair_keys(MODEL, "q", ["p", "r", "p"], ScoreOptions())
    assert many[0] == many[2] == base and many[1] != base


def test_manifest_identity_follows_weights_and_recipe_not_name():
    m = Manifest("a", "onnx", "int8", "model.onnx", 512, files={"model.onnx": {"sha256": "1"}})
    same = dataclasses.replace(m, name="renamed", created="2030-01-01", fidelity={"x": 1})
    assert m.identity() == same.identity()
    for change in (
        dict(files={"model.onnx": {"sha256": "2"}}),
        dict(recipe={"name": "int8-v2"}),
        dict(precision="fp32"),
        dict(max_length=256),
    ):
        assert dataclasses.replace(m, **change).identity() != m.identity()


# -- values ------------------------------------------------------------------------------


def test_values_keep_the_float32_bits():
    raw = np.array([1.5, -0.0, np.nan, 1e-45, -3.4028235e38, np.inf], dtype=np.float32)
    raw[2] = np.frombuffer(b"\x01\x00\xc0\x7f", dtype=np.float32)[0]  # a NaN with a payload
    scores = Scores(raw, np.arange(1, 7), np.arange(10, 70, 10))
    values = pack(scores)
    assert all(len(v) == 12 for v in values)
    back = unpack(values)
    assert back.raw.tobytes() == raw.tobytes()
    assert back.windows.tolist() == [1, 2, 3, 4, 5, 6]
    assert back.tokens.tolist() == [10, 20, 30, 40, 50, 60]
