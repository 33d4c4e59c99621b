"""Review s14 (hmreval): evaluation's reprojection figures when a hypothesis has joints behind the camera, and the
GL error / doctor line for an unsupported PYOPENGL_PLATFORM."""

from __future__ import annotations

import math

import pytest
import torch
from test_render import mask_in_fresh_process

from hmrcritic.hmr import evaluate as E
from hmrcritic.hmr.camera import default_intrinsics, project
from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion


# ---- evaluate: hypotheses with a visible keypoint's joint behind the camera ------------------------------------
@pytest.fixture(scope="module")
def scene(body):
    """Two labelled scenes built in memory (an upright body 3 m in front of a 256² camera, all 17 keypoints
    visible), so the evaluation needs no generated split."""
    B = 2
    go = torch.tensor([[math.pi, 0.0, 0.0]]).expand(B, 3).contiguous()
    bp, be = torch.zeros(B, 69), torch.zeros(B, 10)
    tr = torch.tensor([[0.0, 0.0, 3.0]]).expand(B, 3).contiguous()
    K = default_intrinsics(256, 256).expand(B, 3, 3).contiguous()
    uv = project(body.coco17(body(go, bp, be, tr)), K)
    kp = torch.cat([uv, torch.ones(B, 17, 1)], -1)
    data = {"keypoints": kp, "K": K, "image_size": torch.tensor([[256.0, 256.0]]).expand(B, 2).contiguous(),
            "global_orient": go, "body_pose": bp, "betas": be, "transl": tr}
    return data, B


def _evaluate(monkeypatch, body, scene, depth_of_first: float, N: int = 4) -> dict:
    """evaluate_model with every hypothesis at the label's translation, except hypothesis 0 of scene 0, whose
    root is put at ``depth_of_first`` m."""
    data, B = scene
    monkeypatch.setattr(E, "_load_labelled", lambda split, limit: (data, B))
    real_sample = E.sample

    def placed(*a, **kw):
        g = real_sample(*a, **kw)
        g.transl[:] = torch.tensor([0.0, 0.0, 3.0])
        g.transl[0, 0, 2] = depth_of_first
        return g

    monkeypatch.setattr(E, "sample", placed)
    torch.manual_seed(0)
    model = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2))
    return E.evaluate_model(model, "test", num_generations=N, steps=2, nn_baseline=False, body=body)


def test_evaluate_counts_hypotheses_whose_visible_joints_are_behind_the_camera(monkeypatch, body, scene):
    """`evaluate --split wild --limit 5` reported reproj_mean_px = 3,142,382 px: five of 80 hypotheses (all on
    scene 3) had a visible keypoint's joint at depth ≤ 0, which the projection's depth clamp sends ~1e8 px away.
    Nothing in the report said so; the rate of such hypotheses is now reported beside the mean."""
    N = 4
    res = _evaluate(monkeypatch, body, scene, depth_of_first=-3.0, N=N)
    assert res["reproj_mean_px"] > 1e5  # the swamped mean, unchanged
    assert res["reproj_behind_camera_rate"] == round(1 / (2 * N), 3)  # one hypothesis of 2·N
    text = E.format_report(res)
    assert "behind the camera" in text and f"{1 / (2 * N):.3f}" in text


def test_evaluate_behind_camera_rate_is_zero_for_bodies_in_front(monkeypatch, body, scene):
    res = _evaluate(monkeypatch, body, scene, depth_of_first=3.0)
    assert res["reproj_behind_camera_rate"] == 0.0
    assert res["reproj_mean_px"] < 1e3
    assert "behind the camera" not in E.format_report(res)  # no line where there is nothing to explain


# ---- render / doctor: an unsupported PYOPENGL_PLATFORM ---------------------------------------------------------
def test_gl_error_for_an_unsupported_platform_says_to_fix_the_variable(monkeypatch):
    """With PYOPENGL_PLATFORM=bogus the advice was to install the Mesa EGL libraries, which cannot help:
    pyrender refuses every value but egl and osmesa."""
    from hmrcritic.hmr.render import _gl_error

    monkeypatch.setenv("PYOPENGL_PLATFORM", "bogus")
    msg = str(_gl_error(ValueError("Unsupported PyOpenGL platform: bogus")))
    assert "PYOPENGL_PLATFORM=bogus" in msg
    assert "supports only PYOPENGL_PLATFORM=egl or osmesa: unset it" in msg
    assert "Install the Mesa" not in msg and "apt-get" not in msg  # not the advice to install what is there
    # the supported platforms keep their library advice
    monkeypatch.setenv("PYOPENGL_PLATFORM", "egl")
    assert "libegl1" in str(_gl_error(OSError("libEGL.so.1: cannot open shared object file")))
    monkeypatch.setenv("PYOPENGL_PLATFORM", "osmesa")
    assert "libosmesa6" in str(_gl_error(ImportError("no OSMesa")))


def test_doctor_gl_line_for_an_unsupported_platform(monkeypatch):
    import hmrcritic.hmr.render as R
    from hmrcritic.commands import doctor

    def broken(*a, **kw):  # what pyrender raises for the value (without starting any GL here)
        raise ValueError("Unsupported PyOpenGL platform: EGL")

    monkeypatch.setenv("PYOPENGL_PLATFORM", "EGL")  # pyrender compares exactly: upper case is refused too
    monkeypatch.setattr(R, "self_test", broken)
    res = doctor._render()
    assert res["ok"] is False and res["platform"] == "EGL"
    assert "supports only PYOPENGL_PLATFORM=egl or osmesa: unset it" in res["error"]
    assert "Install the Mesa" not in res["error"]


def test_gl_error_for_an_egl_device_id_that_does_not_exist():
    """EGL_DEVICE_ID=7 on a machine with fewer EGL devices: pyrender raises "Invalid device ID (7)" and the
    advice was to install the Mesa EGL libraries (already there: device 0 renders)."""
    line, err = mask_in_fresh_process(PYOPENGL_PLATFORM="egl", EGL_DEVICE_ID="999")
    assert line.startswith("ERR"), (line, err)
    if "Invalid device ID" not in line:
        pytest.skip(f"this machine's EGL fails before the device index is read: {line[:200]}")
    assert "EGL_DEVICE_ID='999' names no EGL device" in line and "Install the Mesa" not in line
    assert "\n" not in line
