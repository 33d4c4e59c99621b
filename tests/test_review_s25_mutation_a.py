"""Review s25 (mutation testing of the alignment maths and the metrics): tests that kill mutants of
``alignment/objectives.py``, ``alignment/stats.py`` and ``hmr/metrics.py`` that every earlier test let live.

Each test asserts the documented behaviour from first principles (a hand-worked value, a closed form, an
invariance or the documented range of a draw), never the current output of the code under test.
"""

from __future__ import annotations

import pytest
import torch

from hmrcritic.alignment.objectives import ObjectiveConfig, compute_loss, frozen_reference
from tests.test_review_s18_mutation import _LinearDenoiser

# ---------------------------------------------------------------------------- alignment/objectives.py


class _RecordingDenoiser(_LinearDenoiser):
    """Session 18's linear denoiser that also records every timestep it is asked to denoise at."""

    def __init__(self, d=4, T=50):
        super().__init__(d, T)
        self.seen_t: list[torch.Tensor] = []

    def predict_eps(self, x_t, t, cond):
        self.seen_t.append(t.detach().clone())
        return super().predict_eps(x_t, t, cond)


def _group_batch(B=4, G=3, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, G, D, generator=g)
    scores = torch.rand(B, G, generator=g) * 10
    return x0, {"c": torch.zeros(B, 2)}, scores


@pytest.mark.parametrize("objective", ["sft", "gpa"])
def test_the_plain_denoising_loss_draws_t_over_the_full_range(objective):
    # "L_base is the ordinary DDPM denoising loss ... (fresh ε, t ~ U[0, T))" and SFT is "plain denoising loss
    # (t ~ U[0,T))": only GPA's preference term keeps to the noisier half. Drawn from the upper half only, the
    # regulariser never sees a low-noise step, and best-of-group SFT never learns the fine detail of its best pose.
    torch.manual_seed(0)
    x0, cond, scores = _group_batch()
    policy = _RecordingDenoiser()
    T = policy.num_timesteps
    cfg = ObjectiveConfig(objective=objective, base_loss_weight=1.0, gpa_weight=0.1)
    ref = frozen_reference(policy) if objective == "gpa" else None
    base_t = []
    for seed in range(8):
        policy.seen_t = []
        compute_loss(policy, ref, x0, cond, scores, cfg, generator=torch.Generator().manual_seed(seed))
        base_t.append(policy.seen_t[-1])  # SFT's only call; GPA's base loss is its last policy call
    t = torch.cat(base_t)
    assert int(t.min()) >= 0 and int(t.max()) < T
    assert int(t.min()) < T // 2, f"the plain denoising loss never drew a timestep below T/2 in {t.numel()} draws"
    assert int(t.max()) >= T // 2


def test_gpa_t_min_at_the_number_of_timesteps_is_a_clear_error():
    # t ~ U[t_min, T) is empty for t_min = T: the loss must refuse it by name (as it does for T + 1), not let
    # torch.randint fail inside with "random_ expects 'from' to be less than 'to'".
    torch.manual_seed(0)
    x0, cond, scores = _group_batch()
    policy = _RecordingDenoiser()
    T = policy.num_timesteps
    for bad in (T, T + 1, -1):
        with pytest.raises(ValueError, match="t_min"):
            compute_loss(policy, frozen_reference(policy), x0, cond, scores, ObjectiveConfig(t_min=bad),
                         generator=torch.Generator().manual_seed(0))
    compute_loss(policy, frozen_reference(policy), x0, cond, scores, ObjectiveConfig(t_min=T - 1),
                 generator=torch.Generator().manual_seed(0))  # the last step alone is a valid range


# ------------------------------------------------------------------------------------------ hmr/metrics.py


def test_reduced_group_figures_leave_out_a_group_whose_errors_are_all_undefined():
    # A scene whose every hypothesis diverged has no error (NaN per group, like an all-NaN group unreduced); the
    # figure "averaged over the B groups" is then the average over the groups that have one, by hand: best of
    # (10, 20) and (30, 50) → (10 + 30)/2, mean → (15 + 40)/2, worst → (20 + 50)/2. A plain mean let that one
    # scene turn every reported figure of the run into NaN.
    from hmrcritic.hmr import metrics as M

    nan = float("nan")
    e = torch.tensor([[10.0, 20.0], [nan, nan], [30.0, 50.0]])
    per = M.group_metrics(e, reduce=False)
    assert torch.isnan(per["best"][1]) and torch.isnan(per["mean"][1])
    red = M.group_metrics(e)
    assert red["best"] == pytest.approx(20.0)
    assert red["mean"] == pytest.approx(27.5)
    assert red["worst"] == pytest.approx(35.0)
    assert red["median"] == pytest.approx(20.0)  # lower middle of an even count: 10 and 30


def test_smpl24_mpjpe_is_aligned_on_the_pelvis_joint():
    # "joint_set="smpl24" uses all 24 SMPL joints; its root is the SMPL pelvis (joint 0)". Moving one other joint
    # by 240 mm leaves the pelvis where it was, so by hand only that joint is off: 240/24 = 10 mm. Centred on the
    # joints' centroid instead, the shift would move the root by 10 mm and every joint would count it (≈ 19 mm).
    from hmrcritic.hmr import metrics as M

    g = torch.randn(24, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.3
    p = g.clone()
    p[7, 2] += 0.24
    assert float(M.mpjpe(p, g, joint_set="smpl24")) == pytest.approx(10.0, abs=1e-9)
    assert float(M.mpjpe(p + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), g,
                         joint_set="smpl24")) == pytest.approx(10.0, abs=1e-9)
