"""Which rescoring rule the cascade should serve: the 2e head, or the leader first.

    python bench/int8_cascade_rule.py [--workdir DIR] [--models gloss-head admin-e2e]

DIR is bench/int8_acceptance.py's workdir after a run with the cascade on (each model's
installed entry, INT8 file and FP32 reference, and its checkpoint). Both rules rest on the
same bound, no score moves by more than e = margin / 2 between the files:

- ``2e`` (what engine/cascade.py serves): rescore every passage within 2e of the INT8
  leader, FP32's winner w among them;
- ``leader-first``: rescore the INT8 leader, then, in INT8 order, every passage whose INT8
  score is at least the best FP32 score so far minus e. w satisfies int8(w) >= fp32(w) - e
  >= best - e, so it is never skipped, and the threshold rises as FP32 scores come in: the
  head is 0-2e wide instead of always 2e. The price is two FP32 calls in a row, and fewer
  FP32 scores in the answer, so less of FP32's order below the top.

For the 139 held-out Debian FAQ groups (fidelity vs torch FP32 and the share rescored) and
the s32 / s100 speed sets (share only), it replays both rules on the installed files' own
scores: no timing, so the machine's load does not matter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.int8_acceptance import speed_sets  # noqa: E402
from edgerank.engine.agreement import rank_agreement  # noqa: E402
from edgerank.engine.cascade import head, with_fp32_head  # noqa: E402
from edgerank.engine.rank import score_documents  # noqa: E402
from edgerank.startup.load import load  # noqa: E402
from edgerank.testing import minilm_rerankers as mr  # noqa: E402


def leader_first(int8: np.ndarray, fp32: np.ndarray, e: float) -> np.ndarray:
    """The positions the leader-first rule rescores: none when the 2e head is empty (the
    leader stands alone, nothing to ask FP32), else the leader, whose FP32 score sets the
    threshold, and whatever lies within e of the best FP32 score so far. The leader alone
    keeps its place (everything else lies below fp32(leader) - e) and is counted: it was
    paid for."""
    if not len(head(int8, 2 * e)):
        return np.empty(0, dtype=np.int64)
    order = np.argsort(-int8, kind="stable")
    done, best = [order[0]], fp32[order[0]]
    for j in order[1:]:
        if int8[j] < best - e:
            break
        done.append(j)
        best = max(best, fp32[j])
    return np.array(done, dtype=np.int64)


def run_model(name: str, work: Path) -> None:
    served = load(str(work / "home" / "models" / name / "onnx"), threads=2)
    if served.cascade is None:
        sys.exit(f"{name}: the installed entry has no cascade (run int8_acceptance without it)")
    c = served.cascade
    e = c.margin / 2
    torch_ref = mr.torch_scorer(work / "ckpt")
    held = mr.heldout_groups()
    extra = list(speed_sets(work / "ckpt" / "tokenizer.json").items())
    ref, got = [], {"int8 alone": [], "2e": [], "leader-first": []}
    shares: dict[str, list[float]] = {"2e": [], "leader-first": []}
    for i, (q, docs) in enumerate(held + [g for _, g in extra]):
        int8 = score_documents(served.backend, q, docs).raw.astype(np.float64)
        fp32 = score_documents(c.reference, q, docs).raw.astype(np.float64)
        lead = leader_first(int8, fp32, e)
        by_2e, n_2e = with_fp32_head(int8, fp32, c.margin)
        by_lead = int8.copy()
        by_lead[lead] = fp32[lead]
        served = {"2e": (by_2e, n_2e), "leader-first": (by_lead, len(lead))}
        for rule, (_, n) in served.items():
            shares[rule].append(n / len(docs))
        if i < len(held):
            ref.append(np.asarray(torch_ref([(q, d) for d in docs]), dtype=np.float64))
            got["int8 alone"].append(int8)
            for rule, (scores, _) in served.items():
                got[rule].append(scores)
    served.close()
    n = len(held)
    print(f"\n{name}: margin {c.margin:.3f}")
    print("| rule | Spearman mean | top-1 kept | rescored: held-out / " +
          " / ".join(k for k, _ in extra) + " |")  # fmt: skip
    print("|---|---|---|---|")
    for rule, scores in got.items():
        f = rank_agreement(ref, scores)
        cells = "-"
        if rule in shares:
            s = shares[rule]
            cells = " / ".join(f"{x:.1%}" for x in [float(np.mean(s[:n])), *s[n:]])
        print(f"| {rule} | {f['spearman_mean']:.4f} | {f['top1_kept']:.1%} | {cells} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(mr.RECIPES))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgerank-int8-acceptance"))
    args = ap.parse_args()
    for name in args.models:
        run_model(name, args.workdir / name)


if __name__ == "__main__":
    main()
