"""Review s29 (exploration's progress output, found by a walk-through).

* the round line's "13 prototypes" was the prototypes that round stored, while README's learning-curve table and
  `memory stats` give totals (28): it now reads "+13 prototypes (28 in memory)", the total counted from the memory
  after the round (``prototypes_in_memory`` in the ``"round"`` event), not summed by the printer;
* on a fresh home the pose prior's first fit (seconds, after the split's "(first use)" line and before the first
  group's) ran without a word: exploration now sends a ``"note"`` event ahead of it, which `hmrcritic explore`
  prints once on stderr (``--json`` too: stdout stays the reply).

Real splits generated small, the real agent graph, a real Chroma memory on disk, the real pose prior fit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import test_review_s22_curve as s22  # noqa: E402

from hmrcritic.agent import explore as ex  # noqa: E402
from hmrcritic.memory.store import MemoryStore  # noqa: E402

data, _groups = s22.data, s22._groups  # tiny train (6) and test (4) splits of other seeds, perturbed groups of them


@pytest.mark.usefixtures("small_prior")
def test_the_round_line_says_what_the_round_added_and_what_the_memory_holds(data):
    """A memory holding another run's prototypes: the round line gives this round's and the memory's total, the
    total as counted in the memory when the line is printed."""
    from hmrcritic.commands.explore import explore_line

    groups = _groups("train", 4, 3)
    kw = dict(split="train", batch_size=1, calibration_groups=0, merge_text=False)
    mem = MemoryStore(data / "m")
    ex.explore(mem, groups=groups[:2], rounds=1, **{**kw, "batch_size": 2})  # another run's prototypes
    before = mem.prototypes.count()
    assert before > 0
    seen: list[tuple[str, int]] = []

    def progress(event: str, p: dict) -> None:
        if event == "round":
            seen.append((explore_line(event, p), mem.prototypes.count()))

    s = ex.explore(mem, groups=groups[2:], rounds=2, progress=progress, **kw)
    assert len(seen) == 2 and all(r.prototypes > 0 for r in s.rounds)
    for (line, counted), r in zip(seen, s.rounds, strict=True):
        assert f", +{r.prototypes} prototypes ({counted} in memory) (" in line, line
    assert seen[-1][1] == mem.prototypes.count() == before + sum(r.prototypes for r in s.rounds)


def _fresh_home(tmp_path, monkeypatch) -> Path:
    """A home of its own (data, cache, memory) with a train split of 60 scenes: enough poses for the real prior."""
    home = tmp_path / "home"
    for var in ("HMRCRITIC_DATA", "HMRCRITIC_CACHE", "HMRCRITIC_MEMORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HMRCRITIC_HOME", str(home))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.003")
    return home


def test_explore_tells_its_caller_before_the_pose_prior_is_first_fitted(tmp_path, monkeypatch):
    """Through the progress callback (the library prints nothing of its own): one note, before the first group,
    while the prior is not fitted yet; none from a later call that finds it cached."""
    home = _fresh_home(tmp_path, monkeypatch)
    events: list[tuple[str, dict, bool]] = []
    kw = dict(split="train", batch_size=1, num_generations=3, source="perturbed", calibration_groups=0,
              merge_text=False)
    # whether a prior file is cached when each event arrives: measured, so the note is known to precede the fit
    cached = lambda: any((home / "cache" / "pose_prior").glob("*.npz"))  # noqa: E731
    ex.explore(home / "memory", rounds=2, progress=lambda e, p: events.append((e, p, cached())), **kw)
    notes = [(p, c) for e, p, c in events if e == "note"]
    assert len(notes) == 1 and notes[0][0]["step"] == "pose_prior" and not notes[0][1], events
    assert "pose prior" in notes[0][0]["text"] and "(first use)" in notes[0][0]["text"]
    kinds = [e for e, _, _ in events]
    assert kinds.index("note") < kinds.index("group")
    assert all(c for e, _, c in events if e == "group")  # fitted right after the note, by the first critique
    from hmrcritic.agent.prior import pose_prior_ready

    assert pose_prior_ready()
    again: list[str] = []
    ex.explore(home / "memory", rounds=3, progress=lambda e, p: again.append(e), **kw)
    assert "group" in again and "note" not in again


def test_the_explore_command_prints_the_note_on_stderr_and_the_totals_memory_stats_gives(tmp_path, monkeypatch,
                                                                                       capsys):
    from hmrcritic.cli import main

    _fresh_home(tmp_path, monkeypatch)
    args = ["explore", "--batch-size", "1", "-n", "3", "--source", "perturbed", "--calibration-groups", "0"]
    assert main([*args, "--rounds", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    json.loads(out)  # the reply alone on stdout
    assert err.count("hmrcritic: fitting the pose prior") == 1, err
    assert main([*args, "--rounds", "3"]) == 0
    out, err = capsys.readouterr()
    assert "pose prior" not in out + err  # fitted by the first call
    rounds = [line for line in out.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2
    assert main(["memory", "stats", "--json"]) == 0
    total = json.loads(capsys.readouterr().out)["prototypes"]
    assert rounds[-1].split(" prototypes (")[1].startswith(f"{total} in memory)"), rounds
