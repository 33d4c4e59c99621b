"""MemoryStore at its edges: error hints that name the memory, a folder that cannot be written, a writer kept
waiting by another, what an export carries besides the collections, and two stores on one folder.

Real Chroma on disk in tmp folders (a real `chroma run` server for the --chroma-url cases)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hmrcritic.errors import AssetError, InputError
from hmrcritic.memory import MemoryStore, Prototype
from hmrcritic.memory.schema import ScoreCalibration
from hmrcritic.memory.store import EXPLORE_FILES

EXPLORED, PROGRESS = EXPLORE_FILES[0], EXPLORE_FILES[1]


def _proto(pid: str, overall: float) -> Prototype:
    v = np.ones(69) / np.sqrt(69)
    return Prototype(proto_id=pid, embedding=v.tolist(), overall=overall, motion_structure=5,
                     physical_feasibility=5, image_alignment=5)


def _calibration(slope: float = 1.1) -> ScoreCalibration:
    return ScoreCalibration(slope=slope, intercept=0.2, groups=3, hypotheses=4, pearson_before=0.5,
                            pearson_after=0.6)


def _spoil_embedding(path: Path) -> None:
    """Mark the memory's prototype collection as built with another pose embedding (as an older hmrcritic)."""
    import chromadb
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    client = chromadb.PersistentClient(str(path.resolve()))
    client.get_collection("episodic_prototypes", embedding_function=None).modify(
        metadata={"embedding_id": "some-other-embedder", "embedding_dim": 512})
    SharedSystemClient.clear_system_cache()


def _hinted_command(message: str) -> list[str]:
    """The first ```hmrcritic memory reset ...``` an error message suggests, as argv after `hmrcritic`."""
    start = message.index("`hmrcritic memory reset")
    return shlex.split(message[start + 1:message.index("`", start + 1)])[1:]


# ---- 1. an error's command hint names the memory it is about ---------------------------------------------
def test_embedding_mismatch_hint_resets_the_memory_named_not_the_default(tmp_path, monkeypatch):
    """The hint used to say `hmrcritic memory reset --yes`: typed as shown, it reset the *default* memory and
    left the mismatched one failing. Its folder (with a space, so quoting matters) is in the hint now."""
    from hmrcritic import config
    from hmrcritic.cli import main

    monkeypatch.setenv("HMRCRITIC_MEMORY", str(tmp_path / "default"))
    default = MemoryStore()  # the default memory, which the bare hint would have wiped
    default.prototypes.add([_proto("keep-me", 5.0)])
    path = tmp_path / "my memory"
    MemoryStore(path, seed_starter=False)
    _spoil_embedding(path)
    with pytest.raises(AssetError, match="dim 512") as err:
        MemoryStore(path)
    argv = _hinted_command(str(err.value))
    assert argv[argv.index("--memory-dir") + 1] == str(path.resolve())
    assert f"export FILE --memory-dir {shlex.quote(str(path.resolve()))}" in str(err.value)
    assert main(argv) == 0
    assert MemoryStore(path).prototypes.count() == 0
    assert MemoryStore(config.memory_dir()).prototypes.count() == 1


def test_cli_hint_masks_credentials_and_says_so():
    from hmrcritic.memory.store import cli_hint

    hint = cli_hint("reset --yes", "/ignored", "http://alice:s3cret-pw@chroma.example:8000")
    assert "s3cret" not in hint and "alice" not in hint
    assert hint.startswith("`hmrcritic memory reset --yes --chroma-url 'http://***@chroma.example:8000'`")
    assert "credentials in place of ***" in hint
    assert cli_hint("reset --yes", "/m", "http://h:1") == "`hmrcritic memory reset --yes --chroma-url http://h:1`"


