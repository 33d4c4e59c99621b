"""Review s16 (hmrmath): the HMR maths checked against references written here (float64 numpy / scipy), and the
fixes it led to: empty batches through the body model and the sampler, an odd ``d_model`` refused when the model is
built, and an evaluation with one hypothesis per group no longer reporting its (undefined) diversity as values
left out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmrcritic.hmr import evaluate as E
from hmrcritic.hmr import metrics as M
from hmrcritic.hmr import rotations as R
from hmrcritic.hmr.camera import default_intrinsics, project
from hmrcritic.hmr.diffusion import (
    X_DIM,
    DiffusionConfig,
    HMRDiffusion,
    condition_from_keypoints,
    ddim_sample_x0,
    sample,
)

TINY = {"d_model": 32, "layers": 1, "heads": 2}


def _cond(B: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(B, 17, 2, generator=g) * 200 + 28
    kp = torch.cat([uv, torch.ones(B, 17, 1)], -1)
    return condition_from_keypoints(kp, default_intrinsics(256, 256), (256, 256))


# ------------------------------------------------------------------------------ diffusion: an oracle denoiser
class _Oracle(HMRDiffusion):
    """predict_eps returns the exact noise that takes the known clean (standardised) z0 to x_t."""

    z0: torch.Tensor

    def predict_eps(self, x_t, t, cond):
        ab = self.alphas_cumprod[t].double().unsqueeze(-1)
        return ((x_t.double() - ab.sqrt() * self.z0) / (1 - ab).sqrt()).to(x_t.dtype)


@pytest.mark.parametrize("steps,eta", [(1, 0.0), (4, 0.0), (10, 1.0), (50, 0.5)])
def test_ddim_with_the_true_noise_recovers_x0(steps, eta):
    """DDIM with an oracle ε ends exactly at x0, whatever the steps and η (the noise it adds is re-explained by the
    next step's ε); x0 is raw (the standardisation is undone)."""
    torch.manual_seed(0)
    m = _Oracle(DiffusionConfig(**TINY)).eval()
    g = torch.Generator().manual_seed(1)
    m.x_mean.copy_(torch.randn(X_DIM, generator=g))
    m.x_std.copy_(0.1 + torch.rand(X_DIM, generator=g))
    m.z0 = (torch.rand(3, X_DIM, generator=g) * 4 - 2).double()  # inside the ±6 clip
    x0 = ddim_sample_x0(m, _cond(3), steps=steps, eta=eta, generator=torch.Generator().manual_seed(2))
    ref = m.z0 * m.x_std.double() + m.x_mean.double()
    assert (x0.double() - ref).abs().max() < 1e-4


def test_schedule_endpoints_and_forward_process_variance():
    m = HMRDiffusion(DiffusionConfig(**TINY))
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    assert abs(float(m.alphas_cumprod[0]) - (1 - 1e-4)) < 1e-7  # t = 0 is one β step, not "no noise"
    assert float(m.alphas_cumprod[-1]) < 5e-5 and abs(float(m.alphas_cumprod[-1]) - ab[-1]) < 1e-9
    # q(x_t | x0) keeps unit variance in the standardised space at every t: ᾱ + (1 − ᾱ) = 1
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(20000, X_DIM, generator=g)
    for t in (0, 500, 999):
        xt = m.q_sample(x0, torch.full((20000,), t), torch.randn(20000, X_DIM, generator=g))
        assert abs(float(xt.var()) - 1.0) < 0.02


# ------------------------------------------------------------------------------------------ fixes: empty batch
def test_body_model_of_an_empty_batch(body):
    """BodyModel has an n == 0 branch, but reshape(0, -1) raised before it was reached."""
    for lead in [(0,), (2, 0)]:
        out = body(torch.zeros(*lead, 3), torch.zeros(*lead, 69), torch.zeros(*lead, 10), torch.zeros(*lead, 3))
        assert out.vertices.shape == (*lead, body.num_vertices, 3)
        assert out.joints.shape == (*lead, 24, 3) and body.coco17(out).shape == (*lead, 17, 3)


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_sample_of_an_empty_batch(body, guidance):
    """Zero inputs give an empty group: predict_eps reshaped with -1 (ambiguous for B = 0) and guidance took a
    gradient of an energy with no graph."""
    torch.manual_seed(0)
    m = HMRDiffusion(DiffusionConfig(**TINY)).eval()
    cond = condition_from_keypoints(torch.zeros(0, 17, 3), default_intrinsics(256, 256), (256, 256))
    g = sample(m, cond, num_generations=3, steps=2, body=body, guidance=guidance)
    assert g.x0.shape == (0, 3, X_DIM) and g.transl.shape == (0, 3, 3)


def test_odd_d_model_is_refused_when_the_model_is_built():
    """The timestep embedding has d/2 cosines + d/2 sines: an odd d_model built fine and failed at the first
    forward pass with a matmul shape error."""
    with pytest.raises(ValueError, match="d_model 33 must be even"):
        HMRDiffusion(DiffusionConfig(d_model=33, layers=1, heads=3))


# --------------------------------------------------------------------------- fix: evaluate with N = 1
def test_evaluate_with_one_hypothesis_reports_no_diversity_as_values_left_out(monkeypatch, body):
    """With one hypothesis per group every diversity is undefined: it was NaN per scene, counted in
    non_finite_dropped for every scene and explained in the report as scenes without occluded or visible joints."""
    from conftest import upright_scenes

    B = 2
    data = upright_scenes(body, B)
    data["keypoints"][:, 13:, 2] = 0
    monkeypatch.setattr(E, "_load_labelled", lambda split, limit: (data, B))
    torch.manual_seed(0)
    model = HMRDiffusion(DiffusionConfig(**TINY))
    res = E.evaluate_model(model, "test", num_generations=1, steps=2, nn_baseline=False, body=body)
    assert res["non_finite_dropped"] == {}
    assert all(v is None for k, v in res.items() if k.startswith("diversity_") and k.endswith("_mm"))
    assert res["pa_mpjpe_mean_mm"] == res["pa_mpjpe_best_mm"] is not None
    assert "leave out non-finite" not in E.format_report(res)


# -------------------------------------------------------------------------------- Procrustes / metrics
def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_pa_mpjpe_is_invariant_to_a_similarity_of_the_prediction_and_never_reflects():
    rng = np.random.default_rng(0)
    pred, gt = rng.normal(size=(4, 24, 3)) * 0.3, rng.normal(size=(4, 24, 3)) * 0.3
    base = M.pa_mpjpe(pred, gt, "lsp14").numpy()
    moved = np.stack([2.7 * p @ _random_rotation(rng).T + rng.normal(size=3) for p in pred])
    assert np.allclose(M.pa_mpjpe(moved, gt, "lsp14").numpy(), base, atol=1e-8)
    # a mirrored ground truth (non-planar) cannot be reached by a proper rotation: the error stays large
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert (M.pa_mpjpe(mirrored, gt, None).numpy() > 50).all()
    aligned = M.procrustes_align(torch.tensor(pred[0]), torch.tensor(gt[0])).numpy()
    x0, a0 = pred[0] - pred[0].mean(0), aligned - aligned.mean(0)
    rot = np.linalg.lstsq(x0, a0, rcond=None)[0].T  # a0 ≈ s·R·x0
    assert np.linalg.det(rot) > 0


@pytest.mark.parametrize("kind", ["all_equal", "colinear", "gt_all_equal"])
def test_pa_mpjpe_of_degenerate_sets_is_finite(kind):
    rng = np.random.default_rng(1)
    pred, gt = rng.normal(size=(14, 3)), rng.normal(size=(14, 3))
    if kind == "all_equal":
        pred = np.ones((14, 3))
    elif kind == "colinear":
        pred = np.outer(np.arange(14.0), [1.0, 2.0, 3.0])
    else:
        gt = np.ones((14, 3))
    for dt in (np.float32, np.float64):
        e = M.pa_mpjpe(pred.astype(dt), gt.astype(dt), None)
        assert torch.isfinite(e).all()


# -------------------------------------------------------------------------------------- rotations, camera
@pytest.mark.parametrize("angle", [0.0, 1e-7, 1e-3, 1.0, math.pi - 1e-4, math.pi])
def test_rotation_round_trips_against_scipy(angle):
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(2)
    axis = rng.normal(size=(2, 5, 3))
    aa = torch.tensor(axis / np.linalg.norm(axis, axis=-1, keepdims=True) * angle)
    mat = R.axis_angle_to_matrix(aa)
    ref = Rotation.from_rotvec(aa.reshape(-1, 3).numpy()).as_matrix().reshape(2, 5, 3, 3)
    assert np.abs(mat.numpy() - ref).max() < 1e-12
    for back in (R.matrix_to_axis_angle(mat), R.rot6d_to_axis_angle(R.axis_angle_to_rot6d(aa))):
        assert back.shape == (2, 5, 3)
        assert (R.axis_angle_to_matrix(back) - mat).abs().max() < 1e-12
    q = R.matrix_to_quaternion(mat).reshape(-1, 4).numpy()
    q_ref = Rotation.from_matrix(ref.reshape(-1, 3, 3)).as_quat()[:, [3, 0, 1, 2]]
    assert np.minimum(np.abs(q - q_ref).max(-1), np.abs(q + q_ref).max(-1)).max() < 1e-12


def test_project_matches_a_hand_written_pinhole():
    K = torch.tensor([[900.0, 0, 310], [0, 880, 250], [0, 0, 1]], dtype=torch.float64)
    pts = torch.tensor(np.random.default_rng(3).normal(size=(2, 7, 3)))
    pts[..., 2] = pts[..., 2].abs() + 2
    ref = np.stack([900 * pts[..., 0] / pts[..., 2] + 310, 880 * pts[..., 1] / pts[..., 2] + 250], -1)
    assert np.abs(project(pts, K).numpy() - ref).max() < 1e-9
    assert np.abs(project(pts, K.expand(2, 3, 3)).numpy() - ref).max() < 1e-9


def test_body_joints_are_the_regressor_of_the_zero_pose_mesh(body):
    be = torch.randn(3, 10, generator=torch.Generator().manual_seed(4))
    out = body(torch.zeros(3, 3), torch.zeros(3, 69), be)
    jr = body.smpl.J_regressor.double()
    assert (jr @ out.vertices.double() - out.joints.double()).abs().max() < 1e-5
    assert out.vertices.dtype == torch.float32 and out.joints.shape == (3, 24, 3)
