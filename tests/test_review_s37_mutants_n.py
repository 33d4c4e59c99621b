"""Session 37 mutation audit of ``hmrcritic/cli.py`` and ``hmrcritic/commands/demo.py``: the behaviours a mutant
changed while every existing test still passed, pinned here with cases whose answers come from the contracts
(exit codes 2 / 1 / 130 / 143, one masked line per error, empty paths refused, ``--debug`` anywhere on the line) and
the demo's documented options. Every case drives ``hmrcritic.cli.main`` in process with stand-in commands or a
stubbed demo: nothing is sampled, so the file runs in seconds."""

from __future__ import annotations

import errno
import sys
import warnings
from pathlib import Path

import pytest
import typer

from hmrcritic import cli
from hmrcritic.errors import HMRCriticError, InputError

SECRET = "hunter2Zq9xW"
ADDRESS = f"http://bob:{SECRET}@judge.example:8000"


@pytest.fixture()
def commands():
    """Stand-in commands on the real app, removed after: ``s37n-raise`` raises ``how["exc"]`` (or returns
    ``how["rv"]``), ``s37n-paths`` takes a ``Path | None`` option and a ``list[Path]`` argument."""
    how: dict = {}

    @cli.app.command("s37n-raise")
    def s37n_raise(flag: bool = typer.Option(False, "--flag")) -> None:
        how["ran"] = True
        if "warn" in how:  # the text Python's warning writer would print, formatted as main() set it up
            how["warned"] = warnings.formatwarning(how["warn"], UserWarning, "/x/hmrcritic/hmr/data.py", 785)
        if "exc" in how:
            raise how["exc"]

    @cli.app.command("s37n-paths")
    def s37n_paths(files: list[Path] = typer.Argument(None),
                   where: Path | None = typer.Option(None, "--where")) -> None:
        how["paths"] = (files, where)

    yield how
    cli.app.registered_commands[:] = [c for c in cli.app.registered_commands
                                      if c.name not in ("s37n-raise", "s37n-paths")]


def _err(capsys) -> str:
    return capsys.readouterr().err


# ---- exit codes ----------------------------------------------------------------------------------------------------
def test_a_user_error_exits_with_its_own_code(commands, capsys):
    """HMRCriticError carries its exit code (2 by default; a declined question's error may say 1): kept as given."""
    class Declined(HMRCriticError):
        exit_code = 1

    commands["exc"] = Declined("declined: nothing changed")
    assert cli.main(["s37n-raise"]) == 1
    assert _err(capsys) == "error: declined: nothing changed\n"


def test_ctrl_c_in_a_command_is_130_and_sigterm_143(commands, capsys):
    commands["exc"] = KeyboardInterrupt()
    assert cli.main(["s37n-raise"]) == 130
    assert _err(capsys).startswith("interrupted; ")

    @cli.app.command("s37n-term")
    def s37n_term() -> None:
        cli._TERMINATED.append(15)  # what SIGTERM's handler records before it raises
        raise cli.Terminated

    try:
        assert cli.main(["s37n-term"]) == 143
        assert _err(capsys).startswith("terminated (SIGTERM); ")
    finally:
        cli.app.registered_commands[:] = [c for c in cli.app.registered_commands if c.name != "s37n-term"]


def test_a_sigterm_caught_on_the_way_out_of_main_is_still_143(monkeypatch, capsys):
    """A signal between the command's own handling and the handler's removal reaches main's last except: 143 for
    SIGTERM (130 is Ctrl-C's), as the code in the middle of the command would have said."""
    def late_term(rc):
        cli._TERMINATED.append(15)
        raise cli.Terminated

    monkeypatch.setattr(cli, "_flush_stdout", late_term)
    assert cli.main(["--version"]) == 143

    def late_ctrl_c(rc):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_flush_stdout", late_ctrl_c)
    assert cli.main(["--version"]) == 130


def test_a_command_leaving_by_exit_130_after_sigterm_exits_143(commands, capsys):
    """export and finetune say what they kept and leave by SystemExit(130): after SIGTERM the code is 143, and
    without a SIGTERM it stays 130."""
    @cli.app.command("s37n-exit130")
    def s37n_exit130(term: bool = typer.Option(False, "--term")) -> None:
        if term:
            cli._TERMINATED.append(15)
        raise SystemExit(130)

    try:
        assert cli.main(["s37n-exit130"]) == 130
        assert cli.main(["s37n-exit130", "--term"]) == 143
    finally:
        cli.app.registered_commands[:] = [c for c in cli.app.registered_commands if c.name != "s37n-exit130"]


