"""`hmrcritic runs stats|prune` on a checkpoint database that is locked or damaged.

Both used to read as "no threads": stats showed 0 checkpoints, a dry run promised to remove none, and a real
prune deleted the run folders while every thread stayed behind; a damaged file gave a bare
``DatabaseError: file is not a database`` that named no file."""

from __future__ import annotations

import sqlite3

import pytest

from hmrcritic.agent import runs
from hmrcritic.cli import main
from hmrcritic.errors import AssetError


def _runs_root(tmp_path):
    root = tmp_path / "runs"
    (root / "groups" / "g1").mkdir(parents=True)
    (root / "groups" / "g1" / "inputs.npz").write_bytes(b"x")
    con = sqlite3.connect(root / "checkpoints.sqlite")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE checkpoints (thread_id TEXT)")
    con.execute("CREATE TABLE writes (thread_id TEXT)")
    con.execute("INSERT INTO checkpoints VALUES ('g1')")
    con.commit()
    con.close()
    return root


def test_a_locked_checkpoint_database_is_an_error_not_zero_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "DB_TIMEOUT_S", 0.1, raising=False)
    root = _runs_root(tmp_path)
    holder = sqlite3.connect(root / "checkpoints.sqlite", isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("DELETE FROM writes WHERE 0")
        with pytest.raises(AssetError, match=r"checkpoint database .*checkpoints\.sqlite is locked"):
            runs.runs_usage(root)
        with pytest.raises(AssetError, match="is locked"):
            runs.prune_runs(older_than_days=0, root=root)
    finally:
        holder.close()
    assert (root / "groups" / "g1").is_dir()  # the refused prune removed nothing
    assert runs.runs_usage(root)["parts"]["checkpoints"]["count"] == 1  # and once free, the thread is counted


def test_a_damaged_checkpoint_database_names_the_file(tmp_path, monkeypatch, capsys):
    root = tmp_path / "home" / "runs"
    root.mkdir(parents=True)
    (root / "checkpoints.sqlite").write_bytes(bytes(range(256)) * 20)
    with pytest.raises(AssetError, match=r"checkpoints\.sqlite is damaged"):
        runs.runs_usage(root)
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    assert main(["runs", "stats"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(root / "checkpoints.sqlite") in err
