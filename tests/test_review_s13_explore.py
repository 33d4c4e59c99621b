"""Review (s13) of exploration's error handling, argument validation and messages.

Real groups (perturbed ground truth of a tiny generated split), the real agent graph and a real Chroma memory on
disk, as in test_explore_robustness (whose fixtures are reused). Nothing here changes how a successful exploration
scores: the judges that fail are test doubles wrapped around the builtin one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_explore_robustness import train  # noqa: F401

from hmrcritic.agent import explore as ex
from hmrcritic.agent.judges import BuiltinJudge
from hmrcritic.errors import InputError, JudgeError
from hmrcritic.memory.store import MemoryStore

pytestmark = pytest.mark.usefixtures("explore_prior")

_KW = dict(calibration_groups=0, merge_text=False)


class _DropsOne(BuiltinJudge):
    """A judge whose critique leaves out its last hypothesis (a VLM answer cut short), on every revise too."""

    name = "drops-one"

    def critique(self, ctx):
        c = super().critique(ctx)
        if ctx.group_id.endswith("000001"):
            return c.model_copy(update={"scores": c.scores[:-1]})
        return c


class _Flaky(BuiltinJudge):
    """A judge whose endpoint fails on one group of the batch."""

    name = "flaky"

    def critique(self, ctx):
        if ctx.group_id.endswith("000001"):
            raise JudgeError(f"group {ctx.group_id}: endpoint down")
        return super().critique(ctx)


def test_a_final_critique_missing_a_hypothesis_fails_that_group_not_the_exploration(train, tmp_path):  # noqa: F811
    """With the revise rounds spent (``max_reflections=0`` here), a critique that scores 7 of 8 hypotheses was
    accepted by the graph and exploration fed it to the Spearman: ``ValueError: spearman: shapes (7,) and (8,)
    differ`` ended the whole run mid-batch. It is now that group's error and the batch goes on."""
    mem = MemoryStore(tmp_path / "m")
    s = ex.explore(mem, split="train", groups=train[:3], rounds=1, batch_size=3, judge=_DropsOne(),
                   max_reflections=0, **_KW)
    rep = s.rounds[0]
    assert rep.groups == 2
    assert [f["group_id"] for f in rep.failed] == [train[1].group_id]
    assert "still invalid" in rep.failed[0]["error"] and "missing [7]" in rep.failed[0]["error"]
    assert not (Path(mem.path) / ex.PENDING_FILE).exists() and len(ex.read_log(mem)) == 1


def test_a_judge_that_cannot_be_made_leaves_no_memory_folder(tmp_path):
    """``explore --judge foo --memory-dir M`` (or ``--judge vlm`` without an endpoint) was refused only after
    M had been created as a new memory with the starter rules; the settings are checked first."""
    with pytest.raises(InputError, match="unknown"):
        ex.explore(tmp_path / "m", judge="no-such-judge", **_KW)
    assert not (tmp_path / "m").exists()


def test_an_unlabelled_split_is_an_error_not_a_finished_exploration(tmp_path):
    """``explore --split wild`` ended with status 0, "explored 0 groups … stopped: split exhausted before round 1:
    sample wild-000000: has no SMPL labels": the split was not exhausted, it cannot be explored at all."""
    with pytest.raises(InputError, match="no SMPL labels"):
        ex.explore(tmp_path / "m", split="wild", rounds=1, batch_size=1, num_generations=2, source="perturbed",
                   **_KW)
    assert ex.read_log(tmp_path / "m") == []


def test_too_many_hypotheses_is_refused_before_the_memory_is_touched(tmp_path):
    """``--num-generations 2000`` read "split exhausted before round 1: num_generations must be in 1..1024" and
    status 0."""
    with pytest.raises(InputError, match="at most 1024 hypotheses"):
        ex.explore(tmp_path / "m", split="train", num_generations=2000, **_KW)
    assert not (tmp_path / "m").exists()


def test_a_round_with_failed_groups_says_so_and_that_they_are_not_retried(train, tmp_path):  # noqa: F811
    """A group whose judge failed mid-round is recorded in the round's ``failed`` and the round is done: a later
    call does not retry it. The round line read "round 1: 2 groups" for a batch of 3, as if all had been
    explored; it now says one failed and will not be retried (skipped, unrankable groups are not counted)."""
    from hmrcritic.commands.explore import explore_line

    mem = MemoryStore(tmp_path / "m")
    events: list = []
    s = ex.explore(mem, split="train", groups=train[:3], rounds=1, batch_size=3, judge=_Flaky(),
                   progress=lambda e, p: events.append((e, p)), **_KW)
    assert s.groups == 2 and [f["group_id"] for f in s.rounds[0].failed] == [train[1].group_id]
    line = next(explore_line(e, p) for e, p in events if e == "round")
    assert line.startswith("round 1: 2 groups (1 failed and will not be retried), mean ρ"), line
    again = ex.explore(mem, split="train", groups=train[:3], rounds=1, batch_size=3, **_KW)
    assert again.groups == 0 and again.resumed_rounds == 1  # not retried: what the line says
    ok = explore_line("round", {**events[-1][1], "failed": [{"group_id": "g", "error": "skipped: 1 hypothesis"}]})
    assert "failed" not in ok.split(", mean")[0]


