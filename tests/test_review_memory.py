"""Review findings on the memory store: the write lock's holder record and messages, and what an export
carries when an exploration writes while it runs."""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest

from hmrcritic.errors import AssetError, InputError
from hmrcritic.memory import MemoryStore, Prototype
from hmrcritic.memory.store import EXPLORE_FILES, HOLDER_NAME, LOCK_NAME


def _proto(pid: str, overall: float) -> Prototype:
    v = np.ones(69) / np.sqrt(69)
    return Prototype(proto_id=pid, embedding=v.tolist(), overall=overall, motion_structure=5,
                     physical_feasibility=5, image_alignment=5)


def test_the_holder_record_masks_a_server_password_given_without_a_scheme(tmp_path, monkeypatch):
    """``--chroma-url admin:pw@host:port`` (accepted: the scheme is optional) kept its password in the
    holder record on disk, which a waiting writer prints: scrub only sees user-info after ``scheme://``."""
    monkeypatch.setattr(sys, "argv", ["/usr/bin/hmrcritic", "memory", "import", "f.json",
                                      "--chroma-url", "admin:s3cretpw@db.local:8000",
                                      "--chroma-url=admin:s3cretpw@db.local:8000"])
    path = tmp_path / "m"
    store = MemoryStore(path, seed_starter=False)
    with store._write():
        rec = json.loads((path / HOLDER_NAME).read_text())
    assert "s3cretpw" not in rec["command"], rec["command"]
    assert "db.local:8000" in rec["command"] and rec["command"].startswith("hmrcritic memory import")


def test_a_holder_on_another_host_is_not_offered_to_kill_here(tmp_path, monkeypatch):
    """A memory folder on a shared file system can be locked by a process on another machine; the timeout
    said `kill <its pid>`, which on this machine signals an unrelated process (or none)."""
    from filelock import FileLock

    from hmrcritic.io import atomic_write_json

    path = tmp_path / "m"
    store = MemoryStore(path)
    monkeypatch.setenv("HMRCRITIC_MEMORY_LOCK_TIMEOUT", "0.3")
    other = socket.gethostname() + "-elsewhere"
    lock = FileLock(str(path / LOCK_NAME))
    lock.acquire()
    try:
        atomic_write_json(path / HOLDER_NAME, {"pid": 4242, "host": other, "command": "hmrcritic explore",
                                               "since": "2024-01-01 00:00:00"})
        with pytest.raises(AssetError, match="stayed locked by another writer") as err:
            store.rules.record_use(["starter-prior"], success=True)
    finally:
        lock.release()
    msg = str(err.value)
    assert f"pid 4242 on {other}" in msg  # still says who holds it, and where
    assert "kill 4242)" not in msg, msg


def test_an_export_during_an_exploration_guards_every_group_its_contents_learned_from(tmp_path):
    """Exploration records a batch's groups in explored_on.json *before* it learns from them. The export read
    that record before the contents, so a batch recorded and applied in between left contents learned from
    groups the exported guard does not name (an importer could then be evaluated on them)."""
    from hmrcritic.agent.explore import _add_explored, assert_not_explored

    src = tmp_path / "src"
    store = MemoryStore(src)
    _add_explored(src, "train", ["train-0"], {})
    original = store.rules.export_records

    def exploration_runs_meanwhile():
        # another process: records its batch's groups, then learns from them (a rule use, a prototype)
        _add_explored(src, "train", ["train-9"], {})
        writer = MemoryStore(src)
        writer.rules.record_use(["starter-prior"], success=True)
        writer.prototypes.add([_proto("train-9-h0", 4.0)])
        return original()

    store.rules.export_records = exploration_runs_meanwhile
    out = tmp_path / "e.json"
    store.export_json(out)
    data = json.loads(out.read_text())
    assert any(r["rule_id"] == "starter-prior" and r["n_used"] == 1 for r in data["rules"])  # learned from train-9
    assert "train-9" in data["explored_on"]["splits"]["train"]["group_ids"]
    dst = tmp_path / "dst"
    MemoryStore(dst).import_json(out)
    with pytest.raises(InputError, match="was explored"):  # InputError: the CLI's one-line refusal, exit 2
        assert_not_explored(dst, "train", ["train-9"])
    assert not (dst / EXPLORE_FILES[2]).exists()


def test_the_export_counts_a_group_both_explored_and_calibrated_on_once(tmp_path):
    """A later exploration round can learn from groups a calibration was fitted on; the export's line said
    "the 2 group ids it was explored or calibrated on" for one such group."""
    from hmrcritic.agent.explore import _add_explored

    src = tmp_path / "src"
    store = MemoryStore(src, seed_starter=False)
    _add_explored(src, "train", ["train-0"], {}, key="calibration_group_ids")
    _add_explored(src, "train", ["train-0", "train-1"], {})
    _add_explored(src, "val", ["train-0"], {})  # another split: another group
    assert store.export_json(tmp_path / "e.json")["explored_groups"] == 3


@pytest.mark.parametrize("cut", ["after the drop", "inside the store's reset"])
def test_a_reset_cut_short_is_refused_until_it_is_run_again(tmp_path, capsys, monkeypatch, cut):
    """`memory reset` drops the collections, then deletes the exploration records. Cut short in between (Ctrl-C,
    a kill), the memory reopened empty with the old progress record, and the next exploration skipped its rounds
    as done. A reset now marks the folder first; a marked memory refuses to open, naming the command to run."""
    from hmrcritic.cli import main
    from hmrcritic.memory.store import RESET_MARKER

    path = tmp_path / "m"
    MemoryStore(path).prototypes.add([_proto("p1", 7.0)])
    (path / EXPLORE_FILES[1]).write_text(json.dumps({"rounds_total": 3}))

    def cut_short(*_a, **_k):
        raise KeyboardInterrupt

    target = "reset" if cut == "after the drop" else "_create_missing"
    with monkeypatch.context() as mp:
        mp.setattr(MemoryStore, target, cut_short)
        assert main(["memory", "reset", "--yes", "--memory-dir", str(path)]) == 130  # Ctrl-C's exit
    assert (path / RESET_MARKER).exists()
    with pytest.raises(AssetError, match=r"a reset was cut short .*memory reset --yes --memory-dir"):
        MemoryStore(path)
    capsys.readouterr()
    assert main(["memory", "reset", "--yes", "--memory-dir", str(path)]) == 0
    assert not (path / RESET_MARKER).exists() and not (path / EXPLORE_FILES[1]).exists()
    store = MemoryStore(path)
    assert store.prototypes.count() == 0 and store.rules.count() > 0


def test_the_store_reset_leaves_no_marker(tmp_path):
    from hmrcritic.memory.store import RESET_MARKER

    store = MemoryStore(tmp_path / "m")
    store.reset(seed_starter=False)
    assert not (tmp_path / "m" / RESET_MARKER).exists() and MemoryStore(tmp_path / "m").rules.count() == 0
