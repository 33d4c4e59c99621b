"""Review s18 (mutation testing): tests that kill mutants of the core numeric code no other test noticed.

Each test asserts the correct behaviour from first principles (a hand-worked value, an independent
implementation, an invariance), never the current output of the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrcritic.hmr import metrics as M


def _rand_joints(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, 24, 3, generator=g) * 0.3


# ------------------------------------------------------------------------------------------ hmr/metrics.py


def test_lsp14_root_is_the_midpoint_of_both_hips():
    # Moving the left hip (SMPL 1) by 100 mm moves the mid-hip root by 50 mm: every one of the 14 LSP joints is
    # then 50 mm off relative to the root (13 by −50 mm, the left hip itself by +50 mm) → MPJPE 50 mm exactly.
    gt = _rand_joints(seed=3).double()
    pred = gt.clone()
    pred[1, 0] += 0.1
    assert M.mpjpe(pred, gt, "lsp14").item() == pytest.approx(50.0, abs=1e-6)
    # the right hip (SMPL 2) alike
    pred = gt.clone()
    pred[2, 1] -= 0.1
    assert M.mpjpe(pred, gt, "lsp14").item() == pytest.approx(50.0, abs=1e-6)


def _umeyama_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Best proper similarity of x onto y from scipy's Kabsch (rotation) and the closed-form optimal scale
    for that rotation, s = <R x0, y0> / |x0|², written independently of hmr.metrics."""
    from scipy.spatial.transform import Rotation

    x0, y0 = x - x.mean(0), y - y.mean(0)
    rot, _ = Rotation.align_vectors(y0, x0)  # proper rotation minimising |y0 − R x0|²
    rx = rot.apply(x0)
    s = float((rx * y0).sum() / (x0 * x0).sum())
    return s * rx + y.mean(0)


@pytest.mark.parametrize("mirror", [False, True])
def test_procrustes_matches_an_independent_kabsch_with_optimal_scale(mirror):
    # A mirrored prediction cannot be aligned by a rotation: the optimal scale for the best *proper* rotation then
    # uses trace(S·diag(1,1,−1)), not the sum of the singular values (that over-scales the aligned pose).
    rng = np.random.default_rng(5)
    for _ in range(5):
        y = rng.normal(size=(14, 3)) * 0.3
        x = 1.7 * y @ np.linalg.qr(rng.normal(size=(3, 3)))[0].T + rng.normal(size=(14, 3)) * 0.05 + 2.0
        if mirror:
            x = x * np.array([-1.0, 1.0, 1.0])
        got = M.procrustes_align(torch.tensor(x), torch.tensor(y)).numpy()
        np.testing.assert_allclose(got, _umeyama_reference(x, y), atol=1e-9)


def test_standard_metrics_pve_is_aligned_on_the_pelvis_not_the_vertex_centroid():
    # Same joints (so the same pelvis), one of 4 vertices 400 mm off: pelvis-aligned PVE = 400 / 4 = 100 mm.
    # (Centred on the vertex centroid instead it would be (300 + 3·100) / 4 = 150 mm.)
    joints = _rand_joints(seed=4)
    gt_v = torch.tensor([[0.0, 0, 0], [0.2, 0, 0], [0, 0.3, 0], [0, 0, 0.1]])
    pred_v = gt_v.clone()
    pred_v[0, 0] += 0.4
    out = M.standard_metrics(joints, joints, pred_v, gt_v)
    assert out["pve"].item() == pytest.approx(100.0, abs=1e-3)


def test_group_median_is_a_median_not_a_mean():
    # one wild hypothesis drags the mean (≈ 37.7) but not the median (2); NaN is left out; an even count gives the
    # lower middle value as documented
    out = M.group_metrics(torch.tensor([[1.0, float("nan"), 2.0, 110.0], [4.0, 3.0, 2.0, 1.0]]), reduce=False)
    assert out["median"].tolist() == [2.0, 2.0]
    assert out["mean"][0].item() == pytest.approx(113.0 / 3)


