"""Review s32 (mutants, part 2): tests that kill mutants of memory maintenance, prototypes, the store, the
alignment dataset and the diffusion sampler which the suite let live. Every expected value is worked out by hand
from the documented behaviour (module docstrings), never copied from the code's output."""

from __future__ import annotations

import numpy as np
import pytest

from hmrcritic.errors import InputError
from hmrcritic.memory.embeddings import POSE_DIM
from hmrcritic.memory.maintenance import (
    _text_compatible,
    plan_maintenance,
    plan_merges,
    plan_retirements,
    same_condition,
)
from hmrcritic.memory.prototypes import PrototypeMemory, proto_digest
from hmrcritic.memory.schema import Prototype, Rule, RuleCondition, ScoreCalibration
from hmrcritic.memory.store import MemoryStore, ReadOnlyMemoryError, merge_explored


def _rule(rid: str, *, measure: str = "penetration_mm", thr: float | None = 10.0, hard: bool = False,
          per: float | None = None, n_used: int = 0, n_success: int = 0, round_created: int = 0,
          tags: list[str] | None = None) -> Rule:
    cond = None if thr is None else RuleCondition(measure=measure, comparator=">", threshold=thr, points=2.0,
                                                  per=per, hard=hard)
    return Rule(rule_id=rid, text=f"rule {rid}", tags=tags or [], n_used=n_used, n_success=n_success,
                round_created=round_created, condition=cond)


# ---- memory/maintenance.py ----------------------------------------------------------------------------------


def test_thresholds_exactly_rel_tol_apart_are_the_same_condition():
    # rel_tol 0.5 of the larger threshold 2 is 1 (above 5 % of penetration's 30 mm scale, 1.5): |2 - 1| = 1 ≤ 1
    assert same_condition(_rule("a", thr=1.0), _rule("b", thr=2.0), rel_tol=0.5)
    assert not same_condition(_rule("a", thr=1.0), _rule("b", thr=2.0001), rel_tol=0.5)


def test_thresholds_near_zero_are_compared_on_five_percent_of_the_scale():
    # reproj_px scale 25 → floor 1.25, tol = 0.1 · 1.25 = 0.125 ≥ |0.1 - 0|; without the floor tol would be 0.01
    a, b = _rule("a", measure="reproj_px", thr=0.0), _rule("b", measure="reproj_px", thr=0.1)
    assert same_condition(a, b)


def test_a_hard_rule_never_merges_with_a_soft_twin():
    soft, hard = _rule("a", thr=10.0), _rule("b", thr=10.0, hard=True)
    assert not same_condition(soft, hard)
    prose = _rule("c", thr=None)
    assert not _text_compatible(prose, hard) and not _text_compatible(hard, prose)
    assert _text_compatible(prose, soft)
    emb = {"b": np.ones(4), "c": np.ones(4)}  # identical texts by cosine
    assert plan_merges([hard, prose.model_copy(update={"n_used": 9})], emb).merged == []


def test_the_kept_rule_is_the_most_used_then_the_oldest():
    plan = plan_merges([_rule("a", n_used=1), _rule("b", n_used=5)])
    assert plan.merged == [("b", "a")]
    plan = plan_merges([_rule("a", n_used=3, round_created=4), _rule("b", n_used=3, round_created=1)])
    assert plan.merged == [("b", "a")]


def test_the_kept_rule_absorbs_uses_successes_tags_and_a_missing_condition():
    keep = _rule("k", thr=None, n_used=6, n_success=4, tags=["occlusion"])
    other = _rule("o", thr=10.0, n_used=2, n_success=1, tags=["truncation"])
    plan = plan_merges([keep, other], {"k": np.array([1.0, 0.0]), "o": np.array([1.0, 0.01])})
    assert plan.merged == [("k", "o")]
    kept = plan.updates["k"]
    assert (kept.n_used, kept.n_success) == (8, 5)
    assert set(kept.tags) == {"occlusion", "truncation"}
    assert kept.condition is not None and kept.condition.threshold == 10.0
    assert plan.updates["o"].retired


def test_retirement_boundaries_and_hard_rules():
    # exactly min_uses uses: judged; a rate of exactly min_rate is not *below* it
    assert plan_retirements([_rule("a", n_used=8, n_success=0)], 8, 0.3).retired == ["a"]
    assert plan_retirements([_rule("a", n_used=10, n_success=3)], 8, 0.3).retired == []
    assert plan_retirements([_rule("a", n_used=50, n_success=0, hard=True)], 8, 0.3).retired == []


