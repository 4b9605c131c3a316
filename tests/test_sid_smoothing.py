"""SID-band smoothing: the loss equals a dense soft-target cross-entropy; bad input raises."""

from __future__ import annotations

import pytest
import torch

from neo.core.layout import TokenLayout
from neo.training.train import SidBandSmoothing


def test_sid_band_smoothing_matches_a_dense_soft_target():
    lay = TokenLayout.contiguous(20, {"movie": [4, 3], "tag": [5]})
    V = lay.vocab_size
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, V, generator=g, dtype=torch.float64)
    labels = torch.tensor([[-100, 3, lay.open_id, lay.types[0].band_starts[0] + 2, lay.types[0].band_starts[1] + 1,
                            lay.close_id, -100],
                           [-100, lay.open_id, lay.types[1].band_starts[0] + 4, lay.close_id, 5, -100, -100]])
    eps = 0.2
    fn = SidBandSmoothing(lay, eps)
    got_mean = fn({"logits": logits}, labels)
    got_sum = fn({"logits": logits}, labels, num_items_in_batch=torch.tensor(3))
    # dense reference: one soft target row per labelled (shifted) position
    lp = torch.log_softmax(logits[:, :-1], -1).reshape(-1, V)
    y = labels[:, 1:].reshape(-1)
    terms = []
    for i, t in enumerate(y.tolist()):
        if t == -100:
            continue
        q = torch.zeros(V, dtype=torch.float64)
        q[t] = 1.0
        cls = lay.classify(t)
        if cls is not None and t not in (lay.open_id, lay.close_id):
            ti, lvl = cls
            s0, k = lay.types[ti].band_starts[lvl], lay.types[ti].codebook_sizes[lvl]
            q *= 1 - eps
            q[s0:s0 + k] += eps / k
        terms.append(-(q * lp[i]).sum())
    ref = torch.stack(terms)
    assert len(terms) == 9  # 3 of them code labels
    torch.testing.assert_close(got_mean, ref.mean(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_sum, ref.sum() / 3, rtol=1e-9, atol=1e-9)


def test_sid_band_smoothing_rejects_bad_input():
    lay = TokenLayout.contiguous(20, {"movie": [4]})
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="epsilon"):
            SidBandSmoothing(lay, bad)
    fn = SidBandSmoothing(lay, 0.1)
    with pytest.raises(ValueError, match="not adapted"):
        fn({"logits": torch.zeros(1, 3, 20)}, torch.zeros(1, 3, dtype=torch.long))
