"""Review s26 (mutation testing of the scoring core): tests that kill mutants of ``hmr/anatomy.py``,
``agent/evidence.py``, ``agent/judges.py`` (the builtin judge), ``agent/calibration.py`` and ``agent/prior.py`` that
every earlier test let live.

Each test asserts a property worked out here — a hand-computed value on a constructed skeleton, an independent
reference (scipy's Gaussian density), the definition a docstring gives — never the code's own output pinned.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmrcritic.hmr import anatomy


def _rest_joints() -> torch.Tensor:
    return torch.as_tensor(anatomy.REST_JOINTS, dtype=torch.float64).clone()[None]


# ----------------------------------------------------------------------------------------------------------------
# anatomy: self-penetration
# ----------------------------------------------------------------------------------------------------------------

def test_a_forearm_through_the_head_is_penetration_of_the_sum_of_both_radii():
    """A hand through the face is the module's own example of self-penetration ("a hand through the chest"): a
    forearm capsule that crosses the head capsule's axis overlaps it by the sum of both radii (8 + 3.5 cm). The
    head–forearm pair was removable from the pair list with every test still passing."""
    j = _rest_joints()
    neck, head = j[0, 12], j[0, 15]
    y = 0.5 * (neck[1] + head[1])
    t = (y - neck[1]) / (head[1] - neck[1])
    on_axis = neck + t * (head - neck)  # a point of the head capsule's axis
    # left forearm straight through that point, front to back; the hand continues behind the head
    j[0, 18] = on_axis + torch.tensor([0.0, 0.0, 0.30], dtype=torch.float64)
    j[0, 20] = on_axis + torch.tensor([0.0, 0.0, -0.30], dtype=torch.float64)
    j[0, 22] = on_axis + torch.tensor([0.0, 0.0, -0.38], dtype=torch.float64)
    assert float(anatomy.self_penetration(j)[0]) == pytest.approx(0.08 + 0.035, abs=1e-6)
    assert bool(anatomy.is_implausible(torch.zeros(1, 69, dtype=torch.float64), j)[0])


# ----------------------------------------------------------------------------------------------------------------
# the pose prior
# ----------------------------------------------------------------------------------------------------------------

def test_prior_raw_nll_is_minus_the_log_density_of_the_gaussian_mixture():
    """``raw_nll`` is −log p(x) of the mixture Σ w_c N(x | μ_c, L_c L_cᵀ) — checked against scipy's density: the
    log-determinant (a ``log|L|`` for ``2 log|L|``) or the weights dropped from it change which component, and so
    which pose, reads likelier, and no test compared the density with a reference."""
    from scipy.stats import multivariate_normal

    from hmrcritic.agent.prior import PosePrior

    rng = np.random.default_rng(3)
    D = 3
    w = np.array([0.2, 0.8])
    means = rng.normal(size=(2, D))
    a = rng.normal(size=(2, D, D))
    covs = a @ a.transpose(0, 2, 1) + np.stack([np.eye(D) * 0.5, np.eye(D) * 2.0])
    prior = PosePrior(w, means, np.linalg.cholesky(covs), reference=0.0)
    x = rng.normal(size=(6, D)) * 2.0
    dens = sum(w[c] * multivariate_normal(means[c], covs[c]).pdf(x) for c in range(2))
    got = prior.raw_nll(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, -np.log(dens), rtol=1e-9)


def test_standardised_nll_of_the_training_poses_has_mean_zero_and_unit_spread():
    """The module's definition: ``nll`` is standardised *over the training poses*, "so 0 is a typical train pose
    and 5 is five train standard deviations less likely". Over the very poses the prior was fitted on, the
    standardised values must therefore have mean 0 and standard deviation 1."""
    from hmrcritic.agent.prior import fit_gmm, pose_features
    from hmrcritic.hmr.poses import sample_poses

    poses = sample_poses(300, seed=5)["body_pose"]
    prior = fit_gmm(pose_features(poses), components=2, iters=5)
    z = prior.nll(poses)
    assert z.mean() == pytest.approx(0.0, abs=1e-6)
    assert z.std(ddof=1) == pytest.approx(1.0, abs=1e-6)


def test_em_moves_the_component_means_onto_two_separated_clusters():
    """EM's M step: each component's mean is the responsibility-weighted mean of its points. On two clusters 10
    standard deviations apart, the fitted means are the two cluster means (to their sampling error), whichever
    points seeded them."""
    from hmrcritic.agent.prior import fit_gmm

    rng = np.random.default_rng(0)
    centres = np.array([[-5.0, 0.0], [5.0, 0.0]])
    x = np.concatenate([rng.normal(size=(200, 2)) + centres[0], rng.normal(size=(200, 2)) + centres[1]])
    prior = fit_gmm(torch.as_tensor(x), components=2, iters=10)
    got = prior.means[np.argsort(prior.means[:, 0])]
    expected = np.stack([x[:200].mean(0), x[200:].mean(0)])
    np.testing.assert_allclose(got, expected, atol=1e-3)
    np.testing.assert_allclose(prior.weights, [0.5, 0.5], atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# the builtin judge
# ----------------------------------------------------------------------------------------------------------------

def test_generic_badness_ranks_ties_at_their_mean_rank_like_scipy():
    """``generic_badness``: "each hypothesis' within-group rank on the worse side (0 = best, 1 = worst; ties share
    their mean rank)". Checked against scipy's ``rankdata`` (average method) on a measure with ties, on the worse
    side (a higher-is-better measure is ranked on its negation): giving ties their lowest rank instead favoured
    every tied hypothesis over its untied neighbours."""
    from scipy.stats import rankdata

    from hmrcritic.agent.judges import generic_badness

    px = [3.0, 1.0, 3.0, 2.0, 3.0]
    iou = [0.5, 0.9, 0.5, 0.9, 0.7]  # higher is better
    n = len(px)
    overall, axes = generic_badness({"reproj_px": px, "silhouette_iou": iou}, n)
    r_px = (rankdata(px) - 1) / (n - 1)
    r_iou = (rankdata(-np.asarray(iou)) - 1) / (n - 1)
    np.testing.assert_allclose(overall, (r_px + r_iou) / 2, rtol=1e-12)
    np.testing.assert_allclose(axes["image_alignment"], (r_px + r_iou) / 2, rtol=1e-12)


def test_a_group_without_any_physical_problem_reads_ten_on_physical_feasibility():
    """``generic_badness``: on the per-axis scores a measure on which the whole group ties counts 0 — "a group with no
    joint-limit, hyperextension or penetration at all reads 10 on physical feasibility rather than the 8.6 of a
    shared mean rank". The axis score a report shows would otherwise call a flawless group's physics mediocre."""
    from hmrcritic.agent.judges import BuiltinJudge, JudgeContext

    n = 4
    ev = {"joint_limit_deg": [0.0] * n, "hyperextension_deg": [0.0] * n, "penetration_mm": [0.0] * n,
          "reproj_px": [4.0, 9.0, 2.0, 30.0]}
    crit = BuiltinJudge().critique(JudgeContext(group_id="g", num_hypotheses=n, evidence=ev))
    assert [s.physical_feasibility for s in crit.scores] == [10.0] * n
    # the measure that does separate them still does, on its own axis: best 10, worst 10·exp(−0.3)
    align = [s.image_alignment for s in crit.scores]
    assert max(align) == pytest.approx(10.0) and min(align) == pytest.approx(10.0 * math.exp(-0.3))


