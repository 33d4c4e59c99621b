"""Review s31, a logic read of the agent's orchestration (graph, api, runs, trace, report, state): each test
failed before its fix."""

from __future__ import annotations

import time

import pytest
from test_review_s13_api import _cfg, _group

from hmrcritic.agent import api, nodes
from hmrcritic.agent.api import critique_group
from hmrcritic.agent.graph import build_graph, open_checkpointer

pytestmark = pytest.mark.usefixtures("small_prior")


def test_a_run_id_reads_the_clock_once(monkeypatch):
    """The seconds came from ``gmtime()`` and the microseconds from a second ``time.time()``: at the turn of a
    second the id took the earlier second with the later microseconds (sorting before runs made after it)."""
    now = 1_700_000_000.999_999
    clock, gmtime = iter([now, now + 2e-6, now + 4e-6]), time.gmtime
    expected = time.strftime("%Y%m%d-%H%M%S", gmtime(now)) + "-999999-g"
    monkeypatch.setattr(api.time, "time", lambda: next(clock))
    monkeypatch.setattr(api.time, "gmtime", lambda t=None: gmtime(now + 1e-5 if t is None else t))  # the next second
    assert api.new_run_id("g") == expected


def test_a_graph_with_its_own_checkpointer_is_critiqued_on_that_checkpointer(tmp_path, monkeypatch):
    """``critique_group(graph=compile(checkpointer=X))`` without ``checkpointer=X`` read and ran the thread in X but
    deleted, locked and trimmed it in the default database: a fresh re-run with other inputs that failed left X's
    thread marked done with the old critique beside the new inputs, and the next call returned that old critique
    "finished earlier" for the new inputs; the trim deleted the default database's own thread of the group."""
    from langgraph.checkpoint.memory import InMemorySaver

    default = open_checkpointer()
    s, h, _ = _group(3, sample_id="own-ck")
    kept = critique_group(s, h, config=_cfg(), run_dir=tmp_path / "default")  # the default database's thread
    saver = InMemorySaver()
    app = build_graph().compile(checkpointer=saver)
    first = critique_group(s, h, config=_cfg(), graph=app, run_dir=tmp_path / "g")
    assert default.get_tuple({"configurable": {"thread_id": "own-ck"}}) is not None, "default thread trimmed away"

    def died(state, config=None):
        raise RuntimeError("judge died")

    monkeypatch.setattr(nodes, "critique", died)
    failing = build_graph().compile(checkpointer=saver)
    monkeypatch.undo()
    s2, h2, _ = _group(4, sample_id="own-ck")
    with pytest.raises(RuntimeError, match="judge died"):
        critique_group(s2, h2, config=_cfg(), graph=failing, run_dir=tmp_path / "g", fresh=True)
    again = critique_group(s2, h2, config=_cfg(), graph=app, run_dir=tmp_path / "g")
    assert not again.finished_earlier and again.overall != first.overall
    assert critique_group(s, h, config=_cfg(), run_dir=tmp_path / "default").finished_earlier
    assert kept.overall == first.overall


def test_a_runs_folder_shared_by_two_homes_does_not_return_the_other_homes_memory(tmp_path, monkeypatch):
    """With ``HMRCRITIC_RUNS`` outside the home, the configured memory (None: the home's) was the same setting in
    every home: a critique in home b returned the one made in home a "finished earlier", with a's rules and memory
    version although b's memory is another (here empty) one."""
    from hmrcritic import config
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setenv("HMRCRITIC_CACHE", str(config.cache_dir()))  # the test's small pose prior stays in use
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "a"))
    MemoryStore(path=tmp_path / "a" / "memory").reset(seed_starter=True)
    s, h, _ = _group(5, sample_id="two-homes")
    in_a = critique_group(s, h, config=_cfg(use_memory=True))
    assert in_a.rules_recalled
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "b"))
    MemoryStore(path=tmp_path / "b" / "memory").reset(seed_starter=False)
    in_b = critique_group(s, h, config=_cfg(use_memory=True))
    assert not in_b.finished_earlier and not in_b.rules_recalled
    assert critique_group(s, h, config=_cfg(use_memory=True)).finished_earlier  # b's own thread is reused


def test_the_homes_own_runs_folder_keeps_the_digest_of_a_critique_without_a_memory_folder(tmp_path, monkeypatch):
    """The default layout (runs and memory both in the home) adds nothing to the settings digest: threads made
    before the home's memory was named are still reused."""
    from hmrcritic.agent.state import AgentConfig

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("HMRCRITIC_RUNS", raising=False)
    assert api._memory_identity(AgentConfig(use_memory=True), None) == ""
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "shared-runs"))
    assert api._memory_identity(AgentConfig(use_memory=True), None) == f"memory=|{tmp_path / 'h' / 'memory'}"
    assert api._memory_identity(AgentConfig(use_memory=False), None) == ""


def test_a_trace_pointer_that_cannot_be_written_does_not_fail_the_critique(tmp_path):
    """``TraceWriter.start`` pointed ``LAST`` at the run after locking its trace file, unguarded: a pointer that
    cannot be replaced (here a folder in its place) failed the critique before any node ran, and left the trace
    file locked as in use. The pointer is a convenience (``trace._pointer_lock``): the critique goes on."""
    from hmrcritic.agent.trace import read_trace, trace_in_use, traces_dir

    pointer = traces_dir() / "LAST"
    pointer.unlink(missing_ok=True)  # an earlier test's run
    pointer.mkdir(parents=True)
    s, h, _ = _group(6, sample_id="no-pointer")
    res = critique_group(s, h, config=_cfg(), run_dir=tmp_path / "g")
    assert len(res.scores) == 4
    records = read_trace(res.run_id)
    assert [r["event"] for r in records][::len(records) - 1] == ["start", "finish"]
    assert not trace_in_use(traces_dir() / f"{res.run_id}.jsonl")
    pointer.rmdir()
