"""Review s13 (evaluate-critic / explore-eval / learning-curve bookkeeping): warm-up of 0 groups, the exploration
key of a VLM judge, the held-out guard for given groups, and the paired statistics when a variant failed."""

from __future__ import annotations

import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from hmrcritic.errors import InputError


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A data folder of this module's own (its tiny splits must not become the session's train split)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture()
def small_world(monkeypatch, tiny_data, small_prior):
    monkeypatch.setenv("HMRCRITIC_DATA", str(tiny_data))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")  # tiny splits, made in tiny_data


def test_warmup_groups_zero_scores_the_starter_memory(small_world, tmp_path, capsys):
    """``--warmup-groups 0`` is documented as "starter memory" and allowed by the ≥ 0 check, but it reached
    ``explore(limit=0)``, which refuses it: the command died with "explore: --limit must be ≥ 1 group, got 0"
    (an option the user never gave)."""
    from hmrcritic.cli import main

    rc = main(["evaluate-critic", "--split", "test", "--num-groups", "1", "--num-generations", "3",
               "--warmup-groups", "0", "--variants", "full", "--source", "perturbed", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    payload = json.loads(captured.out)
    assert payload["explored_groups"] == 0 and payload["num_groups"] == 1
    row = payload["rows"][0]
    assert row["variant"] == "full" and row["groups_scored"] == 1 and math.isfinite(row["spearman"])
    from hmrcritic.memory.starter_rules import starter_rules
    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(payload["memory_dir"], read_only=True)  # the starter rules, nothing mined
    assert sorted(r.rule_id for r in store.rules.all()) == sorted(r.rule_id for r in starter_rules())


def _memory_folder(monkeypatch, **kw) -> str:
    """The memory folder evaluate_critic would explore into (stopped there: nothing is explored or scored)."""
    import hmrcritic.agent.groups as groups_mod
    import hmrcritic.memory.store as store_mod
    from hmrcritic.agent import evaluate_critic as ec

    class Stop(Exception):
        pass

    def stop(path, **kw):
        raise Stop(str(path))

    with monkeypatch.context() as m:
        m.setattr(groups_mod, "make_groups", lambda *a, **k: ([], "perturbed"))
        m.setattr(store_mod, "MemoryStore", stop)
        m.setattr(ec, "code_digest", lambda: "code")
        with pytest.raises(Stop) as got:
            ec.evaluate_critic(num_groups=1, num_generations=3, warmup_groups=1, source="perturbed", **kw)
    return str(got.value)


def test_the_vlm_behind_the_judge_is_part_of_the_exploration_key(small_world, monkeypatch):
    """The explored memory is cached under a key of everything that decides it. For ``--judge vlm`` that key held
    only the name "vlm", so exploring with another ``HMRCRITIC_VLM_MODEL`` (or endpoint) silently reused the
    memory another model's proposals built (a critique's own cache tells them apart: ``api._judge_identity``)."""

    def memory_folder(judge: str) -> str:
        return _memory_folder(monkeypatch, judge=judge)

    monkeypatch.setenv("HMRCRITIC_BASE_URL", "http://localhost:8000/v1")
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-a")
    a = memory_folder("vlm")
    assert memory_folder("vlm") == a  # same settings: the same memory (resumed, re-scored)
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-b")
    assert memory_folder("vlm") != a
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-a")
    monkeypatch.setenv("HMRCRITIC_BASE_URL", "http://otherhost:8000/v1")
    assert memory_folder("vlm") != a
    # the builtin judge has no model behind it: no entry for one in its key
    from hmrcritic.agent import evaluate_critic as ec

    key = ec._key(ws="train", wg=1, g=3, seed=0, source="perturbed", judge="builtin", r=2, k=ec.RULES_K, b=8,
                  tau=0.5, code="code", inputs=ec.inputs_digest("perturbed"), data=ec.split_digest("train"))
    assert memory_folder("builtin").endswith(f"{key}/memory")


def test_the_exploration_splits_content_is_part_of_the_exploration_key(small_world, monkeypatch, tmp_path):
    """Group ids are ``train-<index>`` whatever scenes the split holds: a train split regenerated with another
    seed (``hmrcritic data generate --split train --seed 5``), size or body model kept the key, so the memory
    explored on the old scenes was reused as if it had been explored on the new ones."""
    from hmrcritic.hmr.data import generate_split

    folders = []
    for seed in (1, 2):
        data = tmp_path / f"data{seed}"
        generate_split("train", data / "train", n=4, seed=seed, quiet=True)
        generate_split("test", data / "test", n=2, seed=7, quiet=True)
        monkeypatch.setenv("HMRCRITIC_DATA", str(data))
        folders.append(_memory_folder(monkeypatch))
        assert _memory_folder(monkeypatch) == folders[-1]  # the same data: the same memory
    assert folders[0] != folders[1]


def _explored_memory(path, split: str, ids: list[str]):
    from hmrcritic.agent.explore import _add_explored
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(path)
    _add_explored(path, split, ids, {})
    return path


def test_explore_eval_refuses_given_groups_explored_under_their_own_split(tmp_path):
    """``explore_eval(memory, groups)`` checked the groups only against ``split`` (default "test"), so train
    groups the memory had learned from, given as ``groups``, were scored as held-out ones: the honest-warm-up
    guarantee held only when the caller also passed the right split name."""
    from hmrcritic.agent.learning_curve import explore_eval

    mem = _explored_memory(tmp_path / "mem", "train", ["train-000000", "train-000001"])
    learned = [SimpleNamespace(group_id="train-000001")]
    with pytest.raises(InputError, match="explored"):
        explore_eval(mem, learned, variants=["full"])
    with pytest.raises(InputError, match="explored"):
        explore_eval(mem, learned, split="train", variants=["full"])  # as before


def test_learning_curve_refuses_given_heldout_groups_it_explored(tmp_path, monkeypatch):
    """The same guard in ``learning_curve(heldout=...)``: the held-out groups are checked against
    ``heldout_split`` (default "test") every round, so given groups the rounds explored under "train" passed."""
    import hmrcritic.agent.explore as ex
    from hmrcritic.agent import learning_curve as lc
    from hmrcritic.memory.store import MemoryStore

    (tmp_path / "mem").mkdir()
    mem = MemoryStore(tmp_path / "mem")
    held = [SimpleNamespace(group_id="train-000003"), SimpleNamespace(group_id="test-000000")]
    scored = []

    def fake_explore(memory, split="train", rounds=1, groups=None, **kw):  # round r learns from train-00000r+2
        ex._add_explored(memory, split, [f"train-{rounds + 2:06d}"], {})

    monkeypatch.setattr(ex, "explore", fake_explore)
    monkeypatch.setattr(ex, "error_table", lambda g: {m: np.array([1.0, 2.0]) for m in ("pa_mpjpe", "mpjpe", "pve")})

    def fake_score(groups, *a, tag="", **k):
        scored.append(tag)
        return [None] * len(groups), [""] * len(groups)

    monkeypatch.setattr(lc, "score_groups", fake_score)
    with pytest.raises(InputError, match="explored"):
        lc.learning_curve(mem, rounds=2, batch_size=1, heldout=held, train_groups=[SimpleNamespace(group_id="x")])
    assert scored == ["curve-r0"]  # round 1 learned from train-000003: refused before it was scored


def test_paired_deltas_with_no_group_scored_by_both_add_nothing():
    """A variant that shares no scored group with ``full`` (e.g. full failed every group) got
    ``full_minus_spearman`` NaN ("Mean of empty slice" on stderr, NaN in the --json output) with a paired SE of
    0.0, claiming a measurement; the Pearson/top-1 deltas beside it already left such a row alone."""
    from hmrcritic.agent.evaluate_critic import _paired_deltas, _paired_pearson_top1_deltas

    nan = float("nan")
    rows = [{"variant": "full"}, {"variant": "no_rules"}]
    per_group = {"full": np.array([nan, nan]), "no_rules": np.array([0.2, 0.4])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _paired_deltas(rows, per_group)
        _paired_pearson_top1_deltas(rows, {"full": [None, None], "no_rules": [[1.0, 2.0], [2.0, 1.0]]},
                                    [[1.0, 2.0], [2.0, 1.0]])
    assert rows[1] == {"variant": "no_rules"}
    json.dumps(rows, allow_nan=False)


def _row(variant: str, scored: int) -> dict:
    return {"variant": variant, "spearman": 0.5, "spearman_sem": 0.1, "kendall": 0.4, "spearman_mpjpe": 0.5,
            "spearman_pve": 0.5, "top1_pa_mpjpe_mm": 80.0, "pearson_pointwise": 0.6, "groups_scored": scored}


def test_the_table_says_when_a_variant_scored_fewer_groups():
    """Random pick and oracle are over every group, a variant's ρ and top-1 over the groups it scored: a row
    that failed some groups (a VLM endpoint hiccup) sat beside them with nothing to say it was on fewer groups."""
    from hmrcritic.agent.evaluate_critic import format_table

    payload = {"rows": [_row("full", 4), _row("no_rules", 3)], "num_groups": 4, "split": "test",
               "num_generations": 3, "group_source": "perturbed", "explored_groups": 2, "warmup_split": "train",
               "memory_version": "v", "random_pa_mpjpe_mm": 100.0, "oracle_pa_mpjpe_mm": 60.0}
    text = format_table(payload)
    assert "no_rules: scored 3 of 4 groups" in text
    assert "full: scored" not in text
