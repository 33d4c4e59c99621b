"""Session 35, the lead's own fixes (each test failed on the code before its fix)."""
from __future__ import annotations

import pytest
import test_review_s22_curve as s22

pytestmark = pytest.mark.usefixtures("small_prior")  # tiny splits: no 20k-scene train split for the pose prior


def test_explore_eval_records_what_scored_what(tmp_path):
    """explore-eval's JSON did not say the groups' size, their source nor the judge, where evaluate-critic's
    payload does (`num_generations`, `group_source`, `judge`): two results of a model's groups and of perturbed
    ground truth, or of the builtin judge and a VLM, read the same."""
    from hmrcritic.agent.learning_curve import explore_eval
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(tmp_path / "mem", chroma_url="").close()  # the starter memory
    groups = s22._groups("test", 2)
    res = explore_eval(tmp_path / "mem", groups, variants=["evidence_only"])
    assert res["num_generations"] == len(groups[0].errors_mm)
    assert res["group_source"] == groups[0].source
    assert res["judge"] == "builtin" and "judge_model" not in res
    groups[1].source = "model" if groups[0].source != "model" else "perturbed"
    assert explore_eval(tmp_path / "mem", groups, variants=["evidence_only"])["group_source"] == "mixed"


def test_explore_eval_table_names_its_columns_as_evaluate_critic_does():
    """The two tables of one critic named one figure twice: "r pts" / "top1 PA" (explore-eval) and "r pooled" /
    "top-1 PA" (evaluate-critic)."""
    import json
    from pathlib import Path

    from hmrcritic.agent.learning_curve import format_rows

    res = json.loads((Path(__file__).resolve().parents[1] / "docs/results/explore_eval.json").read_text())
    head = format_rows(res).splitlines()[0]
    assert "r pooled" in head and "top-1 PA" in head and "top-1 MPJPE" in head
    assert "r pts" not in head and "top1" not in head
