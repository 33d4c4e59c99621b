"""Session 31 review: a logic read of exploration (explore.py) and the critic evaluations.

Each test pins one suspicion the read found true. A test marked ``xfail(strict=True)`` demonstrates a bug that
was REPORTED rather than fixed (the fix would change what exploration keeps); it fails loudly once it is fixed,
so the marker goes then.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hmrcritic.agent import explore as ex
from hmrcritic.errors import InputError
from hmrcritic.memory.schema import Rule, RuleCondition
from hmrcritic.memory.store import MemoryStore


def _rule(rid: str, used: int, success: int, threshold: float, tags: list[str] | None = None) -> Rule:
    return Rule(rule_id=rid, text=f"rule {rid} on the reprojection error takes off points", origin="user",
                n_used=used, n_success=success, tags=tags or [],
                condition=RuleCondition(measure="reproj_px", comparator=">", threshold=threshold, points=1))


def _plan(key: str = "k:r0", deltas: dict | None = None) -> dict:
    return {"batch_key": key, "sig": "k", "r": 0, "round": 1, "rule_deltas": deltas or {}, "new_rules": [],
            "prototypes": [], "report": {"round": 1}}


# ------------------------------------------------------------------------------------- maintenance (REPORTED)
@pytest.mark.xfail(strict=True, reason="REPORTED (changes what exploration keeps): _commit's 'helpful rule is "
                   "kept' override pops the rule's whole maintenance update, the statistics it absorbed from a "
                   "twin merged into it in the same batch included")
def test_a_helpful_rule_that_absorbed_a_merge_keeps_the_absorbed_statistics(tmp_path):
    """Maintenance merges twin ``b`` into ``a`` (a absorbs b's uses and tags, b is retired), then retires the
    merged ``a`` for its success rate; ``a`` demonstrably helps rankings (Σ Δρ < 0 over ≥ 3 groups), so _commit
    un-retires it — by dropping ``a``'s maintenance record altogether. ``b`` stays retired, and its 2 uses and its
    tag vanish from the memory: maintenance's contract is that the kept rule absorbs them."""
    mem = MemoryStore(tmp_path / "m", seed_starter=False)
    mem.rules.add([_rule("a", 10, 2, 10.0), _rule("b", 2, 0, 10.5, tags=["arms"])])
    ex.atomic_write_json(Path(mem.path) / ex.PROGRESS_FILE,
                         {"runs": {}, "rounds_total": 0, "batches": [], "rule_effects": {"a": [-0.1, 5]}})
    ex._commit(mem, _plan(), merge_text=False, retire=(8, 0.3))
    got = {r.rule_id: r for r in mem.rules.all(include_retired=True)}
    assert got["b"].retired  # merged into a
    assert not got["a"].retired  # kept: it helps
    assert (got["a"].n_used, got["a"].n_success) == (12, 2) and "arms" in got["a"].tags


# ---------------------------------------------------------------------------------- frozen copy (FIXED)
def test_a_frozen_copy_of_a_memory_with_a_half_written_batch_is_refused(tmp_path, monkeypatch):
    """An exploration killed inside a batch's write leaves ``explore_pending.json`` and a half-written memory; the
    next explore finishes it. ``frozen_copy`` left the pending plan out of its snapshot (SNAPSHOT_SKIP) and scored
    the half-written memory as it was (``explore-eval --memory``, ``evaluate-critic --memory-dir``): figures of a
    memory no exploration ever ended with, here rule ``a`` at its count from before the batch."""
    mem = MemoryStore(tmp_path / "m", seed_starter=False)
    mem.rules.add([_rule("a", 3, 1, 10.0)])

    def killed(memory, plan):  # the plan is written, then the process dies before it is applied
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "_apply_plan", killed)
    with pytest.raises(KeyboardInterrupt):
        ex._commit(mem, _plan(deltas={"a": [2, 2]}), merge_text=False, retire=(8, 0.3))
    monkeypatch.undo()
    assert (Path(mem.path) / ex.PENDING_FILE).exists()
    mem.close()
    with pytest.raises(InputError, match="explore_pending.json"):
        ex.frozen_copy(tmp_path / "m", root=tmp_path / "frozen")
    # once an exploration finishes the batch, the copy is taken (and holds the finished counts)
    mem = MemoryStore(tmp_path / "m", seed_starter=False)
    with mem.exclusive("a test"):
        ex._finish_pending(mem, lambda event, payload: None)
    mem.close()
    frozen = ex.frozen_copy(tmp_path / "m", root=tmp_path / "frozen")
    try:
        assert [(r.rule_id, r.n_used, r.n_success) for r in frozen.rules.all()] == [("a", 5, 3)]
    finally:
        frozen.close()
    assert json.loads((Path(tmp_path / "m") / ex.PROGRESS_FILE).read_text())["batches"] == ["k:r0"]


