"""Review s34 (``--help`` read as a new user would, in rich and plain help): plain help (``TYPER_USE_RICH=0``) ran
a command's example lines together into one paragraph and cut option names at their hyphens ("--ray-" /
"address"); rich help kept the docstrings' source line breaks in later prose paragraphs and dropped the indent of
example blocks; and a positional argument was ``{query}`` on the usage line, ``query`` in the table and in
"Missing argument 'query'." while the command's own text said QUERY."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from test_review_s33_cli import _command_paths  # every command and sub-command, as the words that reach it

from hmrcritic.cli import app, main


def _arguments(path: list[str]) -> list:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return [p for p in cmd.params if p.param_type_name == "argument" and not p.hidden]


WITH_ARGUMENTS = [p for p in _command_paths() if _arguments(p)]


@pytest.fixture
def stock_typer(monkeypatch):
    """main() adjusts typer's help drawing for the rest of the process (as it does in the console); put all of it
    back after each test so other tests see typer as it ships."""
    put_typer_back(monkeypatch)


def put_typer_back(monkeypatch) -> None:
    """Every typer/click internal that cli.main() wraps, restored by ``monkeypatch`` at the test's end."""
    from typer import core, rich_utils
    from typer._click import _textwrap, formatting
    from typer._click.core import Command

    monkeypatch.setattr(core.TyperOption, "display_type_rich", core.TyperOption.display_type_rich)
    monkeypatch.setattr(core.TyperArgument, "display_name_raw", core.TyperArgument.display_name_raw)
    monkeypatch.setattr(core.TyperArgument, "_usage_display_name", core.TyperArgument._usage_display_name)
    monkeypatch.setattr(formatting.HelpFormatter, "write_text", formatting.HelpFormatter.write_text)
    monkeypatch.setattr(_textwrap, "TextWrapper", _textwrap.TextWrapper)
    for name in ("_get_parameter_help", "_make_command_help", "_fix_linebreaks", "highlighter",
                 "negative_highlighter"):
        monkeypatch.setattr(rich_utils, name, getattr(rich_utils, name))
    monkeypatch.setattr(Command, "get_short_help_str", Command.get_short_help_str)


@pytest.fixture
def show(monkeypatch, capsys, stock_typer):
    """``show(path, columns, plain)``: the ``--help`` of ``path`` as main() prints it, as lines."""
    monkeypatch.setenv("HMRCRITIC_HOME", os.environ.get("HMRCRITIC_HOME") or "/nonexistent-hmrcritic-home")
    monkeypatch.setattr(sys, "argv", ["hmrcritic"])

    def shown(path, columns, plain):
        from typer import core

        monkeypatch.setenv("COLUMNS", str(columns))
        # TYPER_USE_RICH=0 is read once, at typer's import: set on the module here (a subprocess test below
        # checks the variable itself)
        monkeypatch.setattr(core, "HAS_RICH", not plain)
        assert main([*path, "--help"]) == 0, path
        return capsys.readouterr().out.splitlines()

    return shown


# --------------------------------------------------------------------------- plain help keeps example lines


EXAMPLES = {  # command: example lines as the docstring writes them, each one line of plain help at 80 columns
    "export": ["hmrcritic export --split wild --out runs/wild-prefs --workers 2",
               "hmrcritic export validate runs/wild-prefs"],
    "finetune": ["hmrcritic finetune --data runs/wild-prefs --out runs/aligned.pt"],
    "reproduce": ["hmrcritic reproduce --quick", "hmrcritic reproduce --out runs/repro"],
    "trace": ["hmrcritic trace --last", "hmrcritic trace --mermaid"],
}


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_plain_help_keeps_each_example_command_on_its_own_line(command, show):
    """``export --help`` in plain help read "Examples:   hmrcritic export --split wild … --out" / "runs/wild-prefs
    hmrcritic export …": four commands run together by click's rewrapping, none of them copyable."""
    lines = [line.strip() for line in show([command], 80, plain=True)]
    for example in EXAMPLES[command]:
        assert example in lines, (command, example, lines)


def test_plain_help_folds_a_long_example_under_itself_not_past_the_edge(show):
    """A kept line longer than the terminal is folded at a space, its rest indented under it (click leaves the
    lines of a ``\\b`` block as they are: past the terminal's edge)."""
    lines = show(["export"], 60, plain=True)
    start = lines.index("    hmrcritic export --split wild --out runs/wild-prefs")
    assert lines[start + 1] == "        --workers 2", lines[start:start + 2]


@pytest.mark.parametrize("columns", [60, 80])
def test_plain_help_lines_fit_and_no_word_is_cut_at_its_hyphen(columns, show):
    """Plain help broke "--ray-address" into "--ray-" / "address", "--vlm-model" into "--vlm-" / "model" and
    "OpenAI-compatible" likewise (click's wrapper breaks at hyphens; rich's does not): an option cut in two.
    Every line fits the terminal, and none ends with a word cut after its hyphen."""
    for path in _command_paths():
        for line in show(path, columns, plain=True):
            assert len(line) <= columns, (path, line)
            assert not (line.endswith("-") and line[-2:-1].isalnum()), (path, line)


