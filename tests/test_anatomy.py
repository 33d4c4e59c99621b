"""Anatomy measures on constructed poses: limits, hyperextension, capsule penetration."""

from __future__ import annotations

import torch

from hmrcritic.hmr import anatomy as A
from hmrcritic.hmr.rotations import euler_to_matrix, matrix_to_axis_angle


def pose(**joints) -> torch.Tensor:
    """body_pose (1,69) from per-joint XYZ Euler angles in degrees."""
    e = torch.zeros(23, 3)
    for name, xyz in joints.items():
        e[A.BODY_JOINT_NAMES.index(name)] = torch.tensor(xyz, dtype=torch.float32)
    return matrix_to_axis_angle(euler_to_matrix(e.deg2rad())).reshape(1, 69)


STANDING = pose(
    left_shoulder=(0, 0, -80),
    right_shoulder=(0, 0, 80),
    left_elbow=(0, -10, 0),
    right_elbow=(0, 10, 0),
    left_knee=(3, 0, 0),
    right_knee=(3, 0, 0),
)
SITTING = pose(
    left_hip=(-90, 0, 5),
    right_hip=(-90, 0, -5),
    left_knee=(90, 0, 0),
    right_knee=(90, 0, 0),
    left_shoulder=(-30, 0, -75),
    right_shoulder=(-30, 0, 75),
    left_elbow=(0, -70, 0),
    right_elbow=(0, 70, 0),
    spine1=(5, 0, 0),
)


def joints_of(body_pose):
    return A.forward_kinematics(torch.zeros(body_pose.shape[0], 3), body_pose)


def test_limits_table_covers_all_body_joints_and_mirrors():
    assert list(A.JOINT_LIMITS_DEG) == A.BODY_JOINT_NAMES
    for name, lim in A.JOINT_LIMITS_DEG.items():
        for lo, hi in lim:
            assert lo < hi, name
    lk, rk = A.JOINT_LIMITS_DEG["left_elbow"], A.JOINT_LIMITS_DEG["right_elbow"]
    assert rk[1] == (-lk[1][1], -lk[1][0])  # elbows flex opposite ways about y
    assert A.JOINT_LIMITS_DEG["left_knee"][0][0] >= 0  # knees flex one way only


def test_neutral_standing_and_sitting_are_plausible():
    for bp in (torch.zeros(1, 69), STANDING, SITTING):
        j = joints_of(bp)
        assert A.joint_limit_violation(bp).max() < 1e-3
        assert A.hyperextension(bp).max() < 1e-3
        assert A.self_penetration(j).item() == 0.0
        assert not A.is_implausible(bp, j).item()


def test_hyperextended_knee_and_elbow_are_flagged():
    knee = pose(left_knee=(-30, 0, 0))
    h = A.hyperextension(knee)[0]
    assert abs(h[0].item() - 30) < 0.5 and h[1:].max() < 1e-3
    assert A.joint_limit_violation(knee)[0, A.BODY_JOINT_NAMES.index("left_knee")] > 29
    assert A.is_implausible(knee, joints_of(knee)).item()
    elbow = pose(right_elbow=(0, -25, 0))  # right elbow flexes with +y
    h = A.hyperextension(elbow)[0]
    assert abs(h[3].item() - 25) < 0.5 and h[:3].max() < 1e-3
    assert A.is_implausible(elbow).item()


def test_violation_is_branch_independent_at_gimbal_lock():
    # Elbow flexed exactly 90° sits at the XYZ gimbal lock; 140° decomposes onto the other Euler branch.
    for deg in (90, 120, 140):
        bp = pose(left_elbow=(0, -deg, 0), right_elbow=(0, deg, 0))
        assert A.joint_limit_violation(bp).max() < 0.05, deg
    over = pose(left_elbow=(0, -170, 0))  # 20° past the 150° limit
    v = A.joint_limit_violation(over)[0, A.BODY_JOINT_NAMES.index("left_elbow")]
    assert 15 < v.item() < 21


def test_violation_measures_degrees_outside():
    bp = pose(neck=(0, 60, 0))  # neck twist limit is 45°
    v = A.joint_limit_violation(bp)[0]
    assert abs(v[A.BODY_JOINT_NAMES.index("neck")].item() - 15) < 0.5
    assert v.sum() - v.max() < 1e-3


def test_hand_through_torso_is_flagged():
    # Left arm rotated inwards with the elbow bent: the forearm passes through the chest.
    bp = pose(left_shoulder=(-20, -80, -85), left_elbow=(0, -120, 0))
    j = joints_of(bp)
    assert A.self_penetration(j).item() > 0.05
    assert A.is_implausible(bp, j).item()
    # Constructed directly on joints: the right hand placed at the spine.
    j = joints_of(STANDING).clone()
    j[0, 21] = j[0, 6] + torch.tensor([0.0, 0.0, 0.02])
    j[0, 23] = j[0, 6] + torch.tensor([0.05, 0.0, 0.02])
    assert A.self_penetration(j).item() > 0.1


def test_segment_distance_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    p1, q1, p2, q2 = (torch.randn(200, 3, generator=g) for _ in range(4))
    d = A.segment_distance(p1, q1, p2, q2)
    s = torch.linspace(0, 1, 201)
    a = p1[:, None] + (q1 - p1)[:, None] * s[None, :, None]
    b = p2[:, None] + (q2 - p2)[:, None] * s[None, :, None]
    brute = torch.cdist(a, b).amin((1, 2))
    assert (d <= brute + 1e-5).all() and (brute - d).max() < 0.02


def test_forward_kinematics_keeps_bone_lengths():
    bp = torch.randn(8, 69) * 0.5
    go = torch.randn(8, 3)
    j = A.forward_kinematics(go, bp)
    rest = torch.as_tensor(A.REST_JOINTS)
    for c, p in enumerate(A.SMPL_PARENTS_24):
        if p >= 0:
            assert torch.allclose(
                (j[:, c] - j[:, p]).norm(dim=-1), (rest[c] - rest[p]).norm().expand(8), atol=1e-5
            )


def test_batched_shapes():
    bp = torch.zeros(5, 69)
    assert A.joint_limit_violation(bp).shape == (5, 23)
    assert A.hyperextension(bp).shape == (5, 4)
    assert A.self_penetration(joints_of(bp)).shape == (5,)
    assert A.is_implausible(bp, joints_of(bp)).dtype == torch.bool


def test_a_non_finite_hypothesis_is_implausible():
    """NaN measures compare False: a diverged hypothesis counted as plausible in the implausible rate."""
    bp = torch.zeros(3, 69)
    j = joints_of(bp)
    bp[1, 10] = float("nan")
    j2 = j.clone()
    j2[2, 5, 1] = float("inf")
    assert A.is_implausible(bp).tolist() == [False, True, False]
    assert A.is_implausible(torch.zeros(3, 69), j2).tolist() == [False, False, True]
