"""Session 36 mutation audit of ``hmrcritic/agent/evidence.py``: tests that kill mutants the existing tests let live.

Every expected value below is worked out by hand from the module's docstrings and docs/CONTRACTS.md on a
constructed case (pinhole projection, confidence-weighted means, a plane height), never copied from the code's
output. Each test names the mutant it kills in its docstring.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrcritic.agent.evidence import (
    GroupInputs,
    badness,
    compute_evidence,
    consensus_deviation,
    evidence_tags,
    pairwise_pa_mm,
    project,
    reprojection,
)
from hmrcritic.errors import InputError


class _FlatPrior:
    """A pose prior that reads every pose as typical (these tests are about the other measures)."""

    def nll(self, pose):
        return np.zeros(len(pose))


def _joints(n: int, seed: int = 0) -> np.ndarray:
    """n distinct, non-similar skeletons 3 m in front of the camera (random joint clouds, 30 cm spread)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 24, 3)) * 0.3 + np.array([0.0, 0.0, 3.0])


# ------------------------------------------------------------------------------------------------ projection
def test_a_point_behind_the_camera_is_projected_from_one_centimetre():
    """``project``: "points behind the camera are pushed to z = 1 cm". x = 0.1 m, y = −0.05 m at z = −2 m with
    f = 100 px and the principal point at 0 lands at (0.1 / 0.01 · 100, −0.05 / 0.01 · 100) = (1000, −500) px.
    Kills a clamp at 1 mm (10 000 px)."""
    K = torch.tensor([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 1.0]])
    uv = project(torch.tensor([[0.1, -0.05, -2.0], [0.1, -0.05, 0.0]]), K)
    np.testing.assert_allclose(uv.numpy(), [[1000.0, -500.0], [1000.0, -500.0]], rtol=1e-5)


def test_projection_applies_the_skew_of_the_intrinsics():
    """A pinhole camera maps (x, y, z) to K · (x/z, y/z, 1): u = fx·x/z + s·y/z + cx, v = fy·y/z + cy. With
    fx = 100, s = 5, fy = 200, (cx, cy) = (10, 20) and x/z = 0.1, y/z = 0.2: u = 10 + 1 + 10 = 21, v = 40 + 20 = 60.
    Kills multiplying by K[:2, :2] untransposed (the skew lands on v: (20, 60.5))."""
    K = torch.tensor([[100.0, 5.0, 10.0], [0.0, 200.0, 20.0], [0.0, 0.0, 1.0]])
    uv = project(torch.tensor([[0.2, 0.4, 2.0]]), K)
    np.testing.assert_allclose(uv.numpy(), [[21.0, 60.0]], atol=1e-4)


# ------------------------------------------------------------------------------------------------ reprojection
def test_a_negative_keypoint_confidence_counts_as_unseen():
    """``reproj_px`` is the mean over "the 2D keypoints with confidence > 0": a keypoint with confidence −1 (some
    detectors' "missing") neither weighs negatively nor enters the box. All body keypoints project onto the
    principal point (50, 50); keypoint 0 (conf 1) is 5 px away (3-4-5), keypoint 1 (conf −1) 100 px away:
    the error is 5 px. Kills dropping the clamp (then (5 − 100) / (1 − 1): −inf)."""
    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    coco = torch.zeros(2, 17, 3)
    coco[..., 2] = 2.0
    kp = torch.zeros(17, 3)
    kp[0] = torch.tensor([53.0, 54.0, 1.0])
    kp[1] = torch.tensor([150.0, 50.0, -1.0])
    px, diag = reprojection(coco, kp, K)
    assert px.tolist() == pytest.approx([5.0, 5.0], abs=1e-4)
    assert diag == 0.0  # one visible keypoint: no box


def test_reproj_rel_floors_a_small_box_at_a_tenth_of_the_image_side():
    """"That diagonal is floored at 10 % of the image's longer side … for a person whose visible box is smaller
    than that, reproj_rel is reproj_px over the floor". Two visible keypoints 5 px apart (3-4-5) in a 400 × 300
    image: the box diagonal 5 px is below the 40 px floor. Every body keypoint projects onto the principal point
    (200, 150), which is keypoint 1 itself and 5 px from keypoint 0: reproj_px = (5 + 0) / 2 = 2.5, reproj_rel =
    2.5 / 40 = 0.0625. Kills a fallback used only when the box is empty (2.5 / 5 = 0.5)."""
    coco = np.zeros((2, 17, 3))
    coco[..., 2] = 3.0
    kp = np.zeros((17, 3))
    kp[0] = [203.0, 154.0, 1.0]
    kp[1] = [200.0, 150.0, 1.0]
    K = np.array([[300.0, 0, 200], [0, 300.0, 150], [0, 0, 1]])
    ev = compute_evidence(GroupInputs(joints=_joints(2), coco17=coco, body_pose=np.zeros((2, 69)), keypoints=kp,
                                      K=K, image_size=(400, 300)), prior=_FlatPrior())
    assert ev["reproj_px"].tolist() == pytest.approx([2.5, 2.5])
    assert ev["reproj_rel"].tolist() == pytest.approx([0.0625, 0.0625])


