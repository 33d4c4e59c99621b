"""Review s13, Python API / graph / runs folder / groups: each test failed before its fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hmrcritic.agent import nodes
from hmrcritic.agent.api import critique_group, critique_groups, run_folder_name, safe_id
from hmrcritic.agent.graph import build_graph, open_checkpointer
from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("small_prior")


def _group(seed: int, sample_id: str | None = None):
    from test_agent_graph import make_group

    return make_group(seed, n=4, sample_id=sample_id)


def _cfg(**kw):
    from hmrcritic.agent.state import AgentConfig

    return AgentConfig(**{"render": False, "use_memory": False, **kw})


def test_a_group_named_without_ascii_letters_is_critiqued(tmp_path):
    """An image ``写真.png`` gives the sample id ``写真``; critique_group refused it ("no usable characters")."""
    s, h, _ = _group(1, sample_id="写真")
    saver = open_checkpointer(tmp_path / "ck.sqlite")
    res = critique_group(s, h, config=_cfg(), checkpointer=saver)
    assert res.group_id == "写真" and len(res.scores) == 4
    assert run_folder_name("写真") != run_folder_name("画像")  # two such ids, two folders
    assert safe_id("..") == "group"
    with pytest.raises(InputError, match="group_id= is blank"):
        critique_group(s, h, config=_cfg(), checkpointer=saver, group_id="   ")


def interrupt_at_memory_write(tmp_path, monkeypatch, s, h, err) -> dict:
    """Critique a learning group whose memory_write crashes, as a process killed there would leave it: an
    interrupted thread with its inputs in ``tmp_path/g``. Returns the keyword arguments that resume it."""
    from hmrcritic.memory.store import MemoryStore

    saver = open_checkpointer(tmp_path / "ck.sqlite")
    kw = {"memory": MemoryStore(path=tmp_path / "memory"), "config": _cfg(use_memory=True, learn=True),
          "checkpointer": saver, "true_errors_mm": err, "run_dir": tmp_path / "g"}
    real = nodes.memory_write

    def crash(state, config=None):
        raise RuntimeError("killed")

    monkeypatch.setattr(nodes, "memory_write", crash)
    with pytest.raises(RuntimeError):
        critique_group(s, h, graph=build_graph().compile(checkpointer=saver), **kw)
    monkeypatch.setattr(nodes, "memory_write", real)
    return kw


def test_an_interrupted_thread_whose_run_folder_is_gone_starts_afresh(tmp_path, monkeypatch):
    """Resuming a thread whose folder was removed (by hand, or pruned) failed with "group inputs missing" on
    every re-run; it is now critiqued again from render."""
    s, h, err = _group(2)
    kw = interrupt_at_memory_write(tmp_path, monkeypatch, s, h, err)
    shutil.rmtree(tmp_path / "g")
    updates = []
    res = critique_group(s, h, graph=build_graph().compile(checkpointer=kw["checkpointer"]),
                         on_update=lambda node, u, t: updates.append(node), **kw)
    assert updates[0] == "render" and updates[-1] == "memory_write" and len(res.scores) == 4


def test_prune_leaves_a_critique_in_progress_alone(tmp_path, monkeypatch):
    """``runs prune --older-than 0`` in one process removed the run folder (and thread) of a critique another
    process was running; that critique then failed with "group inputs missing"."""
    from hmrcritic.agent.runs import prune_runs

    root = tmp_path / "runs"
    monkeypatch.setenv("HMRCRITIC_RUNS", str(root))
    s, h, _ = _group(3, sample_id="busy")
    saver = open_checkpointer(root / "checkpoints.sqlite")
    pruned = []
    real = nodes.recall

    def prune_meanwhile(state, config=None):  # "another process" prunes everything while this group runs
        code = f"from hmrcritic.agent.runs import prune_runs; print(prune_runs(0, root={str(root)!r})['removed'])"
        pruned.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        return real(state, config)

    monkeypatch.setattr(nodes, "recall", prune_meanwhile)
    res = critique_group(s, h, config=_cfg(), checkpointer=saver, graph=build_graph().compile(checkpointer=saver))
    assert "'groups': 0" in pruned[0] and len(res.scores) == 4
    assert (root / "groups" / "busy" / "inputs.npz").exists()
    # once it has finished, the same prune removes it and its thread
    out = prune_runs(0, root=root)
    assert out["removed"]["groups"] == 1 and out["removed"]["checkpoints"] == 1


def test_a_job_may_bring_its_own_judge_or_config(tmp_path):
    """critique_groups' dict items are "critique_group keyword arguments", but one naming judge, memory or
    config failed with "got multiple values for keyword argument"."""
    s, h, _ = _group(4)
    saver = open_checkpointer(tmp_path / "ck.sqlite")
    out = critique_groups([{"sample": s, "hypotheses": h, "group_id": "a", "config": _cfg(max_reflections=0)},
                           {"sample": s, "hypotheses": h, "group_id": "b", "judge": "builtin"}],
                          config=_cfg(), checkpointer=saver)
    assert [r.error for r in out] == [None, None]
    assert out[0].result.reflections == [] or len(out[0].result.reflections) <= 1


def test_graph_state_holds_no_arrays(tmp_path):
    """State stays small and plain (JSON types): what the checkpointer stores per node."""
    s, h, _ = _group(5)
    saver = open_checkpointer(tmp_path / "ck.sqlite")
    critique_group(s, h, config=_cfg(), checkpointer=saver)
    got = saver.get_tuple({"configurable": {"thread_id": "scene-5", "checkpoint_ns": ""}})
    values = got.checkpoint["channel_values"]
    text = json.dumps(values)  # raises on a numpy value
    assert len(text) < 50_000


@pytest.mark.parametrize("kwargs, match", [
    ({"start": -1}, "start"), ({"seed": -1}, "seed"), ({"num_generations": 0}, "num_generations"),
    ({"num_groups": -2}, "num_groups"),
])
def test_group_arguments_are_checked_for_both_sources(kwargs, match):
    """A negative seed or start, or 0 hypotheses, crashed the perturbed source (ValueError / RuntimeError) and a
    negative start made the model source draw scenes from the end of the split ("test--00001")."""
    from hmrcritic.agent.groups import groups_from_model, groups_from_perturbed_gt, make_groups

    args = {"num_groups": 1, "num_generations": 2, **kwargs}
    for fn in (groups_from_perturbed_gt, groups_from_model, make_groups):
        with pytest.raises(InputError, match=match):
            fn("test", **args)
    with pytest.raises(InputError, match="batch"):
        groups_from_model("test", 1, 2, batch=0)


def test_readme_python_api_imports_run_as_written():
    """The README's Python API block imports what it names (checked in a fresh interpreter)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Python API\n```python\n", 1)[1].split("```", 1)[0]
    subprocess.run([sys.executable, "-c", textwrap.dedent(block)], check=True, capture_output=True, timeout=300)


def test_group_ids_are_kept_apart_from_one_another():
    assert len({run_folder_name(i) for i in ("写真", "画像", "..", "group", "_")}) == 5
    assert np.all([run_folder_name(i) == i for i in ("scene-1", "a.b_c")])


def test_prune_on_a_file_system_without_locks_does_not_crash(tmp_path, monkeypatch):
    """in_use tolerates a file system without locks, but folder_in_use let flock's OSError (ENOLCK) escape,
    so `runs prune` crashed there."""
    import errno
    import fcntl

    from hmrcritic.agent import runs

    (tmp_path / runs.IN_USE_FILE).write_text("")

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert runs.folder_in_use(tmp_path) is False