# ------------------------------------------------------------------------------ calibration source (REPORTED)
@pytest.mark.xfail(strict=True, reason="REPORTED (changes the groups a calibration is fitted on): a call that "
                   "draws nothing takes the group source from explored_on.json, which the latest run of any "
                   "settings on the split wrote, not from this run's own progress record (source_used)")
def test_a_call_that_draws_nothing_calibrates_on_its_own_runs_group_source(tmp_path, monkeypatch):
    """Run A (``source="auto"``, drawn from the model) explored round 0; run B (another seed, perturbed ground
    truth) explored the same split after it, and ``explored_on.json`` keeps B's ``source``. A's next call (its
    rounds done: nothing drawn) resolves "auto" from that file — ``perturbed`` — and fits (and reports) its score
    calibration on perturbed groups, though A's own record says its groups came from the model."""
    import hmrcritic.agent.groups as groups_mod

    monkeypatch.setattr(groups_mod, "verify_split", lambda split, images: None)
    monkeypatch.setattr(groups_mod, "group_model", lambda source="auto", model_path=None: object())
    seen: dict = {}

    def fake_calibrate(memory, summary, judge_obj, cfg, groups, split, start, n, num_generations, seed, source,
                       emit):
        seen["source"] = source

    monkeypatch.setattr(ex, "_maybe_calibrate", fake_calibrate)
    mem = MemoryStore(tmp_path / "m", seed_starter=False)
    settings = ex._settings("train", 8, 0, "auto", 16, "pa_mpjpe", 0, None)
    sig_a = ex._signature(settings)
    settings_b = ex._settings("train", 8, 1, "perturbed", 16, "pa_mpjpe", 0, None)
    prog = {"rounds_total": 2, "batches": [f"{sig_a}:r0", "b:r0"],
            "runs": {sig_a: {"rounds_done": [0], "spans": [[0, 8]],
                             "settings": {**settings, "source_used": "model"}},
                     ex._signature(settings_b): {"rounds_done": [0], "spans": [[0, 8]],
                                                 "settings": {**settings_b, "source_used": "perturbed"}}}}
    ex.atomic_write_json(Path(mem.path) / ex.PROGRESS_FILE, prog)
    ex.atomic_write_json(Path(mem.path) / ex.EXPLORED_FILE, {"splits": {"train": {
        "group_ids": [f"train-{i:06d}" for i in range(8)], "seed": 1, "source": "perturbed", "num_generations": 16}}})
    out = ex.explore(mem, split="train", rounds=1, batch_size=8, seed=0, source="auto")
    assert not out.rounds  # nothing drawn: round 0 was done
    assert seen["source"] == "model" and out.source == "model"


# ------------------------------------------------------------------------- explored_on.json race (FIXED)
def test_a_batch_records_its_groups_with_the_writers_held_off(tmp_path, monkeypatch):
    """``_run_batch`` (and the calibration) read, added to and wrote ``explored_on.json`` without the memory's write
    lock, while a learning critique of another process records the scene it learned from under that lock
    (``api._record_learned_scene``: ``critique --scene test:3 --learn`` beside a running exploration). The
    critique's record written between the exploration's read and its write was overwritten: the memory had learned
    from test-000003 and evaluating on it passed every held-out check."""
    import threading
    from types import SimpleNamespace

    import numpy as np

    from hmrcritic.memory.store import writers_held_off

    mem = MemoryStore(tmp_path / "m", seed_starter=False)
    path = Path(mem.path)
    real = ex.explored_record
    other: list = []

    def learning_critique():  # what api._record_learned_scene does
        with writers_held_off(path):
            ex._add_explored(path, "test", ["test-000003"], {})

    def racing(memory):  # the other process writes between the exploration's read and its write, if it can
        data = real(memory)
        if not other:
            other.append(threading.Thread(target=learning_critique))
            other[0].start()
            other[0].join(timeout=1.0)
        return data

    monkeypatch.setattr(ex, "explored_record", racing)
    tie = SimpleNamespace(group_id="train-000000", errors_mm=np.full(4, 50.0), extra={})  # unrankable: no critique
    report = ex._run_batch(mem, None, None, None, True, None, [tie], 0, "k", "train", 0.5, "pa_mpjpe", [],
                           lambda event, payload: None, max_new_rules=0, min_gain=0.01, retire_min_uses=8,
                           retire_min_rate=0.3, merge_text=False, prototypes="representative", settle="rank",
                           info={})
    other[0].join(timeout=60)
    assert report.failed[0]["kind"] == "skipped" and not other[0].is_alive()
    splits = real(path)["splits"]
    assert splits["train"]["group_ids"] == ["train-000000"]
    assert splits.get("test", {}).get("group_ids") == ["test-000003"]
