"""Exploration under interruption and degenerate input: what a re-run resumes, what is refused, what is said.

Real groups (perturbed ground truth of a tiny generated split), the real agent graph and a real Chroma memory
on disk; interruptions are a ``KeyboardInterrupt`` raised where Ctrl-C (or a kill) would land. The pose prior
is a small real GMM instead of the 20k-pose train split (speed only), as in test_explore.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hmrcritic.agent import explore as ex
from hmrcritic.errors import InputError
from hmrcritic.memory.store import MemoryStore

pytestmark = pytest.mark.usefixtures("explore_prior")


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    """8 labelled train groups of 8 hypotheses."""
    from hmrcritic.agent.groups import groups_from_perturbed_gt
    from hmrcritic.hmr.data import SceneSet, generate_split

    folder = generate_split("train", tmp_path_factory.mktemp("robust") / "train", n=8, quiet=True)
    return groups_from_perturbed_gt(SceneSet(folder), num_groups=8, num_generations=8, seed=0)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    from hmrcritic.agent.groups import groups_from_perturbed_gt
    from hmrcritic.hmr.data import SceneSet, generate_split

    folder = generate_split("test", tmp_path_factory.mktemp("robust-test") / "test", n=2, quiet=True)
    return groups_from_perturbed_gt(SceneSet(folder), num_groups=2, num_generations=8, seed=1)


def _copy(g, n: int | None = None, errors=None):
    """A copy of a labelled group with its first ``n`` hypotheses and/or other true errors."""
    from dataclasses import replace

    n = len(g.errors_mm) if n is None else n
    return replace(g, hypotheses={k: np.asarray(v)[:n].copy() for k, v in g.hypotheses.items()},
                   errors_mm=np.asarray(g.errors_mm if errors is None else errors, np.float64)[:n].copy(),
                   extra={})


def _state(path: Path) -> dict:
    """Everything an exploration leaves in a memory, read by a fresh store (as a new process would)."""
    m = MemoryStore(path)
    cal = m.calibration()
    return {"rules": sorted((r.rule_id, r.n_used, r.n_success, r.retired) for r in m.rules.all(include_retired=True)),
            "prototypes": sorted((p["proto_id"], round(p["overall"], 9)) for p in m.prototypes.export_records()),
            "calibration": None if cal is None else cal.model_dump(), "version": m.version(),
            "explored_on": json.loads((path / ex.EXPLORED_FILE).read_text()),
            "progress": json.loads((path / ex.PROGRESS_FILE).read_text()),
            "log": [r["batch_key"] for r in ex.read_log(m)], "pending": (path / ex.PENDING_FILE).exists()}


def _interrupt_on(event: str, n: int = 1):
    """A progress callback that raises KeyboardInterrupt (Ctrl-C) at the ``n``-th ``event``."""
    seen = {"n": 0}

    def progress(e, p):
        if e == event:
            seen["n"] += 1
            if seen["n"] == n:
                raise KeyboardInterrupt

    return progress


# ------------------------------------------------------------------------------------------ degenerate groups
def test_groups_that_cannot_be_ranked_are_skipped_with_a_reason(train, tmp_path):
    """A group whose hypotheses all tie on the true error (or has one hypothesis) kept its best and worst as
    *one* hypothesis, twice: the batch's prototype write failed on duplicate ids after its rules were written,
    and the pending plan failed the same way on every later run. Such a group cannot test a ranking (ρ is 0
    whatever the rules do): it is skipped with a reason, and counts against no rule."""
    from hmrcritic.commands.explore import explore_line

    tie = _copy(train[1], errors=np.full(8, 70.0))
    single = _copy(train[2], n=1)
    mem = MemoryStore(tmp_path / "m")
    events = []
    summary = ex.explore(mem, split="train", groups=[train[0], tie, single], rounds=1, batch_size=3,
                         calibration_groups=0, merge_text=False, progress=lambda e, p: events.append((e, p)))
    rep = summary.rounds[0]
    assert rep.groups == 1 and [f["group_id"] for f in rep.failed] == [tie.group_id, single.group_id]
    reasons = " | ".join(f["error"] for f in rep.failed)
    assert "same true pa_mpjpe" in reasons and "1 hypothesis" in reasons, reasons
    assert not (Path(mem.path) / ex.PENDING_FILE).exists()
    # only the rankable group left prototypes and rule uses
    protos = {p["proto_id"].split("#")[0] for p in mem.prototypes.export_records()}
    assert protos == {f"explore:{train[0].group_id}"}
    assert max(r.n_used for r in mem.rules.all()) == 1
    lines = [explore_line(e, p) for e, p in events if e == "group"]
    assert any("skipped: all 8 hypotheses have the same true pa_mpjpe" in ln for ln in lines), lines
    # a round of nothing but such groups is recorded as an empty round (refusing it blocked every later run of
    # the same settings at the same batch), and the exploration goes on past it
    before = mem.version()
    out = ex.explore(mem, split="train", groups=[tie, tie, train[0]], rounds=2, batch_size=2, calibration_groups=0,
                     merge_text=False)
    assert [r.groups for r in out.rounds] == [0, 1] and len(out.rounds[0].failed) == 2
    assert len(ex.read_log(mem)) == 3 and not (Path(mem.path) / ex.PENDING_FILE).exists() and mem.version() != before


def test_a_plan_with_a_prototype_twice_still_applies(tmp_path):
    """A pending plan written before picks were de-duplicated holds a prototype twice; resuming applies it."""
    from hmrcritic.memory.embeddings import POSE_DIM
    from hmrcritic.memory.schema import Prototype

    mem = MemoryStore(tmp_path / "m", seed_starter=False)
    proto = Prototype(proto_id="explore:g#h0", embedding=[0.1] * POSE_DIM, overall=5.0, motion_structure=5.0,
                      physical_feasibility=5.0, image_alignment=5.0, rationale="r", tags=[], source="train/g#h0",
                      error_mm=50.0).model_dump(mode="json")
    plan = {"batch_key": "k:r0", "sig": "k", "r": 0, "round": 1, "rule_deltas": {}, "new_rules": [],
            "prototypes": [proto, proto], "report": {"round": 1}}
    ex._commit(mem, plan, merge_text=False, retire=(8, 0.3))
    assert mem.prototypes.count() == 1 and not (Path(mem.path) / ex.PENDING_FILE).exists()


# --------------------------------------------------------------------------------------------- interruption
_CAL = dict(split="train", batch_size=2, tau=0.5, calibration_groups=2, merge_text=False, max_new_rules=0,
            retire_min_uses=1000)  # the rounds only update rule statistics: the rule fingerprint stays the same


def test_an_exploration_interrupted_before_its_calibration_refits_it_on_resume(train, tmp_path):
    """Ctrl-C after the last round and before the calibration fit was stored left the previous call's
    calibration behind. The rules' ids and conditions had not changed (only their statistics, which the judge
    weighs rules by), so the resumed call took it for fresh and kept it: its memory differed from an
    uninterrupted call's. The progress record now keeps the rule state each fit was made for."""
    one = tmp_path / "one"
    ex.explore(MemoryStore(one), rounds=1, groups=train, **_CAL)
    ex.explore(MemoryStore(one), rounds=2, groups=train, **_CAL)

    two = tmp_path / "two"
    ex.explore(MemoryStore(two), rounds=1, groups=train, **_CAL)
    first = MemoryStore(two).calibration()
    fingerprint = MemoryStore(two).rules_fingerprint()
    with pytest.raises(KeyboardInterrupt):
        ex.explore(MemoryStore(two), rounds=2, groups=train, progress=_interrupt_on("calibrate"), **_CAL)
    assert MemoryStore(two).rules_fingerprint() == fingerprint  # the case the fingerprint cannot tell
    again = ex.explore(MemoryStore(two), rounds=2, groups=train, **_CAL)
    assert again.rounds == [] and again.resumed_rounds == 2 and again.calibration is not None
    assert _state(two) == _state(one)
    assert MemoryStore(two).calibration() != first  # the test would pass vacuously if the fit could not change
    # and a call with nothing new to do keeps the calibration it has
    assert ex.explore(MemoryStore(two), rounds=2, groups=train, **_CAL).calibration is None


