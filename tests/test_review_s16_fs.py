"""Review s16: a hostile file system and environment (full disks, odd mounts, odd HOME, logs that are not TTYs)."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest

from hmrcritic import io as hio


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_mid_write_names_the_file_keeps_the_old_one_and_leaves_no_temp(tmp_path, monkeypatch):
    from hmrcritic.cli import _os_error

    target = tmp_path / "scores.json"
    target.write_text("old")
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(OSError) as info:
        hio.atomic_write_text(target, "new" * 100)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(target)  # was None: the CLI said only "No space left on device"
    assert str(target) in _os_error(info.value)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_full_disk_on_append_names_the_log(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    hio.append_jsonl(log, {"step": 1})
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(OSError) as info:
        hio.append_jsonl(log, {"step": 2})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(log)


def test_unwritable_folder_names_the_file_asked_for_not_the_temporary_one(tmp_path, monkeypatch):
    target = tmp_path / "mem.json"

    def refuse(prefix="", suffix="", dir=None):
        name = os.path.join(dir, f"{prefix}x1y2{suffix}")
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        hio.atomic_write_text(target, "x")
    assert info.value.filename == str(target)  # was ".../.mem.json.x1y2.tmp"


def _open_inside(folder) -> list[str]:
    """The files this process holds open inside ``folder`` (a leaked descriptor of a write there points at its
    temporary file, renamed or deleted). Comparing the count of all the process's descriptors failed by chance:
    a garbage collection in between closed files that earlier tests had dropped (a store, a client), as would
    any other thread of the process opening or closing a file meanwhile."""
    inside, held = os.path.realpath(folder) + os.sep, []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing (the listing's own descriptor among them)
            continue
        if target.startswith(inside):
            held.append(target)
    return held


def test_a_file_system_that_refuses_chmod_still_gets_the_file(tmp_path, monkeypatch):
    """FAT/exFAT sticks and some network mounts answer chmod with EPERM: every write there failed (and leaked the
    temporary file's descriptor)."""
    def no_chmod(fd, mode):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "fchmod", no_chmod)
    for i in range(5):
        hio.atomic_write_text(tmp_path / "out.json", f"{i}")
    assert (tmp_path / "out.json").read_text() == "4"
    assert _open_inside(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_evaluation_progress_in_a_log_is_plain_lines_not_carriage_returns(capsys):
    """stderr to a file or CI: every batch was a ``\\r`` update on one ever-growing line."""
    from hmrcritic.commands.model import _eval_progress

    show = _eval_progress()  # capsys: stderr is not a terminal
    for done in range(4, 201, 4):
        show(done, 200)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[-1] == "  evaluated 200/200" and 2 <= len(lines) <= 11


@pytest.mark.parametrize("home", ["", "relative/home"])
def test_an_empty_or_relative_HOME_does_not_move_the_default_home(home, monkeypatch):
    """``HOME=`` put the toolkit's home at ``/.local/share/hmrcritic``; a relative HOME under the current folder."""
    import pwd

    from hmrcritic import config

    for var in ("HMRCRITIC_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", home)
    expected = os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".local", "share", "hmrcritic")
    assert str(config.home_dir()) == expected


def test_a_quoted_tilde_in_an_output_path_is_the_home_folder(tmp_path, monkeypatch, capsys):
    """``--out=~/x`` or a quoted ``'~/x'`` reaches the program as it is: ``--memory-dir`` expanded it but export
    files and ``--out`` folders made a folder named ``~`` in the current one."""
    from hmrcritic.cli import main

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert main(["memory", "export", "~/mem.json"]) == 0, capsys.readouterr().err
    assert (home / "mem.json").is_file()
    assert not (cwd / "~").exists()
    assert str(home / "mem.json") in capsys.readouterr().out


def test_commands_keep_their_options_after_the_tilde_wrapping():
    """The wrapped callbacks still show typer their parameters (help, names), and stay wrapped once."""
    from typer.testing import CliRunner

    from hmrcritic.cli import app

    res = CliRunner().invoke(app, ["critique", "--help"])
    assert res.exit_code == 0 and "--memory-dir" in res.output and "--out" in res.output
    takes_paths = {"demo", "train-base", "sample", "evaluate", "critique", "evaluate-critic", "explore",
                   "explore-eval", "learning-curve", "reproduce", "finetune"}
    assert {c.name for c in app.registered_commands if getattr(c.callback, "expands_user_paths", False)} >= takes_paths
    # the groups: their commands, and export's own callback (``hmrcritic export --out DIR`` runs it)
    groups = {g.name: g.typer_instance for g in app.registered_groups}
    assert getattr(groups["export"].registered_callback.callback, "expands_user_paths", False)
    for name in ("export", "memory", "body", "data"):
        for c in groups[name].registered_commands:
            assert getattr(c.callback, "expands_user_paths", False), (name, c.name)


