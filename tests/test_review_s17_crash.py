"""Review s17: crash consistency of the long jobs — a process killed (SIGKILL) at a given moment, then the same
command again. Kills happen in real subprocesses; where the moment must be exact, the child kills itself with
SIGKILL from inside the call that would run next (a stand-in for ``kill -9`` landing there)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

TIMEOUT_S = 120


def _killed_child(code: str, *args: str) -> None:
    """Run ``code`` in a fresh interpreter that must die of SIGKILL (it kills itself at the moment under test)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


# a new memory killed after its collections were created, before its starter rules were written
_KILL_BEFORE_SEEDING = """
    import os, signal, sys
    from hmrcritic.memory.rules import RuleMemory
    from hmrcritic.memory.store import MemoryStore
    RuleMemory.add = lambda self, *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    MemoryStore(sys.argv[1])
"""


def test_memory_killed_while_being_created_gets_its_starter_rules_on_the_next_open(tmp_path):
    """A memory folder whose creating process was killed between creating the collections and seeding the starter
    rules opened afterwards with 0 rules, silently and for good (the rules collection existed, so nothing seeded
    it again): an exploration then learned into a memory without the starter rules. The next writable open now
    finishes the creation (the memory equals one created without a kill); a read-only open before that refuses
    in one line instead of scoring from an empty memory."""
    from hmrcritic.errors import AssetError
    from hmrcritic.memory.store import MemoryStore

    folder = tmp_path / "mem"
    _killed_child(_KILL_BEFORE_SEEDING, str(folder))
    with pytest.raises(AssetError, match="was being created") as info:
        MemoryStore(folder, read_only=True)
    assert "\n" not in str(info.value) and "reset --yes" in str(info.value)
    mem = MemoryStore(folder)
    fresh = MemoryStore(tmp_path / "fresh")
    assert mem.stats()["rules"] == fresh.stats()["rules"] > 0
    assert mem.version() == fresh.version()
    assert not [p.name for p in folder.iterdir() if "unfinished" in p.name]
    assert MemoryStore(folder, read_only=True).version() == fresh.version()
    mem.close()
    fresh.close()


# `hmrcritic reproduce`'s explore stage killed inside the reset of its scratch memory
_KILL_IN_REPRODUCE_RESET = """
    import os, signal, sys
    from pathlib import Path
    from hmrcritic.alignment import reproduce
    from hmrcritic.memory import store
    create = store.MemoryStore._create_missing
    def kill_in_reset(self, seed_starter):
        if (self.path / store.RESET_MARKER).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return create(self, seed_starter)
    store.MemoryStore._create_missing = kill_in_reset
    reproduce._explore(reproduce.make_preset("quick", {"explore_rounds": 0}), Path(sys.argv[1]), None, "k", print)
"""


def test_reproduce_killed_while_resetting_its_memory_runs_again(tmp_path):
    """`hmrcritic reproduce` killed while its explore stage reset the stage's own memory folder: every later run
    of the same command failed at once ("a reset was cut short … run `hmrcritic memory reset --yes` again") on a
    folder it resets anyway. The stage now opens it inside the reset, as `memory reset` does."""
    from hmrcritic.alignment import reproduce
    from hmrcritic.memory.store import RESET_MARKER, MemoryStore

    folder = tmp_path / "memory-k"
    _killed_child(_KILL_IN_REPRODUCE_RESET, str(folder))
    assert (folder / RESET_MARKER).exists()
    rec = reproduce._explore(reproduce.make_preset("quick", {"explore_rounds": 0}), folder, None, "k", print)
    fresh = MemoryStore(tmp_path / "fresh")
    assert rec["stats"]["rules"] == fresh.stats()["rules"] > 0 and rec["version"] == fresh.version()
    assert not (folder / RESET_MARKER).exists()
    fresh.close()


@pytest.fixture()
def four_groups(tmp_path):
    """4 labelled train groups of 4 hypotheses (perturbed ground truth of a tiny generated split)."""
    from hmrcritic.agent.groups import groups_from_perturbed_gt
    from hmrcritic.hmr.data import SceneSet, generate_split

    folder = generate_split("train", tmp_path / "train", n=4, quiet=True)
    return groups_from_perturbed_gt(SceneSet(folder), num_groups=4, num_generations=4, seed=0)


@pytest.mark.usefixtures("explore_prior")
def test_a_batch_plan_left_after_it_was_applied_does_not_undo_later_rule_statistics(four_groups, tmp_path,
                                                                                     monkeypatch):
    """An exploration killed after its batch was written in full (progress record included) but before
    ``explore_pending.json`` was removed: the next exploration wrote the plan's absolute rule records again,
    undoing every rule statistic counted meanwhile (here: one `critique --learn` that used a rule). A plan whose
    batch the progress record holds is now only removed."""
    import json

    from hmrcritic.agent import explore as ex
    from hmrcritic.memory.store import MemoryStore

    applied: list[dict] = []
    apply = ex._apply_plan
    monkeypatch.setattr(ex, "_apply_plan", lambda memory, plan: (applied.append(plan), apply(memory, plan))[1])
    mem_dir = tmp_path / "mem"
    kw = dict(groups=four_groups, rounds=1, batch_size=4, num_generations=4, calibration_groups=0,
              merge_text=False)
    ex.explore(mem_dir, **kw)
    (plan,) = applied
    assert plan["rule_updates"]
    # the kill: the batch is in the memory and in the progress record, its plan file is still there
    (mem_dir / ex.PENDING_FILE).write_text(json.dumps(plan), encoding="utf-8")
    mem = MemoryStore(mem_dir)
    rid = plan["rule_updates"][0]["rule_id"]
    rule = next(r for r in mem.rules.all(include_retired=True) if r.rule_id == rid)
    rule.n_used, rule.n_success = rule.n_used + 1, rule.n_success + 1  # what a critique --learn counts
    mem.rules.update([rule])
    mem.close()
    ex.explore(mem_dir, **kw)  # the same command again: nothing left to explore
    mem = MemoryStore(mem_dir)
    after = next(r for r in mem.rules.all(include_retired=True) if r.rule_id == rid)
    assert (after.n_used, after.n_success) == (rule.n_used, rule.n_success)
    assert not (mem_dir / ex.PENDING_FILE).exists()
    mem.close()
