"""Review (s15) of exploration under ``limit``: a round the limit cut short must not lose the rest of its groups.

``explore(limit=10, batch_size=8)`` explored groups 8–9 as round 2 and recorded that round done like a full one,
so a later call without a limit skipped it: groups 10–15 were never explored, silently. Real groups (perturbed
ground truth of a tiny generated split, 4 hypotheses each for speed), the real agent graph and a real Chroma
memory on disk, as in test_explore_robustness.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from hmrcritic.agent import explore as ex
from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("explore_prior")

_KW = dict(calibration_groups=0, merge_text=False, num_generations=4)


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    """18 labelled train groups of 4 hypotheses."""
    from hmrcritic.agent.groups import groups_from_perturbed_gt
    from hmrcritic.hmr.data import SceneSet, generate_split

    folder = generate_split("train", tmp_path_factory.mktemp("s15-limit") / "train", n=18, quiet=True)
    return groups_from_perturbed_gt(SceneSet(folder), num_groups=18, num_generations=4, seed=0)


def _explore(mem, groups, seen: Counter, **kw):
    """One call; counts every group it explores in ``seen`` (the ``group`` events)."""
    def progress(event, payload):
        if event == "group":
            seen[payload["group_id"]] += 1

    return ex.explore(mem, groups=groups, progress=progress, **{**_KW, **kw})


def _run(mem: Path) -> dict:
    prog = json.loads((mem / ex.PROGRESS_FILE).read_text())
    (run,) = prog["runs"].values()
    return {"rounds_done": sorted(run["rounds_done"]), "spans": run["spans"], "rounds_total": prog["rounds_total"]}


def _covered(spans) -> Counter:
    return Counter(i for a, b in spans for i in range(a, b))


def test_a_round_the_limit_cut_short_is_finished_by_the_next_call(groups, tmp_path):
    """``--limit 10 --batch-size 8`` then no limit: every group 0–15 explored exactly once, both rounds done. Before,
    the second call said "nothing to explore" and groups 10–15 were never explored; the calibration (which follows
    the explored groups) was not refitted either."""
    mem, seen, ids = tmp_path / "m", Counter(), [g.group_id for g in groups]
    s1 = _explore(mem, groups, seen, rounds=2, batch_size=8, limit=10, calibration_groups=2)
    assert [r.groups for r in s1.rounds] == [8, 2]
    assert _run(mem)["rounds_done"] == [0] and _run(mem)["spans"] == [[0, 8], [8, 10]]
    cal = json.loads((mem / ex.EXPLORED_FILE).read_text())["splits"]["train"]["calibration_group_ids"]
    assert cal == ids[10:12]  # the groups after the last explored one, as before

    s2 = _explore(mem, groups, seen, rounds=2, batch_size=8, calibration_groups=2)
    assert s2.resumed_rounds == 1 and [r.groups for r in s2.rounds] == [6] and not s2.stopped
    assert seen == Counter(ids[:16])  # each of 0..15 once, nothing beyond
    run = _run(mem)
    assert run["rounds_done"] == [0, 1] and _covered(run["spans"]) == Counter(range(16))
    assert [r["batch_key"].split(":")[1] for r in ex.read_log(mem)] == ["r0", "r1", "r1+2"]
    explored = json.loads((mem / ex.EXPLORED_FILE).read_text())["splits"]["train"]
    assert explored["group_ids"] == ids[:16]
    assert explored["calibration_group_ids"] == ids[10:12] + ids[16:18]  # refitted after group 15

    s3 = _explore(mem, groups, seen, rounds=2, batch_size=8)  # the run is complete: nothing more
    assert not s3.rounds and s3.resumed_rounds == 2 and seen == Counter(ids[:16])


def test_limits_inside_rounds_continue_batch_by_batch(groups, tmp_path):
    """``--limit 3``, then ``--limit 5``, then none (batch size 4): the second call finishes round 1 with group 3
    and explores group 4 of round 2 within its own limit, the third the rest; no group is skipped or repeated."""
    mem, seen, gs = tmp_path / "m", Counter(), groups[:8]
    _explore(mem, gs, seen, rounds=2, batch_size=4, limit=3)
    assert _run(mem)["rounds_done"] == [] and _run(mem)["spans"] == [[0, 3]]
    s2 = _explore(mem, gs, seen, rounds=2, batch_size=4, limit=5)
    assert [r.groups for r in s2.rounds] == [1, 1]
    assert _run(mem)["rounds_done"] == [0]
    _explore(mem, gs, seen, rounds=2, batch_size=4)
    run = _run(mem)
    assert run["rounds_done"] == [0, 1] and run["spans"] == [[0, 3], [3, 4], [4, 5], [5, 8]]
    assert seen == Counter(g.group_id for g in gs)


def test_a_round_short_because_the_groups_ended_stays_done(groups, tmp_path):
    """A last round short because there are no more groups is done, even where a limit ends at the same group:
    there is nothing left to continue it with."""
    mem, seen, gs = tmp_path / "m", Counter(), groups[:6]
    _explore(mem, gs, seen, rounds=2, batch_size=4, limit=6)
    assert _run(mem)["rounds_done"] == [0, 1] and _run(mem)["spans"] == [[0, 4], [4, 6]]
    s = _explore(mem, gs, seen, rounds=3, batch_size=4)
    assert not s.rounds and "round 3" in s.stopped and seen == Counter(g.group_id for g in gs)


def test_the_overlap_check_sees_a_cut_round_and_refuses_a_continuation_that_clashes(groups, tmp_path):
    """A run whose only batch the limit cut short has no round done, yet still guards its groups against a run with
    another batch size; and the continuation of a cut round is refused where another run explored its groups
    meanwhile (here one starting at group 10), accepted otherwise."""
    mem, seen = tmp_path / "m", Counter()
    _explore(mem, groups[:16], seen, rounds=1, batch_size=8, limit=3)
    with pytest.raises(InputError, match="#0–#2"):
        _explore(mem, groups[:16], seen, rounds=1, batch_size=4)
    _explore(mem, groups[:16], seen, rounds=2, batch_size=8, limit=10)  # continuation 3–7 and 8–9: accepted
    _explore(mem, groups[:16], seen, rounds=1, batch_size=6, start=10)  # another run on 10–15: no clash yet
    with pytest.raises(InputError, match="#10–#15"):
        _explore(mem, groups[:16], seen, rounds=2, batch_size=8)
    assert seen == Counter(g.group_id for g in groups[:16])
