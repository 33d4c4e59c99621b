"""Session-32 review: the geometry checked from first principles (metrics, camera, DDIM sampler, rotations).

Every expected value is recomputed here independently: numpy-SVD Procrustes (Umeyama 1991), our own pinhole
projection ``K @ X / z``, scipy's rotations, the DDIM update written out. Only documented properties are pinned.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation as SR

from hmrcritic.hmr import camera as C
from hmrcritic.hmr import metrics as M
from hmrcritic.hmr import rotations as R

# SMPL joint order (SMPL paper / smplx): the LSP-14 subset by name, as the literature (HMR, SPIN) uses it
SMPL = ["pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
        "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
        "left_hand", "right_hand"]  # fmt: skip
LSP14 = ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist",
         "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "neck", "head"]  # fmt: skip


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------- reference maths
def ref_procrustes(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Umeyama similarity alignment of p (J,3) onto g (J,3) in float64 numpy, proper rotation only."""
    mp, mg = p.mean(0), g.mean(0)
    P, G = p - mp, g - mg
    # Σ_gp = Σ_j g_j p_jᵀ = U D Vᵀ → R = U S Vᵀ, S = diag(1,1,det(U)det(V)), s = tr(D S) / Σ|p_j|²
    U, D, Vt = np.linalg.svd(G.T @ P)
    S = np.diag([1.0, 1.0, np.sign(np.linalg.det(U) * np.linalg.det(Vt)) or 1.0])
    Rm = U @ S @ Vt
    s = np.trace(np.diag(D) @ S) / max((P**2).sum(), 1e-300)
    return s * P @ Rm.T + mg


def ref_pa_mpjpe(p, g):
    return float(np.linalg.norm(ref_procrustes(p, g) - g, axis=1).mean() * 1000.0)


def random_similarity(rng):
    return SR.random(random_state=rng.integers(1 << 31)).as_matrix(), rng.uniform(0.3, 3.0), rng.normal(size=3) * 2


# ---------------------------------------------------------------------------------------- 1. joint sets
def test_joint_sets_are_the_lsp14_and_smpl24_of_the_literature():
    from hmrcritic.hmr.body import JOINT_SETS, SMPL_JOINT_NAMES

    assert SMPL_JOINT_NAMES == SMPL
    assert M.joint_indices("lsp14") == [SMPL.index(n) for n in LSP14] == JOINT_SETS["lsp14"]
    assert M.joint_indices("smpl24") == list(range(24))
    assert M.joint_indices("lsp14") == M._LSP14_FALLBACK
    assert [LSP14[i] for i in M._LSP14_HIPS] == ["right_hip", "left_hip"]


def test_mpjpe_roots_mid_hip_for_lsp14_pelvis_for_smpl24_in_mm():
    rng = _rng(1)
    g = rng.normal(size=(3, 24, 3))
    p = g + 0.03 * rng.normal(size=g.shape) + rng.normal(size=(3, 1, 3))  # + a global offset: removed by root
    idx = [SMPL.index(n) for n in LSP14]
    gi, pi = g[:, idx], p[:, idx]
    mid = lambda x: 0.5 * (x[:, SMPL.index("left_hip")] + x[:, SMPL.index("right_hip")])  # noqa: E731
    ref14 = np.linalg.norm((pi - mid(p)[:, None]) - (gi - mid(g)[:, None]), axis=-1).mean(-1) * 1000
    ref24 = np.linalg.norm((p - p[:, :1]) - (g - g[:, :1]), axis=-1).mean(-1) * 1000
    np.testing.assert_allclose(M.mpjpe(p, g).numpy(), ref14, rtol=1e-6)
    np.testing.assert_allclose(M.mpjpe(p, g, "smpl24").numpy(), ref24, rtol=1e-6)
    np.testing.assert_allclose(M.mpjpe(pi, gi, "lsp14").numpy(), ref14, rtol=1e-6)  # 14 given: lsp order
    # a pure translation of the prediction costs nothing; 1 cm on every joint after the root is 10 mm
    q = g.copy()
    q[:, 1:] += np.array([0.0, 0.01, 0.0])
    np.testing.assert_allclose(M.mpjpe(q, g, "smpl24").numpy(), 10.0 * 23 / 24, rtol=1e-6)


