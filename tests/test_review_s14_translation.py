"""solve_translation keeps every visible keypoint's joint in front of the camera, not only the root.

The algebraic residual it minimises shrinks as points approach the camera centre, so a body fitted with its root
0.3 m or more away could still have a joint behind the camera (0.4 % of the base model's wild hypotheses): its
projection was ~1e8 px and made an evaluation's mean reprojection meaningless (3,142,382 px on five wild inputs).
"""

from __future__ import annotations

import torch

from hmrcritic.hmr.diffusion import MIN_JOINT_DEPTH_M, solve_translation


def _scene(t_true: tuple[float, float, float], z_span: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    joints = torch.rand(17, 3, generator=g) - 0.5
    joints[:, 2] = torch.linspace(-z_span, z_span, 17)
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    cam = joints + torch.tensor(t_true)
    uv = cam[:, :2] / cam[:, 2:3] * torch.tensor([500.0, 500.0]) + torch.tensor([320.0, 240.0])
    kp = torch.cat([uv, torch.ones(17, 1)], -1)
    return joints[None], kp[None], K[None]


def test_no_visible_joint_is_left_behind_the_camera():
    joints, kp, K = _scene((0.05, -0.02, 0.35))  # root 0.35 m away (no root clamp), nearest joint at −0.15 m
    old = solve_translation(joints, kp, K, min_joint_depth=None)
    assert (joints[0, :, 2] + old[0, 2]).min() < 0  # what was returned before: a joint behind the camera
    t = solve_translation(joints, kp, K)
    assert (joints[0, :, 2] + t[0, 2]).min() >= MIN_JOINT_DEPTH_M - 1e-5
    # tx, ty re-fitted for that depth: a better fit there than keeping the unconstrained solve's tx, ty
    def residual(tt):
        X, Y, Z = (joints[0] + tt).unbind(-1)
        u, v = kp[0, :, 0], kp[0, :, 1]
        return float(((500 * X + (320 - u) * Z) ** 2 + (500 * Y + (240 - v) * Z) ** 2).sum())

    kept = torch.cat([old[0, :2], t[0, 2:]])
    assert residual(t[0]) < residual(kept)


def test_an_invisible_joint_does_not_move_the_body():
    joints, kp, K = _scene((0.0, 0.0, 0.35))
    kp[0, :6, 2] = 0  # the joints nearest the camera are not visible keypoints: they are not constrained
    t = solve_translation(joints, kp, K)
    nearest_visible = joints[0, 6:, 2].min()
    assert (nearest_visible + t[0, 2]) >= MIN_JOINT_DEPTH_M - 1e-5
    assert t[0, 2] < 0.1 - joints[0, :, 2].min()  # not pushed back for the invisible ones


def test_a_body_well_in_front_is_solved_exactly_as_before():
    joints, kp, K = _scene((0.1, 0.2, 3.0), z_span=0.3)
    batch = torch.cat([joints, _scene((0.0, 0.0, 0.35))[0]])
    kps = torch.cat([kp, _scene((0.0, 0.0, 0.35))[1]])
    Ks = K.expand(2, 3, 3)
    new, old = solve_translation(batch, kps, Ks), solve_translation(batch, kps, Ks, min_joint_depth=None)
    assert torch.equal(new[0], old[0])  # bit-identical where nothing is behind: published figures stand
    assert not torch.equal(new[1], old[1])
