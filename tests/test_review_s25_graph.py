"""Review s25 (the agent graph's orchestration: reuse, resume, checkpoint threads): real smplx body models,
LangGraph + SqliteSaver and Chroma memory on disk."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from hmrcritic.agent.api import critique_group
from hmrcritic.agent.graph import open_checkpointer

pytestmark = pytest.mark.usefixtures("small_prior")

N = 12
CONFIG = {"render": False, "use_memory": False}


def group(seed: int = 1, sample_id: str = "scene-s25"):
    from tests.test_agent_graph import make_group

    return make_group(seed, N, sample_id)


@pytest.fixture()
def other_body(tmp_path, monkeypatch):
    """A user SMPL file (the mannequin 10 % taller), switched on by calling the returned function."""
    from hmrcritic.hmr import body as B
    from hmrcritic.hmr import mannequin

    src = mannequin.ensure_mannequin()
    arrays = B.read_model_arrays(src)
    user = tmp_path / "models" / "SMPL_NEUTRAL.pkl"
    user.parent.mkdir()
    user.write_bytes(pickle.dumps(dict(arrays, v_template=np.asarray(arrays["v_template"]) * 1.1), protocol=4))

    def switch():
        monkeypatch.setenv("HMRCRITIC_BODY_MODEL", str(user))
        B.clear_cache()

    yield switch
    monkeypatch.delenv("HMRCRITIC_BODY_MODEL", raising=False)
    B.clear_cache()


def test_a_finished_critique_is_not_reused_after_the_body_model_changed(tmp_path, other_body):
    """Every measure is taken on the posed body, yet the settings digest named no body model: with
    HMRCRITIC_BODY_MODEL set after a critique, the re-run returned the mannequin's critique "finished earlier"."""
    s, h, _ = group()
    saver = open_checkpointer(tmp_path / "ck.sqlite")
    first = critique_group(s, h, judge="builtin", config=CONFIG, checkpointer=saver, run_dir=tmp_path / "g")
    other_body()
    again = critique_group(s, h, judge="builtin", config=CONFIG, checkpointer=saver, run_dir=tmp_path / "g")
    fresh = critique_group(s, h, judge="builtin", config=CONFIG, checkpointer=open_checkpointer(tmp_path / "c2.sqlite"),
                           run_dir=tmp_path / "g2")
    assert fresh.evidence != first.evidence  # the other body measures otherwise
    assert not again.finished_earlier
    assert again.evidence == fresh.evidence and again.overall == fresh.overall
    # and the same body again: reused as before
    assert critique_group(s, h, judge="builtin", config=CONFIG, checkpointer=saver,
                          run_dir=tmp_path / "g").finished_earlier


_KILLED_AFTER_MEMORY_WRITE = """
    import os, signal, sys
    sys.path.insert(0, os.getcwd())
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.prior import fit_gmm, pose_features, set_pose_prior
    from hmrcritic.hmr.poses import sample_poses
    from hmrcritic.memory.store import MemoryStore
    from tests.test_review_s25_graph import CONFIG, group

    set_pose_prior(fit_gmm(pose_features(sample_poses(300, seed=11)["body_pose"]), components=2, iters=5))
    tmp = sys.argv[1]
    s, h, err = group(3, "test-000007")

    def kill_after(node, update, seconds):  # memory written and checkpointed, the call not yet returned
        if node == "memory_write":
            os.kill(os.getpid(), signal.SIGKILL)

    critique_group(s, h, judge="builtin", memory=MemoryStore(tmp + "/mem"), config={**CONFIG, "use_memory": True},
                   learn=True, true_errors_mm=err, checkpointer=open_checkpointer(tmp + "/ck.sqlite"),
                   run_dir=tmp + "/g", on_update=kill_after)
"""