def test_retirement_judges_the_merged_record():
    # neither twin alone reaches 8 uses; merged (10 uses, 0 successes) the kept one is retired
    plan = plan_maintenance([_rule("a", n_used=5), _rule("b", n_used=5)], None, min_uses=8, min_rate=0.3)
    assert plan.merged == [("a", "b")]
    assert plan.retired == ["a"]
    assert plan.updates["a"].retired and plan.updates["a"].n_used == 10


# ---- memory/prototypes.py -----------------------------------------------------------------------------------


def _proto(pid: str, *, overall: float = 5.0, motion: float = 5.0, error_mm: float | None = None,
           seed: int = 0) -> Prototype:
    v = np.random.default_rng(seed).normal(size=POSE_DIM).astype(np.float32)
    return Prototype(proto_id=pid, embedding=v.tolist(), overall=overall, motion_structure=motion,
                     physical_feasibility=5, image_alignment=5, error_mm=error_mm)


def test_check_refuses_scores_above_ten_negative_errors_and_repeated_ids():
    with pytest.raises(InputError, match="outside"):
        PrototypeMemory.check([_proto("p", overall=10.5)])
    with pytest.raises(InputError, match="error_mm"):
        PrototypeMemory.check([_proto("p", error_mm=-1.0)])
    with pytest.raises(InputError, match="unique"):
        PrototypeMemory.check([_proto("p"), _proto("p", seed=1)])
    assert PrototypeMemory.check([_proto("p", overall=10.0, error_mm=0.0)])[0] == ["p"]


def test_the_prototype_digest_covers_every_score():
    base = {"overall": 5.0, "motion_structure": 5.0, "physical_feasibility": 5.0, "image_alignment": 5.0}
    for k in base:
        assert proto_digest(["p"], [base]) != proto_digest(["p"], [{**base, k: 6.0}]), k


@pytest.fixture()
def store(tmp_path):
    with MemoryStore(tmp_path / "mem", chroma_url="") as s:
        yield s


def test_prototype_replacement_keeps_the_version_exact_and_drops_an_old_label(store):
    store.prototypes.add([_proto("p", error_mm=40.0)])
    v1 = store.version()
    store.prototypes.add([_proto("p", motion=6.0)])  # same id, no label, another motion score
    assert store.prototypes.get(["p"])[0].error_mm is None
    assert store.version() != v1
    assert store.verify_version()
    # the running sum accounts for the one record the collection holds (else every version rescans)
    meta = store._collection("episodic_prototypes").metadata
    assert meta["content_count"] == store.prototypes.count() == 1


def test_a_query_for_no_neighbours_is_empty(store):
    store.prototypes.add([_proto("p")])
    assert store.prototypes.query(np.ones((2, POSE_DIM), np.float32), k=0) == [[], []]


def test_a_sum_marked_unknown_is_rescanned(store):
    store.prototypes.add([_proto("p")])
    with store._write():
        store._store_proto_sum(12345, -1)  # what an add cut short leaves behind
    assert store.verify_version()


# ---- memory/store.py ----------------------------------------------------------------------------------------


def test_merge_explored_adds_only_unknown_ids():
    merged, added = merge_explored({"splits": {"train": {"group_ids": ["a"]}}},
                                   {"splits": {"train": {"group_ids": ["a", "b", "b"]}}})
    assert merged["splits"]["train"]["group_ids"] == ["a", "b"]
    assert added == 1


def _cal(fp: str) -> ScoreCalibration:
    return ScoreCalibration(slope=1.5, intercept=0.2, groups=3, hypotheses=4, pearson_before=0.1,
                            pearson_after=0.3, rules_fingerprint=fp)


def test_calibration_enters_the_version_goes_stale_and_can_be_cleared(store):
    v0 = store.version()
    store.set_calibration(_cal(store.rules_fingerprint()))
    assert store.version() != v0
    assert store.stats()["calibration"]["stale"] is False
    store.set_calibration(_cal("not-this-rule-set"))
    assert store.stats()["calibration"]["stale"] is True
    store.set_calibration(None)
    assert store.calibration() is None
    assert store.version() == v0


def test_retired_rules_count_apart_and_still_enter_the_version(store):
    rules = store.rules.all()
    assert len(rules) >= 2
    a = rules[0]
    store.rules.record_use([a.rule_id], success=True)
    s0, fp0 = store.stats(), store.rules_fingerprint()
    store.rules.retire([a.rule_id])
    s1 = store.stats()
    assert s1["rules_retired"] == s0["rules_retired"] + 1 == 1
    assert s1["rules"] == s0["rules"] - 1
    assert s1["rule_uses"] == s0["rule_uses"] - 1
    assert store.rules_fingerprint() != fp0  # the judge no longer uses it
    v1 = store.version()
    r = store.rules.get([a.rule_id])[0]
    r.n_used += 1
    store.rules.update([r])  # a retired rule's history is part of the memory's content
    assert store.version() != v1


