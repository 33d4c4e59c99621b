"""Session 36 mutation audit of hmr/metrics.py and hmr/anatomy.py: tests that kill the surviving mutants.

Every expected value below is worked out by hand from the documented behaviour (module docstrings,
docs/CONTRACTS.md), never copied from the code's output: a constructed case with a closed-form answer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmrcritic.hmr import anatomy, metrics

# --------------------------------------------------------------------------------------------- metrics


def _chiral_tetra(p: float, q: float, r: float) -> np.ndarray:
    """Four points with sign pattern product +1, centred, second moments diag(4p², 4q², 4r²). For distinct
    p, q, r its mirror image (x → −x, the "odd" sign patterns) is no rotation of it: a chiral set."""
    return np.array([[p, q, r], [p, -q, -r], [-p, q, -r], [-p, -q, r]], np.float64)


def test_pa_mpjpe_of_a_mirror_image_is_the_best_proper_rotation_not_zero():
    """CONTRACTS: PA-MPJPE is a similarity Procrustes with "no reflections". For the chiral tetrahedron with
    p > q > r against its mirror (x negated) the cross-covariance is diag(−4p², 4q², 4r²); Umeyama's proper
    optimum flips the smallest direction (z): R = diag(−1, 1, −1), s = (p² + q² − r²)/(p² + q² + r²), and every
    point is off by sqrt((1−s)²(p²+q²) + (1+s)²r²). With (p, q, r) = (0.3, 0.2, 0.1) m: s = 6/7 and the error
    is sqrt(182)/7 · 0.1 m = 192.725 mm. A reflection would give 0, no scale correction (s = 1) 200 mm."""
    gt = _chiral_tetra(0.3, 0.2, 0.1)
    pred = gt * np.array([-1.0, 1.0, 1.0])
    want = math.sqrt(182.0) / 7.0 * 100.0
    got = float(metrics.pa_mpjpe(torch.as_tensor(pred), torch.as_tensor(gt), joint_set=None))
    assert got == pytest.approx(want, abs=1e-6)


def test_procrustes_of_a_mirror_image_uses_a_proper_rotation():
    """The map procrustes_align applied (recovered by least squares from the centred points) has det > 0 and
    is exactly s·diag(−1, 1, −1) for the mirrored tetrahedron above (see the test before)."""
    gt = _chiral_tetra(0.3, 0.2, 0.1)
    pred = gt * np.array([-1.0, 1.0, 1.0])
    aligned = metrics.procrustes_align(torch.as_tensor(pred), torch.as_tensor(gt)).numpy()
    m, *_ = np.linalg.lstsq(pred - pred.mean(0), aligned - aligned.mean(0), rcond=None)
    assert np.linalg.det(m) > 0
    np.testing.assert_allclose(m, (6.0 / 7.0) * np.diag([-1.0, 1.0, -1.0]), atol=1e-9)


def test_pa_mpjpe_removes_rotation_scale_and_translation():
    """A prediction that is gt rotated, scaled by 2 and shifted is a perfect fit after similarity alignment."""
    gt = _chiral_tetra(0.3, 0.2, 0.1)
    c, s = math.cos(0.7), math.sin(0.7)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    pred = 2.0 * gt @ rz.T + np.array([1.0, -2.0, 0.5])
    got = float(metrics.pa_mpjpe(torch.as_tensor(pred), torch.as_tensor(gt), joint_set=None))
    assert got == pytest.approx(0.0, abs=1e-6)


def test_mean_pairwise_distance_is_the_mean_over_distinct_pairs():
    """Three hypotheses of one joint at x = 0, 0.1, 0.2 m: pair distances 0.1, 0.1, 0.2 → mean 133.33 mm
    (pairs of a hypothesis with itself are not pairs: counting them would give 88.9 mm)."""
    j = torch.tensor([[[[0.0, 0, 0]], [[0.1, 0, 0]], [[0.2, 0, 0]]]], dtype=torch.float64)
    assert float(metrics.mean_pairwise_distance(j)[0]) == pytest.approx(400.0 / 3.0, rel=1e-5)


def test_mean_pairwise_distance_root_relative_centres_each_hypothesis_on_its_own_joint_0():
    """Two hypotheses with the same articulation 0.5 m apart: 500 mm apart in absolute terms, 0 root-relative."""
    h1 = [[0.0, 0, 0], [1.0, 0, 0]]
    h2 = [[0.5, 0, 0], [1.5, 0, 0]]
    j = torch.tensor([[h1, h2]], dtype=torch.float64)
    assert float(metrics.mean_pairwise_distance(j)[0]) == pytest.approx(500.0, rel=1e-5)
    assert float(metrics.mean_pairwise_distance(j, root_relative=True)[0]) == pytest.approx(0.0, abs=1e-6)


def test_kendall_tau_is_tau_b_with_ties():
    """x = [1, 2, 3], y = [1, 1, 2]: 2 concordant pairs, 0 discordant, 1 pair tied in y only, n0 = 3 pairs:
    τ-b = 2 / sqrt((3 − 0)(3 − 1)) = 2/√6 (τ-a would be 2/3)."""
    got = float(metrics.kendall_tau([1.0, 2.0, 3.0], [1.0, 1.0, 2.0]))
    assert got == pytest.approx(2.0 / math.sqrt(6.0), abs=1e-12)


def test_rankdata_gives_ties_their_average_rank():
    got = metrics.rankdata(np.array([10.0, 20.0, 20.0, 30.0])).tolist()
    assert got == [1.0, 2.5, 2.5, 4.0]


def test_standard_metrics_pve_is_pelvis_aligned_not_centroid_aligned():
    """CONTRACTS: PVE "pelvis-aligned with SMPL joint 0". The same pelvis and the predicted mesh shifted 0.1 m:
    pelvis-aligned PVE is 100 mm (centroid alignment would call it 0)."""
    joints = torch.as_tensor(anatomy.REST_JOINTS, dtype=torch.float64)
    gt_verts = torch.tensor([[0.0, 0, 0], [0.1, 0.2, 0], [0.0, 0.3, 0.1], [-0.1, 0.0, 0.2]], dtype=torch.float64)
    pred_verts = gt_verts + torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64)
    out = metrics.standard_metrics(joints, joints, pred_verts, gt_verts)
    assert float(out["pve"]) == pytest.approx(100.0, abs=1e-6)
    assert float(out["mpjpe"]) == pytest.approx(0.0, abs=1e-6)


def test_mpjpe_refuses_a_batch_of_ground_truths_against_hypotheses_of_another_rank():
    """(B,J,3) ground truth against (B,N,J,3) hypotheses would line the batch up with the hypotheses when
    B == N: refused (only equal ranks, or one lone (J,3) set, broadcast)."""
    pred = torch.zeros(2, 2, 24, 3)
    gt = torch.zeros(2, 24, 3)
    with pytest.raises(ValueError):
        metrics.mpjpe(pred, gt)
    with pytest.raises(ValueError):
        metrics.pa_mpjpe(pred, gt)
    assert metrics.mpjpe(pred, torch.zeros(24, 3)).shape == (2, 2)  # one lone set broadcasts


def test_mpjpe_lsp14_root_is_the_mid_hip():
    """lsp14 is root-aligned on the mid-hip (mean of the two LSP hips, SMPL joints 1 and 2). Moving only the
    SMPL right hip (lsp14 position 2) by 0.14 m moves the root by 0.07 m: the 13 other joints are each 70 mm
    off and the moved hip 70 mm the other way → MPJPE 70 mm."""
    gt = torch.as_tensor(anatomy.REST_JOINTS, dtype=torch.float64)
    pred = gt.clone()
    pred[2, 0] += 0.14
    assert float(metrics.mpjpe(pred, gt)) == pytest.approx(70.0, abs=1e-6)


def test_reprojection_error_averages_over_visible_keypoints_only():
    """Four keypoints, two visible (conf > 0) with errors 3 px and 5 px: mean 4 px (not 8/4 = 2)."""
    pred = torch.zeros(4, 2, dtype=torch.float64)
    kp = torch.tensor([[3.0, 0, 1], [0, 5.0, 0.9], [7.0, 0, 0.0], [0, 9.0, 0.0]], dtype=torch.float64)
    assert float(metrics.reprojection_error(pred, kp)) == pytest.approx(4.0)


def test_tied_top1_error_averages_the_tied_best():
    assert metrics.tied_top1_error([1.0, 2.0, 2.0], [10.0, 20.0, 40.0]) == pytest.approx(30.0)


# --------------------------------------------------------------------------------------------- anatomy


def _body_pose(joint: str, axis_angle) -> torch.Tensor:
    bp = torch.zeros(1, 23, 3, dtype=torch.float64)
    bp[0, anatomy.BODY_JOINT_NAMES.index(joint)] = torch.tensor(axis_angle, dtype=torch.float64)
    return bp.reshape(1, 69)


@pytest.mark.parametrize("deg, implausible", [(8.0, False), (12.0, True)])
def test_is_implausible_default_tolerance_is_10_degrees(deg, implausible):
    """CONTRACTS: ``is_implausible(..., limit_tol_deg=10)``. A left knee rotated −deg about x (hyperextension;
    its box is x ∈ [0, 150]°) is deg° outside its box and hyperextended by deg°: 8° passes, 12° does not."""
    bp = _body_pose("left_knee", [-math.radians(deg), 0.0, 0.0])
    knee = anatomy.BODY_JOINT_NAMES.index("left_knee")
    assert float(anatomy.joint_limit_violation(bp)[0, knee]) == pytest.approx(deg, abs=1e-3)
    assert float(anatomy.hyperextension(bp)[0, 0]) == pytest.approx(deg, abs=1e-3)
    assert bool(anatomy.is_implausible(bp)[0]) is implausible


def test_self_penetration_is_the_deepest_overlap_not_a_sum():
    """From the rest skeleton (no overlap), the left wrist (20) and hand (22) put on the torso axis (3 → 9):
    the forearm (r 0.035) and the hand (r 0.03) both meet the torso (r 0.10) at distance 0, overlaps 0.135 m and
    0.13 m; the deepest is 0.135 m."""
    rest = torch.as_tensor(anatomy.REST_JOINTS, dtype=torch.float64)
    assert float(anatomy.self_penetration(rest[None])[0]) == 0.0
    j = rest.clone()
    j[20] = rest[3] + 0.3 * (rest[9] - rest[3])
    j[22] = rest[3] + 0.6 * (rest[9] - rest[3])
    assert float(anatomy.self_penetration(j[None])[0]) == pytest.approx(0.135, abs=1e-9)


def test_capsule_pairs_exclude_what_the_docstring_excludes_and_keep_arm_leg_pairs():
    """_capsule_pairs: thigh–thigh and upper arm–thigh are excluded; a forearm or a hand against either thigh,
    and an upper arm against a shin, must still be tested."""
    names = [c[0] for c in anatomy.CAPSULES]
    pairs = {frozenset((names[a], names[b])) for a, b in anatomy.CAPSULE_PAIRS}
    assert frozenset(("l_thigh", "r_thigh")) not in pairs
    for arm in ("l_upperarm", "r_upperarm"):
        for thigh in ("l_thigh", "r_thigh"):
            assert frozenset((arm, thigh)) not in pairs
    for s1 in "lr":
        for s2 in "lr":
            assert frozenset((f"{s1}_forearm", f"{s2}_thigh")) in pairs
            assert frozenset((f"{s1}_hand", f"{s2}_thigh")) in pairs
            assert frozenset((f"{s1}_upperarm", f"{s2}_shin")) in pairs


def test_forward_kinematics_moves_the_head_with_the_neck():
    """SMPL's head (15) hangs from the neck (12). A neck rotation of 90° about y maps the rest offset
    (x, y, z) of head from neck to (z, y, −x)."""
    go = torch.zeros(1, 3, dtype=torch.float64)
    bp = _body_pose("neck", [0.0, math.pi / 2, 0.0])
    pos = anatomy.forward_kinematics(go, bp)[0]
    v = (anatomy.REST_JOINTS[15] - anatomy.REST_JOINTS[12]).astype(np.float64)
    want = anatomy.REST_JOINTS[12].astype(np.float64) + np.array([v[2], v[1], -v[0]])
    np.testing.assert_allclose(pos[15].numpy(), want, atol=1e-6)
    np.testing.assert_allclose(pos[12].numpy(), anatomy.REST_JOINTS[12], atol=1e-6)


def test_right_elbow_limits_mirror_the_left():
    """Mirroring across the sagittal plane keeps x and negates y and z (module docstring: left elbow flexes with
    y < 0, right with y > 0). Left elbow box ((−30, 30), (−150, 0), (−20, 20)) → right
    ((−30, 30), (0, 150), (−20, 20))."""
    assert anatomy.JOINT_LIMITS_DEG["right_elbow"] == ((-30, 30), (0, 150), (-20, 20))
    assert anatomy.JOINT_LIMITS_DEG["right_hip"] == ((-125, 30), (-40, 40), (-50, 25))


@pytest.mark.parametrize("joint, idx, y_deg, want", [
    ("left_elbow", 2, 12.0, 12.0),  # left flexes with y < 0: y > 0 swings the forearm behind the arm line
    ("right_elbow", 3, -12.0, 12.0),  # mirrored: right flexes with y > 0
    ("left_elbow", 2, -30.0, 0.0),  # flexion is not hyperextension
    ("right_elbow", 3, 30.0, 0.0),
])
def test_elbow_hyperextension_reads_only_the_wrong_way(joint, idx, y_deg, want):
    """Module docstring: left elbow flexes with y < 0, right with y > 0. Rotating the forearm (+x for the left
    arm, −x for the right) by y° about y puts it |y|° off the arm line, behind it (−z) exactly when the rotation is
    against flexion: hyperextension |y|° there, 0 for flexion."""
    bp = _body_pose(joint, [0.0, math.radians(y_deg), 0.0])
    got = anatomy.hyperextension(bp)[0]
    assert float(got[idx]) == pytest.approx(want, abs=1e-4)
    assert float(got.sum()) == pytest.approx(want, abs=1e-4)  # and no other joint reads anything


def test_segment_distance_when_the_closest_point_lies_past_the_second_segment_end():
    """[0,0,0]–[1,0,0] against [2,−3,1]–[2,−1,1]: the closest points are the ends (1,0,0) and (2,−1,1), √3 apart
    (the line of the second segment would reach (2,0,1), past its end)."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    got = anatomy.segment_distance(t(0, 0, 0), t(1, 0, 0), t(2, -3, 1), t(2, -1, 1))
    assert float(got) == pytest.approx(math.sqrt(3.0), abs=1e-9)