def test_calibration_groups_are_guarded_as_soon_as_the_fit_is_stored(train, tmp_path):
    """A kill right after the calibration was stored, before its groups were recorded, left a calibrated memory
    whose calibration groups could be evaluated on. They are recorded before the fit now."""

    class DiesAfterTheFit(MemoryStore):
        def set_calibration(self, calibration):
            super().set_calibration(calibration)
            raise KeyboardInterrupt

    path = tmp_path / "m"
    with pytest.raises(KeyboardInterrupt):
        ex.explore(DiesAfterTheFit(path), rounds=1, groups=train, **_CAL)
    assert MemoryStore(path).calibration() is not None
    with pytest.raises(InputError, match="calibrated"):
        ex.assert_not_explored(path, "train", [train[2].group_id])


def test_resuming_with_another_batch_size_is_refused_not_explored_twice(train, tmp_path):
    """Rounds are counted per setting signature: a call meant to resume but given another --batch-size started
    over from the first group, exploring groups the memory had learned from a second time (their rule uses
    counted twice), and exited 0."""
    from hmrcritic.commands.explore import explore_line

    kw = dict(split="train", groups=train[:6], calibration_groups=0, merge_text=False)
    path = tmp_path / "m"
    ex.explore(MemoryStore(path), rounds=1, batch_size=2, **kw)
    before = _state(path)
    with pytest.raises(InputError, match=r"already learned from train groups #0–#1 .*batch size 2 \(now 3\)"):
        ex.explore(MemoryStore(path), rounds=2, batch_size=3, **kw)
    with pytest.raises(InputError, match="error metric pa_mpjpe"):
        ex.explore(MemoryStore(path), rounds=1, batch_size=2, error_metric="mix", **kw)
    assert _state(path) == before
    # the same settings resume, and say so
    events = []
    more = ex.explore(MemoryStore(path), rounds=2, batch_size=2, progress=lambda e, p: events.append((e, p)), **kw)
    assert [r.round for r in more.rounds] == [2] and more.resumed_rounds == 1
    said = [explore_line(e, p) for e, p in events if e == "resumed"]
    assert said == ["resuming: round(s) 1 were done by an earlier run of this memory; continuing with round 2 of 2"]
    events.clear()
    ex.explore(MemoryStore(path), rounds=2, batch_size=2, progress=lambda e, p: events.append((e, p)), **kw)
    assert [explore_line(e, p) for e, p in events if e == "resumed"] == [
        "nothing to explore: round(s) 1–2 of 2 were done by an earlier run of this memory; give a larger --rounds "
        "to continue"]
    # other groups than the ones learned from are fine with other settings
    ex.explore(MemoryStore(path), rounds=1, batch_size=3, **{**kw, "groups": train[4:7]})


