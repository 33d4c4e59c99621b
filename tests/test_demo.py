"""The demo end to end (small settings): it runs, writes its reports, and a re-run is independent of the runs
before it in the same folder (each run explores a fresh memory)."""

from __future__ import annotations

import json

import pytest

from hmrcritic.demo import run_demo

SMALL = {"num_scenes": 1, "num_generations": 4, "explore_rounds": 1, "explore_batch": 2}


@pytest.mark.slow
def test_demo_reruns_do_not_build_on_each_other(tmp_path):
    first = run_demo(tmp_path, seed=0, say=lambda _: None, **SMALL)
    assert (tmp_path / "index.html").exists() and (tmp_path / "scene_00" / "report.html").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert summary["critic_top1_pa_mpjpe_mm"] >= summary["oracle_best_pa_mpjpe_mm"]
    run_demo(tmp_path, seed=1, say=lambda _: None, **SMALL)
    again = run_demo(tmp_path, seed=0, say=lambda _: None, **SMALL)
    assert again.memory_version == first.memory_version
    assert [s.ranking for s in again.scenes] == [s.ranking for s in first.scenes]
