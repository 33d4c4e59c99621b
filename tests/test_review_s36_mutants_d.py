"""Session 36 (mutation D): tests that kill mutants of the critique graph's nodes (hmrcritic/agent/nodes.py) which
the suite let through. Each builds a small state or context by hand whose answer follows from the docstrings and
docs/CONTRACTS.md (the reflection bound, which rules a critique is held to, when a prototype or a ranking is a
contradiction, how a rule use is counted), not from the code's own output. No body model, no judge model: the
nodes are called as the plain functions they are, on hand-made arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmrcritic.agent import nodes
from hmrcritic.agent.judges import ONE_POINT_OF_TEN, JudgeContext, PrototypeHit, ReflectionIssue, of_ten
from hmrcritic.agent.schema import GroupCritique
from hmrcritic.agent.state import AgentConfig
from hmrcritic.io import atomic_save_npz
from hmrcritic.memory.schema import Rule, RuleCondition, ScoreCalibration

MEASURE = "hyperextension_deg"  # higher is worse


def _rule(rid: str, points: float, threshold: float = 10.0, hard: bool = False, measure: str = MEASURE,
          per: float | None = None) -> Rule:
    return Rule(rule_id=rid, text=f"{measure} > {threshold} → −{points}",
                condition=RuleCondition(measure=measure, comparator=">", threshold=threshold, points=points,
                                        hard=hard, per=per))


def _crit(overall, rules_applied=()) -> GroupCritique:
    return GroupCritique.model_validate({
        "scores": [{"index": i, "overall": o, "motion_structure": 5, "physical_feasibility": 5, "image_alignment": 5,
                    "rationale": "x"} for i, o in enumerate(overall)],
        "rules_applied": list(rules_applied)})


def _ctx(n, evidence, rules=(), prototypes=()) -> JudgeContext:
    return JudgeContext(group_id="g", num_hypotheses=n, evidence=evidence, rules=list(rules),
                        prototypes=[list(row) for row in prototypes])


def _kinds(issues: list[ReflectionIssue], kind: str) -> list[ReflectionIssue]:
    return [i for i in issues if i.kind == kind]


# ------------------------------------------------------------------------------------------------ check_critique
def test_an_uncited_rule_worth_exactly_one_point_of_ten_is_held():
    """ONE_POINT_OF_TEN is the smallest deduction a critique is held to ("a deduction smaller than that is too
    small"): a 1-point untried rule takes exactly that much off a 10, so a VLM (slack: half the amount) leaving it
    unapplied on a hypothesis scored 10 is a ``rule`` issue (mutant: ``off > ONE_POINT_OF_TEN`` let it pass). (The
    built-in judge's flat 0.5 slack cannot catch a rule worth under 0.5 of 10 at all: no score is above 10.)"""
    rule = _rule("one", 1.0)
    assert float(of_ten(rule, 1.0)) == ONE_POINT_OF_TEN  # 1 point at weight 1: one point of ten, exactly
    ev = {MEASURE: [20.0, 0.0, 0.0]}
    issues = nodes.check_critique(_ctx(3, ev, [rule]), _crit([10.0, 5.0, 5.0]), judge="vlm")
    got = _kinds(issues, "rule")
    assert [(i.rule_id, i.indices) for i in got] == [("one", [0])]
    # a rule worth a hair under one point of ten is below the bar
    small = _rule("small", 0.999)
    assert not _kinds(nodes.check_critique(_ctx(3, ev, [small]), _crit([10.0, 5.0, 5.0]), judge="vlm"), "rule")


def test_an_uncited_rule_is_satisfied_at_exactly_ten_less_its_amount_plus_the_slack():
    """"a hypothesis an uncited 8-point rule fires on had to score 2.5 or under" with 10 − 8 + 0.5: the bound is
    inclusive, so a score at exactly 10 − amount + 0.5 passes (mutant: ``>=`` sent it back); just above does not."""
    rule = _rule("eight", 8.0)
    off = float(of_ten(rule, 8.0))
    ev = {MEASURE: [20.0, 0.0, 0.0]}
    at = 10.0 - off + 0.5
    assert not _kinds(nodes.check_critique(_ctx(3, ev, [rule]), _crit([at, 1.0, 1.0])), "rule")
    assert _kinds(nodes.check_critique(_ctx(3, ev, [rule]), _crit([at + 0.01, 1.0, 1.0])), "rule")


def _hit(sim: float, overall: float, pid: str = "p") -> PrototypeHit:
    return PrototypeHit(proto_id=pid, similarity=sim, overall=overall, motion_structure=5, physical_feasibility=5,
                        image_alignment=5)


def test_a_confident_prototype_consensus_counts_even_when_a_weaker_prototype_is_recalled_with_it():
    """The prototype check asks for *one* very similar past pose (the best similarity ≥ 0.97), not every recalled
    one: a second, weak hit must not silence it (mutant: ``min`` similarity)."""
    hits = [_hit(0.99, 3.0, "a"), _hit(0.5, 3.0, "b")]
    issues = nodes.check_critique(_ctx(1, {}, prototypes=[hits]), _crit([9.0]))
    got = _kinds(issues, "prototype")
    assert len(got) == 1 and got[0].indices == [0] and got[0].target == pytest.approx(3.0)


def test_a_score_far_below_a_confident_prototype_consensus_is_also_a_prototype_issue():
    """"disagreement with a confident prototype consensus": a score 6 points *under* the consensus disagrees as
    much as one 6 points over it (mutant: one-sided ``overall − value > 2``)."""
    hits = [_hit(0.99, 8.0)]
    issues = nodes.check_critique(_ctx(1, {}, prototypes=[hits]), _crit([2.0]))
    got = _kinds(issues, "prototype")
    assert len(got) == 1 and got[0].target == pytest.approx(8.0)
    # within 2 points either way: nothing
    assert not _kinds(nodes.check_critique(_ctx(1, {}, prototypes=[hits]), _crit([6.5])), "prototype")


def test_a_tie_is_not_a_ranking_that_contradicts_the_evidence():
    """A contradiction is "h{i} ranked *above* h{j}" while h{j} dominates: two hypotheses scored the same are not
    ranked either way (mutant: ``>=`` flagged every tie with a dominated hypothesis)."""
    ev = {MEASURE: [30.0, 5.0]}  # h1 dominates h0
    assert not _kinds(nodes.check_critique(_ctx(2, ev), _crit([6.0, 6.0])), "contradiction")
    got = _kinds(nodes.check_critique(_ctx(2, ev), _crit([7.0, 6.0])), "contradiction")
    assert [i.indices for i in got] == [[0, 1]]


def test_an_unapplied_hard_rule_is_not_given_back_in_the_neighbour_check():
    """The neighbour check gives back only the hard deductions the critique *applied* (they are in its scores).
    Three equally close poses scored alike are consistent; a hard rule that fires on h0 but was not applied took
    nothing off h0's score, so adding its points back would invent a gap (mutant: every recalled rule's hard
    points were given back, and h1/h2 were asked to rise)."""
    rule = _rule("hard", 8.0, hard=True)
    ev = {MEASURE: [20.0, 0.0, 0.0]}
    P = np.full((3, 3), 5.0)
    np.fill_diagonal(P, 0.0)
    issues = nodes.check_critique(_ctx(3, ev, [rule]), _crit([5.0, 5.0, 5.0]), pairwise_mm=P)
    assert not _kinds(issues, "neighbours")
    # applied, its points are in h0's score and come back in the check: 5 · exp(0.24) among equals is consistent
    scores = [5.0 * np.exp(-0.03 * 8.0), 5.0, 5.0]
    issues = nodes.check_critique(_ctx(3, ev, [rule]), _crit(scores, ["hard"]), pairwise_mm=P)
    assert not _kinds(issues, "neighbours")


# ------------------------------------------------------------------------------------------------------ reflect
def _reflect_state(tmp_path, overall, rnd: int, rules_applied=()):
    """A state after critique: one uncited 8-point rule fires on h0 (scored 10), so the critique has an issue
    unless it applied the rule. bodies.npz without pairwise distances (an older run): no neighbour check."""
    atomic_save_npz(tmp_path / "bodies.npz", joints=np.zeros((len(overall), 24, 3)))
    return {"group_id": "g", "run_id": "r", "run_dir": str(tmp_path), "num_hypotheses": len(overall),
            "round": rnd, "evidence": {MEASURE: [20.0] + [0.0] * (len(overall) - 1)},
            "rules": [_rule("eight", 8.0).model_dump()], "critique": _crit(overall, rules_applied).model_dump(),
            "reflections": [{"round": k, "issues": [], "action": "revise", "changes": []} for k in range(rnd)],
            "issues": []}


def _config(**kw):
    return {"configurable": {"agent": AgentConfig(render=False, judge="builtin", **kw).model_dump()}}


@pytest.mark.parametrize("max_reflections", [0, 1, 2, 3])
def test_reflect_asks_for_at_most_max_reflections_revisions(tmp_path, max_reflections):
    """"back to critique, at most max_reflections times": a critique that keeps its issue is sent back in rounds
    0..max−1 (round becomes round + 1, with feedback), and accepted "(no rounds left)" at round max."""
    for rnd in range(max_reflections + 1):
        up = nodes.reflect(_reflect_state(tmp_path, [10.0, 5.0, 5.0], rnd), _config(max_reflections=max_reflections))
        last = up["reflections"][-1]
        assert last["round"] == rnd and last["issues"]
        if rnd < max_reflections:
            assert last["action"] == "revise" and up["round"] == rnd + 1 and "rule eight" in up["feedback"]
            assert nodes.route_after_reflect({**up}) == "critique"
        else:
            assert last["action"] == "accept (no rounds left)" and "round" not in up and "feedback" not in up
            assert nodes.route_after_reflect({**up}) == "memory_write"


def test_reflect_accepts_a_clean_critique_with_rounds_left(tmp_path):
    """No issue: accepted at once ("accept", not "no rounds left"), no new round, on to memory_write."""
    up = nodes.reflect(_reflect_state(tmp_path, [5.0 * np.exp(-0.03 * 8.0), 5.0, 5.0], 0, rules_applied=["eight"]),
                       _config(max_reflections=2))
    last = up["reflections"][-1]
    assert last["issues"] == [] and last["action"] == "accept" and "round" not in up
    assert nodes.route_after_reflect(up) == "memory_write"


def test_feedback_lists_twenty_issues_and_counts_the_rest():
    issues = [ReflectionIssue(kind="rule", detail=f"d{i}") for i in range(25)]
    lines = nodes.feedback_text(issues).splitlines()
    assert lines[1:21] == [f"- [rule] d{i}" for i in range(20)]
    assert lines[21] == "- … and 5 more of the same kinds" and len(lines) == 22
    assert nodes.feedback_text([]) == ""


# ------------------------------------------------------------------------------------------------ diff_critiques
def test_a_revision_listing_tied_scores_in_another_order_did_not_change_its_best():
    """Top-1 "as the result gives it (ties to the lower index)": h0 and h1 tied at 5 are h0 first whichever order
    the judge lists them in, so reordering the list is no "top-1" change."""
    before = _crit([5.0, 5.0, 2.0])
    before.scores = [before.scores[1], before.scores[0], before.scores[2]]  # listed h1, h0, h2
    after = _crit([5.0, 5.0, 2.0])
    assert nodes.diff_critiques(before, after) == []


# ------------------------------------------------------------------------------------------------- rule_outcomes
def _outcome(rule: Rule, ev_values, overall, err, tau=0.5):
    state = {"rules": [rule.model_dump()], "evidence": {rule.condition.measure: list(ev_values)}}
    return nodes.rule_outcomes(_crit(overall, [rule.rule_id]), state, np.asarray(err, float), tau)


def test_a_rule_that_fires_on_every_hypothesis_succeeds_when_the_group_rho_reaches_tau_exactly():
    """A step rule firing on all reorders nothing, so the paper's group test applies: ρ ≥ τ. Scores 9, 7, 8 for
    errors 10, 20, 30 mm swap one adjacent pair: ρ = 1 − 6·2/(3·8) = 0.5 = τ, a success (mutant: ``ρ > τ``)."""
    rule = _rule("all", 3.0)
    assert _outcome(rule, [20.0, 20.0, 20.0], [9.0, 7.0, 8.0], [10.0, 20.0, 30.0]) == (["all"], [])
    assert _outcome(rule, [20.0, 20.0, 20.0], [9.0, 7.0, 8.0], [10.0, 20.0, 30.0], tau=0.6) == ([], ["all"])


def test_a_rule_whose_deduction_fixed_the_ranking_succeeds():
    """h2 (30 mm, the worst) scored 9.0 before a 20-point rule took exp(−0.6) off it (→ 4.94): the final ranking
    is right (ρ = 1) and giving the points back puts h2 first again (ρ = −0.5), so the rule improved it."""
    rule = _rule("fix", 20.0)
    final = [8.0, 7.0, 9.0 * np.exp(-0.03 * 20.0)]
    assert _outcome(rule, [0.0, 0.0, 20.0], final, [10.0, 20.0, 30.0]) == (["fix"], [])


def test_a_rule_whose_deduction_changed_no_rank_fails():
    """"a rule that only repeats what the evidence already says (no change) ... loses reliability": h2 was last
    already, the 1-point deduction keeps it last, ρ is the same with and without it: a failure (mutant: ties
    counted as an improvement)."""
    rule = _rule("same", 1.0)
    final = [8.0, 7.0, 5.0 * np.exp(-0.03)]
    assert _outcome(rule, [0.0, 0.0, 20.0], final, [10.0, 20.0, 30.0]) == ([], ["same"])


# ----------------------------------------------------------------------------------------------- ledger / rules
def test_another_runs_memory_write_plan_is_not_reused(tmp_path):
    path = tmp_path / nodes.MEMORY_WRITE_FILE
    path.write_text(json.dumps({"key": "g|run-1", "applied": True, "rules": [], "written": {"prototypes": 3}}))
    assert nodes._read_ledger(path, "g|run-1")["written"] == {"prototypes": 3}
    assert nodes._read_ledger(path, "g|run-2") is None


class _Rules:
    def __init__(self, rules):
        self.rules = {r.rule_id: r for r in rules}

    def get(self, ids):
        return [self.rules[i].model_copy() for i in ids]


class _Memory:
    def __init__(self, rules):
        self.rules = _Rules(rules)


def test_a_plan_already_written_before_a_crash_is_not_counted_twice():
    """The plan counts a rule from (n_used, n_success) = (4, 2) to (5, 3). Killed after the write but before the
    ledger said "applied", the memory already holds (5, 3): resuming must leave it alone, not make it (6, 4); a rule
    still at the base gets the increment."""
    written = _rule("w", 3.0).model_copy(update={"n_used": 5, "n_success": 3})
    pending = _rule("p", 3.0).model_copy(update={"n_used": 4, "n_success": 2})
    plan = {"rules": [_rule("w", 3.0).model_copy(update={"n_used": 5, "n_success": 3}).model_dump(mode="json"),
                      _rule("p", 3.0).model_copy(update={"n_used": 5, "n_success": 3}).model_dump(mode="json")],
            "base": {"w": [4, 2], "p": [4, 2]}}
    out = nodes._planned_rules(_Memory([written, pending]), plan)
    assert [(r.rule_id, r.n_used, r.n_success) for r in out] == [("p", 5, 3)]


# ------------------------------------------------------------------------------------------------------- recall
class _RecallRules:
    def __init__(self, ranked):
        self.ranked = ranked

    def scored(self, tags, ucb_c=1.0):
        return [(r, 1.0 - 0.1 * k) for k, r in enumerate(self.ranked)]


class _RecallProtos:
    def count(self):
        return 0


class _RecallMemory:
    def __init__(self, ranked, cal=None):
        self.rules, self.prototypes, self._cal = _RecallRules(ranked), _RecallProtos(), cal

    def calibration(self):
        return self._cal

    def version(self):
        return "v1"


def _recall(ranked, evidence, cal=None, **kw):
    config = {"configurable": {"agent": AgentConfig(render=False, judge="builtin", **kw).model_dump(),
                               "memory": _RecallMemory(ranked, cal)}}
    return nodes.recall({"group_id": "g", "run_dir": "/nonexistent", "tags": [], "evidence": evidence}, config)


def test_recall_gives_the_k_slots_to_rules_that_can_fire_here():
    """"a rule whose executable condition fires on no hypothesis of this group (or whose measure this group lacks)
    ... does not take one of the k slots": with k = 1, the top-ranked rule that fires nowhere, then one whose measure
    is absent, give way to the third, which fires on one hypothesis of three (not all)."""
    ranked = [_rule("never", 5.0, threshold=100.0), _rule("absent", 5.0, measure="ground_penetration_mm"),
              _rule("some", 5.0, threshold=10.0)]
    got = _recall(ranked, {MEASURE: [20.0, 0.0, 0.0]}, rules_k=1, use_prototypes=False)
    assert [r["rule_id"] for r in got["rules"]] == ["some"]


def test_recall_leaves_out_a_calibration_fitted_for_another_judge():
    cal = ScoreCalibration(judge="vlm", slope=1.2, intercept=0.1, groups=3, hypotheses=8, pearson_before=0.5,
                           pearson_after=0.6)
    got = _recall([], {MEASURE: [1.0]}, cal=cal, use_prototypes=False)
    assert got["calibration"] is None
    own = cal.model_copy(update={"judge": "builtin"})
    assert _recall([], {MEASURE: [1.0]}, cal=own, use_prototypes=False)["calibration"]["slope"] == 1.2


# ------------------------------------------------------------------------------------------------- get_memory
def test_get_memory_keeps_the_eight_most_recently_used_stores(monkeypatch, tmp_path):
    """MEMORIES_KEPT = 8 stores per process: the eighth folder named must not evict the first (mutant: ``>=``
    kept seven, so a caller cycling through eight folders reopened a Chroma store on every call)."""
    import hmrcritic.memory.store as store_mod

    made = []

    class FakeStore:
        def __init__(self, path=None, chroma_url=None):
            made.append(path)

    monkeypatch.setattr(store_mod, "MemoryStore", FakeStore)
    monkeypatch.setattr(nodes, "_MEMORIES", {})
    cfgs = [AgentConfig(render=False, memory_dir=str(tmp_path / f"m{k}"), chroma_url=None)
            for k in range(nodes.MEMORIES_KEPT + 1)]
    first = nodes.get_memory(cfgs[0])
    for c in cfgs[1:nodes.MEMORIES_KEPT]:
        nodes.get_memory(c)
    assert nodes.get_memory(cfgs[0]) is first and len(made) == nodes.MEMORIES_KEPT
    nodes.get_memory(cfgs[nodes.MEMORIES_KEPT])  # a ninth: the least recently used (m1) goes, not m0
    assert nodes.get_memory(cfgs[0]) is first and len(made) == nodes.MEMORIES_KEPT + 1


# ------------------------------------------------------------------------------------------------- memory_write
class _WriteRules(_Rules):
    def __init__(self, rules):
        super().__init__(rules)
        self.updated = []

    def update(self, rules):
        self.updated += rules
        for r in rules:
            self.rules[r.rule_id] = r


class _WriteProtos:
    def __init__(self):
        self.added = []

    def add(self, protos):
        self.added += protos


class _WriteMemory:
    def __init__(self, rules):
        self.rules, self.prototypes = _WriteRules(rules), _WriteProtos()

    def version(self):
        return "v"


def _learn(tmp_path, rule: Rule, evidence, overall, err):
    n = len(overall)
    rng = np.random.default_rng(0)
    atomic_save_npz(tmp_path / "inputs.npz", true_error_mm=np.asarray(err, float))
    atomic_save_npz(tmp_path / "bodies.npz", joints=rng.normal(size=(n, 24, 3)))
    memory = _WriteMemory([rule])
    state = {"group_id": "g", "run_id": "r", "run_dir": str(tmp_path), "num_hypotheses": n, "round": 0,
             "evidence": {rule.condition.measure: list(evidence)}, "rules": [rule.model_dump()], "tags": [],
             "critique": _crit(overall, [rule.rule_id]).model_dump(), "issues": []}
    config = {"configurable": {"agent": AgentConfig(render=False, judge="builtin", learn=True).model_dump(),
                               "memory": memory}}
    out = nodes.memory_write(state, config)
    return memory, out


def test_a_failed_rule_use_counts_as_used_not_succeeded(tmp_path):
    """A labelled group whose rule changed no rank (h2 already last): the use is a failure, n_used + 1 and
    n_success unchanged (mutant: every recorded use counted as a success)."""
    rule = _rule("same", 1.0).model_copy(update={"n_used": 4, "n_success": 2})
    memory, out = _learn(tmp_path, rule, [0.0, 0.0, 20.0], [8.0, 7.0, 5.0 * np.exp(-0.03)], [10.0, 20.0, 30.0])
    assert out["memory_written"]["success"] == {"succeeded": 0, "failed": 1}
    assert [(r.rule_id, r.n_used, r.n_success) for r in memory.rules.updated] == [("same", 5, 2)]


def test_a_labelled_prototype_settles_on_the_true_error_less_the_hard_deductions(tmp_path):
    """"settled on the true error, and on the hard constraints (an impossible pose is not good however close its
    joints are)": h0 at 0 mm settles at 10, less a fired 10-point hard rule: 10 · exp(−0.03 · 10) ≈ 7.41; h1 at
    60 mm, no rule: 10 · exp(−1) ≈ 3.68 (mutant: the hard deduction was dropped, h0 settled at 10)."""
    rule = _rule("hard", 10.0, hard=True)
    memory, _ = _learn(tmp_path, rule, [20.0, 0.0, 0.0], [5.0, 4.0, 3.0], [0.0, 60.0, 120.0])
    got = {p.proto_id: p.overall for p in memory.prototypes.added}
    assert got["g#h0"] == pytest.approx(10.0 * np.exp(-0.3))
    assert got["g#h1"] == pytest.approx(10.0 * np.exp(-1.0))


# ------------------------------------------------------------------------------------------- critique / context
def _ctx_state(rnd: int):
    return {"group_id": "g", "num_hypotheses": 2, "round": rnd, "evidence": {MEASURE: [0.0, 0.0]},
            "critique": _crit([5.0, 4.0]).model_dump(), "feedback": "Revise: h0 too high",
            "issues": [ReflectionIssue(kind="rule", indices=[0], detail="d").model_dump()],
            "reflections": [{"round": 0, "issues": [], "action": "revise", "changes": []}]}


def test_the_first_round_shows_the_judge_no_feedback_and_no_previous_critique():
    """JudgeContext.feedback is "'' on the first round": a state left with feedback (a fresh re-run over an old
    state) must not reach a round-0 judge as if it were revising."""
    ctx = nodes.build_context(_ctx_state(0))
    assert ctx.feedback == "" and ctx.issues == [] and ctx.previous is None
    ctx = nodes.build_context(_ctx_state(1))
    assert ctx.feedback.startswith("Revise") and len(ctx.issues) == 1 and ctx.previous is not None


class _ReviseJudge:
    name = "builtin"

    def critique(self, ctx):
        return _crit([3.0, 4.0])


def test_a_revision_records_what_it_changed_in_the_reflection_that_asked_for_it():
    """The trace's reflection entry that asked for a revision gets the revision's changes (h0 5 → 3, and the
    best now h1): without them a revise round looked like it changed nothing."""
    config = {"configurable": {"agent": AgentConfig(render=False).model_dump(), "judge": _ReviseJudge()}}
    up = nodes.critique(_ctx_state(1), config)
    changes = up["reflections"][-1]["changes"]
    assert "h0 overall 5.00→3.00" in changes and "top-1 h0→h1" in changes