def test_a_learning_critique_killed_after_its_memory_write_still_holds_its_scene_out(tmp_path):
    """A learning critique of a split scene recorded the scene in ``explored_on.json`` only after the graph had
    finished: killed in between, its memory held the scene's labelled prototypes, and the re-run returned the
    finished thread without recording it, so evaluation on that very scene passed every held-out check."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from hmrcritic.agent.explore import assert_not_explored, explored_record
    from hmrcritic.errors import InputError
    from hmrcritic.memory.store import MemoryStore

    env = {**os.environ, "HMRCRITIC_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_AFTER_MEMORY_WRITE), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    memory = MemoryStore(tmp_path / "mem")
    assert memory.prototypes.count() == N  # it learned from test-000007
    s, h, err = group(3, "test-000007")
    res = critique_group(s, h, judge="builtin", memory=memory, config={**CONFIG, "use_memory": True}, learn=True,
                         true_errors_mm=err, checkpointer=open_checkpointer(tmp_path / "ck.sqlite"),
                         run_dir=tmp_path / "g")
    assert res.finished_earlier and memory.prototypes.count() == N
    assert explored_record(memory)["splits"]["test"]["group_ids"] == ["test-000007"]
    with pytest.raises(InputError, match="test-000007"):
        assert_not_explored(memory, "test", ["test-000007"])


_KILLED_WHILE_CHECKPOINTS_WAIT = """
    import os, signal, sqlite3, sys, threading
    sys.path.insert(0, os.getcwd())
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.prior import fit_gmm, pose_features, set_pose_prior
    from hmrcritic.hmr.poses import sample_poses
    from hmrcritic.memory.store import MemoryStore
    from tests.test_review_s25_graph import CONFIG, group

    set_pose_prior(fit_gmm(pose_features(sample_poses(300, seed=11)["body_pose"]), components=2, iters=5))
    tmp = sys.argv[1]
    saver = open_checkpointer(tmp + "/ck.sqlite")
    s, h, err = group(4, "warm-up")  # body model, judge and memory loaded before the moment under test
    memory = MemoryStore(tmp + "/mem")
    critique_group(s, h, judge="builtin", memory=memory, config=CONFIG, checkpointer=saver, keep=False)
    s, h, err = group(3, "grp")

    # another writer holds the checkpoint database for a moment (a `runs prune` compacting it, another critique's
    # checkpoint): the critique's checkpoints wait for it
    other = sqlite3.connect(tmp + "/ck.sqlite", check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(3.0, other.rollback).start()

    from hmrcritic.agent import nodes
    write = nodes.atomic_write_json

    def killed_once_applied(path, data):  # memory_write has written the memory and marked its plan applied
        write(path, data)
        if data.get("applied") is True:
            os.kill(os.getpid(), signal.SIGKILL)

    nodes.atomic_write_json = killed_once_applied
    critique_group(s, h, judge="builtin", memory=memory, config={**CONFIG, "use_memory": True}, learn=True,
                   true_errors_mm=err, checkpointer=saver, run_dir=tmp + "/g")
"""


def test_a_critique_killed_after_learning_while_its_checkpoints_waited_learns_once(tmp_path):
    """The graph ran with LangGraph's default ``durability="async"``: each checkpoint was saved in the background
    while the next node ran, so memory_write could write the memory before any checkpoint of the thread was on
    disk. Killed then, the re-run found no thread, began a new run (a new ledger key) and counted every rule use
    of the group a second time."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from hmrcritic.memory.store import MemoryStore

    env = {**os.environ, "HMRCRITIC_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_WHILE_CHECKPOINTS_WAIT), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    memory = MemoryStore(tmp_path / "mem")
    learned = {r.rule_id: r.n_used for r in memory.rules.all(include_retired=True) if r.n_used}
    assert learned and set(learned.values()) == {1}  # the group's rule uses, counted once before the kill
    s, h, err = group(3, "grp")
    again = critique_group(s, h, judge="builtin", memory=memory, config={**CONFIG, "use_memory": True}, learn=True,
                           true_errors_mm=err, checkpointer=open_checkpointer(tmp_path / "ck.sqlite"),
                           run_dir=tmp_path / "g")
    assert {r.rule_id: r.n_used for r in memory.rules.all(include_retired=True) if r.n_used} == learned
    assert memory.prototypes.count() == N
    # what one uninterrupted run gives
    solo = MemoryStore(tmp_path / "solo")
    once = critique_group(s, h, judge="builtin", memory=solo, config={**CONFIG, "use_memory": True}, learn=True,
                          true_errors_mm=err, checkpointer=open_checkpointer(tmp_path / "solo.sqlite"),
                          run_dir=tmp_path / "solo-g")
    assert again.overall == once.overall and again.memory_written == once.memory_written
