"""Review s22, the dual memory's lifecycle: what a closed store lets go of, whose exploration records a reset may
delete, and what a read says once the disk filled up under Chroma. Each test failed before its fix."""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from hmrcritic.cli import main
from hmrcritic.errors import AssetError, InputError
from hmrcritic.memory.store import RESET_MARKER, MemoryStore


def _open_files() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used, gone by now
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
    return out


def _held_under(folder: str, wait_s: float = 3.0) -> list[str]:
    """Files under ``folder`` this process has open, once Chroma's own threads had ``wait_s`` to close theirs
    (its database connections close a moment after the system stops)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        held = [f for f in _open_files() if f.startswith(folder)]
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.05)


# ---- 1. close() lets go of what the store holds ----------------------------------------------------------------
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_closing_a_frozen_copy_lets_go_of_its_snapshot_and_files(tmp_path, monkeypatch):
    """A frozen copy holds its snapshot folder (``.in-use``) against ``runs prune`` for its store's life; close()
    left that descriptor and the copy's database file open until the garbage collector came by, so a notebook
    evaluating round after round (each with a frozen copy it closed) kept a snapshot held and two files open per
    round, and a prune could not remove any of them."""
    from hmrcritic.agent.explore import frozen_copy
    from hmrcritic.agent.runs import remove_if_unheld

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    src = MemoryStore(tmp_path / "m", chroma_url="")
    frozen = frozen_copy(src, root=tmp_path / "frozen")
    version = frozen.version()
    snapshot = str(frozen.path)
    assert any(f.startswith(snapshot) for f in _open_files())
    frozen.close()
    assert not _held_under(snapshot)  # frozen is still referenced here: no garbage collector involved
    assert frozen.version() == version  # used again, it opens the folder anew
    frozen.close()
    assert remove_if_unheld(snapshot)  # nothing holds it: a prune may remove it

    with frozen_copy(src, root=tmp_path / "frozen") as again:  # a store is a context manager: closed at the end
        assert again.version() == version
        snapshot = str(again.path)
    assert not _held_under(snapshot)
    src.close()


# ---- 2. a reset deletes only its own memory's exploration records -----------------------------------------------
def _explored(folder) -> None:
    (folder / "explored_on.json").write_text(json.dumps({"splits": {"train": {"group_ids": ["train-0"]}}}))
    (folder / "explore_progress.json").write_text(json.dumps({"runs": {}}))


def test_resetting_a_server_memory_keeps_the_exploration_records_of_the_memory_on_disk(chroma_url, tmp_path,
                                                                                        capsys):
    """A server memory keeps its exploration records in the local memory folder, in the files the folder's memory
    on disk keeps its own in. Following the hint for an empty server (``memory reset --yes --chroma-url URL``, on
    the default folder) deleted the explored memory on disk's guard and progress while its rules stayed: the
    groups it learned from could then be evaluated on. Now the reset is refused before anything is marked or
    dropped, and says what to do; on a folder of its own the server memory resets as before."""
    folder = tmp_path / "m"
    MemoryStore(folder, chroma_url="").close()  # a memory on disk, explored
    _explored(folder)
    assert main(["memory", "reset", "--yes", "--memory-dir", str(folder), "--chroma-url", chroma_url]) == 2
    err = capsys.readouterr().err
    assert "explored_on.json" in err and "folder of its own" in err and "nothing was reset" in err
    assert (folder / "explored_on.json").exists() and (folder / "explore_progress.json").exists()
    assert not (folder / RESET_MARKER).exists()
    MemoryStore(folder, chroma_url="", read_only=True).close()  # still opens: no reset was marked
    MemoryStore(folder, chroma_url=chroma_url, seed_starter=False).close()  # nor was the server memory's

    own = tmp_path / "server-records"
    assert main(["memory", "reset", "--yes", "--memory-dir", str(own), "--chroma-url", chroma_url]) == 0
    assert "memory reset at" in capsys.readouterr().out


def test_a_reset_on_disk_keeps_records_no_memory_on_disk_wrote(tmp_path, capsys):
    """The reverse: a folder that holds exploration records but no memory on disk holds a server memory's
    records; a reset on disk there deleted them (and created a memory on disk in their place)."""
    from hmrcritic.memory.store import holds_memory, resetting

    folder = tmp_path / "m"
    folder.mkdir()
    _explored(folder)
    assert main(["memory", "reset", "--yes", "--memory-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "Chroma server" in err and "nothing was reset" in err
    assert (folder / "explored_on.json").exists() and not (folder / RESET_MARKER).exists()
    assert not holds_memory(folder)
    with pytest.raises(InputError, match="--chroma-url"), resetting(folder, chroma_url=""):
        pass


# ---- 3. a read after the disk filled up mid-write names the memory and the disk ---------------------------------
def test_a_read_on_a_full_disk_names_the_memory_and_the_disk(tmp_path, monkeypatch):
    """When the disk filled while Chroma moved a write into its vector index, every later query of the collection
    failed, until there was room again, with Chroma's words only ("Error creating hnsw segment reader: Nothing
    found on disk", seen on a 6 MiB tmpfs): a critique ended there as an internal error. With room on the disk
    the error stays Chroma's own."""
    import shutil
    from collections import namedtuple

    import numpy as np
    from chromadb.api.models.Collection import Collection
    from chromadb.errors import InternalError

    store = MemoryStore(tmp_path / "m", chroma_url="")
    said = "Error executing plan: Internal error: Error creating hnsw segment reader: Nothing found on disk"

    def query(self, *args, **kwargs):
        raise InternalError(said)

    monkeypatch.setattr(Collection, "query", query)
    v = np.ones(69, dtype=np.float32) / np.sqrt(69)
    with pytest.raises(InternalError, match="Nothing found on disk"):  # plenty of space: not blamed on the disk
        store.prototypes.query(v)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, (10 << 30) - (1 << 20), 1 << 20))
    with pytest.raises(AssetError, match=r"memory at .*: Chroma failed to read it \(the disk holding it has 1\.0 MiB "
                                         r"free: Error executing plan.*free some space") as info:
        store.prototypes.query(v)
    assert str(tmp_path / "m") in str(info.value)
    store.close()