def test_typers_silent_exit_130_is_said_as_an_interrupt(commands, capsys):
    """typer turns Ctrl-C into Exit(130), which click returns: still exit 130 with the "interrupted" line."""
    commands["exc"] = typer.Exit(130)
    assert cli.main(["s37n-raise"]) == 130
    assert "interrupted; " in _err(capsys)


def test_exit_without_a_code_is_success(commands, capsys):
    commands["exc"] = typer.Exit()
    assert cli.main(["s37n-raise"]) == 0
    commands["exc"] = SystemExit(None)
    assert cli.main(["s37n-raise"]) == 0
    assert "error" not in _err(capsys)


def test_an_unanswered_question_is_a_refusal_exit_1_naming_yes(commands, capsys, monkeypatch):
    """Abort at the end of a non-terminal stdin (a script, cron): exit 1, not 2, and the line names --yes; at a
    terminal (a plain Abort) exit 1 without the hint."""
    import io

    commands["exc"] = typer.Abort()
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli.main(["s37n-raise"]) == 1
    assert "add --yes" in _err(capsys)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Tty(""))
    assert cli.main(["s37n-raise"]) == 1
    err = _err(capsys)
    assert "aborted: nothing changed" in err and "--yes" not in err


def test_an_unexpected_exception_is_exit_1_masked_and_points_at_debug(commands, capsys):
    commands["exc"] = RuntimeError(f"judge at {ADDRESS} fell over")
    assert cli.main(["s37n-raise"]) == 1
    err = _err(capsys)
    assert err.startswith("error: RuntimeError: judge at http://") and "run with --debug" in err
    assert SECRET not in err and "Traceback" not in err


def test_a_file_system_error_is_exit_2_and_names_both_paths(commands, capsys, tmp_path):
    """An OSError with two names (a rename) names both ("a -> b") and is a user error (2), not a crash (1)."""
    commands["exc"] = OSError(errno.EXDEV, "Invalid cross-device link", str(tmp_path / "a"), None,
                              str(tmp_path / "b"))
    assert cli.main(["s37n-raise"]) == 2
    assert _err(capsys) == f"error: Invalid cross-device link: {tmp_path / 'a'} -> {tmp_path / 'b'}\n"


def test_stdout_that_fails_at_the_last_flush_turns_success_into_exit_2(capsys, monkeypatch):
    """_flush_stdout: output that could not go out (``> /dev/full``) is not a success."""
    class Full:
        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self):
            raise ValueError("no descriptor")

    monkeypatch.setattr(cli, "_drop_stdout", lambda: None)
    monkeypatch.setattr(sys, "stdout", Full())
    assert cli._flush_stdout(0) == 2
    assert cli._flush_stdout(3) == 3  # a command's own failure code is kept
    monkeypatch.undo()
    assert "No space left on device" in _err(capsys)


def test_version_prints_and_exits_0(capsys):
    from hmrcritic import __version__

    assert cli.main(["--version"]) == 0
    out, err = capsys.readouterr()
    assert out == f"hmrcritic {__version__}\n" and err == ""


def test_a_group_named_alone_draws_the_same_help_as_with_help(tmp_path):
    """``hmrcritic memory`` (no_args_is_help) draws the group's help as ``memory --help`` does, mended the same way
    (command lines joined, cells folded): each in a fresh process, where the help mending is not yet applied."""
    import os
    import subprocess

    env = {**os.environ, "COLUMNS": "80", "HMRCRITIC_HOME": str(tmp_path / "home"), "TERM": "dumb"}
    env.pop("HMRCRITIC_DEBUG", None)

    def draw(*argv):
        code = f"import sys; from hmrcritic.cli import main; main({list(argv)!r}); sys.stdout.flush()"
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=120).stdout

    with_help = draw("memory", "--help")
    assert "Usage:" in with_help
    assert draw("memory").rstrip() == with_help.rstrip()


# ---- masking and --debug -------------------------------------------------------------------------------------------
def test_a_user_error_line_masks_a_password(commands, capsys):
    commands["exc"] = InputError(f"cannot reach {ADDRESS}")
    assert cli.main(["s37n-raise"]) == 2
    err = _err(capsys)
    assert err.startswith("error: cannot reach http://") and SECRET not in err


def test_a_usage_error_quoting_a_pasted_address_masks_it(commands, capsys):
    assert cli.main(["s37n-raise", ADDRESS]) == 2
    err = _err(capsys)
    assert "unexpected extra argument" in err and SECRET not in err


def test_a_settings_error_line_masks_a_password(commands, capsys):
    import pydantic

    class Settings(pydantic.BaseModel):
        port: int

    try:
        Settings(port=ADDRESS)
    except pydantic.ValidationError as exc:
        commands["exc"] = exc
    assert cli.main(["s37n-raise"]) == 2
    err = _err(capsys)
    assert err.startswith("error: invalid Settings setting: port") and SECRET not in err


