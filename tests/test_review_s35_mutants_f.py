"""Session 35 mutation audit (helper f) of ``hmrcritic/agent/evaluate_critic.py`` and the rule memory
(``hmrcritic/memory/rules.py``, with the conditions of ``hmrcritic/memory/schema.py``): each test here killed a
mutant the existing tests let through. Expected values are worked out by hand from the docstrings and
docs/CONTRACTS.md, never copied from the code's output."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest


class _Stop(Exception):
    """Raised by a patched ``_claim_workdir`` to end an evaluation once its key is known (nothing explored)."""


def _folder_key(monkeypatch, tmp_path, **settings) -> str:
    """The work-folder key ``evaluate_critic`` claims for these settings, taken before any exploration."""
    import hmrcritic.agent.groups as groups_mod
    from hmrcritic.agent import evaluate_critic as ec

    monkeypatch.setattr(groups_mod, "make_groups",
                        lambda *a, **k: ([SimpleNamespace(group_id="test-000000")], "perturbed"))
    monkeypatch.setattr(groups_mod, "verify_split", lambda *a, **k: None)
    monkeypatch.setattr(ec, "split_digest", lambda split: "data")
    got = {}

    def claim(workdir, key):
        got["key"] = key
        raise _Stop

    monkeypatch.setattr(ec, "_claim_workdir", claim)
    kw = dict(num_groups=1, num_generations=3, warmup_groups=2, source="perturbed", variants=["full"],
              workdir=tmp_path / "w")
    kw.update(settings)
    with pytest.raises(_Stop):
        ec.evaluate_critic(**kw)
    return got["key"]


@pytest.mark.parametrize("setting,a,b", [("tau", 0.5, 0.3), ("max_reflections", 2, 1), ("rules_k", 16, 8),
                                         ("batch_size", 8, 4), ("seed", 0, 1), ("warmup_groups", 2, 3)])
def test_the_exploration_key_changes_with_every_exploration_setting(monkeypatch, tmp_path, setting, a, b):
    """The module docstring: "Exploration is resumable and keyed by its settings" — an explored memory is
    reused only under the settings it was explored with (``_claim_workdir`` refuses a folder of another key).
    Each setting that changes what the exploration does must change the key; the same settings give one key."""
    ka = _folder_key(monkeypatch, tmp_path, **{setting: a})
    assert _folder_key(monkeypatch, tmp_path, **{setting: a}) == ka
    assert _folder_key(monkeypatch, tmp_path, **{setting: b}) != ka


def test_the_se_of_one_value_is_nan_without_a_numpy_warning():
    """``_sem``: NaN with fewer than 2 values, decided by the count — not by numpy's ``std(ddof=1)`` of one value,
    which is NaN too but says "Degrees of freedom <= 0" on the user's console (``--num-groups 1``)."""
    import warnings

    from hmrcritic.agent.evaluate_critic import _sem

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(_sem(np.array([0.3])))
        assert math.isnan(_sem(np.array([])))
    assert _sem(np.array([0.1, 0.3, 0.5])) == pytest.approx(0.2 / math.sqrt(3))