def test_root_relative_diversity_ignores_a_global_translation():
    # two hypotheses that differ only by a 100 mm shift: 100 mm apart as placed, identical articulation
    a = _rand_joints(seed=6)
    j = torch.stack([a, a + torch.tensor([0.1, 0.0, 0.0])])[None]  # (1,2,24,3)
    assert M.mean_pairwise_distance(j).item() == pytest.approx(100.0, abs=1e-3)
    assert M.mean_pairwise_distance(j, root_relative=True).item() == pytest.approx(0.0, abs=1e-3)
    # and only the articulation counts: moving one joint of one hypothesis (not the root) by 240 mm → 240/24 mm
    b = a.clone()
    b[5, 1] += 0.24
    j = torch.stack([a, b + 1.0])[None]
    assert M.mean_pairwise_distance(j, root_relative=True).item() == pytest.approx(10.0, abs=1e-3)


# ------------------------------------------------------------------ agent/evaluate_critic.py, learning_curve.py


def test_paired_spearman_delta_and_its_standard_error_by_hand():
    # full − variant per group: 0.1, 0.3, 0.5 → mean 0.3, sample SD 0.2, SE 0.2/√3 (full better = positive)
    from hmrcritic.agent.evaluate_critic import _paired_deltas

    rows = [{"variant": "full"}, {"variant": "no_rules"}]
    _paired_deltas(rows, {"full": np.array([0.6, 0.7, 0.8]), "no_rules": np.array([0.5, 0.4, 0.3])})
    assert rows[1]["full_minus_spearman"] == pytest.approx(0.3)
    assert rows[1]["full_minus_sem"] == pytest.approx(0.2 / np.sqrt(3))


def test_paired_top1_delta_and_its_standard_error_by_hand():
    # Per group the top-1 errors of full and of the variant: full picks 10 / 20 / 30 mm, the variant 20 / 20 / 60 →
    # differences −10, 0, −30: mean −40/3, and the SE of that mean is the sample SD (n − 1) over √n.
    from hmrcritic.agent.evaluate_critic import _paired_pearson_top1_deltas

    errors = [[10.0, 20.0], [20.0, 30.0], [30.0, 60.0]]
    full = [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    variant = [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    rows = [{"variant": "full"}, {"variant": "v"}]
    _paired_pearson_top1_deltas(rows, {"full": full, "v": variant}, errors, n_boot=50)
    d = np.array([-10.0, 0.0, -30.0])
    assert rows[1]["full_minus_top1_mm"] == pytest.approx(d.mean())
    sd = np.sqrt(((d - d.mean()) ** 2).sum() / 2)
    assert rows[1]["full_minus_top1_sem"] == pytest.approx(sd / np.sqrt(3))


def test_pearson_bootstrap_resamples_every_group():
    # The two variants score every group alike but the last: only a resample that draws the last group can show a
    # difference, so a bootstrap that never drew it would report an SE of exactly 0 for a real difference.
    from hmrcritic.agent.evaluate_critic import _paired_pearson_top1_deltas

    rng = np.random.default_rng(1)
    errors = [rng.uniform(20, 120, 5) for _ in range(4)]
    full = [(-e).tolist() for e in errors]
    variant = [s[:] for s in full[:-1]] + [errors[-1].tolist()]  # backwards on the last group only
    rows = [{"variant": "full"}, {"variant": "v"}]
    _paired_pearson_top1_deltas(rows, {"full": full, "v": variant}, errors, n_boot=200)
    assert rows[1]["full_minus_pearson"] > 0
    assert rows[1]["full_minus_pearson_se"] > 0


def test_pooled_pearson_is_of_score_with_minus_error():
    # A critic whose scores fall as the error rises is a good one: positive correlation (the paper's convention),
    # equal to numpy's Pearson of (score, −error) over all hypotheses pooled.
    from hmrcritic.agent.learning_curve import pooled_pearson

    s = [np.array([3.0, 2.0, 1.0]), np.array([5.0, 1.0])]
    e = [np.array([10.0, 20.0, 35.0]), np.array([5.0, 60.0])]
    want = np.corrcoef(np.concatenate(s), -np.concatenate(e))[0, 1]
    assert want > 0
    assert pooled_pearson(s, e) == pytest.approx(want)


def test_correlation_row_signs_and_the_pointwise_metric():
    # scores that rank pa_mpjpe exactly: ρ = τ = +1 on it; the pooled Pearson is on pa_mpjpe (not mpjpe, which the
    # scores rank backwards here); a constant score counts as ρ = 0 in the mean over groups.
    from hmrcritic.agent.learning_curve import correlation_row

    pa = np.array([10.0, 20.0, 30.0])
    t1 = {"pa_mpjpe": pa, "mpjpe": pa[::-1].copy(), "pve": pa}
    t2 = {"pa_mpjpe": pa, "mpjpe": pa, "pve": pa}
    row = correlation_row([np.array([3.0, 2.0, 1.0]), np.array([1.0, 1.0, 1.0])], [t1, t2])
    assert row["spearman"] == pytest.approx(0.5) and row["kendall"] == pytest.approx(0.5)
    assert row["spearman_mpjpe"] == pytest.approx(-0.5)
    want = np.corrcoef([3.0, 2.0, 1.0, 1.0, 1.0, 1.0], -np.concatenate([pa, pa]))[0, 1]
    assert row["pearson_pointwise"] == pytest.approx(want)


def test_kendall_tau_with_a_nan_on_either_side_is_nan():
    # documented like spearman: a NaN has no ranking (torch.sign(NaN) = 0 would count it as tied with everything)
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, float("nan"), 3.0, 4.0])
    assert torch.isnan(M.kendall_tau(x, y)).item()
    assert torch.isnan(M.kendall_tau(y, x)).item()
    assert torch.isnan(M.spearman(x, y)).item()