def test_calibration_passes_over_groups_another_run_learned_from(train, tmp_path):
    """The calibration groups follow this run's explored groups; where another run of the memory (other groups
    or seed) had learned from them, none were left and the call said "the split has no groups after the
    explored ones" — untrue. It takes the next groups the memory has not learned from, and says when it had
    fewer groups than asked."""
    path = tmp_path / "m"
    ex.explore(MemoryStore(path), split="train", groups=train[:6], rounds=3, batch_size=2, calibration_groups=0,
               merge_text=False)
    other = ex.explore(MemoryStore(path), split="train", groups=train[2:], rounds=1, batch_size=2,
                       calibration_groups=2, merge_text=False)
    assert other.calibration is not None, other.calibration_note
    assert other.calibration["first_group"] == train[6].group_id and other.calibration["groups"] == 2
    few = ex.explore(MemoryStore(tmp_path / "few"), split="train", groups=train[:3], rounds=1, batch_size=2,
                     calibration_groups=2, merge_text=False)
    assert few.calibration["groups"] == 1 and "fitted on 1 of the 2 groups asked" in few.calibration_note


def test_damaged_exploration_records_are_one_clear_error(train, tmp_path):
    """A progress or explored-groups record that is valid JSON but not an object (an edit, a bad restore) was an
    AttributeError traceback; it is an InputError that says what to do (deleting the progress record alone
    would explore the same groups again)."""
    path = tmp_path / "m"
    kw = dict(split="train", groups=train[:2], rounds=1, batch_size=2, calibration_groups=0, merge_text=False)
    ex.explore(MemoryStore(path), **kw)
    progress = (path / ex.PROGRESS_FILE).read_text()
    (path / ex.PROGRESS_FILE).write_text("null")
    with pytest.raises(InputError, match=r"unreadable exploration progress .*memory reset --yes --memory-dir"):
        ex.explore(MemoryStore(path), **kw)
    (path / ex.PROGRESS_FILE).write_text(progress)
    (path / ex.EXPLORED_FILE).write_text("[]")
    with pytest.raises(InputError, match="unreadable exploration record"):
        ex.assert_not_explored(path, "train", [train[0].group_id])