def _euler_deg_to_matrix(x: float, y: float, z: float) -> np.ndarray:
    """Intrinsic XYZ Euler angles (degrees) → Rx(x) @ Ry(y) @ Rz(z), written out here (the docs' convention)."""
    a, b, c = np.deg2rad([x, y, z])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def test_an_elbow_hyperextended_past_the_tolerance_is_implausible_though_its_limits_are_nearly_kept():
    """``is_implausible``: "a knee/elbow hyperextended by more than ``limit_tol_deg``" is implausible on its own.
    A left elbow twisted −30° about the upper arm and turned 28° about z (8° past its ±20° box) carries its forearm
    R·(1, 0, 0) behind the arm line by atan2(−f_z, f_x) ≈ 15°, while its joint-limit distance stays under the
    10° tolerance: only the hyperextension clause can flag it, and dropping that clause passed every test."""
    from scipy.spatial.transform import Rotation

    r = _euler_deg_to_matrix(-30.0, 0.0, 28.0)
    fore = r @ np.array([1.0, 0.0, 0.0])
    behind = math.degrees(math.atan2(-fore[2], fore[0]))
    assert behind > 12.0  # worked out here: ≈ 14.9°
    bp = torch.zeros(1, 23, 3, dtype=torch.float64)
    bp[0, anatomy.BODY_JOINT_NAMES.index("left_elbow")] = torch.as_tensor(Rotation.from_matrix(r).as_rotvec())
    bp = bp.reshape(1, 69)
    assert float(anatomy.hyperextension(bp)[0, 2]) == pytest.approx(behind, abs=1e-6)
    assert float(anatomy.joint_limit_violation(bp).amax()) < 10.0  # the limits alone would let it pass
    assert bool(anatomy.is_implausible(bp)[0])