# ------------------------------------------------------------------------------------------ agent/evidence.py


def test_reprojection_is_a_confidence_weighted_mean_over_the_visible_keypoints():
    # All body keypoints project onto the principal point (50, 50); keypoint 0 (conf 1) is 5 px away, keypoint 1
    # (conf 0.5) 10 px away, the rest unseen: (1·5 + 0.5·10) / (1 + 0.5) = 20/3 px.
    from hmrcritic.agent.evidence import reprojection

    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    coco = torch.zeros(1, 17, 3)
    coco[..., 2] = 2.0
    kp = torch.zeros(17, 3)
    kp[0] = torch.tensor([53.0, 54.0, 1.0])
    kp[1] = torch.tensor([50.0, 60.0, 0.5])
    kp[2] = torch.tensor([500.0, 500.0, 0.0])  # unseen: neither its error nor its place in the box count
    px, diag = reprojection(coco, kp, K)
    assert px.item() == pytest.approx(20.0 / 3, abs=1e-4)
    # the box of the visible keypoints spans (50..53) × (54..60): diagonal √(3² + 6²)
    assert diag == pytest.approx(np.hypot(3.0, 6.0), abs=1e-4)


def test_reproj_rel_of_a_single_visible_keypoint_uses_a_tenth_of_the_image_side(prior):
    # One visible keypoint has no box: the diagonal falls back to 10 % of the longer image side (documented in the
    # evidence module and CONTRACTS): 10 px off in a 400 × 300 image → 10 / 40 = 0.25.
    from hmrcritic.agent.evidence import GroupInputs, compute_evidence

    K = np.array([[300.0, 0, 200], [0, 300.0, 150], [0, 0, 1]])
    coco = np.zeros((2, 17, 3))
    coco[..., 2] = 3.0  # every body keypoint projects onto the principal point
    kp = np.zeros((17, 3))
    kp[0] = [206.0, 158.0, 1.0]
    joints = _rand_joints(2, seed=8).numpy() + np.array([0, 0, 3.0])
    ev = compute_evidence(GroupInputs(joints=joints, coco17=coco, body_pose=np.zeros((2, 69)), keypoints=kp, K=K,
                                      image_size=(400, 300)), prior=prior)
    assert ev["reproj_px"].tolist() == pytest.approx([10.0, 10.0])
    assert ev["reproj_rel"].tolist() == pytest.approx([0.25, 0.25])


def test_consensus_deviation_weighs_unseen_joints_twice():
    # Two hypotheses (tied medoids: each deviation is the mean over both, i.e. half the pair distance) differing
    # only in joint 5 by 240 mm. Weights 2 − conf, normalised: with joint 5 unseen (conf 0) and the other 23 seen,
    # w5 = 2/25 → pair distance 240·2/25 = 19.2 mm → 9.6 mm each; with no confidences, 240/24/2 = 5 mm.
    from hmrcritic.agent.evidence import consensus_deviation

    a = _rand_joints(seed=9)
    b = a.clone()
    b[5, 0] += 0.24
    j = torch.stack([a, b])
    conf = torch.ones(24)
    conf[5] = 0.0
    assert consensus_deviation(j, conf).tolist() == pytest.approx([9.6, 9.6], abs=1e-3)
    assert consensus_deviation(j).tolist() == pytest.approx([5.0, 5.0], abs=1e-3)
    # root-relative: a global shift of one hypothesis changes nothing
    j2 = torch.stack([a, b + torch.tensor([1.0, 2.0, 3.0])])
    assert consensus_deviation(j2).tolist() == pytest.approx([5.0, 5.0], abs=1e-3)


