"""Session 36, third re-read of the path-argument changes (config.path_text / path_arg / expand_user at the Python
API's entries, cli._empty_paths_refused).

``reproduce(out_dir=...)`` was the one entry left on ``expand_user(str(out_dir))``: ``str()`` turns any object into
a name, so an int or bytes ``out_dir`` made a run folder named ``5`` / ``b'run'`` and ran the whole loop there
(before 7820ee7 ``Path(5)`` at least stopped with a TypeError before any folder was made). Every other entry goes
through ``config.path_arg``, which refuses them as InputError; ``MemoryStore`` took a server address as a folder
(the password in its error message). Both were strict xfails here until the lead applied the proposed fixes. The
rest pins what was checked and found right.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hmrcritic import config
from hmrcritic.errors import InputError


@pytest.fixture
def work(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HMRCRITIC_HOME", str(home))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.parametrize("bad", [5, b"run"])
def test_reproduce_refuses_an_out_dir_that_is_no_path(work, monkeypatch, bad):
    """``reproduce(out_dir=5)`` made ``./5`` (``b"run"``: ``./b'run'``), took its lock and ran the loop into it;
    as every other entry (``config.path_arg``) it is one InputError, and no folder is made."""
    from hmrcritic.alignment import reproduce as R

    ran = []
    monkeypatch.setattr(R, "_run", lambda name, p, out, model, progress: ran.append(out) or {})
    with pytest.raises(InputError, match="must be a path"):
        R.reproduce("quick", out_dir=bad, progress=False)
    assert not ran
    assert os.listdir(work) == []


# ------------------------------------------------------------------------------ checked and found right
def test_path_text_keeps_text_as_given_unless_it_starts_with_a_tilde(work):
    """A recorded setting (FinetuneConfig.data, compared by a resume of a state without a data hash) reads as
    before: only a leading ``~`` is changed; a PathLike becomes its text."""
    assert config.path_text("runs/../ds", "x") == "runs/../ds"
    assert config.path_text(Path("a") / "b", "x") == os.path.join("a", "b")
    assert config.path_text(Path(""), "x") == "."  # Path("") is Path("."): the current folder, as "." is
    assert config.path_text("~/ds", "x") == str(config._user_home()) + "/ds"


@pytest.mark.parametrize("bad", [b"x", 5, None])
def test_path_text_refuses_what_is_no_path(bad):
    with pytest.raises(InputError, match="must be a path"):
        config.path_text(bad, "thing")


def test_finetune_config_records_expanded_text_and_accepts_paths(work):
    from hmrcritic.alignment.finetune import FinetuneConfig

    cfg = FinetuneConfig(data=Path("ds"), out="o.pt", model=Path("~/m.pt"))
    assert (cfg.data, cfg.out) == ("ds", "o.pt")
    assert isinstance(cfg.model, str) and not cfg.model.startswith("~")


def test_memory_store_refuses_a_server_address_as_its_folder(work):
    """Pre-existing (not from the path-argument commits, which route the path through ``config.path_arg`` without
    this check): ``MemoryStore("http://u:pw@h:8000")`` is the folder ``./http:/u:pw@h:8000`` — a writable store
    makes a Chroma database there, a read-only one says "no memory at …/http:/u:pw@h:8000", password and all.
    ``HMRCRITIC_MEMORY`` of the same value is refused (``config.not_an_address``), the password masked."""
    from hmrcritic.memory import MemoryStore

    with pytest.raises(InputError, match="server address") as err:
        MemoryStore("http://u:pw@h:8000", read_only=True)
    assert "pw" not in str(err.value)
    assert os.listdir(work) == []
