"""Mutation audit of hmrcritic/hmr/diffusion.py (session 37, helper a): tests that kill mutants the suite let live.

Each expected value is worked out by hand from a docstring (diffusion.py, docs/CONTRACTS.md) on a constructed case,
never copied from the code's own output. Tiny models only (d_model 16–32, one layer): the file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrcritic.hmr.diffusion import (
    X_DIM,
    DiffusionConfig,
    HMRDiffusion,
    condition_from_keypoints,
    sample,
)

K640 = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])


def _tiny(prediction: str = "eps", global_cond: bool = True, T: int = 1000, seed: int = 0) -> HMRDiffusion:
    """A tiny model with non-zero output heads (a fresh one predicts exactly zero whatever its inputs)."""
    torch.manual_seed(seed)
    m = HMRDiffusion(DiffusionConfig(d_model=16, layers=1, heads=2, T=T, prediction=prediction,
                                     global_cond=global_cond)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for head in (m.joint_out, m.shape_out):
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.5)
            head.bias.copy_(torch.randn(head.bias.shape, generator=g) * 0.1)
    return m


def _cond(B: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(B, 17, 2, generator=g) * torch.tensor([300.0, 300.0]) + torch.tensor([150.0, 90.0])
    kp = torch.cat([uv, torch.ones(B, 17, 1)], -1)
    return condition_from_keypoints(kp, K640.expand(B, 3, 3), (640, 480))


# ------------------------------------------------------------------------------------------------- training
def test_training_draws_every_timestep_including_t_zero():
    """``loss`` documents t ~ U{0..T-1}: with T = 2 both t = 0 and t = 1 must occur among 64 draws (a draw from
    1..T-1 never trains the last denoising step, the one that sets the final pose)."""
    m = _tiny(T=2)
    cond = _cond(64, seed=3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, X_DIM, generator=g) * 0.3
    eps = torch.randn(64, X_DIM, generator=g)
    with torch.no_grad():
        drawn = m.loss(x0, cond, eps=eps, generator=torch.Generator().manual_seed(1))
        at = [m.loss(x0, cond, t=torch.full((64,), t), eps=eps) for t in (0, 1)]
    assert not torch.allclose(at[0], at[1])  # the two steps are told apart by their loss
    is_t = [torch.isclose(drawn, a, rtol=1e-5, atol=0) for a in at]
    assert bool((is_t[0] | is_t[1]).all())  # every draw is one of the two steps …
    assert int(is_t[0].sum()) > 10 and int(is_t[1].sum()) > 10  # … and both are drawn (64 fair coins)


# ------------------------------------------------------------------------------------------------- denoiser
def test_the_denoiser_is_conditioned_on_the_timestep():
    """An eps-predictor (prediction="eps": the network output is returned as is) sees t through its timestep token:
    the same x_t and condition at t = 10 and t = 900 give other predictions, the same t the same one."""
    m = _tiny("eps")
    cond = _cond(3)
    x = torch.randn(3, X_DIM, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        early = m.predict_eps(x, torch.full((3,), 10), cond)
        late = m.predict_eps(x, torch.full((3,), 900), cond)
        again = m.predict_eps(x, torch.full((3,), 10), cond)
    assert torch.equal(early, again)
    assert (early - late).abs().max() > 1e-3


@pytest.mark.parametrize("global_cond", [True, False])
def test_the_global_condition_path_carries_the_keypoints_to_every_state_token(global_cond):
    """DiffusionConfig.global_cond: an MLP over all keypoint + box features is added to every state token, a direct
    path beside the keypoint tokens. With the keypoint and box tokens silenced (their input layers zeroed), the
    prediction still depends on the keypoints through that path, and only when it is on."""
    m = _tiny("eps", global_cond=global_cond)
    with torch.no_grad():
        for p in list(m.kp_in.parameters()) + list(m.box_in.parameters()):
            p.zero_()
    a, b = _cond(2, seed=1), _cond(2, seed=2)
    x = torch.randn(2, X_DIM, generator=torch.Generator().manual_seed(4))
    t = torch.full((2,), 500)
    with torch.no_grad():
        diff = (m.predict_eps(x, t, a) - m.predict_eps(x, t, b)).abs().max()
    assert (diff > 1e-3) if global_cond else (diff < 1e-6)


# ------------------------------------------------------------------------------------------------- condition
def test_a_single_visible_keypoint_gets_a_box_of_a_quarter_of_the_longer_image_side():
    """person_box: with at most one visible keypoint the box is centred on it and a quarter of the image's longer
    side (640 → 160 px), so its normalised position is (0, 0) and box size / focal = 160 / 500."""
    kp = torch.zeros(1, 17, 3)
    kp[0, 5] = torch.tensor([100.0, 200.0, 1.0])
    c = condition_from_keypoints(kp, K640[None], (640, 480))
    assert torch.allclose(c.box[0], torch.tensor([(100 - 320) / 500, (200 - 240) / 500, 160 / 500, 1 / 17]),
                          atol=1e-6)
    assert torch.allclose(c.keypoints[0, 5], torch.tensor([0.0, 0.0, 1.0]))
    # two visible keypoints: the box is their extent padded by 20 % (240 px apart → 288 px)
    kp[0, 6] = torch.tensor([340.0, 200.0, 1.0])
    c = condition_from_keypoints(kp, K640[None], (640, 480))
    assert torch.allclose(c.box[0, 2], torch.tensor(288 / 500))
    assert torch.allclose(c.keypoints[0, 5, :2], torch.tensor([-240 / 288, 0.0]), atol=1e-6)


def test_the_box_feature_counts_visible_keypoints_not_their_confidence():
    """Condition.box[3] is the share of visible keypoints: 17 keypoints seen with confidence 0.5 are all visible
    (share 1), not half; with 10 of them seen the share is 10/17."""
    g = torch.Generator().manual_seed(0)
    uv = torch.rand(1, 17, 2, generator=g) * 200 + 100
    kp = torch.cat([uv, torch.full((1, 17, 1), 0.5)], -1)
    c = condition_from_keypoints(kp, K640[None], (640, 480))
    assert c.box[0, 3].item() == pytest.approx(1.0)
    kp[0, 10:, 2] = 0
    c = condition_from_keypoints(kp, K640[None], (640, 480))
    assert c.box[0, 3].item() == pytest.approx(10 / 17)


# ------------------------------------------------------------------------------------------------- sampling
class _ToBox(HMRDiffusion):
    """A denoiser whose x0 prediction is, for every dimension, its row's box ray x (an eps chosen to make it so):
    DDIM then ends exactly on that value, so each hypothesis shows which input's condition produced it."""

    def predict_eps(self, x_t, t, cond):
        ab = self.alphas_cumprod[t].unsqueeze(-1)
        target = cond.box[:, :1].expand_as(x_t)
        return (x_t - ab.sqrt() * target) / (1 - ab).sqrt()


