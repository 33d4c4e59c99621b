"""Session 36, a read-only re-read of the session's commits: each test (but one, which pins the behaviour matched)
failed on the code it read, as a strict xfail; the lead applied the proposed fixes and removed the marks."""

from __future__ import annotations

import pytest

from hmrcritic.errors import InputError


def test_export_refuses_an_empty_chroma_url_as_the_memory_commands_do(tmp_path, monkeypatch, capsys):
    """``--chroma-url "$URL"`` with URL unset reaches the command as ``""``. The memory commands refuse it
    (commands/memory.py ``check_chroma_url``: each read it its own way); ``export`` passes it on as ExportConfig's
    ``chroma_url=""``, the Python API's "the memory on disk, whatever HMRCRITIC_CHROMA_URL says" — so a script that
    meant the team's server memory scored every group against the default memory folder on disk instead, and the
    dataset looked as good as any. It should be refused before anything runs, as ``memory stats`` refuses it."""
    import hmrcritic.alignment.export as ex
    from hmrcritic import cli

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    reached = []

    def export(cfg, **_):
        reached.append(cfg.chroma_url)
        raise InputError("stand-in export reached")

    monkeypatch.setattr(ex, "export", export)
    code = cli.main(["export", "--split", "wild", "--chroma-url", "", "--out", str(tmp_path / "ds")])
    err = capsys.readouterr().err
    assert reached == [], f"export ran with chroma_url={reached[0]!r} (the disk memory, not the server's)"
    assert code == 2 and "--chroma-url is empty" in err, err


def test_memory_stats_refuses_an_empty_chroma_url(tmp_path, monkeypatch, capsys):
    """The behaviour the export test above asks for, as the memory commands already have it (passes today)."""
    from hmrcritic import cli

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    code = cli.main(["memory", "stats", "--chroma-url", ""])
    assert code == 2 and "--chroma-url is empty" in capsys.readouterr().err


@pytest.mark.parametrize("out_dir", ["", " "])
def test_reproduce_api_refuses_an_empty_out_dir(tmp_path, monkeypatch, out_dir):
    """``reproduce(out_dir=os.environ.get("RUN", ""))`` ran the whole loop into the current folder (Path("") is
    Path(".")): its lock, memory-*, export-*, models/ and results.json beside the caller's files — what this session
    refused for ``hmrcritic reproduce --out ""`` (hmrcritic.cli) stays open from Python, where ``load_model("")``
    already refuses an empty path for the same reason. ``" "`` made a folder named by a space."""
    import hmrcritic.alignment.reproduce as rp

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ran = []
    monkeypatch.setattr(rp, "_run", lambda name, p, out, model, progress: ran.append(out) or {})
    with pytest.raises(InputError, match="empty"):
        rp.reproduce("quick", out_dir=out_dir, progress=False)
    assert ran == [] and list(work.iterdir()) == []


_NO_USER = "~hmrcritic-no-such-user-s36"


@pytest.mark.parametrize("argv", [["memory", "stats", "--memory-dir", f"{_NO_USER}/m"],
                                  ["reproduce", "--quick", "--out", f"{_NO_USER}/r"]])
def test_a_tilde_user_of_no_account_is_one_input_error_line(tmp_path, monkeypatch, capsys, argv):
    """``--out ~someone/x`` (a typo of the user's name, or an account of another machine) failed as "error:
    RuntimeError: Could not determine home directory. (run with --debug for the traceback)", exit 1 — an internal
    error's form for a user's input, the path not named. config._expand already turns the same RuntimeError of an
    HMRCRITIC_* variable into one InputError line; expand_user_paths (every command's path options) did not."""
    from hmrcritic import cli

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and _NO_USER in err and "RuntimeError" not in err, err


def test_reproduce_api_names_a_tilde_user_of_no_account(tmp_path, monkeypatch):
    """This session's ``Path(out_dir).expanduser()`` (reproduce.py) raises Python's RuntimeError for ``~user`` of
    no account, where config._expand gives the InputError the API promises for a user's input."""
    import hmrcritic.alignment.reproduce as rp

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(rp, "_run", lambda *a: {})
    with pytest.raises(InputError, match="no user"):
        rp.reproduce("quick", out_dir=f"{_NO_USER}/r", progress=False)