def test_pve_pelvis_and_centroid_alignment_in_mm():
    rng = _rng(2)
    gv, pv = rng.normal(size=(2, 50, 3)), rng.normal(size=(2, 50, 3))
    gr, pr = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    ref = np.linalg.norm((pv - pr[:, None]) - (gv - gr[:, None]), axis=-1).mean(-1) * 1000
    np.testing.assert_allclose(M.pve(pv, gv, pr, gr).numpy(), ref, rtol=1e-6)
    refc = np.linalg.norm((pv - pv.mean(1, keepdims=True)) - (gv - gv.mean(1, keepdims=True)), axis=-1).mean(-1)
    np.testing.assert_allclose(M.pve(pv, gv).numpy(), refc * 1000, rtol=1e-6)


# ------------------------------------------------------------------------------------------ 2. PA-MPJPE
def test_pa_mpjpe_matches_numpy_umeyama_and_is_similarity_invariant():
    rng = _rng(3)
    for _ in range(20):
        g = rng.normal(size=(14, 3)) * 0.4
        p = g + 0.05 * rng.normal(size=g.shape)
        Rm, s, t = random_similarity(rng)
        moved = s * p @ Rm.T + t
        want = ref_pa_mpjpe(p, g)
        assert M.pa_mpjpe(p, g, None).item() == pytest.approx(want, rel=1e-9)
        assert M.pa_mpjpe(moved, g, None).item() == pytest.approx(want, rel=1e-7)
        np.testing.assert_allclose(M.procrustes_align(moved, g).numpy(), ref_procrustes(moved, g), atol=1e-10)


def test_procrustes_is_the_least_squares_optimum_over_similarities():
    """No perturbed similarity (rotation, scale, translation) gives a smaller sum of squared distances."""
    rng = _rng(4)
    g = rng.normal(size=(24, 3))
    p = g @ SR.random(random_state=1).as_matrix().T * 1.7 + 0.2 * rng.normal(size=g.shape)
    best = ((M.procrustes_align(p, g).numpy() - g) ** 2).sum()
    a = M.procrustes_align(p, g).numpy()
    c = a.mean(0)
    for _ in range(200):
        dR = SR.from_rotvec(rng.normal(size=3) * 0.05).as_matrix()
        trial = (1 + 0.05 * rng.normal()) * (a - c) @ dR.T + c + 0.01 * rng.normal(size=3)
        assert ((trial - g) ** 2).sum() >= best - 1e-9


def test_reflection_is_never_used_but_a_planar_mirror_is_a_rotation():
    rng = _rng(5)
    g = rng.normal(size=(14, 3))
    mirrored = g * np.array([-1.0, 1.0, 1.0])
    got = M.pa_mpjpe(mirrored, g, None).item()
    assert got == pytest.approx(ref_pa_mpjpe(mirrored, g), rel=1e-9) and got > 100.0  # a reflection would give 0
    aligned = M.procrustes_align(mirrored, g).numpy()
    # what was applied is a proper rotation: the aligned centred set relates to the input by det +1
    X, Y = mirrored - mirrored.mean(0), aligned - aligned.mean(0)
    T = np.linalg.lstsq(X, Y, rcond=None)[0]
    assert np.linalg.det(T) > 0
    # a planar body mirrored in its plane is reachable by a 180° turn: error 0, det-correction on a rank-2 cov
    flat = g.copy()
    flat[:, 2] = 0.0
    assert M.pa_mpjpe(flat * np.array([-1.0, 1.0, 1.0]), flat, None).item() < 1e-9


