"""``hmrcritic evaluate-critic --json`` on a few small groups: the JSON shape and honest warm-up."""

from __future__ import annotations

import json
import math

import pytest

from hmrcritic.cli import main


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A data folder of this module's own: its tiny splits must not become the session's train split (a later
    module fitting the pose prior on it found 40 poses and failed)."""
    return tmp_path_factory.mktemp("data")


CALIBRATION_GROUPS = 8  # groups the warm-up exploration fits its score calibration on here (explore's default: 32)


@pytest.fixture(autouse=True)
def small_world(monkeypatch, tiny_data, small_prior):
    import functools

    from hmrcritic.agent import explore as ex

    monkeypatch.setenv("HMRCRITIC_DATA", str(tiny_data))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")  # tiny splits, made in tiny_data
    # speed only: the calibration is still fitted (checked in test_evaluate_critic_json), on fewer groups
    monkeypatch.setattr(ex, "explore", functools.partial(ex.explore, calibration_groups=CALIBRATION_GROUPS))


@pytest.mark.slow
def test_evaluate_critic_json(capsys):
    args = ["evaluate-critic", "--split", "test", "--num-groups", "2", "--num-generations", "4",
            "--warmup-groups", "3", "--source", "perturbed", "--json"]
    rc = main(args)
    out = capsys.readouterr().out
    assert rc == 0, out
    payload = json.loads(out)
    assert payload["num_groups"] == 2 and payload["explored_groups"] == 3
    assert [r["variant"] for r in payload["rows"]] == ["full", "no_reflection", "no_rules", "no_prototypes",
                                                     "no_calibration", "no_revise", "evidence_only"]
    rows = {r["variant"]: r for r in payload["rows"]}
    # the calibration is an increasing map: it cannot change a within-group ranking or a top-1 pick
    assert rows["no_calibration"]["spearman"] == pytest.approx(rows["full"]["spearman"], abs=1e-9)
    assert rows["no_calibration"]["top1_pa_mpjpe_mm"] == pytest.approx(rows["full"]["top1_pa_mpjpe_mm"])
    for r in payload["rows"]:
        for k in ("spearman", "kendall", "spearman_mpjpe", "kendall_mpjpe", "spearman_pve", "kendall_pve"):
            assert -1.0 <= r[k] <= 1.0, (k, r)
        assert math.isfinite(r["top1_pa_mpjpe_mm"])
        assert payload["oracle_pa_mpjpe_mm"] - 1e-6 <= r["top1_pa_mpjpe_mm"]
        if r["variant"] != "full":  # paired difference to the full agent on the same groups
            full = payload["rows"][0]["spearman"]
            assert r["full_minus_spearman"] == pytest.approx(full - r["spearman"], abs=1e-9)
            assert r["full_minus_sem"] >= 0
            assert r["full_minus_top1_mm"] == pytest.approx(
                payload["rows"][0]["top1_pa_mpjpe_mm"] - r["top1_pa_mpjpe_mm"], abs=1e-6)
            assert r["full_minus_pearson"] == pytest.approx(
                payload["rows"][0]["pearson_pointwise"] - r["pearson_pointwise"], abs=1e-6)
            assert r["full_minus_pearson_se"] >= 0 and r["full_minus_top1_sem"] >= 0
            assert "per_group_scores" not in r
    assert "per_group_errors" not in payload
    assert payload["oracle_pa_mpjpe_mm"] <= payload["random_pa_mpjpe_mm"]

    # the memory was explored on train groups only, and every variant read one frozen version of it
    from hmrcritic.agent.explore import assert_not_explored, explored_record
    from hmrcritic.errors import InputError
    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(path=payload["memory_dir"], read_only=True)
    sources = [p["source"] for p in store.prototypes.export_records()]
    assert sources and all(s.startswith("train/") for s in sources)
    assert store.version() == payload["memory_version"]
    # calibrated (so the no_calibration row above compared two scales), on the groups after the explored ones
    assert store.calibration() is not None and store.calibration().groups == CALIBRATION_GROUPS
    rows = {r["variant"]: r for r in payload["rows"]}
    assert rows["full"]["memory_version"] == [payload["memory_version"]]
    assert rows["no_reflection"]["memory_version"] != rows["full"]["memory_version"]  # the starter memory
    assert set(explored_record(store)["splits"]) == {"train"}
    explored = explored_record(store)["splits"]["train"]["group_ids"]
    assert len(explored) == 3
    with pytest.raises(InputError, match="explored"):
        assert_not_explored(store, "train", explored[:1])

    # a second run with the same settings reuses the explored memory and gives the same numbers
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["rows"] == payload["rows"] and again["memory_version"] == payload["memory_version"]
    assert again["explored_groups"] == 3  # what the memory holds, though this call explored nothing new
    assert all("pearson_pointwise" in r and -1.0 <= r["pearson_pointwise"] <= 1.0 for r in again["rows"])


def test_same_split_is_refused(capsys):
    rc = main(["evaluate-critic", "--split", "train", "--num-groups", "1", "--json"])
    assert rc == 2 and "must differ" in capsys.readouterr().err


def test_paired_differences_pair_the_same_groups_when_a_variant_failed_some():
    """A group a variant failed is NaN in its per-group ρ: the paired difference uses only groups both scored
    (it used to crash on unequal lengths, or silently pair different groups when the counts matched)."""
    import numpy as np

    from hmrcritic.agent.evaluate_critic import _paired_deltas

    nan = float("nan")
    rows = [{"variant": "full"}, {"variant": "no_rules"}, {"variant": "no_prototypes"}]
    per_group = {"full": np.array([0.5, nan, 0.7, 0.9]), "no_rules": np.array([0.1, 0.2, nan, 0.5]),
                 "no_prototypes": np.array([0.5, 0.6, 0.7, 0.8])}
    _paired_deltas(rows, per_group)
    assert rows[1]["full_minus_groups"] == 2 and math.isclose(rows[1]["full_minus_spearman"], 0.4)
    assert rows[2]["full_minus_groups"] == 3 and math.isclose(rows[2]["full_minus_spearman"], 0.1 / 3)
