"""Review s20, the dual memory as a user lives with it (big imports, a disk that fills up mid-write): each test
failed before its fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmrcritic.cli import main
from hmrcritic.memory.embeddings import POSE_DIM, POSE_EMBEDDING_ID, TEXT_DIM, TEXT_EMBEDDING_ID


def _export_file(path, n: int):
    """An export holding ``n`` prototypes (and no rules)."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(n, POSE_DIM))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    data = {"format": "hmrcritic-memory", "schema": 1,
            "embeddings": {"semantic_rules": {"id": TEXT_EMBEDDING_ID, "dim": TEXT_DIM},
                           "episodic_prototypes": {"id": POSE_EMBEDDING_ID, "dim": POSE_DIM}},
            "rules": [],
            "prototypes": [{"proto_id": f"p{i}", "embedding": v[i].tolist(), "overall": 5.0, "motion_structure": 5.0,
                            "physical_feasibility": 5.0, "image_alignment": 5.0} for i in range(n)]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _small_batches(monkeypatch, size: int = 50) -> None:
    """Chroma's batch size made small, so a few hundred prototypes are written in several batches (as 5k+ are)."""
    import chromadb.api.client

    monkeypatch.setattr(chromadb.api.client.Client, "get_max_batch_size", lambda self: size)


def test_a_big_import_with_json_prints_only_json(tmp_path, monkeypatch, capsys):
    """An import of more prototypes than one Chroma batch drew a progress bar with rich's default console, on
    stdout, whose last line rich prints even to a pipe: ``memory import big.json --json`` began with
    "writing episodic_prototypes ━━━ 100%" and a script's json.loads failed on it."""
    _small_batches(monkeypatch)
    f = _export_file(tmp_path / "big.json", 120)
    assert main(["memory", "import", str(f), "--memory-dir", str(tmp_path / "m"), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["prototypes"] == 120


def _failing_upsert(monkeypatch, message: str, after_batches: int = 1) -> None:
    from chromadb.api.models.Collection import Collection
    from chromadb.errors import InternalError

    real = Collection.upsert
    calls = {"n": 0}

    def upsert(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after_batches:
            raise InternalError(message)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "upsert", upsert)


def test_a_disk_that_fills_during_an_import_is_one_line_naming_the_memory(tmp_path, monkeypatch, capsys):
    """SQLite's "database or disk is full" came out as ``error: InternalError: Query error: ...`` with exit code 1
    (an internal error), naming neither the memory nor what to do."""
    from hmrcritic.memory.store import MemoryStore

    mem = tmp_path / "m"
    MemoryStore(mem).close()
    _small_batches(monkeypatch)
    _failing_upsert(monkeypatch, "Query error: Database error: error returned from database: (code: 13) database "
                                 "or disk is full")
    f = _export_file(tmp_path / "big.json", 120)
    assert main(["memory", "import", str(f), "--memory-dir", str(mem)]) == 2
    err = capsys.readouterr().err
    assert f"memory at {mem.resolve()}" in err and "the disk is full" in err and "free some space" in err
    assert not err.startswith("error: InternalError")
    assert MemoryStore(mem, read_only=True).prototypes.count() == 50  # the first batch is kept, as the line says


def test_a_compaction_failure_on_a_full_disk_says_the_disk_is_full(tmp_path, monkeypatch):
    """When the disk filled while Chroma moved its log into the index, its error ("Error in compaction: Failed to
    apply logs to the metadata segment") did not mention the disk at all; the free space of the memory's disk
    now says it. With room on the disk the error is Chroma's own, unchanged."""
    import shutil
    from collections import namedtuple

    from chromadb.errors import InternalError

    from hmrcritic.errors import AssetError
    from hmrcritic.memory.schema import Prototype
    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(tmp_path / "m")
    _failing_upsert(monkeypatch, "Error in compaction: Failed to apply logs to the metadata segment", 0)
    protos = [Prototype(proto_id="p", embedding=[1.0] + [0.0] * (POSE_DIM - 1), overall=5, motion_structure=5,
                        physical_feasibility=5, image_alignment=5)]
    with pytest.raises(InternalError, match="compaction"):  # plenty of space: not blamed on the disk
        store.prototypes.add(protos)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, (10 << 30) - (1 << 20), 1 << 20))
    with pytest.raises(AssetError, match=r"memory at .*: Chroma failed to write it \(the disk holding it has 1\.0 "
                                         r"MiB free: Error in compaction"):
        store.prototypes.add(protos)
    store.close()


