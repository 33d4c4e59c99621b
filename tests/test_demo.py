"""The demo end to end (small settings): it runs, writes its reports, and a re-run is independent of the runs
before it in the same folder (each run explores a fresh memory).

Small settings include the data: tiny splits in a private data folder (not the 20k-scene train split and the
1000-scene test split the demo generates on first use) and the small pose prior of tests/conftest.py (not one
fitted on that train split), and a score calibration fitted on 8 groups instead of 32 — speed only: the demo's
code path is the same (explore, calibrate, freeze, sample, critique, report), and nothing checked depends on these
sizes."""

from __future__ import annotations

import functools
import json

import pytest

from hmrcritic.demo import run_demo

SMALL = {"num_scenes": 1, "num_generations": 4, "explore_rounds": 1, "explore_batch": 2}


@pytest.fixture()
def tiny_data(tmp_path, monkeypatch, small_prior):
    """Tiny splits (train 100, test 5), generated on first use in a private data folder, so they never become
    the session's splits; the demo's exploration calibrates on 8 groups (the fit still runs: see the test)."""
    from hmrcritic.agent import explore as ex

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
    monkeypatch.setattr(ex, "explore", functools.partial(ex.explore, calibration_groups=8))


@pytest.mark.slow
def test_demo_reruns_do_not_build_on_each_other(tmp_path, tiny_data):
    out = tmp_path / "demo"
    said: list[str] = []
    first = run_demo(out, seed=0, say=said.append, **SMALL)
    assert any("score calibration on 8 more train groups" in line for line in said), said  # the fit ran
    assert (out / "index.html").exists() and (out / "scene_00" / "report.html").exists()
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["critic_top1_pa_mpjpe_mm"] >= summary["oracle_best_pa_mpjpe_mm"]
    run_demo(out, seed=1, say=lambda _: None, **SMALL)
    again = run_demo(out, seed=0, say=lambda _: None, **SMALL)
    assert again.memory_version == first.memory_version
    assert [s.ranking for s in again.scenes] == [s.ranking for s in first.scenes]