def test_dominance_needs_one_strictly_better_measure_and_reads_only_what_fired_rules_read():
    """``dominance``: j dominates i when it is "no worse on every measure a fired rule reads (every measure when no
    rule fires) and better on one". Equal evidence is no dominance either way (else the revise step swaps two
    identical hypotheses back and forth); with a rule firing on ``reproj_px``, a hypothesis better there
    dominates one that only beats it on a measure no fired rule reads."""
    from hmrcritic.agent.judges import dominance
    from hmrcritic.memory.schema import Rule, RuleCondition

    same = {"reproj_px": [5.0, 5.0], "asymmetry": [0.01, 0.01]}
    assert not dominance([], same, 2).any()

    ev = {"reproj_px": [40.0, 10.0], "asymmetry": [0.01, 0.02]}
    # no rule fires: every measure counts, and each hypothesis is better on one of them
    assert not dominance([], ev, 2).any()
    rule = Rule(rule_id="r1", text="reproj_px > 30 px", condition=RuleCondition(
        measure="reproj_px", comparator=">", threshold=30.0, points=2.0, axis="image_alignment"))
    dom = dominance([rule], ev, 2)
    assert dom.tolist() == [[False, True], [False, False]]  # h1 dominates h0 on what the rule reads


def test_prototype_consensus_by_hand():
    """``prototype_consensus``: the value is the softmax(similarity / temperature)-weighted settled overall and the
    confidence the top similarity to the fourth (BuiltinJudge: "confidence = top similarity⁴"). Two hits at
    similarities 0.9 and 0.8 with temperature 0.05 weigh 1 : e⁻²."""
    from hmrcritic.agent.judges import PrototypeHit, prototype_consensus

    def hit(sim, overall):
        return PrototypeHit(proto_id=f"p{sim}", similarity=sim, overall=overall, motion_structure=overall,
                            physical_feasibility=overall, image_alignment=overall)

    value, conf = prototype_consensus([hit(0.8, 2.0), hit(0.9, 8.0)], temperature=0.05)
    w = math.exp(-2.0)
    assert value == pytest.approx((8.0 + 2.0 * w) / (1.0 + w), rel=1e-12)
    assert conf == pytest.approx(0.9**4, rel=1e-12)