def test_pooled_pearson_bootstrap_se_of_a_two_group_case_by_hand():
    """Two groups, errors 1, 2, 3 in each. Group 0: full ranks perfectly (scores 3, 2, 1 → r = 1), the ablation
    backwards (r = −1); group 1 the other way round. Pooled over both groups each variant's r is 0 (the pairs
    cancel), and a group drawn twice has its own r (repeating points leaves a correlation as it is). Resampling
    the 2 groups with replacement: {0, 0} w.p. 1/4 → difference 2, {1, 1} w.p. 1/4 → −2, one of each w.p.
    1/2 → 0: the difference's SD is √2 — the bootstrap SE, up to the noise of 1000 resamples (≈ 2 %).
    Top-1: full picks error 1 then 3, the ablation 3 then 1: d = −2, +2, mean 0, SE = 2.828/√2 = 2.
    Each row draws its own stream, seeded by (seed, variant name): two ablations with identical scores get two
    different estimates of the same SE."""
    from hmrcritic.agent.evaluate_critic import _paired_pearson_top1_deltas

    errors = [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    full = [[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]
    ablation = [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]
    rows = [{"variant": v} for v in ("full", "no_rules", "no_prototypes")]
    _paired_pearson_top1_deltas(rows, {"full": full, "no_rules": ablation, "no_prototypes": ablation}, errors,
                                seed=0, n_boot=1000)
    for r in rows[1:]:
        assert r["full_minus_pearson"] == pytest.approx(0.0, abs=1e-12)
        assert r["full_minus_pearson_se"] == pytest.approx(math.sqrt(2), rel=0.1)
        assert r["full_minus_top1_mm"] == pytest.approx(0.0)
        assert r["full_minus_top1_sem"] == pytest.approx(2.0)
    assert rows[1]["full_minus_pearson_se"] != rows[2]["full_minus_pearson_se"]


def test_a_work_folder_explored_under_another_key_is_refused(tmp_path):
    """``_claim_workdir``: a folder recorded under another key is refused (its memory was explored under other
    settings); the same key, or a folder without the record, is taken (and then recorded)."""
    import json

    from hmrcritic.agent.evaluate_critic import KEY_FILE, _claim_workdir
    from hmrcritic.errors import InputError

    work = tmp_path / "w"
    work.mkdir()
    _claim_workdir(work, "aaaaaaaaaaaa")
    assert json.loads((work / KEY_FILE).read_text())["key"] == "aaaaaaaaaaaa"
    _claim_workdir(work, "aaaaaaaaaaaa")
    with pytest.raises(InputError, match="other settings"):
        _claim_workdir(work, "bbbbbbbbbbbb")


def test_one_paired_group_has_no_bootstrap_or_top1_se():
    """``evaluate_critic``'s docstring: SEs are NaN with fewer than 2 groups, "as are the paired SEs" — resampling
    one group 1000 times gives 1000 equal differences, a "± 0.000" that is no measurement."""
    from hmrcritic.agent.evaluate_critic import _paired_pearson_top1_deltas

    rows = [{"variant": "full"}, {"variant": "no_rules"}]
    _paired_pearson_top1_deltas(rows, {"full": [[3.0, 2.0, 1.0]], "no_rules": [[1.0, 2.0, 3.0]]},
                                [[1.0, 2.0, 3.0]], n_boot=100)
    assert rows[1]["full_minus_pearson"] == pytest.approx(2.0)  # r = 1 against r = −1
    assert math.isnan(rows[1]["full_minus_pearson_se"]) and math.isnan(rows[1]["full_minus_top1_sem"])


def _fake_evaluation(monkeypatch, tmp_path, rows, errors, **settings):
    """``evaluate_critic`` on a brought memory with ``explore_eval`` replaced by fixed per-group figures."""
    import hmrcritic.agent.groups as groups_mod
    from hmrcritic.agent import evaluate_critic as ec
    from hmrcritic.agent import learning_curve as lc
    from hmrcritic.memory.store import MemoryStore

    n = settings.get("num_groups", len(errors))
    monkeypatch.setattr(groups_mod, "make_groups",
                        lambda *a, **k: ([SimpleNamespace(group_id=f"test-{i:06d}") for i in range(n)], "perturbed"))
    monkeypatch.setattr(groups_mod, "verify_split", lambda *a, **k: None)

    def fake_eval(memory, groups, **kw):
        return {"rows": [dict(r) for r in rows], "per_group_errors": errors, "memory_version": "v",
                "num_groups": len(errors), "random_pa_mpjpe_mm": 0.0, "oracle_pa_mpjpe_mm": 0.0}

    monkeypatch.setattr(lc, "explore_eval", fake_eval)
    mem = tmp_path / "mem"
    if not mem.is_dir():
        MemoryStore(mem).close()
    kw = dict(num_groups=len(errors), num_generations=3, source="perturbed",
              variants=[r["variant"] for r in rows], memory_dir=mem, workdir=tmp_path / "w")
    kw.update(settings)
    return ec.evaluate_critic(**kw)


def _rows():
    errors = [[10.0, 20.0, 30.0]] * 4
    full = {"variant": "full", "per_group_spearman": [0.2, float("nan"), 0.4, 0.6],
            "per_group_scores": [[3.0, 2.0, 1.0], None, [3.0, 1.0, 2.0], [2.0, 3.0, 1.0]]}
    no_rules = {"variant": "no_rules", "per_group_spearman": [0.1, 0.3, float("nan"), 0.2],
                "per_group_scores": [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], None, [1.0, 3.0, 2.0]]}
    return [full, no_rules], errors


def test_standard_errors_leave_out_the_groups_a_variant_failed(monkeypatch, tmp_path):
    """``spearman_sem`` is the SE over the groups the variant scored, and the paired difference is over the
    groups *both* scored (``full_minus_groups``). By hand: full scored ρ = 0.2, 0.4, 0.6 → sd 0.2, SE
    0.2/√3; full − no_rules on groups 0 and 3: d = 0.1, 0.4 → mean 0.25, sd 0.3/√2, SE 0.15, over 2 groups."""
    rows, errors = _rows()
    out = {r["variant"]: r for r in _fake_evaluation(monkeypatch, tmp_path, rows, errors)["rows"]}
    assert out["full"]["spearman_sem"] == pytest.approx(0.2 / math.sqrt(3))
    assert out["no_rules"]["spearman_sem"] == pytest.approx(0.1 / math.sqrt(3))  # 0.1, 0.3, 0.2: sd 0.1
    assert out["no_rules"]["full_minus_spearman"] == pytest.approx(0.25)
    assert out["no_rules"]["full_minus_sem"] == pytest.approx(0.15)
    assert out["no_rules"]["full_minus_groups"] == 2
    # "to every ablation row": full is not compared with itself (a 0 ± 0 there reads as a measured no-change)
    assert not any(k.startswith("full_minus") for k in out["full"])


def test_each_number_of_groups_scored_keeps_its_own_result_file(monkeypatch, tmp_path):
    """The docstring: ``result-<key>.json`` is "keyed by the exploration and the split, ``num_groups`` and
    variants scored" — an evaluation of 2 groups must not overwrite the file of one of 4."""
    rows, errors = _rows()
    four = _fake_evaluation(monkeypatch, tmp_path, rows, errors)
    two = _fake_evaluation(monkeypatch, tmp_path, rows, errors, num_groups=2)
    assert four["workdir"] == two["workdir"]  # one exploration, one folder
    assert four["result_file"] != two["result_file"]


# ---- rule memory (hmrcritic/memory/rules.py) --------------------------------------------------------------


def _rule(rule_id, tags=(), n_used=0, n_success=0, **kw):
    from hmrcritic.memory.schema import Rule

    return Rule(rule_id=rule_id, text=f"rule {rule_id}", tags=list(tags), n_used=n_used, n_success=n_success,
                origin="user", **kw)


def _vectors(n):
    from hmrcritic.memory.embeddings import TEXT_DIM

    v = np.zeros((n, TEXT_DIM), dtype=np.float32)
    v[np.arange(n), np.arange(n) % TEXT_DIM] = 1.0
    return v


def test_psi_of_a_used_rule_by_hand():
    """Ψ = |T_q ∩ T_i| + n_success/n_used + C·sqrt(ln(N_total + 1) / (n_used + 1)) (rules.py, PAPER.md §2).
    Rule a: 1 shared tag, 2 of 4 uses a success; rule b: never used. N_total = 4, so with C = 1
    Ψ_a = 1 + 0.5 + sqrt(ln 5 / 5) and Ψ_b = 0 + 0 + sqrt(ln 5 / 1)."""
    from hmrcritic.memory.rules import psi_scores

    got = psi_scores([_rule("a", ["legs"], 4, 2), _rule("b", ["arms"])], ["legs"], 1.0)
    assert got[0] == pytest.approx(1.5 + math.sqrt(math.log(5) / 5))
    assert got[1] == pytest.approx(math.sqrt(math.log(5)))


def test_retrieval_scores_are_psi_and_ties_go_by_rule_id(tmp_path):
    """The memory's own ranking (``RuleMemory.scored``) is the same Ψ, by hand as above, and rules of equal Ψ
    come in ``rule_id`` order ("Ties are broken by rule_id so retrieval is deterministic") — 40 fresh,
    untagged rules all tie, added in reverse order."""
    from hmrcritic.memory.store import MemoryStore

    with MemoryStore(tmp_path / "mem", chroma_url="") as store:
        store.rules.retire([r.rule_id for r in store.rules.all()])  # the starter rules: out of retrieval
        ids = [f"user-{i:02d}" for i in range(40)]
        store.rules.add([_rule(i) for i in reversed(ids)], embeddings=_vectors(40))
        # retrieve and the memory's arrays agree on a tie: every fresh rule has Ψ = C·sqrt(ln 1 / 1) = 0
        assert [r.rule_id for r in store.rules.retrieve([], k=40)] == ids
        store.rules.update([_rule("user-05", ["legs"], 4, 2)])
        scored = dict((r.rule_id, p) for r, p in store.rules.scored(["legs"]))
        # query tags as the vocabulary normalises them: one comma string, another case (overlap 1 as above)
        for query in ("Legs,arms", ["LEGS"]):
            assert dict((r.rule_id, p) for r, p in store.rules.scored(query))["user-05"] == scored["user-05"]
    assert scored["user-05"] == pytest.approx(1.5 + math.sqrt(math.log(5) / 5))
    assert scored["user-00"] == pytest.approx(math.sqrt(math.log(5)))


def test_a_tag_vocabulary_check_drops_and_negative_huge_rounds_are_refused():
    """``validate``: ``round_created`` must fit in 64 bits in *size* (Chroma's int64): −2**64 is refused as
    +2**64 is; a tag outside the vocabulary is dropped (with a warning), a known one normalised."""
    from hmrcritic.errors import InputError
    from hmrcritic.memory.rules import RuleMemory

    rm = RuleMemory(store=None)  # validate reads no store
    with pytest.raises(InputError, match="64 bits"):
        rm.validate(_rule("r", round_created=-(2**64)))
    with pytest.warns(UserWarning, match="not in the tag vocabulary"):
        got = rm.validate(_rule("r", ["Joint-Limits", "elbows"]))
    assert got.tags == ["joint_limits"]


def test_mined_rule_id_is_the_contracts_normalised_sha1():
    """docs/CONTRACTS.md: ``"rule-" + sha1(" ".join(text.lower().split())).hexdigest()[:12]`` — case and runs of
    white space do not make another rule."""
    import hashlib

    from hmrcritic.memory.rules import mined_rule_id

    want = "rule-" + hashlib.sha1(b"knees bend backwards").hexdigest()[:12]
    assert mined_rule_id("Knees  BEND\tbackwards ") == want


def test_an_explicit_rule_id_already_stored_is_refused_even_when_it_looks_mined(tmp_path):
    """``add``: "an explicit id that already exists is an InputError" — only a text added again under its own
    mined id is idempotent; another text under that id would otherwise be dropped without a word."""
    from hmrcritic.errors import InputError
    from hmrcritic.memory.rules import mined_rule_id
    from hmrcritic.memory.schema import Rule
    from hmrcritic.memory.store import MemoryStore

    rid = mined_rule_id("first text")
    with MemoryStore(tmp_path / "mem", chroma_url="") as store:
        store.rules.add([Rule(rule_id=rid, text="first text", origin="user")], embeddings=_vectors(1))
        assert store.rules.add([Rule(rule_id="", text="First  text", origin="user")], embeddings=_vectors(1)) == [rid]
        with pytest.raises(InputError, match="already exists"):
            store.rules.add([Rule(rule_id=rid, text="another text", origin="user")], embeddings=_vectors(1))


# ---- rule conditions (hmrcritic/memory/schema.py: the comparators and the graded ramp) ---------------------


@pytest.mark.parametrize("cmp,at,below,above", [(">", 0, 0, 2), (">=", 2, 0, 2), ("<", 0, 2, 0), ("<=", 2, 2, 0)])
def test_a_step_rule_at_below_and_above_its_threshold(cmp, at, below, above):
    """A step rule takes off ``points`` (2) where ``value comparator threshold`` (10) holds, else 0: at the
    threshold only the inclusive comparators fire; ``fires`` says the same."""
    from hmrcritic.memory.schema import RuleCondition

    c = RuleCondition(measure="reproj_px", comparator=cmp, threshold=10.0, points=2.0)
    assert c.deduction([10.0, 9.0, 11.0]).tolist() == [at, below, above]
    assert [c.fires(v) for v in (10.0, 9.0, 11.0)] == [bool(at), bool(below), bool(above)]


def test_a_graded_rule_ramps_from_its_threshold_and_stops_at_three_times_its_points():
    """docs/CONTRACTS.md: a graded rule takes off ``points · min(3, |value − threshold| / per)`` where it fires.
    points 2, threshold 10, per 4: at 10 → 0, 12 → 1, 18 → 4, 22 → 6 (the cap), 100 → 6; below 10 → 0."""
    from hmrcritic.memory.schema import RuleCondition

    c = RuleCondition(measure="reproj_px", comparator=">=", threshold=10.0, points=2.0, per=4.0)
    assert c.deduction([10.0, 12.0, 18.0, 22.0, 100.0, 5.0]).tolist() == pytest.approx([0, 1, 4, 6, 6, 0])