@pytest.mark.parametrize("steps", [1, 3])
def test_hypotheses_of_input_b_are_sampled_from_input_b_and_ddim_ends_on_the_x0_prediction(steps):
    """HypothesisGroup arrays are (B, N, …) and rows b·N … b·N+N−1 belong to input b (Condition.repeat_interleave).
    With a denoiser that predicts x0 = the input's box ray x (std 1, mean 0), DDIM with η = 0 ends on that x0 (the
    last step goes to ᾱ = 1), so every hypothesis of input b is that number."""
    m = _ToBox(DiffusionConfig(d_model=16, layers=1, heads=2)).eval()
    B, N = 3, 4
    kp = torch.zeros(B, 17, 3)
    for b, u in enumerate((100.0, 320.0, 540.0)):  # one visible keypoint: box centred on it, ray x = (u − 320)/500
        kp[b, 0] = torch.tensor([u, 240.0, 1.0])
    cond = condition_from_keypoints(kp, K640.expand(B, 3, 3), (640, 480))
    grp = sample(m, cond, num_generations=N, steps=steps, generator=torch.Generator().manual_seed(0),
                 solve_transl=False)
    want = torch.tensor([-220 / 500, 0.0, 220 / 500])[:, None, None].expand(B, N, X_DIM)
    torch.testing.assert_close(grp.x0, want, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------------- sample_to_dir
def _item():
    from types import SimpleNamespace

    kp = np.concatenate([np.random.default_rng(0).uniform(150, 450, (17, 2)), np.ones((17, 1))], 1)
    return SimpleNamespace(keypoints=kp, K=K640.numpy(), image_size=np.array([640.0, 480.0]), sample_id="s")


@pytest.fixture(scope="module")
def body():
    from hmrcritic.hmr.body import load_body_model

    return load_body_model()


def test_sample_to_dir_honours_its_seed(tmp_path, body):
    """``seed`` picks the hypotheses: the same seed writes the same hypotheses.npz, another seed other ones."""
    from hmrcritic.hmr.diffusion import sample_to_dir

    m = _tiny("v")
    x0 = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        sample_to_dir(m, _item(), tmp_path / name, num_generations=2, steps=2, seed=seed, render=False, body=body)
        with np.load(tmp_path / name / "hypotheses.npz") as z:
            x0[name] = z["x0"]
    np.testing.assert_array_equal(x0["a"], x0["b"])
    assert np.abs(x0["a"] - x0["c"]).max() > 1e-3


def test_a_rerun_that_fails_midway_leaves_no_summary_of_the_previous_run(tmp_path, body, monkeypatch):
    """summary.json marks a finished folder: a second run into the same --out that fails after it started writing
    (here: writing its meshes) must not leave the first run's summary beside its new hypotheses.npz."""
    from hmrcritic.hmr import render as R
    from hmrcritic.hmr.diffusion import sample_to_dir

    m = _tiny("v")
    sample_to_dir(m, _item(), tmp_path, num_generations=2, steps=2, seed=1, obj=True, render=False, body=body)
    assert (tmp_path / "summary.json").exists()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(R, "write_obj", broken)
    with pytest.raises(OSError, match="disk full"):
        sample_to_dir(m, _item(), tmp_path, num_generations=2, steps=2, seed=2, obj=True, render=False, body=body)
    assert not (tmp_path / "summary.json").exists()


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field", ["beta_start", "beta_end"])
def test_a_beta_of_exactly_one_is_refused_and_one_just_below_is_kept(field):
    """DiffusionConfig.validate: β must lie in the open interval (0, 1). β = 1 makes 1 − β = 0, so ᾱ_t = 0 from that
    step on and DDIM divides by sqrt(ᾱ_t) = 0 (every hypothesis NaN); 0.5 is a valid (if odd) schedule end."""
    kw = {"beta_start": 1e-4, "beta_end": 0.02, field: 1.0}
    if field == "beta_start":
        kw["beta_end"] = 0.5
    with pytest.raises(ValueError, match=field):
        DiffusionConfig(**kw).validate()
    kw[field] = 0.5
    DiffusionConfig(**kw).validate()
