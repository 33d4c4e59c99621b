"""Review s26 (api): the Python API as a notebook or a script meets it — arguments of the wrong kind refused in
one line naming the argument before any work, results that serialise, and the demo's arguments checked before
it resets its memory."""

from __future__ import annotations

import json

import pytest

from hmrcritic.agent.api import GroupResult, critique_group, critique_groups
from hmrcritic.agent.state import AgentConfig
from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("small_prior")


def _quick() -> AgentConfig:
    return AgentConfig(render=False, use_memory=False, max_reflections=0)


@pytest.fixture()
def group():
    from test_agent_graph import make_group

    s, h, _ = make_group(3, n=3, sample_id="s26-api")
    return s, h


@pytest.fixture()
def saver(tmp_path):
    from hmrcritic.agent.graph import open_checkpointer

    return open_checkpointer(tmp_path / "ckpt.sqlite")


@pytest.mark.parametrize("name,value", [("learn", "no"), ("learn", "false"), ("fresh", "no"), ("keep", "no"),
                                        ("fresh", 2.0)])
def test_flags_that_are_not_bools_are_refused(tmp_path, group, saver, name, value):
    """``bool("no")`` is True: ``learn="false"`` (a value read from a form or an env file) learned into the
    memory, ``fresh="no"`` recomputed a finished critique. Refused before anything is written."""
    s, h = group
    with pytest.raises(InputError, match=rf"^{name} must be True or False"):
        critique_group(s, h, config=_quick(), checkpointer=saver, run_dir=tmp_path / "g", **{name: value})
    assert not (tmp_path / "g").exists()


def test_numpy_and_zero_one_flags_still_work(tmp_path, group, saver):
    import numpy as np

    s, h = group
    res = critique_group(s, h, config=_quick(), checkpointer=saver, run_dir=tmp_path / "g", learn=np.bool_(False),
                         fresh=1, keep=np.bool_(True))
    assert len(res.scores) == 3


@pytest.mark.parametrize("kwargs,match", [
    ({"on_update": 5}, r"^on_update must be a callable"),
    ({"judge": 5}, r"^judge must be 'builtin', 'vlm', a Judge object"),
    ({"judge": object()}, r"^judge must be"),
    ({"checkpointer": "ckpt.sqlite"}, r"^checkpointer must be a LangGraph checkpoint saver.*open_checkpointer"),
    ({"graph": "g"}, r"^graph must be a compiled agent graph"),
], ids=["on_update", "judge-int", "judge-object", "checkpointer-path", "graph"])
def test_objects_called_into_are_checked_before_any_work(tmp_path, group, kwargs, match):
    """Each failed only once the graph ran — a bare TypeError after the render node (on_update), a JudgeError
    "'int' object has no attribute 'critique'", LangGraph's own "Invalid checkpointer", an AttributeError — naming
    no argument of critique_group, and leaving a run folder behind."""
    s, h = group
    with pytest.raises(InputError, match=match):
        critique_group(s, h, config=_quick(), run_dir=tmp_path / "g", group_id="s26-hooks", fresh=True, **kwargs)
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("sample", [None, {"keypoints": [[0, 0, 1]] * 17}], ids=["none", "dict"])
def test_a_sample_of_another_kind_is_named(group, saver, sample):
    """None or a dict read "sample ?: keypoints have shape ()": a shape error for an argument of the wrong type."""
    _, h = group
    with pytest.raises(InputError, match=rf"^sample must be a Sample .* got {type(sample).__name__}$"):
        critique_group(sample, h, config=_quick(), checkpointer=saver, group_id="s26-sample")


def test_critique_groups_refuses_unknown_arguments_before_the_batch(group, saver):
    """A misspelt keyword came back as every group's error ("TypeError: critique_group() got an unexpected
    keyword argument"), after the batch was gone through; a progress that is no callable failed once the first
    group was critiqued, losing the results."""
    s, h = group
    with pytest.raises(InputError, match=r"unknown argument\(s\) 'fersh'"):
        critique_groups([(s, h)], config=_quick(), checkpointer=saver, fersh=True)
    with pytest.raises(InputError, match=r"^progress must be a callable"):
        critique_groups([(s, h)], config=_quick(), checkpointer=saver, progress=3)
    [ok] = critique_groups([(s, h)], config=_quick(), checkpointer=saver, fresh=True, group_id="s26-batch")
    assert ok.error is None