def test_a_home_linked_to_nothing_is_named_not_created_nor_called_a_file(tmp_path, monkeypatch, capsys):
    """A home symlinked to a drive that is not mounted: ``data generate`` said "File exists: <link> (a file is where
    a folder is needed)" while the memory quietly made the missing target (on the disk under the mount point)."""
    from hmrcritic import config
    from hmrcritic.cli import main
    from hmrcritic.errors import InputError

    link, target = tmp_path / "home", tmp_path / "drive" / "hmrcritic"
    link.symlink_to(target)
    monkeypatch.setenv("HMRCRITIC_HOME", str(link))
    for var in ("HMRCRITIC_CACHE", "HMRCRITIC_DATA", "HMRCRITIC_MEMORY", "HMRCRITIC_RUNS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InputError, match="symbolic link"):
        config.memory_dir()
    assert main(["data", "generate", "--split", "test", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(link) in err and str(target) in err and "File exists" not in err
    assert not target.exists()
    target.mkdir(parents=True)  # once the drive is there, the same home works
    assert config.memory_dir() == link / "memory"


def test_a_closed_stdout_is_not_an_error_after_the_work_is_done(monkeypatch, capsys):
    """``hmrcritic memory rules >&-``: Python sets ``sys.stdout`` to None and ``sys.stdout.isatty()`` failed
    ("AttributeError: 'NoneType' object has no attribute 'isatty'", exit 1); a critique had finished by then."""
    import sys

    from hmrcritic.cli import main

    monkeypatch.setattr(sys, "stdout", None)
    assert main(["memory", "rules", "-k", "1"]) == 0
    assert "Error" not in capsys.readouterr().err


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_judge_model_variable_is_the_default_model(value, monkeypatch):
    from hmrcritic.config import JudgeSettings

    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", value)
    assert JudgeSettings().model == "gpt-4o-mini"


def test_a_folder_variable_from_a_windows_env_file_keeps_its_folder(tmp_path, monkeypatch):
    """``docker --env-file`` / a systemd EnvironmentFile edited on Windows: ``HMRCRITIC_HOME=/data/hm\\r`` made a
    new, empty home named with a carriage return beside the real one."""
    from hmrcritic import config

    monkeypatch.setenv("HMRCRITIC_HOME", f"{tmp_path}\r\n")
    monkeypatch.setenv("HMRCRITIC_RUNS", f"{tmp_path / 'runs'}\r")
    monkeypatch.delenv("HMRCRITIC_MEMORY", raising=False)
    assert config.memory_dir() == tmp_path / "memory"
    assert config.runs_dir() == tmp_path / "runs"


def test_a_read_only_runs_folder_says_where_to_go():
    """``runs stats`` on a read-only runs folder said only "cannot be used (attempt to write a readonly
    database)": SQLite writes beside its WAL database even to read it, and nothing said how to get past it."""
    import sqlite3

    from hmrcritic.agent.runs import checkpoint_error

    msg = str(checkpoint_error("/ro/runs/checkpoints.sqlite", sqlite3.OperationalError(
        "attempt to write a readonly database")))
    assert "/ro/runs/checkpoints.sqlite" in msg and "HMRCRITIC_RUNS" in msg and "writable" in msg
    other = str(checkpoint_error("/x.sqlite", sqlite3.OperationalError("no such column: y")))
    assert "HMRCRITIC_RUNS" not in other  # only where a writable folder is the way out


def test_the_python_api_reads_the_memory_variable_as_the_cli_does(monkeypatch):
    """AgentConfig (the notebook API) read HMRCRITIC_MEMORY raw: a Windows env file's trailing ``\\r`` made a
    second, empty memory the CLI never saw."""
    from hmrcritic.agent.state import AgentConfig

    monkeypatch.setenv("HMRCRITIC_MEMORY", "/tmp/s16-mem\r")
    assert AgentConfig().memory_dir == "/tmp/s16-mem"
    monkeypatch.delenv("HMRCRITIC_MEMORY")
    assert AgentConfig().memory_dir is None