def test_server_memory_mismatch_hint_and_reset_from_the_environment(chroma_url, tmp_path, monkeypatch):
    """A server memory (HMRCRITIC_CHROMA_URL) with another embedding: the hint names the server, and
    `memory reset --yes` without --chroma-url resets the server memory the environment names (it dropped the
    local folder's collections instead, and failed on the mismatch it was asked to fix)."""
    import chromadb

    from hmrcritic.cli import main
    from hmrcritic.memory.store import _parse_chroma_url

    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", chroma_url)
    MemoryStore(tmp_path / "lock", seed_starter=False)
    host, port, _, _ = _parse_chroma_url(chroma_url)
    chromadb.HttpClient(host=host, port=port).get_collection("episodic_prototypes").modify(
        metadata={"embedding_id": "some-other-embedder", "embedding_dim": 512})
    with pytest.raises(AssetError, match="dim 512") as err:
        MemoryStore(tmp_path / "lock")
    assert _hinted_command(str(err.value)) == ["memory", "reset", "--yes", "--chroma-url", chroma_url]
    assert main(["memory", "reset", "--yes", "--memory-dir", str(tmp_path / "lock")]) == 0
    assert MemoryStore(tmp_path / "lock").prototypes.count() == 0


def test_refresh_sees_another_machines_calibration_and_content_on_a_server(chroma_url, tmp_path):
    """Two machines on one server (each its own lock folder): refresh() kept the collections fetched before,
    whose metadata is a snapshot, so the other machine's calibration stayed unseen and an upsert that kept the
    prototype count left the version stale."""
    a = MemoryStore(tmp_path / "a", chroma_url=chroma_url, seed_starter=False)
    a.prototypes.add([_proto("p0", 5.0)])
    b = MemoryStore(tmp_path / "b", chroma_url=chroma_url, read_only=True)
    assert b.version() == a.version() and b.calibration() is None
    a.set_calibration(_calibration())
    a.prototypes.add([_proto("p0", 7.0)])
    b.refresh()
    assert b.calibration() == _calibration()
    assert b.version() == a.version()


# ---- 2. a memory folder that cannot be written -----------------------------------------------------------
_READONLY_SCRIPT = textwrap.dedent("""
    import json, subprocess, sys
    from hmrcritic.cli import main
    from hmrcritic.memory import MemoryStore
    mem, export = sys.argv[1], sys.argv[2]
    out = {}
    def attempt(name, fn):
        try:
            fn()
            out[name] = "ok"
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    attempt("writer", lambda: MemoryStore(mem).rules.record_use(["starter-prior"], True))
    attempt("reader", lambda: MemoryStore(mem, read_only=True).version())
    attempt("new", lambda: MemoryStore(mem + "/inner/new"))
    for cmd in (["import", export], ["reset", "--yes"], ["calibration", "--clear"]):
        out[cmd[0]] = main(["memory", *cmd, "--memory-dir", mem])
    subprocess.run(["umount", mem], check=True)  # writable again: the same process can now open it
    attempt("writable_again", lambda: MemoryStore(mem).rules.record_use(["starter-prior"], True))
    print("RESULT " + json.dumps(out))
""")