def test_best_angle_takes_the_angularly_nearer_end():
    """_best_angle: the sinusoid a_cos·cos t + a_sin·sin t peaks at 170° here; over [−150°, 0°] its value is
    cos(t − 170°): cos 40° = 0.77 at −150° (40° from the peak across ±180°), cos 170° = −0.98 at 0°. The best
    angle is −150°, the end nearer round the circle, not 0°, the end nearer on the number line."""
    peak = math.radians(170.0)
    got = anatomy._best_angle(torch.tensor(math.cos(peak), dtype=torch.float64),
                              torch.tensor(math.sin(peak), dtype=torch.float64),
                              torch.tensor(math.radians(-150.0), dtype=torch.float64),
                              torch.tensor(0.0, dtype=torch.float64))
    assert float(got) == pytest.approx(math.radians(-150.0))


def test_kendall_tau_of_a_group_with_a_nan_is_nan():
    """Docstring: NaN with a NaN (torch.sign(NaN) = 0 would otherwise count it as tied: 1.0 here)."""
    assert math.isnan(float(metrics.kendall_tau([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0])))


def test_pearson_of_a_float_constant_is_nan():
    """Docstring: a constant like [0.1, 0.1, 0.1] is constant although its centred copy is float noise."""
    assert math.isnan(float(metrics.pearson([0.1, 0.1, 0.1], [1.0, 2.0, 3.0])))


def test_group_metrics_per_group_without_reduce():
    """Best / worst / mean per group of N: [[1, 2], [3, 4]] → best [1, 3], worst [2, 4], mean [1.5, 3.5]."""
    out = metrics.group_metrics(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), reduce=False)
    assert out["best"].tolist() == [1.0, 3.0]
    assert out["worst"].tolist() == [2.0, 4.0]
    assert out["mean"].tolist() == [1.5, 3.5]