# ---- 4. an import file whose record lists are not lists --------------------------------------------------------
@pytest.mark.parametrize("spoil", [{"rules": None}, {"rules": [], "prototypes": 5}, {"rules": {"a": {}}}])
def test_an_import_whose_records_are_not_a_list_names_that_list(tmp_path, spoil):
    """``"rules": null`` was "malformed record calibration: TypeError: 'NoneType' object is not iterable" (the
    record named was the last one set, not the one that failed), and a dict of rules failed on rules[0] as an
    AttributeError on a str."""
    from hmrcritic.memory.embeddings import POSE_DIM, POSE_EMBEDDING_ID, TEXT_DIM, TEXT_EMBEDDING_ID

    data = {"format": "hmrcritic-memory", "schema": 1,
            "embeddings": {"semantic_rules": {"id": TEXT_EMBEDDING_ID, "dim": TEXT_DIM},
                           "episodic_prototypes": {"id": POSE_EMBEDDING_ID, "dim": POSE_DIM}}, **spoil}
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(data), encoding="utf-8")
    key = next(k for k, v in spoil.items() if not isinstance(v, list))
    store = MemoryStore(tmp_path / "m", chroma_url="")
    before = store.version()
    with pytest.raises(InputError, match=rf"'{key}' is not a list of records \(nothing was imported\)"):
        store.import_json(f)
    assert store.version() == before
    store.close()


# ---- 5. a memory folder deleted and made again in one process -------------------------------------------------
def test_a_memory_folder_deleted_to_start_over_opens_as_the_new_memory(tmp_path):
    """A store is freed only by the garbage collector (it and its rule memory refer to each other), so its
    Chroma system stayed cached after ``del store``; deleting the folder to start over (a notebook's
    ``shutil.rmtree``) and opening it again got that system: the new memory showed the deleted one's prototypes,
    and its first write failed with "lacks collection 'episodic_prototypes'; run `memory reset`"."""
    import shutil

    import numpy as np

    from hmrcritic.memory.schema import Prototype

    def proto(pid: str) -> Prototype:
        return Prototype(proto_id=pid, embedding=(np.ones(69) / np.sqrt(69)).tolist(), overall=5,
                         motion_structure=5, physical_feasibility=5, image_alignment=5)

    folder = tmp_path / "m"
    store = MemoryStore(folder, chroma_url="")
    store.prototypes.add([proto("old")])
    starter_version = MemoryStore(tmp_path / "fresh", chroma_url="").version()
    del store
    shutil.rmtree(folder)
    again = MemoryStore(folder, chroma_url="")
    assert again.prototypes.count() == 0 and again.version() == starter_version
    again.prototypes.add([proto("new")])
    assert [p["proto_id"] for p in again.prototypes.export_records()] == ["new"]
    again.close()
