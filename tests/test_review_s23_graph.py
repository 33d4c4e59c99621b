"""Review s23 (graph and nodes, non-scoring): real LangGraph + SqliteSaver + Chroma memory, constructed scenes."""

from __future__ import annotations

import json
import shutil

import pytest

from hmrcritic.agent import nodes
from hmrcritic.agent.api import _sample_arrays, critique_group, load_hypotheses
from hmrcritic.agent.graph import open_checkpointer
from hmrcritic.agent.state import AgentConfig
from hmrcritic.errors import InputError, JudgeError
from hmrcritic.io import atomic_save_npz

pytestmark = pytest.mark.usefixtures("small_prior")

N = 6


@pytest.fixture()
def memory(tmp_path):
    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(path=tmp_path / "memory")
    store.reset(seed_starter=True)
    return store


def group(seed: int):
    from tests.test_agent_graph import make_group

    return make_group(seed)


def through_reflect(run_dir, s, h, err, config):
    atomic_save_npz(run_dir / "inputs.npz", **_sample_arrays(s), **load_hypotheses(h), true_error_mm=err)
    state = {"group_id": "g", "run_id": "r", "run_dir": str(run_dir), "num_hypotheses": N, "round": 0,
             "reflections": [], "issues": []}
    for node in (nodes.render, nodes.recall, nodes.critique, nodes.reflect):
        state.update(node(state, config))
    return state


def test_a_run_folder_removed_between_nodes_is_one_clear_error_not_a_silent_change(tmp_path, memory):
    """The run folder removed after render (by hand, or between a crash and its resume): recall and memory_write
    failed with a bare FileNotFoundError, reflect skipped the neighbour check without a word (another critique),
    and memory_write made the folder anew holding critique.json alone."""
    s, h, err = group(2)
    config = {"configurable": {"agent": AgentConfig(render=False, learn=True).model_dump(), "memory": memory}}
    nodes.memory_write(through_reflect(tmp_path / "first", s, h, err, config), config)  # recall reads poses now
    run_dir = tmp_path / "run"
    state = through_reflect(run_dir, s, h, err, config)
    shutil.rmtree(run_dir)
    for node in (nodes.recall, nodes.reflect, nodes.memory_write):
        with pytest.raises(InputError, match="bodies.npz.*--fresh"):
            node(dict(state), config)
    assert not run_dir.exists()


