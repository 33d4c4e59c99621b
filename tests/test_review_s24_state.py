"""Review s24 (graph state size, memory-write ledger reads): real LangGraph + SqliteSaver + Chroma memory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmrcritic.agent import nodes
from hmrcritic.agent.api import critique_group
from hmrcritic.agent.graph import build_graph, open_checkpointer
from hmrcritic.agent.schema import GroupCritique
from hmrcritic.agent.state import AgentConfig
from hmrcritic.errors import JudgeError

pytestmark = pytest.mark.usefixtures("small_prior")

N = 48
CONFIG = {"render": False}


@pytest.fixture()
def learned(tmp_path):
    """A memory that learned one labelled group's prototypes (its rules the starter ones)."""
    from hmrcritic.memory.store import MemoryStore
    from tests.test_agent_graph import make_group

    store = MemoryStore(path=tmp_path / "memory")
    store.reset(seed_starter=True)
    s, h, err = make_group(1, N, "scene-learned")
    critique_group(s, h, judge="builtin", memory=store, learn=True, true_errors_mm=err, config=CONFIG, keep=False)
    assert store.prototypes.count() == N
    return store


def group_b():
    from tests.test_agent_graph import make_group

    s, h, _ = make_group(2, N, "scene-b")
    return s, h


def test_a_recall_checkpoints_each_recalled_prototype_once(tmp_path, learned):
    """Every hit's dump (rationale, tags, source) went into the state, which the checkpointer stores after each
    node: 0.7 MB per checkpoint at N = 256, though the hypotheses of a group recall the same few prototypes."""
    saver = open_checkpointer(tmp_path / "ck.sqlite")
    updates = {}
    s, h = group_b()
    res = critique_group(s, h, judge="builtin", memory=learned, config=CONFIG, checkpointer=saver,
                         on_update=lambda node, update, _: updates.setdefault(node, update))
    k = 5
    assert [len(row) for row in res.prototypes_recalled] == [k] * N
    hits_bytes = len(saver.serde.dumps_typed(res.prototypes_recalled)[1])
    recall_bytes = len(saver.serde.dumps_typed(updates["recall"])[1])
    assert recall_bytes < hits_bytes / 3, (recall_bytes, hits_bytes)
    # the thread's one kept checkpoint (critique, reflections and all) is now smaller than the hits alone were
    with saver.cursor() as cur:
        (stored,) = cur.execute("SELECT length(checkpoint) FROM checkpoints WHERE thread_id = ?",
                                ("scene-b",)).fetchone()
    assert stored < hits_bytes, (stored, hits_bytes)
    # what the user sees is unchanged: the trace counts hits, the result holds the full dumps in recall order
    from hmrcritic.agent.trace import traces_dir

    records = [json.loads(line) for line in (traces_dir() / f"{res.run_id}.jsonl").read_text().splitlines()]
    assert [r["changed"]["prototypes"] for r in records if r.get("node") == "recall"] == [N * k]
    emb = __import__("hmrcritic.memory.embeddings", fromlist=["pose_embedding"]).pose_embedding(
        nodes.load_bodies(res.run_dir)["joints"])
    direct = [[nodes._hit(p, sim).model_dump() for p, sim in row]
              for row in learned.prototypes.query(emb, k=k, include_embeddings=False)]
    assert res.prototypes_recalled == direct
    assert [list(d) for d in res.prototypes_recalled[0]] == [list(d) for d in direct[0]]  # key order too


def _old_recall(state, config):
    """The recall node as it wrote the state before it was packed: per hypothesis, every hit's whole dump."""
    from hmrcritic.memory.embeddings import pose_embedding

    update = {k: v for k, v in nodes.recall(state, config).items() if k != "prototype_recall"}
    cfg = AgentConfig.from_config(config)
    emb = pose_embedding(nodes.load_bodies(state["run_dir"])["joints"])
    rows = nodes.get_memory(cfg, config).prototypes.query(emb, k=cfg.prototypes_k, include_embeddings=False)
    return {**update, "prototypes": [[nodes._hit(p, sim).model_dump() for p, sim in row] for row in rows]}


def _old_graph(saver, monkeypatch, fail_critique: bool):
    with monkeypatch.context() as mp:
        mp.setattr(nodes, "recall", _old_recall)
        if fail_critique:
            mp.setattr(nodes, "critique", lambda *a, **k: (_ for _ in ()).throw(JudgeError("endpoint down")))
        return build_graph().compile(checkpointer=saver)


