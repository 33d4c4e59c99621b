"""Review of exploration's resume and re-run checks: an interrupted-then-resumed call ends with the memory of an
uninterrupted one, and a refused re-run names what differs.

Real groups (perturbed ground truth of a tiny generated split), the real agent graph and a real Chroma memory on
disk, as in test_explore_robustness (whose fixtures and helpers are reused).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_explore_robustness import _CAL, _copy, _interrupt_on, _state, train  # noqa: F401

from hmrcritic.agent import explore as ex
from hmrcritic.errors import InputError
from hmrcritic.memory.store import MemoryStore

pytestmark = pytest.mark.usefixtures("explore_prior")


def test_a_round_that_left_the_rules_alone_still_refits_the_calibration_on_resume(train, tmp_path):  # noqa: F811
    """The resumed call kept the earlier calibration whenever the rule records were what they were at the last
    fit, although a round had been explored since: an uninterrupted call refits after every round, on the groups
    after the new end (the calibration groups move with the explored ones). A round that recalls no rule (a
    memory without rules) or scores no group (only unrankable ones) leaves the rules alone; interrupted before
    its fit, the resumed memory kept the calibration of the groups the round had just explored, and said nothing."""
    def run(path, rounds, **kw):
        return ex.explore(MemoryStore(path, seed_starter=False), rounds=rounds, groups=train, **{**_CAL, **kw})

    one = tmp_path / "one"
    run(one, 1)
    run(one, 2)

    two = tmp_path / "two"
    run(two, 1)
    first = MemoryStore(two).calibration()
    with pytest.raises(KeyboardInterrupt):
        run(two, 2, progress=_interrupt_on("calibrate"))
    again = run(two, 2)
    assert again.rounds == [] and again.calibration is not None, again.calibration_note
    assert _state(two) == _state(one)
    assert MemoryStore(two).calibration() != first  # not vacuous: the round moved the calibration groups
    assert ex.explore(MemoryStore(two), rounds=2, groups=train, **_CAL).calibration is None  # nothing new


def test_an_empty_round_interrupted_before_its_fit_refits_on_resume(train, tmp_path):  # noqa: F811
    """The same with the starter rules: a round of groups that cannot be ranked is recorded (an empty round) and
    moves the calibration groups, but counts no rule use."""
    tie = [_copy(train[k], errors=np.full(8, 70.0 + k)) for k in (2, 3)]
    groups = [train[0], train[1], *tie, *train[2:]]
    kw = {**_CAL, "calibration_groups": 4}

    def run(path, rounds, **extra):
        return ex.explore(MemoryStore(path), rounds=rounds, groups=groups, **{**kw, **extra})

    one = tmp_path / "one"
    run(one, 1)
    rep = run(one, 2)
    assert rep.rounds[0].groups == 0 and rep.calibration is not None, rep.calibration_note

    two = tmp_path / "two"
    run(two, 1)
    with pytest.raises(KeyboardInterrupt):
        run(two, 2, progress=_interrupt_on("calibrate"))
    run(two, 2)
    assert _state(two) == _state(one)


def test_a_refused_rerun_on_given_groups_names_the_setting_that_differs(train, tmp_path):  # noqa: F811
    """On given groups (``groups=``), seed, source and group size do not change which group index i is, so a run
    with another seed explores the groups an earlier run learned from and is refused — but the refusal listed
    only batch size, error metric and start, and said "other settings (; 1 round(s) done)"."""
    kw = dict(split="train", groups=train[:4], rounds=1, batch_size=2, calibration_groups=0, merge_text=False)
    path = tmp_path / "m"
    ex.explore(MemoryStore(path), seed=0, **kw)
    with pytest.raises(InputError, match=r"other settings \(seed 0 \(now 1\); 1 round\(s\) done\)"):
        ex.explore(MemoryStore(path), seed=1, **kw)


def test_the_source_a_run_drew_from_decides_whether_another_run_meets_its_groups(tmp_path, monkeypatch):
    """``--source auto`` draws the model's groups when the model loads. The overlap check compared the source
    as written, so a later ``--source model`` run with another batch size explored the groups of an earlier
    ``auto`` run a second time (their rule uses counted twice) instead of being refused; and an ``auto`` run
    after a ``perturbed`` one must not be refused for groups it will not draw."""
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))  # a tiny train split of this test's own
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")
    kw = dict(split="train", rounds=1, num_generations=4, calibration_groups=0, merge_text=False, max_new_rules=0)
    path = tmp_path / "m"
    first = ex.explore(MemoryStore(path), batch_size=1, source="auto", **kw)
    assert first.source == "model"
    before = _state(path)
    with pytest.raises(InputError, match=r"already learned from train groups #0–#0 .*batch size 1 \(now 2\)"):
        ex.explore(MemoryStore(path), batch_size=2, source="model", **kw)
    assert _state(path) == before
    ex.explore(MemoryStore(path), batch_size=2, source="perturbed", **kw)  # other hypotheses: fine

    other = tmp_path / "other"
    ex.explore(MemoryStore(other), batch_size=1, source="perturbed", **kw)
    assert ex.explore(MemoryStore(other), batch_size=2, source="auto", **kw).source == "model"
