"""Session 35 mutation audit of hmrcritic/agent/runs.py and hmrcritic/agent/trace.py (helper C).

Each test pins a behaviour a user depends on, worked out by hand from the docstrings, README and CONTRACTS, that
a mutant of the two modules survived with the existing tests: prune's cut-off in days, what a dry run frees, what
``runs stats`` counts, locks of checkpoint threads across processes, where ``LAST`` points after a prune, and
what ``trace`` / ``--mermaid`` print (milliseconds, best and worst, latest-first ambiguity, the chained boxes).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from hmrcritic.agent import runs, trace
from hmrcritic.errors import InputError

DAY = 86_400.0


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


# --------------------------------------------------------------------------------------------- runs: prune by age


def test_prune_cutoff_is_in_days(tmp_path):
    """``--older-than 1`` means one day: a run folder two hours old stays, one two days old goes."""
    root = tmp_path / "runs"
    old = _write(root / "groups" / "old" / "a.npz", 10).parent
    recent = _write(root / "groups" / "recent" / "a.npz", 10).parent
    _age(old, 2 * DAY)
    _age(recent, 2 * 3600)
    out = runs.prune_runs(older_than_days=1, root=root, vacuum=False)
    assert not old.exists() and recent.is_dir()
    assert out["removed"]["groups"] == 1


def test_prune_zero_days_is_allowed_and_removes_everything_idle(tmp_path):
    """``0 = everything`` (prune_runs docstring): accepted, and a folder made a moment ago goes; a negative age is
    refused."""
    root = tmp_path / "runs"
    folder = _write(root / "groups" / "g" / "a.npz", 10).parent
    out = runs.prune_runs(older_than_days=0, root=root, vacuum=False)
    assert not folder.exists() and out["removed"]["groups"] == 1
    with pytest.raises(InputError):
        runs.prune_runs(older_than_days=-1, root=root, vacuum=False)


def test_a_dry_prune_removes_nothing_and_estimates_what_it_frees(tmp_path):
    """``dry_run`` counts without deleting; its "after" is "before" less the bytes of what it would remove."""
    root = tmp_path / "runs"
    old = _write(root / "groups" / "old" / "a.npz", 3000).parent
    _write(root / "groups" / "new" / "a.npz", 500)
    _age(old, 10 * DAY)
    out = runs.prune_runs(older_than_days=7, root=root, dry_run=True)
    assert old.is_dir() and out["removed"]["groups"] == 1
    assert out["bytes_before"] == 3500 and out["bytes_after"] == 500


def test_a_memory_snapshot_written_into_lately_is_kept(tmp_path):
    """A snapshot counts as touched when anything in it was: a folder whose own mtime is old but which holds a
    file written now stays; one wholly old goes."""
    root = tmp_path / "runs"
    live = _write(root / "frozen-memory" / "live" / "sub" / "index.bin", 10)
    dead = _write(root / "frozen-memory" / "dead" / "sub" / "index.bin", 10)
    for p in (live.parent, live.parent.parent, dead, dead.parent, dead.parent.parent):
        _age(p, 30 * DAY)
    out = runs.prune_runs(older_than_days=7, root=root, vacuum=False)
    assert live.exists() and not dead.parent.parent.exists()
    assert out["removed"]["frozen-memory"] == 1


# ------------------------------------------------------------------------------------------------ runs: stats


def test_runs_stats_counts_traces_and_sums_parts(tmp_path):
    """``runs stats``: traces are the ``*.jsonl`` files (not LAST, not its lock); a link in a run folder frees and
    weighs nothing (its target is not removed); the checkpoint database counts with its write-ahead log; the total
    is the sum of the parts."""
    root = tmp_path / "runs"
    _write(root / "groups" / "g" / "a.npz", 1000)
    big = _write(tmp_path / "elsewhere" / "big.bin", 50_000)
    (root / "groups" / "g" / "link.bin").symlink_to(big)
    _write(root / "traces" / "r1.jsonl", 100)
    _write(root / "traces" / "r2.jsonl", 200)
    (root / "traces" / "LAST").write_text("r2\n")
    (root / "traces" / ".LAST.lock").write_text("")
    db = root / "checkpoints.sqlite"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE checkpoints (thread_id TEXT, blob BLOB)")
    con.execute("CREATE TABLE writes (thread_id TEXT)")
    con.executemany("INSERT INTO checkpoints VALUES (?, ?)", [("t1", b"y" * 5000), ("t2", b"y" * 5000)])
    con.commit()  # the connection stays open: the -wal file is there while the stats are read
    try:
        wal = Path(str(db) + "-wal")
        assert wal.exists() and wal.stat().st_size > 0
        usage = runs.runs_usage(root)
        parts = usage["parts"]
        assert parts["traces"]["count"] == 2
        assert parts["groups"] == {"count": 1, "bytes": 1000}
        assert parts["checkpoints"]["count"] == 2
        files = [db, wal, Path(str(db) + "-shm")]
        assert parts["checkpoints"]["bytes"] == sum(p.stat().st_size for p in files if p.exists())
        assert usage["total_bytes"] == sum(p["bytes"] for p in parts.values())
    finally:
        con.close()


# ------------------------------------------------------------------------- runs: traces and LAST after a prune


def _trace_file(d: Path, run_id: str, age_s: float) -> Path:
    p = _write(d / f"{run_id}.jsonl", 10)
    _age(p, age_s)
    return p


def test_prune_points_last_at_the_newest_trace_left(tmp_path):
    """A prune that removes the trace ``LAST`` names points ``LAST`` at the newest trace left (repoint_last)."""
    root = tmp_path / "runs"
    d = root / "traces"
    gone = _trace_file(d, "r-gone", 10 * DAY)
    _trace_file(d, "r-older", 3 * DAY)
    _trace_file(d, "r-newest", 60)
    (d / "LAST").write_text("r-gone\n")
    runs.prune_runs(older_than_days=7, root=root, vacuum=False)
    assert not gone.exists()
    assert (d / "LAST").read_text().strip() == "r-newest"


def test_repoint_leaves_a_last_that_names_an_existing_trace(tmp_path):
    """``LAST`` naming a trace still there is not moved (a critique that returned a finished run pointed it there:
    point_last_at_finished), even when a newer trace exists."""
    d = tmp_path / "traces"
    _trace_file(d, "r-older", 3 * DAY)
    _trace_file(d, "r-newest", 60)
    (d / "LAST").write_text("r-older\n")
    trace.repoint_last(d)
    assert (d / "LAST").read_text().strip() == "r-older"


def test_prune_keeps_the_trace_a_running_critique_writes(tmp_path, monkeypatch):
    """The trace a critique is writing stays, whatever its age, and ``LAST`` keeps naming it."""
    from hmrcritic.agent.state import AgentConfig

    root = tmp_path / "runs"
    monkeypatch.setenv("HMRCRITIC_RUNS", str(root))
    tw = trace.TraceWriter("r-running", "g")
    tw.start(AgentConfig(judge="builtin", render=False))
    try:
        _age(tw.path, 30 * DAY)
        runs.prune_runs(older_than_days=0, root=root, vacuum=False)
        assert tw.path.exists()
        assert (root / "traces" / "LAST").read_text().strip() == "r-running"
    finally:
        tw.finish({"round": 0, "done": True})


def test_point_last_at_finished_needs_the_trace_on_disk(tmp_path, monkeypatch):
    """Only a run whose trace is still on disk is pointed at."""
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    d = trace.traces_dir()
    _trace_file(d, "r-here", 60)
    (d / "LAST").write_text("r-here\n")
    trace.point_last_at_finished("r-pruned")
    assert (d / "LAST").read_text().strip() == "r-here"
    _trace_file(d, "r-other", 60)
    trace.point_last_at_finished("r-other")
    assert (d / "LAST").read_text().strip() == "r-other"


def test_a_throwaway_run_that_fails_writes_its_trace_and_becomes_last(tmp_path, monkeypatch):
    """``only_on_error``: a failed run's trace is written and ``LAST`` points at it."""
    from hmrcritic.agent.state import AgentConfig

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    tw = trace.TraceWriter("r-failed", "g", only_on_error=True)
    tw.start(AgentConfig(judge="builtin", render=False))
    tw.error(RuntimeError("boom"))
    assert tw.path.exists()
    assert (trace.traces_dir() / "LAST").read_text().strip() == "r-failed"


