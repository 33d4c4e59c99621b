"""Review s22 (CLI plumbing and small commands): a declined question, ``--debug`` warnings, ``memory rules`` in
an 80-column terminal."""

from __future__ import annotations

import io
import warnings

from hmrcritic.cli import main


# ---- a "n" to a question is a refusal (1), not an interrupt (130) ---------------------------------------------------
def test_declining_memory_reset_exits_1_and_says_nothing_was_deleted(monkeypatch, capsys, tmp_path):
    """``memory reset`` answered "n" exited 130, the code of Ctrl-C: a wrapper took the user's "no" for a killed
    run, and the line ("aborted") did not say the memory was left as it was."""
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["memory", "reset", "--memory-dir", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "nothing deleted" in err and "interrupted" not in err
    assert not (tmp_path / "m").exists()


def test_declining_runs_prune_exits_1_and_says_nothing_was_removed(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr("sys.stdin", io.StringIO("no\n"))
    assert main(["runs", "prune", "--older-than", "0"]) == 1
    cap = capsys.readouterr()
    assert "nothing removed" in cap.err and "removed:" not in cap.out


def test_no_answer_without_a_terminal_exits_1_and_says_to_add_yes(monkeypatch, capsys, tmp_path):
    """The end of stdin (a script, cron) is no interrupt either: 1, with the way to go ahead."""
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["runs", "prune", "--older-than", "0"]) == 1
    err = capsys.readouterr().err
    assert "\naborted: nothing changed" in err and "--yes" in err.splitlines()[-1]


class _CtrlC(io.StringIO):
    def readline(self, *args):
        raise KeyboardInterrupt


def test_ctrl_c_at_the_question_still_exits_130(monkeypatch, capsys, tmp_path):
    """Ctrl-C at the prompt reaches cli.main as typer's Abort (the interrupt kept as its context): still 130."""
    monkeypatch.setattr("sys.stdin", _CtrlC())
    assert main(["memory", "reset", "--memory-dir", str(tmp_path / "m")]) == 130
    assert "nothing changed" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_sigterm_at_the_question_exits_143(monkeypatch, capsys, tmp_path):
    """SIGTERM while the question waits was reported as Ctrl-C's 130 (the Abort branch never looked)."""
    import hmrcritic.cli as cli

    class Term(io.StringIO):
        def readline(self, *args):
            cli._TERMINATED.append(15)
            raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", Term())
    assert main(["memory", "reset", "--memory-dir", str(tmp_path / "m")]) == 143


# ---- --debug: warnings in Python's form, secrets masked ------------------------------------------------------------
def test_debug_warnings_mask_a_password_in_an_address(monkeypatch):
    """``--debug`` left warnings to Python's own writer: one quoting ``HMRCRITIC_CHROMA_URL`` (or any
    ``scheme://user:password@host``) printed the password that every error line and traceback masked."""
    from hmrcritic.cli import _warnings_as_lines

    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "http://alice:s3cr3t-pw@chroma.local:8000")
    with _warnings_as_lines(True):
        text = warnings.formatwarning("cannot reach http://alice:s3cr3t-pw@chroma.local:8000, retrying \x1b[2J",
                                      UserWarning, "/x/store.py", 12)
    assert "s3cr3t-pw" not in text and "\x1b" not in text
    assert "UserWarning" in text and "/x/store.py:12" in text  # still Python's form, with the place
    assert warnings.formatwarning is not None
    with _warnings_as_lines(False):
        assert warnings.formatwarning("http://bob:pw123456@h", UserWarning, "f.py", 1).startswith("warning: ")


# ---- memory rules: readable in an 80-column terminal ---------------------------------------------------------------
def test_memory_rules_in_an_80_column_terminal_keeps_its_text_readable(monkeypatch, capsys, tmp_path):
    """Eight columns in 80: rich levelled the wrappable ones and every rule's text came out 4 characters wide,
    one word-piece a line ("Left", "and", "righ", "t", "limb", "s of")."""
    mem = ["--memory-dir", str(tmp_path / "m")]
    assert main(["memory", "reset", "--yes", *mem]) == 0
    capsys.readouterr()
    monkeypatch.setattr("hmrcritic.commands.is_tty", lambda stream: True)  # a terminal 80 columns wide
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["memory", "rules", "-k", "2", *mem]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(len(line) <= 80 for line in lines)
    out = "\n".join(lines)
    assert "starter-asymmetry" in out and "different lengths" in out  # whole words of the text on one line
    assert "asymmetry > 0.25" in out and "symmetry,arms,legs" in out  # its condition and tags still shown


