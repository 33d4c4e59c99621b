"""Review s34: memory, trace, runs and doctor walked as a new user.

The runs folder's parts printed by their folder names ("0 frozen-memory" read as the critic's memory pruned), doctor
telling a user whose HMRCRITIC_MEMORY names a file to move HMRCRITIC_HOME, a reset of a memory folder that is a
file failing as "File exists", a failed import into a new folder leaving a seeded memory there, ``memory stats``
out of line, an ambiguous run id listing its "latest" runs oldest first, and a long search query cut without a
word."""

from __future__ import annotations

import json
import os

import pytest

from hmrcritic.cli import main


@pytest.fixture()
def runs_home(tmp_path, monkeypatch):
    runs = tmp_path / "my runs ü"
    (runs / "traces").mkdir(parents=True)
    (runs / "traces" / "20990101-000000-000001-g.jsonl").write_text("{}\n")
    (runs / "frozen-memory" / "snap").mkdir(parents=True)
    monkeypatch.setenv("HMRCRITIC_RUNS", str(runs))
    return runs


def test_runs_text_names_its_parts_as_readme_does(runs_home, capsys):
    """README calls them "checkpoint threads, run folders, traces, memory snapshots, evaluation caches"; the text
    said "groups", "frozen-memory", "evaluate" ("removed: …, 0 frozen-memory" read as the critic's memory pruned)
    and "1 groups". ``--json`` keeps the folder names as keys."""
    assert main(["runs", "stats"]) == 0
    out = capsys.readouterr().out
    for words in ("checkpoint threads", "run folders", "memory snapshots", "evaluation caches"):
        assert words in out
    assert "frozen-memory" not in out and " 1 entry " in out
    assert main(["runs", "prune", "--older-than", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would remove: ") and "1 trace," in out and "1 memory snapshot," in out
    assert "frozen-memory" not in out and "1 groups" not in out and "memory is never touched" in out
    assert main(["runs", "prune", "--older-than", "0", "--dry-run", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["removed"]) == {"groups", "checkpoints", "traces",
                                                                   "frozen-memory", "evaluate"}


def test_doctor_names_the_variable_that_chose_an_unwritable_folder(tmp_path, monkeypatch):
    """``HMRCRITIC_MEMORY`` naming a file: the FAIL line said "set HMRCRITIC_HOME to a writable folder", which
    changes nothing for a folder that variable chose."""
    from hmrcritic.commands.doctor import _folders

    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    for name in ("HMRCRITIC_CACHE", "HMRCRITIC_DATA", "HMRCRITIC_RUNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HMRCRITIC_MEMORY", str(afile))
    res = _folders()
    assert res["ok"] is False
    assert "set HMRCRITIC_MEMORY to a writable folder" in res["error"]
    assert "HMRCRITIC_HOME" not in res["error"]
    monkeypatch.setenv("HMRCRITIC_HOME", str(afile))  # the home a file too: both named
    res = _folders()
    assert "set HMRCRITIC_HOME to a writable folder, and HMRCRITIC_MEMORY" in res["error"]


def test_doctor_says_its_own_errors_without_a_class_name():
    """``doctor --probe`` with no endpoint: "[FAIL] endpoint InputError: the VLM judge has no endpoint …", a class
    name before a sentence written for the user (every command prints it as "error: the VLM judge …"). An
    unexpected exception keeps its type."""
    from hmrcritic.commands.doctor import _check
    from hmrcritic.errors import InputError

    def ours():
        raise InputError("the VLM judge has no endpoint and no key")

    def other():
        raise KeyError("x")

    assert _check("endpoint", ours)["error"] == "the VLM judge has no endpoint and no key"
    assert _check("endpoint", other)["error"] == "KeyError: 'x'"


def test_memory_reset_of_a_file_says_so_before_asking(tmp_path, capsys):
    """Every memory command said "a file is where a folder is needed: F (a memory is a folder)" but reset, which
    asked to delete the memory in F and then failed as "File exists: F (F is a file, where a folder is needed)"."""
    afile = tmp_path / "memfile"
    afile.write_text("x")
    for args in ([], ["--yes"]):
        assert main(["memory", "reset", "--memory-dir", str(afile), *args]) == 2
        err = capsys.readouterr().err
        assert f"a file is where a folder is needed: {afile} (a memory is a folder)" in err
        assert "File exists" not in err and "Delete all" not in err
    # calibration --clear said "no memory at memfile; nothing to clear", as for a folder that holds none
    assert main(["memory", "calibration", "--clear", "--memory-dir", str(afile)]) == 2
    assert f"a file is where a folder is needed: {afile} (a memory is a folder)" in capsys.readouterr().err
    assert afile.read_text() == "x"


def test_memory_reset_asks_about_the_folder_by_its_absolute_path(tmp_path, monkeypatch, capsys):
    """The question named the folder as typed ("Delete all rules and prototypes in m2?"), relative to a working
    directory it does not show; the line after a reset named it absolute."""
    import io

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no answer: nothing deleted
    assert main(["memory", "reset", "--memory-dir", "m2"]) == 1
    assert f"Delete all rules and prototypes in {tmp_path / 'm2'}?" in capsys.readouterr().err


@pytest.fixture(scope="module")
def export_file(tmp_path_factory):
    from hmrcritic.memory.store import MemoryStore

    d = tmp_path_factory.mktemp("export")
    with MemoryStore(d / "src", chroma_url="") as store:
        store.export_json(d / "mem.json")
    return d / "mem.json"


def test_a_failed_import_into_a_new_folder_leaves_no_memory_there(tmp_path, capsys, export_file):
    """Another JSON, a newer export or a truncated file: "nothing was imported", and yet a new memory seeded with
    the starter rules was left in the named folder (and the folders made above it)."""
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**json.loads(export_file.read_text()), "schema": 99}))
    cut = tmp_path / "cut.json"
    cut.write_text(export_file.read_text()[:1000])
    for bad in (other, newer, cut):
        assert main(["memory", "import", str(bad), "--memory-dir", str(tmp_path / "new" / "mem")]) == 2
        assert "memory import" in capsys.readouterr().err
        assert not (tmp_path / "new").exists()
    # a folder that held a memory before stays, whatever the import's fate
    assert main(["memory", "import", str(export_file), "--memory-dir", str(tmp_path / "mem")]) == 0
    out = capsys.readouterr().out
    assert f"imported {export_file} into {tmp_path / 'mem'}: " in out
    assert "rules_skipped: " in out and "--overwrite replaces them" in out  # a new memory holds the starter rules
    assert main(["memory", "import", str(other), "--memory-dir", str(tmp_path / "mem")]) == 2
    assert (tmp_path / "mem" / "chroma.sqlite3").exists()


