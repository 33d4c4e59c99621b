"""joint_limit_violation is the angle to the *nearest* rotation inside a joint's box, not to a nearby one.

Session 15: clamping a decomposed Euler branch into the box is not circular (a shoulder swung forward to
x = −181°, i.e. +179°, was clamped to the box's +60° end instead of its −170° end) and the projected-gradient
refinement after it stopped in local minima, so a joint 11° outside read 80°; near gimbal lock an allowed
shoulder could read up to 21° (is_implausible flags > 10°; benchmarks/joint_limits.py). Checked here against a
dense search of the box.
"""

from __future__ import annotations

import math

import pytest
import torch

from hmrcritic.hmr import anatomy as A
from hmrcritic.hmr.rotations import euler_to_matrix, matrix_to_axis_angle


def _geodesic_deg(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    tr = (r1.transpose(-1, -2) @ r2).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.acos(((tr - 1) / 2).clamp(-1, 1)).rad2deg()


def _grid_min_deg(name: str, rot: torch.Tensor, step_deg: float = 2.0) -> float:
    """The angle from ``rot`` to the nearest rotation on a ``step_deg`` grid of the joint's Euler box: at most
    the true minimum plus about step·√3/2 · (a Lipschitz factor ≤ 3), never below the true minimum."""
    j = A.BODY_JOINT_NAMES.index(name)
    axes = [torch.arange(float(A.LIMITS_LO_DEG[j, k]), float(A.LIMITS_HI_DEG[j, k]) + 1e-6, step_deg,
                         dtype=torch.float64) for k in range(3)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).deg2rad()
    return float(_geodesic_deg(rot.expand(len(grid), 3, 3), euler_to_matrix(grid)).min())


def _pose(name: str, euler_deg) -> tuple[torch.Tensor, torch.Tensor]:
    rot = euler_to_matrix(torch.tensor(euler_deg, dtype=torch.float64).deg2rad())
    bp = torch.zeros(1, 23, 3, dtype=torch.float64)
    bp[0, A.BODY_JOINT_NAMES.index(name)] = matrix_to_axis_angle(rot)
    return bp.reshape(1, 69), rot


@pytest.mark.parametrize("name, euler", [
    ("left_shoulder", (-181.2, -10.0, 57.9)),  # read 80.0° (the +60° end of x), truly ≈ 11°
    ("right_shoulder", (-189.4, -9.2, 105.2)),  # read 80.8°, truly ≈ 21°
    ("right_shoulder", (-181.8, 47.3, -57.2)),  # read 42.7°, truly ≈ 8° (is_implausible flipped at 10°)
    ("left_knee", (185.2, 34.8, 1.0)),  # a knee flexed 185°: read 171° (the 0° end), truly ≈ 38°
])
def test_violation_is_the_distance_to_the_nearest_rotation_in_the_box(name, euler):
    bp, rot = _pose(name, euler)
    got = float(A.joint_limit_violation(bp)[0, A.BODY_JOINT_NAMES.index(name)])
    grid = _grid_min_deg(name, rot)
    assert got <= grid + 1e-3, (got, grid)  # nothing on the grid is nearer than what was found
    assert got >= grid - 3.0, (got, grid)  # and the grid gets within a few degrees of the true minimum


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("y_deg", [90.0, -90.0])
def test_every_allowed_shoulder_at_gimbal_lock_reads_zero(dtype, y_deg):
    """At y = ±90° only x ± z is defined; whichever member the decomposition returns, one inside the box is
    allowed (3–16 of 4,000 read > 1° before, worst 21°: benchmarks/joint_limits.py)."""
    g = torch.Generator().manual_seed(1)
    n = 4000
    for name in ("left_shoulder", "right_shoulder"):
        j = A.BODY_JOINT_NAMES.index(name)
        lo, hi = (torch.as_tensor(a[j], dtype=torch.float64) for a in (A.LIMITS_LO_DEG, A.LIMITS_HI_DEG))
        x = lo[0] + (hi[0] - lo[0]) * torch.rand(n, generator=g, dtype=torch.float64)
        z = lo[2] + (hi[2] - lo[2]) * torch.rand(n, generator=g, dtype=torch.float64)
        eul = torch.stack([x, torch.full_like(x, y_deg), z], -1).deg2rad()
        bp = torch.zeros(n, 23, 3, dtype=torch.float64)
        bp[:, j] = matrix_to_axis_angle(euler_to_matrix(eul))
        v = A.joint_limit_violation(bp.reshape(n, 69).to(dtype))[:, j]
        assert float(v.max()) < 1e-2, (name, float(v.max()))


def test_never_farther_than_a_clamped_branch_and_zero_inside():
    """Random rotations up to 50° outside every box: the value is never above the clamped Euler branches (the
    search starts there and only gets nearer), never below a dense search, and 0 for rotations inside."""
    torch.manual_seed(0)
    lo = torch.as_tensor(A.LIMITS_LO_DEG, dtype=torch.float64)
    hi = torch.as_tensor(A.LIMITS_HI_DEG, dtype=torch.float64)
    e = (lo - 50) + (hi - lo + 100) * torch.rand(40, 23, 3, dtype=torch.float64)
    rot = euler_to_matrix(e.deg2rad())
    v = A.joint_limit_violation(matrix_to_axis_angle(rot).reshape(40, 69))
    clamped = torch.maximum(torch.minimum(e, hi), lo).deg2rad()
    assert bool((v <= _geodesic_deg(rot, euler_to_matrix(clamped)) + 1e-3).all())
    inside = ((e >= lo) & (e <= hi)).all(-1)
    assert bool(inside.any()) and float(v[inside].max()) < 1e-3
    for b, j in [(0, 16), (1, 17), (2, 4), (3, 18)]:  # shoulders, a knee, an elbow: spot-check a dense search
        name = A.BODY_JOINT_NAMES[j]
        assert float(v[b, j]) <= _grid_min_deg(name, rot[b, j], 3.0) + 1e-3


def test_best_angle_is_the_sinusoids_maximum_over_the_range():
    g = torch.Generator().manual_seed(2)
    a_cos, a_sin = torch.randn(2, 500, generator=g, dtype=torch.float64)
    lo = -math.pi + 2 * math.pi * torch.rand(500, generator=g, dtype=torch.float64) * 0.6
    hi = lo + (math.pi * 1.3) * torch.rand(500, generator=g, dtype=torch.float64)
    hi = torch.minimum(hi, torch.full_like(hi, math.pi))
    t = A._best_angle(a_cos, a_sin, lo, hi)
    dense = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, 2001, dtype=torch.float64)
    best = (a_cos[:, None] * torch.cos(dense) + a_sin[:, None] * torch.sin(dense)).amax(1)
    got = a_cos * torch.cos(t) + a_sin * torch.sin(t)
    assert bool(((t >= lo - 1e-12) & (t <= hi + 1e-12)).all())
    assert bool((got >= best - 1e-9).all())