def test_the_level_shift_stops_where_the_best_score_reaches_ten():
    """``calibrate_level``: "one shift for every hypothesis, capped so that no score passes 10 (clipping would tie
    the best ones)". Scores 9 and 5 pulled fully toward a level of 10 move by log(10/9), no more: the best lands
    on 10 and the other on 5·10/9, still apart."""
    from hmrcritic.agent.judges import calibrate_level

    out, shift = calibrate_level(np.log([9.0, 5.0]), (math.log(10.0), 1.0), share=1.0)
    assert shift == pytest.approx(math.log(10.0 / 9.0), rel=1e-12)
    np.testing.assert_allclose(np.exp(out), [10.0, 5.0 * 10.0 / 9.0], rtol=1e-12)
    # uncapped, the move is share · confidence of the way from the group's mean log score to the level
    out, shift = calibrate_level(np.log([4.0, 1.0]), (math.log(1.0), 0.5), share=0.3)
    assert shift == pytest.approx(0.3 * 0.5 * (0.0 - math.log(2.0)), rel=1e-12)


def test_similar_past_poses_that_went_well_lift_a_score_and_ones_that_went_badly_lower_it():
    """BuiltinJudge step 3a: prototypes multiply ``overall`` by ((value + 0.1) / 10.1) ** β, β = 0.3 · proto_weight
    · confidence. Two hypotheses with identical evidence (mean rank ½ each: 10·e^(−0.15)), one recalling a past pose
    settled at 9 and the other one settled at 1, both at similarity 1 (confidence 1, β = 0.09): by hand."""
    from hmrcritic.agent.judges import BuiltinJudge, JudgeContext, PrototypeHit

    def hit(overall):
        return PrototypeHit(proto_id=f"p{overall}", similarity=1.0, overall=overall, motion_structure=overall,
                            physical_feasibility=overall, image_alignment=overall)

    ctx = JudgeContext(group_id="g", num_hypotheses=2, evidence={"reproj_px": [5.0, 5.0]},
                       prototypes=[[hit(9.0)], [hit(1.0)]])
    crit = BuiltinJudge(proto_weight=0.3).critique(ctx)
    base = 10.0 * math.exp(-0.3 * 0.5)
    beta = 0.3 * 0.3 * 1.0
    assert crit.scores[0].overall == pytest.approx(base * (9.1 / 10.1) ** beta, rel=1e-9)
    assert crit.scores[1].overall == pytest.approx(base * (1.1 / 10.1) ** beta, rel=1e-9)


def test_revising_with_a_missed_rule_on_a_calibrated_scale_takes_off_slope_times_the_points():
    """BuiltinJudge.revise: "a point is worth ``slope`` times less on a calibrated scale" — the calibration maps
    log s to intercept + slope · log s, so a rule's −0.03 · points in log s is −slope · 0.03 · points in the
    calibrated score. A 4-point rule missed on h0 of a critique calibrated with slope ½: ×exp(−0.06), by hand."""
    from hmrcritic.agent.judges import BuiltinJudge, JudgeContext, ReflectionIssue
    from hmrcritic.agent.schema import GroupCritique, HypothesisScore
    from hmrcritic.memory.schema import Rule, RuleCondition, ScoreCalibration

    rule = Rule(rule_id="r1", text="reproj_px > 30 px", condition=RuleCondition(
        measure="reproj_px", comparator=">", threshold=30.0, points=4.0))
    prev = GroupCritique(scores=[HypothesisScore(index=i, motion_structure=8, physical_feasibility=8,
                                                 image_alignment=8, overall=8.0, rationale="-") for i in range(2)])
    cal = ScoreCalibration(judge="builtin", slope=0.5, intercept=0.0, groups=1, hypotheses=2, pearson_before=0.5,
                           pearson_after=0.5)
    ctx = JudgeContext(group_id="g", num_hypotheses=2, evidence={"reproj_px": [40.0, 10.0]}, rules=[rule],
                       previous=prev, round=1, calibration=cal,
                       issues=[ReflectionIssue(kind="rule", indices=[0], rule_id="r1")])
    crit = BuiltinJudge().critique(ctx)
    assert crit.scores[0].overall == pytest.approx(8.0 * math.exp(-0.5 * 0.03 * 4.0), rel=1e-12)
    assert crit.scores[1].overall == 8.0
    assert "r1" in crit.rules_applied