def test_a_read_only_store_refuses_writes(store, tmp_path):
    store.close()
    with MemoryStore(tmp_path / "mem", chroma_url="", read_only=True) as ro, pytest.raises(ReadOnlyMemoryError):
        ro.set_calibration(None)


# ---- alignment/dataset.py -----------------------------------------------------------------------------------


def _record(gid: str, overall: list[float], **kw):
    from hmrcritic.agent.schema import HypothesisScore
    from hmrcritic.alignment import dataset as D

    scores = [HypothesisScore(index=i, motion_structure=5, physical_feasibility=5, image_alignment=5, overall=s,
                              rationale="r") for i, s in enumerate(overall)]
    fields = dict(group_id=gid, input_id=gid, source="test", condition=D.ArrayRef(path="groups/g.cond.npz", sha256="0"),
                  hypotheses=D.ArrayRef(path="groups/g.hyps.npz", sha256="0"), num_hypotheses=len(overall), x_dim=4,
                  scores=scores, judge="builtin", memory_version="m0", model_hash="x", seed=0, group_seed=0)
    return D.build_record(**{**fields, **kw})


def test_pair_margin_is_best_minus_worst_and_advantages_are_checked():
    from hmrcritic.alignment import dataset as D

    (pair,) = D.pair_records([_record("g", [2.0, 7.0, 4.0])])
    assert (pair["chosen"]["index"], pair["rejected"]["index"]) == (1, 0)
    assert pair["margin"] == pytest.approx(5.0)
    rec = _record("g", [2.0, 7.0, 4.0])
    assert D.advantages_match(rec)
    assert not D.advantages_match(rec.model_copy(update={"advantages": [1.0, -1.0, 0.0]}))


def test_scan_manifest_reports_repeats_and_whether_they_are_the_same_record(tmp_path):
    import json

    from hmrcritic.alignment import dataset as D

    a, a2, b = _record("a", [1.0, 2.0]), _record("a", [1.0, 3.0]), _record("b", [1.0, 2.0])
    lines = [json.dumps(r.to_line_dict()) for r in (a, b, a, a2)]
    torn = dict(a.to_line_dict(), seed=5)  # its checksum no longer matches
    (tmp_path / D.MANIFEST).write_text("\n".join([*lines, json.dumps(torn)]) + "\n")
    recs, skipped, repeats = D.scan_manifest(tmp_path)
    assert [r.group_id for r in recs] == ["a", "b"]
    assert recs[0].scores[1].overall == 2.0  # the first of a repeated id is kept
    assert skipped == [5]
    assert repeats == [(3, 1, "a", True), (4, 1, "a", False)]
    kept, dropped = D.repair_manifest(tmp_path, check_files=False)
    assert [r.group_id for r in kept] == ["a", "b"] and dropped == 3


def test_array_checksum_covers_dtype_and_shape():
    from hmrcritic.alignment import dataset as D

    z = np.zeros(6, np.float32)
    assert D.arrays_checksum({"x": z}) != D.arrays_checksum({"x": z.view(np.int32)})  # same bytes
    assert D.arrays_checksum({"x": z.reshape(2, 3)}) != D.arrays_checksum({"x": z.reshape(3, 2)})


def test_group_seed_depends_on_the_export_seed_and_keys_must_all_be_there():
    from hmrcritic.alignment import dataset as D
    from hmrcritic.errors import AssetError

    assert D.group_seed_for(0, "img1") != D.group_seed_for(1, "img1")
    with pytest.raises(AssetError, match="missing"):
        D._check_keys(["keypoints", "K"], D.COND_KEYS, "cond")


def test_header_mismatch_names_another_seed():
    from hmrcritic.alignment import dataset as D

    header = D.DatasetHeader(source="test", model_hash="x", judge="builtin", num_generations=2, sample_steps=5,
                             seed=1)
    assert D.header_mismatch(header, _record("g", [1.0, 2.0])) == ["seed=0"]


def test_a_group_with_all_scores_within_the_tolerance_gives_no_pair():
    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.stats import ZERO_VARIANCE_TOL

    rec = _record("g", [0.0, ZERO_VARIANCE_TOL])  # spread exactly the tolerance: tied
    assert rec.zero_variance and D.pair_records([rec]) == []


# ---- hmr/diffusion.py ---------------------------------------------------------------------------------------


def _tiny_model(**kw):
    import torch

    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion

    torch.manual_seed(0)
    return HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2, **kw))