def _run_on_read_only_folder(folder: Path, script: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``script`` with ``folder`` mounted read-only for it alone (a private mount namespace): the honest way
    to make a folder unwritable for root, who ignores permission bits. Skips where that cannot be done."""
    unshare = shutil.which("unshare")
    mount = ('mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"')
    if unshare is None:
        pytest.skip("no `unshare` to mount a folder read-only")
    probe = subprocess.run([unshare, "-rm", "sh", "-c", mount + "", "sh", str(folder), "sh", "-c",
                            f"! touch {shlex.quote(str(folder / 'probe'))} 2>/dev/null"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a folder read-only here (unshare -rm): {probe.stderr.decode()[:200]}")
    return subprocess.run([unshare, "-rm", "sh", "-c", mount, "sh", str(folder), sys.executable, str(script),
                           *args], capture_output=True, text=True, timeout=120)


def test_a_read_only_memory_folder_is_one_line_naming_it(tmp_path, capsys):
    """Chroma's raw "attempt to write a readonly database" (and a bare "Read-only file system" for reset) came
    out for every writer; now one line names the folder and says to give a writable --memory-dir. The folder is
    mounted read-only for the script alone (tests run as root, for whom permission bits change nothing)."""
    mem = tmp_path / "mem"
    store = MemoryStore(mem)
    store.export_json(tmp_path / "e.json")
    script = tmp_path / "ro.py"
    script.write_text(_READONLY_SCRIPT)
    proc = _run_on_read_only_folder(mem, script, str(mem), str(tmp_path / "e.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    err = proc.stderr
    for who in ("writer", "reader", "new"):
        assert out[who].startswith("UnwritableMemoryError: "), (who, out[who])
        assert str(mem) in out[who] and "--memory-dir" in out[who], (who, out[who])
    assert "is not writable" in out["writer"] and "readonly database" in out["writer"]
    assert "copy the folder somewhere writable" in out["reader"]
    assert "cannot create the memory folder" in out["new"]
    assert out["import"] == out["reset"] == out["calibration"] == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 3, err[-2000:]
    for line in lines:
        assert f"memory at {mem} is not writable" in line and "give a writable --memory-dir" in line, line
    assert "Traceback" not in err
    # a failed open left Chroma's half-started system cached for the folder: every later open in the process
    # failed with "'RustBindingsAPI' object has no attribute 'bindings'", even once the folder was writable
    assert out["writable_again"] == "ok", out["writable_again"]
    assert MemoryStore(mem, read_only=True).rules.get(["starter-prior"])[0].n_used == 1


def test_an_unwritable_file_elsewhere_inside_a_batch_is_not_blamed_on_the_memory(tmp_path):
    """Only a failure to write the memory's own files is reported as an unwritable memory."""
    store = MemoryStore(tmp_path / "m", seed_starter=False)
    with pytest.raises(PermissionError, match="elsewhere"), store._write():
        raise PermissionError(13, "Permission denied", str(tmp_path / "elsewhere"))


# ---- 3. a writer kept waiting by another -----------------------------------------------------------------
_HOLDER = textwrap.dedent("""
    import sys, time
    from hmrcritic.memory import MemoryStore
    store = MemoryStore(sys.argv[1], seed_starter=False)
    with store._write():
        print("held", flush=True)
        sys.stdin.readline()
""")


@pytest.fixture()
def write_lock_held(tmp_path):
    """``with write_lock_held(path) as pid:`` — another process holds the memory's write lock (one write batch)
    until the block ends."""
    import contextlib

    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)

    @contextlib.contextmanager
    def hold(path):
        proc = subprocess.Popen([sys.executable, str(script), str(path), "--some-flag"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "held"
            yield proc
        finally:
            proc.communicate("\n", timeout=60)

    return hold


def test_a_waiting_writer_says_who_holds_the_lock_and_the_timeout_says_what_to_do(
        tmp_path, monkeypatch, caplog, write_lock_held):
    from hmrcritic.memory import store as store_mod

    path = tmp_path / "m"
    store = MemoryStore(path)
    monkeypatch.setattr(store_mod, "LOCK_NOTE_AFTER_S", 0.3)
    monkeypatch.setenv("HMRCRITIC_MEMORY_LOCK_TIMEOUT", "1.5")
    with (write_lock_held(path) as holder, caplog.at_level("WARNING", logger="hmrcritic.memory"),
          pytest.raises(AssetError, match="stayed locked by another writer") as err):
        store.rules.record_use(["starter-prior"], success=True)
    msg = str(err.value)
    assert f"pid {holder.pid}" in msg and "holder.py" in msg and "--some-flag" in msg
    assert f"kill {holder.pid}" in msg and "HMRCRITIC_MEMORY_LOCK_TIMEOUT" in msg and "--memory-dir" in msg
    notes = [r.getMessage() for r in caplog.records if r.name == "hmrcritic.memory"]
    assert len(notes) == 1, notes
    assert f"pid {holder.pid}" in notes[0] and "waiting for it" in notes[0] and str(path.resolve()) in notes[0]
    assert not (path / ".write.json").exists()  # the holder's record goes with its lock
    assert store.rules.get(["starter-prior"])[0].n_used == 0


def test_a_writer_that_waited_writes_once_the_holder_is_done(tmp_path, monkeypatch, caplog, write_lock_held):
    import threading

    from hmrcritic.memory import store as store_mod

    path = tmp_path / "m"
    store = MemoryStore(path)
    monkeypatch.setattr(store_mod, "LOCK_NOTE_AFTER_S", 0.3)
    monkeypatch.setenv("HMRCRITIC_MEMORY_LOCK_TIMEOUT", "60")
    with caplog.at_level("WARNING", logger="hmrcritic.memory"):
        with write_lock_held(path) as holder:
            done = threading.Event()
            writer = threading.Thread(target=lambda: (store.rules.record_use(["starter-prior"], True), done.set()))
            writer.start()
            assert not done.wait(1.0)  # waiting for the holder
        writer.join(30)
    assert done.is_set() and store.rules.get(["starter-prior"])[0].n_used == 1
    notes = [r.getMessage() for r in caplog.records if r.name == "hmrcritic.memory"]
    assert len(notes) == 1 and f"pid {holder.pid}" in notes[0]


def test_a_batch_nested_through_another_store_on_the_folder_shares_the_lock(tmp_path, monkeypatch):
    """A second MemoryStore on the same folder writing inside the first's batch waited on its own process's
    lock until the timeout (and then blamed "another writer")."""
    monkeypatch.setenv("HMRCRITIC_MEMORY_LOCK_TIMEOUT", "1")
    a = MemoryStore(tmp_path / "m")
    b = MemoryStore(tmp_path / "m")
    with a._write():
        b.rules.record_use(["starter-prior"], success=True)
        a.prototypes.add([_proto("p0", 5.0)])
    assert a.rules.get(["starter-prior"])[0].n_used == 1 and b.prototypes.count() == 1
    assert a.version() == b.version() == MemoryStore(tmp_path / "m", read_only=True).version()


# ---- two stores on one folder in one process -------------------------------------------------------------
def test_a_second_store_on_the_folder_sees_calibration_and_content_without_refresh(tmp_path):
    """Writes through one store end a batch that every store on the folder notices; the collections they had
    fetched kept old metadata, so the other store reported the old calibration and — after an upsert that kept
    the prototype count — a stale version (the one recorded with scores)."""
    path = tmp_path / "m"
    a = MemoryStore(path, seed_starter=False)
    a.prototypes.add([_proto("p0", 5.0)])
    b = MemoryStore(path, read_only=True)
    assert b.version() == a.version() and b.calibration() is None
    a.prototypes.add([_proto("p0", 7.0)])
    assert b.version() == a.version()
    a.set_calibration(_calibration())
    assert b.calibration() == _calibration() and b.version() == a.version()
    fresh = subprocess.run([sys.executable, "-c", "import sys; from hmrcritic.memory import MemoryStore as M; "
                            "print(M(sys.argv[1], read_only=True).version())", str(path)],
                           capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == a.version()


# ---- 4. what an export carries besides the collections -------------------------------------------------
def _explored(mem: Path, split: str, ids: list[str], cal: list[str] = ()) -> None:
    from hmrcritic.agent.explore import _add_explored

    _add_explored(mem, split, ids, {"seed": 0})
    if cal:
        _add_explored(mem, split, list(cal), {}, key="calibration_group_ids")


def test_export_import_carries_the_explored_groups_guard_and_progress(tmp_path, capsys):
    """An imported memory lost explored_on.json, so it could be evaluated on its own training groups."""
    from hmrcritic.agent.explore import assert_not_explored, explored_record
    from hmrcritic.cli import main

    src = tmp_path / "src"
    MemoryStore(src).prototypes.add([_proto("p0", 5.0)])
    _explored(src, "train", ["train-0", "train-1"], cal=["train-2"])
    progress = {"runs": {"abc": {"rounds_done": [0]}}, "rounds_total": 1, "batches": ["abc:r0"]}
    (src / PROGRESS).write_text(json.dumps(progress))
    (src / EXPLORE_FILES[3]).write_text('{"batch_key": "abc:r0"}\n')
    out = tmp_path / "e.json"
    assert main(["memory", "export", str(out), "--memory-dir", str(src)]) == 0
    assert "the 3 group ids it was explored or calibrated on" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["explored_on"] == explored_record(src) and data["explore_progress"] == progress

    dst = tmp_path / "dst"
    assert main(["memory", "import", str(out), "--json", "--memory-dir", str(dst)]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["explored_groups"] == 3 and counts["explore_progress"] is True
    for gid in ("train-1", "train-2"):
        with pytest.raises(InputError, match="was explored"):
            assert_not_explored(dst, "train", [gid])
    assert_not_explored(dst, "val", ["val-1"])
    assert json.loads((dst / PROGRESS).read_text()) == progress
    assert not (dst / EXPLORE_FILES[3]).exists()  # the log is history, not meaning: it stays with its folder
    assert MemoryStore(dst, read_only=True).version() == MemoryStore(src, read_only=True).version()


def test_import_merges_the_guard_keeps_its_own_progress_and_reads_old_exports(tmp_path):
    from hmrcritic.agent.explore import explored_record

    src, dst = tmp_path / "src", tmp_path / "dst"
    a = MemoryStore(src)
    _explored(src, "train", ["train-0", "train-1"])
    (src / PROGRESS).write_text(json.dumps({"runs": {"theirs": {}}, "rounds_total": 5}))
    a.export_json(tmp_path / "e.json")
    b = MemoryStore(dst)
    _explored(dst, "train", ["train-1", "train-7"])
    _explored(dst, "val", ["val-0"])
    ours = {"runs": {"ours": {}}, "rounds_total": 2}
    (dst / PROGRESS).write_text(json.dumps(ours))
    counts = b.import_json(tmp_path / "e.json", overwrite=True)
    assert counts["explored_groups"] == 1 and counts["explore_progress"] is False
    rec = explored_record(dst)["splits"]
    assert rec["train"]["group_ids"] == ["train-1", "train-7", "train-0"] and rec["val"]["group_ids"] == ["val-0"]
    assert json.loads((dst / PROGRESS).read_text()) == ours
    # an export written before the records travelled: imports as before, and guards nothing new
    old = json.loads((tmp_path / "e.json").read_text())
    del old["explored_on"], old["explore_progress"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    fresh = MemoryStore(tmp_path / "fresh")
    counts = fresh.import_json(tmp_path / "old.json")
    assert counts["explored_groups"] == 0 and counts["explore_progress"] is False
    assert not (tmp_path / "fresh" / EXPLORED).exists() and not (tmp_path / "fresh" / PROGRESS).exists()


def test_a_malformed_or_unmergeable_guard_imports_nothing(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    a = MemoryStore(src, seed_starter=False)
    a.prototypes.add([_proto("p0", 5.0)])
    _explored(src, "train", ["train-0"])
    a.export_json(tmp_path / "e.json")
    data = json.loads((tmp_path / "e.json").read_text())
    data["explored_on"]["splits"]["train"]["group_ids"] = "train-0"  # not a list
    (tmp_path / "bad.json").write_text(json.dumps(data))
    b = MemoryStore(dst, seed_starter=False)
    before = b.version()
    with pytest.raises(InputError, match="malformed explored_on record.*nothing was imported"):
        b.import_json(tmp_path / "bad.json")
    assert b.version() == before and not (dst / EXPLORED).exists()
    # this memory's own record unreadable: the union cannot be written, so nothing is
    (dst / EXPLORED).write_text("{torn")
    with pytest.raises(InputError, match="unreadable exploration record"):
        b.import_json(tmp_path / "e.json")
    assert b.version() == before and (dst / EXPLORED).read_text() == "{torn"
    # and an export of a memory whose record is unreadable fails rather than silently dropping the guard
    with pytest.raises(InputError, match="unreadable exploration record"):
        b.export_json(tmp_path / "again.json")
    assert not (tmp_path / "again.json").exists()
