"""Review of the report / VLM / evidence / checkpoint-error changes: defects found and pinned down."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from hmrcritic.agent.judges import JudgeContext  # noqa: E402
from hmrcritic.config import JudgeSettings  # noqa: E402
from hmrcritic.errors import AssetError, JudgeError  # noqa: E402

N = 4


def _ctx(n: int = N) -> JudgeContext:
    return JudgeContext(group_id="g-review", num_hypotheses=n, evidence={"reproj_px": [1.0 + i for i in range(n)]},
                        measure_info={"reproj_px": "px; higher is worse"}, rules=[], prototypes=[])


def _answer(n: int = N) -> str:
    return json.dumps({"scores": [{"index": i, "overall": 8.0 - i, "motion_structure": 8.0 - i,
                                   "physical_feasibility": 8.0 - i, "image_alignment": 8.0 - i,
                                   "rationale": f"h{i}"} for i in range(n)], "summary": "ok", "rules_applied": []})


def _judge(monkeypatch, content: str):
    """A VLMJudge whose endpoint answers ``content`` with finish_reason "length" (no network)."""
    from langchain_core.messages import AIMessage

    from hmrcritic.agent import vlm

    calls = []

    def fake_invoke(runnable, messages, seconds):
        calls.append(1)
        raw = AIMessage(content=content, response_metadata={"finish_reason": "length"},
                        usage_metadata={"input_tokens": 10, "output_tokens": 777, "total_tokens": 787})
        return {"raw": raw, "parsed": None, "parsing_error": None}

    monkeypatch.setattr(vlm, "invoke_within", fake_invoke)
    judge = vlm.VLMJudge(JudgeSettings(base_url="http://127.0.0.1:9/v1", model="m", max_retries=2, timeout_s=5.0),
                         backoff_base_s=0.001, backoff_max_s=0.002)
    return judge, calls


def test_a_complete_answer_that_ran_on_to_the_token_limit_is_used(monkeypatch):
    """JSON modes of local servers (Ollama, vLLM guided decoding) often pad a complete answer with whitespace
    or prose until the output limit: finish_reason "length", yet every score is there. The cut-off check ran
    before the answer was read, so such answers failed the group outright."""
    judge, calls = _judge(monkeypatch, _answer() + "\n" * 400)
    crit = judge.critique(_ctx())
    assert [s.index for s in crit.scores] == list(range(N)) and len(calls) == 1
    # an answer that really is cut mid-way still fails at once, saying why
    judge, calls = _judge(monkeypatch, _answer()[: len(_answer()) // 2])
    with pytest.raises(JudgeError, match="finish_reason=length, 777 tokens"):
        judge.critique(_ctx())
    assert len(calls) == 1


def test_symmetric_medoid_ties_are_ties_in_float32():
    """Hypotheses placed symmetrically around a pose all tie for medoid in exact arithmetic; the float32 row
    sums differ in the last bit, and the tie tolerance (relative 1e-9) is below float32's resolution, so one
    of them became "the consensus" (0 mm) and the others outliers — by summation order alone."""
    from hmrcritic.agent.evidence import consensus_deviation

    rng = np.random.default_rng(1)
    spreads = []
    for _ in range(40):
        base = rng.normal(size=(24, 3)) * 0.3
        a = rng.uniform(0.01, 0.2)
        th = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
        offsets = np.array([(a, 0, 0), (0, a, 0), (-a, 0, 0), (0, -a, 0)]) @ rot.T
        joints = np.stack([base + np.vstack([np.zeros(3), np.tile(o, (23, 1))]) for o in offsets])
        dev = consensus_deviation(torch.as_tensor(joints, dtype=torch.float32)).numpy()
        spreads.append(float(np.ptp(dev)))
    assert max(spreads) < 1e-2, spreads


@pytest.mark.usefixtures("small_prior")
def test_a_sqlite_error_from_a_node_is_not_blamed_on_the_checkpoint_database(tmp_path):
    """Every sqlite3.Error while the graph ran became "checkpoint database <file> …" — also one from a node
    (the Chroma memory is SQLite too), sending the user to the wrong file ("move it aside")."""
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(path=tmp_path / "memory")
    store.reset(seed_starter=True)

    def boom():
        raise sqlite3.OperationalError("database or disk is full")

    store.version = boom
    s, h, _ = make_group(3)
    db = tmp_path / "ck.sqlite"
    saver = open_checkpointer(db)
    with pytest.raises(sqlite3.OperationalError, match="disk is full") as info:
        critique_group(s, h, memory=store, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g")
    assert str(db) not in str(info.value)

    # the checkpointer's own failure mid-run (locked after the first node) is still one line naming its file
    del store.version
    holder = sqlite3.connect(db)
    saver.conn.execute("PRAGMA busy_timeout = 200")

    def lock(node, update, seconds):
        if not holder.in_transaction:
            holder.execute("BEGIN EXCLUSIVE")

    try:
        with pytest.raises(AssetError, match=f"checkpoint database {db} is locked by another process"):
            critique_group(s, h, memory=store, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g2",
                           group_id="other", on_update=lock)
    finally:
        holder.rollback()
        holder.close()


@pytest.mark.usefixtures("small_prior")
def test_a_finished_critique_is_not_reused_for_another_model_when_the_judge_is_spelt_VLM(tmp_path, monkeypatch):
    """make_judge takes the name case-insensitively (`--judge VLM`, HMRCRITIC_JUDGE=VLM score with the VLM), but
    the model/endpoint identity was looked up only for exactly "vlm": with "VLM" a finished critique came back
    "finished earlier" after HMRCRITIC_VLM_MODEL changed — the other model's scores — and named no model."""
    from openai_stub_server import StubOpenAIServer
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(path=tmp_path / "memory")
    store.reset(seed_starter=True)
    s, h, _ = make_group(7)
    kw = {"memory": store, "checkpointer": open_checkpointer(tmp_path / "ck.sqlite"), "run_dir": tmp_path / "g",
          "config": cfg(max_reflections=0)}
    with StubOpenAIServer(require_images=False) as srv:
        monkeypatch.setenv("HMRCRITIC_BASE_URL", srv.base_url)
        monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-a")
        first = critique_group(s, h, judge="VLM", **kw)
        monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-b")
        other = critique_group(s, h, judge="VLM", **kw)
        assert srv.requests[-1].body["model"] == "model-b"  # scored by the model it is reported under
    assert first.judge_model == f"model-a @ {srv.base_url}"
    assert not other.finished_earlier and other.judge_model == f"model-b @ {srv.base_url}"


def test_an_endpoint_quoting_the_key_back_is_masked_in_the_critique_and_the_proposals(monkeypatch):
    """The VLM's words go on to scores.json, reports, traces, the memory (prototype rationales, mined rule texts)
    and exports; an echoing proxy that puts the key into an answer must not carry it there."""
    key = "sk-review-echoed-0123456789"
    monkeypatch.setenv("HMRCRITIC_API_KEY", key)
    answer = json.loads(_answer())
    answer["scores"][0]["rationale"] = f"fine (request auth: Bearer {key})"
    answer["summary"] = f"key {key}"
    judge, _ = _judge(monkeypatch, json.dumps(answer))
    crit = judge.critique(_ctx())
    assert key not in crit.model_dump_json() and crit.scores[0].rationale.startswith("fine")
    rules = {"rules": [{"text": f"reproj_px above 3 px → −2 (seen with {key})", "tags": ["alignment"]}]}
    judge, _ = _judge(monkeypatch, json.dumps(rules))
    proposals = judge.propose_rules(_ctx(), [])
    assert proposals.rules and key not in proposals.model_dump_json()