def test_degenerate_inputs_equal_collinear_nan_inf():
    rng = _rng(6)
    g = rng.normal(size=(14, 3))
    same = np.ones((14, 3))  # all joints at one point: best similarity has s = 0, i.e. the gt centroid
    want = np.linalg.norm(g - g.mean(0), axis=1).mean() * 1000
    assert M.pa_mpjpe(same, g, None).item() == pytest.approx(want, rel=1e-9)
    line = rng.normal(size=(14, 1)) * np.array([[1.0, 2.0, 3.0]])  # collinear: rotation about it is free
    assert M.pa_mpjpe(line, g, None).item() == pytest.approx(ref_pa_mpjpe(line, g), rel=1e-9)
    assert M.pa_mpjpe(line * 2 + 1, line, None).item() < 1e-9
    bad = np.stack([g + 0.01, g.copy(), g.copy()])
    bad[1, 3, 0], bad[2, 5, 2] = np.nan, np.inf
    out = M.pa_mpjpe(bad, np.stack([g] * 3), None)
    assert out[0].item() < 1e-9 and torch.isnan(out[1:]).all()  # one diverged sample does not spoil the batch
    assert not torch.isfinite(M.mpjpe(bad, np.stack([g] * 3), None)[1:]).any()  # NaN, resp. inf (see report)


def test_batch_equals_per_sample_and_float32_large_batch_is_precise():
    rng = _rng(7)
    B = 4096
    g = (rng.normal(size=(B, 24, 3)) * 0.3 + np.array([0.0, 0.0, 5.0])).astype(np.float32)  # camera frame, 5 m
    p = (g + 0.02 * rng.normal(size=g.shape)).astype(np.float32)
    pa, mp = M.pa_mpjpe(p, g), M.mpjpe(p, g)
    assert pa.dtype == torch.float32 and mp.dtype == torch.float32
    pa64, mp64 = M.pa_mpjpe(p.astype(np.float64), g.astype(np.float64)), M.mpjpe(p.astype(np.float64), g.astype(
        np.float64))
    assert (pa.double() - pa64).abs().max() < 1e-3 and (mp.double() - mp64).abs().max() < 1e-3  # < 1 µm
    for i in (0, 17, B - 1):
        assert M.pa_mpjpe(p[i], g[i]).item() == pytest.approx(pa[i].item(), abs=1e-4)
        assert M.mpjpe(p[i], g[i]).item() == pytest.approx(mp[i].item(), abs=1e-4)
        assert M.pa_mpjpe(p[i].astype(np.float64), g[i].astype(np.float64)).item() == pytest.approx(
            ref_pa_mpjpe(p[i].astype(np.float64)[M.joint_indices("lsp14")],
                         g[i].astype(np.float64)[M.joint_indices("lsp14")]), rel=1e-9)
    # (B,N,…) hypotheses against (B,1,…) ground truth: each group against its own gt
    h = p[:6].reshape(2, 3, 24, 3)
    gt = g[[0, 3]][:, None]
    want = np.array([[ref_pa_mpjpe(h[b, n, M.joint_indices("lsp14")].astype(np.float64),
                                   gt[b, 0, M.joint_indices("lsp14")].astype(np.float64)) for n in range(3)]
                     for b in range(2)])
    np.testing.assert_allclose(M.pa_mpjpe(h, gt).numpy(), want, rtol=1e-4)


# --------------------------------------------------------------------------------------------- 3. camera
def test_default_intrinsics_and_projection_against_K_X_over_z():
    K = C.default_intrinsics(640, 480)
    assert K.tolist() == [[640.0, 0.0, 320.0], [0.0, 640.0, 240.0], [0.0, 0.0, 1.0]]
    assert C.default_intrinsics(300, 500).tolist() == [[500.0, 0, 150.0], [0, 500.0, 250.0], [0, 0, 1.0]]
    assert C.default_intrinsics(641, 480, focal=1000)[0, 0].item() == 1000
    assert C.default_intrinsics(641, 1)[0, 2].item() == 320.5  # centre of the continuous [0, W] image
    rng = _rng(8)
    P = torch.tensor(rng.normal(size=(2, 7, 3)) + [0, 0, 4.0])
    uvw = P @ K.double().T
    torch.testing.assert_close(C.project(P, K), uvw[..., :2] / uvw[..., 2:], rtol=0, atol=1e-9)
    Kb = K.double().expand(2, 3, 3).clone()
    Kb[1, 0, 0], Kb[1, 1, 2] = 900.0, 100.0
    uvw = torch.einsum("bij,bnj->bni", Kb, P)
    torch.testing.assert_close(C.project(P, Kb), uvw[..., :2] / uvw[..., 2:], rtol=0, atol=1e-9)
    # the principal ray lands on the principal point; a point behind the camera stays finite (callers mask it)
    assert C.project(torch.tensor([[0.0, 0.0, 3.0]]), K).tolist() == [[320.0, 240.0]]
    assert torch.isfinite(C.project(torch.tensor([[0.5, -0.2, -1.0], [0.1, 0.1, 0.0]]), K)).all()


