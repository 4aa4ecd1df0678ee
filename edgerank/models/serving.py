"""Which file of an ONNX entry serves, at the request shape the deployment serves.

An INT8 file pays differently at different request sizes: its integer GEMMs gain on every
token, but the cascade's FP32 rescoring of the leader's near-ties (engine/cascade.py)
costs a share of the request that shrinks as requests grow, and the per-token passes
around each quantized MatMul weigh more on short rows. So the install measures the INT8
file against the FP32 graph once, as a profile (CPU time per token at several row lengths,
and how many passages the cascade rescored per group size), records it in the manifest
with the request shape it was judged at, and keeps both files where both can serve.
``judge`` turns a profile and a shape into a verdict; the install calls it at its shape
and the loader at the shape the daemon is configured for, from the files already there
(no re-quantization, no timing at start-up).

The verdict is the same every time for the same figures: the speed is an interval, and
only an interval that clears the cut-off decides; one inside it goes to the option that
keeps less in memory (FP32 alone against INT8 plus its FP32 reference, INT8 alone against
FP32).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgerank.errors import InvalidInput, ModelCorrupt
from edgerank.models.manifest import Manifest, weights_file

#: INT8 must serve at least this much faster than the FP32 graph to be worth its noise
MIN_SPEEDUP = 1.1
#: the two graphs an ONNX entry with an INT8 option holds
INT8_FILE, FP32_FILE = "model.int8.onnx", "model.fp32.onnx"
_SHAPE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)(?:\s*-\s*(\d+))?\s*$")


@dataclass(frozen=True)
class RequestShape:
    """What one request holds: ``passages`` passages of ``min_tokens``-``max_tokens`` tokens
    each (query included). The default is a RAG request: 32 retrieved chunks of 128-256."""

    passages: int = 32
    min_tokens: int = 128
    max_tokens: int = 256

    def __post_init__(self) -> None:
        if self.passages < 1 or self.min_tokens < 1 or self.max_tokens < self.min_tokens:
            raise InvalidInput(f"not a request shape: {self}")

    @classmethod
    def parse(cls, text: str) -> RequestShape:
        """'32x128-256' (32 passages of 128 to 256 tokens) or '100x64' (all of 64)."""
        m = _SHAPE.match(text or "")
        if not m:
            raise InvalidInput(
                f"request shape {text!r}: write PASSAGESxTOKENS or PASSAGESxMIN-MAX, "
                "e.g. 32x128-256"
            )
        n, lo, hi = int(m[1]), int(m[2]), int(m[3] or m[2])
        if n < 1 or lo < 1 or hi < lo:
            raise InvalidInput(
                f"request shape {text!r}: passages and tokens must be >= 1, MIN <= MAX"
            )
        return cls(n, lo, hi)

    def __str__(self) -> str:
        tokens = (
            f"{self.min_tokens}"
            if self.min_tokens == self.max_tokens
            else (f"{self.min_tokens}-{self.max_tokens}")
        )
        return f"{self.passages}x{tokens}"

    def lengths(self, cap: int | None = None, n: int = 5) -> list[int]:
        """``n`` row lengths spread evenly over the range (cut at ``cap``, the entry's window)."""
        hi = min(self.max_tokens, cap) if cap else self.max_tokens
        lo = min(self.min_tokens, hi)
        if n < 2 or lo == hi:
            return [lo]
        return [round(lo + (hi - lo) * k / (n - 1)) for k in range(n)]


DEFAULT_SHAPE = RequestShape()


@dataclass(frozen=True)
class Speed:
    """A speed in units of the FP32 graph (2.0 = twice as fast), with the interval the
    measurement allows."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Speed:
        return cls(float(d["value"]), float(d["low"]), float(d["high"]))

    def __str__(self) -> str:
        return f"{self.value:.2f}x ({self.low:.2f}-{self.high:.2f})"


@dataclass(frozen=True)
class LengthTiming:
    """INT8 against the FP32 graph on rows of one length: the FP32 graph's CPU time per
    token (what weighs one length against another in a request) and the ratio."""

    tokens: int
    fp32_us_per_token: float
    ratio: Speed

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "fp32_us_per_token": round(self.fp32_us_per_token, 3),
                "ratio": self.ratio.to_dict()}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LengthTiming:
        return cls(int(d["tokens"]), float(d["fp32_us_per_token"]), Speed.from_dict(d["ratio"]))


@dataclass(frozen=True)
class SpeedProfile:
    """An INT8 file against its FP32 graph, as measured at install: ``timings`` by row
    length (sorted), and, for a cascade, ``rescored`` = (passages per group, mean passages
    rescored) by group size (sorted); None without a cascade."""

    timings: tuple[LengthTiming, ...]
    rescored: tuple[tuple[int, float], ...] | None = None

    def ratio_at(self, shape: RequestShape) -> Speed:
        """The INT8 pass alone at ``shape``: FP32 time over INT8 time, each the sum over the
        shape's row lengths of tokens x time per token (interpolated between measured
        lengths, held flat beyond them)."""
        lengths = shape.lengths()
        fp32 = [n * _interp(self.timings, n, lambda t: t.fp32_us_per_token) for n in lengths]
        out = []
        for pick in (lambda s: s.value, lambda s: s.low, lambda s: s.high):
            ratios = [_interp(self.timings, n, lambda t, p=pick: p(t.ratio)) for n in lengths]
            int8 = sum(f / max(r, 1e-9) for f, r in zip(fp32, ratios, strict=True))
            out.append(sum(fp32) / int8)
        return Speed(*out)

    def share_at(self, passages: int) -> float:
        """The share of a ``passages``-passage request the cascade rescores (0 without one):
        interpolated in the group size between measured sizes, held at the largest size's
        share beyond it (a larger request rarely has a smaller share than that)."""
        if not self.rescored or passages < 2:
            return 0.0
        sizes = [(n, h / n) for n, h in self.rescored]
        if passages <= sizes[0][0]:
            return min(1.0, self.rescored[0][1] / passages)
        for (n0, s0), (n1, s1) in zip(sizes, sizes[1:], strict=False):
            if passages <= n1:
                return s0 + (s1 - s0) * (passages - n0) / (n1 - n0)
        return sizes[-1][1]

    def at(self, shape: RequestShape) -> Speed:
        """What serving ``shape`` costs against the FP32 graph: the INT8 pass plus the
        share rescored with FP32 (at the same cost per token: the head runs unpadded)."""
        r, share = self.ratio_at(shape), self.share_at(shape.passages)
        return Speed(*(1.0 / (1.0 / max(x, 1e-9) + share) for x in (r.value, r.low, r.high)))

    def to_dict(self) -> dict[str, Any]:
        heads = [list(x) for x in self.rescored] if self.rescored else None
        return {"timings": [t.to_dict() for t in self.timings], "rescored": heads}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpeedProfile:
        timings = tuple(sorted((LengthTiming.from_dict(t) for t in d["timings"]),
                               key=lambda t: t.tokens))  # fmt: skip
        rescored = d.get("rescored")
        heads = tuple(sorted((int(n), float(h)) for n, h in rescored)) if rescored else None
        if not timings:
            raise ValueError("a speed profile needs at least one timed length")
        return cls(timings, heads)


def _interp(timings: Sequence[LengthTiming], n: int, value) -> float:
    if n <= timings[0].tokens:
        return value(timings[0])
    for a, b in zip(timings, timings[1:], strict=False):
        if n <= b.tokens:
            w = (n - a.tokens) / (b.tokens - a.tokens)
            return value(a) + (value(b) - value(a)) * w
    return value(timings[-1])


@dataclass(frozen=True)
class Verdict:
    """What serves at ``shape``: "int8" (with its cascade when the entry has one) or "fp32",
    the speed that decided it and why, in words."""

    serves: str
    shape: RequestShape
    speed: Speed
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"serves": self.serves, "shape": str(self.shape), "speed": self.speed.to_dict(),
                "reason": self.reason}  # fmt: skip


def judge(
    profile: SpeedProfile, shape: RequestShape, *, int8_mib: float, fp32_mib: float,
    cutoff: float = MIN_SPEEDUP,
) -> Verdict:  # fmt: skip
    """INT8 (with its cascade when ``profile`` has one) or FP32 at ``shape``.

    ``int8_mib``/``fp32_mib``: what each option keeps resident (INT8 with a cascade keeps
    the FP32 graph too). Only an interval clear of ``cutoff`` decides on speed; inside it,
    the option with less resident memory serves, so the same figures give the same verdict
    and noise never buys memory."""
    speed = profile.at(shape)
    what = "INT8 + FP32 rescoring" if profile.rescored else "INT8"
    if speed.low >= cutoff:
        return Verdict("int8", shape, speed, f"{what} serves {speed} the FP32 graph at {shape}")
    if speed.high < cutoff:
        why = f"{what} serves {speed} the FP32 graph at {shape}, under {cutoff}x"
        return Verdict("fp32", shape, speed, why)
    smaller = "int8" if int8_mib < fp32_mib else "fp32"
    why = (
        f"{what} serves {speed} the FP32 graph at {shape}: within noise of {cutoff}x, so the "
        f"option holding less memory ({round(int8_mib)} MiB INT8 vs {round(fp32_mib)} MiB FP32)"
    )
    return Verdict(smaller, shape, speed, why)


@dataclass(frozen=True)
class ServingPlan:
    """The manifest's ``serving`` record of an ONNX entry with an INT8 option: the files,
    what each keeps resident, the profile, the cut-off and the verdict at install."""

    int8_file: str
    fp32_file: str
    #: the cascade's recipe (margin...) when INT8 serves with it; None: INT8 alone
    cascade: dict[str, Any] | None
    #: resident weights, MiB: the INT8 option (its reference included) and FP32 alone
    int8_mib: float
    fp32_mib: float
    profile: SpeedProfile
    cutoff: float
    verdict: Verdict

    def judge(self, shape: RequestShape) -> Verdict:
        return judge(self.profile, shape, int8_mib=self.int8_mib, fp32_mib=self.fp32_mib,
                     cutoff=self.cutoff)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "int8_file": self.int8_file, "fp32_file": self.fp32_file, "cascade": self.cascade,
            "resident_mib": {"int8": round(self.int8_mib, 1), "fp32": round(self.fp32_mib, 1)},
            "profile": self.profile.to_dict(), "cutoff": self.cutoff,
            "verdict": self.verdict.to_dict(),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServingPlan:
        v = d["verdict"]
        verdict = Verdict(v["serves"], RequestShape.parse(v["shape"]), Speed.from_dict(v["speed"]),
                          v["reason"])  # fmt: skip
        mib = d["resident_mib"]
        return cls(
            str(d["int8_file"]), str(d["fp32_file"]), d.get("cascade"), float(mib["int8"]),
            float(mib["fp32"]), SpeedProfile.from_dict(d["profile"]), float(d["cutoff"]),
            verdict,
        )  # fmt: skip


def served(
    manifest: Manifest, shape: RequestShape | None = None
) -> tuple[Manifest, Verdict | None]:
    """The entry as it serves at ``shape`` (None: the install's), and the verdict.

    An ONNX entry with a serving plan serves its INT8 file (with the cascade's recipe when
    it has one) or its FP32 graph, whichever ``judge`` picks; the manifest returned names
    that file, so the backend, the cascade and the score cache's identity all follow it.
    Any other entry is returned as it is, with no verdict."""
    if manifest.backend != "onnx" or not manifest.serving:
        return manifest, None
    try:
        plan = ServingPlan.from_dict(manifest.serving)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelCorrupt(
            f"{manifest.name}: unreadable serving record ({exc}); re-import it"
        ) from exc
    same = shape is None or shape == plan.verdict.shape
    verdict = plan.verdict if same else plan.judge(shape)
    recipe = {k: v for k, v in manifest.recipe.items() if k not in ("cascade", "reference_file")}
    if verdict.serves == "int8":
        if plan.cascade is not None:
            recipe.update(cascade=plan.cascade, reference_file=plan.fp32_file)
        elif "reference_file" in manifest.recipe and manifest.precision == "int8":
            recipe["reference_file"] = manifest.recipe["reference_file"]
        return dataclasses.replace(manifest, model_file=plan.int8_file, precision="int8",
                                   recipe=recipe), verdict  # fmt: skip
    return dataclasses.replace(manifest, model_file=plan.fp32_file, precision="fp32",
                               recipe=recipe), verdict  # fmt: skip


def weights_mib(manifest: Manifest) -> tuple[float, float]:
    """(model, reference): MiB of the files an entry loads as it serves, from the sizes its
    manifest records: the model file (and its external data), and the cascade's FP32
    reference beside it (0 without a cascade; mapped, so the kernel can page it)."""

    def size(rel: str) -> float:
        files = manifest.files
        return sum(float((files.get(f) or {}).get("size") or 0) for f in (rel, weights_file(rel)))

    ref = manifest.recipe.get("reference_file") if manifest.recipe.get("cascade") else None
    return size(manifest.model_file) / 2**20, (size(ref) / 2**20 if ref else 0.0)
