"""Review s25 (the critic evaluations as long jobs: evaluate-critic, explore-eval, learning-curve, calibration):
what decides an explored memory missing from its cache key, a learning curve resumed over other code or other
held-out scenes under the same ids, and two curves on one memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_review_s22_curve as s22

from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("small_prior")  # tiny splits: no 20k-scene train split for the pose prior


# tiny train and test splits of other seeds, and perturbed groups of them: session 22's curve tests' own
data, _groups = s22.data, s22._groups


def _stop_at(where: str, said: list | None = None):
    """A status callback that raises KeyboardInterrupt (Ctrl-C) at the first line starting with ``where``."""

    def status(line: str) -> None:
        if said is not None:
            said.append(line)
        if where and line.startswith(where):
            raise KeyboardInterrupt

    return status


def _curve(mem, out, train, held, rounds, status=None):
    from hmrcritic.agent.learning_curve import learning_curve
    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(mem)
    try:
        return learning_curve(store, rounds=rounds, batch_size=2, train_groups=train, heldout=held, out_dir=out,
                              explore_kwargs={"merge_text": False, "calibration_groups": 0}, status=status)
    finally:
        store.close()


# ---- evaluate-critic's cache key: the code that makes the stored calibration --------------------------------------
def test_the_exploration_key_covers_the_code_that_scores_the_calibration_groups(monkeypatch):
    """An exploration ends by fitting the score calibration (stored in the memory) on scores that
    ``calibration.calibrate_memory`` gets from ``learning_curve.score_groups`` (its agent settings: render off,
    the variant's switches). ``code_digest`` — evaluate-critic's (and reproduce's, and a critique thread's) key
    of the explored memory — hashed calibration.py but not learning_curve.py, so a change there kept reusing a
    memory calibrated by the old code."""
    from hmrcritic.agent import calibration
    from hmrcritic.agent import evaluate_critic as ec

    assert calibration.score_groups.__module__ == "hmrcritic.agent.learning_curve"  # what the test is about
    seen: list[Path] = []
    real = ec.sources_digest

    def capture(paths):
        paths = list(paths)
        seen.extend(Path(p) for p in paths)
        return real(paths)

    monkeypatch.setattr(ec, "sources_digest", capture)
    ec.code_digest()
    agent = {p.name for p in seen if p.parent.name == "agent"}
    assert {"calibration.py", "learning_curve.py", "schema.py"} <= agent
    assert all(p.is_file() for p in seen)


# ---- a learning curve resumed over other code or other held-out scenes ---------------------------------------------
def test_a_learning_curve_is_not_resumed_after_the_critic_code_changed(data, monkeypatch):
    """An interrupted curve resumed after an upgrade kept its rows scored by the old code and added rows scored by
    the new one, in one table, as if one run had made them (evaluate-critic re-explores when its code digest
    changes). The resume is refused, naming the code."""
    from hmrcritic.agent import evaluate_critic as ec
    from hmrcritic.agent.learning_curve import PARTIAL_FILE

    train, held = _groups("train", 4), _groups("test", 2)
    mem, out = data / "mem", data / "out"
    with pytest.raises(KeyboardInterrupt):  # rounds 0 and 1 scored, round 2 about to explore
        _curve(mem, out, train, held, 2, status=_stop_at("round 2/"))
    assert (out / PARTIAL_FILE).exists()
    real = ec.code_digest()
    monkeypatch.setattr(ec, "code_digest", lambda: real + "-changed")
    with pytest.raises(InputError, match=r"other settings \(code\)"):
        _curve(mem, out, train, held, 2)
    monkeypatch.setattr(ec, "code_digest", lambda: real)
    res = _curve(mem, out, train, held, 2)  # under the code it began with, it continues
    assert [r["round"] for r in res["rows"]] == [0, 1, 2]


def test_a_learning_curve_is_not_resumed_on_a_regenerated_heldout_split(data):
    """The settings a resumed curve must match named the held-out groups by id (``test-000000``: an index of the
    split), so a held-out split regenerated between the interruption and the resume (another ``--seed``) was
    continued: rounds 0 and 1 in one table measured on different scenes. Their true errors are part of it now."""
    from hmrcritic.hmr.data import generate_split

    train, held = _groups("train", 4), _groups("test", 2)
    mem, out = data / "mem", data / "out"
    with pytest.raises(KeyboardInterrupt):
        _curve(mem, out, train, held, 2, status=_stop_at("round 2/"))
    generate_split("test", n=4, seed=7, quiet=True)
    other = _groups("test", 2)
    assert [g.group_id for g in other] == [g.group_id for g in held]
    with pytest.raises(InputError, match=r"other settings \(heldout_errors\)"):
        _curve(mem, out, train, other, 2)


# ---- two learning curves (or a curve and an explore) on one memory ------------------------------------------------
def test_a_learning_curve_on_a_memory_another_job_holds_is_refused_before_scoring(data, memory_held_elsewhere):
    """A learning curve held its memory only while each round explored: started on a memory another job (an
    exploration, another curve) was busy with, it scored round 0 of that changing memory and wrote its partial
    file, and was refused only when its own round 1 began; between two rounds of another curve it could score and
    explore rounds of the other's memory. It holds the memory for the whole curve, so it is refused at once."""
    from hmrcritic.agent.learning_curve import PARTIAL_FILE

    train, held = _groups("train", 2), _groups("test", 2)
    mem, out = data / "mem", data / "out"
    said: list[str] = []
    with memory_held_elsewhere(mem), pytest.raises(InputError, match="busy with an exploration"):
        _curve(mem, out, train, held, 1, status=_stop_at("", said))
    assert not (out / PARTIAL_FILE).exists()
    assert not any(line.startswith("round 0: scoring") for line in said)
    res = _curve(mem, out, train, held, 1)  # once the other job is done, the curve runs
    assert [r["round"] for r in res["rows"]] == [0, 1]


# ---- standard errors over one group -------------------------------------------------------------------------------
def test_an_evaluation_of_one_group_reports_no_standard_error(data, capsys):
    """Over one scored group (``--num-groups 1``, or a variant whose other groups failed) a standard error is
    undefined, but evaluate-critic wrote ``spearman_sem`` 0.0 and paired SEs of 0 into ``--json`` and
    ``result.json`` and printed "± 0.000" — a difference known exactly. They are null there, "—" in the table."""
    import json
    import math

    from hmrcritic.agent.evaluate_critic import evaluate_critic, format_table

    res = evaluate_critic(split="test", num_groups=1, num_generations=3, warmup_groups=0, source="perturbed",
                          variants=["full", "no_rules"], workdir=data / "eval")
    full, off = res["rows"]
    assert full["groups_scored"] == off["groups_scored"] == 1
    for key in ("spearman_sem",):
        assert math.isnan(full[key]) and math.isnan(off[key])
    for key in ("full_minus_sem", "full_minus_top1_sem", "full_minus_pearson_se"):
        assert math.isnan(off[key]), key
    assert math.isfinite(off["full_minus_spearman"]) and off["full_minus_groups"] == 1
    saved = json.loads((data / "eval" / "result.json").read_text(encoding="utf-8"))
    assert saved["rows"][0]["spearman_sem"] is None and saved["rows"][1]["full_minus_sem"] is None
    table = format_table(res)
    assert "nan" not in table and "0.000)" not in table
    assert f"{full['spearman']:>7.3f}{'—':>7}" in table


# ---- learning-curve's round lines when a round scored nothing ------------------------------------------------------
def test_learning_curve_round_line_of_a_round_that_scored_nothing_prints_no_nan(data, monkeypatch, capsys):
    """Every held-out critique of a round failed (here: a train split too small for the builtin judge's pose
    prior): the round's figures are NaN, and ``learning-curve`` printed "round 0: ρ +nan  τ +nan  top-1 nan mm",
    as if the critic had measured them (explore-eval's and evaluate-critic's tables say "—"), and exited 0 with a
    curve of no measurement at all (they exit 1 when nothing was scored)."""
    from hmrcritic.cli import main

    monkeypatch.setenv("HMRCRITIC_CACHE", str(data / "other-cache"))  # no pose prior cached for this one
    code = main(["learning-curve", "--memory-dir", str(data / "mem"), "--out", str(data / "out"), "--rounds", "0",
                 "--heldout-groups", "2", "-n", "3", "--source", "perturbed"])
    out, err = capsys.readouterr()
    line = next(x for x in out.splitlines() if x.startswith("round 0: ρ"))
    assert "nan" not in line.lower() and "—" in line
    assert "scored 0 of 2 held-out groups" in err
    assert code == 1 and "no round scored any held-out group" in err and "prior" in err


# ---- a calibration whose every critique failed says why ------------------------------------------------------------
def test_a_calibration_whose_critiques_all_failed_names_the_reason(data, monkeypatch, tmp_path):
    """Every calibration critique failed (here: a train split too small for the builtin judge's pose prior) and
    ``calibrate_memory`` said "no scored hypotheses to fit on" — exploration's note "score calibration not
    refitted: …" then gave no cause. The first failure's reason is part of the error."""
    from hmrcritic.agent.calibration import calibrate_memory
    from hmrcritic.memory.store import MemoryStore

    groups = _groups("train", 2)
    monkeypatch.setenv("HMRCRITIC_CACHE", str(data / "other-cache"))  # no pose prior cached for this one
    with MemoryStore(tmp_path / "mem", chroma_url="") as mem:
        with pytest.raises(InputError, match=r"all 2 calibration group\(s\) failed; first: train-000000: .*prior"):
            calibrate_memory(mem, groups)
        assert mem.calibration() is None


# ---- a work folder given twice with other settings ----------------------------------------------------------------
def test_a_work_folder_explored_under_other_settings_is_refused(data):
    """``evaluate_critic(workdir=…)`` (the API's and the benchmarks' own folder) never checked the key it keys the
    default folder by: a second evaluation with another seed explored its warm-up groups into the memory the first
    had left there (8 explored groups for a --warmup-groups 4) and scored it as a memory of its own settings. It is
    refused; the same settings reuse the folder and only score."""
    from hmrcritic.agent.evaluate_critic import evaluate_critic

    kw = {"split": "test", "num_groups": 1, "num_generations": 3, "warmup_groups": 2, "batch_size": 2,
          "source": "perturbed", "variants": ["full"], "workdir": data / "eval"}
    first = evaluate_critic(seed=0, **kw)
    assert first["explored_groups"] == 2
    with pytest.raises(InputError, match="work folder .* other settings"):
        evaluate_critic(seed=1, **kw)
    again = evaluate_critic(seed=0, **kw)
    assert again["explored_groups"] == 2 and again["memory_version"] == first["memory_version"]
