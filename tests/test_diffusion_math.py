"""Independent checks of the diffusion maths against textbook definitions (review, report-only).

Every expected value here is recomputed from the definitions (DDPM: Ho et al. 2020; DDIM: Song et al. 2021;
v-parameterisation: Salimans & Ho 2022; 6D rotations: Zhou et al. 2019), in float64 where it matters, and
compared with the code on the same inputs and seeds. Only documented properties are asserted.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from hmrcritic.hmr import rotations as rot
from hmrcritic.hmr.diffusion import (
    X_DIM,
    DiffusionConfig,
    HMRDiffusion,
    condition_from_keypoints,
    ddim_sample_x0,
    ddim_timesteps,
    params_to_x0,
    sample,
    solve_translation,
    x0_to_params,
)

TINY = DiffusionConfig(d_model=32, layers=1, heads=2)


def _model(seed: int = 0, prediction: str = "v") -> HMRDiffusion:
    """A tiny model with non-zero output heads and a non-trivial standardisation (so nothing is an identity)."""
    torch.manual_seed(seed)
    cfg = copy.deepcopy(TINY)
    cfg.prediction = prediction
    m = HMRDiffusion(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for head in (m.joint_out, m.shape_out):
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.3)
            head.bias.copy_(torch.randn(head.bias.shape, generator=g) * 0.1)
        m.x_mean.copy_(torch.randn(X_DIM, generator=g) * 0.2)
        m.x_std.copy_(0.05 + torch.rand(X_DIM, generator=g))
    return m


def _as_eps_model(m: HMRDiffusion) -> HMRDiffusion:
    """Same weights, but ``predict_eps`` returns the raw network output (v for a v-model)."""
    raw = copy.deepcopy(m)
    raw.config = copy.deepcopy(m.config)
    raw.config.prediction = "eps"
    return raw


def _cond(B: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(B, 17, 2, generator=g) * torch.tensor([300.0, 400.0]) + torch.tensor([150.0, 40.0])
    conf = (torch.rand(B, 17, generator=g) > 0.2).float()
    K = torch.tensor([[800.0, 0, 320], [0, 800, 240], [0, 0, 1]]).expand(B, 3, 3)
    return condition_from_keypoints(torch.cat([uv, conf[..., None]], -1), K, (640, 480))


def _textbook_alphas_cumprod(T=1000, b0=1e-4, b1=0.02) -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(b0, b1, T))


# ------------------------------------------------------------------------------------ 1. schedule, q_sample
def test_schedule_matches_textbook_linear_beta():
    m = _model()
    ab = _textbook_alphas_cumprod()
    code = m.alphas_cumprod.double().numpy()
    assert m.num_timesteps == 1000 and code.shape == (1000,)
    assert np.max(np.abs(code - ab) / ab) < 1e-6
    assert (np.diff(code) < 0).all()  # strictly decreasing
    assert abs(code[0] - 0.9999) < 1e-7 and abs(code[-1] - 4.0358e-5) < 1e-8


def test_q_sample_is_sqrt_ab_x0_plus_sqrt_one_minus_ab_eps_in_standardised_space():
    m = _model()
    g = torch.Generator().manual_seed(3)
    x0 = m.x_mean + m.x_std * torch.randn(8, X_DIM, generator=g)
    eps = torch.randn(8, X_DIM, generator=g)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    ab = torch.from_numpy(_textbook_alphas_cumprod()[t.numpy()])[:, None]
    z = (x0.double() - m.x_mean.double()) / m.x_std.double()
    ref = ab.sqrt() * z + (1 - ab).sqrt() * eps.double()
    assert (m.q_sample(x0, t, eps).double() - ref).abs().max() < 2e-5


# ------------------------------------------------------------------ 2. v-parameterisation and the loss weights
def test_v_output_converts_to_eps_and_x0_as_salimans_ho():
    m = _model()
    raw = _as_eps_model(m)
    cond = _cond(8)
    g = torch.Generator().manual_seed(4)
    x_t = torch.randn(8, X_DIM, generator=g)
    t = torch.tensor([0, 5, 50, 250, 500, 750, 990, 999])
    with torch.no_grad():
        v = raw.predict_eps(x_t, t, cond).double()
        eps = m.predict_eps(x_t, t, cond).double()
    ab = torch.from_numpy(_textbook_alphas_cumprod()[t.numpy()])[:, None]
    assert (eps - (ab.sqrt() * v + (1 - ab).sqrt() * x_t.double())).abs().max() < 1e-5
    # the sampler's x0 from eps (float32, as in ddim_sample_x0) equals sqrt(ab)·x_t − sqrt(1−ab)·v
    a32 = m.alphas_cumprod[t][:, None]
    x0_from_eps = (x_t - (1 - a32).sqrt() * eps.float()) / a32.sqrt()
    assert (x0_from_eps.double() - (ab.sqrt() * x_t.double() - (1 - ab).sqrt() * v)).abs().max() < 2e-4


def test_loss_weightings_match_their_definitions():
    m = _model()
    raw = _as_eps_model(m)
    cond = _cond(8, seed=1)
    g = torch.Generator().manual_seed(5)
    x0 = m.x_mean + m.x_std * torch.randn(8, X_DIM, generator=g)
    eps = torch.randn(8, X_DIM, generator=g)
    t = torch.tensor([0, 3, 30, 300, 600, 900, 995, 999])
    ab = torch.from_numpy(_textbook_alphas_cumprod()[t.numpy()])
    with torch.no_grad():
        x_t = m.q_sample(x0, t, eps)
        v_hat = raw.predict_eps(x_t, t, cond).double()
        l_eps = m.loss(x0, cond, t=t, eps=eps).double()
        l_v = m.loss(x0, cond, t=t, eps=eps, weighting="v").double()
        l_snr = m.loss(x0, cond, t=t, eps=eps, snr_gamma=5.0).double()
        l_v_snr = m.loss(x0, cond, t=t, eps=eps, snr_gamma=5.0, weighting="v").double()
    z = (x0.double() - m.x_mean.double()) / m.x_std.double()
    x_t64 = ab.sqrt()[:, None] * z + (1 - ab).sqrt()[:, None] * eps.double()
    eps_hat = ab.sqrt()[:, None] * v_hat + (1 - ab).sqrt()[:, None] * x_t64
    v_true = ab.sqrt()[:, None] * eps.double() - (1 - ab).sqrt()[:, None] * z
    ref_eps = (eps_hat - eps.double()).pow(2).mean(-1)
    ref_v = (v_hat - v_true).pow(2).mean(-1)
    snr = ab / (1 - ab)
    assert torch.allclose(l_eps, ref_eps, rtol=1e-4)
    assert torch.allclose(l_v, ref_v, rtol=1e-3)  # ||v̂ − v||² = eps-MSE / ᾱ_t
    # Min-SNR-γ on the v loss is min(SNR, γ)/(SNR + 1) (Hang et al.: the same x0 weight as min(SNR, γ)/SNR on eps)
    assert torch.allclose(l_v_snr, ref_v * snr.clamp_max(5.0) / (snr + 1), rtol=1e-3)
    assert torch.allclose(l_snr, ref_eps * snr.clamp_max(5.0) / snr, rtol=1e-3)


# ------------------------------------------------------------------------------------------------ 3. DDIM
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 50, 1000])
def test_ddim_timesteps_are_linspace_from_T_minus_1_to_0(steps):
    ts = ddim_timesteps(1000, steps).tolist()
    ref = [999] if steps == 1 else [int(round(999 - i * 999 / (steps - 1))) for i in range(steps)]
    assert ts == ref and len(set(ts)) == steps


def _reference_ddim(raw_v_model, x_std, x_mean, cond, steps, eta, gen, clip=6.0):
    """Textbook DDIM in float64 on the network's v output: x̂0, ε̂, σ, x_{t'} (Song et al. eq. 12/16)."""
    ab = _textbook_alphas_cumprod()
    x = torch.randn(len(cond), X_DIM, generator=gen).double()
    ts = [999] if steps == 1 else [int(round(999 - i * 999 / (steps - 1))) for i in range(steps)]
    for i, t in enumerate(ts):
        a_t, a_p = float(ab[t]), (float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0)
        with torch.no_grad():
            v = raw_v_model.predict_eps(x.float(), torch.full((len(cond),), t), cond).double()
        x0 = (math.sqrt(a_t) * x - math.sqrt(1 - a_t) * v).clamp(-clip, clip)
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        x = math.sqrt(a_p) * x0 + math.sqrt(max(1 - a_p - sigma**2, 0.0)) * eps
        if eta > 0 and i + 1 < len(ts):
            x = x + sigma * torch.randn(x.shape, generator=gen).double()
    return x * x_std.double() + x_mean.double()


@pytest.mark.parametrize("steps,eta", [(1, 0.0), (10, 0.0), (10, 0.5), (10, 1.0), (25, 1.0)])
def test_ddim_matches_textbook_update(steps, eta):
    m = _model()
    cond = _cond(6, seed=2)
    out = ddim_sample_x0(m, cond, steps=steps, eta=eta, generator=torch.Generator().manual_seed(11))
    ref = _reference_ddim(_as_eps_model(m), m.x_std, m.x_mean, cond, steps, eta, torch.Generator().manual_seed(11))
    assert ((out.double() - ref) / m.x_std.double()).abs().max() < 1e-3


def test_sample_is_seeded_and_groups_share_condition_with_independent_noise(monkeypatch):
    import hmrcritic.hmr.diffusion as D

    m = _model()
    cond = _cond(3, seed=4)
    N = 5
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    for eta in (0.0, 1.0):
        a = sample(m, cond, N, steps=4, eta=eta, generator=g(1), solve_transl=False)
        b = sample(m, cond, N, steps=4, eta=eta, generator=g(1), solve_transl=False)
        c = sample(m, cond, N, steps=4, eta=eta, generator=g(2), solve_transl=False)
        assert torch.equal(a.x0, b.x0) and not torch.allclose(a.x0, c.x0)
    seen = {}
    real = D.ddim_sample_x0

    def spy(model, c, **kw):
        seen["cond"] = c
        return real(model, c, **kw)

    monkeypatch.setattr(D, "ddim_sample_x0", spy)
    grp = sample(m, cond, N, steps=4, generator=g(1), solve_transl=False)
    c = seen["cond"]
    for bi in range(3):
        for j in range(N):  # rows b·N .. b·N+N−1 carry input b's condition
            row = bi * N + j
            assert torch.equal(c.keypoints[row], cond.keypoints[bi]) and torch.equal(c.box[row], cond.box[bi])
        assert torch.unique(grp.x0[bi], dim=0).shape[0] == N  # distinct hypotheses per input


# ------------------------------------------------------------------------------------------- 4. guidance
def test_guidance_zero_is_the_model_alone():
    body = pytest.importorskip("hmrcritic.hmr.body").load_body_model()
    m = _model()
    cond = _cond(2, seed=5)
    a = sample(m, cond, 3, steps=3, generator=torch.Generator().manual_seed(0), body=body)
    b = sample(m, cond, 3, steps=3, generator=torch.Generator().manual_seed(0), body=body, guidance=0.0)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.transl, b.transl)


# ---------------------------------------------------------------------------------------- 5. representation
def test_rotations_roundtrip_against_scipy_including_near_pi():
    Rot = pytest.importorskip("scipy.spatial.transform").Rotation
    rng = np.random.default_rng(0)
    axis = rng.normal(size=(3000, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, math.pi, 2000), np.full(250, math.pi - 1e-2),
                             np.full(250, math.pi - 1e-5), np.full(250, math.pi), np.full(250, 1e-7)])
    aa = axis * angles[:, None]
    R_ref = Rot.from_rotvec(aa).as_matrix()
    r6 = rot.axis_angle_to_rot6d(torch.tensor(aa, dtype=torch.float32)).double().numpy()
    assert np.abs(r6 - np.concatenate([R_ref[:, :, 0], R_ref[:, :, 1]], -1)).max() < 1e-5
    back = rot.rot6d_to_axis_angle(torch.tensor(r6, dtype=torch.float32)).double().numpy()
    geodesic_deg = np.degrees((Rot.from_rotvec(back) * Rot.from_rotvec(aa).inv()).magnitude())
    assert geodesic_deg.max() < 1e-3
    assert np.linalg.norm(back, axis=1).max() <= math.pi + 1e-5  # angles in [0, π]
    unique = angles < math.pi - 1e-3  # away from π the axis-angle itself is unique
    assert np.abs(back[unique] - aa[unique]).max() < 1e-5
    # any 6-vector → a rotation (Gram–Schmidt), as an independent Gram–Schmidt gives
    v = rng.normal(size=(500, 6))
    b1 = v[:, :3] / np.linalg.norm(v[:, :3], axis=1, keepdims=True)
    b2 = v[:, 3:] - (b1 * v[:, 3:]).sum(1, keepdims=True) * b1
    b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
    M = rot.rot6d_to_matrix(torch.tensor(v, dtype=torch.float32)).double().numpy()
    assert np.abs(M - np.stack([b1, b2, np.cross(b1, b2)], -1)).max() < 1e-5


def test_params_x0_layout_and_standardisation_inverse():
    Rot = pytest.importorskip("scipy.spatial.transform").Rotation
    rng = np.random.default_rng(1)
    go = rng.normal(size=(16, 3))
    bp = rng.normal(size=(16, 69)) * 0.5
    betas = rng.normal(size=(16, 10)) * 2
    x0 = params_to_x0(torch.tensor(go), torch.tensor(bp), torch.tensor(betas))
    Rg = Rot.from_rotvec(go).as_matrix()
    assert np.abs(x0[:, :6].double().numpy() - np.concatenate([Rg[:, :, 0], Rg[:, :, 1]], -1)).max() < 1e-5
    assert torch.allclose(x0[:, 144:].double(), torch.tensor(betas), atol=1e-6)  # raw betas, last 10
    p = x0_to_params(x0)
    for key, ref in (("global_orient", go), ("body_pose", bp)):
        got = Rot.from_rotvec(p[key].reshape(-1, 3).double().numpy())
        assert np.degrees((got * Rot.from_rotvec(ref.reshape(-1, 3)).inv()).magnitude()).max() < 1e-3
    m = _model()
    z = m.normalize(x0)
    assert torch.allclose(z.double(), (x0.double() - m.x_mean.double()) / m.x_std.double(), atol=1e-5)
    assert torch.allclose(m.denormalize(z), x0, atol=1e-5)
    # set_normalization: per-dimension mean and std (floored) of the training x0
    m.set_normalization(x0)
    assert torch.allclose(m.x_mean, x0.mean(0)) and torch.allclose(m.x_std, x0.std(0).clamp_min(TINY.std_floor))


def test_translation_solve_on_a_body_with_exact_keypoints_is_submillimetre():
    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.camera import project

    body = load_body_model()
    rng = np.random.default_rng(2)
    n = 64
    go = torch.tensor([math.pi, 0.0, 0.0]) + torch.tensor(rng.normal(size=(n, 3)) * 0.3, dtype=torch.float32)
    bp = torch.tensor(rng.normal(size=(n, 69)) * 0.2, dtype=torch.float32)
    betas = torch.tensor(rng.normal(size=(n, 10)), dtype=torch.float32)
    coco = body.coco17(body(go, bp, betas, torch.zeros(n, 3)))
    t_true = np.stack([rng.uniform(-0.5, 0.5, n), rng.uniform(-0.3, 0.3, n), rng.uniform(2.5, 7.5, n)], -1)
    t_true = torch.tensor(t_true, dtype=torch.float32)
    K = torch.tensor([[300.0, 0, 128], [0, 300, 128], [0, 0, 1]]).expand(n, 3, 3)
    uv = project(coco + t_true[:, None], K)
    t = solve_translation(coco, torch.cat([uv, torch.ones(n, 17, 1)], -1), K)
    assert (t - t_true).norm(dim=-1).max() < 1e-3
    # body translation is additive: the body at the solved transl reprojects onto the keypoints
    again = body.coco17(body(go, bp, betas, t))
    assert (project(again, K) - uv).norm(dim=-1).max() < 0.05  # px
    # one visible keypoint: finite and that keypoint is hit exactly; none visible: the (0, 0, 3 m) prior
    one = torch.cat([uv, torch.zeros(n, 17, 1)], -1)
    one[:, 0, 2] = 1
    t1 = solve_translation(coco, one, K)
    assert torch.isfinite(t1).all()
    assert (project(coco + t1[:, None], K)[:, 0] - uv[:, 0]).norm(dim=-1).max() < 1e-2
    t0 = solve_translation(coco, torch.zeros(n, 17, 3), K)
    assert torch.allclose(t0, torch.tensor([0.0, 0.0, 3.0]).expand(n, 3))


# -------------------------------------------------------------------------------- 6. condition normalisation
@pytest.mark.parametrize("scale", [2.0, 0.5, 3.0])
def test_condition_is_invariant_to_image_and_focal_scaling(scale):
    g = torch.Generator().manual_seed(6)
    B = 8
    uv = torch.rand(B, 17, 2, generator=g) * 200 + 20
    conf = (torch.rand(B, 17, generator=g) > 0.3).float()
    conf[:2, 2:] = 0  # inputs with two, and (below) one, visible keypoints
    conf[1, 1] = 0
    kp = torch.cat([uv, conf[..., None]], -1)
    K = torch.tensor([[300.0, 0, 160], [0, 320, 120], [0, 0, 1]]).expand(B, 3, 3).clone()
    kp2, K2 = kp.clone(), K.clone()
    kp2[..., :2] *= scale
    K2[:, :2] *= scale
    a = condition_from_keypoints(kp, K, (320, 240))
    b = condition_from_keypoints(kp2, K2, (320 * scale, 240 * scale))
    assert torch.allclose(a.keypoints, b.keypoints, atol=1e-5) and torch.allclose(a.box, b.box, atol=1e-6)
    # independent normalisation of input 5: box = visible extent padded by 20 %, centred; ray; size/f; share
    k, vis = kp[5], kp[5, :, 2] > 0
    lo, hi = k[vis, :2].min(0).values, k[vis, :2].max(0).values
    centre, size = (lo + hi) / 2, (hi - lo).max() * 1.2
    ref_kp = torch.where(vis[:, None], (k[:, :2] - centre) / (size / 2), torch.zeros(17, 2))
    assert torch.allclose(a.keypoints[5, :, :2], ref_kp, atol=1e-6)
    ray = torch.stack([(centre[0] - 160) / 300, (centre[1] - 120) / 320])
    ref_box = torch.cat([ray, torch.stack([size / math.sqrt(300 * 320), vis.float().mean()])])
    assert torch.allclose(a.box[5], ref_box, atol=1e-6)
