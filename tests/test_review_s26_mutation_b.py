"""Session 26 (mutation B): tests that kill mutants of the rule memory, the prototype memory, merge planning and
proposal validation which the suite let through. Each checks a property a user relies on (what a real Chroma memory
on disk holds after a sequence of calls, what the documented contract promises), not the code's own output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmrcritic.errors import InputError
from hmrcritic.memory.embeddings import POSE_DIM, TEXT_DIM
from hmrcritic.memory.maintenance import plan_maintenance, plan_merges, plan_retirements
from hmrcritic.memory.schema import Prototype, Rule, RuleCondition


@pytest.fixture
def store(tmp_path):
    from hmrcritic.memory.store import MemoryStore

    s = MemoryStore(path=tmp_path / "memory")
    s.reset(seed_starter=False)
    return s


def _vec(seed: int) -> np.ndarray:
    """A unit text vector (explicit vectors keep these tests free of the text model)."""
    v = np.random.default_rng(seed).normal(size=TEXT_DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _rule(rid: str, n_used: int = 0, n_success: int = 0, **kw) -> Rule:
    return Rule(rule_id=rid, text=f"rule {rid} takes points off", n_used=n_used, n_success=n_success, **kw)


def _add(store, *rules: Rule) -> None:
    store.rules.add(list(rules), embeddings=np.stack([_vec(i) for i in range(len(rules))]))


# --- rules.py: validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n_used", "n_success"), [(3, -1), (-1, 0), (2, 3)])
def test_counts_outside_zero_to_uses_are_refused_and_nothing_is_stored(store, n_used, n_success):
    """The documented invariant 0 ≤ n_success ≤ n_used: a negative success count (an import file's, a script's)
    gave a negative success rate, pushing the rule below every never-used one in Ψ and toward retirement."""
    _add(store, _rule("kept", 4, 2))
    with pytest.raises(InputError, match="n_success <= n_used"):
        store.rules.add([_rule("bad", n_used, n_success)], embeddings=_vec(9)[None])
    with pytest.raises(InputError, match="n_success <= n_used"):
        store.rules.update([_rule("kept", n_used, n_success)])
    assert [(r.rule_id, r.n_used, r.n_success) for r in store.rules.all(include_retired=True)] == [("kept", 4, 2)]


# --- rules.py: use counts -----------------------------------------------------------------------------------------

def test_a_failed_use_counts_a_use_and_no_success_and_a_repeated_id_counts_twice(store):
    _add(store, _rule("a", 2, 1), _rule("b", 0, 0))
    store.rules.record_use(["a"], success=False)
    store.rules.record_use(["b", "b"], success=True)  # documented: an id listed twice counts twice
    got = {r.rule_id: (r.n_used, r.n_success) for r in store.rules.all()}
    assert got == {"a": (3, 1), "b": (2, 2)}


def test_record_use_with_unknown_ids_counts_the_known_ones_once(store):
    _add(store, _rule("a", 0, 0))
    with pytest.raises(InputError, match="unknown rule id"):
        store.rules.record_use(["a", "ghost"], success=True)
    assert store.rules.get(["a"])[0].n_used == 0  # refused whole: nothing counted
    store.rules.record_use(["a", "ghost"], success=True, ignore_unknown=True)
    assert (store.rules.get(["a"])[0].n_used, store.rules.get(["a"])[0].n_success) == (1, 1)


# --- rules.py: retire, retrieval of active rules only ---------------------------------------------------------

def test_retire_retires_every_rule_named_and_keeps_their_history(store):
    _add(store, _rule("a", 5, 1), _rule("b", 7, 2), _rule("c", 1, 1))
    store.rules.retire(["a", "b"])
    assert [r.rule_id for r in store.rules.all()] == ["c"]
    assert store.rules.count() == 1 and store.rules.count(include_retired=True) == 3
    assert [r.rule_id for r in store.rules.retrieve([], k=8)] == ["c"]
    assert [r.rule_id for r, _ in store.rules.scored([])] == ["c"]
    kept = {r.rule_id: (r.n_used, r.n_success, r.retired) for r in store.rules.all(include_retired=True)}
    assert kept == {"a": (5, 1, True), "b": (7, 2, True), "c": (1, 1, False)}


def test_search_leaves_out_retired_rules_unless_asked(store):
    store.rules.add([Rule(rule_id="knee", text="A knee bent backwards is anatomically impossible"),
                     Rule(rule_id="knee2", text="Knees bending backwards cannot happen in a real body")])
    store.rules.retire(["knee2"])
    assert [r.rule_id for r, _ in store.rules.search("knee bent backwards", k=5)] == ["knee"]
    assert {r.rule_id for r, _ in store.rules.search("knee bent backwards", k=5, include_retired=True)} == \
        {"knee", "knee2"}


# --- rules.py: add ----------------------------------------------------------------------------------------------

def test_one_explicit_id_twice_in_one_add_is_refused_and_nothing_is_written(store):
    first = Rule(rule_id="dup", text="the first text of the rule")
    second = Rule(rule_id="dup", text="a second, different text")
    with pytest.raises(InputError, match="already exists"):
        store.rules.add([first, second], embeddings=np.stack([_vec(1), _vec(2)]))
    assert store.rules.count(include_retired=True) == 0


def test_the_same_text_added_again_without_an_id_is_one_rule_but_an_explicit_id_again_is_refused(store):
    r = Rule(rule_id="", text="Feet  below the ground   plane are wrong")
    (rid,) = store.rules.add([r], embeddings=_vec(1)[None])
    assert store.rules.add([r.model_copy(update={"text": "feet below the ground plane are wrong"})],
                           embeddings=_vec(1)[None]) == [rid]
    assert store.rules.count() == 1
    with pytest.raises(InputError, match="already exists"):
        store.rules.add([Rule(rule_id=rid, text="another text under that id")], embeddings=_vec(2)[None])
    assert store.rules.get([rid])[0].text == "Feet  below the ground   plane are wrong"


# --- maintenance.py: merge planning -----------------------------------------------------------------------------

def _cond(thr: float, **kw) -> RuleCondition:
    return RuleCondition(measure="reproj_px", comparator=">", threshold=thr, points=2.0, **kw)


def test_a_merge_keeps_the_most_used_and_it_absorbs_uses_successes_and_tags():
    rules = [_rule("new", 2, 1, tags=["legs"], condition=_cond(10.3), round_created=3),
             _rule("old", 9, 6, tags=["arms"], condition=_cond(10.0))]
    plan = plan_merges(rules)
    assert plan.merged == [("old", "new")]
    kept, gone = plan.updates["old"], plan.updates["new"]
    assert (kept.n_used, kept.n_success, kept.retired) == (11, 7, False)
    assert set(kept.tags) == {"arms", "legs"} and gone.retired and (gone.n_used, gone.n_success) == (2, 1)


@pytest.mark.parametrize("other", [_cond(10.0, hard=True), _cond(10.0, per=2.0)])
def test_a_hard_or_graded_twin_of_a_step_rule_is_not_merged(other):
    """A hard constraint's deduction is never weighed down, and a graded rule weighs a measure a step rule only
    splits: merging either into a plain step rule on the same threshold changed what the judge deducts."""
    rules = [_rule("step", 5, 3, condition=_cond(10.0)), _rule("other", 1, 1, condition=other)]
    assert plan_merges(rules).merged == []


def test_rules_that_read_alike_but_contradict_are_not_merged():
    same = {"x": _vec(1), "y": _vec(1)}  # identical texts' vectors
    rules = [_rule("x", 5, 3, condition=_cond(10.0)), _rule("y", 1, 1, condition=_cond(40.0))]
    assert plan_merges(rules, same).merged == []
    rules[1] = _rule("y", 1, 1)  # no condition: nothing to contradict
    assert plan_merges(rules, same).merged == [("x", "y")]


def test_a_merge_plan_counts_every_use_once():
    """Nothing is lost or counted twice: over the active rules after the plan, uses and successes sum to what they
    were. (A rule already absorbed into one cluster was absorbed again into a later one.)"""
    e = np.eye(TEXT_DIM, dtype=np.float32)
    emb = {"A": e[0], "B": e[1], "C": (e[0] + e[1]) / np.sqrt(2)}  # C reads like both (cos 0.71), A unlike B
    rules = [_rule("A", 10, 5), _rule("B", 5, 2, condition=_cond(10.0)), _rule("C", 1, 1)]
    plan = plan_merges(rules, emb, text_threshold=0.5)
    after = {r.rule_id: plan.updates.get(r.rule_id, r) for r in rules}
    active = [r for r in after.values() if not r.retired]
    assert sum(r.n_used for r in active) == 16 and sum(r.n_success for r in active) == 8
    assert [m for _, m in plan.merged].count("C") == 1


def test_retirement_starts_at_min_uses_and_spares_hard_constraints():
    low = dict(n_used=8, n_success=1)  # 12.5 % success after exactly RETIRE_MIN_USES (8) uses
    rules = [_rule("soft", **low, condition=_cond(10.0)), _rule("hard", **low, condition=_cond(30.0, hard=True)),
             _rule("young", 7, 0), _rule("fine", 8, 3)]
    assert plan_retirements(rules).retired == ["soft"]
    assert plan_maintenance(rules).retired == ["soft"]


# --- prototypes.py --------------------------------------------------------------------------------------------

def _proto(pid: str, seed: int, **kw) -> Prototype:
    v = np.random.default_rng(seed).normal(size=POSE_DIM)
    fields = dict(overall=5.0, motion_structure=5.0, physical_feasibility=5.0, image_alignment=5.0)
    fields.update(kw)
    return Prototype(proto_id=pid, embedding=(v / np.linalg.norm(v)).tolist(), source=pid, **fields)


@pytest.mark.parametrize("bad", [{"overall": 10.5}, {"image_alignment": -0.1}, {"error_mm": -3.0}])
def test_a_prototype_outside_the_documented_ranges_is_refused(store, bad):
    with pytest.raises(InputError):
        store.prototypes.add([_proto("ok", 1), _proto("bad", 2, **bad)])
    assert store.prototypes.count() == 0


def test_one_prototype_id_twice_in_one_add_is_refused(store):
    with pytest.raises(InputError, match="unique"):
        store.prototypes.add([_proto("p", 1), _proto("p", 2)])
    assert store.prototypes.count() == 0


def test_prototype_query_is_nearest_first_with_cosine_similarity_and_k_zero_is_nothing(store):
    protos = [_proto(f"p{i}", i) for i in range(4)]
    store.prototypes.add(protos)
    q = np.asarray(protos[2].embedding, dtype=np.float32)
    (row,) = store.prototypes.query(q, k=3)
    assert [p.proto_id for p, _ in row][0] == "p2" and row[0][1] == pytest.approx(1.0, abs=1e-5)
    want = sorted(((float(np.dot(q, p.embedding)), p.proto_id) for p in protos), reverse=True)[:3]
    assert [(pid, pytest.approx(s, abs=1e-4)) for s, pid in want] == [(p.proto_id, s) for p, s in row]
    assert store.prototypes.query(q, k=0) == [[]]


def test_an_unlabelled_prototype_written_over_a_labelled_one_carries_no_label(store):
    store.prototypes.add([_proto("p", 1, error_mm=80.0)])
    store.prototypes.add([_proto("p", 1)])
    assert store.prototypes.get(["p"])[0].error_mm is None


# --- mining.py: proposal validation ---------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "why"), [
    ({"points": 0}, "points"), ({"points": -1}, "points"), ({"per": 0}, "per"), ({"per": -2}, "per"),
    ({"threshold": float("inf")}, "threshold"),
])
def test_a_proposal_with_a_degenerate_number_is_rejected(extra, why):
    from hmrcritic.agent.mining import validate_proposal

    prop = {"text": "reprojection far off the keypoints is wrong", "measure": "reproj_px", "comparator": ">",
            "threshold": 20.0, "points": 2.0, **extra}
    rule, rej = validate_proposal(prop, 1)
    assert rule is None and why in rej.reason


def test_a_retired_rule_does_not_block_a_proposal_on_its_condition_but_an_active_one_does():
    from hmrcritic.agent.mining import validate_proposal

    prop = {"text": "reprojection far off the keypoints is wrong", "measure": "reproj_px", "comparator": ">",
            "threshold": 20.0, "points": 2.0}
    old = _rule("old", 9, 1, condition=_cond(20.0))
    rule, rej = validate_proposal(prop, 1, existing=[old.model_copy(update={"retired": True})])
    assert rej is None and rule.condition.threshold == 20.0
    rule, rej = validate_proposal(prop, 1, existing=[old])
    assert rule is None and "duplicates" in rej.reason


def test_a_proposal_text_too_short_to_check_is_rejected():
    from hmrcritic.agent.mining import validate_proposal

    rule, rej = validate_proposal({"text": "  bad  pos "}, 1)  # 7 characters once its spaces are folded
    assert rule is None and "too short" in rej.reason
    rule, rej = validate_proposal({"text": " bad  pose"}, 1)  # 8: enough
    assert rej is None and rule.text == "bad pose"


# --- runs.py: prune's age cutoff --------------------------------------------------------------------------------

def _thread_naming(db, thread: str, run_dir: str) -> None:
    """A finished checkpoint thread whose state names ``run_dir`` (as ``critique_group(run_dir=…)`` stores it)."""
    from langgraph.checkpoint.base import empty_checkpoint

    from hmrcritic.agent.graph import open_checkpointer

    ckpt = empty_checkpoint()
    ckpt["channel_values"] = {"run_dir": run_dir, "done": True}
    open_checkpointer(db).put({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, ckpt,
                              {"source": "loop", "step": 1}, {})


def test_prune_removes_a_thread_whose_run_folder_is_gone_or_old_and_keeps_a_recent_one(tmp_path):
    """Documented: "A checkpoint thread is removed when its run folder is older than the cutoff or missing"."""
    import os
    import time

    from hmrcritic.agent import runs

    root = tmp_path / "runs"
    db = root / "checkpoints.sqlite"
    recent, stale = tmp_path / "elsewhere" / "recent", tmp_path / "elsewhere" / "stale"
    recent.mkdir(parents=True)
    stale.mkdir()
    week_ago = time.time() - 8 * 86400
    os.utime(stale, (week_ago, week_ago))
    for name, folder in (("recent", recent), ("stale", stale), ("gone", tmp_path / "elsewhere" / "gone")):
        _thread_naming(db, name, str(folder))
    out = runs.prune_runs(7, root)
    assert out["removed"]["checkpoints"] == 2
    assert runs._threads(db) == ["recent"]


# --- nodes.py: reflect's round count --------------------------------------------------------------------------

class _OneShortJudge:
    """The builtin judge, but every answer leaves the last hypothesis out: a critique reflect never accepts."""

    name = "one-short"

    def __init__(self):
        from hmrcritic.agent.judges import BuiltinJudge

        self.inner, self.calls = BuiltinJudge(), 0

    def critique(self, ctx):
        self.calls += 1
        crit = self.inner.critique(ctx)
        return crit.model_copy(update={"scores": [s for s in crit.scores if s.index != ctx.num_hypotheses - 1]})


@pytest.mark.parametrize("rounds", [0, 2])
def test_a_critique_that_stays_wrong_is_revised_exactly_max_reflections_times(tmp_path, small_prior, rounds):
    """DESIGN.md: reflect loops back to critique "at most `max_reflections` rounds" — and, while the critique is
    still wrong, every one of them: the judge answers 1 + max_reflections times before the group fails."""
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.errors import InvalidCritiqueError
    from tests.test_agent_graph import make_group

    s, h, _ = make_group(3)
    judge = _OneShortJudge()
    with pytest.raises(InvalidCritiqueError, match=f"after {rounds} revision"):
        critique_group(s, h, judge=judge, memory=None, config=AgentConfig(render=False, max_reflections=rounds),
                       checkpointer=open_checkpointer(tmp_path / "ckpt.sqlite"), run_dir=tmp_path / "g")
    assert judge.calls == 1 + rounds


# --- nodes.py: memory_write's ledger ----------------------------------------------------------------------------

def test_a_fresh_learning_critique_in_the_same_run_folder_counts_its_rule_uses_again(tmp_path, small_prior, store):
    """The crash ledger (memory_write.json) keeps one run from counting its rule uses twice; a *new* run of the same
    group (``fresh=True``) into the same folder is a second critique and counts them again, prototypes rewritten."""
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.state import AgentConfig
    from tests.test_agent_graph import make_group

    store.reset(seed_starter=True)
    s, h, err = make_group(4)
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")

    def learn(fresh: bool) -> int:
        res = critique_group(s, h, judge="builtin", memory=store, learn=True, true_errors_mm=err, fresh=fresh,
                             config=AgentConfig(render=False), checkpointer=saver, run_dir=tmp_path / "g")
        assert res.memory_written["rules_recorded"] > 0
        return sum(r.n_used for r in store.rules.all(include_retired=True))

    used_before = sum(r.n_used for r in store.rules.all(include_retired=True))
    first = learn(False) - used_before
    assert learn(True) - used_before == 2 * first


# --- rules.py: retire is one read-modify-write ------------------------------------------------------------------

def test_a_use_recorded_while_a_rule_is_retired_is_not_lost(store, monkeypatch):
    """retire read the rules, then wrote them back whole (counts included) in a second, separate write: a use that
    another critique recorded in between was written over. Here the other writer records as soon as retire has
    read; it must either land before retire's read or wait for its write, never vanish."""
    import threading

    from hmrcritic.memory.rules import RuleMemory

    _add(store, _rule("a", 4, 2))
    real_get, other = RuleMemory.get, []

    def get_then_another_writer_records(self, ids):
        got = real_get(self, ids)
        t = threading.Thread(target=store.rules.record_use, args=(["a"], True))
        t.start()
        other.append(t)
        t.join(timeout=1.0)  # before the fix it finishes here; after, it waits for retire's write
        return got

    monkeypatch.setattr(RuleMemory, "get", get_then_another_writer_records)
    store.rules.retire(["a"])
    other[0].join()
    (a,) = store.rules.all(include_retired=True)
    assert (a.n_used, a.n_success, a.retired) == (5, 3, True)


