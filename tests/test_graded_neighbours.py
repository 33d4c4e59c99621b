"""The critic's measured knowledge pieces: the Procrustes consensus measure, graded rules, and the revise
loop's neighbour-consistency check — each on a constructed case whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrcritic.agent.evidence import consensus_pa, pairwise_pa_mm
from hmrcritic.agent.judges import BuiltinJudge, JudgeContext, apply_rules
from hmrcritic.agent.mining import BatchGroup, deduct, simulate_gains
from hmrcritic.agent.nodes import check_critique, neighbour_issues, neighbour_targets
from hmrcritic.hmr.rotations import axis_angle_to_matrix
from hmrcritic.memory.schema import GRADED_CAP, Rule, RuleCondition


def _skeleton(seed: int) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(0, 0.3, (24, 3)))


def test_pairwise_pa_ignores_rotation_scale_translation_and_finds_the_outlier():
    base = _skeleton(0)
    R = axis_angle_to_matrix(torch.tensor([[0.3, -1.2, 0.5]], dtype=torch.float64))[0]
    moved = 1.7 * base @ R.T + torch.tensor([0.4, -0.2, 3.0], dtype=torch.float64)
    near = base + 0.005 * torch.as_tensor(np.random.default_rng(1).normal(size=(24, 3)))
    outlier = _skeleton(2)
    P = pairwise_pa_mm(torch.stack([base, moved, near, outlier]))
    assert P.shape == (4, 4) and torch.allclose(P, P.T) and torch.all(P.diagonal() == 0)
    assert float(P[0, 1]) < 1e-6  # the same pose, rotated, scaled and moved: no distance at all
    assert 1.0 < float(P[0, 2]) < 15.0  # 5 mm of joint noise
    c = consensus_pa(P)
    assert int(c.argmax()) == 3 and float(c[3]) > 3 * float(c[0])


def test_graded_rule_deduction_grows_beyond_the_threshold_and_is_capped():
    step = RuleCondition(measure="consensus_pa_mm", comparator=">", threshold=50, points=4)
    graded = step.model_copy(update={"per": 10.0})
    v = np.array([40.0, 55.0, 70.0, 500.0])
    assert step.deduction(v).tolist() == [0, 4, 4, 4]
    assert graded.deduction(v).tolist() == [0, 2.0, 8.0, 4 * GRADED_CAP]
    below = RuleCondition(measure="silhouette_iou", comparator="<", threshold=0.6, points=2, per=0.1)
    assert below.deduction([0.7, 0.5, 0.4]) == pytest.approx([0, 2, 4])
    # the judge applies exactly this deduction (an untried rule has weight 1)
    rule = Rule(rule_id="g", text="graded", condition=graded)
    off, _, fired = apply_rules([rule], {"consensus_pa_mm": v.tolist()}, 4, weighted=True)
    assert off.tolist() == graded.deduction(v).tolist() and fired == {"g": [1, 2, 3]}
    # a stored graded rule survives the Chroma metadata round trip
    assert RuleCondition.model_validate_json(graded.model_dump_json()).per == 10.0


def test_simulated_gain_is_the_judges_own_arithmetic():
    """The miner's simulation and the judge's multiplicative deduction give the same ranking change."""
    rng = np.random.default_rng(0)
    groups = []
    for g in range(5):
        m = rng.uniform(20, 150, 12)
        groups.append(BatchGroup(f"g{g}", {"consensus_pa_mm": m}, overall=rng.uniform(3, 9, 12),
                                 error=m + rng.normal(0, 20, 12)))
    cond = RuleCondition(measure="consensus_pa_mm", comparator=">", threshold=60, points=4, per=20)
    gains = simulate_gains(groups, [cond])[0]
    from hmrcritic.agent.mining import group_spearman

    by_hand = [group_spearman(deduct(g.overall, g.evidence, cond), g.error) - group_spearman(g.overall, g.error)
               for g in groups]
    assert gains == pytest.approx(by_hand, abs=1e-9) and np.mean(gains) > 0.1
    # giving the deduction back restores the scores
    g = groups[0]
    assert deduct(deduct(g.overall, g.evidence, cond), g.evidence, cond, sign=-1) == pytest.approx(g.overall)


def test_neighbour_check_flags_near_identical_poses_scored_apart_and_revise_closes_the_gap():
    # h0 and h1 are 2 mm apart; h2 is far from both. h0 and h1 were scored far apart.
    P = np.array([[0, 2, 300], [2, 0, 300], [300, 300, 0]], float)
    overall = np.array([8.0, 2.0, 5.0])
    t = neighbour_targets(overall, P)
    assert t[0] == pytest.approx(2.0, rel=1e-3) and t[1] == pytest.approx(8.0, rel=1e-3)
    issues = neighbour_issues(overall, P)
    flagged = {i.indices[0] for i in issues}
    assert {0, 1} <= flagged and all(i.kind == "neighbours" for i in issues)
    # consistent scores raise nothing
    assert neighbour_issues(np.array([6.0, 6.0, 6.0]), P) == []
    # two hypotheses are each other's only "neighbour", however far apart: no check (it would tie them)
    assert neighbour_issues(np.array([8.0, 2.0]), np.array([[0, 2], [2, 0]], float)) == []
    # the builtin judge's revision moves each flagged score halfway (log units) to its target
    from hmrcritic.agent.schema import GroupCritique, HypothesisScore

    prev = GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5,
                                                 image_alignment=5, overall=float(o), rationale="x")
                                 for i, o in enumerate(overall)], summary="s", rules_applied=[])
    ctx = JudgeContext(group_id="g", num_hypotheses=3, evidence={}, previous=prev, round=1,
                       issues=[i for i in issues if i.indices[0] in (0, 1)])
    rev = BuiltinJudge().critique(ctx)
    new = [s.overall for s in rev.scores]
    assert new[0] == pytest.approx(np.sqrt(8.0 * t[0]), rel=1e-3) and new[1] == pytest.approx(np.sqrt(2.0 * t[1]),
                                                                                             rel=1e-3)
    assert abs(new[0] - new[1]) < abs(overall[0] - overall[1]) and "pose-neighbours" in rev.summary
    # check_critique raises the same issues when given the matrix, none of this kind without it
    ctx0 = JudgeContext(group_id="g", num_hypotheses=3, evidence={})
    assert {i.kind for i in check_critique(ctx0, prev, pairwise_mm=P)} == {"neighbours"}
    assert check_critique(ctx0, prev) == []


def test_a_graded_rule_is_not_merged_into_a_step_rule_on_the_same_threshold():
    from hmrcritic.memory.maintenance import same_condition

    step = Rule(rule_id="s", text="step", condition=RuleCondition(measure="reproj_px", comparator=">",
                                                                  threshold=10, points=2))
    graded = Rule(rule_id="g", text="graded", condition=step.condition.model_copy(update={"per": 5.0}))
    other_graded = Rule(rule_id="h", text="graded 2", condition=graded.condition.model_copy(update={"threshold": 10.5}))
    assert not same_condition(step, graded)
    assert same_condition(graded, other_graded)