@pytest.mark.parametrize("az,el", [(0.0, 0.0), (np.pi / 2, 0.0), (2.5, 0.6), (-1.0, -0.7), (0.0, np.pi / 2),
                                   (0.0, -np.pi / 2)])
def test_look_at_is_proper_looks_at_target_and_keeps_up_up(az, el):
    target = torch.tensor([0.1, 0.9, -0.3], dtype=torch.float64)
    pos = C.orbit_position(target, 3.0, az, el)
    want = target.numpy() + 3.0 * np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
    np.testing.assert_allclose(pos.numpy(), want, atol=1e-12)
    Rm = C.look_at_rotation(pos[None], target[None])[0]
    assert torch.allclose(Rm @ Rm.T, torch.eye(3, dtype=Rm.dtype), atol=1e-12)
    assert torch.linalg.det(Rm).item() == pytest.approx(1.0, abs=1e-12)
    cam = lambda x: (x - pos) @ Rm.T  # noqa: E731  X_cam = R (X_w − C)
    np.testing.assert_allclose(cam(target).numpy(), [0, 0, 3.0], atol=1e-9)  # on the optical axis, 3 m ahead
    if abs(abs(el) - np.pi / 2) > 1e-6:  # a point above the target is higher in the image (OpenCV y down)
        assert cam(target + torch.tensor([0.0, 0.3, 0.0], dtype=torch.float64))[1] < -1e-3


def test_front_camera_is_the_y_up_to_opencv_flip_and_roll_turns_about_the_optical_axis():
    pos = C.orbit_position(torch.zeros(3), 3.0, 0.0, 0.0)  # in front of a body facing +z
    Rm = C.look_at_rotation(pos[None], torch.zeros(1, 3))[0]
    np.testing.assert_allclose(Rm.numpy(), C.Y_UP_TO_OPENCV, atol=1e-7)
    # facing the camera, the person's left (+x in SMPL) is on the image right (+u)
    assert C.project(((torch.tensor([[0.2, 0.0, 0.0]]) - pos) @ Rm.T), C.default_intrinsics(64, 64))[0, 0] > 32
    r = torch.tensor([0.3])
    Rr = C.look_at_rotation(pos[None], torch.zeros(1, 3), r)[0]
    dz = Rr @ Rm.T  # the roll alone, in camera coordinates: a rotation about z by the roll angle
    np.testing.assert_allclose(dz.numpy(), SR.from_rotvec([0, 0, 0.3]).as_matrix(), atol=1e-6)


# -------------------------------------------------------------------------------------------- 4. rotations
def test_axis_angle_matrix_quaternion_euler_against_scipy():
    rng = _rng(9)
    aa = rng.normal(size=(4, 5, 3))
    np.testing.assert_allclose(R.axis_angle_to_matrix(torch.tensor(aa)).numpy(),
                               SR.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(4, 5, 3, 3), atol=1e-12)
    m = SR.from_rotvec(aa.reshape(-1, 3)).as_matrix()
    q = SR.from_matrix(m).as_quat()[:, [3, 0, 1, 2]]
    np.testing.assert_allclose(R.matrix_to_quaternion(torch.tensor(m)).numpy(), q * np.sign(q[:, :1]), atol=1e-12)
    e = rng.uniform(-3, 3, size=(30, 3))
    e[:4, 1], e[4:8, 1] = np.pi / 2, -np.pi / 2  # gimbal lock
    me = R.euler_to_matrix(torch.tensor(e))
    np.testing.assert_allclose(me.numpy(), SR.from_euler("XYZ", e).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(R.euler_to_matrix(R.matrix_to_euler_xyz(me)).numpy(), me.numpy(), atol=1e-9)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 3e-6)])