def test_memory_stats_lines_up_and_says_origins_in_words(tmp_path, capsys):
    """"embedding episodic_prototypes" (29 characters) pushed its value out of the 26-character column, and
    rules_by_origin was a Python dict's repr ("{'starter': 18, 'mined': 0, 'user': 0}")."""
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(tmp_path / "mem", chroma_url="").close()
    assert main(["memory", "stats", "--memory-dir", str(tmp_path / "mem")]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = set()
    for line in lines:
        label_end = line.index("  ")  # labels are words joined by single spaces
        starts.add(len(line) - len(line[label_end:].lstrip()))
    assert len(starts) == 1, lines
    origin = next(line for line in lines if line.startswith("rules_by_origin"))
    assert "{" not in origin and "starter 18" in origin


def test_an_ambiguous_run_id_lists_the_latest_run_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    from hmrcritic.agent.trace import traces_dir

    traces_dir().mkdir(parents=True)
    for i in range(1, 5):
        (traces_dir() / f"20990101-00000{i}-000000-g.jsonl").write_text("{}\n")
    assert main(["trace", "20990101"]) == 2
    err = capsys.readouterr().err
    assert "4 runs match (latest first: 20990101-000004-000000-g, 20990101-000003-000000-g, " in err


def test_a_search_query_longer_than_the_model_reads_says_so(tmp_path, capsys):
    """The text model keeps 256 word pieces: a 10,000-character query was answered for its first ~1,300
    characters, with nothing saying the rest was not read."""
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(tmp_path / "mem", chroma_url="").close()
    mem = ["--memory-dir", str(tmp_path / "mem")]
    assert main(["memory", "search", "knee " * 2000, "-k", "1", *mem]) == 0
    err = capsys.readouterr().err
    assert "only its first" in err and "of 10,000 characters were compared" in err
    assert main(["memory", "search", "knee bent backwards", "-k", "1", *mem]) == 0
    assert "note:" not in capsys.readouterr().err


def test_runs_prune_keeps_a_running_critiques_trace_on_a_spaced_unicode_path(runs_home, capsys):
    """A trace held by a running critique (its shared lock) stays through ``runs prune --older-than 0``, on a runs
    folder whose path has a space and a non-ASCII letter."""
    from hmrcritic.agent.trace import TraceWriter

    writer = TraceWriter("20990101-000009-000000-live", "live")

    class _Cfg:
        def model_dump(self):
            return {"judge": "builtin"}

    writer.start(_Cfg())
    try:
        assert main(["runs", "prune", "--older-than", "0", "--yes"]) == 0
        assert writer.path.exists() and os.path.getsize(writer.path) > 0
    finally:
        writer.finish({})
    capsys.readouterr()


def test_a_failed_import_never_removes_a_new_folder_another_import_holds(tmp_path, monkeypatch, capsys):
    """Two imports into one new folder, both finding it missing: the one that cannot take the memory (the other
    holds it) fails at once and must not remove the folder, which holds the other's memory."""
    import subprocess
    import sys

    mem = tmp_path / "new" / "mem"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hmrcritic.memory.store import hold_exclusive\n"
         "with hold_exclusive(sys.argv[1], 'another import'):\n"
         "    open(sys.argv[1] + '/theirs', 'w').close(); print('held', flush=True); time.sleep(60)", str(mem)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        real = os.path.lexists
        monkeypatch.setattr(os.path, "lexists", lambda p: False if str(p).startswith(str(tmp_path / "new"))
                            else real(p))  # as the race saw it: the folder not made yet
        other = tmp_path / "other.json"
        other.write_text('{"a": 1}')
        assert main(["memory", "import", str(other), "--memory-dir", str(mem)]) == 2
        assert "busy with another import" in capsys.readouterr().err
        assert (mem / "theirs").exists()
    finally:
        holder.kill()
        holder.wait()