# ------------------------------------------------------------------------------------------- learning curve
def _curve(path, out, train, heldout, status=None, rounds=2):
    from hmrcritic.agent.learning_curve import learning_curve

    return learning_curve(MemoryStore(path), rounds=rounds, batch_size=2, train_groups=train[:4], heldout=heldout,
                          out_dir=out, explore_kwargs={"merge_text": False, "calibration_groups": 0},
                          status=status)


def _interrupt_at(where: str, in_round: int = 2):
    """A status callback that raises KeyboardInterrupt at the first line starting with ``where`` once round
    ``in_round`` has begun."""
    began = {"yes": False}

    def status(line: str) -> None:
        began["yes"] |= line.startswith(f"round {in_round}/2")
        if began["yes"] and line.startswith(where):
            raise KeyboardInterrupt

    return status


@pytest.fixture(scope="module")
def uninterrupted_curve(explore_prior, train, heldout, tmp_path_factory):
    """The uninterrupted learning curve every interrupted one below must end as: its result and the memory
    version it leaves (one call with the same inputs and settings, made once for the module)."""
    ref = tmp_path_factory.mktemp("ref-curve")
    result = _curve(ref / "ref", ref / "ref-out", train, heldout)
    return result, _state(ref / "ref")["version"]


@pytest.mark.parametrize("where,in_round", [("round 2/2: exploring", 2), ("  [1/2]", 2), ("round 2: scoring", 2),
                                            ("  [1/2]", 1)])  # in round 1: before any progress record
def test_an_interrupted_learning_curve_continues_where_it_stopped(train, heldout, uninterrupted_curve, tmp_path,
                                                                   where, in_round):
    """An interrupted learning-curve could only start over (its memory counts as explored); the rows
    evaluated so far are kept beside the result and the same call continues, ending as an uninterrupted one."""
    from hmrcritic.agent.learning_curve import PARTIAL_FILE

    ref, ref_version = uninterrupted_curve

    mem, out = tmp_path / "m", tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _curve(mem, out, train, heldout, status=_interrupt_at(where, in_round))
    assert (out / PARTIAL_FILE).exists() and not (out / "learning_curve.json").exists()
    said = []
    got = _curve(mem, out, train, heldout, status=said.append)
    assert said[0].startswith(f"resuming: rounds 0–{in_round - 1} were evaluated"), said
    assert got["rows"] == ref["rows"] and _state(mem)["version"] == ref_version
    assert json.loads((out / "learning_curve.json").read_text())["rows"] == ref["rows"]
    assert not (out / PARTIAL_FILE).exists()


def test_a_learning_curve_is_not_continued_with_other_settings(train, heldout, tmp_path):
    from hmrcritic.agent.learning_curve import learning_curve

    mem, out = tmp_path / "m", tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _curve(mem, out, train, heldout, status=_interrupt_at("round 2/2"))
    with pytest.raises(InputError, match=r"cannot continue the interrupted curve: .* other settings \(batch_size\)"):
        learning_curve(MemoryStore(mem), rounds=2, batch_size=1, train_groups=train[:4], heldout=heldout,
                       out_dir=out, explore_kwargs={"merge_text": False, "calibration_groups": 0})
    with pytest.raises(InputError, match="explored already"):  # no curve to continue in another --out
        _curve(mem, tmp_path / "elsewhere", train, heldout)
