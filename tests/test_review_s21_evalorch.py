"""Review s21 (evaluate-critic / explore-eval / learning-curve as orchestration): honest memory warming when two
splits hold the same scenes under other ids, evaluate-critic's progress, its folder per given memory, a second
run beside the first, no groups refused before exploring, strict learning_curve.json, and the temporary starter
memory removed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("small_prior")  # tiny splits: no 20k-scene train split for the pose prior


@pytest.fixture()
def same_seed_splits(monkeypatch, tmp_path):
    """A data folder whose train and test splits were generated with one --seed (the same scenes, other ids)."""
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    generate_split("train", n=6, seed=5, quiet=True)
    generate_split("test", n=6, seed=5, quiet=True)
    return tmp_path


def _explored_memory(path, split: str, ids: list[str], key: str = "group_ids"):
    from hmrcritic.agent.explore import _add_explored
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(path)
    _add_explored(path, split, ids, {}, key=key)
    return path


def _groups(split: str, n: int):
    from hmrcritic.agent.groups import make_groups

    return make_groups(split, num_groups=n, num_generations=3, source="perturbed")[0]


@pytest.mark.parametrize("key", ["group_ids", "calibration_group_ids"])
def test_explore_eval_refuses_a_heldout_group_whose_scene_the_memory_explored(same_seed_splits, key):
    """Splits generated with one seed (`data generate --split train --seed 5`, `--split test --seed 5`: train and
    test share a preset) hold the same scenes at the same indices. The held-out guard compared ids only, so
    test-000001 — the very scene the memory explored (or calibrated on) as train-000001, its prototypes included —
    was scored as held out and every figure of the table leaked."""
    from hmrcritic.agent.learning_curve import explore_eval

    mem = _explored_memory(same_seed_splits / "mem", "train", ["train-000001"], key=key)
    with pytest.raises(InputError, match="same scene as train-000001"):
        explore_eval(mem, _groups("test", 2), variants=["evidence_only"])


def test_explore_eval_scores_heldout_scenes_of_another_seed(monkeypatch, tmp_path):
    """The scene check refuses nothing where the splits differ (the shipped seeds: train 1001, test 3003)."""
    from hmrcritic.agent.learning_curve import explore_eval
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    generate_split("train", n=4, seed=5, quiet=True)
    generate_split("test", n=4, seed=6, quiet=True)
    mem = _explored_memory(tmp_path / "mem", "train", ["train-000000", "train-000001"])
    res = explore_eval(mem, _groups("test", 2), variants=["evidence_only"])
    assert res["num_groups"] == 2 and res["rows"][0]["groups_scored"] == 2


def test_evaluate_critic_progress_counts_the_whole_exploration_and_each_scored_group(monkeypatch, tmp_path):
    """The exploration's group events count within their batch, and evaluate_critic passed them on as they were:
    ``--warmup-groups 200 --batch-size 8`` printed "explore train: 8/8" 25 times and never how far it was (the
    score calibration's 32 critiques said nothing), and scoring reported once per variant, *before* it was scored
    ("score evidence_only: 7/7" was the CLI's only line through minutes of scoring)."""
    from hmrcritic.agent.evaluate_critic import evaluate_critic

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")  # train 40, test 2 scenes
    calls = []
    evaluate_critic(split="test", num_groups=2, num_generations=3, warmup_groups=3, batch_size=2,
                    variants=["evidence_only"], source="perturbed", workdir=tmp_path / "w",
                    progress=lambda stage, i, n: calls.append((stage, i, n)))
    assert [c for c in calls if c[0].startswith("explore")] == [("explore train", i, 3) for i in (1, 2, 3)]
    cal = [c for c in calls if c[0].startswith("calibrate")]
    assert cal and cal[-1][1] == cal[-1][2]
    assert [c for c in calls if c[0].startswith("score")] == [("score evidence_only", i, 2) for i in (1, 2)]


def _strict(text: str):
    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_learning_curve_json_is_strict_where_a_heldout_critique_failed(tmp_path, monkeypatch):
    """A held-out group whose critique failed is a NaN in its row's ``per_group_spearman`` (a round that scored
    none: NaN means); learning_curve.json was written with ``json.dumps`` as is, the bare word NaN, which jq and
    strict parsers refuse — while ``--json`` printed the same result with nulls."""
    import hmrcritic.agent.explore as ex
    from hmrcritic.agent import learning_curve as lc
    from hmrcritic.memory.store import MemoryStore

    (tmp_path / "mem").mkdir()
    mem = MemoryStore(tmp_path / "mem")
    held = [SimpleNamespace(group_id="test-000000"), SimpleNamespace(group_id="test-000001")]
    monkeypatch.setattr(ex, "explore", lambda memory, rounds=1, **kw: ex._add_explored(
        memory, "train", [f"train-{rounds:06d}"], {}))
    monkeypatch.setattr(ex, "error_table", lambda g: {m: np.array([1.0, 2.0, 3.0]) for m in ("pa_mpjpe", "mpjpe",
                                                                                               "pve")})
    monkeypatch.setattr(lc, "score_groups", lambda groups, *a, **k: ([np.array([3.0, 2.0, 1.0]), None], ["v", ""]))
    monkeypatch.setattr(lc, "plot_curve", lambda rows, path: path)
    res = lc.learning_curve(mem, rounds=1, batch_size=1, heldout=held, out_dir=tmp_path / "out")
    assert math.isnan(res["rows"][0]["per_group_spearman"][1])  # the Python result as documented
    written = _strict((tmp_path / "out" / "learning_curve.json").read_text(encoding="utf-8"))
    assert written["rows"][0]["per_group_spearman"] == [1.0, None]
    assert [r["round"] for r in written["rows"]] == [0, 1]


def test_evaluations_of_two_given_memories_keep_their_own_folders(monkeypatch, tmp_path):
    """The evaluation folder (``runs/evaluate/<key>``: result.json, the starter memory) was keyed by everything but
    the ``--memory-dir`` brought, so evaluating memory B after (or beside) memory A wrote B's result.json over A's
    while A's payload still named that folder as where its result is."""
    import hmrcritic.agent.groups as groups_mod
    from hmrcritic.agent import learning_curve as lc
    from hmrcritic.agent.evaluate_critic import evaluate_critic
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setattr(groups_mod, "make_groups", lambda *a, **k: ([], "perturbed"))

    def fake_eval(memory, groups, **kw):
        return {"rows": [], "per_group_errors": [], "memory_version": str(memory), "num_groups": 0}

    monkeypatch.setattr(lc, "explore_eval", fake_eval)
    out = []
    for name in ("a", "b"):
        MemoryStore(tmp_path / name)
        out.append(evaluate_critic(num_groups=1, num_generations=3, source="perturbed", variants=["full"],
                                   memory_dir=tmp_path / name))
    assert out[0]["workdir"] != out[1]["workdir"]
    for p in out:
        assert json.loads((Path(p["workdir"]) / "result.json").read_text())["memory_dir"] == p["memory_dir"]


def test_explore_eval_removes_the_starter_memory_it_made(monkeypatch, tmp_path):
    """``explore_eval`` without ``starter=`` made the no_reflection row's starter memory in a temporary folder
    and left it there: every ``hmrcritic explore-eval`` with that variant (the default: all variants) left a
    Chroma database in /tmp for good."""
    import tempfile

    from hmrcritic.agent.learning_curve import explore_eval
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    generate_split("test", n=2, seed=6, quiet=True)
    mem = _explored_memory(tmp_path / "mem", "train", ["train-000000"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    res = explore_eval(mem, _groups("test", 1), variants=["no_reflection"])
    assert res["rows"][0]["groups_scored"] == 1
    assert not list((tmp_path / "tmp").glob("hmrcritic-starter-*"))


def test_learning_curve_refuses_a_round_that_explored_a_heldout_scene(same_seed_splits, monkeypatch):
    """The same scene check in every round of ``learning_curve``: round 1 explored train-000001, which is the
    held-out test-000001 under another id (splits of one seed), and the curve went on scoring it."""
    import hmrcritic.agent.explore as ex
    from hmrcritic.agent import learning_curve as lc
    from hmrcritic.memory.store import MemoryStore

    (same_seed_splits / "mem").mkdir()
    mem = MemoryStore(same_seed_splits / "mem")
    monkeypatch.setattr(ex, "explore", lambda memory, rounds=1, **kw: ex._add_explored(
        memory, "train", [f"train-{rounds:06d}"], {}))
    scored = []

    def fake_score(groups, *a, tag="", **k):
        scored.append(tag)
        return [None] * len(groups), [""] * len(groups)

    monkeypatch.setattr(lc, "score_groups", fake_score)
    with pytest.raises(InputError, match="same scene as train-000001"):
        lc.learning_curve(mem, rounds=2, batch_size=1, heldout=_groups("test", 2))
    assert scored == ["curve-r0"]


def test_evaluate_critic_refuses_no_groups_before_exploring(monkeypatch, tmp_path):
    """``--num-groups 0`` passed every check, explored the whole warm-up (200 groups: many minutes) and only then
    failed in explore_eval with "no held-out groups in split 'test'" — as if the split were empty."""
    import hmrcritic.agent.explore as ex
    from hmrcritic.agent.evaluate_critic import evaluate_critic

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")
    explored = []
    monkeypatch.setattr(ex, "explore", lambda *a, **k: explored.append(k))
    with pytest.raises(InputError, match="--num-groups must be ≥ 1"):
        evaluate_critic(num_groups=0, num_generations=3, warmup_groups=2, source="perturbed", variants=["full"])
    assert explored == []


def test_a_second_evaluation_with_the_same_settings_says_what_to_do(monkeypatch, tmp_path, memory_held_elsewhere):
    """Two ``evaluate-critic`` runs with the same settings share one cached exploration; while the first explored,
    the second failed with the store's "busy …; wait for it to finish or use another --memory-dir", and
    evaluate-critic's --memory-dir is "score with this explored memory", not a folder to explore into."""
    import hmrcritic.agent.groups as groups_mod
    from hmrcritic.agent import evaluate_critic as ec

    monkeypatch.setattr(groups_mod, "make_groups", lambda *a, **k: ([SimpleNamespace(group_id="test-000000")],
                                                                     "perturbed"))
    monkeypatch.setattr(ec, "split_digest", lambda split: "data")
    work = tmp_path / "w"
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(work / "memory")
    with memory_held_elsewhere(work / "memory"), pytest.raises(InputError) as got:
        ec.evaluate_critic(num_groups=1, num_generations=3, warmup_groups=2, source="perturbed",
                           variants=["full"], workdir=work)
    assert "another evaluation with these settings" in str(got.value)
    assert "--memory-dir" not in str(got.value)
