"""Session 32 (mutation audit): tests that kill mutants the suite let survive. Each test checks a behaviour from
first principles (a hand-computed value, an invariant, a constructed case); the session's report lists the mutant
each one kills."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

# ------------------------------------------------------------------------------------------------- hmr/metrics


def test_pearson_is_undefined_when_the_second_series_is_constant():
    """pearson() is NaN "if either is constant". A constant whose centred copy is float noise (0.1 three times: its
    mean is not exactly 0.1) gave r = 0 (a number, as if uncorrelated) when only the first series was tested."""
    from hmrcritic.hmr.metrics import pearson

    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    y = torch.full((3,), 0.1, dtype=torch.float64)
    assert math.isnan(float(pearson(x, y)))
    assert math.isnan(float(pearson(y, x)))


def test_mpjpe_refuses_a_batch_of_ground_truths_against_groups_of_hypotheses():
    """A (B,J,3) ground truth against (B,N,J,3) hypotheses broadcasts its batch against the hypotheses (when B == N a
    silently wrong figure): refused, while one lone (J,3) ground truth still serves every hypothesis."""
    from hmrcritic.hmr.metrics import mpjpe, pa_mpjpe

    g = torch.Generator().manual_seed(0)
    hyps = torch.randn(2, 2, 24, 3, generator=g)
    with pytest.raises(ValueError, match="rank"):
        mpjpe(hyps, torch.randn(2, 24, 3, generator=g))
    with pytest.raises(ValueError, match="rank"):
        pa_mpjpe(hyps, torch.randn(2, 24, 3, generator=g))
    lone = torch.randn(24, 3, generator=g)
    assert mpjpe(hyps, lone).shape == (2, 2)
    assert torch.allclose(mpjpe(hyps, lone), mpjpe(hyps, lone.expand(2, 2, 24, 3)))


# ------------------------------------------------------------------------------------------------ agent/evidence


def test_silhouette_iou_of_two_empty_masks_is_zero():
    """No rendered silhouette and no person mask: nothing overlaps, and 0 (the worst IoU) cannot pass as a fit."""
    from hmrcritic.agent.evidence import silhouette_iou

    m = np.zeros((4, 4), bool)
    p = np.zeros((2, 4, 4), bool)
    p[1, :2, :2] = True
    m2 = m.copy()
    m2[:2, :] = True
    assert silhouette_iou(p, m).tolist() == [0.0, 0.0]
    assert silhouette_iou(p, m2).tolist() == [0.0, 0.5]


def test_standard_metrics_pve_centres_each_mesh_on_its_own_pelvis():
    """PVE is pelvis-aligned: each mesh on the SMPL joint 0 of its own body. The same body and mesh 1 m away
    has PVE 0 (and MPJPE 0); centring the ground truth on the prediction's pelvis read 1000 mm."""
    from hmrcritic.hmr.metrics import standard_metrics

    g = torch.Generator().manual_seed(0)
    joints = torch.randn(2, 24, 3, generator=g)
    verts = torch.randn(2, 50, 3, generator=g)
    shift = torch.tensor([1.0, 0.0, 0.0])
    out = standard_metrics(joints, joints + shift, verts, verts + shift)
    assert out["pve"].tolist() == pytest.approx([0.0, 0.0], abs=1e-3)
    assert out["mpjpe"].tolist() == pytest.approx([0.0, 0.0], abs=1e-3)


# ------------------------------------------------------------------------------------------------- agent/judges


def test_rule_reliability_is_laplace_smoothed():
    """(n_success + 1) / (n_used + 2): 1/2 untried, 4/5 after 3 of 3, 1/5 after 0 of 3; the weight
    1 + (2·reliability − 1) is then 1, 1.6 and 0.4."""
    from hmrcritic.agent.judges import rule_reliability, rule_weight
    from hmrcritic.memory.schema import Rule

    cases = [(0, 0, 0.5, 1.0), (3, 3, 0.8, 1.6), (3, 0, 0.2, 0.4)]
    for used, success, rel, weight in cases:
        r = Rule(rule_id="r", text="t", n_used=used, n_success=success)
        assert rule_reliability(r) == pytest.approx(rel)
        assert rule_weight(r) == pytest.approx(weight)


def test_prototype_consensus_weighs_the_most_similar_hit_most():
    """Weights exp((sim − max sim)/T), T = 0.05: a hit 0.4 less similar weighs e^-8 of the nearest one, so the
    value is (almost) the nearest hit's; confidence is the top similarity⁴."""
    from hmrcritic.agent.judges import PrototypeHit, prototype_consensus

    def hit(sim, overall):
        return PrototypeHit(proto_id=f"p{overall}", similarity=sim, overall=overall, motion_structure=5,
                            physical_feasibility=5, image_alignment=5)

    value, conf = prototype_consensus([hit(0.9, 8.0), hit(0.5, 2.0)])
    w = math.exp(-8.0)
    assert value == pytest.approx((8.0 + 2.0 * w) / (1.0 + w))
    assert conf == pytest.approx(0.9**4)


