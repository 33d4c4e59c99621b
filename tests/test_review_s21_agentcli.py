"""Review s21 (agentcli): the critique agent as a user drives it — the ranked table ``critique`` prints and
``hmrcritic trace`` (``--last`` after a trace was deleted, a trace's file name, a run that crashed with a
multi-line error)."""

from __future__ import annotations

import os

import pytest

from hmrcritic.agent.api import ScoredGroup
from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.agent.state import AgentConfig
from hmrcritic.agent.trace import TraceWriter, format_trace, read_trace, traces_dir
from hmrcritic.cli import main


def _group(rationale: str) -> ScoredGroup:
    scores = [HypothesisScore(index=i, motion_structure=5, physical_feasibility=5, image_alignment=5,
                              overall=6 - i, rationale=rationale) for i in range(2)]
    return ScoredGroup(group_id="g", scores=scores, ranking=[0, 1])


def test_table_marks_a_long_rationale_as_cut(capsys):
    """The table cut each rationale at 90 characters before rich saw it: it filled the 90-wide column exactly,
    so rich added no "…" and a rationale of 200 characters read as complete."""
    from hmrcritic.commands.agent import _print_table

    long = "worst evidence: " + "reproj_rel=0.2 fraction of box diagonal, " * 5 + "THE-END"
    _print_table(_group(long))
    rows = [line for line in capsys.readouterr().out.splitlines() if "worst evidence" in line]
    assert len(rows) == 2
    assert all("…" in row for row in rows)
    assert not any("THE-END" in row for row in rows)


def test_table_shows_a_short_rationale_whole(capsys):
    from hmrcritic.commands.agent import _print_table

    _print_table(_group("all joints within limits."))
    rows = [line for line in capsys.readouterr().out.splitlines() if "within limits" in line]
    assert len(rows) == 2 and all("all joints within limits." in row and "…" not in row for row in rows)


@pytest.fixture()
def two_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    ids = []
    for k, gid in enumerate(("g-early", "g-late")):
        tw = TraceWriter(f"20260101-00000{k}-000000-{gid}", gid)
        tw.start(AgentConfig())
        tw.node("render", {}, 0.001)
        tw.finish({"round": 0, "done": True})
        ids.append(tw.run_id)
    os.utime(traces_dir() / f"{ids[0]}.jsonl", (1e9, 1e9))  # the earlier run is the older file
    return ids


def test_last_after_its_trace_was_deleted_says_so(two_runs, capsys):
    """``trace --last`` whose trace was removed by hand answered "run '<id>' not found": an id the user never
    typed. It says the last run's trace is gone and names the newest trace left."""
    early, late = two_runs
    (traces_dir() / f"{late}.jsonl").unlink()
    assert main(["trace", "--last"]) == 2
    err = capsys.readouterr().err
    assert "last run" in err and late in err and "deleted" in err
    assert early in err  # the trace that is left, to trace instead


def test_last_after_the_only_trace_was_deleted(two_runs, capsys):
    for rid in two_runs:
        (traces_dir() / f"{rid}.jsonl").unlink()
    assert main(["trace", "--last"]) == 2
    err = capsys.readouterr().err
    assert "last run" in err and "deleted" in err and "newest" not in err


def test_trace_accepts_the_file_name_ls_shows(two_runs, capsys):
    """The "not found" message points to ``ls`` of the traces folder, which lists ``<run id>.jsonl``; that
    name (tab-completed or pasted) was refused as "not found"."""
    early, _ = two_runs
    assert main(["trace", f"{early}.jsonl"]) == 0
    assert capsys.readouterr().out.startswith(f"run {early}")
    assert read_trace(f"{early}.jsonl")[0]["run_id"] == early


def test_a_multi_line_error_stays_indented_in_the_trace(tmp_path, monkeypatch):
    """A crash whose message runs over several lines (pydantic lists one field a line) printed its later lines
    at column 0, where only a run's heading stands."""
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    tw = TraceWriter("20260101-000009-000000-crash", "crash")
    tw.start(AgentConfig())
    tw.node("render", {}, 0.002)
    tw.error(ValueError("2 validation errors for GroupCritique\nscores.0.overall\n  Input should be <= 10"))
    text = format_trace(read_trace(last=True))
    lines = text.splitlines()
    assert lines[0].startswith("run ")
    assert all(line.startswith("  ") for line in lines[1:]), text
    assert "scores.0.overall" in text and "Input should be <= 10" in text


@pytest.mark.parametrize("where", ["link", "link/inside"])
def test_out_through_a_dangling_link_is_refused_before_the_critique(tmp_path, capsys, where):
    """``--out`` naming a link whose target is gone (an unmounted drive) passed the early check as a folder
    still to be made: the critique ran (with ``--learn``, the memory learnt and the run was checkpointed as
    finished) and only then failed as "File exists … a file is where a folder is needed"."""
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    rc = main(["critique", "--scene", "test:1", "-n", "4", "--no-render", "--max-reflections", "0",
               "--group-id", f"s21-dangling-{where.replace('/', '-')}", "--out", str(tmp_path / where)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert not any("render" in line and " ms" in line for line in err)  # the agent never ran
    assert err[-1].startswith("error: --out") and "link" in err[-1] and str(tmp_path / "gone") in err[-1]
    assert not (tmp_path / "gone").exists()
