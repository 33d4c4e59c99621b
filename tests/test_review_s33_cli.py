"""Review s33 (CLI polish): ``--help`` drew ``<bool>`` beside every flag (``--json <bool>``, ``--help <bool>``), read
as an option wanting a value; ``finetune -n 20`` was told "(default 20)" for a value the user typed; and an output
that could not be written (``> /dev/full``) said only "No space left on device", read as the disk being full — and
with Python's buffered stdout it ended in "Exception ignored …" and exit 120."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from hmrcritic.cli import app, main


def _command_paths() -> list[list[str]]:
    """Every command and sub-command of the CLI, as the words that reach it (the root is [])."""
    def walk(cmd, path):
        yield path
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            if not sub.hidden:
                yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def _value_types(path: list[str]) -> set[str]:
    """The type labels (``<int>``, ``<path>``) of the options of ``path`` that take a value."""
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    ctx = cmd.context_class(cmd, info_name=path[-1] if path else "hmrcritic")
    labels = set()
    for param in cmd.get_params(ctx):
        if param.param_type_name == "option" and not param.is_flag and not param.hidden:
            label = param.display_type_rich(ctx=ctx)
            if label:
                labels.add(str(label))
    return labels


@pytest.fixture
def untouched_typer(monkeypatch):
    """main() adjusts typer's help drawing for the rest of the process (as it does in the console); put it back
    after each test so other tests see typer as it ships."""
    from test_review_s34_cli import put_typer_back

    put_typer_back(monkeypatch)


@pytest.mark.parametrize("columns", ["80", "120"])
@pytest.mark.parametrize("plain", [False, True], ids=["rich", "plain"])
def test_help_shows_no_type_beside_a_flag_and_keeps_the_types_of_options_with_values(
        columns, plain, monkeypatch, capsys, untouched_typer):
    from typer import core

    monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setenv("HMRCRITIC_HOME", os.environ.get("HMRCRITIC_HOME") or "/nonexistent-hmrcritic-home")
    if plain:  # TYPER_USE_RICH=0: typer's plain help (read once at import, so set on the module here)
        monkeypatch.setattr(core, "HAS_RICH", False)
    for path in _command_paths():
        assert main([*path, "--help"]) == 0, path
        shown = capsys.readouterr().out
        assert "--help" in shown, (path, shown)
        assert "<bool>" not in shown, (path, shown)
        for label in _value_types(path):
            assert label in shown, (path, label, shown)


def test_help_of_a_few_commands_keeps_value_types(monkeypatch, capsys, untouched_typer):
    """Spot checks of the table itself: the flag's row ends at its help, a value option's row has its type."""
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["memory", "stats", "--help"]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("│ --")}
    assert "<path>" in rows["--memory-dir"] and "<str>" in rows["--chroma-url"]
    assert rows["--json"].split()[2] == "Machine-readable"
    assert main(["finetune", "--help"]) == 0
    shown = capsys.readouterr().out
    rows = [line for line in shown.splitlines() if line.startswith("│ ")]
    resume = next(line for line in rows if "--no-resume" in line)
    assert "<" not in resume
    steps = next(line for line in rows if "--steps" in line)
    assert "<int>" in steps


# --------------------------------------------------------------------------- finetune -n 20


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    import torch
    from test_finetune import TINY

    from hmrcritic.hmr.diffusion import HMRDiffusion, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    save_model(HMRDiffusion(TINY), path)
    return path


def test_finetune_n_equal_to_the_default_is_said_as_asked_for(tiny_base, tmp_path):
    """``-n 20`` on a dataset of 4 hypotheses a group: the note said "(default 20)", a value the user typed."""
    from test_finetune import write_dataset

    from hmrcritic.alignment import finetune as ft

    data = write_dataset(tmp_path / "prefs", n_groups=3, N=4)
    common = ["finetune", "--data", str(data), "--model", str(tiny_base), "--steps", "1", "--batch-size", "2"]
    runner = CliRunner()
    typed = runner.invoke(app, [*common, "--out", str(tmp_path / "a.pt"), "-n", "20"])
    assert typed.exit_code == 0, typed.output
    assert "using G = 4 (asked for 20)" in typed.stderr
    assert "default 20" not in typed.stderr
    assert ft._generations_origin(20) == "default 20" and ft._generations_origin(30) == "asked for 30"  # Python
    unasked = runner.invoke(app, [*common, "--out", str(tmp_path / "b.pt")])
    assert unasked.exit_code == 0, unasked.output
    assert "using G = 4 (default 20)" in unasked.stderr


# --------------------------------------------------------------------------- stdout that cannot be written


def _run_into_dev_full(args: list[str], tmp_path, buffered: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["HMRCRITIC_HOME"] = str(tmp_path / "home")
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "w") as full:
        return subprocess.run([sys.executable, "-m", "hmrcritic.cli", *args], stdout=full, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=300)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", [["memory", "stats"], ["--version"], ["runs", "--help"]], ids=" ".join)
def test_output_to_a_full_device_says_stdout_failed(args, buffered, tmp_path):
    done = _run_into_dev_full(args, tmp_path, buffered)
    assert "writing the command's output to stdout failed: No space left on device" in done.stderr, done.stderr
    assert "(stdout is /dev/full)" in done.stderr or not os.path.exists("/proc/self/fd")
    assert "Exception ignored" not in done.stderr, done.stderr  # Python's own flush at exit: no second failure
    assert done.stderr.count("error:") == 1, done.stderr
    assert done.returncode == 2, done.stderr  # was 2 unbuffered, 120 buffered


def test_a_file_that_could_not_be_written_is_not_called_stdout(capfd):
    """An error without a file name while stdout is fine (a library writing through an open file on a full disk)
    keeps the plain line: stdout is checked, not assumed."""
    import errno

    from hmrcritic import cli

    assert not cli._stdout_failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert not cli._stdout_failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/tmp/x.npz"))


# --------------------------------------------------------------------------- the walk-through of --help


def test_a_command_in_its_group_list_is_one_paragraph_not_the_docstring_lines(monkeypatch, capsys, untouched_typer):
    """``runs --help`` listed prune as "…evaluation caches," then "then compact…" on a line of its own: the
    docstring's line breaks, kept in the list (not on the command's own page). Wide enough, each is one line."""
    monkeypatch.setenv("COLUMNS", "400")
    for group, name, end in [(["runs"], "prune", "never touched."), (["memory"], "export", "exploration progress)."),
                             (["memory"], "import", "when this memory has none."),
                             ([], "critique", "self-contained HTML report.")]:
        assert main([*group, "--help"]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"│ {name} "))
        assert row.rstrip(" │").endswith(end), (group, row)


def test_export_usage_does_not_ask_for_a_sub_command(monkeypatch, capsys, untouched_typer):
    """``export --split wild --out …`` is the command itself; its usage read "export [OPTIONS] COMMAND [ARGS]...",
    as if a sub-command were needed (validate, the only one, is optional)."""
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["export", "--help"]) == 0
    usage = next(line for line in capsys.readouterr().out.splitlines() if "Usage:" in line)
    assert usage.split("Usage:")[1].split(" export ")[1].strip() == "[OPTIONS] [COMMAND [ARGS]...]", usage