def test_pairwise_pa_is_the_mean_of_both_alignment_directions():
    # Similarity-aligning a onto b and b onto a differ (the scale): the documented pair distance is their mean,
    # symmetric by construction. Checked against the independent Kabsch + optimal-scale alignment above.
    from hmrcritic.agent.evidence import pairwise_pa_mm

    rng = np.random.default_rng(3)
    b = rng.normal(size=(24, 3)) * 0.3
    a = 1.6 * b + rng.normal(size=(24, 3)) * 0.05
    d_ab = np.linalg.norm(_umeyama_reference(a, b) - b, axis=-1).mean()
    d_ba = np.linalg.norm(_umeyama_reference(b, a) - a, axis=-1).mean()
    assert abs(d_ab - d_ba) > 1e-3  # the two directions really differ here
    out = pairwise_pa_mm(torch.tensor(np.stack([a, b]))).numpy()
    assert out[0, 1] == pytest.approx(500.0 * (d_ab + d_ba), rel=1e-6)
    assert out[1, 0] == out[0, 1] and out[0, 0] == 0.0


def test_consensus_pa_averages_over_the_other_hypotheses():
    from hmrcritic.agent.evidence import consensus_pa

    pair = torch.tensor([[0.0, 10.0, 20.0], [10.0, 0.0, 30.0], [20.0, 30.0, 0.0]])
    assert consensus_pa(pair).tolist() == pytest.approx([15.0, 20.0, 25.0])


def test_ground_contact_normalises_the_normal():
    # "normal is normalised here": (0, 2, 0) is the same plane y = 0 as (0, 1, 0); a foot 50 mm below it
    # penetrates 50 mm, and a body whose lowest point is 80 mm above it floats 80 mm.
    from hmrcritic.agent.evidence import ground_contact

    pts = torch.tensor([[[0.0, -0.05, 1.0], [0.0, 0.3, 1.0]], [[0.0, 0.08, 1.0], [0.0, 0.5, 1.0]]])
    pen, flo = ground_contact(pts, [0.0, 2.0, 0.0], 0.0)
    assert pen.tolist() == pytest.approx([50.0, 0.0], abs=1e-3)
    assert flo.tolist() == pytest.approx([0.0, 80.0], abs=1e-3)


def test_a_measure_that_reaches_its_tag_threshold_tags_the_group():
    # "emitted when any hypothesis of a group reaches tag_at": reaching is enough (quantised evidence often lands
    # exactly on a round threshold such as 10 mm of penetration or 5° of hyperextension)
    from hmrcritic.agent.evidence import MEASURES, evidence_tags

    assert "penetration" in evidence_tags({"penetration_mm": [0.0, MEASURES["penetration_mm"].tag_at]})
    assert "hyperextension" in evidence_tags({"hyperextension_deg": [MEASURES["hyperextension_deg"].tag_at]})
    assert "alignment" in evidence_tags({"silhouette_iou": [0.9, MEASURES["silhouette_iou"].tag_at]})
    assert evidence_tags({"penetration_mm": [MEASURES["penetration_mm"].tag_at - 0.01]}) == []


# ------------------------------------------------------------------------------------------ agent/calibration.py


def test_calibration_skips_hypotheses_without_a_finite_error():
    # A hypothesis whose true error is NaN (a diverged sample) says nothing about the map: the fit equals the fit
    # without it, instead of a NaN slope that the calibration record refuses with a pydantic error.
    from hmrcritic.agent.calibration import fit_calibration

    rng = np.random.default_rng(2)
    errors = [rng.uniform(30, 150, 6) for _ in range(4)]
    scores = [10 * np.exp(-e / 60) * rng.uniform(0.8, 1.2, 6) for e in errors]
    ref = fit_calibration(scores, errors)
    errors_nan = [e.copy() for e in errors]
    scores_nan = [s.copy() for s in scores]
    errors_nan[1] = np.append(errors_nan[1], np.nan)
    scores_nan[1] = np.append(scores_nan[1], 9.5)
    got = fit_calibration(scores_nan, errors_nan)
    assert got.slope == pytest.approx(ref.slope) and got.intercept == pytest.approx(ref.intercept)
    assert got.hypotheses == ref.hypotheses == 24


