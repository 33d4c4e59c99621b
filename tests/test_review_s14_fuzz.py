"""Session-14 fuzz review: property checks of the pure numeric functions that found a wrong result."""

from __future__ import annotations

import math

import pytest
import torch

from hmrcritic.hmr.anatomy import BODY_JOINT_NAMES, joint_limit_violation, segment_distance
from hmrcritic.hmr.rotations import axis_angle_to_matrix, euler_to_matrix, matrix_to_axis_angle, matrix_to_euler_xyz


def _brute_segment_distance(p1, q1, p2, q2, n=401):
    s = torch.linspace(0, 1, n, dtype=p1.dtype)
    a = p1[:, None] + (q1 - p1)[:, None] * s[None, :, None]
    b = p2[:, None] + (q2 - p2)[:, None] * s[None, :, None]
    return torch.cdist(a, b).amin((-1, -2))


def test_segment_distance_to_a_point_second_segment_is_the_point_to_segment_distance():
    """A degenerate second segment (p2 == q2) made t exactly 0 and left s at the parallel fallback 0, so the
    distance was |p1 − p2| instead of the distance from p2 to [p1,q1]; the first-segment case was right."""
    seg = (torch.tensor([0.0, 0, 0]), torch.tensor([2.0, 0, 0]))
    point = (torch.tensor([1.0, 1, 0]), torch.tensor([1.0, 1, 0]))
    assert float(segment_distance(*seg, *point)) == 1.0  # was sqrt(2)
    assert float(segment_distance(*point, *seg)) == 1.0  # symmetric

    g = torch.Generator().manual_seed(0)
    p1, q1, p2 = (torch.randn(200, 3, generator=g, dtype=torch.float64) for _ in range(3))
    got = segment_distance(p1, q1, p2, p2.clone())
    assert (got - _brute_segment_distance(p1, q1, p2, p2.clone())).max() < 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrix_to_euler_xyz_rebuilds_the_rotation_at_gimbal_lock(dtype):
    """At y = ±90° x and z came from atan2 of rounding noise and rebuilt a rotation up to 180° off (an elbow
    flexed 90° with some twist, as axis-angle → matrix gives it)."""
    g = torch.Generator().manual_seed(0)
    e = (torch.rand(500, 3, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    e[:, 1] = math.pi / 2 * torch.where(torch.rand(500, generator=g) < 0.5, -1.0, 1.0).double()
    R = axis_angle_to_matrix(matrix_to_axis_angle(euler_to_matrix(e)).to(dtype))
    rebuilt = euler_to_matrix(matrix_to_euler_xyz(R))
    assert (rebuilt - R).abs().max() < (1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_allowed_shoulder_rotation_at_gimbal_lock_has_no_joint_limit_violation(dtype):
    """Left shoulder at Euler (-158.6°, -90°, 22.7°), inside its box ((-170, 60), (-90, 90), (-100, 90)): the
    garbage decomposition at the lock made joint_limit_violation report 18.7° (is_implausible flags > 10°)."""
    bp = torch.zeros(1, 23, 3, dtype=dtype)
    bp[0, BODY_JOINT_NAMES.index("left_shoulder")] = torch.tensor(
        [2.2099315877605474, -0.02527769036703436, -2.2099315877605474], dtype=dtype)
    assert joint_limit_violation(bp.reshape(1, 69)).amax() < 1e-3