def test_a_batch_result_dumps_to_json_and_reads_back(group, saver):
    """``dataclasses.asdict`` of a GroupResult keeps its ScoredGroup, which json.dumps refuses; model_dump() gives
    plain JSON types, as ScoredGroup's does, and report.write_report / ScoredGroup read it back."""
    from hmrcritic.agent.api import ScoredGroup

    s, h = group
    results = critique_groups([(s, h), {"sample": None, "hypotheses": h, "group_id": "bad"}], config=_quick(),
                              checkpointer=saver, fresh=True)
    text = json.dumps([r.model_dump() for r in results])
    ok, bad = json.loads(text)
    assert ScoredGroup.model_validate(ok["result"]) == results[0].result
    assert bad == {"group_id": "bad", "result": None, "error": results[1].error, "error_type": "InputError"}
    assert isinstance(results[1], GroupResult)


# ------------------------------------------------------------------------------------------------------- demo
@pytest.fixture()
def tiny_test_split(tmp_path, monkeypatch):
    """A 5-scene test split in a private data folder (the demo loads it before its arguments can be compared
    with its size)."""
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")


def _marked_memory(path):
    from hmrcritic.memory.schema import Rule
    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(path, chroma_url="")
    store.rules.add([Rule(rule_id="user-s26", text="a rule of the user's", origin="user")])
    store.close()


def _has_mark(path) -> bool:
    from hmrcritic.memory.store import MemoryStore

    with MemoryStore(path, chroma_url="", read_only=True) as store:
        return bool(store.rules.get(["user-s26"]))


def test_the_demo_never_resets_the_home_memory(tmp_path, monkeypatch, tiny_test_split):
    """``run_demo(out_dir=<home>)`` put the demo's memory at the one every other command learns into and reset
    it (the CLI refused that; the Python entry did not). Here a group size over the cap makes the unchecked
    demo stop right after the reset, so the loss is seen quickly."""
    from hmrcritic import config
    from hmrcritic.demo import run_demo

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    _marked_memory(config.memory_dir())
    with pytest.raises(InputError, match="the memory the other commands use"):
        run_demo(config.memory_dir().parent, num_scenes=1, num_generations=100_000, say=lambda line: None)
    assert _has_mark(config.memory_dir())


@pytest.mark.parametrize("kwargs,match", [
    ({"num_generations": 100_000}, r"num_generations must be an integer in 2\.\."),
    ({"num_scenes": 0}, r"num_scenes must be an integer ≥ 1"),
    ({"num_scenes": 6}, r"num_scenes=6 is more than the test split holds \(5 scenes\)"),
    ({"explore_batch": 2.5}, r"explore_batch must be an integer"),
], ids=["generations", "no-scenes", "too-many-scenes", "float-batch"])
def test_demo_arguments_are_checked_before_its_memory_is_reset(tmp_path, tiny_test_split, kwargs, match):
    """The demo resets ``<out>/memory`` first: from Python a group size over the sampler's cap wiped the earlier
    demo's memory and then failed in the exploration; ``num_scenes=0`` and more scenes than the split holds
    failed as a TypeError / IndexError after the whole exploration had run."""
    from hmrcritic.demo import run_demo

    out = tmp_path / "demo"
    _marked_memory(out / "memory")
    said: list[str] = []
    args = {"num_scenes": 1, "num_generations": 4, "explore_rounds": 0, "explore_batch": 2, **kwargs}
    with pytest.raises(InputError, match=match):
        run_demo(out, say=said.append, **args)
    assert not any(line.startswith("[2/4]") for line in said), said
    assert _has_mark(out / "memory")


def test_a_run_dir_under_the_home_is_expanded(tmp_path, monkeypatch, group, saver):
    """``run_dir="~/runs/g1"`` made a folder literally named "~" in the notebook's working folder (memory= and the
    folder variables expand it)."""
    s, h = group
    home, work = tmp_path / "account", tmp_path / "notebook"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    res = critique_group(s, h, config=_quick(), checkpointer=saver, run_dir="~/runs/g1", group_id="s26-home")
    assert res.run_dir == str(home / "runs" / "g1") and (home / "runs" / "g1" / "inputs.npz").is_file()
    assert not (work / "~").exists()


def test_scores_of_a_batch_entry_are_written_as_a_scored_group(tmp_path, group, saver):
    """write_scores took only a ScoredGroup: a critique_groups entry (what write_report takes too) was an
    AttributeError, and any other object one naming no argument."""
    from hmrcritic.agent.api import ScoredGroup, write_scores

    s, h = group
    [entry] = critique_groups([(s, h)], config=_quick(), checkpointer=saver, fresh=True, group_id="s26-write")
    path = write_scores(entry, tmp_path / "out")
    assert ScoredGroup.model_validate(json.loads(path.read_text())) == entry.result
    with pytest.raises(InputError, match="has no scores to write: boom"):
        write_scores(GroupResult("g", error="boom", error_type="JudgeError"), tmp_path / "out")
    with pytest.raises(InputError, match="^write_scores: result must be a ScoredGroup or a GroupResult, got dict"):
        write_scores({"group_id": "g"}, tmp_path / "out")
