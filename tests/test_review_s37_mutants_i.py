"""Review s37 (mutation audit of agent/learning_curve.py and agent/judges.py): the tests that killed the mutants
the suite let through.

The learning-curve tests run the real ``learning_curve`` orchestration (round loop, resume, partial file, held-out
checks) on a stand-in memory whose exploration only counts rounds, and a stand-in scorer whose figures say which
round's memory scored them: a row attached to the wrong round, a round scored twice or skipped on resume, or a
memory changed outside the curve that is resumed anyway shows in what was called and what was written. Each
expected figure is worked out by hand from the docstrings (no real exploration: fast)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hmrcritic.errors import InputError

ERRORS = np.array([10.0, 20.0, 30.0, 40.0])  # every held-out group's PA-MPJPE (and MPJPE, PVE), mm
# scores the stand-in scorer gives every group after r explored rounds, with their Spearman ρ against −error
# worked out by hand: ρ = 1 − 6 Σd² / (n (n² − 1)), n = 4 (60 in the denominator)
ROUND_SCORES = {
    0: ([1.0, 2.0, 3.0, 4.0], -1.0),  # best score on the worst hypothesis: fully reversed
    1: ([4.0, 3.0, 2.0, 1.0], 1.0),  # ranks the errors exactly
    2: ([4.0, 3.0, 1.0, 2.0], 0.8),  # last two swapped: Σd² = 2 → 1 − 12/60
    3: ([2.0, 4.0, 3.0, 1.0], 0.4),  # score ranks h1, h2, h0, h3: Σd² = 4 + 1 + 1 + 0 = 6 → 1 − 36/60
}


class FakeMemory:
    """What learning_curve reads of a memory: its folder, version, stats, explored record, and a hold."""

    def __init__(self, path: Path):
        self.path = path
        self.location = str(path)
        self.chroma_url = ""
        self.read_only = False
        self.rounds = 0
        self.ver = 0
        self.record: dict = {"splits": {}}
        path.mkdir(parents=True, exist_ok=True)

    def version(self) -> str:
        return f"v{self.ver}"

    def stats(self) -> dict:
        return {"rules": 10 + self.rounds, "rules_retired": 0, "prototypes": 4 * self.rounds, "version": self.version()}

    def exclusive(self, what: str):
        import contextlib

        return contextlib.nullcontext()


@pytest.fixture()
def curve(monkeypatch):
    """Patch exploration and scoring with stand-ins; returns the call log and a runner."""
    from hmrcritic.agent import explore as ex
    from hmrcritic.agent import learning_curve as lc

    calls: dict[str, list] = {"explore": [], "scored": []}
    mems: dict[str, FakeMemory] = {}
    train_ids = [f"train-{i:06d}" for i in range(8)]

    def explore(mem, split, rounds, batch_size, **kw):
        calls["explore"].append(rounds)
        while mem.rounds < rounds:  # as explore does: continues up to `rounds` rounds in all
            mem.rounds += 1
            mem.ver += 1
            rec = mem.record["splits"].setdefault(split, {"group_ids": []})
            rec["group_ids"] += train_ids[2 * (mem.rounds - 1):2 * mem.rounds]
            (Path(mem.path) / ex.PROGRESS_FILE).write_text("{}")
        return {}

    def frozen_copy(mem, root=None):
        return SimpleNamespace(rounds=mem.rounds, ver=mem.ver, record=json.loads(json.dumps(mem.record)),
                               stats=mem.stats, path=mem.path)

    def score_groups(held, ro, variant="full", judge=None, tag="", failures=None, **kw):
        calls["scored"].append(ro.rounds)
        return [np.array(ROUND_SCORES[ro.rounds][0]) for _ in held], [f"v{ro.ver}"] * len(held)

    def register(mem):
        mems[str(mem.path)] = mem
        return mem

    monkeypatch.setattr(ex, "_open_memory", register)
    monkeypatch.setattr(ex, "explore", explore)
    monkeypatch.setattr(ex, "frozen_copy", frozen_copy)
    monkeypatch.setattr(ex, "explored_record", lambda m: m.record)
    monkeypatch.setattr(ex, "_read_progress", lambda p: {"rounds_total": mems[str(p)].rounds})
    monkeypatch.setattr(ex, "error_table", lambda g: {m: ERRORS.copy() for m in ("pa_mpjpe", "mpjpe", "pve")})
    monkeypatch.setattr(lc, "score_groups", score_groups)

    held = [SimpleNamespace(group_id=f"test-{i:06d}") for i in range(2)]
    train = [SimpleNamespace(group_id=i) for i in train_ids]

    def run(mem, rounds, out=None, status=None, heldout=held):
        return lc.learning_curve(mem, rounds=rounds, batch_size=2, heldout=heldout, train_groups=train,
                                 out_dir=out, status=status)

    return SimpleNamespace(calls=calls, run=run, held=held)


def _stop_at(prefix: str):
    def status(line: str) -> None:
        if line.startswith(prefix):
            raise KeyboardInterrupt

    return status


def test_each_rounds_figures_are_those_of_the_memory_after_that_many_rounds(curve, tmp_path):
    """Round 0 is scored before any exploration and round r after exactly r: its ρ, its memory version and its
    prototype count are those of that memory (a row attached to the round before or after shows here)."""
    mem = FakeMemory(tmp_path / "m")
    res = curve.run(mem, 3)
    assert [r["round"] for r in res["rows"]] == [0, 1, 2, 3]
    assert [r["spearman"] for r in res["rows"]] == pytest.approx([ROUND_SCORES[k][1] for k in range(4)])
    assert [r["memory_version"] for r in res["rows"]] == ["v0", "v1", "v2", "v3"]
    assert [r["prototypes"] for r in res["rows"]] == [0, 4, 8, 12]
    assert curve.calls["explore"] == [1, 2, 3] and curve.calls["scored"] == [0, 1, 2, 3]


def test_a_resumed_curve_scores_each_round_once_and_finishes_as_one_run(curve, tmp_path):
    """Interrupted while scoring round 2 (round 2 explored, rows 0–1 written): the same call continues — rounds
    0 and 1 are not scored again, round 2 is scored once, round 3 explored and scored — and ends with the rows of
    one uninterrupted call, its partial file gone and the finished curve written."""
    from hmrcritic.agent.learning_curve import CURVE_FILE, PARTIAL_FILE

    mem, out = FakeMemory(tmp_path / "m"), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        curve.run(mem, 3, out=out, status=_stop_at("round 2: scoring"))
    part = json.loads((out / PARTIAL_FILE).read_text())
    assert [r["round"] for r in part["rows"]] == [0, 1]
    curve.calls["scored"].clear()
    res = curve.run(mem, 3, out=out)
    assert curve.calls["scored"] == [2, 3]
    assert [r["round"] for r in res["rows"]] == [0, 1, 2, 3]
    assert [r["spearman"] for r in res["rows"]] == pytest.approx([ROUND_SCORES[k][1] for k in range(4)])
    assert not (out / PARTIAL_FILE).exists()
    assert [r["round"] for r in json.loads((out / CURVE_FILE).read_text())["rows"]] == [0, 1, 2, 3]


def test_a_curve_whose_memory_changed_outside_it_is_not_resumed(curve, tmp_path):
    """Interrupted after round 1 was scored (before round 2 explored): a memory then edited (same number of
    rounds, another version) or explored further by something else is not the memory the rows describe, and
    the resume is refused rather than labelling its rows with rounds it did not explore."""
    mem, out = FakeMemory(tmp_path / "m"), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        curve.run(mem, 3, out=out, status=_stop_at("round 2/3: exploring"))
    assert mem.rounds == 1
    mem.ver += 1  # a rule added by hand: one round still, another version
    with pytest.raises(InputError, match="changed outside this curve"):
        curve.run(mem, 3, out=out)
    mem.ver -= 1
    mem.rounds = 3  # explored two more rounds outside this curve
    with pytest.raises(InputError, match="changed outside this curve"):
        curve.run(mem, 3, out=out)


def test_a_partial_file_is_written_after_each_round(curve, tmp_path):
    """The rows so far are on disk after every evaluated round (what an interrupted curve continues from)."""
    from hmrcritic.agent.learning_curve import PARTIAL_FILE

    mem, out = FakeMemory(tmp_path / "m"), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        curve.run(mem, 2, out=out, status=_stop_at("round 1/2: exploring"))
    assert [r["round"] for r in json.loads((out / PARTIAL_FILE).read_text())["rows"]] == [0]


def test_a_round_that_explored_a_heldout_group_is_refused_before_it_is_scored(curve, tmp_path, monkeypatch):
    """The held-out check runs every round, not only at round 0: a round whose exploration took in a held-out
    group (under its own split) must not be scored."""
    from hmrcritic.agent import explore as ex

    real = ex.explore
    held_id = curve.held[1].group_id

    def explore_then_leak(mem, split, rounds, batch_size, **kw):
        real(mem, split, rounds, batch_size, **kw)
        if rounds == 2:
            mem.record["splits"].setdefault("test", {"group_ids": []})["group_ids"].append(held_id)

    monkeypatch.setattr(ex, "explore", explore_then_leak)
    with pytest.raises(InputError, match=held_id):
        curve.run(FakeMemory(tmp_path / "m"), 3)
    assert curve.calls["scored"] == [0, 1]


def test_assert_heldout_checks_every_split_the_memory_records():
    """A given held-out group carries its own split in its id: a train group passed beside ``split="test"`` that
    the memory explored on train is refused (checking ``split`` alone let it through)."""
    from hmrcritic.agent.learning_curve import assert_heldout

    record = {"splits": {"train": {"group_ids": ["train-000003"]}}}
    mem = SimpleNamespace(path="/nowhere")
    assert_heldout(mem, "test", ["test-000003", "train-000004"], record=record)  # not explored: fine
    with pytest.raises(InputError, match="train-000003"):
        assert_heldout(mem, "test", ["test-000001", "train-000003"], record=record)


# ------------------------------------------------------------------------------------------------- judges.py
def _rule(n_used: int, n_success: int, points: float = 5.0, hard: bool = False):
    from hmrcritic.memory.schema import Rule, RuleCondition

    cond = RuleCondition(measure="consensus_dev_mm", comparator=">", threshold=50.0, points=points, hard=hard)
    return Rule(rule_id="r1", text="x", n_used=n_used, n_success=n_success, condition=cond)


def test_rule_weight_is_floored_at_zero_for_a_strong_gain():
    """``max(0, 1 + gain · (2 · reliability − 1))``: a rule that never helped (0 of 10, reliability 1/12) with
    gain 3 weighs 1 + 3 · (−10/12) = −1.5 → 0, never a negative weight that would *add* its points back."""
    from hmrcritic.agent.judges import rule_weight

    assert rule_weight(_rule(10, 0), gain=3.0) == 0.0
    assert rule_weight(_rule(10, 10), gain=3.0) == pytest.approx(1.0 + 3.0 * (2.0 * 11 / 12 - 1.0))


def _ctx(**kw):
    from hmrcritic.agent.judges import JudgeContext

    return JudgeContext(group_id="g", num_hypotheses=3, evidence={"consensus_dev_mm": [10.0, 20.0, 30.0]}, **kw)


def test_a_prototype_consensus_above_ten_never_scores_a_hypothesis_above_ten():
    """Scores are in [0, 10] (schema, DESIGN): prototypes imported on another scale (the paper's 0–100) pull
    ``overall`` up by ((value + 0.1) / 10.1) ** β > 1; the score is clamped at 10, not left at 10.2 or refused."""
    from hmrcritic.agent.judges import BuiltinJudge, PrototypeHit

    hit = PrototypeHit(proto_id="p", similarity=1.0, overall=90.0, motion_structure=90.0,
                       physical_feasibility=90.0, image_alignment=90.0)
    # h0 has the best evidence (generic badness 0: log score log 10), and β = 0.3 · 1 · 1 ≥ 0 raises it further
    crit = BuiltinJudge(proto_weight=1.0).critique(_ctx(prototypes=[[hit], [], []]))
    assert crit.scores[0].overall == 10.0
    assert all(0.0 <= s.overall <= 10.0 for s in crit.scores)


def test_a_revision_toward_a_target_above_ten_is_clamped_at_ten():
    """A revision moves a score halfway to a prototype target (``revise_prototypes``): 0.5 · (8 + 30) = 19 must
    come back as 10 — the revised HypothesisScore is a copy whose field is assigned, so nothing else checks."""
    from hmrcritic.agent.judges import BuiltinJudge, ReflectionIssue
    from hmrcritic.agent.schema import GroupCritique, HypothesisScore

    prev = GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5,
                                                 image_alignment=5, overall=o, rationale="r")
                                 for i, o in enumerate([8.0, 6.0, 4.0])], summary="s", rules_applied=[])
    issue = ReflectionIssue(kind="prototype", indices=[0], target=30.0)
    crit = BuiltinJudge(revise_prototypes=True).critique(_ctx(round=1, previous=prev, issues=[issue]))
    assert crit.scores[0].overall == 10.0
    assert [s.overall for s in crit.scores[1:]] == [6.0, 4.0]


def test_a_round_0_context_is_a_first_critique_even_with_a_previous_one_and_issues():
    """``round``: 0 = first critique, k = k-th revision; a round-0 context is critiqued from the evidence — a
    previous critique and issues left in it (a context reused by hand) do not turn it into a revision of them."""
    from hmrcritic.agent.judges import BuiltinJudge, ReflectionIssue
    from hmrcritic.agent.schema import GroupCritique, HypothesisScore

    prev = GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5,
                                                 image_alignment=5, overall=o, rationale="r")
                                 for i, o in enumerate([1.0, 2.0, 3.0])], summary="s", rules_applied=[])
    issue = ReflectionIssue(kind="neighbours", indices=[0], target=9.0)
    judge = BuiltinJudge()
    fresh = judge.critique(_ctx())
    again = judge.critique(_ctx(round=0, previous=prev, issues=[issue]))
    assert [s.overall for s in again.scores] == [s.overall for s in fresh.scores]
    # the evidence ranks h0 (10 mm from the consensus) best, whatever the previous critique said
    assert again.scores[0].overall > again.scores[1].overall > again.scores[2].overall
    assert not again.summary.startswith("revised")


def test_score_groups_stops_only_after_unusable_failures_in_a_row(monkeypatch):
    """``UNUSABLE_IN_A_ROW`` (3) failures *in a row* of an unusable endpoint stop the sending; a group that scored
    in between starts the count again. Failures unusable, unusable, ok, unusable, unusable, ok: every group is
    tried (no three in a row), and the last one scores."""
    from hmrcritic.agent import api, graph
    from hmrcritic.agent.learning_curve import score_groups
    from hmrcritic.errors import JudgeError

    plan = ["bad", "bad", "ok", "bad", "bad", "ok"]
    tried: list[str] = []

    def critique_group(sample, hyps, group_id, **kw):
        gid = group_id.rsplit("-", 1)[1]
        tried.append(gid)
        if plan[int(gid)] == "bad":
            raise JudgeError("the key is refused")
        return SimpleNamespace(overall=[1.0, 2.0], memory_version="v1")

    monkeypatch.setattr(api, "critique_group", critique_group)
    monkeypatch.setattr(api, "discard_run", lambda res: None)
    monkeypatch.setattr(api, "unusable_endpoint", lambda exc: "http://127.0.0.1:1 (the key is refused)")
    monkeypatch.setattr(graph, "open_checkpointer", lambda *a, **k: None)
    monkeypatch.setattr(graph, "compile_graph", lambda *a, **k: None)
    groups = [SimpleNamespace(group_id=str(i), sample=None, hypotheses=None) for i in range(len(plan))]
    failures: list[str] = []
    scores, versions = score_groups(groups, memory=None, failures=failures)
    assert tried == [str(i) for i in range(6)]
    assert [s is not None for s in scores] == [p == "ok" for p in plan]
    assert versions == ["", "", "v1", "", "", "v1"] and not any("not tried" in f for f in failures)


def test_prototype_level_is_the_mean_log_of_the_settled_scores():
    """Per hypothesis the settled score of its labelled prototypes (10 · exp(−error / 60 mm)), in log units,
    averaged: errors 0 and 60 mm at similarity 1 → (log 10 + (log 10 − 1)) / 2 = log 10 − 0.5, confidence 1;
    a hypothesis with only unlabelled prototypes is left out."""
    import math

    from hmrcritic.agent.judges import PrototypeHit, prototype_level

    def hit(err):
        return PrototypeHit(proto_id="p", similarity=1.0, overall=5.0, motion_structure=5.0,
                            physical_feasibility=5.0, image_alignment=5.0, error_mm=err)

    level, conf = prototype_level([[hit(0.0)], [hit(60.0)], [hit(None)]])
    assert level == pytest.approx(math.log(10.0) - 0.5) and conf == pytest.approx(1.0)


def test_prototype_lists_beyond_the_hypotheses_do_not_move_the_level():
    """``prototypes`` is per hypothesis: a list past ``num_hypotheses`` (a context built by hand) belongs to no
    hypothesis and must not pull the group's level (nor any score)."""
    from hmrcritic.agent.judges import BuiltinJudge, PrototypeHit

    far = PrototypeHit(proto_id="p", similarity=1.0, overall=1.0, motion_structure=1.0, physical_feasibility=1.0,
                       image_alignment=1.0, error_mm=300.0)
    judge = BuiltinJudge()
    base = judge.critique(_ctx(prototypes=[[], [], []]))
    extra = judge.critique(_ctx(prototypes=[[], [], [], [far]]))
    assert [s.overall for s in extra.scores] == [s.overall for s in base.scores]


def test_make_judge_reads_the_name_as_the_cli_and_environment_write_it():
    """Judge names are case- and space-insensitive (``--judge Builtin``, ``HMRCRITIC_JUDGE=" builtin"``); an
    unknown name is refused in one InputError, and an object that is not a judge is a TypeError, never returned
    to fail later inside a critique."""
    from hmrcritic.agent.judges import BuiltinJudge, make_judge

    assert isinstance(make_judge(" Builtin "), BuiltinJudge)
    assert isinstance(make_judge("BUILTIN"), BuiltinJudge)
    with pytest.raises(InputError, match="unknown"):
        make_judge("buitlin")
    for bad in (42, SimpleNamespace(name="x")):  # no critique / propose_rules
        with pytest.raises(TypeError, match="not a judge"):
            make_judge(bad)


def test_progress_past_its_total_says_no_more_lines():
    """At most 11 progress lines however many items: a count that runs past the announced total (a total that was
    an estimate) stays at the last tenth — n = 5 gives lines at 1..5 (each a fifth: tenths 2, 4, 6, 8, 10) and
    none for 6..20."""
    from hmrcritic.agent.learning_curve import at_a_tenth

    assert [i for i in range(1, 21) if at_a_tenth(i, 5)] == [1, 2, 3, 4, 5]