def test_an_overflowing_projection_never_reads_better_aligned_than_a_finite_one():
    """A hypothesis whose projection overflows float32 (x = 1e38 m at z = 1 m, f = 600: inf px, every keypoint
    seen so no 0 · inf NaN) has an infinite reprojection error, reported as the finite cap; a body behind the
    camera, pushed to z = 1 cm, is ~6e4 px off. The overflow must not rank as the better aligned of the two
    (the judge ranks measures within the group). Kills a cap of 1e3."""
    K = np.array([[600.0, 0, 256], [0, 600.0, 256], [0, 0, 1]])
    kp = np.c_[np.full((17, 2), 256.0), np.ones(17)]
    coco = np.zeros((2, 17, 3))
    coco[0, :, 0], coco[0, :, 2] = 1e38, 1.0  # overflow
    coco[1, :, 0], coco[1, :, 2] = 1.0, -3.0  # behind the camera: 1 m / 1 cm · 600 = 60 000 px
    ev = compute_evidence(GroupInputs(joints=_joints(2), coco17=coco, body_pose=np.zeros((2, 69)), keypoints=kp,
                                      K=K, image_size=(512, 512)), prior=_FlatPrior())
    assert ev["reproj_px"][1] == pytest.approx(60000.0, rel=1e-4)
    assert np.isfinite(ev["reproj_px"]).all()
    assert ev["reproj_px"][0] >= ev["reproj_px"][1]
    assert ev["reproj_rel"][0] >= ev["reproj_rel"][1]


# ------------------------------------------------------------------------------------------------ consensus
def test_joint_confidences_outside_0_1_weigh_as_their_nearest_bound():
    """``consensus_dev_mm``: "joints with low 2D confidence count up to twice" — a weight 2 − conf for conf in
    [0, 1], so between 1 and 2 whatever the detector reports. Two hypotheses differ only in joint 5 by 240 mm
    (tied medoids: each deviation is half the weighted pair distance). conf 1.5 there (over-confident) weighs 1
    like a seen joint: 240 / 24 / 2 = 5 mm (unclamped: 0.5 / 23.5 → 2.55 mm); conf −1 weighs 2 like an unseen
    one: 240 · 2 / 25 / 2 = 9.6 mm (unclamped: 3 / 26 → 13.8 mm)."""
    a = torch.as_tensor(_joints(1, seed=9)[0], dtype=torch.float32)
    b = a.clone()
    b[5, 0] += 0.24
    j = torch.stack([a, b])
    conf = torch.ones(24)
    conf[5] = 1.5
    assert consensus_deviation(j, conf).tolist() == pytest.approx([5.0, 5.0], abs=1e-3)
    conf[5] = -1.0
    assert consensus_deviation(j, conf).tolist() == pytest.approx([9.6, 9.6], abs=1e-3)


@pytest.mark.parametrize("chunk", [1, 2, 4, 5])
def test_pairwise_pa_does_not_depend_on_the_chunk_size(chunk):
    """``pairwise_pa_mm`` works "in batched chunks of pairs": the chunk size is a memory knob, never a result.
    Four distinct random skeletons (6 pairs): every pair is filled (> 0 off the diagonal, a random cloud is not
    a similarity transform of another) and equal to the one-chunk answer, for chunks that do and do not divide
    the 6 pairs. Kills a slice that drops the last pair of each chunk and a loop that skips a final partial chunk
    (their entries left at 0)."""
    j = torch.as_tensor(_joints(4, seed=2))
    whole = pairwise_pa_mm(j)
    got = pairwise_pa_mm(j, chunk=chunk)
    off = ~torch.eye(4, dtype=torch.bool)
    assert (got[off] > 1.0).all()
    assert torch.allclose(got, whole, rtol=1e-12, atol=1e-9)


# ------------------------------------------------------------------------------------------------ ground
def test_an_empty_vertex_array_with_a_ground_plane_is_a_clear_error():
    """``vertices`` must be (N, V ≥ 1, 3): a (N, 0, 3) array has no lowest point. Kills dropping the V ≥ 1
    check (a torch "min(): Expected reduction dim" error instead of an InputError)."""
    d = dict(joints=_joints(2), coco17=_joints(2)[:, :17], body_pose=np.zeros((2, 69)),
             keypoints=np.c_[np.full((17, 2), 100.0) + np.arange(17)[:, None], np.ones(17)],
             K=np.array([[500.0, 0, 128], [0, 500.0, 128], [0, 0, 1]]), image_size=(256, 256))
    gi = GroupInputs(**d, ground=(np.array([0.0, -1.0, 0.0]), 1.0), vertices=np.zeros((2, 0, 3)))
    with pytest.raises(InputError, match="vertices"):
        compute_evidence(gi, prior=_FlatPrior())


