"""Review s23, memory store, run folders and doctor: what a store that failed to open lets go of, what a closed
frozen copy says once its snapshot was pruned, and doctor on a Chroma address no command can use. Each test failed
before its fix."""

from __future__ import annotations

import json

import pytest

from hmrcritic.errors import AssetError
from hmrcritic.memory import store as store_mod
from hmrcritic.memory.store import MemoryStore


def _system_running(folder) -> bool:
    from chromadb.api.shared_system_client import SharedSystemClient

    return store_mod._chroma_path(str(folder)) in SharedSystemClient._identifier_to_system


def test_a_store_that_fails_to_open_lets_go_of_the_folder_at_once(tmp_path):
    """A store whose open failed after Chroma was started (here: a database without hmrcritic's collections,
    opened read-only) kept its claim on the folder, and with it the folder's Chroma system (database file,
    vector index, threads), until the garbage collector came by: the failed store is referenced by the
    exception's traceback and by its own rule memory."""
    import chromadb

    folder = (tmp_path / "not-a-memory").resolve()
    client = chromadb.PersistentClient(path=str(folder))  # a Chroma database, but none of our collections
    del client
    store_mod._drop_system(str(folder))
    with pytest.raises(AssetError, match="lacks collection") as failed:
        MemoryStore(folder, chroma_url="", read_only=True)
    assert failed.value is not None  # the traceback (and the store in it) is still referenced here
    assert store_mod._CLAIMS.get(str(folder), 0) == 0
    assert not _system_running(folder)


def test_a_closed_frozen_copy_whose_snapshot_was_pruned_says_it_is_gone(tmp_path, monkeypatch):
    """Once closed, a frozen copy no longer holds its snapshot, so `runs prune` may remove it; used again, the
    read-only store made a new, empty Chroma database in the removed folder (left behind for the next prune) and
    said the memory "lacks collection 'semantic_rules'; run `hmrcritic memory reset --yes --memory-dir
    <snapshot>`", an advice to reset a snapshot."""
    from hmrcritic.agent.explore import frozen_copy
    from hmrcritic.agent.runs import remove_if_unheld

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    src = MemoryStore(tmp_path / "m", chroma_url="")
    frozen = frozen_copy(src, root=tmp_path / "frozen")
    assert frozen.rules.all()
    frozen.close()
    assert remove_if_unheld(frozen.path)  # what a prune does with a snapshot nothing holds
    with pytest.raises(AssetError, match="is gone") as gone:
        frozen.rules.all()
    assert "reset" not in str(gone.value)
    assert not frozen.path.exists()  # nothing made again where the snapshot was
    frozen.close()
    src.close()


def test_doctor_fails_on_a_chroma_url_no_command_can_use(capsys, monkeypatch):
    """README: a value that cannot be read is an error naming the variable, "and `hmrcritic doctor` checks them
    all". HMRCRITIC_CHROMA_URL with a port that is no number (or another scheme than http/https) passed doctor,
    while every command opening the memory failed on it. The password stays masked."""
    from hmrcritic.commands.doctor import run_checks

    skip = ("python", "torch", "packages", "gl_render", "body_model", "checkpoint", "judge")
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "http://me:s3cretpw@127.0.0.1:80OO")
    report = run_checks(skip=skip)
    folders = {c["name"]: c for c in report["checks"]}["folders"]
    assert not report["ok"] and not folders["ok"]
    assert "HMRCRITIC_CHROMA_URL" in folders["error"]
    assert "s3cretpw" not in json.dumps(report)
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "http://127.0.0.1:8000")  # a usable one: fine (not contacted)
    assert run_checks(skip=skip)["ok"]
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "  ")  # blank: unset
    assert run_checks(skip=skip)["ok"]


def test_doctor_fails_on_an_api_key_the_judge_cannot_send(monkeypatch):
    """A key with a space or a typographic character inside was reported as "set but unusable" in the judge's
    settings, and doctor still said every check passed (exit 0), while a bad base URL fails the check: a script
    gating on `hmrcritic doctor` went on to VLM critiques that all failed on the key. The key is never shown."""
    from hmrcritic.commands.doctor import run_checks

    skip = ("python", "torch", "packages", "gl_render", "body_model", "checkpoint", "folders")
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-s3cret key-0123")
    report = run_checks(skip=skip)
    judge = {c["name"]: c for c in report["checks"]}["judge"]
    assert not report["ok"] and not judge["ok"]
    assert "HMRCRITIC_API_KEY" in judge["error"] and "position 10" in judge["error"]
    assert "s3cret" not in json.dumps(report) and "0123" not in json.dumps(report)
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-s3cretkey-0123")
    assert run_checks(skip=skip)["ok"]


def test_holding_writers_off_waits_for_another_threads_write_batch(tmp_path):
    """``writers_held_off`` shares a write batch *this thread* is in, but it told that from the folder's batch
    depth alone, which is per folder: a thread recording its scene (``critique_many`` with learning, 4 workers)
    while another thread's critique was in a learning batch went on without the lock, beside that batch and
    beside the other threads doing the same read-add-write of ``explored_on.json``."""
    import threading

    from hmrcritic.memory.store import writers_held_off

    store = MemoryStore(tmp_path / "m", chroma_url="")
    in_batch, end_batch, entered = threading.Event(), threading.Event(), threading.Event()

    def batch():
        with store._write():
            in_batch.set()
            end_batch.wait(30)

    def hold_off():
        with writers_held_off(store.path):
            entered.set()

    writer = threading.Thread(target=batch)
    writer.start()
    assert in_batch.wait(30)
    other = threading.Thread(target=hold_off)
    other.start()
    try:
        assert not entered.wait(0.5), "went on beside another thread's write batch"
    finally:
        end_batch.set()
        writer.join(30)
    assert entered.wait(30)  # and goes on once the batch is done
    other.join(30)
    with store._write(), writers_held_off(store.path):  # its own thread's batch is shared, not waited for
        pass
    store.close()
