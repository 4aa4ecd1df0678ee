"""The install decision as typed records: what convert/backoff.py found (every point of the
frontier, the one chosen, and why) and what the ONNX install (install/onnx.py)
writes into the manifest from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerank.models.serving import ServingPlan, SpeedProfile, Verdict

#: the agreement figures a manifest keeps (quality/fidelity.rank_agreement's keys)
FIGURES = ("groups", "spearman_mean", "spearman_min", "spearman_se", "top1_kept", "max_abs_diff")


@dataclass(frozen=True)
class Figures:
    """Agreement with the FP32 graph, on ``evidence`` (the probe, or the probe and
    probe-more pooled when the probe alone was within noise of the floor)."""

    groups: int
    spearman_mean: float
    spearman_min: float
    spearman_se: float
    top1_kept: float
    max_abs_diff: float
    evidence: str = "probe"

    @classmethod
    def of(cls, agreement: dict[str, float], evidence: str = "probe") -> Figures:
        return cls(**{k: agreement[k] for k in FIGURES}, evidence=evidence)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: _r(getattr(self, k)) for k in FIGURES}
        if self.evidence != "probe":
            out["evidence"] = self.evidence
        return out


@dataclass(frozen=True)
class Cascade:
    """A point as the cascade serves it: the margin, the figures with each group's head
    rescored in FP32, and the share of the probe's pairs that took."""

    margin: float
    calibration_error_max: float
    calibration_groups: int
    figures: Figures
    rescored_share: float

    def recipe(self, rule: str) -> dict[str, Any]:
        return {"margin": _r(self.margin), "calibration_error_max": _r(self.calibration_error_max),
                "calibration_groups": self.calibration_groups, "rule": rule}  # fmt: skip


@dataclass(frozen=True)
class Point:
    """One INT8 file of the frontier: each moved MatMul's kind, its figures alone and with
    the cascade, its speed profile against the FP32 graph and the verdict at the install's
    request shape."""

    file: Path
    kinds: dict[str, str]
    #: kind -> MatMuls moved up to it (the ladder's rungs above its base)
    moved: dict[str, int]
    alone: Figures
    cascade: Cascade | None
    profile: SpeedProfile
    verdict: Verdict
    #: the judged figures (the cascade's when it serves) against the floor, noise decided
    meets_floor: bool

    @property
    def judged(self) -> Figures:
        return self.cascade.figures if self.cascade else self.alone

    @property
    def pays(self) -> bool:
        return self.verdict.serves == "int8"

    def line(self, base: str) -> str:
        """The install's progress line for this point."""
        ratio = self.profile.ratio_at(self.verdict.shape)
        f = self.alone
        line = (
            f"INT8 ({base}; " + ", ".join(f"{v} {k}" for k, v in self.moved.items())
            + f"): Spearman {f.spearman_mean:.4f}, top-1 kept {f.top1_kept:.1%}, "
            f"{ratio} ONNX FP32 at {self.verdict.shape}"
        )  # fmt: skip
        if self.cascade is not None:
            c = self.cascade
            line += (
                f"; with FP32 near-tie rescoring (margin {c.margin:.3f}, {c.rescored_share:.1%} "
                f"of the probe's pairs): Spearman {c.figures.spearman_mean:.4f}, top-1 kept "
                f"{c.figures.top1_kept:.1%}, {self.verdict.speed}"
            )
        if self.judged.evidence != "probe":
            line += f" (near the floor: judged on {self.judged.evidence})"
        return line + ("" if self.meets_floor else "; under the floor")

    def frontier_row(self) -> dict[str, Any]:
        """The manifest's frontier entry (figures of INT8 alone at the top level, as before;
        ``speed_vs_onnx_fp32``: the INT8 pass at the install's shape)."""
        ratio = self.profile.ratio_at(self.verdict.shape)
        row: dict[str, Any] = {
            **{f"{k}_matmuls": v for k, v in self.moved.items()},
            **self.alone.to_dict(),
            "speed_vs_onnx_fp32": _r(ratio.value),
            "speed_interval": [_r(ratio.low), _r(ratio.high)],
            "meets_floor": self.meets_floor,
            "verdict": self.verdict.to_dict(),
        }
        if self.cascade is not None:
            c = self.cascade
            row["cascade"] = {
                "margin": _r(c.margin), "calibration_error_max": _r(c.calibration_error_max),
                **c.figures.to_dict(), "rescored_share": _r(c.rescored_share),
                "rescored_share_at_shape": _r(self.profile.share_at(self.verdict.shape.passages)),
                "speed_vs_onnx_fp32": _r(self.verdict.speed.value),
            }  # fmt: skip
        return row


@dataclass(frozen=True)
class Decision:
    """What the install puts in the store, and why.

    ``file`` is installed as the model; ``point`` is the INT8 point installed, or kept
    beside the FP32 graph for another request shape (``plan``), or None when no INT8 point
    met the floor and paid. ``reasons``: one line each, in the order they were decided."""

    precision: str  # "int8" | "fp32"
    file: Path
    reference: Path
    meets_floor: bool
    point: Point | None
    frontier: tuple[Point, ...]
    #: how the files were made: kinds, smoothing, fusions, sensitivity (the manifest's recipe)
    recipe: dict[str, Any]
    floor: dict[str, float]
    seconds: float
    plan: ServingPlan | None = None
    reasons: tuple[str, ...] = ()
    #: |score alone - score in its batch| of the installed INT8 file (0 for FP32)
    batch_gap: float = 0.0
    cascade_rule: str = ""
    #: why INT8 does not serve at the install's shape ("" when it does)
    rejected: str = ""

    @property
    def keeps_int8(self) -> bool:
        """Whether an INT8 file goes into the entry (served, or kept for another shape)."""
        return self.point is not None and (self.precision == "int8" or self.plan is not None)

    @property
    def cascaded(self) -> bool:
        return self.point is not None and self.point.cascade is not None and self.keeps_int8

    def fidelity(self) -> dict[str, Any]:
        """The manifest's fidelity figures: the served point's (the cascade's when it
        serves), INT8 alone's beside them; "itself" for an FP32 install."""
        if self.point is None:
            return {"reference": "itself"}
        p = self.point
        if self.precision == "fp32":  # the INT8 file kept for other shapes, as it would serve
            option = {**p.judged.to_dict(), "meets_floor": p.meets_floor}
            return {"reference": "itself", "int8_option": option}
        fid: dict[str, Any] = {
            **p.judged.to_dict(), "speed_vs_onnx_fp32": _r(p.verdict.speed.value),
            "request_shape": str(p.verdict.shape), "batch_gap": self.batch_gap,
        }  # fmt: skip
        if p.cascade is not None:
            alone = p.profile.ratio_at(p.verdict.shape).value
            fid["rescored_share"] = _r(p.cascade.rescored_share)
            fid["int8_alone"] = {**p.alone.to_dict(), "speed_vs_onnx_fp32": _r(alone)}
        return fid

    def recipe_json(self) -> dict[str, Any]:
        """The manifest's recipe: how the files were made, the frontier, and why."""
        out = {**self.recipe, "frontier": [p.frontier_row() for p in self.frontier],
               "floor": dict(self.floor), "reasons": list(self.reasons)}  # fmt: skip
        if self.precision == "int8" and self.point is not None and self.point.cascade is not None:
            out["cascade"] = self.point.cascade.recipe(self.cascade_rule)
        if self.rejected:
            out["int8_rejected"] = self.rejected
        return out


def _r(v: float) -> float:
    return round(float(v), 5)
