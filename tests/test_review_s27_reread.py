"""Review s27 re-read: what session 27's changes left.

* the pending batch plan's new check looked at the plan's own keys but not at what ``_apply_plan`` copies into the
  progress record: a history group of lists of other lengths, or ``rule_effects`` of another shape, passed it, was
  applied, and made explore_progress.json unreadable to every later exploration (the plan deleted, the error naming
  the progress file, not the plan that broke it);
* that check ran before the "applied in full" test, so an applied plan (only removed, never applied again) whose
  records today's models refuse blocked every later exploration with "restore it, or reset the memory";
* a folder in the plan's place was answered with `memory reset --yes`, which cannot unlink a folder either and
  left the memory half reset (and refusing to open);
* run_demo's finally skipped the memory's close when the frozen copy's close raised.

Real groups (perturbed ground truth of tiny generated splits), the real agent graph, a real Chroma memory on disk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import test_review_s22_curve as s22  # noqa: E402

from hmrcritic.agent import explore as ex  # noqa: E402
from hmrcritic.errors import InputError  # noqa: E402
from hmrcritic.memory.store import MemoryStore  # noqa: E402

pytestmark = pytest.mark.usefixtures("small_prior")  # tiny splits: no 20k-scene train split for the pose prior

data, _groups = s22.data, s22._groups  # tiny train and test splits, perturbed groups of them

_SHORT_GROUP = {"group_id": "g", "evidence": {"a": [1.0, 2.0, 3.0]}, "overall": [1.0, 2.0], "error": [1.0]}


@pytest.mark.parametrize("bad", [{"rule_effects": [1]}, {"rule_effects": {"r1": [0.5, -1]}},
                                 {"history": [_SHORT_GROUP]},
                                 {"new_rules": [{"rule_id": "r-new", "text": "a new rule"}]}],
                         ids=["effects-list", "effects-negative-count", "history-lengths", "rule-without-vector"])
def test_a_pending_plan_that_would_break_the_progress_record_is_refused(data, bad):
    """What the plan puts into the progress record is checked as the progress reader checks it: before, the plan
    was applied, deleted, and every later exploration refused explore_progress.json instead. New rules without
    their vectors passed (the vectors were checked only when there were some) and failed _apply_plan as a bare
    IndexError."""
    path = data / "m"
    kw = dict(split="train", groups=_groups("train", 2, 3), rounds=1, batch_size=2, calibration_groups=0,
              merge_text=False)
    ex.explore(MemoryStore(path), **kw)
    plan = {"batch_key": "feedbeef00:r7", "sig": "feedbeef00", "r": 7, "new_rules": [], "prototypes": [],
            "report": {"round": 9, "batch_key": "feedbeef00:r7"}, "history": [], **bad}
    (path / ex.PENDING_FILE).write_text(json.dumps(plan), encoding="utf-8")
    progress = (path / ex.PROGRESS_FILE).read_bytes()
    with pytest.raises(InputError, match=r"explore_pending\.json: unreadable pending exploration batch \(not a batch"):
        ex.explore(MemoryStore(path), **kw)
    assert (path / ex.PROGRESS_FILE).read_bytes() == progress
    assert (path / ex.PENDING_FILE).exists()


def test_run_demo_closes_its_memory_when_closing_the_frozen_copy_fails(tmp_path, monkeypatch):
    """run_demo's finally closed the frozen copy and then the memory: a frozen copy whose close raised (its snapshot
    hold's descriptor, its Chroma system's shutdown) skipped the memory's close, the leak the finally is there for.
    Stand-ins for the model, the splits and the stores: what is checked is the order of the closes alone."""
    from types import SimpleNamespace

    import hmrcritic.agent.explore as explore_mod
    import hmrcritic.hmr.body as body_mod
    import hmrcritic.hmr.data as data_mod
    import hmrcritic.hmr.diffusion as diffusion_mod
    import hmrcritic.memory.store as store_mod
    from hmrcritic.demo import run_demo

    closed: list[str] = []

    class Store:
        def __init__(self, *args, **kwargs):
            pass

        def reset(self):
            pass

        def close(self):
            closed.append("memory")

    class Frozen:
        def version(self):
            raise RuntimeError("scoring failed")

        def close(self):
            closed.append("frozen")
            raise OSError("the snapshot's hold could not be closed")

    monkeypatch.setattr(body_mod, "load_body_model", lambda: SimpleNamespace(name="stub", num_vertices=1))
    monkeypatch.setattr(diffusion_mod, "load_model", lambda: None)
    monkeypatch.setattr(data_mod, "load_split", lambda name: [None] * 4)
    monkeypatch.setattr(store_mod, "MemoryStore", Store)
    monkeypatch.setattr(explore_mod, "explore", lambda *a, **k: None)
    monkeypatch.setattr(explore_mod, "frozen_copy", lambda memory: Frozen())
    with pytest.raises(OSError, match="hold could not be closed"):
        run_demo(tmp_path / "demo", num_scenes=1, num_generations=2, explore_rounds=1, explore_batch=1,
                 say=lambda _: None)
    assert closed == ["frozen", "memory"]


def test_an_applied_pending_plan_is_removed_even_with_records_todays_models_refuse(data):
    """A plan whose batch is in the progress record was applied in full (killed before its file went): it is
    removed without being applied again, so its records do not matter. Session 27's record check ran before that
    test, and an applied plan written by an older version (a rule condition of NaN threshold, as written before
    RuleCondition refused non-finite numbers) blocked every later exploration with "restore it, or start the memory
    over" — for a memory that was whole."""
    path = data / "m"
    kw = dict(split="train", groups=_groups("train", 2, 3), rounds=1, batch_size=2, calibration_groups=0,
              merge_text=False)
    ex.explore(MemoryStore(path), **kw)
    progress = json.loads((path / ex.PROGRESS_FILE).read_text(encoding="utf-8"))
    (key,) = progress["batches"]
    sig, _, r = key.rpartition(":r")
    rule = {"rule_id": "old-rule", "text": "an old rule", "origin": "mined",
            "condition": {"measure": "m", "comparator": ">", "threshold": float("nan"), "points": 1.0}}
    plan = {"batch_key": key, "sig": sig, "r": int(r), "new_rules": [rule], "new_rule_vectors": [[0.0] * 384],
            "prototypes": [], "report": {"round": 0, "batch_key": key}}
    (path / ex.PENDING_FILE).write_text(json.dumps(plan), encoding="utf-8")
    ex.explore(MemoryStore(path), **kw)  # nothing left to explore: the plan is only cleared away
    assert not (path / ex.PENDING_FILE).exists()
    assert json.loads((path / ex.PROGRESS_FILE).read_text(encoding="utf-8")) == progress


def test_a_folder_in_the_pending_plans_place_is_not_answered_with_a_reset(data):
    """A folder named explore_pending.json was refused with "restore it, or start the memory over with `memory reset
    --yes`": the reset cannot unlink a folder either, so it stopped half-way (collections deleted) and the memory
    then refused to open until a reset finished — which failed the same way. No plan is there: move the folder."""
    path = data / "m"
    kw = dict(split="train", groups=_groups("train", 2, 3), rounds=1, batch_size=2, calibration_groups=0,
              merge_text=False)
    ex.explore(MemoryStore(path), **kw)
    (path / ex.PENDING_FILE).mkdir()
    with pytest.raises(InputError, match=r"explore_pending\.json: unreadable pending exploration batch") as err:
        ex.explore(MemoryStore(path), **kw)
    assert "reset" not in str(err.value) and "move that folder away" in str(err.value)
    (path / ex.PENDING_FILE).rmdir()  # what the message says to do: the exploration goes on
    ex.explore(MemoryStore(path), **{**kw, "rounds": 2})
