"""What `edgerank probe --calibrate` measured for one (model, backend, precision, device) on
this machine, as the planner reads it: pairs/s per thread count, fidelity, and batch shapes.

The records are pure data; store/calibration.py keeps them per machine in the store, and
quality/calibrate.py measures them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: the timed batch: pairs x tokens per call
PAIRS, TOKENS = 16, 128
#: mean Spearman against fp32 below this: the candidate ranks after faithful ones
FIDELITY_FLOOR = 0.99
#: a batch shape within this share of the memory default's speed loses to it: two shapes
#: that differ by noise should not flip the choice from one calibration to the next
SHAPE_SLACK = 0.03

Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class Measured:
    """One (model, backend, precision, device) as measured on this machine."""

    model: str
    backend: str
    precision: str
    device: str
    #: threads -> pairs per second on the PAIRS x TOKENS batch (median of rounds)
    pairs_per_s: dict[int, float]
    #: rank agreement with the reference (fidelity.rank_agreement keys); None = unmeasured
    fidelity: dict[str, float] | None = None
    #: what fidelity was measured against ("torch fp32", "onnx fp32 at import", "itself")
    reference: str | None = None
    shape: str = f"{PAIRS}x{TOKENS}"
    #: fingerprint of the store entry that ran (a replaced entry invalidates the figure)
    entry: str = ""
    measured_at: str = ""
    #: batch shape (shape_key: token budget x pair cap) -> pairs per second on a mixed-length
    #: request, at best_threads (quality/shapes.py); empty = not measured (rows from before)
    shapes: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.model, self.backend, self.precision, self.device)

    @property
    def best_threads(self) -> int:
        return fastest_threads(self.pairs_per_s)

    @property
    def best_pairs_per_s(self) -> float:
        return self.pairs_per_s[self.best_threads] if self.pairs_per_s else 0.0

    def fastest_shape(self, limit: int) -> tuple[int, int | None] | None:
        """(token budget, pair cap or None) that scored fastest within ``limit`` padded
        tokens; the memory default (``limit``, no cap) unless another beat it by more than
        SHAPE_SLACK. None when no measured shape fits."""
        fits = {k: v for k, v in self.shapes.items() if parse_shape(k)[0] <= limit}
        if not fits:
            return None
        best = max(fits, key=lambda k: (fits[k], parse_shape(k)[0], -(parse_shape(k)[1] or 0)))
        default = shape_key(limit, None)
        if default in fits and fits[best] <= fits[default] * (1 + SHAPE_SLACK):
            best = default
        return parse_shape(best)

    @property
    def fidelity_ok(self) -> bool:
        if not self.fidelity or "spearman_mean" not in self.fidelity:
            return True
        return self.fidelity["spearman_mean"] >= FIDELITY_FLOOR

    def summary(self) -> str:
        speeds = ", ".join(f"{v:.0f} at {t}" for t, v in sorted(self.pairs_per_s.items()))
        line = f"{self.backend}/{self.precision} on {self.device}: pairs/s {speeds} threads"
        if self.reference == "itself":
            line += "; the fp32 reference"
        elif self.fidelity and "spearman_mean" in self.fidelity:
            f = self.fidelity
            line += f"; spearman {f['spearman_mean']:.4f}"
            if "top1_kept" in f:
                line += f", top-1 kept {f['top1_kept']:.0%}"
            line += f" vs {self.reference}"
        else:
            line += "; fidelity not measured"
        return line

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pairs_per_s"] = {str(t): v for t, v in self.pairs_per_s.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measured:
        data = dict(data)
        data["pairs_per_s"] = {int(t): float(v) for t, v in data["pairs_per_s"].items()}
        shapes = data.get("shapes") or {}
        if not isinstance(shapes, dict):
            raise TypeError("shapes must be a mapping")
        data["shapes"] = {shape_key(*parse_shape(k)): float(v) for k, v in shapes.items()}
        return cls(**data)


def fastest_threads(pairs_per_s: dict[int, float]) -> int:
    """The fastest thread count; the fewer threads when two measured alike."""
    return max(pairs_per_s, key=lambda t: (pairs_per_s[t], -t))


def shape_key(tokens: int, max_pairs: int | None) -> str:
    """'8192x0': padded tokens per batch x pairs per batch at most (0 = no cap)."""
    return f"{tokens}x{max_pairs or 0}"


def parse_shape(key: str) -> tuple[int, int | None]:
    """shape_key's inverse; ValueError for anything else."""
    tokens, _, pairs = key.partition("x")
    t, p = int(tokens), int(pairs)
    if t <= 0 or p < 0:
        raise ValueError(f"not a batch shape: {key!r}")
    return t, p or None