# ------------------------------------------------------------------------------------------------ redact.py


@pytest.fixture
def no_secret_env(monkeypatch):
    from hmrcritic import redact

    for v in redact.SECRET_ENV_VARS + redact.URL_ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    return redact


def test_a_key_that_contains_another_key_is_masked_whole(no_secret_env, monkeypatch):
    # masked longest first: masking the shorter key first left the longer one's tail in view
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-FAKE-abcdef")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-FAKE-abcdef-tail-7777")
    out = no_secret_env.scrub("401: key sk-FAKE-abcdef-tail-7777 and sk-FAKE-abcdef rejected")
    assert "tail-7777" not in out and "abcdef" not in out


def test_a_key_read_with_a_trailing_newline_is_masked_as_sent(no_secret_env, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-FAKE-newline-5555\n")
    assert "newline-5555" not in no_secret_env.scrub("server quoted 'sk-FAKE-newline-5555' back")


def test_the_password_of_an_address_in_the_environment_is_masked_alone_and_decoded(no_secret_env, monkeypatch):
    # HMRCRITIC_CHROMA_URL = user:pass@host without a scheme; the password shows up alone and percent-decoded
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "dana:p%40ss-FAKE-9191@10.0.0.4:8000")
    out = no_secret_env.scrub("auth failed for password p@ss-FAKE-9191 (sent as p%40ss-FAKE-9191)")
    assert "ss-FAKE-9191" not in out


@pytest.mark.parametrize("text, secret", [
    ("GET https://h.example/v1?pwd=hunter22x&model=m", "hunter22x"),  # 'pwd' is a secret-looking name
    ("GET https://h.example/v1?model=m;auth_token=zz99yy", "zz99yy"),  # ';' separates parameters too
    ("header Authorization: Bearer abc12345", "abc12345"),  # 8 characters with a digit is a token
    ("proxy https://eve:pa@ss-FAKE-31@h.example/x", "ss-FAKE-31"),  # an unencoded '@' in the password
])
def test_scrub_masks_each_documented_form(no_secret_env, text, secret):
    assert secret not in no_secret_env.scrub(text)


def test_redact_url_without_a_scheme_keeps_only_the_host(no_secret_env):
    # the user-info runs to the *last* '@' (an unencoded '@' in the password)
    assert no_secret_env.redact_url("frank:pa@ssword-FAKE@10.0.0.2:6379") == "***@10.0.0.2:6379"


def test_printable_neutralises_bidi_overrides(no_secret_env):
    # a right-to-left override makes "evil\u202egnp.exe" read as "evilexe.png" on a terminal
    assert "\u202e" not in no_secret_env.printable("file evil\u202egnp.exe")


def test_a_short_password_of_an_address_is_still_masked(no_secret_env, monkeypatch):
    # passwords are often far shorter than API keys: 8 characters is above the documented minimum length
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "gil:hunt3r2x@10.0.0.5:8000")
    assert "hunt3r2x" not in no_secret_env.scrub("server said: bad password hunt3r2x")


# ------------------------------------------------------------------------- memory/schema.py (rule conditions)


@pytest.mark.parametrize("comparator, at, beyond, inside", [
    (">=", True, 11.0, 9.0), (">", False, 11.0, 9.0), ("<=", True, 9.0, 11.0), ("<", False, 9.0, 11.0)])
def test_rule_condition_comparators_at_and_around_the_threshold(comparator, at, beyond, inside):
    # evidence is quantised, so a value exactly on a round threshold is common: the comparator decides it
    from hmrcritic.memory.schema import RuleCondition

    step = RuleCondition(measure="reproj_px", comparator=comparator, threshold=10.0, points=2.0)
    assert step.fires(10.0) is at and step.fires(beyond) and not step.fires(inside)
    assert step.deduction([10.0, beyond, inside]).tolist() == [2.0 if at else 0.0, 2.0, 0.0]
    graded = RuleCondition(measure="reproj_px", comparator=comparator, threshold=10.0, points=2.0, per=0.5)
    # graded: points per `per` beyond the threshold (1 unit beyond = 2 pers → 2 × 2 = 4 points), 0 exactly at it
    assert graded.deduction([10.0, beyond, inside]).tolist() == [0.0, 4.0, 0.0]