def test_checkpoints_of_the_old_state_shape_resume_and_are_reused(tmp_path, learned, monkeypatch):
    """A thread written before the state packed its prototypes: an interrupted one resumes with the same hits
    (so the same scores), a finished one is returned as it was, not critiqued again."""
    s, h = group_b()
    ref = critique_group(s, h, judge="builtin", memory=learned, config=CONFIG,
                         checkpointer=open_checkpointer(tmp_path / "ref.sqlite"))
    assert any(ref.prototypes_recalled)

    interrupted = open_checkpointer(tmp_path / "interrupted.sqlite")
    with pytest.raises(JudgeError):
        critique_group(s, h, judge="builtin", memory=learned, config=CONFIG, checkpointer=interrupted,
                       graph=_old_graph(interrupted, monkeypatch, fail_critique=True))
    resumed = critique_group(s, h, judge="builtin", memory=learned, config=CONFIG, checkpointer=interrupted)
    assert resumed.resumed and not resumed.finished_earlier
    assert [x.overall for x in resumed.scores] == [x.overall for x in ref.scores]
    assert resumed.prototypes_recalled == ref.prototypes_recalled

    finished = open_checkpointer(tmp_path / "finished.sqlite")
    first = critique_group(s, h, judge="builtin", memory=learned, config=CONFIG, checkpointer=finished,
                           graph=_old_graph(finished, monkeypatch, fail_critique=False))
    again = critique_group(s, h, judge="builtin", memory=learned, config=CONFIG, checkpointer=finished)
    assert again.finished_earlier and again.run_id == first.run_id
    assert again.prototypes_recalled == ref.prototypes_recalled
    assert [x.overall for x in again.scores] == [x.overall for x in ref.scores]


def _plan(memory, ids):
    rules = {r.rule_id: r for r in memory.rules.get(ids)}
    base = {rid: [r.n_used, r.n_success] for rid, r in rules.items()}
    for r in rules.values():
        r.n_used += 1
        r.n_success += 1
    return {"rules": [r.model_dump(mode="json") for r in rules.values()], "base": base}


def test_planned_rules_read_only_the_plan_rules(tmp_path, monkeypatch):
    """``_planned_rules`` copied every rule of the memory (``all(include_retired=True)``) for a plan of a few."""
    from hmrcritic.memory.store import MemoryStore

    memory = MemoryStore(path=tmp_path / "memory")
    memory.reset(seed_starter=True)
    ids = [r.rule_id for r in memory.rules.all()][:3]
    plan = _plan(memory, ids)
    monkeypatch.setattr(type(memory.rules), "all", lambda *a, **k: pytest.fail("every rule read for a plan of 3"))
    got = nodes._planned_rules(memory, plan)
    assert [(r.rule_id, r.n_used) for r in got] == [(r["rule_id"], r["n_used"]) for r in plan["rules"]]


def test_planned_rules_skip_a_rule_deleted_meanwhile_and_count_the_others(tmp_path):
    from hmrcritic.memory.store import MemoryStore

    memory = MemoryStore(path=tmp_path / "memory")
    memory.reset(seed_starter=True)
    ids = [r.rule_id for r in memory.rules.all()][:3]
    plan = _plan(memory, ids)
    kept = [r for r in memory.rules.all(include_retired=True) if r.rule_id != ids[1]]
    vecs = memory.rules.embeddings([r.rule_id for r in kept])
    memory.reset(seed_starter=False)  # ids[1] is gone; the others come back, one of them used meanwhile
    memory.rules.add(kept, embeddings=np.stack([vecs[r.rule_id] for r in kept]))
    memory.rules.record_use([ids[0]], success=False)
    now = {r.rule_id: r for r in memory.rules.all(include_retired=True)}
    got = {r.rule_id: r for r in nodes._planned_rules(memory, plan)}
    assert sorted(got) == sorted([ids[0], ids[2]])
    for rid in got:
        assert (got[rid].n_used, got[rid].n_success) == (now[rid].n_used + 1, now[rid].n_success + 1)


def test_a_recalled_rule_gone_before_memory_write_is_skipped_not_a_failure_on_every_rerun(tmp_path):
    """The memory reset (and its rules put back, one short) between recall and memory_write — a reset while a
    learning critique ran, or between a crash and its resume: ``get``'s "unknown rule id" failed the group, and
    the resumed thread, at memory_write again, on every re-run."""
    from hmrcritic.memory.store import MemoryStore
    from tests.test_review_s23_graph import group, through_reflect

    memory = MemoryStore(path=tmp_path / "memory")
    memory.reset(seed_starter=True)
    s, h, err = group(2)
    config = {"configurable": {"agent": {"render": False, "learn": True}, "memory": memory}}
    state = through_reflect(tmp_path / "run", s, h, err, config)
    ok, bad = nodes.rule_outcomes(GroupCritique.model_validate(state["critique"]), state, err,
                                  AgentConfig().success_tau)
    assert len(ok + bad) >= 2, (ok, bad)
    gone = (ok + bad)[0]
    kept = [r for r in memory.rules.all(include_retired=True) if r.rule_id != gone]
    vecs = memory.rules.embeddings([r.rule_id for r in kept])
    memory.reset(seed_starter=False)
    memory.rules.add(kept, embeddings=np.stack([vecs[r.rule_id] for r in kept]))
    out = nodes.memory_write(state, config)
    assert out["done"] and out["memory_written"]["rules_recorded"] == len(ok + bad) - 1
    after = {r.rule_id: r for r in memory.rules.all(include_retired=True)}
    assert gone not in after
    assert all(after[rid].n_used == next(r for r in kept if r.rule_id == rid).n_used + 1 for rid in (ok + bad)[1:])
