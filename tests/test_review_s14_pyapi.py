"""Review s14 (pyapi): hmrcritic used from Python (a notebook) rather than the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

from hmrcritic.io import append_jsonl, atomic_write_jsonl, read_jsonl, record_checksum


def test_a_record_with_integer_keys_reads_back(tmp_path):
    """A record holding a dict with integer keys (a histogram ``{9: 1, 10: 2}``) was checksummed in the key order
    9, 10 but reads back with string keys "10", "9": the checksum no longer matched and ``read_jsonl`` silently
    dropped the record; keys of mixed types made ``append_jsonl`` raise a bare TypeError."""
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"hist": {9: 1, 10: 2}})
    append_jsonl(path, {"mixed": {"a": 1, 2: 2}})
    atomic_write_jsonl(tmp_path / "other.jsonl", [dict(read_jsonl(path)[0])])
    assert read_jsonl(path) == [
        {"hist": {"9": 1, "10": 2}, "checksum": record_checksum({"hist": {"9": 1, "10": 2}})},
        {"mixed": {"a": 1, "2": 2}, "checksum": record_checksum({"mixed": {"a": 1, "2": 2}})},
    ]
    assert len(read_jsonl(tmp_path / "other.jsonl")) == 1


def test_string_keyed_checksums_are_unchanged():
    """Records written before the fix keep their checksum (string keys only: the canonical text is the same)."""
    assert record_checksum({"b": [1, 2.5, None], "a": {"x": "y"}, "checksum": "ignored"}) == "de1d1916aa08c248"


def test_memory_package_exports_what_memorystore_returns_and_raises():
    """``from hmrcritic.memory import *`` gave ReadOnlyMemoryError but not its sibling UnwritableMemoryError (a
    read-only mount), nor the ScoreCalibration that ``MemoryStore.calibration()`` returns: a notebook catching or
    type-checking them had to know they live in ``memory.store`` / ``memory.schema``."""
    import hmrcritic.memory as memory
    from hmrcritic.memory.schema import ScoreCalibration
    from hmrcritic.memory.store import UnwritableMemoryError

    names: dict = {}
    exec("from hmrcritic.memory import *", names)
    assert names["UnwritableMemoryError"] is UnwritableMemoryError
    assert names["ScoreCalibration"] is ScoreCalibration
    assert [n for n in memory.__all__ if not hasattr(memory, n)] == []


def test_importing_every_module_is_side_effect_free(tmp_path):
    """Importing any hmrcritic module (a notebook's first cell) creates nothing under HMRCRITIC_HOME or the working
    folder, opens no socket, and leaves Chroma, pyrender, langchain-openai and the text model unloaded; the root
    package and the memory package load no torch (their docstrings promise cheap imports)."""
    code = (
        "import importlib, pkgutil, socket, sys\n"
        "socket.socket.connect = lambda *a: (_ for _ in ()).throw(AssertionError('network'))\n"
        "import hmrcritic, hmrcritic.memory\n"
        "assert 'torch' not in sys.modules, 'torch loaded by import hmrcritic / hmrcritic.memory'\n"
        "for m in pkgutil.walk_packages(hmrcritic.__path__, 'hmrcritic.'):\n"
        "    importlib.import_module(m.name)\n"
        "heavy = ('chromadb', 'pyrender', 'langchain_openai', 'sentence_transformers', 'ray')\n"
        "print(sorted(h for h in heavy if h in sys.modules))\n"
    )
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "HMRCRITIC_HOME": str(home), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["[]"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"] and list(cwd.iterdir()) == []