def test_calibrate_level_moves_share_times_confidence_and_never_past_ten():
    from hmrcritic.agent.judges import calibrate_level

    logs = np.log([1.0, 1.0])
    out, shift = calibrate_level(logs, (math.log(3.0), 0.5), 1.0)  # half the way (confidence 0.5) to log 3
    assert shift == pytest.approx(0.5 * math.log(3.0))
    out, shift = calibrate_level(np.log([9.0, 1.0]), (math.log(10.0), 1.0), 1.0)  # capped: the best reaches 10
    assert shift == pytest.approx(math.log(10.0 / 9.0))
    assert float(np.exp(out).max()) == pytest.approx(10.0)


def test_generic_badness_ranks_within_the_group_and_ties_read_zero_on_the_axes():
    """Within-group ranks in [0, 1] (0 = best; ties share their mean rank), on the worse side of each measure
    (silhouette IoU: lower is worse); on an axis a measure the whole group ties on counts 0."""
    from hmrcritic.agent.judges import _mean_rank, generic_badness

    assert _mean_rank(np.array([1.0, 2.0, 2.0, 3.0])).tolist() == [0.0, 1.5, 1.5, 3.0]
    overall, axes = generic_badness({"reproj_px": [1.0, 2.0, 3.0], "joint_limit_deg": [4.0, 4.0, 4.0]}, 3)
    assert overall.tolist() == pytest.approx([0.25, 0.5, 0.75])
    assert axes["physical_feasibility"].tolist() == [0.0, 0.0, 0.0]
    assert axes["image_alignment"].tolist() == pytest.approx([0.0, 0.5, 1.0])
    overall, _ = generic_badness({"silhouette_iou": [0.9, 0.5]}, 2)
    assert overall.tolist() == [0.0, 1.0]


def test_dominance_needs_no_worse_everywhere_and_better_somewhere():
    from hmrcritic.agent.judges import dominance

    d = dominance([], {"reproj_px": [1.0, 2.0, 1.0], "penetration_mm": [0.0, 0.0, 5.0]}, 3)
    assert bool(d[1, 0])  # h0 is better on reprojection and equal on penetration: it dominates h1
    assert not bool(d[0, 1])
    assert bool(d[2, 0]) and not bool(d[0, 2])  # h0 better on penetration, equal on reprojection
    assert not bool(d[1, 2]) and not bool(d[2, 1]) and not bool(d[0, 0])  # h1 and h2 trade off: neither


def test_prototypes_that_settled_low_pull_a_hypothesis_down():
    from hmrcritic.agent.judges import BuiltinJudge, JudgeContext, PrototypeHit

    def hit(overall):
        return PrototypeHit(proto_id=f"p{overall}", similarity=1.0, overall=overall, motion_structure=5,
                            physical_feasibility=5, image_alignment=5)

    ctx = JudgeContext(group_id="g", num_hypotheses=2, evidence={"reproj_px": [3.0, 3.0]},
                       prototypes=[[hit(9.0)], [hit(1.0)]])
    scores = BuiltinJudge(proto_level=0.0).critique(ctx).scores
    assert scores[0].overall > scores[1].overall


def _revise(overall, issues, evidence):
    from hmrcritic.agent.judges import BuiltinJudge, JudgeContext
    from hmrcritic.agent.schema import GroupCritique, HypothesisScore

    prev = GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5,
                                                 image_alignment=5, overall=o, rationale="r")
                                 for i, o in enumerate(overall)], summary="s", rules_applied=[])
    ctx = JudgeContext(group_id="g", num_hypotheses=len(overall), evidence=evidence, previous=prev,
                       issues=issues, round=1)
    return [s.overall for s in BuiltinJudge().critique(ctx).scores]


def test_revise_orders_a_dominated_pair_that_was_tied():
    """A contradiction with the two scores equal still puts the dominated hypothesis below the one dominating it."""
    from hmrcritic.agent.judges import ReflectionIssue

    out = _revise([5.0, 5.0], [ReflectionIssue(kind="contradiction", indices=[0, 1])],
                  {"reproj_px": [9.0, 1.0]})
    assert out[0] < out[1]


def test_revise_moves_a_neighbour_flagged_score_halfway_in_log_units():
    """Halfway in log units between 4 and 9 is the geometric mean, 6 (not the arithmetic 6.5)."""
    from hmrcritic.agent.judges import ReflectionIssue

    out = _revise([4.0, 9.0], [ReflectionIssue(kind="neighbours", indices=[0], target=9.0)],
                  {"reproj_px": [1.0, 1.0]})
    assert out == pytest.approx([6.0, 9.0])


def test_propose_rules_for_a_lower_is_worse_measure():
    """Over-rated by exactly max(2, N // 4) ranks counts; for silhouette IoU (lower is worse) the rule reads "<"
    with its threshold halfway between the two groups' medians."""
    from hmrcritic.agent.judges import BuiltinJudge, JudgeContext, Mistake

    ctx = JudgeContext(group_id="g", num_hypotheses=4, evidence={"silhouette_iou": [0.2, 0.9, 0.9, 0.9]})
    m = Mistake(index=0, overall=9.0, critic_rank=0, true_rank=2, error_mm=90.0)
    rules = BuiltinJudge().propose_rules(ctx, [m]).rules
    assert len(rules) == 1
    assert (rules[0].measure, rules[0].comparator, rules[0].threshold) == ("silhouette_iou", "<", 0.55)


