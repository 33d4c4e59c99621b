"""Rotation conversions in torch, batched over any leading shape.

The diffusion model works in the continuous 6D representation (Zhou et al. 2019: the first two columns of
the rotation matrix), SMPL takes axis-angle. All functions are pure and differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle → (..., 3, 3) rotation matrices (Rodrigues, stable near zero).

    The angle's floor is 1e-8, or the dtype's smallest normal number where 1e-8 is not one: in float16 1e-8
    rounds to 0, so a zero rotation (the rest pose) divided 0 by 0 and came back all NaN."""
    angle = aa.norm(dim=-1, keepdim=True)
    angle = angle.clamp_min(max(1e-8, torch.finfo(angle.dtype).tiny))
    axis = aa / angle
    x, y, z = axis.unbind(-1)
    zeros = torch.zeros_like(x)
    k = torch.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], dim=-1).reshape(aa.shape[:-1] + (3, 3))
    s = torch.sin(angle)[..., None]
    c = torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(k.shape)
    return eye + s * k + (1 - c) * (k @ k)


def matrix_to_axis_angle(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 3) axis-angle, via quaternions (robust at 0 and near π)."""
    return _unit_quaternion_to_axis_angle(matrix_to_quaternion(m))


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 4) unit quaternion (w, x, y, z) with w ≥ 0."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    q_abs = torch.sqrt(
        torch.clamp(
            torch.stack(
                [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
            ),
            min=1e-12,
        )
    )
    quat_by = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    quat_candidates = quat_by / (2.0 * q_abs[..., None].clamp_min(0.1))
    idx = q_abs.argmax(dim=-1)
    q = torch.gather(quat_candidates, -2, idx[..., None, None].expand(idx.shape + (1, 4))).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternion (w, x, y, z), of any nonzero length → (..., 3) axis-angle.

    Normalised first: the conversion (``_unit_quaternion_to_axis_angle``) holds for unit quaternions only, and a
    (1, 1, 0, 0) (90° about x) gave 2.22 rad instead of π/2."""
    return _unit_quaternion_to_axis_angle(F.normalize(q, dim=-1))


def _unit_quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """:func:`quaternion_to_axis_angle` of a unit quaternion (``matrix_to_quaternion``'s, already normalised)."""
    norms = q[..., 1:].norm(dim=-1, keepdim=True)
    half = torch.atan2(norms, q[..., :1])
    angle = 2 * half
    small = angle.abs() < 1e-6
    sin_half_over = torch.where(small, 0.5 - angle * angle / 48, torch.sin(half) / angle.clamp_min(1e-12))
    return q[..., 1:] / sin_half_over


def matrix_to_rot6d(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 6): the first two columns, column-major (c1, c2)."""
    return torch.cat([m[..., :, 0], m[..., :, 1]], dim=-1)


def rot6d_to_matrix(r: torch.Tensor) -> torch.Tensor:
    """(..., 6) → (..., 3, 3) by Gram–Schmidt; any 6-vector whose two halves are nonzero and not parallel
    maps to a valid rotation. A degenerate one (a zero half, or parallel halves: a measure-zero set a network
    practically never outputs) gives a singular matrix with zero columns, not a rotation."""
    a1, a2 = r[..., :3], r[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def axis_angle_to_rot6d(aa: torch.Tensor) -> torch.Tensor:
    return matrix_to_rot6d(axis_angle_to_matrix(aa))


def rot6d_to_axis_angle(r: torch.Tensor) -> torch.Tensor:
    return matrix_to_axis_angle(rot6d_to_matrix(r))


def euler_to_matrix(angles: torch.Tensor, order: str = "XYZ") -> torch.Tensor:
    """(..., 3) intrinsic Euler angles (radians) in ``order`` → (..., 3, 3).

    ``order`` is three of the upper-case letters X, Y, Z; anything else is refused (read leniently, ``"xyz"``
    would silently build a rotation about z three times)."""
    if not (isinstance(order, str) and len(order) == 3 and set(order) <= set("XYZ")):
        raise ValueError(f"euler_to_matrix: order must be three of the letters X, Y, Z (e.g. 'XYZ'), got {order!r}")
    mats = [axis_rotation(axis, angles[..., i]) for i, axis in enumerate(order)]
    return mats[0] @ mats[1] @ mats[2]


def axis_rotation(axis: str, a: torch.Tensor) -> torch.Tensor:
    """(...) angles (radians) → (..., 3, 3) rotations about the coordinate axis ``"X"``, ``"Y"`` or ``"Z"``."""
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    if axis == "X":
        m = torch.stack([o, z, z, z, c, -s, z, s, c], -1)
    elif axis == "Y":
        m = torch.stack([c, z, s, z, o, z, -s, z, c], -1)
    elif axis == "Z":
        m = torch.stack([c, -s, z, s, c, z, z, z, o], -1)
    else:
        raise ValueError(f"axis_rotation: axis must be 'X', 'Y' or 'Z', got {axis!r}")
    return m.reshape(a.shape + (3, 3))


def matrix_to_euler_xyz(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 3) intrinsic XYZ Euler angles (inverse of ``euler_to_matrix(., 'XYZ')``).

    At gimbal lock (y = ±90°, e.g. an elbow flexed 90°) x and z each come from atan2 of two rounding-sized
    entries, i.e. noise, and their combination alone can rebuild a rotation up to 180° off (which would make
    ``anatomy.joint_limit_violation`` report a large violation for an allowed rotation). There, z is
    re-solved from the entries that still hold the rotation, given x (``Rx(x)ᵀ m = Ry(y) Rz(z)``), so the
    angles always rebuild ``m`` (and y comes from atan2, as asin is coarse next to ±1); elsewhere the result
    is unchanged."""
    sy = m[..., 0, 2].clamp(-1.0, 1.0)
    y = torch.asin(sy)
    x = torch.atan2(-m[..., 1, 2], m[..., 2, 2])
    z = torch.atan2(-m[..., 0, 1], m[..., 0, 0])
    cy = torch.hypot(m[..., 0, 0], m[..., 0, 1])
    lock = cy < 100 * torch.finfo(m.dtype).eps  # |cos y| at rounding level
    if bool(lock.any()):
        cx, sx = torch.cos(x), torch.sin(x)
        z_lock = torch.atan2(cx * m[..., 1, 0] + sx * m[..., 2, 0], cx * m[..., 1, 1] + sx * m[..., 2, 1])
        z = torch.where(lock, z_lock, z)
        y = torch.where(lock, torch.atan2(m[..., 0, 2], cy), y)  # asin loses ~sqrt(eps) next to ±1
    return torch.stack([x, y, z], dim=-1)
