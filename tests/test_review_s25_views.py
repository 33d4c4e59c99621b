"""Review s25, what a user looks at (the HTML report, `hmrcritic trace`, `hmrcritic runs`): each test failed
before its fix."""

from __future__ import annotations

import re

import pytest

from hmrcritic.agent.state import AgentConfig
from hmrcritic.agent.trace import TraceWriter
from hmrcritic.cli import main


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    return tmp_path


def test_trace_counts_every_change_of_a_long_revision(home, capsys):
    """The trace record keeps a revision's first 20 changes and ends the list in "… 26 more"; ``trace`` then
    shortened the line to its 400 characters and counted that marker as one change it left out: a revision of
    46 hypotheses (N = 64, builtin judge) read as "[12 changes, … 9 more]"."""
    changes = [f"h{i} overall {i % 9 + 0.25:.2f}→{i % 9 + 0.75:.2f}" for i in range(46)]
    scores = [{"index": i, "overall": 5.0} for i in range(46)]
    tw = TraceWriter("20260101-000000-000000-g64", "g64")
    tw.start(AgentConfig())
    tw.node("critique", {"critique": {"scores": scores, "rules_applied": []},
                         "reflections": [{"round": 0, "action": "revise", "changes": changes}]}, 0.004)
    tw.finish({"round": 1, "done": True})
    assert main(["trace", "--last"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "changes=" in ln)
    listed = re.findall(r"'h\d+ overall [^']*'", line)
    more = re.findall(r"… (\d+) more", line)
    assert listed and len(more) == 1, line  # shortened, said once
    assert len(listed) + int(more[0]) == len(changes), line


def test_a_carriage_return_in_a_group_id_or_an_error_does_not_reach_the_terminal(home, capsys):
    """``printable`` shows escape sequences as "?" but lets a carriage return, vertical tab and form feed through:
    a group id "g\\rX" printed "X" over the heading of ``trace``, and an endpoint's error body with a bare "\\r"
    wrote the rest of the error over the start of its ``--mermaid`` label."""
    tw = TraceWriter("20260101-000000-000000-g", "real-group\rspoofed")
    tw.start(AgentConfig())
    tw.node("render", {}, 0.001)
    tw.error(RuntimeError("endpoint said\rall fine\x0bdown\x0cpage\r\nnext line"))
    outs = {}
    for args in (["trace", "--last", "--mermaid"], ["trace", "--last"]):
        assert main(args) == 0
        outs[args[-1]] = capsys.readouterr().out
    for out in outs.values():
        assert not set("\r\x0b\x0c") & set(out), out
        assert re.search("said[? ]all fine", out) and "next line" in out  # shown, not acted on
    assert "real-group?spoofed" in outs["--last"]
    error = next(ln for ln in outs["--mermaid"].splitlines() if "run_error[" in ln)
    assert re.search(r'page +next line"\]:::error$', error), error  # one label, on one line


def test_an_error_cut_short_in_the_trace_says_so(home, capsys):
    """The trace keeps 500 characters of a run's error and ``--mermaid`` 160: both were cut mid-word with nothing
    saying so, and read as the whole message."""
    from hmrcritic.agent.trace import read_trace

    tw = TraceWriter("20260101-000000-000000-gerr", "gerr")
    tw.start(AgentConfig())
    words = " ".join(f"word{i}" for i in range(200))  # ~1,400 characters
    tw.error(RuntimeError(words))
    kept = read_trace(last=True)[-1]["error"]
    assert len(kept) <= 500 and kept.endswith("…") and kept[:-1] in f"RuntimeError: {words}"
    assert main(["trace", "--last", "--mermaid"]) == 0
    label = re.search(r'run_error\["([^"]*)"\]', capsys.readouterr().out).group(1)
    assert len(label) <= 160 and label.endswith("…"), label
    tw = TraceWriter("20260101-000000-000001-gerr", "gerr")  # a short one stays whole
    tw.start(AgentConfig())
    tw.error(RuntimeError("HTTP 401: invalid credentials"))
    assert read_trace(last=True)[-1]["error"] == "RuntimeError: HTTP 401: invalid credentials"


@pytest.mark.usefixtures("small_prior")
def test_prune_keeps_a_run_folder_a_critique_wrote_into_after_it_was_listed(tmp_path, monkeypatch):
    """prune dated the run folders when it listed them and removed them once it held their locks: a ``critique
    --fresh`` of an old group that ran and finished in between (its lock taken and let go before prune's) lost its
    new inputs and its finished checkpoint thread with the old folder. A folder is dated again once held."""
    import os
    import time

    from test_review_s13_api import _cfg, _group

    from hmrcritic.agent import runs
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer

    root = tmp_path / "runs"
    folder = root / "groups" / "stale"
    saver = open_checkpointer(root / "checkpoints.sqlite")
    s, h, _ = _group(41, sample_id="stale")
    critique_group(s, h, config=_cfg(), checkpointer=saver, run_dir=folder)
    old = time.time() - 10 * runs.DAY_S
    for p in (*folder.iterdir(), folder):
        os.utime(p, (old, old))
    real, ran = runs._held_for_removal, []

    def held_for_removal(p, *a, **kw):
        if p == folder and not ran:  # listed as stale; the critique runs before prune takes the folder's lock
            ran.append(critique_group(s, h, config=_cfg(), checkpointer=saver, run_dir=folder, fresh=True))
        return real(p, *a, **kw)

    monkeypatch.setattr(runs, "_held_for_removal", held_for_removal)
    out = runs.prune_runs(7, root=root)
    assert ran and out["removed"]["groups"] == 0 and out["removed"]["checkpoints"] == 0, out
    assert (folder / "inputs.npz").is_file()
    assert critique_group(s, h, config=_cfg(), checkpointer=saver, run_dir=folder).finished_earlier