def test_a_mined_rule_on_a_higher_is_better_measure_fires_on_the_over_rated_hypotheses_only():
    """BuiltinJudge.propose_rules: the measure that separates the over-rated hypotheses (critic rank much better than
    true rank) becomes a rule "with its threshold halfway between the two groups' medians", on the worse side. For
    ``silhouette_iou`` (higher is better) the worse side is *below*: the rule must fire on the two over-rated
    hypotheses (IoU 0.2) and on none of the well-fitting rest."""
    from hmrcritic.agent.judges import BuiltinJudge, JudgeContext, Mistake

    iou = [0.2, 0.2, 0.8, 0.85, 0.9, 0.75, 0.7, 0.95]
    ctx = JudgeContext(group_id="g", num_hypotheses=8, evidence={"silhouette_iou": iou})
    mistakes = [Mistake(index=0, overall=9.0, critic_rank=0, true_rank=6, error_mm=120.0),
                Mistake(index=1, overall=8.5, critic_rank=1, true_rank=7, error_mm=130.0)]
    proposals = BuiltinJudge().propose_rules(ctx, mistakes).rules
    assert len(proposals) == 1
    r = proposals[0]
    assert r.measure == "silhouette_iou"
    assert r.threshold == pytest.approx(0.5 * (0.2 + float(np.median(iou[2:]))), abs=1e-4)
    fires = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}[r.comparator]
    assert fires(np.asarray(iou), r.threshold).tolist() == [True, True] + [False] * 6


# ----------------------------------------------------------------------------------------------------------------
# evidence
# ----------------------------------------------------------------------------------------------------------------

def test_a_lengthened_right_upper_arm_reads_as_asymmetry():
    """``asymmetry`` is "the mean relative left/right bone-length difference of the limbs" (thigh, shin, upper arm,
    forearm). On a skeleton made left/right symmetric (the right side mirrored from the left), stretching the right
    upper arm to 1.2× reads |1 − 1.2| / 1.1 over four bones; reading the left upper arm for the right one read 0."""
    from hmrcritic.agent.evidence import bone_asymmetry

    j = _rest_joints()[0]
    names = anatomy.SMPL_JOINT_NAMES_24
    for i, name in enumerate(names):
        if name.startswith("right_"):
            j[i] = j[names.index("left_" + name[6:])] * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert float(bone_asymmetry(j[None])[0]) == pytest.approx(0.0, abs=1e-12)
    shoulder, elbow = names.index("right_shoulder"), names.index("right_elbow")
    stretch = 0.2 * (j[elbow] - j[shoulder])
    for i, name in enumerate(names):  # the elbow and everything below it move out along the bone
        if name in ("right_elbow", "right_wrist", "right_hand"):
            j[i] = j[i] + stretch
    assert float(bone_asymmetry(j[None])[0]) == pytest.approx(0.2 / 1.1 / 4, rel=1e-9)