def _two_inputs(same: bool = False):
    import torch

    from hmrcritic.hmr.diffusion import condition_from_keypoints

    g = torch.Generator().manual_seed(3)
    uv = torch.rand(2, 17, 2, generator=g) * torch.tensor([300.0, 400.0]) + torch.tensor([150.0, 40.0])
    uv[1] = uv[1] * 0.5 + 60.0  # the second person elsewhere and smaller
    kp = torch.cat([uv, torch.ones(2, 17, 1)], -1)
    K = torch.tensor([[[800.0, 0, 320], [0, 800, 240], [0, 0, 1]], [[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]])
    if same:  # input 0 twice
        kp, K = kp[[0, 0]], K[[0, 0]]
    return condition_from_keypoints(kp, K, (640, 480))


def test_each_input_s_hypotheses_are_guided_and_placed_by_its_own_keypoints(body):
    """Input 0's hypotheses use input 0's keypoints and intrinsics (guidance and translation): what the second
    input of the batch is must not change them (same generator, same batch size, so the same starting noise)."""
    import torch

    from hmrcritic.hmr.diffusion import sample

    model = _tiny_model().eval()
    kw = dict(num_generations=2, steps=2, body=body, guidance=0.5)
    mixed = sample(model, _two_inputs(), generator=torch.Generator().manual_seed(1), **kw)
    twice = sample(model, _two_inputs(same=True), generator=torch.Generator().manual_seed(1), **kw)
    assert torch.allclose(mixed.x0[0], twice.x0[0], atol=1e-5)
    assert torch.allclose(mixed.transl[0], twice.transl[0], atol=1e-5)
    assert not torch.allclose(mixed.transl[1], twice.transl[1], atol=1e-3)  # the inputs do differ


def test_ddim_draws_noise_between_steps_only():
    """σ is 0 on the last DDIM step (ᾱ_prev = 1), so three steps with η > 0 inject noise twice, not three times."""
    import torch

    from hmrcritic.hmr.diffusion import X_DIM, ddim_sample_x0

    model = _tiny_model().eval()
    cond = _two_inputs()
    g = torch.Generator().manual_seed(5)
    ddim_sample_x0(model, cond, steps=3, eta=1.0, generator=g, x_T=torch.zeros(2, X_DIM))
    ref = torch.Generator().manual_seed(5)
    for _ in range(2):
        torch.randn(2, X_DIM, generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())


def test_sampling_puts_a_training_model_back_in_training_mode():
    from hmrcritic.hmr.diffusion import sample

    model = _tiny_model(dropout=0.1).train()
    sample(model, _two_inputs(), num_generations=1, steps=1, solve_transl=False)
    assert model.training


def test_normalisation_floors_the_std_of_a_constant_dimension_and_box_is_centred():
    import torch

    from hmrcritic.hmr.diffusion import X_DIM, person_box

    model = _tiny_model()
    x0 = torch.randn(50, X_DIM)
    x0[:, 0] = 1.0  # never moves in the data
    model.set_normalization(x0)
    assert model.x_std[0].item() == pytest.approx(model.config.std_floor)
    assert torch.isfinite(model.normalize(x0)).all()
    kp = torch.tensor([[[100.0, 100.0, 1.0], [300.0, 200.0, 1.0], [0.0, 0.0, 0.0]]])
    centre, _ = person_box(kp, torch.tensor([640.0, 480.0]))
    assert centre.tolist() == [[200.0, 150.0]]


# ---- agent/judges.py ----------------------------------------------------------------------------------------


def test_dominance_reads_only_measures_of_fired_rules_with_points():
    from hmrcritic.agent.judges import dominance_measures

    rules = [_rule("a", measure="penetration_mm"), _rule("b", measure="reproj_px"),
             Rule(rule_id="c", text="c", condition=RuleCondition(measure="asymmetry", comparator=">", threshold=0.1,
                                                                 points=0.0))]
    assert dominance_measures(rules, {"a": [0], "c": [1]}) == {"penetration_mm"}


def test_nan_evidence_is_refused_and_inf_is_kept():
    from types import SimpleNamespace

    from hmrcritic.agent.judges import _check_evidence
    from hmrcritic.errors import JudgeError

    with pytest.raises(JudgeError, match="NaN"):
        _check_evidence(SimpleNamespace(num_hypotheses=2, group_id="g", evidence={"reproj_px": [1.0, float("nan")]}))
    _check_evidence(SimpleNamespace(num_hypotheses=2, group_id="g", evidence={"reproj_px": [1.0, float("inf")]}))


def test_a_revision_on_a_calibrated_scale_takes_slope_times_the_points():
    """A rule issue multiplies the score by exp(-decay · points); on a calibrated scale (slope γ) a point is worth γ
    times more log-score: 8 · exp(-0.03 · 2 · 3 points) for γ = 2."""
    import math

    from hmrcritic.agent.judges import BuiltinJudge, JudgeContext, ReflectionIssue
    from hmrcritic.agent.schema import GroupCritique, HypothesisScore

    prev = GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5, image_alignment=5,
                                                 overall=8.0, rationale="r") for i in range(2)], summary="s")
    rule = Rule(rule_id="a", text="a", condition=RuleCondition(measure="penetration_mm", comparator=">", threshold=10.0,
                                                               points=3.0))
    ctx = JudgeContext(group_id="g", num_hypotheses=2, evidence={"penetration_mm": [20.0, 0.0]}, rules=[rule],
                       issues=[ReflectionIssue(kind="rule", rule_id="a", indices=[0])], previous=prev, round=1,
                       calibration=_cal("x").model_copy(update={"slope": 2.0}))
    out = BuiltinJudge(point_decay=0.03).revise(ctx)
    assert out.scores[0].overall == pytest.approx(8.0 * math.exp(-0.03 * 2.0 * 3.0))
    assert out.scores[1].overall == pytest.approx(8.0)


