"""The procedural pose source: valid, non-penetrating, correlated, covering, deterministic."""

from __future__ import annotations

import numpy as np
import torch

from hmrcritic.hmr import anatomy as A
from hmrcritic.hmr.poses import POSE_CATEGORIES, sample_poses
from hmrcritic.hmr.rotations import axis_angle_to_matrix, matrix_to_euler_xyz


def euler_deg(body_pose):
    return matrix_to_euler_xyz(axis_angle_to_matrix(body_pose.reshape(-1, 23, 3))).rad2deg().numpy()


def test_poses_are_valid_and_cover_categories():
    out = sample_poses(300, seed=3)
    assert out["body_pose"].shape == (300, 69) and out["global_orient_body"].shape == (300, 3)
    assert out["betas"].shape == (300, 10) and out["betas"].abs().max() <= 2.5
    assert set(out["category"].tolist()) == set(range(len(POSE_CATEGORIES)))
    assert A.joint_limit_violation(out["body_pose"]).max() < 0.1
    assert A.hyperextension(out["body_pose"]).max() < 1.0
    j = A.forward_kinematics(out["global_orient_body"], out["body_pose"])
    assert A.self_penetration(j).max() == 0.0
    assert not A.is_implausible(out["body_pose"], j).any()


def test_deterministic_per_seed():
    a, b, c = sample_poses(50, 7), sample_poses(50, 7), sample_poses(50, 8)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["body_pose"], c["body_pose"])


def test_walking_has_anti_phase_legs_and_contralateral_arms():
    e = euler_deg(sample_poses(300, 1, ["walking"])["body_pose"])
    lhip, rhip = e[:, 0, 0], e[:, 1, 0]
    lsho = e[:, A.BODY_JOINT_NAMES.index("left_shoulder"), 0]
    assert np.corrcoef(lhip, rhip)[0, 1] < -0.6
    # Left leg forward (hip x < 0) goes with the left arm back (shoulder x > 0).
    assert np.corrcoef(lhip, lsho)[0, 1] < -0.6


def test_sitting_couples_hip_and_knee_flexion():
    out = sample_poses(300, 2, ["sitting"])
    e = euler_deg(out["body_pose"])
    hip_flex, knee_flex = -e[:, 0, 0], e[:, 3, 0]
    assert hip_flex.mean() > 60 and knee_flex.mean() > 50
    j = A.forward_kinematics(out["global_orient_body"], out["body_pose"])
    # Thighs roughly horizontal: knee near hip height, in front of it.
    assert np.abs((j[:, 4, 1] - j[:, 1, 1]).numpy()).mean() < 0.2
    assert (j[:, 4, 2] - j[:, 1, 2]).mean() > 0.25


def test_lying_bodies_lie_down_and_standing_ones_stand():
    lying = sample_poses(100, 4, ["lying"])
    up = axis_angle_to_matrix(lying["global_orient_body"])[:, :, 1]  # the body's up axis in the world
    assert up[:, 1].abs().max() < 0.5
    standing = sample_poses(100, 4, ["standing"])
    up = axis_angle_to_matrix(standing["global_orient_body"])[:, :, 1]
    assert up[:, 1].min() > 0.9


def test_not_independent_uniform_noise():
    # Per-joint angles are far from uniform over their ranges: most mass sits near the archetypes.
    e = euler_deg(sample_poses(400, 5, ["standing"])["body_pose"])
    knee = e[:, 3, 0]
    assert np.percentile(knee, 90) < 40  # a standing knee rarely bends (its range is 0–150°)
