"""PA-MPJPE on batches holding a diverged (NaN / inf) hypothesis: that sample is NaN, like its MPJPE, and
every other sample keeps its value (the batched SVD used to raise for the whole batch)."""

from __future__ import annotations

import math

import pytest
import torch

from hmrcritic.hmr import metrics as M


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_non_finite_hypothesis_does_not_sink_the_batch(bad):
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(3, 24, 3, generator=g)
    pred = gt + 0.02 * torch.randn(3, 24, 3, generator=g)
    clean = M.pa_mpjpe(pred, gt)
    pred[1, 8, 0] = bad  # joint 8 (right ankle) is in lsp14
    out = M.pa_mpjpe(pred, gt)
    assert math.isnan(out[1])
    torch.testing.assert_close(out[[0, 2]], clean[[0, 2]])
    # a NaN in the ground truth of one sample, and in a group (B,N,…) against (B,1,…)
    gt_bad = gt.clone()
    gt_bad[2, 5, 2] = bad
    assert torch.isnan(M.pa_mpjpe(gt + 0.0, gt_bad)).tolist() == [False, False, True]
    grp = M.pa_mpjpe(pred[None], gt[:1, None])
    assert grp.shape == (1, 3) and math.isnan(grp[0, 1]) and not grp[0, [0, 2]].isnan().any()
    # group statistics then ignore it, as they do NaN MPJPEs
    stats = M.group_metrics(out[None])
    assert stats["best"] == pytest.approx(float(clean[[0, 2]].min()))