def test_record_files_ok_refuses_arrays_of_another_width(tmp_path):
    from hmrcritic.alignment import dataset as D

    (tmp_path / "groups").mkdir()
    cond = {"keypoints": np.ones((17, 3), np.float32), "K": np.diag([500.0, 500.0, 1.0]).astype(np.float32),
            "image_size": np.array([640, 480], np.int64)}
    hyps = {"x0": np.zeros((2, 6), np.float32), "global_orient": np.zeros((2, 3), np.float32),
            "body_pose": np.zeros((2, 69), np.float32), "betas": np.zeros((2, 10), np.float32),
            "transl": np.zeros((2, 3), np.float32)}
    np.savez(tmp_path / "groups" / "g.cond.npz", **cond)
    np.savez(tmp_path / "groups" / "g.hyps.npz", **hyps)
    refs = dict(condition=D.ArrayRef(path="groups/g.cond.npz", sha256=D.arrays_checksum(cond)),
                hypotheses=D.ArrayRef(path="groups/g.hyps.npz", sha256=D.arrays_checksum(hyps)))
    assert D.record_files_ok(tmp_path, _record("g", [1.0, 2.0], x_dim=6, **refs))
    assert not D.record_files_ok(tmp_path, _record("g", [1.0, 2.0], x_dim=4, **refs))  # x0 is 6 wide


def test_the_reader_skips_tied_groups_and_refuses_arrays_of_another_width(tmp_path):
    import json

    from hmrcritic.alignment import dataset as D
    from hmrcritic.errors import AssetError

    (tmp_path / "groups").mkdir()
    cond = {"keypoints": np.ones((17, 3), np.float32), "K": np.diag([500.0, 500.0, 1.0]).astype(np.float32),
            "image_size": np.array([640, 480], np.int64)}
    hyps = {"x0": np.zeros((2, 6), np.float32), "global_orient": np.zeros((2, 3), np.float32),
            "body_pose": np.zeros((2, 69), np.float32), "betas": np.zeros((2, 10), np.float32),
            "transl": np.zeros((2, 3), np.float32)}
    np.savez(tmp_path / "groups" / "g.cond.npz", **cond)
    np.savez(tmp_path / "groups" / "g.hyps.npz", **hyps)
    refs = dict(condition=D.ArrayRef(path="groups/g.cond.npz", sha256=D.arrays_checksum(cond)),
                hypotheses=D.ArrayRef(path="groups/g.hyps.npz", sha256=D.arrays_checksum(hyps)))
    header = D.DatasetHeader(source="test", model_hash="x", judge="builtin", num_generations=2, sample_steps=5, seed=0)
    (tmp_path / D.HEADER).write_text(header.model_dump_json())
    recs = [_record("tied", [3.0, 3.0], x_dim=4, **refs), _record("apart", [1.0, 2.0], x_dim=4, **refs)]
    (tmp_path / D.MANIFEST).write_text("".join(json.dumps(r.to_line_dict()) + "\n" for r in recs))
    ds = D.GroupPreferenceDataset(tmp_path, verify=False, skip_zero_variance=True)
    assert [r.group_id for r in ds.records] == ["apart"]
    with pytest.raises(AssetError, match="x_dim 4"):
        ds[0]  # the file's x0 is 6 wide, the record says 4
