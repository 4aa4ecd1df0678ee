"""Which file of an ONNX entry serves at a request shape (models/serving.py): pure, from
hand-built profiles, so every verdict here is fixed whatever the machine does."""

from __future__ import annotations

import pytest

from edgerank.errors import InvalidInput, ModelCorrupt
from edgerank.models.manifest import Manifest
from edgerank.models.serving import (
    LengthTiming,
    RequestShape,
    ServingPlan,
    Speed,
    SpeedProfile,
    judge,
    served,
)


def _profile(ratio: float, spread: float = 0.05, heads=((8, 2.5), (32, 4.0), (100, 6.0))):
    timings = tuple(LengthTiming(n, 1.0, Speed(ratio, ratio - spread, ratio + spread))
                    for n in (32, 128, 256, 512))  # fmt: skip
    return SpeedProfile(timings, heads)


def test_request_shapes_parse_and_print():
    assert RequestShape.parse("32x128-256") == RequestShape(32, 128, 256)
    assert RequestShape.parse(" 100 x 64 ") == RequestShape(100, 64, 64)
    assert str(RequestShape(100, 64, 64)) == "100x64" and str(RequestShape()) == "32x128-256"
    for bad in ("", "32", "x128", "32x256-128", "0x128", "32x0-4", "a x b"):
        with pytest.raises(InvalidInput, match="request shape"):
            RequestShape.parse(bad)


def test_the_cascade_costs_less_of_a_larger_request():
    """The head grows slower than the request: the same file serves faster at 100 passages
    than at the probe's 8 (1/(1/r + share))."""
    prof = _profile(2.0)
    assert prof.share_at(8) == pytest.approx(2.5 / 8)
    assert prof.share_at(100) == pytest.approx(0.06)
    assert prof.share_at(500) == pytest.approx(0.06)  # held at the largest size measured
    assert prof.share_at(1) == 0.0  # a single passage is never rescored
    small, rag = prof.at(RequestShape(8, 128, 256)), prof.at(RequestShape(100, 128, 256))
    assert small.value == pytest.approx(1 / (0.5 + 2.5 / 8))
    assert rag.value == pytest.approx(1 / (0.5 + 0.06))
    assert small.low < small.value < small.high


def test_ratio_weighs_each_length_by_its_tokens_and_time():
    """Short rows pay less (1.2x), long rows more (2.4x): a request of long rows is judged
    at the long rows' ratio, not at the mean of the two."""
    timings = (
        LengthTiming(64, 1.0, Speed(1.2, 1.2, 1.2)),
        LengthTiming(512, 2.0, Speed(2.4, 2.4, 2.4)),
    )
    prof = SpeedProfile(timings)
    assert prof.ratio_at(RequestShape(32, 512, 512)).value == pytest.approx(2.4)
    assert prof.ratio_at(RequestShape(32, 16, 16)).value == pytest.approx(1.2)  # held flat
    mid = prof.ratio_at(RequestShape(32, 64, 512)).value
    assert 1.2 < mid < 2.4 and mid > (1.2 + 2.4) / 2  # long rows weigh more


@pytest.mark.parametrize(
    "ratio, spread, cascade, want",
    [
        (2.0, 0.05, True, "int8"),  # clear above the cut-off
        (0.9, 0.05, True, "fp32"),  # clear below
        (1.35, 0.4, True, "fp32"),  # straddles: INT8 + its FP32 reference holds more memory
        (1.1, 0.2, False, "int8"),  # straddles: INT8 alone holds less memory
        (1.0, 0.05, False, "fp32"),  # INT8 alone, clear below
    ],
)
def test_only_an_interval_clear_of_the_cutoff_decides(ratio, spread, cascade, want):
    heads = ((8, 0.5), (32, 0.5), (100, 0.5)) if cascade else None
    prof = _profile(ratio, spread, heads)
    int8_mib = 23 + (90 if cascade else 0)
    got = judge(prof, RequestShape(), int8_mib=int8_mib, fp32_mib=90)
    assert got.serves == want, got.reason
    assert str(RequestShape()) in got.reason


