"""Session 37 mutation audit (p) of ``agent/api.py``: two survivors around resuming a critique interrupted after
the render node. Each test interrupts a real critique (LangGraph + SQLite checkpointer, builtin judge, render and
memory off so it is fast) by raising from ``on_update`` once render has run, then re-runs the same group. What is
asserted is what the comments in ``critique_group`` promise, never copied from a run:

- a thread past render whose run folder lost ``bodies.npz`` (the nodes after render read it) starts afresh —
  render runs again — instead of resuming into "bodies.npz missing; use --fresh";
- a resumed critique that finishes stores the run id of the run that finished it, so a later "finished earlier"
  return (``ScoredGroup.run_id``) and ``trace --last`` name that run, not the interrupted one."""

from __future__ import annotations

import pytest

from hmrcritic.agent.api import critique_group
from hmrcritic.agent.graph import open_checkpointer
from hmrcritic.agent.state import AgentConfig

pytestmark = pytest.mark.usefixtures("small_prior")  # never fit the real pose prior (a 20k-scene split)

FAST = AgentConfig(render=False, max_reflections=0, use_memory=False)


class Stop(Exception):
    """Raised from on_update: the critique is interrupted with the checkpoint after the named node."""


def _stop_after(name: str):
    def hook(node, update, seconds):
        if node == name:
            raise Stop(node)
    return hook


def _recorder(into: list[str]):
    return lambda node, update, seconds: into.append(node)


@pytest.fixture()
def runs(tmp_path, monkeypatch):
    """runs_dir() (checkpoints, traces, LAST) in tmp_path: the tests read traces/LAST and must see their own."""
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def _interrupted(s, h, **kw) -> None:
    with pytest.raises(Stop):
        critique_group(s, h, on_update=_stop_after("render"), **kw)


def test_a_resume_past_render_whose_bodies_are_gone_starts_afresh(tmp_path, runs):
    """api.py: a thread past render (its state has the evidence) whose run folder has inputs.npz but no
    bodies.npz starts afresh: resuming it ran reflect on the missing file ("group arrays missing ... use --fresh"),
    the very advice a fresh start carries out. The same thread with its bodies kept resumes after render (the
    control: the interrupted checkpoint is past render, so the fresh start is the bodies check's doing)."""
    from test_agent_graph import make_group

    s, h, _ = make_group(21, n=3, sample_id="s37p-bodies")
    kw = dict(config=FAST, checkpointer=open_checkpointer(tmp_path / "ckpt.sqlite"))
    run_dir = tmp_path / "g"

    # control: interrupted after render, bodies kept -> resumed at recall
    _interrupted(s, h, run_dir=run_dir, group_id="kept", **kw)
    assert (run_dir / "inputs.npz").is_file() and (run_dir / "bodies.npz").is_file()
    seen: list[str] = []
    kept = critique_group(s, h, run_dir=run_dir, group_id="kept", on_update=_recorder(seen), **kw)
    assert kept.resumed and "render" not in seen, seen

    # the case: interrupted after render, bodies.npz deleted -> starts afresh at render
    gone_dir = tmp_path / "g2"
    _interrupted(s, h, run_dir=gone_dir, group_id="gone", **kw)
    (gone_dir / "bodies.npz").unlink()
    assert (gone_dir / "inputs.npz").is_file()
    seen = []
    res = critique_group(s, h, run_dir=gone_dir, group_id="gone", on_update=_recorder(seen), **kw)
    assert seen[0] == "render" and not res.resumed, seen
    assert (gone_dir / "bodies.npz").is_file()
    assert [x.overall for x in res.scores] == [x.overall for x in kept.scores]  # same inputs, same critique


def test_a_finished_resume_is_the_run_named_later_and_by_trace_last(tmp_path, runs):
    """api.py: once a resumed critique finishes, the thread's stored run id is the run that finished it. Left as
    the interrupted run's, the next call's "finished earlier" result (``ScoredGroup.run_id``) and the ``LAST``
    pointer (``trace --last``) named the run whose trace shows the interruption, not the one that scored it."""
    from test_agent_graph import make_group

    from hmrcritic.agent.trace import traces_dir

    s, h, _ = make_group(22, n=3, sample_id="s37p-runid")
    kw = dict(config=FAST, group_id="s37p-runid")
    _interrupted(s, h, **kw)
    interrupted_id = (traces_dir() / "LAST").read_text().strip()  # the interrupted run's trace is kept
    resumed = critique_group(s, h, **kw)
    assert resumed.resumed and not resumed.finished_earlier
    assert resumed.run_id != interrupted_id
    again = critique_group(s, h, **kw)
    assert again.finished_earlier
    assert again.run_id == resumed.run_id, (again.run_id, resumed.run_id, interrupted_id)
    assert (traces_dir() / "LAST").read_text().strip() == resumed.run_id
