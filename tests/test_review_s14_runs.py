"""Review s14, runs folder locks and held-out checks: each test failed before its fix."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time

import pytest
from test_review_s13_api import _cfg, _group, interrupt_at_memory_write

from hmrcritic.agent import api, runs
from hmrcritic.agent.api import critique_group
from hmrcritic.agent.graph import build_graph, open_checkpointer
from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("small_prior")


def _held(folder) -> bool:
    """Whether another holder has ``folder``'s lock file locked exclusively now (a shared lock would wait)."""
    fd = os.open(folder / runs.IN_USE_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_prune_holds_a_run_folder_locked_while_it_removes_it_and_its_thread(tmp_path, monkeypatch):
    """prune checked a folder's lock, released it, and only then removed the thread and the folder: a critique
    starting in between ran on a folder that was going. It now holds the exclusive lock until both are gone."""
    root = tmp_path / "runs"
    saver = open_checkpointer(root / "checkpoints.sqlite")
    s, h, _ = _group(41, sample_id="stale")
    critique_group(s, h, config=_cfg(), checkpointer=saver, run_dir=root / "groups" / "stale")
    old = time.time() - 10 * runs.DAY_S
    os.utime(root / "groups" / "stale", (old, old))
    seen: dict = {}
    real_rmtree, real_delete = shutil.rmtree, runs._delete_threads

    def rmtree(p, *a, **kw):
        seen["folder"] = _held(p)
        return real_rmtree(p, *a, **kw)

    def delete_threads(db, threads, *a, **kw):
        seen["threads"] = _held(root / "groups" / "stale")
        return real_delete(db, threads, *a, **kw)

    monkeypatch.setattr(runs.shutil, "rmtree", rmtree)
    monkeypatch.setattr(runs, "_delete_threads", delete_threads)
    out = runs.prune_runs(7, root=root)
    assert out["removed"]["groups"] == 1 and out["removed"]["checkpoints"] == 1
    assert seen == {"folder": True, "threads": True}
    assert not (root / "groups" / "stale").exists()


def test_a_critique_that_waited_for_prune_marks_the_folder_again(tmp_path, monkeypatch):
    """A critique blocked on the lock prune held got, once prune had removed the folder, a lock on a file that
    was gone: it marked nothing and wrote into a folder that no longer existed (or that the next prune removed
    under it). It now makes the folder again and holds the new lock file."""
    folder = tmp_path / "g"
    folder.mkdir()
    fd = os.open(folder / runs.IN_USE_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # prune holds it
    inside: dict = {}
    # the critique has opened the lock file prune holds and goes to wait for it: a sleep stood in for this, and
    # on a busy machine the thread started after it, found no folder, and the race was never run (or it made
    # the folder's file between rmtree's unlink and rmdir, and rmtree failed: "Directory not empty")
    waiting, real_flock = threading.Event(), fcntl.flock

    def flock(lock_fd, op):
        if threading.current_thread() is t:
            waiting.set()
        return real_flock(lock_fd, op)

    def critique():
        with runs.in_use(folder):
            inside["exists"] = folder.is_dir()
            inside["marked"] = runs.folder_in_use(folder)

    t = threading.Thread(target=critique)
    monkeypatch.setattr(fcntl, "flock", flock)
    t.start()
    assert waiting.wait(60), "the critique never went to lock its folder"
    monkeypatch.undo()
    shutil.rmtree(folder)  # prune removes the folder, then lets go
    os.close(fd)
    t.join(10)
    assert inside == {"exists": True, "marked": True}


def test_an_interrupted_critique_checks_its_inputs_once_it_holds_its_folder(tmp_path, monkeypatch):
    """critique_group checked an interrupted thread's inputs before it took its folder's lock: a prune in
    between removed them and the resumed critique failed with "group inputs missing". Checked under the lock,
    the thread starts afresh."""
    s, h, err = _group(42)
    kw = interrupt_at_memory_write(tmp_path, monkeypatch, s, h, err)
    saver = kw["checkpointer"]
    assert (tmp_path / "g" / "inputs.npz").is_file()  # an interrupted thread with its inputs
    real_in_use, pruned = api.in_use, []

    def prune_first(folder):  # a prune removes the folder just before the critique gets its lock
        if not pruned:
            pruned.append(folder)
            shutil.rmtree(tmp_path / "g")
        return real_in_use(folder)

    monkeypatch.setattr(api, "in_use", prune_first)
    updates: list = []
    res = critique_group(s, h, graph=build_graph().compile(checkpointer=saver),
                         on_update=lambda node, u, t: updates.append(node), **kw)
    assert pruned and updates[0] == "render" and len(res.scores) == 4


def test_a_thread_with_a_blank_id_is_pruned(tmp_path):
    """A blank thread id has no run folder, but prune looked for ``groups/`` itself as its folder: with any run
    folder present the thread was never removed."""
    import sqlite3

    from langgraph.checkpoint.base import empty_checkpoint

    root = tmp_path / "runs"
    (root / "groups" / "some-group").mkdir(parents=True)
    saver = open_checkpointer(root / "checkpoints.sqlite")
    saver.put({"configurable": {"thread_id": "", "checkpoint_ns": ""}}, empty_checkpoint(), {}, {})
    with sqlite3.connect(root / "checkpoints.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM checkpoints WHERE thread_id = ''").fetchone()[0] == 1
    out = runs.prune_runs(7, root=root)
    assert out["removed"]["checkpoints"] == 1 and out["removed"]["groups"] == 0
    assert (root / "groups" / "some-group").exists()


def test_assert_heldout_reads_the_exploration_record_once(tmp_path, monkeypatch):
    """assert_heldout read ``explored_on.json`` once for its list of splits and again for each split; it is
    one read now, with the same per-split refusal."""
    import json

    from hmrcritic.agent import explore
    from hmrcritic.agent.learning_curve import assert_heldout

    mem = tmp_path / "m"
    mem.mkdir()
    (mem / explore.EXPLORED_FILE).write_text(json.dumps({"splits": {
        "train": {"group_ids": ["train-1", "train-2"]}, "val": {"calibration_group_ids": ["val-0"]}}}))
    reads = []
    real = explore.explored_record
    monkeypatch.setattr(explore, "explored_record", lambda m: reads.append(m) or real(m))
    assert_heldout(mem, "test", ["test-0", "test-1"])
    assert len(reads) == 1
    with pytest.raises(InputError, match=r"explored \(or calibrated\) on 1 of these 'train' groups \(e.g. train-2\)"):
        assert_heldout(mem, "test", ["test-0", "train-2"])
    with pytest.raises(InputError, match="'val' groups"):
        assert_heldout(mem, "test", ["val-0"])