def test_a_resumed_critique_whose_arrays_are_gone_names_them(tmp_path, memory, monkeypatch):
    """Through critique_group: a critique killed after recall whose bodies.npz went before the re-run starts afresh
    (what the node's "use --fresh" advice would do; session 23 follow-up) with the same scores as an uninterrupted
    run; the node itself still names the file (the test above)."""
    s, h, _ = group(3)
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    kw = dict(memory=memory, config=AgentConfig(render=False), checkpointer=saver, run_dir=tmp_path / "g")
    real = nodes.check_critique
    monkeypatch.setattr(nodes, "check_critique", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        critique_group(s, h, **kw)
    monkeypatch.setattr(nodes, "check_critique", real)
    (tmp_path / "g" / "bodies.npz").unlink()
    res = critique_group(s, h, **kw)
    assert len(res.scores) == N and (tmp_path / "g" / "bodies.npz").is_file()
    again = critique_group(s, h, fresh=True, **kw)
    assert [x.overall for x in res.scores] == [x.overall for x in again.scores]


class DictJudge:
    name = "dict"

    def critique(self, ctx):
        return {"scores": [{"index": i, "motion_structure": 5, "physical_feasibility": 5, "image_alignment": 5,
                            "overall": 11.0 if i == 1 else 5.0, "rationale": "r"}
                           for i in range(ctx.num_hypotheses)]}

    def propose_rules(self, ctx, mistakes):
        raise NotImplementedError


def test_a_judge_answer_that_fails_validation_says_what_failed(tmp_path, memory):
    """A judge returning a dict with a score of 11 was "judge returned dict, not a GroupCritique": the type was
    right, the value was not, and the message did not say which."""
    s, h, _ = group(4)
    with pytest.raises(JudgeError, match=r"scores\.1\.overall.*less than or equal to 10"):
        critique_group(s, h, judge=DictJudge(), memory=memory, config=AgentConfig(render=False),
                       checkpointer=open_checkpointer(tmp_path / "ckpt.sqlite"), run_dir=tmp_path / "g")


def test_a_checkpoint_file_removed_under_a_running_process_is_opened_anew(tmp_path, memory, monkeypatch):
    """``rm -r runs/`` beside a long-lived process (a notebook, a service): its cached connection went on writing
    every later critique's checkpoint into the deleted file, which no `runs` command, resume or other process
    could see."""
    from hmrcritic.agent.graph import checkpoint_path
    from hmrcritic.agent.runs import _threads

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    s, h, _ = group(5)
    kw = dict(memory=memory, config=AgentConfig(render=False, max_reflections=0))
    critique_group(s, h, group_id="before", **kw)
    db = checkpoint_path()
    assert _threads(db) == ["before"]
    shutil.rmtree(tmp_path / "runs")
    critique_group(s, h, group_id="after", **kw)
    assert _threads(db) == ["after"]


@pytest.mark.parametrize(("proposal", "says"), [
    ({"text": "knee bent backwards beyond twenty degrees", "measure": "hyperextension_deg", "comparator": ">",
      "threshold": "abc"}, "threshold: Input should be a valid number"),
    ('{"text": 5}', "text: Input should be a valid string"),
])
def test_a_rejected_proposal_says_which_field_failed(proposal, says):
    """Every proposal that did not parse was rejected as "(ValidationError: 1 validation error for ProposedRule)":
    exploration's log never said which field was wrong."""
    from hmrcritic.agent.mining import validate_proposal

    rule, rejection = validate_proposal(proposal, 1)
    assert rule is None and says in rejection.reason


def _killed_between_plan_and_rules(tmp_path, memory, monkeypatch, name):
    s, h, err = group(2)
    config = {"configurable": {"agent": AgentConfig(render=False, learn=True).model_dump(), "memory": memory}}
    state = through_reflect(tmp_path / name, s, h, err, config)
    with monkeypatch.context() as mp:
        mp.setattr(type(memory.rules), "update", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            nodes.memory_write(state, config)
    plan = json.loads((tmp_path / name / nodes.MEMORY_WRITE_FILE).read_text())
    assert not plan["applied"] and plan["rules"]
    return state, config, plan


def test_a_plan_resumed_after_other_writes_adds_its_uses_and_keeps_theirs(tmp_path, memory, monkeypatch):
    """A learning critique killed between its memory_write plan and the rule statistics, resumed after other
    writes to those rules (an exploration retiring one, another group counting a use): the plan's whole records
    were written back, un-retiring the rule and dropping the other use."""
    state, config, plan = _killed_between_plan_and_rules(tmp_path, memory, monkeypatch, "a")
    planned = {r["rule_id"]: r for r in plan["rules"]}
    first, *rest = sorted(planned)
    before = {r.rule_id: r for r in memory.rules.all(include_retired=True)}
    memory.rules.retire([first])
    memory.rules.record_use(rest[:1] or [first], success=True)
    meanwhile = {r.rule_id: r for r in memory.rules.all(include_retired=True)}
    nodes.memory_write(state, config)  # the resumed run
    nodes.memory_write(state, config)  # and once more: applied, nothing added
    after = {r.rule_id: r for r in memory.rules.all(include_retired=True)}
    assert after[first].retired
    for rid, r in planned.items():
        assert after[rid].n_used == meanwhile[rid].n_used + r["n_used"] - before[rid].n_used
        assert after[rid].n_success == meanwhile[rid].n_success + r["n_success"] - before[rid].n_success


def test_a_plan_resumed_after_its_rules_are_gone_does_not_fail_the_group_for_ever(tmp_path, memory, monkeypatch):
    """The memory reset between the crash and the resume: "cannot update unknown rule id(s)" on every re-run."""
    state, config, _ = _killed_between_plan_and_rules(tmp_path, memory, monkeypatch, "b")
    memory.reset(seed_starter=False)
    out = nodes.memory_write(state, config)
    assert out["done"] and memory.rules.count(include_retired=True) == 0


def test_a_revision_listing_tied_scores_in_another_order_changes_no_top_1():
    """The reflection record said "top-1 h0→h1" when a revision only listed two tied best scores in another
    order: the result's ranking (ties to the lower index) had h0 first both times."""
    from hmrcritic.agent.schema import GroupCritique, HypothesisScore

    def crit(order):
        return GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5,
                                                     image_alignment=5, overall=8.0 if i < 2 else 3.0,
                                                     rationale="r") for i in order])

    assert nodes.diff_critiques(crit([0, 1, 2]), crit([1, 0, 2])) == []
    assert nodes.diff_critiques(crit([0, 1, 2]), crit([2, 1, 0])) == []