def test_of_ten_and_rules_of_ten_by_hand():
    """A hard rule counts its stated points whatever its record: 10·(1 − e^(−0.03·8)); soft rules compound with
    their weights: a 3-of-3 rule (weight 1.6) of 5 points and an untried one of 5 take 10·(1 − e^(−0.03·13))."""
    from hmrcritic.agent.judges import of_ten, rules_of_ten
    from hmrcritic.memory.schema import Rule, RuleCondition

    hard = Rule(rule_id="h", text="t", n_used=10, n_success=0,
                condition=RuleCondition(measure="penetration_mm", comparator=">", threshold=1.0, points=8.0,
                                        hard=True))
    assert float(of_ten(hard, 8.0)) == pytest.approx(10 * (1 - math.exp(-0.03 * 8)))
    good = Rule(rule_id="a", text="a", n_used=3, n_success=3,
                condition=RuleCondition(measure="reproj_px", comparator=">", threshold=10.0, points=5.0))
    new = Rule(rule_id="b", text="b", condition=RuleCondition(measure="reproj_px", comparator=">", threshold=20.0,
                                                              points=5.0))
    off = rules_of_ten([good, new], {"reproj_px": [30.0, 15.0, 1.0]}, 3)
    assert off.tolist() == pytest.approx([10 * (1 - math.exp(-0.03 * 13)), 10 * (1 - math.exp(-0.03 * 8)), 0.0])


# ------------------------------------------------------------------------------------------------ memory/rules


def test_psi_counts_every_shared_tag(tmp_path):
    """Ψ = |T_q ∩ T_i| + success + C·sqrt(ln(N_total + 1)/(n_used + 1)): a fresh rule sharing two of the query's tags
    scores 2 + sqrt(ln 1 / 1) = 2, one sharing one tag 1 (retrieval and the `scored` values agree)."""
    from hmrcritic.memory.schema import Rule, RuleCondition
    from hmrcritic.memory.store import MemoryStore

    cond = RuleCondition(measure="reproj_rel", comparator=">", threshold=0.1, points=1.0)
    rules = [Rule(rule_id=rid, text=f"rule {rid}", tags=tags, origin="user", condition=cond)
             for rid, tags in (("a-two", ["legs", "hyperextension"]), ("b-one", ["legs"]))]
    store = MemoryStore(tmp_path / "m", seed_starter=False)
    store.rules.add(rules, embeddings=np.random.default_rng(0).standard_normal((2, 384)).astype(np.float32))
    scored = {r.rule_id: psi for r, psi in store.rules.scored(["legs", "hyperextension"])}
    assert scored == pytest.approx({"a-two": 2.0, "b-one": 1.0})
    assert store.rules.retrieve(["legs"], k=0) == [] and store.rules.retrieve(["legs"], k=-1) == []  # not "all but 1"
    # the memory version covers a rule's statistics: the same uses with one more success is another memory
    before = store.version()
    rule = store.rules.get(["b-one"])[0]
    rule.n_used, rule.n_success = 2, 0
    store.rules.update([rule])
    zero = store.version()
    rule.n_success = 1
    store.rules.update([rule])
    assert len({before, zero, store.version()}) == 3
    store.close()



def test_a_new_rule_on_an_unknown_axis_is_refused():
    """A condition's axis must be one of the critique's axes (or none): an unknown one took its points off overall
    alone, without a word."""
    from hmrcritic.errors import InputError
    from hmrcritic.memory.rules import RuleMemory
    from hmrcritic.memory.schema import Rule, RuleCondition

    def rule(axis):
        return Rule(rule_id="r", text="t", condition=RuleCondition(measure="reproj_px", comparator=">",
                                                                     threshold=1.0, points=1.0, axis=axis))

    assert RuleMemory.check_condition(rule("image_alignment")).condition.axis == "image_alignment"
    with pytest.raises(InputError, match="axis"):
        RuleMemory.check_condition(rule("image_alignmnet"))


# ------------------------------------------------------------------------------------------------ hmr/diffusion


def test_ddim_eta_adds_noise_and_eta_zero_is_deterministic():
    """DDIM with eta = 0 is a deterministic map of x_T; with eta > 0 each step adds σ_t·z, so two generators give
    two samples from one x_T (eta silently ignored made every "stochastic" sampling deterministic)."""
    from hmrcritic.hmr.diffusion import X_DIM, Condition, DiffusionConfig, HMRDiffusion, ddim_sample_x0

    torch.manual_seed(0)
    model = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2, T=100)).eval()
    cond = Condition(keypoints=torch.rand(2, 17, 3), box=torch.rand(2, 4))
    x_T = torch.randn(2, X_DIM)

    def run(eta, seed):
        return ddim_sample_x0(model, cond, steps=5, eta=eta, x_T=x_T.clone(),
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0.0, 1), run(0.0, 2))
    assert not torch.allclose(run(1.0, 1), run(1.0, 2))
