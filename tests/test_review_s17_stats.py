"""Review s17 (statistics): the correlations, the top-1 pick and the evaluation summaries against an
independent float64 implementation (scipy.stats), and their edge cases (constants, ties, NaN)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from hmrcritic.hmr.metrics import kendall_tau, pearson, select_top1, spearman

ss = pytest.importorskip("scipy.stats")


def test_pearson_of_a_constant_that_is_not_exact_in_binary_is_nan():
    # the centred copy of [0.1]*3 is float noise, not zeros: two such constants read r = +1 / −1
    assert math.isnan(float(pearson([0.1] * 3, [0.1] * 3)))
    assert math.isnan(float(pearson([0.1] * 3, [0.7] * 3)))
    assert math.isnan(float(pearson([0.1] * 7, list(range(7)))))  # was ~1e-17, not the documented NaN
    batch = pearson(torch.tensor([[0.1] * 4, [1.0, 2.0, 3.0, 5.0]], dtype=torch.float64),
                    torch.tensor([[0.3] * 4, [2.0, 1.0, 4.0, 4.0]], dtype=torch.float64))
    assert math.isnan(float(batch[0]))
    assert float(batch[1]) == pytest.approx(ss.pearsonr([1, 2, 3, 5], [2, 1, 4, 4])[0], abs=1e-12)


def test_rank_correlations_match_scipy_with_ties():
    """Guard (fine before this review): average ranks and tau-b as scipy's defaults, ties on either side."""
    rng = np.random.default_rng(1)
    for n in (2, 3, 5, 16):
        for _ in range(40):
            x = rng.integers(0, 3, n).astype(float)  # many ties in the scores
            y = np.round(rng.normal(size=n), 1)  # some in the errors
            with warnings.catch_warnings():  # scipy warns on a constant input (NaN, as ours)
                warnings.simplefilter("ignore")
                rho, tau = ss.spearmanr(x, y)[0], ss.kendalltau(x, y)[0]
            for ours, ref in ((float(spearman(x, y)), rho), (float(kendall_tau(x, y)), tau)):
                assert (math.isnan(ours) and math.isnan(ref)) or ours == pytest.approx(ref, abs=1e-12)


def test_select_top1_of_a_group_scored_all_nan_is_nan():
    e = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    s = torch.tensor([[float("nan")] * 3, [0.0, 2.0, float("nan")]])
    out = select_top1(e, s)
    assert math.isnan(float(out[0]))  # was 1.0: the first hypothesis reported as the critic's pick
    assert float(out[1]) == 5.0  # a NaN among scores still never wins


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory):
    """One tiny evaluation where hypothesis 0 of every batch's first scene diverged (NaN) and the select hook
    scored every batch's second scene all NaN (a critic that failed on it)."""
    from hmrcritic.hmr import evaluate as ev
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion

    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HMRCRITIC_DATA", str(root))
        mp.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
        torch.manual_seed(0)
        model = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2))
        with torch.no_grad():
            model.joint_out.weight.normal_(0, 0.05)
        real = ev.sample

        def diverging(*args, **kwargs):
            g = real(*args, **kwargs)
            g.body_pose[0, 0] = float("nan")
            g.x0[0, 0] = float("nan")
            return g

        def select(ctx):
            B, N = ctx["joints"].shape[:2]
            scores = torch.arange(N, dtype=torch.float32).repeat(B, 1)  # picks the last (finite) hypothesis
            scores[1:] = float("nan")
            return scores

        mp.setattr(ev, "sample", diverging)
        yield ev.evaluate_model(model, "test", num_generations=4, steps=2, limit=4, batch_size=2,
                                nn_baseline=False, select_fn=select)


def test_balanced_diversity_leaves_out_a_scene_with_a_diverged_hypothesis(nan_run):
    for key in ("diversity_visible_balanced_mm", "diversity_occluded_balanced_mm"):
        assert nan_run[key] is not None and math.isfinite(nan_run[key]), key  # was NaN for the whole split
        assert nan_run["non_finite_dropped"][key] == 2
    assert nan_run["non_finite_dropped"]["diversity_all_mm"] == 2  # the other diversity figures, as before


def test_selected_figures_leave_out_a_group_the_critic_scored_all_nan(nan_run):
    from hmrcritic.hmr.evaluate import format_report

    for key in ("pa_mpjpe_selected_mm", "mpjpe_selected_mm", "pve_selected_mm"):
        assert math.isfinite(nan_run[key])
        assert nan_run["non_finite_dropped"][key] == 2  # was absent: hypothesis 0 counted as the critic's pick
    assert "pa_mpjpe_selected_mm 2 of 4 scenes" in format_report(nan_run)


def test_top1_figures_average_the_errors_of_tied_best_scores():
    """evaluate-critic, learning-curve and reproduce's critic top-1 took the lowest index among tied best scores
    (argmax): the sampler's order decided for the critic. evidence_only ties at the top in 4-17 % of groups."""
    from hmrcritic.agent.learning_curve import correlation_row
    from hmrcritic.hmr.metrics import tied_top1_error

    assert tied_top1_error([1.0, 3.0, 3.0, 2.0], [10.0, 20.0, 40.0, 5.0]) == 30.0
    assert tied_top1_error([np.nan, 1.0, 1.0], [0.0, 4.0, 6.0]) == 5.0  # NaN never wins
    assert np.isnan(tied_top1_error([np.nan, np.nan], [1.0, 2.0]))
    table = {m: np.array([10.0, 20.0, 40.0, 5.0]) for m in ("pa_mpjpe", "mpjpe", "pve")}
    row = correlation_row([np.array([1.0, 3.0, 3.0, 2.0])], [table])
    assert row["top1_pa_mpjpe_mm"] == 30.0 and row["top1_pve_mm"] == 30.0