def test_calibrated_scores_are_capped_at_ten():
    # "Calibrated log scores (capped at log 10)": scores live on the 0-10 scale, whatever the fitted intercept
    from hmrcritic.memory.schema import ScoreCalibration

    cal = ScoreCalibration(slope=1.0, intercept=1.0, groups=1, hypotheses=2, pearson_before=0.5, pearson_after=0.5)
    out = np.exp(cal.apply(np.log([1.0, 5.0, 10.0])))
    assert out.tolist() == pytest.approx([np.e, 10.0, 10.0])


# ---------------------------------------------------------------------------- alignment/objectives.py


class _LinearDenoiser(torch.nn.Module):
    """ε_θ(x_t) = W x_t with a linear-β schedule: enough of the model's interface for the objectives."""

    def __init__(self, d=4, T=50):
        super().__init__()
        self.num_timesteps = T
        self.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T), 0)
        self.lin = torch.nn.Linear(d, d)

    def q_sample(self, x0, t, eps):
        ab = self.alphas_cumprod[t].unsqueeze(-1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def predict_eps(self, x_t, t, cond):
        return self.lin(x_t)


@pytest.mark.parametrize("objective", ["gpa", "dpo"])
def test_reward_accuracy_of_a_policy_equal_to_its_reference_is_zero(objective):
    # At the first step the policy is the reference: every implicit reward is exactly 0, so no group is "already
    # right" — an accuracy of 1.0 there (counting a zero margin as correct) would misread the start of training.
    from hmrcritic.alignment.objectives import ObjectiveConfig, compute_loss, frozen_reference

    torch.manual_seed(0)
    policy = _LinearDenoiser()
    ref = frozen_reference(policy)
    x0 = torch.randn(3, 4, 4)
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 2.0, 0.0], [0.5, 0.1, 0.9, 0.3]])
    out = compute_loss(policy, ref, x0, {"c": torch.zeros(3, 2)}, scores, ObjectiveConfig(objective=objective),
                       generator=torch.Generator().manual_seed(1))
    assert out.metrics["reward_margin"] == 0.0
    assert out.metrics["reward_accuracy"] == 0.0


def test_scores_that_differ_by_a_thousandth_are_a_preference_not_a_tie():
    # "True where every hypothesis of a group has (numerically) the same score": a 0.001 spread on the 0-10 scale
    # is a real (small) preference that GPA normalises to unit advantages, not a tie to skip
    from hmrcritic.alignment.stats import group_advantages, zero_variance_mask

    s = torch.tensor([[5.0, 5.001, 5.002], [5.0, 5.0, 5.0]], dtype=torch.float64)
    assert zero_variance_mask(s).tolist() == [False, True]
    adv = group_advantages(s)
    assert adv[0].tolist() == pytest.approx([-np.sqrt(1.5), 0.0, np.sqrt(1.5)], rel=1e-4)
    assert adv[1].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("mode", ["group", "batch", "none"])
def test_a_group_tied_within_the_tolerance_gets_zero_advantages(mode):
    # "Zero-variance groups get advantages exactly 0 under every mode": a spread of 1e-7 (below the tie tolerance,
    # float noise of a judge) must not be blown up to ±1 by the group std (the exported manifest shows these)
    from hmrcritic.alignment.stats import advantages_np, group_advantages

    s = torch.tensor([[5.0, 5.0 + 1e-7, 5.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    assert group_advantages(s, mode)[0].tolist() == [0.0, 0.0, 0.0]
    assert advantages_np([5.0, 5.0 + 1e-7, 5.0], mode) == [0.0, 0.0, 0.0]


def test_manifest_advantages_follow_the_scaling_mode():
    # one group [1, 2, 3]: population std √(2/3); "none" only centres
    from hmrcritic.alignment.stats import advantages_np

    assert advantages_np([1.0, 2.0, 3.0], "none") == pytest.approx([-1.0, 0.0, 1.0])
    assert advantages_np([1.0, 2.0, 3.0], "group") == pytest.approx([-np.sqrt(1.5), 0.0, np.sqrt(1.5)])
