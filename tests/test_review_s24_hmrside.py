"""Session 24 review (HMR side): rotations in half precision, PVE's alignment when one root is given, and
standard_metrics' PVE root on a joint set without the pelvis."""

from __future__ import annotations

import pytest
import torch

from hmrcritic.hmr import metrics as M
from hmrcritic.hmr.rotations import axis_angle_to_matrix, euler_to_matrix


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_axis_angle_to_matrix_of_the_rest_pose_in_half_precision_is_the_identity(dtype):
    """In float16 the angle floor 1e-8 rounds to 0, so a zero rotation divided 0 by 0: the rest pose (and every
    zero joint of a half-precision body_pose) came back as an all-NaN matrix. Small and ordinary angles still
    match the float32 rotation to half precision."""
    aa = torch.tensor([[0.0, 0.0, 0.0], [3e-5, 0.0, 0.0], [0.3, -0.4, 0.5]], dtype=dtype)
    R = axis_angle_to_matrix(aa)
    assert R.dtype == dtype and torch.isfinite(R).all()
    assert torch.equal(R[0].float(), torch.eye(3))
    ref = axis_angle_to_matrix(aa.float())
    assert torch.allclose(R.float(), ref, atol=5e-3)
    # the rotation about x by 0.3 rad, built another way, in the same precision
    rx = euler_to_matrix(torch.tensor([0.3, 0.0, 0.0]), "XYZ")
    assert torch.allclose(axis_angle_to_matrix(torch.tensor([0.3, 0.0, 0.0], dtype=dtype)).float(), rx, atol=5e-3)


def test_axis_angle_to_matrix_float32_and_float64_are_bitwise_unchanged():
    """The floor stays 1e-8 where 1e-8 is a normal number: float32/64 matrices are those of the former clamp."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        aa = torch.randn(257, 3, generator=g, dtype=dtype) * torch.logspace(-10, 0.5, 257, dtype=dtype)[:, None]
        aa[0] = 0
        angle = aa.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        axis = aa / angle
        x, y, z = axis.unbind(-1)
        zeros = torch.zeros_like(x)
        k = torch.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], dim=-1).reshape(aa.shape[:-1] + (3, 3))
        s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
        before = torch.eye(3, dtype=dtype).expand(k.shape) + s * k + (1 - c) * (k @ k)
        assert torch.equal(axis_angle_to_matrix(aa), before)


def test_pve_refuses_one_root_without_the_other(body):
    """With only pred_root given, the prediction was centred on its pelvis and the ground truth on its vertex
    centroid: the same mesh on both sides scored tens of mm instead of 0."""
    out = body.template()
    v, root = out.vertices, out.joints[..., 0, :]
    assert float(M.pve(v, v, root, root)) == 0.0
    assert float(M.pve(v, v)) == 0.0
    with pytest.raises(ValueError, match="both pred_root and gt_root"):
        M.pve(v, v, pred_root=root)
    with pytest.raises(ValueError, match="both pred_root and gt_root"):
        M.pve(v, v, gt_root=root)


def test_standard_metrics_pve_needs_the_smpl_pelvis(body):
    """Given lsp14 joints (accepted by MPJPE and PA-MPJPE), PVE took joint 0 of the set, the right ankle, as the
    pelvis root: a mesh compared with itself in another position scored the ankle's offset. Now refused; with 24
    joints the figures are as before; a lone pred_verts (PVE silently left out) is refused too."""
    from hmrcritic.hmr.body import JOINT_SETS

    g = torch.Generator().manual_seed(1)
    bp = torch.randn(2, 69, generator=g) * 0.3
    a = body(torch.zeros(2, 3), bp, torch.zeros(2, 10))
    b = body(torch.zeros(2, 3), bp.flip(0), torch.zeros(2, 10))
    full = M.standard_metrics(a.joints, b.joints, a.vertices, b.vertices)
    assert torch.equal(full["pve"], M.pve(a.vertices, b.vertices, a.joints[..., 0, :], b.joints[..., 0, :]))
    assert float(full["pve"].min()) > 0
    lsp = JOINT_SETS["lsp14"]
    with pytest.raises(ValueError, match="24 SMPL joints"):
        M.standard_metrics(a.joints[:, lsp], b.joints[:, lsp], a.vertices, b.vertices)
    with pytest.raises(ValueError, match="both pred_verts and gt_verts"):
        M.standard_metrics(a.joints, b.joints, a.vertices)
    assert set(M.standard_metrics(a.joints[:, lsp], b.joints[:, lsp])) == {"mpjpe", "pa_mpjpe"}


def test_pa_mpjpe_of_integer_joints_is_the_float_figure():
    """Joints held as an integer tensor (whole millimetres, or pixels) made procrustes_align truncate the aligned
    prediction to integers and pa_mpjpe raise torch's "vector_norm: Expected a floating point ... Got Long";
    numpy integer arrays (converted to float32 on the way in) already gave the float figure."""
    g = torch.Generator().manual_seed(2)
    gt = torch.randint(-900, 900, (3, 24, 3), generator=g)
    pred = gt + torch.randint(-60, 60, (3, 24, 3), generator=g)
    want = M.pa_mpjpe(pred.float(), gt.float())
    assert torch.equal(M.pa_mpjpe(pred, gt), want)
    assert torch.equal(M.pa_mpjpe(pred.numpy(), gt.numpy()), want)
    aligned = M.procrustes_align(pred, gt)
    assert aligned.dtype == torch.float32 and torch.equal(aligned, M.procrustes_align(pred.float(), gt.float()))


def test_depth_of_a_far_person_seen_through_a_long_lens_is_in_mm_not_metres(body):
    """The near plane stayed at 0.01 m for every mesh, so a person 1 km away (a telephoto framing, the same image
    as one at 3 m) read depths up to 6 m behind their own farthest vertex: a 24-bit depth buffer resolves
    ~z²/(znear·2²⁴). Depths now lie on the body, and the person covers the same pixels as before."""
    from hmrcritic.hmr.camera import default_intrinsics
    from hmrcritic.hmr.render import get_renderer

    r = get_renderer()
    for z in (3.0, 1000.0):
        out = body(torch.tensor([[torch.pi, 0.0, 0.0]]), torch.zeros(1, 69), torch.zeros(1, 10),
                   torch.tensor([[0.0, 0.0, z]]))
        v = out.vertices[0].numpy()
        K = default_intrinsics(128, 128, focal=128 * z / 3).numpy()
        depth = r.render_depth(v, body.faces, K, (128, 128))
        d = depth[depth > 0]
        assert d.size > 500
        assert v[:, 2].min() - 0.005 <= d.min() and d.max() <= v[:, 2].max() + 0.005, (z, d.min(), d.max())
        if z == 3.0:
            near_mask = depth > 0
    assert abs(int((depth > 0).sum()) - int(near_mask.sum())) < 0.05 * near_mask.sum()