def _thread_naming(db: Path, thread: str, run_dir: str) -> None:
    """A finished checkpoint thread whose state names ``run_dir`` (as ``critique_group(run_dir=…)`` stores it)."""
    from langgraph.checkpoint.base import empty_checkpoint

    from hmrcritic.agent.graph import open_checkpointer

    ckpt = empty_checkpoint()
    ckpt["channel_values"] = {"run_dir": run_dir, "done": True}
    open_checkpointer(db).put({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, ckpt,
                              {"source": "loop", "step": 1}, {})


def test_prune_keeps_the_thread_of_a_critique_running_in_a_folder_outside_groups(tmp_path):
    """A folder a critique holds (in_use) stays with its thread, whatever its age: also a ``run_dir`` outside
    ``groups/``; the thread of an idle old folder out there goes."""
    root = tmp_path / "runs"
    db = root / "checkpoints.sqlite"
    busy = tmp_path / "mine" / "busy"
    idle = tmp_path / "mine" / "idle"
    _thread_naming(db, "busy", str(busy))
    _thread_naming(db, "idle", str(idle))
    with runs.in_use(busy):
        idle.mkdir()
        for p in (busy, idle):
            _age(p, 30 * DAY)
        out = runs.prune_runs(older_than_days=7, root=root, vacuum=False)
    assert runs._threads(db) == ["busy"]
    assert out["removed"]["checkpoints"] == 1


# -------------------------------------------------------------------- runs: checkpoint thread locks, two processes

_HOLDER = textwrap.dedent("""
    import sys
    from hmrcritic.agent.runs import thread_lock
    with thread_lock(sys.argv[1], sys.argv[2]) as got:
        print("held" if got else "not-held", flush=True)
        sys.stdin.read()
""")

_PROBE = textwrap.dedent("""
    import sys
    from hmrcritic.agent.runs import thread_lock
    with thread_lock(sys.argv[1], sys.argv[2], wait=False) as got:
        print(got, flush=True)
""")


def _env() -> dict:
    env = dict(os.environ)
    root = str(Path(runs.__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _in_thread(fn, timeout: float = 20.0):
    """``fn()`` in a thread, failing (not hanging) when it does not return within ``timeout``."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert box, f"did not return within {timeout} s"
    return box[0]


def _probe_with(db: Path, thread_id: str) -> bool:
    def probe() -> bool:
        with runs.thread_lock(db, thread_id, wait=False) as got:
            return got
    return _in_thread(probe)


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks")
def test_a_thread_held_by_another_process_is_refused_without_waiting_and_others_are_free(tmp_path):
    """``wait=False`` yields False at once when another process holds the thread; another thread of the same
    database is free (one byte per thread)."""
    db = tmp_path / "checkpoints.sqlite"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db), "group-a"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _probe_with(db, "group-a") is False
        assert _probe_with(db, "group-b") is True
    finally:
        holder.stdin.close()
        holder.wait(timeout=20)


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks")
def test_a_thread_held_twice_in_this_process_stays_held_until_its_last_holder_lets_go(tmp_path):
    """A byte this process holds is counted, and unlocked only by its last holder."""
    db = tmp_path / "checkpoints.sqlite"

    def other_process() -> str:
        return subprocess.run([sys.executable, "-c", _PROBE, str(db), "group-a"], capture_output=True, text=True,
                              env=_env(), timeout=60).stdout.strip()

    with runs.thread_lock(db, "group-a") as outer:
        assert outer
        with runs.thread_lock(db, "group-a") as inner:
            assert inner
        assert other_process() == "False"
    assert other_process() == "True"


# ------------------------------------------------------------------------------------------ trace: what it shows


def _rec(event: str, **kw) -> dict:
    return {"run_id": "r1", "group_id": "g", "event": event, **kw}


def test_trace_shows_node_and_total_times_in_milliseconds():
    records = [_rec("start", config={"judge": "builtin"}),
               _rec("node", step=1, node="render", seconds=0.25, changed={"keys": ["renders"]}),
               _rec("finish", seconds=1.5, rounds=2)]
    text = trace.format_trace(records)
    assert "250.0 ms" in text
    assert "finish  1500.0 ms total, 2 revision round" in text  # "round(s)" before session 35, "rounds" since
    assert "no finish recorded" not in text


def test_a_failed_run_is_not_called_interrupted():
    """A run that ended in an error has its end recorded; only a trace without an error or finish says the run
    was interrupted or is running."""
    records = [_rec("start", config={}), _rec("node", step=1, node="render", seconds=0.1, changed={}),
               _rec("error", error="RuntimeError: boom")]
    text = trace.format_trace(records)
    assert "error: RuntimeError: boom" in text and "no finish recorded" not in text
    assert "no finish recorded" in trace.format_trace(records[:2])


def test_summary_names_the_best_and_the_worst_hypothesis():
    scores = [{"index": 0, "overall": 3.0}, {"index": 1, "overall": 7.5}, {"index": 2, "overall": 5.0}]
    out = trace.summarise_update("critique", {"critique": {"scores": scores, "rules_applied": ["a", "b"]}})
    assert out["best"] == "h1 7.50" and out["worst"] == "h0 3.00" and out["rules_applied"] == 2


def test_summary_counts_prototype_hits():
    out = trace.summarise_update("recall", {"prototype_recall": {"hits": [["p1", "p2", "p3"], ["p1"]]}})
    assert out["prototypes"] == 4  # the hits, not the rows


def test_summary_keeps_twenty_changes_and_counts_the_rest():
    """The first 20 changes, and how many more: 20 are all shown; 21 show 20 and "… 1 more"."""
    def changes(n: int) -> list:
        return trace.summarise_update("critique", {"reflections": [{"changes": [f"c{i}" for i in range(n)]}]})[
            "changes"]
    assert changes(20) == [f"c{i}" for i in range(20)]
    assert changes(21) == [f"c{i}" for i in range(20)] + ["… 1 more"]


def test_a_long_error_is_kept_to_its_limit_and_says_it_was_cut(tmp_path, monkeypatch):
    """ERROR_CHARS of a run's error are kept, the last one "…" when it was cut."""
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.io import read_jsonl

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    tw = trace.TraceWriter("r-long", "g")
    tw.start(AgentConfig(judge="builtin", render=False))
    tw.error(RuntimeError("x" * 2000))
    err = [r for r in read_jsonl(tw.path) if r["event"] == "error"][0]["error"]
    assert len(err) == trace.ERROR_CHARS and err.endswith("…") and err.startswith("RuntimeError: xxx")


def test_an_ambiguous_run_id_lists_the_latest_first(tmp_path, monkeypatch):
    """Run ids open with their start time: an ambiguous part lists the three latest, newest first; a part that
    matches one run is that run."""
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    d = trace.traces_dir()
    for day in ("01", "02", "03", "04"):
        _write(d / f"202601{day}-120000-000000-g{day}.jsonl", 10)
    with pytest.raises(InputError) as err:
        trace.resolve_run("202601")
    msg = str(err.value)
    assert "4 runs match" in msg
    assert "20260104-120000-000000-g04, 20260103-120000-000000-g03, 20260102-120000-000000-g02" in msg
    assert trace.resolve_run("g03") == d / "20260103-120000-000000-g03.jsonl"


def test_mermaid_chains_the_boxes_in_order_and_escapes_quotes():
    records = [_rec("start", config={}),
               _rec("node", step=1, node="render", seconds=0.002, changed={}),
               _rec("node", step=2, node='odd"name', seconds=0.5, changed={}),
               _rec("finish", seconds=1.0, rounds=0)]
    text = trace.trace_mermaid(records)
    lines = [ln.strip() for ln in text.splitlines()]
    assert "run_start --> n1" in lines and "n1 --> n2" in lines and "n2 --> run_finish" in lines
    assert 'n1["1: render · 2.0 ms"]' in lines
    assert 'n2["2: odd#quot;name · 500.0 ms"]' in lines


# ------------------------------------------------------------------------------- real bug: a link in groups/


def _stale_link(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A runs folder whose ``groups/`` holds a link, ten days old, to a run folder elsewhere (ten days old too)."""
    root = tmp_path / "runs"
    target = _write(tmp_path / "elsewhere" / "run" / "a.npz", 100).parent
    link = root / "groups" / "linked"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    t = time.time() - 10 * DAY
    os.utime(target, (t, t))
    os.utime(link, (t, t), follow_symlinks=False)
    return root, link, target


def test_prune_removes_a_stale_link_it_counts_as_removed(tmp_path):
    """What prune says it removed is gone: a link entry is removed (its target is not: _entry_bytes)."""
    root, link, target = _stale_link(tmp_path)
    out = runs.prune_runs(older_than_days=7, root=root, vacuum=False)
    assert out["removed"]["groups"] == 1
    assert not os.path.lexists(link)
    assert (target / "a.npz").exists()


def test_prune_writes_nothing_into_the_target_of_a_link(tmp_path):
    """Prune works in the runs folder: the target of a link there is not removed, nor written into."""
    root, _link, target = _stale_link(tmp_path)
    runs.prune_runs(older_than_days=7, root=root, vacuum=False)
    assert sorted(p.name for p in target.iterdir()) == ["a.npz"]


def test_a_schemeless_chroma_url_with_credentials_leaves_no_password_in_the_trace(tmp_path, monkeypatch):
    """``user:password@host:port`` (as Chroma accepts it) is masked in the start record's config."""
    from hmrcritic.agent.state import AgentConfig

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    tw = trace.TraceWriter("r-chroma", "g")
    tw.start(AgentConfig(judge="builtin", render=False, chroma_url="admin:s3cret-CANARY-35c@127.0.0.1:9"))
    tw.finish({"round": 0, "done": True})
    text = tw.path.read_text()
    assert "s3cret-CANARY-35c" not in text and "127.0.0.1" in text
