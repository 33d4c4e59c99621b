"""Session 27: tests for mutants of the alignment data path (export, dataset, group statistics, calibration, prior,
the scenes' truncation/occlusion tags) that the suite let survive. Each test names the behaviour it pins and why it
matters; the report of session 27 lists the mutants each one kills."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrcritic.io import append_jsonl

# ------------------------------------------------------------------------------------------------------ prior


def test_a_one_component_prior_is_the_sample_covariance_shrunk_toward_its_mean_variance():
    """prior.fit_gmm: "covariance shrunk toward its diagonal mean" — (1 − shrink)·S + shrink·mean(diag S)·I (+1e-5·I
    of jitter), S the population covariance. With too few poses for two components (B < 4·D) the fit is one
    Gaussian, which is checked by hand: the shrinkage decides how much likelier an off-axis pose reads than its
    neighbours, i.e. every pose_prior_nll the critic reads."""
    from hmrcritic.agent.prior import fit_gmm

    rng = np.random.default_rng(3)
    D = 5
    x = rng.normal(size=(19, D)) @ rng.normal(size=(D, D)) + rng.normal(size=D)  # correlated, unequal variances
    prior = fit_gmm(torch.as_tensor(x), components=8, iters=3, shrink=0.2)
    assert prior.weights.shape == (1,) and prior.weights[0] == pytest.approx(1.0)
    np.testing.assert_allclose(prior.means[0], x.mean(0), atol=1e-9)
    S = np.cov(x.T, bias=True)
    want = 0.8 * S + 0.2 * np.trace(S) / D * np.eye(D) + 1e-5 * np.eye(D)
    np.testing.assert_allclose(prior.chols[0] @ prior.chols[0].T, want, rtol=1e-9, atol=1e-12)


def test_mixture_weights_are_the_components_shares_of_the_poses():
    """prior.fit_gmm's M step: w_c = N_c / B. Two well separated clusters of 30 and 10 poses: the weights are 3/4 and
    1/4 (equal weights would call the rare pose category as likely as the common one)."""
    from hmrcritic.agent.prior import fit_gmm

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(30, 2)), rng.normal(size=(10, 2)) + 20.0])
    prior = fit_gmm(torch.as_tensor(x), components=2, iters=5)
    order = np.argsort(prior.means[:, 0])
    np.testing.assert_allclose(prior.weights[order], [0.75, 0.25], atol=1e-6)


# ------------------------------------------------------------------------------------------------ calibration


def test_pearson_after_is_of_the_calibrated_scores_as_applied_capped_at_ten():
    """calibration.fit_calibration: ``pearson_after`` (shown by ``memory calibration`` / ``memory stats``) is the
    point-wise Pearson of the scores the judge will produce, ``exp(cal.apply(log s))``, capped at 10 — not of the
    uncapped line, which reads better than what the calibrated critic delivers when the map pushes the best scores
    past 10. Fitted here on scores whose map does pass 10 at the top."""
    from hmrcritic.agent.calibration import fit_calibration
    from hmrcritic.agent.learning_curve import pooled_pearson

    rng = np.random.default_rng(1)
    errors = [rng.uniform(0, 150, 16) for _ in range(4)]
    # a critic whose raw scores sit low (top ≈ 2): the fitted map lifts them by about log 5
    scores = [2.0 * np.exp(-e / 60.0) * np.exp(rng.normal(0, 0.25, 16)) for e in errors]
    cal = fit_calibration(scores, errors)
    x = np.log(np.concatenate(scores))
    line = cal.intercept + cal.slope * x
    assert (line > np.log(10.0)).any(), "the fit set must reach the cap for this test to mean anything"
    capped = np.exp(np.minimum(line, np.log(10.0)))
    assert cal.pearson_after == pytest.approx(pooled_pearson([capped], [np.concatenate(errors)]), abs=1e-12)
    assert cal.pearson_after != pytest.approx(pooled_pearson([np.exp(line)], [np.concatenate(errors)]), abs=1e-6)


def test_the_fit_is_the_least_squares_line_of_log_settled_score_on_log_score():
    """calibration.fit_calibration: slope = cov(x, y) / var(x) and intercept = ȳ − slope·x̄ (population moments),
    x = log score, y = log settled_overall(error) — numpy's own degree-1 polyfit gives the same line."""
    from hmrcritic.agent.calibration import fit_calibration
    from hmrcritic.agent.judges import settled_overall

    rng = np.random.default_rng(2)
    errors = [rng.uniform(0, 120, 8) for _ in range(3)]
    scores = [8.0 * np.exp(-e / 90.0) * np.exp(rng.normal(0, 0.2, 8)) for e in errors]
    cal = fit_calibration(scores, errors)
    slope, intercept = np.polyfit(np.log(np.concatenate(scores)), np.log(settled_overall(np.concatenate(errors))), 1)
    assert (cal.slope, cal.intercept) == (pytest.approx(slope, rel=1e-9), pytest.approx(intercept, rel=1e-9))


# ------------------------------------------------------------------------------------------- evidence tags


def _kp(n_hidden: int, W: int = 640, H: int = 480) -> np.ndarray:
    kp = np.zeros((17, 3))
    kp[:, 0] = np.linspace(100, W - 100, 17)
    kp[:, 1] = np.linspace(100, H - 100, 17)
    kp[:, 2] = 0.9
    kp[:n_hidden] = 0.0  # hidden points are stored as [0, 0, 0]
    return kp