def test_a_warning_is_one_masked_line_and_formatwarning_is_given_back(commands, capsys):
    before = warnings.formatwarning
    commands["warn"] = f"slow judge at {ADDRESS}"
    assert cli.main(["s37n-raise"]) == 0
    line = commands["warned"]
    assert line.startswith("warning: slow judge at http://") and line.endswith("\n") and SECRET not in line
    assert warnings.formatwarning is before


@pytest.mark.parametrize("where", ["flag", "flag after the command", "variable"])
def test_debug_shows_the_masked_traceback_of_a_user_error(commands, capsys, monkeypatch, where):
    """``--debug`` is an app option accepted after the command too; HMRCRITIC_DEBUG=1 is the same switch."""
    monkeypatch.delenv("HMRCRITIC_DEBUG", raising=False)
    argv = {"flag": ["--debug", "s37n-raise"], "flag after the command": ["s37n-raise", "--debug"],
            "variable": ["s37n-raise"]}[where]
    if where == "variable":
        monkeypatch.setenv("HMRCRITIC_DEBUG", "1")
    commands["exc"] = InputError(f"bad {ADDRESS}")
    assert cli.main(argv) == 2
    err = _err(capsys)
    assert "Traceback (most recent call last)" in err and SECRET not in err
    assert err.splitlines()[-1].startswith("error: bad http://")


# ---- empty paths ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "name"), [
    (["s37n-paths", "--where", "   "], "--where"),  # blank, not only empty
    (["s37n-paths", "--where", ""], "--where"),  # an optional path option (``Path | None``)
    (["s37n-paths", "a", ""], "FILES"),  # one empty item of a ``list[Path]`` argument (a path type inside list)
])
def test_an_empty_or_blank_path_is_refused_with_its_name(commands, capsys, argv, name):
    assert cli.main(argv) == 2
    assert _err(capsys).startswith(f"error: {name} is empty: give a path")
    assert "paths" not in commands


def test_a_dot_and_real_paths_pass_through(commands, capsys):
    assert cli.main(["s37n-paths", ".", "b", "--where", "."]) == 0
    assert commands["paths"] == ([Path("."), Path("b")], Path("."))


# ---- demo ----------------------------------------------------------------------------------------------------------
@pytest.fixture()
def stub_demo(monkeypatch, tmp_path):
    """The demo with a 3-scene test split and run_demo recorded (its progress said through ``say``)."""
    import hmrcritic.demo
    import hmrcritic.hmr.data

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    calls = {"load": 0, "run": []}

    def load_split(name, **kw):
        calls["load"] += 1
        return [object()] * 3

    class Result:
        def summary(self):
            return {"scenes": 3}

    def run_demo(out, scenes, n, rounds, batch, seed, say):
        calls["run"].append((scenes, n, rounds))
        say("progress line")
        return Result()

    monkeypatch.setattr(hmrcritic.hmr.data, "load_split", load_split)
    monkeypatch.setattr(hmrcritic.demo, "run_demo", run_demo)
    return calls


def test_demo_takes_as_many_scenes_as_the_split_holds(stub_demo, tmp_path, capsys):
    assert cli.main(["demo", "--scenes", "3", "--out", str(tmp_path / "d")]) == 0
    assert stub_demo["run"] == [(3, 16, 2)]
    assert cli.main(["demo", "--scenes", "4", "--out", str(tmp_path / "d")]) == 2


def test_demo_with_zero_explore_rounds_runs_and_zero_scenes_or_one_hypothesis_are_refused(stub_demo, tmp_path):
    """``--explore-rounds 0`` is documented (calibrates, learns no rules); ``--scenes`` is at least 1 and ``-n``
    at least 2 (a group needs two hypotheses to rank)."""
    assert cli.main(["demo", "--scenes", "1", "--explore-rounds", "0", "--out", str(tmp_path / "d")]) == 0
    assert stub_demo["run"] == [(1, 16, 0)]
    stub_demo["run"].clear()
    assert cli.main(["demo", "--scenes", "0", "--out", str(tmp_path / "d")]) == 2
    assert cli.main(["demo", "-n", "1", "--out", str(tmp_path / "d")]) == 2
    assert stub_demo["run"] == []


def test_demo_json_prints_only_json(stub_demo, tmp_path, capsys):
    import json

    assert cli.main(["demo", "--scenes", "1", "--json", "--out", str(tmp_path / "d")]) == 0
    assert json.loads(capsys.readouterr().out) == {"scenes": 3}


def test_demo_refuses_a_file_as_out_before_the_split_is_read(stub_demo, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert cli.main(["demo", "--scenes", "1", "--out", str(tmp_path / "f")]) == 2
    assert stub_demo["load"] == 0 and stub_demo["run"] == []