def _cut_short_reset(monkeypatch, folder, chroma_url=None):
    """``memory reset`` of the memory (on ``chroma_url``, else in ``folder``) killed once it marked the folder."""
    from hmrcritic.memory.store import RESET_MARKER, MemoryStore

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as mp:
        mp.setattr(MemoryStore, "drop_collections", killed)
        server = ["--chroma-url", chroma_url] if chroma_url else []
        assert main(["memory", "reset", "--yes", "--memory-dir", str(folder), *server]) == 1
    assert (folder / RESET_MARKER).exists()


def test_a_reset_cut_short_refuses_only_the_memory_it_was_resetting(tmp_path, monkeypatch, chroma_url):
    """A server memory's reset holds and marks the local memory folder too. Cut short, its marker refused the
    folder's own memory on disk with "run `hmrcritic memory reset --yes --memory-dir …` again", which deletes
    that memory's rules; a reset of the memory on disk cut short likewise refused the server's memory, with a
    hint to reset the server."""
    from hmrcritic.errors import AssetError
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.delenv("HMRCRITIC_CHROMA_URL", raising=False)
    folder = tmp_path / "m"
    MemoryStore(folder).close()
    MemoryStore(folder, chroma_url=chroma_url).close()

    _cut_short_reset(monkeypatch, folder, chroma_url)
    store = MemoryStore(folder)  # the memory on disk was not being reset: it opens, rules and all
    assert store.rules.count() > 0
    store.close()
    with pytest.raises(AssetError, match="a reset was cut short.*--chroma-url"):
        MemoryStore(folder, chroma_url=chroma_url)
    assert main(["memory", "reset", "--yes", "--memory-dir", str(folder), "--chroma-url", chroma_url]) == 0
    MemoryStore(folder, chroma_url=chroma_url).close()

    _cut_short_reset(monkeypatch, folder)  # and the other way round
    server = MemoryStore(folder, chroma_url=chroma_url)
    assert server.rules.count() > 0
    server.close()
    with pytest.raises(AssetError, match="a reset was cut short.*--memory-dir"):
        MemoryStore(folder)


def test_a_server_named_in_the_environment_is_only_read_by_stats(tmp_path, monkeypatch, capsys, chroma_url):
    """``memory stats`` with ``HMRCRITIC_CHROMA_URL`` opened the server writable whenever the local memory folder
    held no memory on disk, so a look at an empty server created and seeded a memory there (with ``--chroma-url``
    it is refused, as it was with the same variable when the local folder happened to hold a memory)."""
    import chromadb

    from hmrcritic.memory.store import COLLECTIONS

    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", chroma_url)
    monkeypatch.setenv("HMRCRITIC_MEMORY", str(tmp_path / "nothing-here"))
    assert main(["memory", "stats"]) == 2
    assert "no hmrcritic memory on the Chroma server" in capsys.readouterr().err
    port = int(chroma_url.rsplit(":", 1)[1])
    names = {c.name for c in chromadb.HttpClient(host="127.0.0.1", port=port).list_collections()}
    assert not names & set(COLLECTIONS)
    assert main(["memory", "reset", "--yes"]) == 0  # a server memory made knowingly is read as before
    capsys.readouterr()
    assert main(["memory", "stats", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["backend"] == "http" and st["read_only"] is True and st["rules"] > 0