def test_without_vertices_a_toe_below_the_floor_is_floor_penetration():
    """Without vertices the ground measures read the feet (GroupInputs: "joints used when absent"): the lowest
    body point is a foot joint (SMPL 10/11, the toes) as well as an ankle (7/8). Every joint 50 cm above the floor
    (OpenCV y down, ground normal (0, −1, 0), height = 1 − y) except the left foot joint, 3 cm below it:
    floor_penetration_mm = 30, floating_mm = 0. Kills reading the ankles only (500 mm floating, no penetration)."""
    joints = np.zeros((1, 24, 3))
    joints[..., 1], joints[..., 2] = 0.5, 3.0
    joints[0, 10, 1] = 1.03
    d = dict(joints=joints, coco17=joints[:, :17], body_pose=np.zeros((1, 69)),
             keypoints=np.c_[np.full((17, 2), 100.0) + np.arange(17)[:, None], np.ones(17)],
             K=np.array([[500.0, 0, 128], [0, 500.0, 128], [0, 0, 1]]), image_size=(256, 256))
    ev = compute_evidence(GroupInputs(**d, ground=(np.array([0.0, -1.0, 0.0]), 1.0)), prior=_FlatPrior())
    assert ev["floor_penetration_mm"].tolist() == pytest.approx([30.0], abs=0.01)
    assert ev["floating_mm"].tolist() == [0.0]


# ------------------------------------------------------------------------------------------------ badness / tags
def test_a_better_than_fine_value_has_zero_badness():
    """``badness``: "0 = fine, 1 = clearly bad at scale". A pose the prior finds likelier than the typical train
    pose (standardised NLL −1.5) is fine, not "negatively bad" (which would outweigh a real problem in the
    rationale's worst evidence); an IoU above 1 cannot happen but is fine too. Kills dropping the clip."""
    assert badness("pose_prior_nll", [-1.5, 0.0, 3.0]).tolist() == [0.0, 0.0, 1.0]
    assert badness("penetration_mm", [-0.01]).tolist() == [0.0]


def test_hyperextension_also_tags_the_arms_and_the_legs():
    """``evidence_tags``: "Knee/elbow hyperextension also tags legs/arms, the limbs it concerns". Kills tagging
    one of the two only."""
    assert evidence_tags({"hyperextension_deg": [0.0, 5.0]}) == ["arms", "hyperextension", "legs"]
    assert evidence_tags({"hyperextension_deg": [4.99]}) == []


def test_an_unseen_keypoint_outside_the_image_is_occlusion_not_truncation():
    """``truncation`` is "a visible keypoint outside the image, or … 6 or more of the 17 unseen". One unseen
    keypoint parked at (−1, −1) (a detector's "no detection") is occlusion only; the same point seen is
    truncation. Kills dropping the "visible" condition."""
    kp = np.c_[np.full((17, 2), 100.0), np.ones(17)]
    kp[4] = [-1.0, -1.0, 0.0]
    assert evidence_tags({}, keypoints=kp, image_size=(640, 480)) == ["occlusion"]
    kp[4, 2] = 0.5
    assert evidence_tags({}, keypoints=kp, image_size=(640, 480)) == ["truncation"]


def test_measures_outside_the_registry_are_ignored_by_the_tags():
    """Tags come from :data:`MEASURES`; an evidence dict may carry other entries (an extension's own measure):
    they tag nothing and do not fail. Kills dropping the ``spec is None`` skip (AttributeError)."""
    assert evidence_tags({"my_measure": [1e9], "penetration_mm": [0.0]}) == []
    assert evidence_tags({"my_measure": [1e9], "penetration_mm": [10.0]}) == ["penetration"]


def test_a_well_fitting_silhouette_does_not_tag_alignment():
    """``silhouette_iou`` is lower-is-worse: its tag fires when a hypothesis reaches ``tag_at`` (0.6) from *below*.
    IoUs 0.9 and 0.95 are good fits and tag nothing; 0.5 tags ``alignment``. Kills comparing on the wrong side
    (every good fit tagged, so the alignment rules were retrieved for every group with a mask)."""
    assert evidence_tags({"silhouette_iou": [0.9, 0.95]}) == []
    assert evidence_tags({"silhouette_iou": [0.9, 0.5]}) == ["alignment"]
