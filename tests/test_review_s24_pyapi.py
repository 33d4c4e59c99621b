"""Review s24 (pyapi): the Python API used as a notebook uses it — results handed from one entry point to the
next, defaults and empty values where a caller leaves them, and a long-lived process calling again."""

from __future__ import annotations

import pytest

from hmrcritic.agent.api import ScoredGroup, critique_group, critique_groups, discard_run
from hmrcritic.agent.state import AgentConfig
from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("small_prior")


def _quick() -> AgentConfig:
    return AgentConfig(render=False, use_memory=False, max_reflections=0)


@pytest.mark.parametrize("empty", ["", ScoredGroup(group_id="g", scores=[], ranking=[])], ids=["str", "result"])
def test_discarding_an_empty_run_dir_leaves_the_working_folder_alone(tmp_path, monkeypatch, empty):
    """An empty ``run_dir`` (ScoredGroup's default, e.g. a result read back from a scores.json without it) was
    ``Path("")`` = ".": a notebook working inside the temp folder had its working folder removed, files and all."""
    work = tmp_path / "notebook"
    work.mkdir()
    (work / "analysis.ipynb").write_text("{}")
    monkeypatch.chdir(work)
    discard_run(empty)
    assert (work / "analysis.ipynb").is_file()


def test_group_id_zero_names_the_group(tmp_path):
    """``group_id=i`` in a loop: the first group (``i = 0``, falsy) was critiqued under the sample's id instead, in
    critique_group and critique_groups alike; an empty one still stands for none (the sample's id)."""
    from test_agent_graph import make_group

    from hmrcritic.agent.graph import open_checkpointer

    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    s, h, _ = make_group(3, n=3, sample_id="photo")
    assert critique_group(s, h, config=_quick(), group_id=0, checkpointer=saver).group_id == "0"
    [res] = critique_groups([{"sample": s, "hypotheses": h, "group_id": 0}], config=_quick(), checkpointer=saver)
    assert res.error is None and res.group_id == "0" and res.result.group_id == "0"
    assert critique_group(s, h, config=_quick(), group_id="", checkpointer=saver).group_id == "photo"


def test_learning_into_a_read_only_store_is_refused_before_any_work(tmp_path):
    """``learn=True`` with ``MemoryStore(..., read_only=True)`` failed at memory_write, after the whole critique
    had run, leaving its checkpoint thread and run folder behind; now refused first, with what to change."""
    from test_agent_graph import make_group

    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(tmp_path / "mem")
    frozen = MemoryStore(tmp_path / "mem", read_only=True)
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    s, h, err = make_group(4, n=3, sample_id="frozen-learn")
    with pytest.raises(InputError, match="read-only"):
        critique_group(s, h, memory=frozen, learn=True, true_errors_mm=err, checkpointer=saver,
                       config=AgentConfig(render=False, max_reflections=0), run_dir=tmp_path / "g")
    assert not (tmp_path / "g").exists()
    assert not saver.get_tuple({"configurable": {"thread_id": "frozen-learn", "checkpoint_ns": ""}})