# ---- doctor: the agent's HMRCRITIC_* settings, as README promises ---------------------------------------------------
def test_doctor_reports_the_agent_settings_and_where_they_came_from(monkeypatch):
    """README: doctor reports "the agent's ``HMRCRITIC_*`` settings"; it reported only the judge, so
    ``HMRCRITIC_RULES_K=4`` or ``HMRCRITIC_USE_MEMORY=0`` left in a profile did not show."""
    import json

    from hmrcritic.commands import doctor

    monkeypatch.setenv("HMRCRITIC_RULES_K", "4")
    monkeypatch.setenv("HMRCRITIC_USE_MEMORY", "0")
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "alice:pw-s3cret-9@chroma.local:8000")  # no scheme
    report = doctor.run_checks(skip=tuple(name for name, _ in doctor.CHECKS if name != "judge"))
    judge = report["checks"][0]
    agent = judge["agent"]
    assert agent["values"]["rules_k"] == 4 and agent["values"]["use_memory"] is False
    assert agent["values"]["prototypes_k"] == 5  # a default, in effect
    assert {"HMRCRITIC_RULES_K", "HMRCRITIC_USE_MEMORY", "HMRCRITIC_CHROMA_URL"} <= set(agent["from_environment"])
    line = doctor._summary(judge)
    assert "HMRCRITIC_RULES_K=4" in line and "HMRCRITIC_USE_MEMORY=False" in line
    assert "pw-s3cret-9" not in json.dumps(report) + line


# ---- runs stats / prune: a file where the runs folder goes ----------------------------------------------------------
def test_runs_commands_refuse_a_file_where_the_runs_folder_goes(monkeypatch, capsys, tmp_path):
    """``HMRCRITIC_RUNS`` naming a file was an empty runs folder: "0 entries", "removed: 0 …", exit 0."""
    file = tmp_path / "runs.log"
    file.write_text("x")
    monkeypatch.setenv("HMRCRITIC_RUNS", str(file))
    for args in (["runs", "stats"], ["runs", "stats", "--json"], ["runs", "prune", "--yes"]):
        assert main(args) == 2, args
        cap = capsys.readouterr()
        assert cap.out == "" and "is a file" in cap.err and "HMRCRITIC_RUNS" in cap.err
    monkeypatch.setenv("HMRCRITIC_RUNS", str(file / "runs"))  # a file above it
    assert main(["runs", "stats"]) == 2 and str(file) in capsys.readouterr().err
    assert file.read_text() == "x"


def test_runs_commands_on_a_missing_runs_folder_report_it_empty(monkeypatch, capsys, tmp_path):
    """(A folder not made yet is no error: nothing ran here yet; nothing is created by looking.)"""
    import json

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "none" / "runs"))
    assert main(["runs", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_bytes"] == 0
    assert main(["runs", "prune", "--older-than", "0", "--yes", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["removed"].values()) == {0}


def test_debug_traceback_shows_terminal_controls_as_question_marks(capsys, tmp_path):
    """The error line showed an escape sequence of what was typed as "?", and the ``--debug`` traceback above it
    quoted the same message raw (scrubbed, not made printable): the terminal acted on it (clear screen)."""
    rc = main(["--debug", "memory", "rules", "--tags", "legs,\x1b[2Jx", "--memory-dir", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and "unknown tag(s)" in err
    assert "\x1b" not in err


def test_memory_rules_refuses_an_infinite_ucb_constant(capsys, tmp_path):
    """``--ucb-c inf`` passed ``min=0``: every Ψ was nan and ``--json`` printed ``NaN`` (not JSON)."""
    mem = ["--memory-dir", str(tmp_path / "m")]
    assert main(["memory", "reset", "--yes", *mem]) == 0
    capsys.readouterr()
    assert main(["memory", "rules", "--ucb-c", "inf", "--json", *mem]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "--ucb-c" in cap.err and "finite" in cap.err
    assert main(["memory", "rules", "--ucb-c", "2.5", "--json", "-k", "1", *mem]) == 0
