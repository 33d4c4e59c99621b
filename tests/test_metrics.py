"""Metrics: known values worked out by hand, invariances, batching, NaN handling, rank correlations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmrcritic.hmr import metrics as M
from hmrcritic.hmr.rotations import axis_angle_to_matrix


def _rand_joints(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, 24, 3, generator=g) * 0.3


def test_mpjpe_hand_value_root_aligned():
    gt = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    pred = gt.clone()
    pred[2, 2] += 0.03  # 30 mm on one of three joints
    pred = pred + torch.tensor([5.0, 5.0, 5.0])  # a global offset must not count (root-aligned)
    assert M.mpjpe(pred, gt, joint_set=None).item() == pytest.approx(10.0, abs=1e-3)


def test_mpjpe_lsp14_uses_only_lsp_joints_and_midhip_root():
    gt = _rand_joints(seed=1)
    idx = M.joint_indices("lsp14")
    assert len(idx) == 14 and 3 not in idx and 0 not in idx
    pred = gt.clone()
    pred[3] += 0.5  # spine1 is not an LSP joint
    pred[0] += 0.5  # nor is the SMPL pelvis (LSP's root is the mid-hip point)
    assert M.mpjpe(pred, gt, "lsp14").item() == pytest.approx(0.0, abs=1e-4)
    assert M.mpjpe(pred, gt, "smpl24").item() > 10.0
    pred2 = gt.clone()
    pred2[8, 2] += 0.14  # right ankle (an LSP joint, not a hip) moved 140 mm
    assert M.mpjpe(pred2, gt, "lsp14").item() == pytest.approx(10.0, abs=1e-3)
    # A 14-joint input is read as already in LSP order.
    assert M.mpjpe(pred2[idx], gt[idx], "lsp14").item() == pytest.approx(10.0, abs=1e-3)


def test_mpjpe_batched_and_broadcast():
    gt = _rand_joints(3, 1, seed=2)
    pred = gt + 0.01 * torch.randn(3, 5, 24, 3)
    out = M.mpjpe(pred, gt)
    assert out.shape == (3, 5)
    for b in range(3):
        for n in range(5):
            assert out[b, n].item() == pytest.approx(M.mpjpe(pred[b, n], gt[b, 0]).item(), rel=1e-5)


def test_pa_mpjpe_hand_value_rhombus():
    # gt: unit "plus"; pred: the same stretched ×2 in y. Optimal similarity: R = I, s = (1+a)/(1+a²) = 0.6,
    # so the x-points miss by 0.4 m and the y-points by |0.6·2 − 1| = 0.2 m → mean 0.3 m = 300 mm.
    gt = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])
    pred = gt * torch.tensor([1.0, 2.0, 1.0])
    assert M.pa_mpjpe(pred, gt, joint_set=None).item() == pytest.approx(300.0, abs=1e-3)


def test_pa_mpjpe_invariant_to_similarity_transform_of_prediction():
    gt = _rand_joints(4, seed=3)
    pred = gt + 0.05 * torch.randn(4, 24, 3, generator=torch.Generator().manual_seed(4))
    base = M.pa_mpjpe(pred, gt)
    aa = torch.randn(4, 3, generator=torch.Generator().manual_seed(5))
    R = axis_angle_to_matrix(aa)
    s = torch.tensor([0.5, 1.0, 2.0, 3.7])[:, None, None]
    t = torch.randn(4, 1, 3)
    moved = s * (pred @ R.transpose(-1, -2)) + t
    assert torch.allclose(M.pa_mpjpe(moved, gt), base, atol=1e-3)
    assert (base > 1.0).all()  # non-trivial noise is not aligned away
    # a pure similarity transform of the ground truth aligns to zero
    assert torch.allclose(M.pa_mpjpe(s * (gt @ R.transpose(-1, -2)) + t, gt), torch.zeros(4), atol=1e-3)
    # and PA-MPJPE never exceeds MPJPE (root translation is one of the transforms it may use)
    assert (base <= M.mpjpe(pred, gt) + 1e-3).all()


def test_pa_mpjpe_does_not_use_reflections():
    gt = _rand_joints(seed=6)
    mirrored = gt * torch.tensor([-1.0, 1.0, 1.0])
    assert M.pa_mpjpe(mirrored, gt, "smpl24").item() > 20.0
    aligned = M.procrustes_align(mirrored, gt).double()
    # the fitted map is a proper similarity: its linear part has positive determinant
    X = mirrored.double() - mirrored.double().mean(0)
    A = torch.linalg.lstsq(X, aligned - aligned.mean(0)).solution
    assert torch.linalg.det(A).item() > 0


def test_pve_known_value_and_roots():
    gt = torch.randn(50, 3)
    pred = gt.clone()
    pred[:10] += torch.tensor([0.0, 0.05, 0.0])  # 10 of 50 vertices off by 50 mm
    root = torch.zeros(3)
    assert M.pve(pred, gt, root, root).item() == pytest.approx(10.0, abs=1e-3)
    shift = torch.tensor([1.0, 2.0, 3.0])
    assert M.pve(pred + shift, gt, root + shift, root).item() == pytest.approx(10.0, abs=1e-3)
    assert M.pve(gt + shift, gt).item() == pytest.approx(0.0, abs=1e-3)  # centroid fallback


def test_reprojection_error_visible_only_and_nan_safe():
    kp = torch.zeros(2, 17, 3)
    pred = torch.zeros(2, 17, 2)
    kp[0, :2, 2] = 1.0
    pred[0, 0] = torch.tensor([3.0, 4.0])  # 5 px
    pred[0, 1] = torch.tensor([0.0, 1.0])  # 1 px
    pred[0, 5] = torch.tensor([1000.0, 1000.0])  # invisible: ignored
    kp[0, 6, :2] = float("nan")  # NaN coordinates on an invisible keypoint: ignored
    out = M.reprojection_error(pred, kp)
    assert out[0].item() == pytest.approx(3.0)
    assert math.isnan(out[1].item())  # nothing visible: undefined, not a perfect 0


def test_group_metrics_and_top1():
    e = torch.tensor([[10.0, 20.0, 30.0, 40.0], [5.0, float("nan"), 1.0, 3.0]])
    per = M.group_metrics(e, reduce=False)
    assert per["best"].tolist() == [10.0, 1.0]
    assert per["worst"].tolist() == [40.0, 5.0]
    assert per["mean"].tolist() == pytest.approx([25.0, 3.0])
    assert per["median"][1].item() == 3.0
    red = M.group_metrics(e)
    assert red["best"] == pytest.approx(5.5)
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.3], [float("nan"), 5.0, 0.0, 1.0]])
    assert M.select_top1(e, scores)[0].item() == 20.0
    assert math.isnan(M.select_top1(e, scores)[1].item())  # top-scored hypothesis has an undefined error
    scores[1, 1] = float("nan")
    assert M.select_top1(e, scores)[1].item() == 3.0  # NaN scores never win


def test_mean_pairwise_distance():
    j = torch.zeros(2, 3, 24, 3)
    j[0, 1, :, 0] = 0.01  # hyp 1 is 10 mm from hyps 0 and 2 at every joint; 0 and 2 coincide
    # pairs: (0,1)=10, (0,2)=0, (1,2)=10 → 20/3 mm
    out = M.mean_pairwise_distance(j)
    assert out[0].item() == pytest.approx(20.0 / 3.0, abs=1e-4)
    assert out[1].item() == pytest.approx(0.0)
    mask = torch.zeros(24, dtype=torch.bool)
    mask[5] = True
    j[0, 2, 5, 1] = 0.03  # only joint 5 is counted: d(0,1)=10, d(0,2)=30, d(1,2)=sqrt(10²+30²)
    expected = (10 + 30 + math.hypot(10, 30)) / 3
    assert M.mean_pairwise_distance(j, mask)[0].item() == pytest.approx(expected, abs=1e-3)
    assert math.isnan(M.mean_pairwise_distance(j[:, :1]).tolist()[0])


def test_spearman_kendall_hand_cases():
    x = torch.tensor([1.0, 2, 3, 4])
    assert M.spearman(x, torch.tensor([1.0, 3, 2, 4])).item() == pytest.approx(0.8)
    assert M.kendall_tau(x, torch.tensor([1.0, 3, 2, 4])).item() == pytest.approx(4 / 6)
    assert M.spearman(x, -x).item() == pytest.approx(-1.0)
    # ties: x ranks (1, 2.5, 2.5, 4)
    xt = torch.tensor([1.0, 2, 2, 3])
    assert M.spearman(xt, x).item() == pytest.approx(4.5 / math.sqrt(22.5))
    assert M.kendall_tau(xt, x).item() == pytest.approx(5 / math.sqrt(30))
    assert M.rankdata(xt).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert math.isnan(M.spearman(torch.ones(4), x).item())
    # numpy float64 inputs keep their precision: values 1e-9 apart are not tied
    close = np.array([1.0, 1.0 + 1e-9, 1.0 + 2e-9])
    assert M.spearman(close, np.array([1.0, 2.0, 3.0])).item() == pytest.approx(1.0)


def test_rank_correlations_batched_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(6, 12)).astype(float)  # many ties
    y = rng.normal(size=(6, 12))
    y[:, :3] = y[:, :1]
    rho = M.spearman(torch.tensor(x), torch.tensor(y))
    tau = M.kendall_tau(torch.tensor(x), torch.tensor(y))
    for b in range(6):
        assert rho[b].item() == pytest.approx(stats.spearmanr(x[b], y[b]).statistic, abs=1e-9)
        assert tau[b].item() == pytest.approx(stats.kendalltau(x[b], y[b]).statistic, abs=1e-9)


def test_metric_result_and_standard_metrics():
    r = M.MetricResult("pa_mpjpe", 42.0, alignment="procrustes")
    assert r.to_dict() == {
        "name": "pa_mpjpe",
        "value": 42.0,
        "unit": "mm",
        "joint_set": "lsp14",
        "alignment": "procrustes",
    }
    gt = _rand_joints(2, seed=7)
    out = M.standard_metrics(gt, gt, torch.zeros(2, 10, 3), torch.zeros(2, 10, 3))
    assert set(out) == {"mpjpe", "pa_mpjpe", "pve"} and all(v.shape == (2,) for v in out.values())


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        M.mpjpe(torch.zeros(10, 3), torch.zeros(10, 3), "lsp14")
    with pytest.raises(ValueError):
        M.spearman(torch.zeros(3), torch.zeros(4))
