"""Review s13 (body): rotations, anatomy, pose sampling, TrainConfig validation and the mannequin's SMPL layout.

Every fix here is limited to invalid input (valid input gives bitwise the same results as before)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmrcritic.errors import InputError
from hmrcritic.hmr import anatomy, poses, rotations
from hmrcritic.hmr.train import TrainConfig, _lr_at


# ------------------------------------------------------------------------------------------------ rotations
@pytest.mark.parametrize("order", ["xyz", "XY", "XYW", "ABC", "XYZX"])
def test_euler_to_matrix_refuses_unknown_axis_letters(order):
    # "xyz" used to build Rz·Rz·Rz (any letter but X/Y read as Z) without a word
    with pytest.raises(ValueError, match="order"):
        rotations.euler_to_matrix(torch.tensor([0.3, 0.2, 0.1]), order)


def test_euler_to_matrix_other_orders_still_compose_per_axis():
    a = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    zyx = rotations.euler_to_matrix(a, "ZYX")
    rz = rotations.euler_to_matrix(torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64))
    ry = rotations.euler_to_matrix(torch.tensor([0.0, -0.2, 0.0], dtype=torch.float64))
    rx = rotations.euler_to_matrix(torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(zyx, rz @ ry @ rx, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("angle", [0.0, 1e-10, 1e-6, 0.5, math.pi - 1e-3, math.pi])
def test_axis_angle_matrix_round_trip_at_edges(dtype, angle):
    axis = torch.nn.functional.normalize(torch.tensor([[0.3, -0.8, 0.5], [1.0, 0.0, 0.0]], dtype=dtype), dim=-1)
    m = rotations.axis_angle_to_matrix(axis * angle)
    assert m.dtype == dtype
    eye = torch.eye(3, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(m @ m.transpose(-1, -2), eye.expand_as(m), atol=tol)
    back = rotations.matrix_to_axis_angle(m)
    assert torch.allclose(rotations.axis_angle_to_matrix(back), m, atol=10 * tol)
    six = rotations.matrix_to_rot6d(m)
    assert six.shape == (2, 6) and torch.allclose(rotations.rot6d_to_matrix(six), m, atol=10 * tol)


def test_rotation_shapes_and_gradient_at_zero():
    assert rotations.axis_angle_to_matrix(torch.zeros(3)).shape == (3, 3)
    assert rotations.matrix_to_axis_angle(torch.eye(3).expand(2, 5, 3, 3)).shape == (2, 5, 3)
    assert rotations.rot6d_to_matrix(torch.randn(0, 4, 6)).shape == (0, 4, 3, 3)
    aa = torch.zeros(3, requires_grad=True)
    rotations.axis_angle_to_matrix(aa)[0, 1].backward()  # R ≈ I + [aa]x: dR01/daz = -1
    assert torch.allclose(aa.grad, torch.tensor([0.0, 0.0, -1.0]))


# ------------------------------------------------------------------------------------------------ anatomy
def test_anatomy_refuses_a_full_smpl_pose_instead_of_recutting_it():
    # (23,72): 23 poses with global orientation first; reshape(-1,23,3) made 24 wrong "poses" of it
    full = torch.zeros(23, 72)
    with pytest.raises(ValueError, match="body_pose"):
        anatomy.joint_limit_violation(full)
    with pytest.raises(ValueError, match="body_pose"):
        anatomy.hyperextension(full)


def test_anatomy_accepts_the_documented_layouts_unchanged():
    torch.manual_seed(0)
    bp = torch.randn(3, 69) * 0.5
    ref = anatomy.joint_limit_violation(bp)
    assert torch.equal(anatomy.joint_limit_violation(bp.reshape(3, 23, 3)), ref)
    assert anatomy.joint_limit_violation(bp[0]).shape == (1, 23)
    assert anatomy.hyperextension(bp.reshape(3, 23, 3)).shape == (3, 4)


def test_is_implausible_single_pose_and_grouped_batch():
    # one (69,) pose: the measures accept it, but flatten(1) raised IndexError
    assert anatomy.is_implausible(torch.zeros(69)).tolist() == [False]
    bad = torch.zeros(2, 3, 69)
    bad[1, 2, 5] = float("nan")
    assert anatomy.is_implausible(bad).tolist() == [False, False, False, False, False, True]
    assert anatomy.is_implausible(torch.zeros(0, 69), torch.zeros(0, 24, 3)).shape == (0,)


def test_anatomy_left_right_symmetric():
    names = anatomy.BODY_JOINT_NAMES
    swap = [names.index(n.replace("left_", "T").replace("right_", "left_").replace("T", "right_"))
            if n.startswith(("left_", "right_")) else i for i, n in enumerate(names)]
    torch.manual_seed(1)
    bp = torch.randn(64, 69, dtype=torch.float64) * 0.6
    mirrored = (bp.reshape(-1, 23, 3)[:, swap] * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)).reshape(-1, 69)
    v, vm = anatomy.joint_limit_violation(bp), anatomy.joint_limit_violation(mirrored)[:, swap]
    assert torch.allclose(v, vm, atol=1e-3)
    h, hm = anatomy.hyperextension(bp), anatomy.hyperextension(mirrored)[:, [1, 0, 3, 2]]
    assert torch.allclose(h, hm, atol=1e-9)


# ------------------------------------------------------------------------------------------------ poses
@pytest.mark.parametrize("bad", [["jumping"], [-1], [6], ["walking", 99]])
def test_sample_poses_refuses_unknown_categories(bad):
    # -1 used to draw "lying" poses labelled category -1; a typo raised "tuple.index(x): x not in tuple"
    with pytest.raises(ValueError, match="categor"):
        poses.sample_poses(3, 0, categories=bad)


def test_sample_poses_refuses_negative_n():
    with pytest.raises(ValueError, match="n must be"):
        poses.sample_poses(-1, 0)


def test_sample_poses_deterministic_and_categories_by_name_or_index():
    a = poses.sample_poses(6, 3, categories=["sitting", 5])
    b = poses.sample_poses(6, 3, categories=[2, "lying"])
    for k in a:
        assert torch.equal(a[k], b[k])
    assert set(a["category"].tolist()) <= {2, 5}
    assert a["body_pose"].shape == (6, 69) and a["body_pose"].dtype == torch.float32
    assert poses.sample_poses(0, 0)["body_pose"].shape == (0, 69)


# ------------------------------------------------------------------------------------------------ TrainConfig
@pytest.mark.parametrize(
    "kw",
    [
        {"grad_clip": -1.0},  # clip_grad_norm_ with a negative max_norm flips the gradient: training goes uphill
        {"grad_clip": 0.0},
        {"grad_clip": float("nan")},
        {"ema": 1.5},
        {"ema": -0.1},
        {"weight_decay": -0.01},
        {"aug_drop": 1.5},
        {"aug_limb": -0.2},
        {"aug_jitter": float("nan")},
        {"aug_conf": -0.1},
        {"snr_gamma": 0.0},
        {"loss_weighting": "x0"},
        {"lr": 1e-4, "min_lr": 1e-3},
    ],
)
def test_train_config_refuses_out_of_range_values(kw):
    with pytest.raises(InputError, match="train-base"):
        TrainConfig(**kw)


def test_negative_grad_clip_really_reverses_gradients():
    # the reason grad-clip ≤ 0 is refused (a torch fact, checked here so the comment stays true)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 10.0)
    torch.nn.utils.clip_grad_norm_([p], -1.0)
    assert (p.grad < 0).all()


def test_train_config_defaults_and_edges_still_valid():
    cfg = TrainConfig()
    assert TrainConfig.from_dict(
        {k: v for k, v in cfg.__dict__.items() if k != "model"} | {"model": {}}
    ) == cfg
    TrainConfig(ema=0.0, aug_drop=0.0, aug_limb=1.0, aug_jitter=0.0, aug_conf=0.0, weight_decay=0.0, snr_gamma=5.0,
                min_lr=1e-3, lr=1e-3, loss_weighting="eps")


def test_lr_schedule_edges():
    one = TrainConfig(steps=1, warmup=0)
    assert _lr_at(0, one) == pytest.approx(one.lr)
    cfg = TrainConfig(steps=100, warmup=10)
    assert _lr_at(0, cfg) == pytest.approx(cfg.lr / 10)
    assert _lr_at(10, cfg) == pytest.approx(cfg.lr)
    assert _lr_at(100, cfg) == pytest.approx(cfg.min_lr)
    lrs = [_lr_at(s, cfg) for s in range(100)]
    assert all(math.isfinite(x) and cfg.min_lr <= x <= cfg.lr for x in lrs)


# ------------------------------------------------------------------------------------------------ mannequin
def test_mannequin_is_a_valid_smpl_layout():
    from hmrcritic.hmr import mannequin

    a = mannequin.generate_arrays()
    V = a["v_template"].shape[0]
    assert a["v_template"].shape == (V, 3)
    assert a["shapedirs"].shape == (V, 3, 10)
    assert a["posedirs"].shape == (V, 3, 207)
    assert a["J_regressor"].shape == (24, V)
    assert a["weights"].shape == (V, 24)
    assert a["kintree_table"].shape == (2, 24) and a["kintree_table"][0, 0] == -1
    assert np.allclose(a["J_regressor"].sum(1), 1.0) and (a["J_regressor"] >= 0).all()
    assert np.allclose(a["weights"].sum(1), 1.0) and (a["weights"] >= 0).all()
    assert np.allclose(a["J_regressor"] @ a["v_template"], a["J"])
    f = a["f"]
    assert f.min() >= 0 and f.max() < V
    # closed and consistently wound: every directed edge once, and its reverse present
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    keys = edges[:, 0] * V + edges[:, 1]
    assert len(np.unique(keys)) == len(keys)
    assert np.isin(edges[:, 1] * V + edges[:, 0], keys).all()
    # outward normals: each part encloses a positive volume
    X, part = a["v_template"], a["part_of_vertex"]
    for j in range(24):
        tri = X[f[part[f[:, 0]] == j]]
        vol = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
        assert vol > 0, j


def test_sample_poses_accepts_one_bare_category():
    # a bare string was iterated letter by letter ("w", "a", ...) and refused; a bare int raised TypeError
    a = poses.sample_poses(4, 0, categories="walking")
    b = poses.sample_poses(4, 0, categories=["walking"])
    c = poses.sample_poses(4, 0, categories=1)
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k])


# ------------------------------------------------------------------------------------------------ camera
@pytest.mark.parametrize("el", [math.pi / 2, -math.pi / 2])
def test_look_at_straight_down_or_up_is_a_rotation_continuous_with_the_orbit(el):
    from hmrcritic.hmr import camera

    target = torch.zeros(1, 3, dtype=torch.float64)
    exact = torch.tensor([[0.0, 3.0 if el > 0 else -3.0, 0.0]], dtype=torch.float64)  # fwd × up == 0 exactly
    rot = camera.look_at_rotation(exact, target)
    assert torch.allclose(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(rot), atol=1e-12)
    assert torch.linalg.det(rot).item() == pytest.approx(1.0)
    near = camera.look_at_rotation(camera.orbit_position(target, 3.0, 0.0, el - math.copysign(1e-6, el)), target)
    assert torch.allclose(rot, near, atol=1e-5)
    # the target is in front of the camera and projects to the principal point
    K = camera.default_intrinsics(100, 100).double()
    p = (torch.tensor([[0.0, 0.0, 0.1]], dtype=torch.float64) - exact) @ rot[0].T
    assert p[0, 2] > 0 and torch.isfinite(camera.project(p, K)).all()


def test_look_at_ordinary_viewpoints_unchanged():
    from hmrcritic.hmr import camera

    g = torch.Generator().manual_seed(0)
    target = torch.randn(64, 3, generator=g)
    pos = camera.orbit_position(target, torch.rand(64, generator=g) * 5 + 1, torch.rand(64, generator=g) * 6.28,
                                (torch.rand(64, generator=g) - 0.5) * 3.1)
    roll = torch.randn(64, generator=g)
    fwd = torch.nn.functional.normalize(target - pos, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0]).expand_as(fwd)
    right = torch.nn.functional.normalize(torch.cross(fwd, up, dim=-1), dim=-1)
    down = torch.cross(fwd, right, dim=-1)
    c, s = torch.cos(roll), torch.sin(roll)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    rz = torch.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(-1, 3, 3)
    assert torch.equal(camera.look_at_rotation(pos, target, roll), rz @ torch.stack([right, down, fwd], dim=-2))
