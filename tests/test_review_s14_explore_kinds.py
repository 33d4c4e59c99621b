"""Exploration's ``failed`` records say what kind each is, and the explore CLI counts failed groups from that,
not from how a message begins (a judge error's text is whatever the endpoint said)."""

from __future__ import annotations

import pytest
from test_explore_robustness import train  # noqa: F401

from hmrcritic.agent import explore as ex
from hmrcritic.agent.judges import BuiltinJudge
from hmrcritic.commands.explore import explore_line
from hmrcritic.errors import JudgeError
from hmrcritic.memory.store import MemoryStore

pytestmark = pytest.mark.usefixtures("explore_prior")


class _QuotesEndpoint(BuiltinJudge):
    """A judge whose endpoint fails on one group with a message that happens to start like a skip."""

    name = "quotes-endpoint"

    def critique(self, ctx):
        if ctx.group_id.endswith("000001"):
            raise JudgeError("skipped: the endpoint dropped the request (quota)")
        return super().critique(ctx)


def test_a_failed_group_is_counted_whatever_its_message_says(train, tmp_path):  # noqa: F811
    events: list = []
    s = ex.explore(MemoryStore(tmp_path / "m"), split="train", groups=train[:3], rounds=1, batch_size=3,
                   judge=_QuotesEndpoint(), calibration_groups=0, merge_text=False,
                   progress=lambda e, p: events.append((e, p)))
    assert [(f["group_id"], f["kind"]) for f in s.rounds[0].failed] == [(train[1].group_id, "error")]
    line = next(explore_line(e, p) for e, p in events if e == "round")
    assert line.startswith("round 1: 2 groups (1 failed and will not be retried)"), line


def test_records_from_before_kinds_are_still_counted_by_their_message():
    base = {"round": 1, "groups": 2, "mean_spearman": 0.5, "short_groups": 0, "rules_used": 0, "rules_added": [],
            "rejected": [], "retired": [], "merged": [], "prototypes": 4, "seconds": 1.0}
    old = [{"group_id": "a", "error": "skipped: 1 hypothesis"}, {"group_id": "b", "error": "judge: endpoint down"},
           {"group_id": "c", "error": "prototypes skipped: gone"}]
    assert "(1 failed" in explore_line("round", {**base, "failed": old})


def test_every_cli_option_and_command_says_what_it_is():
    """``learning-curve --help`` listed --rounds, --batch-size, --heldout-groups, --num-generations, --tau and
    --seed with no text at all (and explore-eval's --seed): every option of every command has help now."""
    import typer

    from hmrcritic.cli import app

    missing: list[str] = []

    def walk(cmd, path: str) -> None:  # typer ships its own click: its classes, not click's, so by duck type
        for name, sub in getattr(cmd, "commands", {}).items():
            if not getattr(sub, "hidden", False):  # tests/test_core.py adds hidden helper commands to the app
                walk(sub, f"{path} {name}")
        if not hasattr(cmd, "commands") and not (cmd.help or "").strip():
            missing.append(path)
        missing.extend(f"{path} {p.opts[0]}" for p in cmd.params
                       if p.param_type_name == "option" and p.name != "help" and not (p.help or "").strip())

    walk(typer.main.get_command(app), "hmrcritic")
    assert not missing, missing


def test_ctrl_c_in_any_command_says_what_is_kept(monkeypatch, capsys):
    """typer turns Ctrl-C into a silent exit 130 itself, so the CLI's own "interrupted; … run the same command
    again to resume" line never showed for train-base, explore, reproduce, … (only 130 and nothing)."""
    import hmrcritic.agent.runs as runs
    from hmrcritic.cli import main

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "runs_usage", ctrl_c)
    assert main(["runs", "stats"]) == 130
    err = capsys.readouterr().err
    assert err.strip().startswith("interrupted;") and "run the same command again" in err
