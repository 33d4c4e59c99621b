"""Hard constraints: rules that mark an anatomically impossible pose keep their full points.

Why it matters: exploration credits rules by whether they improve the ranking by 3D error, and an
implausible hypothesis is only a little worse than its group in PA-MPJPE, so a soft penetration rule gets
weighed down, smoothed away by the neighbour check, or retired — and GPA then has nothing to push away
from (docs/REPRODUCE.md). Each test is a constructed case whose answer is known.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from hmrcritic.agent.judges import POINT_DECAY, BuiltinJudge, JudgeContext, apply_rules, hard_points
from hmrcritic.agent.nodes import check_critique, neighbour_issues, neighbour_targets
from hmrcritic.agent.schema import GroupCritique, HypothesisScore
from hmrcritic.hmr import anatomy
from hmrcritic.memory.maintenance import plan_maintenance, plan_retirements
from hmrcritic.memory.schema import Rule, RuleCondition
from hmrcritic.memory.starter_rules import starter_rules


def _rule(rule_id: str, hard: bool, n_used: int = 0, n_success: int = 0, thr: float = 20.0) -> Rule:
    cond = RuleCondition(measure="penetration_mm", comparator=">", threshold=thr, points=5.0,
                         axis="physical_feasibility", hard=hard)
    return Rule(rule_id=rule_id, text=f"{rule_id} penetration", condition=cond, n_used=n_used, n_success=n_success)


def test_a_hard_rule_keeps_its_points_whatever_its_ranking_record():
    ev = {"penetration_mm": [0.0, 35.0, 5.0]}
    soft_failed = _rule("soft", hard=False, n_used=20, n_success=0)
    hard_failed = _rule("hard", hard=True, n_used=20, n_success=0)
    soft_off, _, _ = apply_rules([soft_failed], ev, 3, weighted=True)
    hard_off, axis_off, fired = apply_rules([hard_failed], ev, 3, weighted=True)
    assert soft_off[1] < 0.5  # a soft rule that never improved a ranking is nearly silenced
    assert hard_off.tolist() == [0.0, 5.0, 0.0] and axis_off["physical_feasibility"][1] == 5.0
    assert fired == {"hard": [1]}
    assert hard_points([soft_failed, hard_failed], ev, 3).tolist() == [0.0, 5.0, 0.0]
    # and it survives the Chroma metadata round trip
    assert RuleCondition.model_validate_json(hard_failed.condition.model_dump_json()).hard is True


def test_hard_rules_are_never_retired_nor_merged_into_a_soft_twin():
    rules = [_rule("hard", hard=True, n_used=30, n_success=0), _rule("soft", hard=False, n_used=30, n_success=0)]
    assert plan_retirements(rules).retired == ["soft"]
    twins = [_rule("a", hard=True), _rule("b", hard=False)]
    assert plan_maintenance(twins).merged == []


def test_the_neighbour_check_does_not_smooth_a_hard_deduction_away():
    # h0 and h1 are 2 mm apart and alike in everything but a 3 cm self-penetration of h1
    P = np.array([[0, 2, 300], [2, 0, 300], [300, 300, 0]], float)
    hard = np.array([0.0, POINT_DECAY * 5.0, 0.0])
    overall = np.array([6.0, 6.0 * np.exp(-hard[1]), 6.0])
    assert neighbour_issues(overall, P, offset=hard) == []  # consistent once the hard part is given back
    assert {0, 1} <= {i.indices[0] for i in neighbour_issues(overall, P)}  # without it, both get flagged
    # the target of a hypothesis carries its own hard deduction through
    t = neighbour_targets(np.array([8.0, 2.0 * np.exp(-hard[1]), 5.0]), P, offset=hard)
    assert t[1] == pytest.approx(8.0 * np.exp(-hard[1]), rel=1e-3)

    # through check_critique: the critique applied the hard rule, so no neighbours issue is raised
    rule = _rule("starter-penetration", hard=True)
    crit = GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5,
                                                 image_alignment=5, overall=float(o), rationale="x")
                                 for i, o in enumerate(overall)], summary="s", rules_applied=[rule.rule_id])
    ctx = JudgeContext(group_id="g", num_hypotheses=3, evidence={"penetration_mm": [0.0, 30.0, 0.0]}, rules=[rule])
    assert [i for i in check_critique(ctx, crit, pairwise_mm=P) if i.kind == "neighbours"] == []


def test_the_starter_memory_marks_exactly_the_implausibility_thresholds_as_hard():
    """The evaluation's implausible rate and the critic's hard constraints read the same thresholds."""
    hard = {r.condition.measure: r.condition for r in starter_rules()
            if r.condition is not None and r.condition.hard and r.condition.threshold <= 20.0}
    sig = inspect.signature(anatomy.is_implausible).parameters
    limit, pen = sig["limit_tol_deg"].default, sig["pen_tol_m"].default
    assert hard["hyperextension_deg"].threshold == limit and hard["joint_limit_deg"].threshold == limit
    assert hard["penetration_mm"].threshold == pytest.approx(pen * 1000.0)
    assert all(c.points >= 5.0 for c in hard.values())  # the paper's "take off 5-10 points"


def test_the_builtin_judge_scores_an_impossible_twin_clearly_lower():
    """Two hypotheses identical in every measure but self-penetration: the penetrating one loses at least
    the hard rule's factor, and keeps it through the whole graph-free critique + revise path."""
    rules = [r for r in starter_rules() if r.condition is not None and r.condition.measure == "penetration_mm"]
    ev = {"reproj_px": [4.0, 4.0, 9.0], "consensus_pa_mm": [60.0, 60.0, 90.0], "penetration_mm": [0.0, 30.0, 0.0]}
    ctx = JudgeContext(group_id="g", num_hypotheses=3, evidence=ev, rules=rules)
    crit = BuiltinJudge().critique(ctx)
    o = [s.overall for s in crit.scores]
    pts = next(r.condition.points for r in rules if r.rule_id == "starter-penetration")
    assert o[1] <= o[0] * np.exp(-POINT_DECAY * pts) + 1e-9
    assert crit.scores[1].physical_feasibility < crit.scores[0].physical_feasibility
    assert "starter-penetration" in crit.rules_applied and "starter-penetration-severe" not in crit.rules_applied