def test_plain_help_from_the_environment_variable_keeps_the_examples(tmp_path):
    """The same through the real switch: ``TYPER_USE_RICH=0`` in a fresh process, stdout a pipe."""
    env = {**os.environ, "TYPER_USE_RICH": "0", "COLUMNS": "80", "HMRCRITIC_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "hmrcritic.cli", "finetune", "--help"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "╭" not in proc.stdout, proc.stdout  # plain help indeed
    lines = proc.stdout.splitlines()
    assert "    hmrcritic finetune --data runs/wild-prefs --out runs/aligned.pt" in lines, proc.stdout
    assert "Examples:" in [line.strip() for line in lines], proc.stdout


# --------------------------------------------------------------------------- rich help: prose joined, blocks kept


def test_rich_help_examples_keep_their_indent(show):
    """``critique``, ``finetune`` and ``trace`` (examples the only later paragraph) showed "hmrcritic …" flush
    with the prose: typer dedented the later paragraphs together. ``export`` kept them; now all do."""
    for command, example in [("critique", "hmrcritic critique --scene test:3 --no-render --out /tmp/c3"),
                              ("finetune", "hmrcritic finetune --data runs/wild-prefs --out runs/aligned.pt"),
                              ("trace", "hmrcritic trace --last"),
                              ("export", "hmrcritic export validate runs/wild-prefs")]:
        lines = [line.rstrip() for line in show([command], 120, plain=False)]
        assert f"   {example}" in lines, (command, lines)


def test_rich_help_prose_paragraph_breaks_where_the_terminal_does(show):
    """``reproduce --help`` at any width read "…skips finished stages, and a" / "changed setting re-runs…": the
    docstring's source line break, kept in rich help's later paragraphs (its first paragraph was joined)."""
    lines = [line.strip() for line in show(["reproduce"], 400, plain=False)]
    assert any(line.startswith("Stages are cached") and line.endswith("results.png.") for line in lines), lines
    lines = [line.strip() for line in show(["learning-curve"], 400, plain=False)]
    assert any(line.startswith("Interrupted,") and "(kept in --out). Example: `hmrcritic" in line
               for line in lines), lines


def test_rich_help_of_a_command_without_later_paragraphs_is_unchanged(show):
    """What was right stays: the export examples (already kept) and a one-paragraph command's page."""
    lines = [line.rstrip() for line in show(["export"], 80, plain=False)]
    i = lines.index(" Examples:")
    assert lines[i + 1:i + 3] == ["   hmrcritic export --split wild --num-generations 20 --out runs/wild-prefs",
                                  "   hmrcritic export --split wild --out runs/wild-prefs --workers 2"], lines


# --------------------------------------------------------------------------- argument names


@pytest.mark.parametrize("columns", [60, 80, 120])
@pytest.mark.parametrize("plain", [False, True], ids=["rich", "plain"])
def test_an_argument_is_named_in_capitals_on_the_usage_line_and_in_the_table(columns, plain, show):
    """``memory search [OPTIONS] {query}`` (and ``trace [OPTIONS] [run_id]``) on the usage line, ``query`` in
    the arguments table, while the text said "Rules nearest in meaning to QUERY": now ``QUERY`` in both, in
    brackets only when optional, in rich and plain help at every width."""
    assert WITH_ARGUMENTS, "no command takes an argument any more: this test checks nothing"
    for path in WITH_ARGUMENTS:
        lines = show(path, columns, plain)
        usage = " ".join(line.strip() for line in lines[:3] if line.strip())
        assert "{" not in usage, (path, usage)
        table = [line.strip("│ *") for line in lines]
        for arg in _arguments(path):
            name = arg.name.upper()
            assert (name if arg.required else f"[{name}]") in usage.split(), (path, name, usage)
            assert any(row.startswith(f"{name} ") for row in table), (path, name, lines)


def test_a_missing_argument_is_named_as_the_usage_line_names_it(capsys, stock_typer, monkeypatch):
    """The usage error names the argument as its usage line does (it said "Missing argument 'dst'.")."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["body", "convert", "a.pkl"]) == 2
    err = capsys.readouterr().err
    assert " body convert [OPTIONS] SRC DST\n" in err, err
    assert "Missing argument 'DST'." in err, err


# --------------------------------------------------------------------------- plain command lists


def test_plain_command_list_says_each_command_whole_as_rich_help_does(show):
    """Plain ``hmrcritic --help`` cut every command to a line and "...": "doctor  Check the installation:
    Python, torch, GL rendering,..." (rich help, and the command's page, say the whole first paragraph)."""
    text = " ".join(" ".join(show([], 80, plain=True)).split()).partition(" Commands: ")[2]
    assert text and "..." not in text, text
    assert ("doctor Check the installation: Python, torch, GL rendering, body model, folders, checkpoint, judge, "
            "settings.") in text, text
    text = " ".join(" ".join(show(["memory"], 60, plain=True)).split())
    assert "its exploration progress is taken when this memory has none. reset" in text, text
