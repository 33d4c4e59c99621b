"""Review s24, files on disk, traces and secret scrubbing: each test failed before its fix."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from hmrcritic import io as hio
from hmrcritic.agent import trace
from hmrcritic.errors import InputError


def test_read_jsonl_skips_a_number_beyond_the_int_limit(tmp_path):
    """A line with a number of 5,000 digits raises a bare ValueError in ``json.loads`` (Python's int limit), not
    JSONDecodeError: it ended the whole read (``trace``, a finetune resume) instead of being skipped."""
    log = tmp_path / "log.jsonl"
    hio.append_jsonl(log, {"a": 1})
    with open(log, "a", encoding="utf-8") as fh:
        fh.write('{"a": ' + "9" * 5000 + "}\n")
    hio.append_jsonl(log, {"a": 2})
    assert [r["a"] for r in hio.read_jsonl(log)] == [1, 2]


def _folder_fsyncs(monkeypatch) -> list[tuple[int, int]]:
    """``os.fsync`` as it is, noting ``(st_dev, st_ino)`` of every folder it syncs."""
    synced: list[tuple[int, int]] = []
    real = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append((st.st_dev, st.st_ino))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_atomic_write_and_first_append_sync_their_folder(tmp_path, monkeypatch):
    """The file was fsynced but not the folder its rename (or its creation) is an entry of: after a power cut a
    write that had returned could come back as the old file, or as no file."""
    synced = _folder_fsyncs(monkeypatch)
    folder = tmp_path / "out"
    hio.atomic_write_json(folder / "scores.json", {"x": 1})
    here = (folder.stat().st_dev, folder.stat().st_ino)
    assert here in synced
    synced.clear()
    hio.append_jsonl(folder / "log.jsonl", {"a": 1})  # a new log
    assert here in synced
    synced.clear()
    hio.append_jsonl(folder / "log.jsonl", {"a": 2})  # an existing one: its entry is kept already
    assert synced == []
    assert json.loads((folder / "scores.json").read_text()) == {"x": 1}
    assert [r["a"] for r in hio.read_jsonl(folder / "log.jsonl")] == [1, 2]


def test_atomic_write_takes_a_name_the_file_system_takes(tmp_path):
    """A name of 250 bytes is a valid file name (NAME_MAX 255), but its temporary file's name (``.NAME.x1y2….tmp``)
    was not: the write failed with "File name too long" naming the file. A write killed mid-way leaves a temporary
    file that :func:`remove_write_leftovers` still finds."""
    name = "é" * 120 + "x" * 6 + ".json"  # 251 bytes in UTF-8
    assert len(os.fsencode(name)) == 251
    (tmp_path / name).write_text("{}")  # the file system takes the name: open() makes it
    (tmp_path / name).unlink()
    hio.atomic_write_json(tmp_path / name, {"ok": True})
    assert json.loads((tmp_path / name).read_text()) == {"ok": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    # killed (SIGKILL) between writing the temporary file and renaming it
    code = textwrap.dedent(f"""
        import os, signal
        from hmrcritic import io
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        io.atomic_write_json({str(tmp_path / name)!r}, {{"ok": False}})
    """)
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert got.returncode == -9, got.stderr.decode()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != name]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")
    hio.remove_write_leftovers(tmp_path, [name])
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert json.loads((tmp_path / name).read_text()) == {"ok": True}


def _trace_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    d = trace.traces_dir()
    d.mkdir(parents=True)
    return d


def test_trace_last_pointer_that_is_no_utf8(tmp_path, monkeypatch):
    """A ``LAST`` damaged into bytes that are no UTF-8 ended ``trace --last`` in "UnicodeDecodeError: 'utf-8' codec
    can't decode byte 0xff" naming no file, and ``runs prune`` after it had removed the old runs (its repoint)."""
    d = _trace_home(tmp_path, monkeypatch)
    (d / "LAST").write_bytes(b"\xff\xfe\x00run\n")
    with pytest.raises(InputError, match="has no trace"):
        trace.resolve_run(last=True)
    w = trace.TraceWriter("run-ok", "g1")
    w._write({"event": "finish", "seconds": 0.5, "rounds": 0, "done": True})
    (d / "LAST").write_bytes(b"\xff\xfe\x00run\n")
    trace.repoint_last(d)
    assert (d / "LAST").read_text().strip() == "run-ok"
    assert trace.resolve_run(last=True) == d / "run-ok.jsonl"


def test_prune_with_a_damaged_last_pointer_finishes(tmp_path, monkeypatch):
    """``runs prune`` removed the old traces, then failed at the pointer before compacting and reporting."""
    from hmrcritic.agent.runs import prune_runs

    d = _trace_home(tmp_path, monkeypatch)
    hio.append_jsonl(d / "old.jsonl", {"run_id": "old", "group_id": "g", "event": "error", "error": "x"})
    os.utime(d / "old.jsonl", (1.0e9, 1.0e9))
    hio.append_jsonl(d / "new.jsonl", {"run_id": "new", "group_id": "g", "event": "error", "error": "x"})
    (d / "LAST").write_bytes(b"\xffold\n")
    got = prune_runs(older_than_days=1, root=tmp_path / "runs")
    assert got["removed"]["traces"] == 1
    assert (d / "LAST").read_text().strip() == "new"


@pytest.mark.parametrize("only_on_error", [True, False])
def test_trace_that_cannot_be_written_leaves_the_runs_own_error(tmp_path, monkeypatch, caplog, only_on_error):
    """A throwaway critique writes its trace only when it fails: where that write failed (here the traces folder
    is gone and a file has its name) its OSError replaced the run's own error, and a kept trace's file lock was
    never let go."""
    import shutil

    d = _trace_home(tmp_path, monkeypatch)
    w = trace.TraceWriter("run-x", "g1", only_on_error=only_on_error)
    w.start(_config())
    held = w._lock
    assert (held is None) == only_on_error
    shutil.rmtree(d)
    d.write_text("not a folder")
    with caplog.at_level("WARNING", logger="hmrcritic.agent.trace"):
        w.error(RuntimeError("the endpoint refused the key"))  # the caller raises this next: nothing else
    assert "the trace of run run-x could not be written" in caplog.text
    assert w._lock is None and (held is None or held.closed)


def _config():
    from hmrcritic.agent.state import AgentConfig

    return AgentConfig()


def test_trace_with_a_duration_beyond_float_is_shown(tmp_path, monkeypatch):
    """A record whose "seconds" is an integer of 400 digits passed the record check and ended ``trace`` (and
    ``--mermaid``) in "OverflowError: int too large to convert to float"; it is left out like other damage."""
    d = _trace_home(tmp_path, monkeypatch)
    w = trace.TraceWriter("run-big", "g1")
    w.start(_config())
    w.node("render", {"renders": ["front"]}, 0.25)
    with open(d / "run-big.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"run_id": "run-big", "group_id": "g1", "event": "node", "step": 2, "node": "evidence",
                             "seconds": 10 ** 400, "changed": {}}) + "\n")
    w.finish({"round": 0, "done": True})
    records = trace.read_trace("run-big")
    assert [r["event"] for r in records] == ["start", "node", "finish"]
    assert "render" in trace.format_trace(records) and "evidence" not in trace.format_trace(records)
    assert "render" in trace.trace_mermaid(records)
