"""Evidence measures on edge inputs and on constructed cases with a known answer.

Two kinds of tests: (1) inputs that used to crash in torch/numpy or whose NaN was silently turned into a
plausible-looking 0 by the final ``nan_to_num`` (now a clear :class:`InputError`); (2) groups whose answer
is known (identical hypotheses, N = 1/2, a roll about the camera axis, a hand inside the torso, a lengthened
shin, a mirrored pose, a body behind the camera or far away): every measure defined, finite and as expected.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

# the camera and the upright rotation of the measures' own tests (body and prior: conftest fixtures)
from test_evidence import UPRIGHT, K  # noqa: E402

from hmrcritic.agent.evidence import GroupInputs, compute_evidence, project
from hmrcritic.errors import InputError
from hmrcritic.hmr import anatomy as A
from hmrcritic.hmr.rotations import axis_angle_to_matrix, euler_to_matrix, matrix_to_axis_angle


def _pose(**joints) -> np.ndarray:
    """body_pose (69,) from per-joint XYZ Euler angles in degrees."""
    e = torch.zeros(23, 3)
    for name, xyz in joints.items():
        e[A.BODY_JOINT_NAMES.index(name)] = torch.tensor(xyz, dtype=torch.float32)
    return matrix_to_axis_angle(euler_to_matrix(e.deg2rad())).reshape(69).numpy()


def _group(body, body_pose, global_orient=None, transl=(0.0, 0.2, 3.5), keypoints=None) -> GroupInputs:
    bp = np.asarray(body_pose, np.float32).reshape(-1, 69)
    n = len(bp)
    go = np.repeat(UPRIGHT[None], n, 0) if global_orient is None else np.asarray(global_orient, np.float32)
    tr = torch.tensor([list(transl)] * n, dtype=torch.float32)
    out = body(torch.as_tensor(go), torch.as_tensor(bp), torch.zeros(n, 10), tr)
    coco = body.coco17(out)
    if keypoints is None:  # keypoints of the first hypothesis (the "true" pose)
        uv = project(coco[0], torch.as_tensor(K)).numpy()
        keypoints = np.concatenate([uv, np.ones((17, 1))], 1).astype(np.float32)
    return GroupInputs(joints=out.joints.numpy(), coco17=coco.numpy(), body_pose=bp, keypoints=keypoints, K=K,
                       image_size=(512, 512))


def _finite(ev: dict[str, np.ndarray], n: int) -> None:
    for name, v in ev.items():
        assert v.shape == (n,), name
        assert np.isfinite(v).all(), name


# ------------------------------------------------------------------------- (1) clear errors, not silent zeros
def test_an_empty_group_is_a_clear_error(body, prior):
    gi = _group(body, np.zeros((1, 69)))
    gi.joints, gi.coco17, gi.body_pose = gi.joints[:0], gi.coco17[:0], gi.body_pose[:0]
    with pytest.raises(InputError, match="no hypotheses"):  # was a RuntimeError from torch's reshape
        compute_evidence(gi, prior=prior)


def test_a_nan_joint_confidence_is_not_read_as_full_consensus(body, prior):
    bp = np.zeros((3, 69), np.float32)
    bp[2, 9] = 0.8  # the third hypothesis is an outlier: its consensus distance is clearly > 0
    gi = _group(body, bp)
    gi.joint_conf = np.ones(24)
    assert compute_evidence(gi, prior=prior)["consensus_dev_mm"][2] > 10.0
    gi.joint_conf[3] = np.nan  # was: every consensus_dev_mm silently 0 (NaN → nan_to_num)
    with pytest.raises(InputError, match="joint_conf"):
        compute_evidence(gi, prior=prior)
    gi.joint_conf = np.ones(17)  # COCO-17 confidences by mistake: was a torch size-mismatch RuntimeError
    with pytest.raises(InputError, match="joint_conf"):
        compute_evidence(gi, prior=prior)


def test_a_bad_precomputed_pairwise_matrix_is_a_clear_error(body, prior):
    gi = _group(body, np.zeros((3, 69)))
    gi.pairwise_pa_mm = np.zeros((2, 2))  # another group's matrix: was a consensus_pa_mm of length 2
    with pytest.raises(InputError, match="pairwise_pa_mm"):
        compute_evidence(gi, prior=prior)
    gi.pairwise_pa_mm = np.full((3, 3), np.nan)  # was: silently 0 for everyone
    with pytest.raises(InputError, match="pairwise_pa_mm"):
        compute_evidence(gi, prior=prior)


def test_mismatched_masks_are_a_clear_error(body, prior):
    gi = _group(body, np.zeros((3, 69)))
    gi.mask = np.ones((512, 512), bool)
    gi.pred_masks = np.ones((2, 512, 512), bool)  # was broadcast: silhouette_iou of length 2 for 3 hypotheses
    with pytest.raises(InputError, match="pred_masks"):
        compute_evidence(gi, prior=prior)
    gi.pred_masks = np.ones((3, 256, 256), bool)  # was a numpy broadcasting ValueError
    with pytest.raises(InputError, match="pred_masks"):
        compute_evidence(gi, prior=prior)
    gi.pred_masks = np.ones((3, 512, 512), bool)
    assert compute_evidence(gi, prior=prior)["silhouette_iou"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("ground, vertices, match", [
    ((np.zeros(3), 1.0), None, "zero vector"),  # was: height = d everywhere, 1000 mm floating for all
    ((np.array([0.0, np.nan, 0.0]), 1.0), None, "ground normal"),  # was: silently 0 and 0
    ((np.array([0.0, -1.0, 0.0]), float("nan")), None, "offset"),  # was: silently 0 and 0
    ((np.array([0.0, -1.0, 0.0]), "1 m"), None, "offset"),  # was: a ValueError traceback
    ((np.array([0.0, -1.0, 0.0]), None), None, "offset"),  # was: a TypeError traceback
    ((np.array([0.0, -1.0, 0.0]), 1.0), np.full((3, 10, 3), np.nan), "vertices"),  # was: silently 0 and 0
    ((np.array([0.0, -1.0, 0.0]), 1.0), np.zeros((2, 10, 3)), "vertices"),  # was: 2 values for 3 hypotheses
])
def test_a_bad_ground_plane_is_a_clear_error(body, prior, ground, vertices, match):
    gi = _group(body, np.zeros((3, 69)))
    gi.ground, gi.vertices = ground, vertices
    with pytest.raises(InputError, match=match):
        compute_evidence(gi, prior=prior)


def test_a_non_positive_image_size_is_a_clear_error(body, prior):
    gi = _group(body, np.zeros((2, 69)))
    kp = gi.keypoints.copy()
    kp[1:, 2] = 0  # one visible keypoint: reproj_rel falls back to the image size, which was 0 → 0/0 → 0
    gi.keypoints, gi.image_size = kp, (0, 0)
    with pytest.raises(InputError, match="image_size"):
        compute_evidence(gi, prior=prior)


# ------------------------------------------------------------------------- (2) constructed known answers
def test_identical_hypotheses_agree_perfectly(body, prior):
    bp = np.repeat(_pose(left_knee=(40, 0, 0), left_shoulder=(0, 0, -70))[None], 4, 0)
    ev = compute_evidence(_group(body, bp), prior=prior)
    _finite(ev, 4)
    assert ev["consensus_dev_mm"].tolist() == [0.0] * 4 and ev["consensus_pa_mm"].tolist() == [0.0] * 4
    for name, v in ev.items():
        assert len(set(v.tolist())) == 1, name  # nothing tells identical hypotheses apart
    assert ev["reproj_px"][0] == 0.0


@pytest.mark.parametrize("n", [1, 2])
def test_groups_of_one_and_two_are_defined(body, prior, n):
    bp = np.zeros((n, 69), np.float32)
    if n == 2:
        bp[1] = _pose(left_knee=(30, 0, 0))
    ev = compute_evidence(_group(body, bp), prior=prior)
    _finite(ev, n)
    if n == 1:
        assert ev["consensus_dev_mm"].tolist() == [0.0] and ev["consensus_pa_mm"].tolist() == [0.0]
    else:  # the Procrustes distance is symmetric: both are the same distance from each other
        assert ev["consensus_pa_mm"][0] == ev["consensus_pa_mm"][1] > 0
        # and so is the medoid distance: with two hypotheses neither is the consensus (the first was: 0 mm,
        # its partner the whole distance — a preference from the group's order alone)
        assert ev["consensus_dev_mm"][0] == ev["consensus_dev_mm"][1] > 0


def test_a_roll_about_the_camera_axis_grows_the_reprojection_error(body, prior):
    R = axis_angle_to_matrix(torch.as_tensor(UPRIGHT)[None])
    degs = [0, 5, 10, 20, 40]
    go = torch.cat([matrix_to_axis_angle(axis_angle_to_matrix(torch.tensor([[0.0, 0.0, math.radians(d)]])) @ R)
                    for d in degs]).numpy()
    bp = np.repeat(_pose(left_shoulder=(0, 0, -70), right_shoulder=(0, 0, 70))[None], len(degs), 0)
    ev = compute_evidence(_group(body, bp, global_orient=go), prior=prior)
    px = ev["reproj_px"]
    assert px[0] == 0.0 and (np.diff(px) > 0).all()
    # small angles: the error is about proportional to the angle (chord ≈ r·θ)
    assert px[2] / px[1] == pytest.approx(2.0, rel=0.02)
    assert ev["consensus_pa_mm"].max() == 0.0  # the same articulated pose: nothing for Procrustes to find
    assert ev["joint_limit_deg"].max() == 0.0 and ev["hyperextension_deg"].max() == 0.0


def test_a_hand_inside_the_torso_measures_the_capsule_overlap(body, prior):
    gi = _group(body, np.zeros((2, 69)))
    j = gi.joints.copy()
    j[1, 21] = j[1, 6]  # right wrist on the torso axis (spine2), right hand 5 cm in front of it
    j[1, 23] = j[1, 6] + np.array([0.0, 0.0, 0.05], np.float32)
    gi.joints = j
    ev = compute_evidence(gi, prior=prior)
    # deepest pair: the right forearm ending on the torso axis, radii 0.10 + 0.035 m, distance ≈ 0
    assert ev["penetration_mm"][0] == 0.0
    assert ev["penetration_mm"][1] == pytest.approx(135.0, abs=1.0)


def test_a_lengthened_shin_reads_as_asymmetry(body, prior):
    gi = _group(body, np.zeros((2, 69)))
    j = gi.joints.copy()
    j[1, 7] = j[1, 4] + 1.1 * (j[1, 7] - j[1, 4])  # left shin 10 % longer than the right one
    gi.joints = j
    ev = compute_evidence(gi, prior=prior)
    assert ev["asymmetry"][0] == 0.0
    assert ev["asymmetry"][1] == pytest.approx(0.1 / 1.05 / 4, abs=2e-4)  # one bone of four, relative to the mean


def test_a_mirrored_pose_is_as_plausible_but_disagrees(body, prior):
    from hmrcritic.hmr.poses import sample_poses

    e = sample_poses(1, seed=5)["body_pose"].numpy().reshape(23, 3)
    names = A.BODY_JOINT_NAMES
    swap = [names.index(n.replace("left_", "R_").replace("right_", "left_").replace("R_", "right_")) for n in names]
    mirrored = e[swap] * np.array([1.0, -1.0, -1.0], np.float32)  # sagittal mirror: keep x, negate y and z
    bp = np.stack([e.reshape(69), mirrored.reshape(69)])
    ev = compute_evidence(_group(body, bp), prior=prior)
    for name in ("joint_limit_deg", "hyperextension_deg", "penetration_mm", "asymmetry"):
        assert ev[name][0] == pytest.approx(ev[name][1], abs=0.05), name  # limits are mirror-symmetric
    assert ev["consensus_pa_mm"][0] > 50.0  # a rotation cannot align a mirror image
    assert ev["reproj_px"][1] > ev["reproj_px"][0]


def test_hyperextension_of_knees_and_elbows_by_a_known_angle(body, prior):
    bp = np.stack([
        _pose(left_knee=(5, 0, 0), right_knee=(90, 0, 0), left_elbow=(0, -90, 0), right_elbow=(0, 10, 0)),
        _pose(right_knee=(-25, 0, 0)),
        _pose(left_elbow=(0, 15, 0), right_elbow=(0, -35, 0)),
    ])
    ev = compute_evidence(_group(body, bp), prior=prior)
    assert ev["hyperextension_deg"].tolist() == pytest.approx([0.0, 25.0, 35.0], abs=0.01)
    assert ev["joint_limit_deg"].tolist() == pytest.approx([0.0, 25.0, 50.0], abs=0.05)


@pytest.mark.parametrize("case", ["some_occluded_or_outside", "behind_camera", "far_away", "degenerate_limbs"])
def test_edge_geometry_gives_finite_evidence(body, prior, case):
    bp = np.stack([np.zeros(69, np.float32), _pose(left_knee=(60, 0, 0))])
    gi = _group(body, bp)
    if case == "some_occluded_or_outside":
        kp = gi.keypoints.copy()
        kp[:5, 2] = 0  # face not seen
        kp[5, 0], kp[6, 1] = -300.0, 2000.0  # shoulders outside the image
        gi.keypoints = kp
    elif case == "behind_camera":
        gi = _group(body, bp, transl=(0.0, 0.2, -3.5), keypoints=gi.keypoints)
    elif case == "far_away":
        gi = _group(body, bp, transl=(0.0, 0.2, 1e4), keypoints=gi.keypoints)
    else:  # the left leg collapsed onto the hip
        j = gi.joints.copy()
        j[:, [4, 7, 10]] = j[:, [1]]
        gi.joints = j
    ev = compute_evidence(gi, prior=prior)
    _finite(ev, 2)
    if case == "behind_camera":
        assert ev["reproj_px"].min() > 1000.0  # clamped to z = 1 cm: far off, but a number
    if case == "degenerate_limbs":
        # two of four bones have length 0 on the left: |0 − L| / (L / 2) = 2 each, mean over four = 1
        assert ev["asymmetry"][0] == pytest.approx(1.0, abs=1e-3)


def test_a_body_standing_on_the_floor_touches_it(body, prior):
    gi = _group(body, np.zeros((2, 69)))
    out = body(torch.as_tensor(np.repeat(UPRIGHT[None], 2, 0)), torch.zeros(2, 69), torch.zeros(2, 10),
               torch.tensor([[0.0, 0.2, 3.5], [0.0, 0.1, 3.5]]))  # the second one 10 cm higher
    gi.vertices = out.vertices.numpy()
    sole = float(gi.vertices[0, :, 1].max())  # OpenCV y is down: the lowest vertex has the largest y
    gi.ground = (np.array([0.0, -1.0, 0.0]), sole)  # height = sole − y
    ev = compute_evidence(gi, prior=prior)
    assert ev["floor_penetration_mm"].tolist() == [0.0, 0.0]
    assert ev["floating_mm"].tolist() == pytest.approx([0.0, 100.0], abs=0.05)


@pytest.mark.parametrize("n", [16, 100])
def test_large_groups_give_every_measure_per_hypothesis(body, prior, n):
    """Groups of 16 and 100 hypotheses: every measure one finite value per hypothesis, in one call (the speed of
    the vectorised measures is benchmarks/bench_agent.py's to show, not a test's)."""
    from hmrcritic.hmr.poses import sample_poses

    bp = sample_poses(n, seed=1)["body_pose"].numpy()
    ev = compute_evidence(_group(body, bp), prior=prior)
    _finite(ev, n)
