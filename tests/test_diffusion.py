"""The diffusion HMR model: parameterisation, condition, sampler, translation solve, checkpoints, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmrcritic.errors import AssetError
from hmrcritic.hmr.diffusion import (
    X_DIM,
    Condition,
    DiffusionConfig,
    HMRDiffusion,
    condition_from_keypoints,
    ddim_timesteps,
    load_model,
    params_to_x0,
    sample,
    save_model,
    solve_translation,
    x0_to_params,
)
from hmrcritic.hmr.train import TrainConfig, TrainData, augment_keypoints, loss_curve, train_base

TINY = DiffusionConfig(d_model=32, layers=1, heads=2)


def _K(B, f=800.0, cx=320.0, cy=240.0):
    K = torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    return K.expand(B, 3, 3).clone()


def _cond(B, seed=0, occlude=0.2):
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(B, 17, 2, generator=g) * torch.tensor([300.0, 400.0]) + torch.tensor([150.0, 40.0])
    conf = (torch.rand(B, 17, generator=g) > occlude).float()
    return condition_from_keypoints(torch.cat([uv, conf[..., None]], -1), _K(B), (640, 480))


def _random_params(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "global_orient": rng.normal(size=(n, 3)).astype(np.float32),
        "body_pose": (rng.normal(size=(n, 69)) * 0.3).astype(np.float32),
        "betas": rng.normal(size=(n, 10)).astype(np.float32),
    }


def _tiny_data(n=48, seed=0):
    """Pose-correlated keypoints so the condition carries information (random projection of the pose)."""
    p = _random_params(n, seed)
    rng = np.random.default_rng(seed + 1)
    x0 = params_to_x0(**{k: torch.as_tensor(v) for k, v in p.items()}).numpy()
    proj = rng.normal(size=(X_DIM, 34)) * 0.1
    uv = 320 + 100 * np.tanh(x0 @ proj).reshape(n, 17, 2)
    kp = np.concatenate([uv, np.ones((n, 17, 1))], -1)
    K = np.tile(_K(1)[0].numpy(), (n, 1, 1))
    return TrainData.from_arrays({**p, "keypoints": kp, "K": K, "image_size": np.tile([640, 480], (n, 1))})


def test_params_x0_roundtrip():
    p = {k: torch.as_tensor(v) for k, v in _random_params(16).items()}
    p["global_orient"] = p["global_orient"].clamp(-1.5, 1.5)  # stay below π so axis-angle is unique
    x0 = params_to_x0(**p)
    assert x0.shape == (16, X_DIM) == (16, HMRDiffusion.X_DIM)
    back = x0_to_params(x0)
    assert torch.allclose(params_to_x0(**back), x0, atol=1e-5)
    assert torch.allclose(back["betas"], p["betas"])
    # leading dims are kept
    assert x0_to_params(x0.reshape(4, 4, X_DIM))["body_pose"].shape == (4, 4, 69)


def test_condition_is_translation_and_scale_invariant():
    c1 = _cond(3)
    kp = c1.keypoints_px.clone()
    kp[..., :2] = kp[..., :2] * 0.5 + 20  # shrink and shift the person inside the image
    c2 = condition_from_keypoints(kp, _K(3), (640, 480))
    assert torch.allclose(c1.keypoints, c2.keypoints, atol=1e-5)
    assert not torch.allclose(c1.box, c2.box)  # the box token keeps where/how big the person is
    assert c1.keypoints[..., :2].abs().max() <= 1.0
    # keypoints outside the image count as missing
    kp[0, 3, :2] = torch.tensor([-5.0, 10.0])
    kp[0, 3, 2] = 1.0
    assert condition_from_keypoints(kp, _K(3), (640, 480)).keypoints[0, 3, 2] == 0


def test_predict_eps_and_loss_shapes():
    torch.manual_seed(0)
    m = HMRDiffusion(TINY)
    cond = _cond(5)
    x0 = params_to_x0(**{k: torch.as_tensor(v) for k, v in _random_params(5).items()})
    t = torch.tensor([0, 10, 500, 998, 999])
    eps = torch.randn(5, X_DIM)
    xt = m.q_sample(x0, t, eps)
    assert m.predict_eps(xt, t, cond).shape == (5, X_DIM)
    assert m.loss(x0, cond).shape == (5,)
    plain, weighted = m.loss(x0, cond, t=t, eps=eps), m.loss(x0, cond, t=t, eps=eps, snr_gamma=5.0)
    assert (weighted <= plain + 1e-7).all() and weighted[0] < 0.5 * plain[0]  # Min-SNR damps low-noise steps
    assert torch.allclose(weighted[-2:], plain[-2:])  # and leaves the noisy ones (SNR < γ) alone
    assert m.alphas_cumprod.shape == (1000,) and m.num_timesteps == 1000
    # linear schedule like DDPM: beta_1 = 1e-4, beta_T = 0.02
    assert math.isclose(float(m.betas[0]), 1e-4, rel_tol=1e-4) and math.isclose(
        float(m.betas[-1]), 0.02, rel_tol=1e-4
    )


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1).tolist() == [999]
    ts = ddim_timesteps(1000, 10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10 and (ts[:-1] > ts[1:]).all()


def test_sample_shapes_seeds_and_one_step():
    torch.manual_seed(0)
    m = HMRDiffusion(TINY).eval()
    with torch.no_grad():  # non-zero heads so samples depend on the condition
        m.joint_out.weight.normal_(0, 0.1)
    cond = _cond(3)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = sample(m, cond, num_generations=4, steps=3, generator=g(1), solve_transl=False)
    b = sample(m, cond, num_generations=4, steps=3, generator=g(1), solve_transl=False)
    c = sample(m, cond, num_generations=4, steps=3, generator=g(2), solve_transl=False)
    assert a.global_orient.shape == (3, 4, 3) and a.body_pose.shape == (3, 4, 69)
    assert a.betas.shape == (3, 4, 10) and a.transl.shape == (3, 4, 3) and a.x0.shape == (3, 4, X_DIM)
    assert torch.equal(a.x0, b.x0)
    assert not torch.allclose(a.x0, c.x0)
    one = sample(m, cond, num_generations=2, steps=1, generator=g(0), solve_transl=False)
    assert torch.isfinite(one.x0).all()
    stoch = sample(m, cond, num_generations=2, steps=5, eta=1.0, generator=g(0), solve_transl=False)
    assert torch.isfinite(stoch.x0).all()
    # B·N batching: rows b·N … b·N+N−1 are input b's hypotheses (the noise drawn depends on the batch
    # composition, so the same input alone and in a batch gives other hypotheses; same x_T → same output)
    solo = sample(m, cond.index(slice(0, 1)), num_generations=4, steps=3, generator=g(1), solve_transl=False)
    assert solo.x0.shape == (1, 4, X_DIM)


def test_sample_solves_translation_with_body_model():
    body_mod = pytest.importorskip("hmrcritic.hmr.body")
    body = body_mod.load_body_model()
    torch.manual_seed(0)
    m = HMRDiffusion(TINY).eval()
    cond = _cond(2)
    grp = sample(m, cond, num_generations=3, steps=2, generator=torch.Generator().manual_seed(0), body=body)
    assert grp.transl.shape == (2, 3, 3) and torch.isfinite(grp.transl).all()


def test_sample_to_dir_writes_one_run_and_refuses_a_broken_model(tmp_path):
    """A smaller -n into the same folder leaves no meshes of the last run; NaN weights write nothing."""
    from types import SimpleNamespace

    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.diffusion import sample_to_dir

    body = load_body_model()
    torch.manual_seed(0)
    m = HMRDiffusion(TINY).eval()
    kp = np.concatenate([np.random.default_rng(0).uniform(150, 450, (17, 2)), np.ones((17, 1))], 1)
    item = SimpleNamespace(keypoints=kp, K=_K(1)[0].numpy(), image_size=np.array([640.0, 480.0]), sample_id="s")
    sample_to_dir(m, item, tmp_path, num_generations=3, steps=2, obj=True, render=False, body=body)
    sample_to_dir(m, item, tmp_path, num_generations=2, steps=2, obj=True, render=False, body=body)
    assert sorted(p.name for p in tmp_path.glob("hyp_*.obj")) == ["hyp_00.obj", "hyp_01.obj"]
    with torch.no_grad():
        next(m.parameters()).fill_(float("nan"))
    with pytest.raises(AssetError, match="non-finite"):
        sample_to_dir(m, item, tmp_path / "nan", num_generations=2, steps=2, obj=True, render=False, body=body)
    assert not (tmp_path / "nan" / "hypotheses.npz").exists()


def test_solve_translation_recovers_known_translation():
    g = torch.Generator().manual_seed(0)
    B, N, J = 4, 3, 17
    X = torch.randn(B, N, J, 3, generator=g) * 0.4
    t_true = torch.tensor([0.3, -0.2, 4.0]) + torch.randn(B, N, 3, generator=g) * torch.tensor(
        [0.5, 0.5, 1.0]
    )
    K = _K(B)
    P = (X + t_true[..., None, :]) @ K[:, None].transpose(-1, -2)
    uv = P[..., :2] / P[..., 2:]
    conf = torch.ones(B, N, J)
    conf[..., :5] = 0  # missing keypoints: their (garbage) positions must not matter
    uv[..., :5, :] = 1e4
    t = solve_translation(X, torch.cat([uv, conf[..., None]], -1), K)
    assert torch.allclose(t, t_true, atol=1e-3)
    # a body whose best fit would sit behind the camera is kept in front of it
    flipped = solve_translation(-X, torch.cat([uv, conf[..., None]], -1), K, min_depth=0.5)
    assert (flipped[..., 2] >= 0.5).all() and torch.isfinite(flipped).all()
    # no visible keypoint at all: falls back to the prior instead of a singular solve
    t0 = solve_translation(X[:, 0], torch.zeros(B, J, 3), K)
    assert torch.isfinite(t0).all()


def test_checkpoint_roundtrip_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    m = HMRDiffusion(TINY)
    p = save_model(m, tmp_path / "m.pt", extra={"note": "x"})
    m2 = load_model(p)
    assert m2.config == TINY and m2.checkpoint_extra == {"note": "x"}
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])

    with pytest.raises(AssetError, match="not found.*missing.pt"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(AssetError, match="is a folder; give the .pt file .it holds m.pt"):  # not "not found"
        load_model(tmp_path)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(AssetError, match="corrupt.pt"):
        load_model(bad)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(p.read_bytes()[:200])
    with pytest.raises(AssetError, match="truncated.pt"):
        load_model(truncated)
    # mismatched: weights of another architecture under this config
    payload = torch.load(p, weights_only=True)
    payload["state_dict"] = HMRDiffusion(DiffusionConfig(d_model=64, layers=1, heads=2)).state_dict()
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(AssetError, match="do not match.*mismatch.pt"):
        load_model(tmp_path / "mismatch.pt")
    payload = torch.load(p, weights_only=True)
    payload["config"]["no_such_field"] = 1
    torch.save(payload, tmp_path / "badcfg.pt")
    with pytest.raises(AssetError, match="badcfg.pt"):
        load_model(tmp_path / "badcfg.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(AssetError, match="foreign.pt"):
        load_model(tmp_path / "foreign.pt")


def test_augmentation_only_removes_or_jitters():
    d = _tiny_data(32)
    cfg = TrainConfig(aug_drop=0.3, aug_limb=1.0)
    kp = augment_keypoints(d.keypoints, d.image_size, cfg, torch.Generator().manual_seed(0))
    assert kp.shape == d.keypoints.shape
    assert ((kp[..., 2] > 0) <= (d.keypoints[..., 2] > 0)).all()  # never adds a keypoint
    assert (kp[..., 2] == 0).any() and ((kp[..., 2] > 0).sum(1) >= 4).all()
    same = augment_keypoints(d.keypoints, d.image_size, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(kp, same)


def _fixed_loss(model, data):
    g = torch.Generator().manual_seed(123)
    t = torch.randint(0, 1000, (len(data),), generator=g)
    eps = torch.randn(len(data), X_DIM, generator=g)
    cond = condition_from_keypoints(data.keypoints, data.K, data.image_size)
    with torch.no_grad():
        return float(model.loss(data.x0, cond, t=t, eps=eps, weighting="v").mean())  # the recipe's objective


def test_tiny_training_lowers_loss_and_resume_is_exact(tmp_path):
    data = _tiny_data(48)
    cfg = TrainConfig(
        steps=60, batch_size=16, warmup=5, lr=3e-3, log_every=10, ckpt_every=30, threads=1, model=TINY
    )
    path = train_base(cfg, tmp_path / "full", data=data)
    model = load_model(path)
    untrained = HMRDiffusion(TINY)
    untrained.set_normalization(data.x0)
    before, after = _fixed_loss(untrained, data), _fixed_loss(model, data)
    assert after < before - 0.01, (before, after)  # deterministic (seeded, one thread)
    log = [r["loss"] for r in loss_curve(tmp_path / "full")]
    assert len(log) == 6 and log[-1] < log[0]
    assert model.checkpoint_extra["recipe"]["steps"] == 60 and model.checkpoint_extra["seed"] == 0

    # a run interrupted after 30 steps and resumed ends where the uninterrupted run ended
    assert train_base(cfg, tmp_path / "resumed", data=data, stop_at=30).name == "state.pt"
    assert not (tmp_path / "resumed" / "model.pt").exists()
    resumed = load_model(train_base(cfg, tmp_path / "resumed", data=data))
    for k, v in model.state_dict().items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-5), k
    # its log is the uninterrupted run's, every record intact (rewritten on resume, checksums kept)
    assert [r["step"] for r in loss_curve(tmp_path / "resumed")] == [r["step"] for r in loss_curve(tmp_path / "full")]


def test_a_log_left_before_the_first_checkpoint_is_not_continued(tmp_path):
    """A run killed before its first checkpoint left log records but no state: the next run starts at step 0 and
    must not append to them (the log read [1..5, 1..8] before)."""
    from hmrcritic.io import append_jsonl

    data = _tiny_data(16)
    cfg = TrainConfig(steps=4, batch_size=8, warmup=1, log_every=1, ckpt_every=4, threads=1, model=TINY)
    for step in (1, 2, 3):
        append_jsonl(tmp_path / "log.jsonl", {"step": step, "loss": 9.9})
    train_base(cfg, tmp_path, data=data)
    assert [r["step"] for r in loss_curve(tmp_path)] == [1, 2, 3, 4]
    assert all(r["loss"] != 9.9 for r in loss_curve(tmp_path))


def test_resume_refuses_a_different_recipe(tmp_path):
    data = _tiny_data(16)
    cfg = TrainConfig(steps=4, batch_size=8, warmup=1, log_every=2, ckpt_every=2, threads=1, model=TINY)
    train_base(cfg, tmp_path, data=data)
    with pytest.raises(AssetError, match="different training config"):
        train_base(TrainConfig(**{**cfg.__dict__, "seed": 1}), tmp_path, data=data)


def test_condition_helpers():
    c = _cond(2)
    r = c.repeat_interleave(3)
    assert (
        len(r) == 6
        and torch.equal(r.keypoints[0], r.keypoints[2])
        and torch.equal(r.keypoints[3], c.keypoints[1])
    )
    assert isinstance(c.index(slice(0, 1)), Condition) and len(c.index(slice(0, 1))) == 1


def test_keypoint_guidance_lowers_reprojection_energy():
    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.diffusion import reprojection_energy

    body = load_body_model()
    torch.manual_seed(0)
    m = HMRDiffusion(TINY).eval()
    cond = _cond(2, occlude=0.0)
    kw = dict(num_generations=3, steps=3, body=body)
    plain = sample(m, cond, generator=torch.Generator().manual_seed(0), **kw)
    guided = sample(m, cond, generator=torch.Generator().manual_seed(0), guidance=30.0, **kw)
    energy = reprojection_energy(body, cond.keypoints_px.repeat_interleave(3, 0), cond.K.repeat_interleave(3, 0))
    e_plain = energy(plain.x0.reshape(-1, X_DIM)).mean()
    e_guided = energy(guided.x0.reshape(-1, X_DIM)).mean()
    assert e_guided < e_plain