def test_roundtrips_near_zero_and_near_pi(dtype, tol):
    rng = _rng(10)
    axis = rng.normal(size=(500, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    for ang in (np.pi - 10 ** rng.uniform(-9, -1, (500, 1)), np.full((500, 1), np.pi),
                10 ** rng.uniform(-12, -2, (500, 1))):
        m = torch.tensor(SR.from_rotvec(axis * ang).as_matrix(), dtype=dtype)
        back = R.matrix_to_axis_angle(m).double().numpy()
        assert np.linalg.norm(back, axis=1).max() <= np.pi + 10 * tol
        np.testing.assert_allclose(SR.from_rotvec(back).as_matrix(), m.double().numpy(), atol=10 * tol)
        m6 = R.rot6d_to_matrix(R.matrix_to_rot6d(m))
        np.testing.assert_allclose(m6.double().numpy(), m.double().numpy(), atol=10 * tol)
    small = torch.tensor(axis * 1e-10, dtype=dtype)
    np.testing.assert_allclose(R.matrix_to_axis_angle(R.axis_angle_to_matrix(small)).double().numpy(),
                               small.double().numpy(), atol=tol * 1e-3)


def test_gradients_at_zero_are_finite_and_the_skew_derivative():
    x = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    R.axis_angle_to_matrix(x)[..., 1, 0].sum().backward()  # d(I + [v]x)_{10}/dv = d v_z = (0, 0, 1)
    assert x.grad.tolist() == [[0.0, 0.0, 1.0]] * 4
    x = torch.zeros(2, 3, requires_grad=True)
    R.matrix_to_axis_angle(R.axis_angle_to_matrix(x)).sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0, 1.0]] * 2  # identity map at 0
    for v in ([0.0, 0.0, 0.0], [np.pi - 1e-4, 0, 0], [0, np.pi, 0]):
        m = torch.tensor(SR.from_rotvec(v).as_matrix(), requires_grad=True)
        R.matrix_to_axis_angle(m).sum().backward()
        assert torch.isfinite(m.grad).all()
    r = torch.tensor(R.matrix_to_rot6d(torch.eye(3)).tolist(), requires_grad=True)
    R.rot6d_to_axis_angle(r).sum().backward()
    assert torch.isfinite(r.grad).all()
    # finite differences of Rodrigues at a small angle (float64)
    v = torch.tensor([1e-5, -2e-5, 3e-6], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(R.axis_angle_to_matrix, (v,))


def test_rot6d_gram_schmidt_reference_and_batch_shapes():
    rng = _rng(11)
    r = rng.normal(size=(20, 6))
    b1 = r[:, :3] / np.linalg.norm(r[:, :3], axis=1, keepdims=True)
    b2 = r[:, 3:] - (b1 * r[:, 3:]).sum(1, keepdims=True) * b1
    b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
    np.testing.assert_allclose(R.rot6d_to_matrix(torch.tensor(r)).numpy(), np.stack([b1, b2, np.cross(b1, b2)], -1),
                               atol=1e-12)
    for lead in ((), (0,), (2, 0), (2, 3)):
        assert R.axis_angle_to_matrix(torch.zeros(*lead, 3)).shape == (*lead, 3, 3)
        assert R.matrix_to_axis_angle(torch.eye(3).expand(*lead, 3, 3)).shape == (*lead, 3)
        assert R.rot6d_to_matrix(torch.ones(*lead, 6)).shape == (*lead, 3, 3)


# -------------------------------------------------------------------------------------------- 5. sampler
@pytest.fixture(scope="module")
def tiny():
    from hmrcritic.hmr.diffusion import X_DIM, DiffusionConfig, HMRDiffusion, condition_from_keypoints

    torch.manual_seed(0)
    m = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for head in (m.joint_out, m.shape_out):
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.3)
            head.bias.copy_(torch.randn(head.bias.shape, generator=g) * 0.1)
        m.x_mean.copy_(torch.randn(X_DIM, generator=g) * 0.2)
        m.x_std.copy_(0.05 + torch.rand(X_DIM, generator=g))
    B = 3
    uv = torch.rand(B, 17, 2, generator=g) * torch.tensor([300.0, 400.0]) + torch.tensor([150.0, 40.0])
    conf = (torch.rand(B, 17, generator=g) > 0.2).float()
    K = torch.tensor([[800.0, 0, 320], [0, 800, 240], [0, 0, 1]]).expand(B, 3, 3)
    return m, condition_from_keypoints(torch.cat([uv, conf[..., None]], -1), K, (640, 480))


