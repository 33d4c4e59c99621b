"""Review s13 (hmr): shape checks that used to broadcast silently, NaN handling in the condition and the
critic-selection hook, and empty hypothesis groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_evaluate import tiny_splits  # noqa: F401 — the same tiny splits fixture

from hmrcritic.errors import InputError
from hmrcritic.hmr import metrics as M
from hmrcritic.hmr.diffusion import (
    DiffusionConfig,
    HMRDiffusion,
    condition_from_keypoints,
    sample,
)


@pytest.fixture()
def tiny_model():
    torch.manual_seed(0)
    m = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2))
    with torch.no_grad():
        m.joint_out.weight.normal_(0, 0.05)
    return m.eval()


def _keypoints(B: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    kp = torch.cat([80 + 100 * torch.rand(B, 17, 2, generator=g), torch.ones(B, 17, 1)], -1)
    K = torch.tensor([[300.0, 0, 128], [0, 300.0, 128], [0, 0, 1]]).expand(B, 3, 3)
    return kp, K


# ------------------------------------------------------------------------------------------------ metrics
def test_mpjpe_refuses_gt_without_the_hypothesis_dim():
    """(B,N,24,3) hypotheses against a (B,24,3) ground truth lined gt's batch up with the hypotheses: with
    B == N the figure was silently wrong (each hypothesis compared with another scene's body)."""
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(3, 24, 3, generator=g)
    pred = gt[:, None].expand(3, 3, 24, 3).clone()  # every hypothesis equals its own scene: error 0
    right = M.mpjpe(pred, gt[:, None])
    assert torch.allclose(right, torch.zeros(3, 3), atol=1e-3)
    for fn in (M.mpjpe, M.pa_mpjpe):
        with pytest.raises(ValueError, match="differ in rank"):
            fn(pred, gt)
    # a single (J,3) skeleton against a batch is unambiguous and still broadcasts
    assert M.mpjpe(pred[0], gt[0]).shape == (3,)


def test_pve_refuses_roots_without_the_hypothesis_dim():
    g = torch.Generator().manual_seed(1)
    gv = torch.randn(2, 1, 50, 3, generator=g)
    pv = gv.expand(2, 2, 50, 3).clone()
    ok = M.pve(pv, gv, pv[..., 0, :], gv[..., 0, :])
    assert torch.allclose(ok, torch.zeros(2, 2), atol=1e-3)
    with pytest.raises(ValueError, match="pred_root"):
        M.pve(pv, gv, pv[:, 0, 0, :], gv[..., 0, :])  # (B,3) root under (B,N,V,3) vertices


def test_group_metrics_of_groups_without_hypotheses_are_nan():
    out = M.group_metrics(torch.zeros(2, 0), reduce=False)
    assert set(out) == {"mean", "best", "worst", "median"}
    assert all(v.shape == (2,) and torch.isnan(v).all() for v in out.values())
    assert all(math.isnan(v) for v in M.group_metrics(torch.zeros(2, 0)).values())


# ---------------------------------------------------------------------------------------------- diffusion
def test_nan_confidence_is_a_missing_keypoint(tiny_model):
    """A NaN confidence reached the network (clamp keeps NaN) and made every hypothesis NaN."""
    kp, K = _keypoints()
    kp[0, 3, 2] = float("nan")
    cond = condition_from_keypoints(kp, K, (256, 256))
    assert torch.isfinite(cond.keypoints).all() and torch.isfinite(cond.box).all()
    assert cond.keypoints[0, 3, 2] == 0 and cond.keypoints_px[0, 3, 2] == 0
    group = sample(tiny_model, cond, num_generations=2, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(group.x0).all() and torch.isfinite(group.transl).all()


def test_sample_with_one_K_solves_the_same_translation(tiny_model, body):
    """A (3,3) K was repeat_interleave'd row-wise, so the translation solve read fy = 0 (ty came out 0)."""
    kp, K = _keypoints(2)
    cond = condition_from_keypoints(kp, K, (256, 256))
    kw = dict(num_generations=3, steps=2, body=body)
    ref = sample(tiny_model, cond, generator=torch.Generator().manual_seed(0), **kw)
    one = sample(tiny_model, cond, K=K[0], keypoints=kp, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.allclose(one.transl, ref.transl, atol=1e-5)
    one = sample(tiny_model, cond, K=K[:1], keypoints=kp, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.allclose(one.transl, ref.transl, atol=1e-5)  # (1,3,3) serves every input too
    with pytest.raises(InputError, match="K must have shape"):
        sample(tiny_model, cond, K=torch.cat([K, K[:1]]), keypoints=kp, **kw)
    with pytest.raises(InputError, match="keypoints must have shape"):
        sample(tiny_model, cond, keypoints=kp[:, :5], **kw)


# ----------------------------------------------------------------------------------------------- evaluate
def test_evaluate_select_fn_nan_score_never_wins(tiny_splits, tiny_model, body):  # noqa: F811
    """torch's argmax picks a NaN score, so a hypothesis the critic could not score was reported as its top-1."""
    from hmrcritic.hmr.evaluate import evaluate_model

    kw = dict(split="test", num_generations=3, steps=2, limit=3, nn_baseline=False, body=body)

    def nan_first(ctx):
        B, N = ctx["joints"].shape[:2]
        s = torch.zeros(B, N)
        s[:, 0] = float("nan")
        s[:, 2] = 1.0
        return s

    def pick(i):
        def fn(ctx):
            return torch.full((ctx["joints"].shape[0],), i)

        return fn

    res = evaluate_model(tiny_model, select_fn=nan_first, **kw)
    want = evaluate_model(tiny_model, select_fn=pick(2), **kw)
    assert res["pa_mpjpe_selected_mm"] == want["pa_mpjpe_selected_mm"]
    with pytest.raises(ValueError, match="outside 0..2"):
        evaluate_model(tiny_model, select_fn=pick(3), **kw)
    with pytest.raises(ValueError, match="select_fn must return"):
        evaluate_model(tiny_model, select_fn=lambda ctx: np.zeros((3, 3, 1)), **kw)


def test_project_refuses_K_without_the_hypothesis_dim():
    """A (B,3,3) K under (B,N,J,3) points took batch b's focal for hypothesis b (silently, when B == N)."""
    from hmrcritic.hmr.camera import project

    K = torch.tensor([[[100.0, 0, 10], [0, 100.0, 20], [0, 0, 1]], [[500.0, 0, 50], [0, 500.0, 60], [0, 0, 1]]])
    pts = torch.tensor([0.1, -0.2, 2.0]).expand(2, 2, 4, 3)
    good = project(pts, K[:, None])
    assert torch.allclose(good[0], project(pts[0], K[0]).expand(2, 4, 2))
    assert torch.allclose(good[1], project(pts[1], K[1]).expand(2, 4, 2))
    with pytest.raises(ValueError, match="leading dims"):
        project(pts, K)


# ---------------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("content", [b"{bad", b"[]", b"\xff\xfe"])
def test_damaged_manifest_says_how_to_recover(tmp_path, content):
    """A damaged shard or labels file said 'regenerate the split (delete FOLDER)'; a damaged manifest only said
    it was unreadable, and load_split does not regenerate over it."""
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.data import load_split

    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "manifest.json").write_bytes(content)
    with pytest.raises(AssetError, match=r"manifest\.json: .*regenerate the split \(delete .*test\)"):
        load_split("test", root=tmp_path)


# ------------------------------------------------------------------------------------------------- anatomy
def test_is_implausible_of_an_empty_batch():
    from hmrcritic.hmr.anatomy import forward_kinematics, is_implausible

    assert is_implausible(torch.zeros(0, 69), torch.zeros(0, 24, 3)).shape == (0,)
    bp = torch.zeros(1, 69)
    assert is_implausible(bp, forward_kinematics(torch.zeros(1, 3), bp)).tolist() == [False]


def test_body_model_refuses_betas_without_the_hypothesis_dim():
    """(B,10) betas under (B,N,69) poses broadcast B against N: scene n's shape went to hypothesis n."""
    from hmrcritic.hmr.body import load_body_model

    body = load_body_model()
    B = N = 2
    poses = torch.zeros(B, N, 69)
    with pytest.raises(ValueError, match="betas"):
        body(torch.zeros(B, N, 3), poses, torch.randn(B, 10))
    a = body(torch.zeros(B, N, 3), poses, torch.randn(B, 10)[:, None])  # the way that says what it means
    b = body(torch.zeros(B, N, 3), poses, torch.zeros(1, 10))  # a single body shape still serves all
    assert a.joints.shape == b.joints.shape == (B, N, 24, 3)


def test_renders_from_several_threads_share_the_gl_context():
    """pyrender makes its EGL context current at each render and never releases it (its make_uncurrent is a
    no-op), so a render from a second thread failed with EGL_BAD_ACCESS and the process could not render again:
    critique_groups(workers=4) with rendering lost 5 of 6 groups."""
    import threading

    from hmrcritic.hmr.render import get_renderer

    r = get_renderer()
    v = np.array([[-0.2, -0.2, 2.0], [0.2, -0.2, 2.0], [0.0, 0.2, 2.0]], np.float32)
    f = np.array([[0, 1, 2]])
    K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    masks, errors = [], []

    def draw():
        try:
            masks.append(r.mask(v, f, K, (64, 64)))
        except Exception as exc:  # noqa: BLE001 — the test reports what the thread saw
            errors.append(exc)

    for _ in range(3):  # one after another, each on its own thread
        t = threading.Thread(target=draw)
        t.start()
        t.join()
    threads = [threading.Thread(target=draw) for _ in range(4)]  # and at once (the lock takes turns)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(masks) == 7 and all(m.sum() > 0 for m in masks)
    assert r.mask(v, f, K, (64, 64)).sum() == masks[0].sum()  # and the main thread still renders


def test_a_body_model_file_cannot_reach_eval_through_a_dotted_name(tmp_path):
    """The restricted unpickler let any name through from numpy.dtypes; protocol 4 follows a dotted name
    attribute by attribute, so "numpy.dtypes" + "__builtins__.get" reached eval and a 116-byte file ran code."""
    import pickle

    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.body import load_body_model

    def s(x: str) -> bytes:
        b = x.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(b)]) + b

    marker = tmp_path / "ran"
    payload = (pickle.PROTO + b"\x04" + s("numpy.dtypes") + s("__builtins__.get") + pickle.STACK_GLOBAL
               + s("eval") + pickle.TUPLE1 + pickle.REDUCE
               + s(f"__import__('pathlib').Path({str(marker)!r}).write_text('x')") + pickle.TUPLE1 + pickle.REDUCE
               + pickle.STOP)
    evil = tmp_path / "smpl.pkl"
    evil.write_bytes(payload)
    with pytest.raises(AssetError):
        load_body_model(evil)
    assert not marker.exists()
