"""Session 35: the critic's memory on a Chroma server, walked as a user would (``memory stats|rules|search|export|
import|reset --chroma-url``, a critique and an exploration with ``HMRCRITIC_CHROMA_URL``, the server stopped, a wrong
port, a wrong password behind a basic-auth proxy, a URL with a path, two resets at once).

Each test fails on the code before the session's fix in ``hmrcritic/commands/memory.py``."""

from __future__ import annotations

import io
import socket
import sys

import pytest

from hmrcritic.cli import main
from hmrcritic.memory.store import MemoryStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("blank", ["", " "])
def test_an_empty_chroma_url_is_refused_not_read_as_the_memory_on_disk(blank, tmp_path, capsys, monkeypatch):
    """``--chroma-url "$URL"`` with the variable unset came in as ``""``: `memory reset --yes` then reset the memory
    on disk (here the named folder's: its starter rules deleted) instead of the server the script meant, while
    ``" "`` was tried as an address ("cannot reach the Chroma server at  :")."""
    monkeypatch.delenv("HMRCRITIC_CHROMA_URL", raising=False)
    path = tmp_path / "m"
    with MemoryStore(path) as store:
        n_rules = store.rules.count()
    assert n_rules > 0
    rc = main(["memory", "reset", "--yes", "--no-seed", "--chroma-url", blank, "--memory-dir", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and "--chroma-url is empty" in err and "nothing was done" in err
    with MemoryStore(path, read_only=True) as store:
        assert store.rules.count() == n_rules  # untouched
    for cmd in (["stats"], ["rules"], ["search", "knee"], ["export", str(tmp_path / "e.json")],
                ["calibration", "--clear"]):
        assert main(["memory", *cmd, "--chroma-url", blank, "--memory-dir", str(path)]) == 2, cmd
        assert "--chroma-url is empty" in capsys.readouterr().err, cmd
    assert not (tmp_path / "e.json").exists()


def test_reset_does_not_ask_about_a_server_it_cannot_reach(tmp_path, capsys, monkeypatch):
    """The question came first: "Delete all rules and prototypes in http://127.0.0.1:P? [y/N]: y", and only after
    the user agreed did the reset say that nothing answers there."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    url = f"http://bob:hunter2secret@127.0.0.1:{_free_port()}"
    rc = main(["memory", "reset", "--chroma-url", url, "--memory-dir", str(tmp_path / "lock")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the Chroma server at http://***@127.0.0.1:" in err
    assert "Delete all" not in err and "hunter2secret" not in err


def test_reset_question_says_it_is_a_server_and_names_the_records_it_deletes(chroma_url, tmp_path, capsys,
                                                                            monkeypatch):
    """"Delete all rules and prototypes in http://127.0.0.1:P?" did not say that a server memory was meant, nor
    that its exploration records in this machine's folder go with it."""
    from hmrcritic.memory.store import EXPLORE_FILES

    lock = tmp_path / "lock"
    lock.mkdir()
    (lock / EXPLORE_FILES[0]).write_text("{}")
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert main(["memory", "reset", "--chroma-url", chroma_url, "--memory-dir", str(lock)]) == 1
    err = capsys.readouterr().err
    assert f"Delete all rules and prototypes in the memory on the Chroma server at {chroma_url}" in err
    assert f"its exploration records in {lock.resolve()}" in err
    assert (lock / EXPLORE_FILES[0]).exists()  # "n": nothing deleted


def test_a_busy_server_reset_names_the_server(chroma_url, tmp_path, capsys, memory_held_elsewhere):
    """A second reset of a server memory said "memory at <local folder> is busy with …", naming only the lock
    folder, not the server the other job works on."""
    lock = tmp_path / "lock"
    with memory_held_elsewhere(lock):
        assert main(["memory", "reset", "--yes", "--chroma-url", chroma_url, "--memory-dir", str(lock)]) == 2
    err = capsys.readouterr().err
    assert f"memory at {chroma_url} (its folder on this machine, {lock.resolve()}" in err
    assert "busy with an exploration" in err


def test_an_import_into_a_server_memory_says_where_its_exploration_records_went(chroma_url, tmp_path, capsys):
    """The import said "imported … into http://127.0.0.1:P: … explored_groups: 2": the explored-groups guard read as
    being on the server, where it went into the local folder (another --memory-dir, another machine, sees none)."""
    import json

    src = tmp_path / "src"
    with MemoryStore(src, chroma_url="") as store:
        (src / "explored_on.json").write_text(json.dumps(
            {"splits": {"train": {"group_ids": ["train-000000", "train-000001"], "seed": 0, "source": "model",
                                  "num_generations": 4}}}))
        store.export_json(tmp_path / "mem.json")
    lock = tmp_path / "lock"
    assert main(["memory", "import", str(tmp_path / "mem.json"), "--chroma-url", chroma_url,
                 "--memory-dir", str(lock)]) == 0
    out = capsys.readouterr().out
    assert "explored_groups: 2" in out
    assert f"the 2 explored group ids (the evaluation guard) went into this machine's folder for the server " \
           f"memory, {lock.resolve()}, not onto the server" in out
    # a memory on disk keeps them in its own folder: nothing to say
    assert main(["memory", "import", str(tmp_path / "mem.json"), "--memory-dir", str(tmp_path / "disk")]) == 0
    assert "not onto the server" not in capsys.readouterr().out
