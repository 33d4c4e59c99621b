"""Review s22, run folders, the checkpoint database and traces: each test failed before its fix."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from hmrcritic.agent import runs, trace
from hmrcritic.agent.graph import open_checkpointer
from hmrcritic.agent.state import AgentConfig
from hmrcritic.errors import AssetError


def _scandir_removing(monkeypatch, victim, remove):
    """``os.scandir`` that, when it lists ``victim``'s folder (or ``victim`` itself), has ``remove`` take it away
    first (``victim`` a folder) or just after the listing (``victim`` a file): another process's removal landing
    between a listing and what is done with it."""
    real = os.scandir

    def scandir(path="."):
        if isinstance(path, int):  # an open folder (rmtree's own listing)
            return real(path)
        if os.fspath(path) == os.fspath(victim):  # the folder goes just before it is opened
            remove()
            return real(path)
        if os.fspath(path) == os.fspath(victim.parent) and victim.is_file():
            it = real(path)
            entries = list(it)
            it.close()
            remove()  # listed, then gone before its stat

            class Listed:
                def __enter__(self):
                    return iter(entries)

                def __exit__(self, *exc):
                    return False

                def __iter__(self):
                    return iter(entries)

                def close(self):
                    pass

            return Listed()
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_runs_stats_survives_a_run_folder_removed_while_it_counts(tmp_path, monkeypatch):
    """An exploration or evaluation loop removes each group's run folder as soon as it has read it
    (``discard_run``): ``runs stats`` beside it raised FileNotFoundError when a folder went between the listing of
    ``groups/`` and its own (1 in ~100 calls beside a loop), and ``runs prune`` sizes the folder too."""
    import shutil

    root = tmp_path / "runs"
    for name in ("a", "b"):
        (root / "groups" / name / "renders").mkdir(parents=True)
        (root / "groups" / name / "inputs.npz").write_bytes(b"x" * 1000)
    victim = root / "groups" / "b" / "renders"
    (victim / "h0.png").write_bytes(b"y" * 500)
    _scandir_removing(monkeypatch, victim, lambda: shutil.rmtree(victim.parent))
    use = runs.runs_usage(root)
    assert use["parts"]["groups"]["bytes"] >= 1000  # "a" counted; "b" went while it was being counted


def test_traces_left_skips_a_trace_deleted_while_it_is_listed(tmp_path, monkeypatch):
    """The workers of one export forget their groups' traces at the same time (``forget_group`` →
    ``repoint_last``): a trace another worker deleted between the listing and its ``stat`` raised
    FileNotFoundError out of ``repoint_last``, failing a group whose result was already stored."""
    d = tmp_path / "traces"
    d.mkdir()
    (d / "20260101-000000-000001-a.jsonl").write_text("{}\n")
    gone = d / "20260101-000000-000002-b.jsonl"
    gone.write_text("{}\n")
    (d / "LAST").write_text("20260101-000000-000003-c\n")  # its trace forgotten: LAST is repointed
    with monkeypatch.context() as m:
        _scandir_removing(m, gone, lambda: gone.unlink())
        trace.repoint_last(d)
    assert (d / "LAST").read_text().strip() == "20260101-000000-000001-a"


def _db_with_threads(db, n: int, size: int = 20_000) -> None:
    open_checkpointer(db)  # the tables, as a critique makes them
    con = sqlite3.connect(db)
    with con:
        con.executemany("INSERT INTO checkpoints(thread_id, checkpoint_ns, checkpoint_id, type, checkpoint, "
                        "metadata) VALUES (?, '', 'c1', 'msgpack', ?, ?)",
                        [(f"t{i}", os.urandom(size), b"{}") for i in range(n)])
    con.close()


def test_prune_compacts_what_earlier_deletes_left(tmp_path):
    """Prune compacted the checkpoint database only when it had deleted threads itself: after a prune whose
    VACUUM failed or was killed (a disk full of checkpoints has no room for VACUUM's copy), an export forgetting
    its groups or ``--fresh`` re-runs, every later prune found nothing to delete and left the file as big as
    before ("6.2 MB -> 6.2 MB" with no thread in it)."""
    root = tmp_path / "runs"
    db = root / "checkpoints.sqlite"
    _db_with_threads(db, 200)
    runs._delete_threads(db, [f"t{i}" for i in range(200)])  # deleted, never compacted
    before = runs.runs_usage(root)["parts"]["checkpoints"]
    assert before["count"] == 0 and before["bytes"] > 3_000_000
    out = runs.prune_runs(0, root)
    assert out["removed"]["checkpoints"] == 0
    assert runs.runs_usage(root)["parts"]["checkpoints"]["bytes"] < before["bytes"] / 10


def test_prune_leaves_a_mostly_full_database_alone(tmp_path):
    """…but a database with little free space is not rewritten by every prune (VACUUM copies the whole file)."""
    root = tmp_path / "runs"
    db = root / "checkpoints.sqlite"
    _db_with_threads(db, 50, size=5_000)
    assert not runs._mostly_free(db)


def test_prune_names_the_checkpoint_database_when_it_stays_locked(tmp_path, monkeypatch):
    """Prune's deletes (and its VACUUM) raised sqlite3's own "database is locked", which names no file, as an
    "OperationalError: …" line; reading the threads already said which database and why (``checkpoint_error``)."""
    root = tmp_path / "runs"
    db = root / "checkpoints.sqlite"
    _db_with_threads(db, 3, size=100)  # threads without a run folder: orphans prune deletes
    monkeypatch.setattr(runs, "PRUNE_DB_TIMEOUT_S", 0.2, raising=False)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a critique writing its checkpoint, for longer than prune waits
    try:
        with pytest.raises(AssetError, match="checkpoint database .*checkpoints.sqlite is locked"):
            runs.prune_runs(0, root)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert runs.prune_runs(0, root)["removed"]["checkpoints"] == 3  # and goes through once it is free


def test_a_trace_total_is_not_negative_when_the_clock_steps_back(tmp_path, monkeypatch):
    """The finish record's total was ``time.time() - start``: the wall clock stepped back (NTP, the user)
    during a long VLM critique printed "finish  -3599980.0 ms total"."""
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    writer = trace.TraceWriter("20260101-000000-000001-g", "g")
    writer.start(AgentConfig(render=False))
    writer.node("render", {}, 0.01)
    wall = time.time()
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: wall - 3600.0)
        writer.finish({"round": 0, "done": True})
    finish = trace.read_trace("20260101-000000-000001-g")[-1]
    assert finish["event"] == "finish" and 0 <= finish["seconds"] < 60
    assert "-" not in trace.format_trace(trace.read_trace("20260101-000000-000001-g")).splitlines()[-1]


def test_a_failed_compaction_says_the_runs_were_removed(tmp_path, monkeypatch):
    """VACUUM failing (locked here; a disk without room for its copy) raised sqlite3's bare error after the old
    runs had been deleted: it now names the database and says what was done and that the next prune compacts."""
    root = tmp_path / "runs"
    db = root / "checkpoints.sqlite"
    _db_with_threads(db, 100)
    runs._delete_threads(db, [f"t{i}" for i in range(100)])
    monkeypatch.setattr(runs, "PRUNE_DB_TIMEOUT_S", 0.2, raising=False)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(AssetError, match="is locked.*runs were removed, but the file was not compacted"):
            runs.prune_runs(0, root)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def _thread_naming(db, thread: str, run_dir: str, ts: str | None = None) -> None:
    """A finished checkpoint thread whose state names ``run_dir`` (as ``critique_group(run_dir=…)`` stores it)."""
    from langgraph.checkpoint.base import empty_checkpoint

    ckpt = empty_checkpoint()
    ckpt["channel_values"] = {"run_dir": run_dir, "done": True}
    if ts is not None:
        ckpt["ts"] = ts
    open_checkpointer(db).put({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, ckpt,
                              {"source": "loop", "step": 1}, {})


def test_prune_keeps_a_recent_thread_whose_run_dir_was_relative(tmp_path, monkeypatch):
    """``critique_group(run_dir="mine/g1")`` stores the folder as given, relative to where the critique ran:
    looked up from prune's own folder it was "missing", and ``runs prune --older-than 7`` deleted the thread of a
    critique made a minute before (its finished result, and its resumability). Such a thread is now as old as its
    checkpoint."""
    root = tmp_path / "runs"
    db = root / "checkpoints.sqlite"
    (tmp_path / "work" / "mine" / "g1").mkdir(parents=True)  # where the critique ran
    _thread_naming(db, "g1", "mine/g1")
    _thread_naming(db, "g0", "mine/g0", ts="2020-01-01T00:00:00+00:00")  # an old one still goes
    monkeypatch.chdir(tmp_path)  # prune from elsewhere
    out = runs.prune_runs(7, root)
    assert out["removed"]["checkpoints"] == 1
    assert runs._threads(db) == ["g1"]