def test_six_unseen_keypoints_tag_truncation_and_five_do_not():
    """evidence.evidence_tags: ``truncation`` when "6 or more of the 17 [are] unseen" (a person cut by the frame whose
    detector dropped the points outside) even though every seen point is inside the image; 5 unseen is occlusion
    only. The tag selects the alignment/truncation rules the critic retrieves."""
    from hmrcritic.agent.evidence import evidence_tags

    assert evidence_tags({}, keypoints=_kp(6), image_size=(640, 480)) == ["occlusion", "truncation"]
    assert evidence_tags({}, keypoints=_kp(5), image_size=(640, 480)) == ["occlusion"]
    assert evidence_tags({}, keypoints=_kp(0), image_size=(640, 480)) == []


@pytest.mark.parametrize("axis", [0, 1])
def test_a_seen_keypoint_on_the_first_pixel_past_the_border_tags_truncation(axis):
    """A W×H image has pixels 0 … W−1: a seen keypoint at u = W (or v = H) lies outside it and tags truncation, as
    the scene generator hides a point at u ≥ W."""
    from hmrcritic.agent.evidence import evidence_tags

    kp = _kp(0)
    kp[3, axis] = (640, 480)[axis]
    assert evidence_tags({}, keypoints=kp, image_size=(640, 480)) == ["truncation"]
    kp[3, axis] -= 1
    assert evidence_tags({}, keypoints=kp, image_size=(640, 480)) == []


# ------------------------------------------------------------------------------------------------- dataset


def test_a_group_tried_after_a_not_attempted_record_counts_as_tried(tmp_path):
    """dataset.not_attempted_note reads each group's *latest* failure: a group the export did not attempt (its
    endpoint stopped it) that the next run tried and failed is a failed input, not one never sent."""
    from hmrcritic.alignment import dataset as D

    append_jsonl(tmp_path / D.FAILURES, {"group_id": "a", "input_id": "a", "stage": "not_attempted", "error": "x"})
    append_jsonl(tmp_path / D.FAILURES, {"group_id": "b", "input_id": "b", "stage": "not_attempted", "error": "x"})
    append_jsonl(tmp_path / D.FAILURES, {"group_id": "a", "input_id": "a", "stage": "score", "error": "y"})
    note = D.not_attempted_note(tmp_path, D.open_failures(tmp_path, []))
    assert "; 1 of them were not attempted" in note and "and 1 were tried and failed" in note


def test_array_checksums_do_not_depend_on_the_order_of_the_keys():
    """dataset.arrays_checksum walks the keys in sorted order: the same group's arrays, listed by a scorer or worker
    in another order, have the same record ("the same group exported twice — by any executor — has the same
    record")."""
    from hmrcritic.alignment import dataset as D

    cond = D.condition_arrays(np.arange(51.0).reshape(17, 3), np.diag([500.0, 500.0, 1.0]), (640, 480))
    assert D.arrays_checksum(cond) == D.arrays_checksum(dict(reversed(list(cond.items()))))


def test_a_record_whose_scores_differ_by_exactly_the_tolerance_is_tied_as_its_advantages_are():
    """dataset.build_record's ``zero_variance`` and stats.zero_variance_mask (which zeroes the advantages) take the
    same tolerance, the tolerance included: a gap of exactly 1e-6 marked the group as a preference (a pair in
    pairs.jsonl, margin 1e-6) while its advantages said tie."""
    from hmrcritic.agent.schema import HypothesisScore
    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.stats import ZERO_VARIANCE_TOL

    scores = [HypothesisScore(index=i, motion_structure=5, physical_feasibility=5, image_alignment=5, overall=s,
                              rationale="r") for i, s in enumerate([0.0, ZERO_VARIANCE_TOL])]
    ref = D.ArrayRef(path="groups/g.cond.npz", sha256="0")
    rec = D.build_record(group_id="g", input_id="g", source="test", condition=ref, hypotheses=ref, num_hypotheses=2,
                         x_dim=4, scores=scores, judge="builtin", memory_version="m0", model_hash="x", seed=0,
                         group_seed=0)
    assert rec.advantages == [0.0, 0.0] and rec.zero_variance
    assert D.pair_records([rec]) == []


def test_a_hypothesis_without_a_finite_error_is_left_out_of_the_fit():
    """calibration.fit_calibration fits on hypotheses with a finite score *and* error: one NaN error (a label that
    could not be measured) made the slope and intercept NaN, a calibration that turns every score into NaN."""
    from hmrcritic.agent.calibration import fit_calibration

    rng = np.random.default_rng(4)
    errors = [rng.uniform(0, 120, 8) for _ in range(3)]
    scores = [8.0 * np.exp(-e / 90.0) * np.exp(rng.normal(0, 0.2, 8)) for e in errors]
    clean = fit_calibration(scores, errors)
    errors[1] = errors[1].copy()
    errors[1][2] = np.nan
    cal = fit_calibration(scores, errors)
    assert np.isfinite([cal.slope, cal.intercept]).all() and cal.hypotheses == 23
    assert cal.slope != clean.slope  # the other 23 hypotheses are fitted, not the 24 of the clean set
