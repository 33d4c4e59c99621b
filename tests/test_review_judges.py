"""Review of the builtin judge, anatomy and metrics: SMPL indices, units, alignment, ranks, revise step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from hmrcritic.agent import nodes
from hmrcritic.agent.judges import BuiltinJudge, JudgeContext
from hmrcritic.agent.schema import GroupCritique, HypothesisScore
from hmrcritic.hmr import anatomy as A
from hmrcritic.hmr import metrics as M
from hmrcritic.hmr.rotations import euler_to_matrix, matrix_to_axis_angle
from hmrcritic.memory.schema import Rule, RuleCondition


def _critique(overall: list[float]) -> GroupCritique:
    return GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5,
                                                 image_alignment=5, overall=o, rationale="x")
                                 for i, o in enumerate(overall)])


def _contradictions(ctx: JudgeContext, crit: GroupCritique) -> list[list[int]]:
    return [i.indices for i in nodes.check_critique(ctx, crit) if i.kind == "contradiction"]


# ------------------------------------------------------------------------------------------- revise step
def test_revise_swap_does_not_create_a_new_contradiction():
    """h1 dominates h0, h0 dominates h2 (one measure). Ranked h0 > h2 > h1, the check cites (0, 1) and (2, 1).
    Swapping h0 and h1 alone drops h0 below h2, which it dominates: the revision must not leave a ranking
    that contradicts the same evidence it is fixing."""
    ctx = JudgeContext(group_id="c", num_hypotheses=3, evidence={"reproj_rel": [0.05, 0.01, 0.1]})
    bad = _critique([9.0, 5.0, 7.0])
    issues = nodes.check_critique(ctx, bad)
    assert sorted(i.indices for i in issues if i.kind == "contradiction") == [[0, 1], [2, 1]]
    fixed = BuiltinJudge().critique(ctx.model_copy(update={"round": 1, "previous": bad, "issues": issues}))
    o = [s.overall for s in fixed.scores]
    assert o[1] > o[0] > o[2]
    assert sorted(o) == [5.0, 7.0, 9.0]  # the group's scores are reordered, not invented
    assert _contradictions(ctx, fixed) == []


def test_revise_fixes_a_chain_of_contradictions_in_one_round():
    """A fully reversed ranking of a dominance chain is put in order in a single revision."""
    n = 6
    ctx = JudgeContext(group_id="c", num_hypotheses=n,
                       evidence={"consensus_pa_mm": [10.0 * (i + 1) for i in range(n)]})  # h0 best
    bad = _critique([float(i + 2) for i in range(n)])  # h5 highest: exactly reversed
    issues = nodes.check_critique(ctx, bad)
    fixed = BuiltinJudge().critique(ctx.model_copy(update={"round": 1, "previous": bad, "issues": issues}))
    o = np.array([s.overall for s in fixed.scores])
    assert np.all(np.diff(o) < 0)
    assert _contradictions(ctx, fixed) == []


def test_revise_leaves_consistent_pairs_alone():
    """Only the pair the evidence orders is swapped; a hypothesis not comparable to it keeps its score."""
    ev = {"reproj_rel": [0.05, 0.01, 0.001], "consensus_pa_mm": [50.0, 40.0, 300.0]}  # h2 incomparable
    ctx = JudgeContext(group_id="c", num_hypotheses=3, evidence=ev)
    bad = _critique([9.0, 5.0, 7.0])
    issues = nodes.check_critique(ctx, bad)
    fixed = BuiltinJudge().critique(ctx.model_copy(update={"round": 1, "previous": bad, "issues": issues}))
    assert [s.overall for s in fixed.scores] == [5.0, 9.0, 7.0]


# --------------------------------------------------------------------------------------- builtin scoring
def _rule(measure: str, cmp: str, thr: float, pts: float, **kw) -> Rule:
    return Rule(rule_id=f"r-{measure}", text="t",
                condition=RuleCondition(measure=measure, comparator=cmp, threshold=thr, points=pts, **kw))


@pytest.mark.parametrize("measure,cmp,thr,values", [
    ("consensus_pa_mm", ">", 100.0, [50.0, 200.0, 50.0]),  # higher is worse
    ("silhouette_iou", "<", 0.5, [0.8, 0.2, 0.8]),  # lower is worse
])
def test_a_fired_rule_lowers_the_score_of_the_hypothesis_it_fires_on(measure, cmp, thr, values):
    base = JudgeContext(group_id="g", num_hypotheses=3, evidence={measure: values})
    ruled = base.model_copy(update={"rules": [_rule(measure, cmp, thr, 5.0, axis="motion_structure")]})
    a = [s.overall for s in BuiltinJudge().critique(base).scores]
    b = [s.overall for s in BuiltinJudge().critique(ruled).scores]
    assert b[1] < a[1] and b[0] == pytest.approx(a[0]) and b[2] == pytest.approx(a[2])
    assert a[1] < a[0]  # the generic score already ranks the worse value lower, whichever its direction


# ------------------------------------------------------------------------------------------------ anatomy
def _pose(name: str, euler_deg) -> torch.Tensor:
    bp = torch.zeros(1, 23, 3)
    bp[0, A.BODY_JOINT_NAMES.index(name)] = matrix_to_axis_angle(
        euler_to_matrix(torch.tensor(euler_deg, dtype=torch.float32).deg2rad()))
    return bp.reshape(1, 69)


def test_body_pose_indices_are_smpl_joint_minus_one():
    assert [A.BODY_JOINT_NAMES.index(n) + 1 for n in A.HYPEREXTENSION_JOINTS] == [4, 5, 18, 19]


@pytest.mark.parametrize("name,euler,slot", [
    ("left_knee", [-20.0, 0, 0], 0), ("right_knee", [-20.0, 0, 0], 1),
    ("left_elbow", [0, 20.0, 0], 2), ("right_elbow", [0, -20.0, 0], 3),
])
def test_hyperextension_in_degrees_on_the_right_joint(name, euler, slot):
    h = A.hyperextension(_pose(name, euler))[0]
    assert h[slot].item() == pytest.approx(20.0, abs=1e-3)
    assert float(h.sum() - h[slot]) == pytest.approx(0.0, abs=1e-4)
    assert A.joint_limit_violation(_pose(name, euler))[0, A.BODY_JOINT_NAMES.index(name)].item() == \
        pytest.approx(20.0, abs=1e-2)


@pytest.mark.parametrize("name,euler", [
    ("left_knee", [90.0, 0, 0]), ("right_knee", [90.0, 0, 0]),
    ("left_elbow", [0, -90.0, 0]), ("right_elbow", [0, 90.0, 0]),
    ("left_shoulder", [0, 0, -90.0]), ("right_shoulder", [0, 0, 90.0]),
])
def test_natural_flexion_is_neither_hyperextended_nor_out_of_range(name, euler):
    p = _pose(name, euler)
    assert float(A.hyperextension(p).max()) == pytest.approx(0.0, abs=1e-4)
    assert float(A.joint_limit_violation(p).max()) == pytest.approx(0.0, abs=1e-3)


# ------------------------------------------------------------------------------------------------ metrics
def test_pa_mpjpe_of_a_mirror_image_is_not_zero_and_rotation_is_proper():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(14, 3))
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert M.pa_mpjpe(mirrored, gt, joint_set=None).item() > 1.0
    R = torch.as_tensor(stats.special_ortho_group.rvs(3, random_state=1))
    pred = 1.7 * torch.as_tensor(gt) @ R.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    assert M.pa_mpjpe(pred, gt, joint_set=None).item() == pytest.approx(0.0, abs=1e-6)
    assert M.mpjpe(torch.as_tensor(gt) + 5.0, gt, joint_set=None).item() == pytest.approx(0.0, abs=1e-6)


def test_rank_correlations_with_ties_match_scipy():
    x = np.array([1.0, 2, 2, 3, 3, 3, 4])
    y = np.array([2.0, 1, 3, 3, 5, 4, 4])
    assert M.spearman(x, y).item() == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert M.kendall_tau(x, y).item() == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_rank_correlations_of_a_group_with_a_nan_are_nan_not_a_number():
    """An undefined error (a diverged hypothesis: pa_mpjpe gives NaN) must not be ranked as the smallest value
    (Spearman) or as tied with every other (Kendall): the correlation is undefined, as scipy says, and other
    groups of the batch are unaffected."""
    x = torch.tensor([[1.0, float("nan"), 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]], dtype=torch.float64)
    assert math.isnan(stats.spearmanr(x[0], y[0]).statistic)
    rho, tau = M.spearman(x, y), M.kendall_tau(x, y)
    assert math.isnan(rho[0].item()) and math.isnan(tau[0].item())
    assert math.isnan(M.spearman(y, x)[0].item()) and math.isnan(M.kendall_tau(y, x)[0].item())
    assert rho[1].item() == pytest.approx(0.8) and tau[1].item() == pytest.approx(4 / 6)