def test_upper_arms_resting_along_the_thighs_in_a_deep_crouch_are_contact_not_penetration():
    """The capsules are "a little thinner than a real body, so touching is not flagged", and upper arm vs thigh is
    left out of the pairs (in a deep crouch, hugging the knees, the upper arm lies on the thigh). Here the
    upper-arm and thigh axes come within 10 cm — closer than their capsule radii add up to (4 + 6 cm) — and the
    crouch must still read as (almost) no penetration; with that pair counted it read 1.6 cm."""
    from scipy.spatial.transform import Rotation

    euler = {"left_hip": (-125, 0, 10), "right_hip": (-125, 0, -10), "left_knee": (140, 0, 0),
             "right_knee": (140, 0, 0), "spine1": (45, 0, 0), "spine2": (30, 0, 0), "spine3": (25, 0, 0),
             "left_shoulder": (-60, 0, -70), "right_shoulder": (-60, 0, 70), "left_elbow": (0, -90, 0),
             "right_elbow": (0, 90, 0)}
    bp = torch.zeros(1, 23, 3, dtype=torch.float64)
    for name, (x, y, z) in euler.items():
        r = _euler_deg_to_matrix(x, y, z)
        bp[0, anatomy.BODY_JOINT_NAMES.index(name)] = torch.as_tensor(Rotation.from_matrix(r).as_rotvec())
    bp = bp.reshape(1, 69)
    assert float(anatomy.joint_limit_violation(bp).amax()) == 0.0  # an allowed pose
    j = anatomy.forward_kinematics(torch.zeros(1, 3, dtype=torch.float64), bp)
    d = anatomy.segment_distance(j[:, 16], j[:, 18], j[:, 1], j[:, 4])  # left upper arm vs left thigh
    assert float(d[0]) < 0.10
    assert float(anatomy.self_penetration(j)[0]) < 0.005


# ----------------------------------------------------------------------------------------------------------------
# score calibration
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("true_slope", [5.0, 0.005])
def test_a_fitted_slope_outside_its_range_is_held_at_the_nearer_end(true_slope):
    """``fit_calibration`` keeps the slope within ``SLOPE_RANGE`` (0.02–3): a steeper or flatter least-squares fit
    (a handful of groups, nearly tied scores) would stretch or crush the judge's scale. Errors made so that
    log settled_overall(error) = −1 + γ·log s exactly: the fit reads the clipped γ, and its intercept is the
    least-squares one for that slope (mean y − γ·mean x)."""
    from hmrcritic.agent.calibration import SLOPE_RANGE, fit_calibration

    s = np.linspace(1.0, 1.5, 12)
    y = -1.0 + true_slope * np.log(s)
    errors = -60.0 * np.log(np.exp(y) / 10.0)  # settled_overall(e) = 10·exp(−e/60) = exp(y)
    cal = fit_calibration([s], [errors])
    want = min(max(true_slope, SLOPE_RANGE[0]), SLOPE_RANGE[1])
    assert cal.slope == pytest.approx(want, rel=1e-12)
    assert cal.intercept == pytest.approx(y.mean() - want * np.log(s).mean(), rel=1e-9)


def test_a_zero_score_is_fitted_as_the_minimum_score():
    """``fit_calibration``: "a score of 0 counts as MIN_SCORE (no log of 0)" — one hypothesis scored 0 (a critic
    that clipped it) must pull the fit exactly as a score of MIN_SCORE does, not from log(1e-9) far below."""
    from hmrcritic.agent.calibration import MIN_SCORE, fit_calibration

    errors = [[200.0, 40.0, 20.0, 10.0]]
    zero = fit_calibration([[0.0, 2.0, 5.0, 9.0]], errors)
    floor = fit_calibration([[MIN_SCORE, 2.0, 5.0, 9.0]], errors)
    assert (zero.slope, zero.intercept) == pytest.approx((floor.slope, floor.intercept), rel=1e-12)


def test_a_silhouette_twice_the_persons_size_has_an_iou_of_one_half():
    """``silhouette_iou`` is intersection over *union*: a rendered silhouette that covers the person mask and as much
    again outside it overlaps 16 of 32 pixels (0.5). Dividing by the person's area alone read 1.0 — a body twice
    too wide looked perfectly aligned."""
    from hmrcritic.agent.evidence import silhouette_iou

    mask = np.zeros((10, 10), bool)
    mask[2:6, 2:6] = True  # 16 px
    pred = np.zeros((2, 10, 10), bool)
    pred[0, 2:6, 2:10] = True  # 32 px, containing the mask
    pred[1] = mask
    np.testing.assert_allclose(silhouette_iou(pred, mask), [0.5, 1.0])
