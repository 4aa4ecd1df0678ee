"""The install's scorer (quality/scoring.py) is the serving backend: the same scores as
`edgerank score`'s path for the same graph, and the extra feeds a switch graph takes."""

from __future__ import annotations

import numpy as np
import pytest

from edgerank.backends.onnx import OnnxBackend
from edgerank.engine.rank import score_documents
from edgerank.quality import sets
from edgerank.quality.scoring import GraphScorer


@pytest.fixture(scope="module")
def fp32_dir(tiny_bert_hf, tmp_path_factory):
    from edgerank.convert.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("scoring-fp32")
    export_onnx(tiny_bert_hf, d)
    return d


def test_probe_scores_are_the_daemons_scores(fp32_dir):
    groups = sets.shipped(sets.PROBE)[0][:12]
    scorer = GraphScorer(fp32_dir / "model.onnx", fp32_dir / "tokenizer.json", 1, 128)
    enc = [scorer.encode([(q, d) for d in docs]) for q, docs in groups]
    got = scorer.score_groups(enc)
    served = OnnxBackend.from_file(fp32_dir / "model.onnx", 128, threads=1)
    want = [score_documents(served, q, docs).raw for q, docs in groups]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert scorer.cpu_seconds(enc[0]) >= 0.0
    scorer.close()
    served.close()
