"""Review s34, re-read of round 1 (CLI side): bugs found in the new help wraps of cli.py and in
commands/memory.py and commands/doctor.py. Each test failed on the code as reviewed (written as strict xfails,
un-marked once fixed in the same session)."""

from __future__ import annotations

import os
import subprocess
import sys

from hmrcritic.cli import main


def test_a_search_query_with_a_lone_surrogate_is_answered(tmp_path, capsys):
    """``memory search $'knee \\xff bent'`` (a Latin-1 byte in a UTF-8 locale reaches Python as ``\\udcff``):
    embed_text embeds it as U+FFFD (hmrcritic.memory.embeddings, "memory search died on it"), but the new
    truncation note handed the raw query to the tokenizer, which raised "TextInputSequence must be str": exit 1,
    an unexpected-error line and no results."""
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(tmp_path / "mem", chroma_url="").close()
    rc = main(["memory", "search", "knee \udcff bent", "-k", "1", "--memory-dir", str(tmp_path / "mem")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "TypeError" not in captured.err
    assert captured.out.strip(), "no results printed"


def test_a_groups_help_drawn_with_debug_reads_as_without(tmp_path):
    """``hmrcritic memory --debug`` draws the group's help (no sub-command: no_args_is_help) exactly as
    ``hmrcritic memory`` does; it was drawn without the help wraps: plain help cut each command to "…" again,
    rich help kept the docstrings' source line breaks and drew ``--help <bool>``. A subprocess: main() leaves
    its wraps applied for the rest of a process."""
    env = {**os.environ, "HMRCRITIC_HOME": str(tmp_path / "home"), "COLUMNS": "80", "TYPER_USE_RICH": "0"}
    env.pop("HMRCRITIC_DEBUG", None)

    def drawn(*argv: str) -> str:
        res = subprocess.run([sys.executable, "-m", "hmrcritic", *argv], capture_output=True, text=True, env=env,
                             timeout=120)
        return res.stdout + res.stderr

    plain = drawn("memory")
    assert "hmrcritic memory [OPTIONS] COMMAND" in plain
    assert drawn("memory", "--debug") == plain


def test_another_typer_app_in_the_process_is_left_as_typer_draws_it(tmp_path):
    """After ``main(["--version"])`` (a notebook, a test suite, a tool embedding hmrcritic), another typer
    program's usage line and usage error said ``NAME`` and "Missing argument 'NAME'." where its typer says
    ``{name}`` and 'name': hmrcritic's display choice leaked into programs that are not hmrcritic. A subprocess:
    a fresh typer, which no earlier main() of this test process has wrapped."""
    script = """
import io, contextlib, typer
from typer.testing import CliRunner
other = typer.Typer()
@other.command()
def hello(name: str, count: int = 1) -> None:
    print(name, count)
runner = CliRunner()
before = runner.invoke(other, []).output
from hmrcritic.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["--version"]) == 0
after = runner.invoke(other, []).output
assert "{name}" in before, before
assert after == before, after
"""
    env = {**os.environ, "HMRCRITIC_HOME": str(tmp_path / "home"), "COLUMNS": "80"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_doctor_does_not_name_a_blank_variable_as_the_folders_chooser(tmp_path, monkeypatch):
    """``HMRCRITIC_MEMORY=" "`` is unset for config (``_env_path_value``: "a blank one is unset"), so the
    memory folder is ``<home>/memory``; with a file there the FAIL line said "set HMRCRITIC_MEMORY to a writable
    folder (or unset it)" — the variable that did not choose it — and not HMRCRITIC_HOME, which did."""
    from hmrcritic.commands.doctor import _folders

    home = tmp_path / "home"
    home.mkdir()
    (home / "memory").write_text("x")
    monkeypatch.setenv("HMRCRITIC_HOME", str(home))
    for name in ("HMRCRITIC_CACHE", "HMRCRITIC_DATA", "HMRCRITIC_RUNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HMRCRITIC_MEMORY", " ")
    res = _folders()
    assert res["ok"] is False
    assert "set HMRCRITIC_HOME to a writable folder" in res["error"], res["error"]
    assert "HMRCRITIC_MEMORY" not in res["error"], res["error"]