@pytest.mark.parametrize("args, flag", [
    (["learning-curve", "--heldout-groups", "0"], "--heldout-groups"),
    (["learning-curve", "--batch-size", "0"], "--batch-size"),
    (["explore-eval", "--num-groups", "0"], "--num-groups"),
])
def test_learning_curve_and_explore_eval_refuse_empty_settings_before_any_work(args, flag, tmp_path, monkeypatch,
                                                                                capsys):
    """``learning-curve --heldout-groups 0`` explored every round (minutes) and then wrote a curve of NaN (not
    JSON); ``--batch-size 0`` failed after round 0's held-out groups were scored; ``explore-eval --num-groups 0``
    said the split had no held-out groups. Each is one error line naming the flag, before any work."""
    import hmrcritic.agent.learning_curve as lc
    from hmrcritic.cli import main

    def boom(*a, **k):
        raise AssertionError("the work started before the settings were checked")

    monkeypatch.setattr(lc, "learning_curve", boom)
    monkeypatch.setattr(lc, "explore_eval", boom)
    extra = ["--memory-dir", str(tmp_path / "m"), "--out", str(tmp_path / "out")] if args[0] == "learning-curve" else []
    rc = main(args + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and flag in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_revision_that_drops_a_hypothesis_records_the_change():
    """The reflection record's ``changes`` listed scores that moved and hypotheses added, but a revised critique
    that lost a hypothesis's score (a VLM answer cut short) recorded ``changes: []``, as if nothing changed."""
    from hmrcritic.agent.nodes import diff_critiques
    from hmrcritic.agent.schema import GroupCritique

    def crit(n):
        return GroupCritique(scores=[{"index": i, "motion_structure": 5, "physical_feasibility": 5,
                                      "image_alignment": 5, "overall": 5 + i, "rationale": "r"} for i in range(n)])

    assert diff_critiques(crit(3), crit(3)) == []
    changes = diff_critiques(crit(3), crit(2))
    assert "h2 removed (was 7.00)" in changes and any(c.startswith("top-1") for c in changes), changes


def test_a_final_critique_missing_a_hypothesis_reaches_neither_memory_nor_scores(train, tmp_path):  # noqa: F811
    """Outside exploration (critique, export) the same invalid final critique went on to critique.json, the
    memory (7 prototypes of 8) and the ScoredGroup; memory_write now fails the group before writing anything."""
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.errors import JudgeError

    mem = MemoryStore(tmp_path / "m")
    before = mem.version()
    g = train[1]
    with pytest.raises(JudgeError, match="still invalid"):
        critique_group(g.sample, g.hypotheses, judge=_DropsOne(), memory=mem, true_errors_mm=g.errors_mm,
                       group_id=g.group_id,
                       config=AgentConfig(max_reflections=0, learn=True, render=False))
    assert mem.version() == before


def test_a_group_failed_for_an_invalid_final_critique_is_retried_afresh(train, tmp_path):  # noqa: F811
    """The failure was raised in memory_write, after the checkpoint that says "memory_write next": a kept thread
    (export's default) replayed the same stored critique on every re-run, so the group could never recover. Its
    thread is discarded now, and a re-run with a judge that answers properly succeeds."""
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.errors import InvalidCritiqueError

    class DropsOnce(_DropsOne):  # the same judge (name, settings), cut short on its first answer only
        calls = 0

        def critique(self, ctx):
            self.calls += 1
            return super().critique(ctx) if self.calls == 1 else BuiltinJudge.critique(self, ctx)

    mem = MemoryStore(tmp_path / "m")
    g = train[1]
    judge = DropsOnce()
    kw = dict(judge=judge, memory=mem, true_errors_mm=g.errors_mm, group_id=g.group_id, run_dir=tmp_path / "run",
              config=AgentConfig(max_reflections=0, learn=False, render=False), keep=True)
    with pytest.raises(InvalidCritiqueError):
        critique_group(g.sample, g.hypotheses, **kw)
    res = critique_group(g.sample, g.hypotheses, **kw)
    assert sorted(s.index for s in res.scores) == list(range(len(g.errors_mm))) and not res.resumed