def _manifest(serves: str, cascade: bool = True) -> Manifest:
    prof = _profile(1.6, 0.05, ((8, 3.0), (32, 3.5), (100, 4.0)))
    shape = RequestShape()
    verdict = judge(prof, shape, int8_mib=113, fp32_mib=90)
    assert verdict.serves == "int8"
    if serves == "fp32":  # as if installed for small requests, where it did not pay
        shape = RequestShape(4, 64, 64)
        verdict = judge(_profile(1.05, 0.05, ((8, 3.0), (32, 3.5))), shape, int8_mib=113,
                        fp32_mib=90)  # fmt: skip
        assert verdict.serves == "fp32"
    casc = {"margin": 0.2, "calibration_error_max": 0.1} if cascade else None
    plan = ServingPlan("model.int8.onnx", "model.fp32.onnx", casc, 113, 90, prof, 1.1, verdict)
    recipe = {"name": "int8-ladder-v6"}
    if serves == "int8" and cascade:
        recipe.update(cascade=casc, reference_file="model.fp32.onnx")
    return Manifest("m", "onnx", serves, f"model.{serves}.onnx", 512,
                    files={"model.int8.onnx": {"sha256": "a"}, "model.fp32.onnx": {"sha256": "b"}},
                    recipe=recipe, serving=plan.to_dict())  # fmt: skip


def test_served_at_the_install_shape_is_the_manifest_itself():
    for serves in ("int8", "fp32"):
        m = _manifest(serves)
        got, verdict = served(m, None)
        assert verdict is not None and verdict.serves == serves
        assert got.identity() == m.identity()  # the score cache keys stay valid
        again, _ = served(m, ServingPlan.from_dict(m.serving).verdict.shape)
        assert again.identity() == m.identity()


def test_another_shape_is_rejudged_from_the_recorded_figures():
    """An entry installed FP32 for tiny requests serves INT8 + cascade at RAG size, and one
    installed INT8 serves FP32 where the profile says it does not pay; each with its own
    identity (so no cached score crosses over) and the cascade only with INT8."""
    m = _manifest("fp32")
    rag, verdict = served(m, RequestShape(100, 128, 256))
    assert verdict.serves == "int8" and rag.model_file == "model.int8.onnx"
    assert rag.precision == "int8" and rag.recipe["cascade"]["margin"] == 0.2
    assert rag.recipe["reference_file"] == "model.fp32.onnx"
    assert rag.identity() != m.identity()
    m = _manifest("int8")
    one, verdict = served(m, RequestShape(4, 64, 64))  # 3 of 4 passages rescored
    assert verdict.serves == "fp32" and one.model_file == "model.fp32.onnx"
    assert "cascade" not in one.recipe and "reference_file" not in one.recipe
    alone, verdict = served(_manifest("int8", cascade=False), RequestShape(100, 128, 256))
    assert verdict.serves == "int8" and "cascade" not in alone.recipe


def test_entries_without_a_plan_serve_as_they_are():
    m = Manifest("m", "onnx", "int8", "model.int8.onnx", 512)
    assert served(m, RequestShape()) == (m, None)
    g = Manifest("g", "gguf", "q8_0", "m.gguf", 512, serving={"junk": 1})
    assert served(g, RequestShape()) == (g, None)
    broken = Manifest("b", "onnx", "int8", "model.int8.onnx", 512, serving={"verdict": {}})
    with pytest.raises(ModelCorrupt, match="serving record"):
        served(broken, RequestShape())


def test_the_plan_round_trips_through_json():
    import json

    m = _manifest("int8")
    plan = ServingPlan.from_dict(json.loads(json.dumps(m.serving)))
    assert plan.to_dict() == m.serving