def test_a_use_recorded_while_duplicates_are_merged_is_not_lost(store, monkeypatch):
    """merge_near_duplicates read the rules, then wrote the kept one back with its absorbed counts in a separate
    write: a use recorded in between by another writer was overwritten, as with retire."""
    import threading

    from hmrcritic.memory.rules import RuleMemory

    _add(store, _rule("keep", 6, 3, condition=_cond(10.0)), _rule("twin", 2, 1, condition=_cond(10.2)))
    real_all, other = RuleMemory.all, []

    def all_then_another_writer_records(self, include_retired=False):
        got = real_all(self, include_retired)
        if not other:
            t = threading.Thread(target=store.rules.record_use, args=(["keep"], True))
            t.start()
            other.append(t)
            t.join(timeout=1.0)
        return got

    monkeypatch.setattr(RuleMemory, "all", all_then_another_writer_records)
    assert store.rules.merge_near_duplicates() == [("keep", "twin")]
    other[0].join()
    got = {r.rule_id: (r.n_used, r.n_success, r.retired) for r in real_all(store.rules, include_retired=True)}
    assert got == {"keep": (9, 5, False), "twin": (2, 1, True)}


def test_a_learning_critique_killed_after_its_rule_write_counts_each_use_once_on_resume(tmp_path, small_prior,
                                                                                      store, monkeypatch):
    """Killed after the rule statistics were written but before the ledger said "applied": the resumed
    memory_write must see the uses already counted (the counts equal the plan's) and not add them again."""
    from hmrcritic.agent import nodes
    from hmrcritic.agent.state import AgentConfig
    from tests.test_review_s23_graph import group, through_reflect

    store.reset(seed_starter=True)
    s, h, err = group(5)
    config = {"configurable": {"agent": AgentConfig(render=False, learn=True).model_dump(), "memory": store}}
    state = through_reflect(tmp_path / "run", s, h, err, config)
    before = {r.rule_id: (r.n_used, r.n_success) for r in store.rules.all(include_retired=True)}
    real_write = nodes.atomic_write_json

    def killed_at_the_applied_mark(path, payload, *a, **k):
        if isinstance(payload, dict) and payload.get("applied"):
            raise KeyboardInterrupt
        return real_write(path, payload, *a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(nodes, "atomic_write_json", killed_at_the_applied_mark)
        with pytest.raises(KeyboardInterrupt):
            nodes.memory_write(state, config)
    plan = {r["rule_id"]: r for r in json.loads((tmp_path / "run" / nodes.MEMORY_WRITE_FILE).read_text())["rules"]}
    assert plan, "the group must have counted rule uses"
    nodes.memory_write(state, config)  # the resume
    after = {r.rule_id: (r.n_used, r.n_success) for r in store.rules.all(include_retired=True)}
    for rid, r in plan.items():
        assert after[rid] == (r["n_used"], r["n_success"]) and r["n_used"] == before[rid][0] + 1