def test_schedule_and_timesteps_from_the_definitions():
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion, ddim_timesteps

    m = HMRDiffusion(DiffusionConfig(d_model=16, layers=1, heads=2))
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(m.alphas_cumprod.double().numpy(), ab, rtol=1e-6)
    for T in (10, 1000):
        for s in range(2, T + 1):  # every step count: strictly decreasing, T−1 … 0, no repeated timestep
            ts = ddim_timesteps(T, s).tolist()
            assert ts[0] == T - 1 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:], strict=False))
    assert ddim_timesteps(1000, 1).tolist() == [999]


def test_noise_is_one_standard_normal_draw_and_rows_are_independent_of_the_batch(tiny):
    from hmrcritic.hmr.diffusion import X_DIM, ddim_sample_x0

    m, cond = tiny
    N = 4
    rows = cond.repeat_interleave(N)
    x_T = torch.randn(len(rows), X_DIM, generator=torch.Generator().manual_seed(5))
    by_seed = ddim_sample_x0(m, rows, steps=5, generator=torch.Generator().manual_seed(5))
    by_xT = ddim_sample_x0(m, rows, steps=5, x_T=x_T.clone())
    assert torch.equal(by_seed, by_xT)  # eta = 0: x_T is the only randomness, one (B·N, X) normal draw
    assert torch.unique(by_seed, dim=0).shape[0] == len(rows)  # N distinct hypotheses per input
    # with the same starting noise, a row sampled alone equals the row sampled in the batch (no cross-talk)
    for i in (0, 5, len(rows) - 1):
        alone = ddim_sample_x0(m, rows.index(slice(i, i + 1)), steps=5, x_T=x_T[i : i + 1].clone())
        torch.testing.assert_close(alone[0], by_xT[i], rtol=0, atol=1e-5)
    # eta > 0: the per-step noise comes from the same generator → seeded, and chunking rows changes nothing
    a = ddim_sample_x0(m, rows, steps=4, eta=1.0, generator=torch.Generator().manual_seed(2))
    b = ddim_sample_x0(m, rows, steps=4, eta=1.0, generator=torch.Generator().manual_seed(2),
                       row_chunks=[slice(0, 5), slice(5, len(rows))])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_one_ddim_step_written_out(tiny):
    """steps=2, eta=0.7: x_999 → x_0 by Song et al. eq. 12 with σ from eq. 16, in float64 by hand."""
    from hmrcritic.hmr.diffusion import X_DIM, ddim_sample_x0

    m, cond = tiny
    g = torch.Generator().manual_seed(9)
    x = torch.randn(len(cond), X_DIM, generator=g)
    noise = torch.randn(len(cond), X_DIM, generator=g)
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    xs = x.double()
    for t, tp, extra in ((999, 0, True), (0, None, False)):
        a, ap = ab[t], (ab[tp] if tp is not None else 1.0)
        with torch.no_grad():
            eps = m.predict_eps(xs.float(), torch.full((len(cond),), t), cond).double()
        x0 = ((xs - np.sqrt(1 - a) * eps) / np.sqrt(a)).clamp(-6, 6)
        eps = (xs - np.sqrt(a) * x0) / np.sqrt(1 - a)
        sig = 0.7 * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        xs = np.sqrt(ap) * x0 + np.sqrt(max(1 - ap - sig**2, 0.0)) * eps + (sig * noise.double() if extra else 0)
    want = xs * m.x_std.double() + m.x_mean.double()
    got = ddim_sample_x0(m, cond, steps=2, eta=0.7, generator=torch.Generator().manual_seed(9))
    assert ((got.double() - want) / m.x_std.double()).abs().max() < 1e-3
