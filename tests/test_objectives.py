"""Objectives (GPA logistic/linear, Diffusion-DPO, best-of-group SFT) on hand-made cases.

A tiny stand-in denoiser with the model's ``predict_eps``/``q_sample`` interface keeps these fast and lets
us build policies whose behaviour is known exactly (e.g. "denoises the best hypothesis better").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from hmrcritic.alignment.objectives import ObjectiveConfig, compute_loss, frozen_reference
from hmrcritic.alignment.stats import GroupStatTracker, group_advantages, zero_variance_mask

D = 8
T = 100


@dataclass
class Cond:
    keypoints: torch.Tensor  # (B, 4)
    note: str = "kept as is"


class TinyDenoiser(nn.Module):
    """eps_θ(x_t, t, c) = MLP([x_t, t/T, c]) with a linear-β DDPM schedule; records every call if asked."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.num_timesteps = T
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - torch.linspace(1e-4, 0.02, T), 0))
        self.net = nn.Sequential(nn.Linear(D + 1 + 4, 32), nn.Tanh(), nn.Linear(32, D))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def q_sample(self, x0, t, eps):
        ab = self.alphas_cumprod[t].unsqueeze(-1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def predict_eps(self, x_t, t, cond):
        if self.calls is not None:
            self.calls.append((x_t.detach().clone(), t.detach().clone()))
        assert cond.keypoints.shape[0] == x_t.shape[0]
        return self.net(torch.cat([x_t, t.float()[:, None] / T, cond.keypoints], -1))


class OraclePolicy(nn.Module):
    """Moves the reference's prediction a share ``alpha`` towards the exact noise of hypothesis ``target``
    (which it knows): it denoises that hypothesis better and the others worse."""

    def __init__(self, reference, x0_target, alpha):
        super().__init__()
        self.ref, self.x0_target, self.alpha = reference, x0_target, alpha
        self.num_timesteps = reference.num_timesteps
        self.alphas_cumprod = reference.alphas_cumprod

    def q_sample(self, x0, t, eps):
        return self.ref.q_sample(x0, t, eps)

    def predict_eps(self, x_t, t, cond):
        ab = self.alphas_cumprod[t].unsqueeze(-1)
        eps_target = (x_t - ab.sqrt() * self.x0_target) / (1 - ab).sqrt()
        base = self.ref.predict_eps(x_t, t, cond)
        return base + self.alpha * (eps_target - base)


def _batch(B=2, G=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, G, D, generator=g) * 2
    cond = Cond(torch.randn(B, 4, generator=g))
    return x0, cond


def _mean_loss(policy, ref, x0, cond, scores, cfg, seeds=range(8)):
    return sum(
        compute_loss(policy, ref, x0, cond, scores, cfg, torch.Generator().manual_seed(s)).loss.item()
        for s in seeds
    ) / len(seeds)


# --------------------------------------------------------------------------------------------- stats


def test_group_advantages_modes_and_zero_variance():
    s = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    a = group_advantages(s, "group")
    assert torch.allclose(a[0], (s[0] - 2) / (s[0].std(unbiased=False) + 1e-8))
    assert torch.equal(a[1], torch.zeros(3))
    assert torch.allclose(group_advantages(s, "none")[0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(group_advantages(s, "batch")[0], (s[0] - 2) / (s.std(unbiased=False) + 1e-8))
    assert zero_variance_mask(s).tolist() == [False, True]
    with pytest.raises(ValueError):
        group_advantages(s, "bogus")
    tr = GroupStatTracker()
    tr.update(["a", "b"], s)
    tr.update(["a", "c"], s)
    summ = tr.summary()
    assert summ["groups"] == 4 and summ["distinct_groups"] == 3 and summ["zero_variance_share"] == 0.5


# ---------------------------------------------------------------------------------------------- GPA


@pytest.mark.parametrize("objective", ["gpa", "gpa_linear", "dpo"])
def test_raising_likelihood_of_best_lowers_loss(objective):
    ref = frozen_reference(TinyDenoiser())
    x0, cond = _batch(B=1, G=3)
    x0 = x0 * 5  # well separated hypotheses: the oracle clearly denoises the others worse
    scores = torch.tensor([[1.0, 9.0, 2.0]])  # hypothesis 1 is the best
    cfg = ObjectiveConfig(objective=objective, base_loss_weight=0.0, gpa_weight=1.0, beta=0.01)  # unsaturated
    losses = [_mean_loss(OraclePolicy(ref, x0[0, 1], a), ref, x0, cond, scores, cfg) for a in (0.0, 0.2, 0.5)]
    assert losses[0] > losses[1] > losses[2]
    at_ref = {"gpa": math.log(2), "gpa_linear": 0.0, "dpo": math.log(2)}[objective]
    assert losses[0] == pytest.approx(at_ref, abs=1e-6)  # policy == reference → d = 0
    # …and favouring the *worst* hypothesis raises it
    worse = _mean_loss(OraclePolicy(ref, x0[0, 0], 0.5), ref, x0, cond, scores, cfg)
    assert worse > losses[0]


def test_logistic_gradient_is_linear_gradient_times_sigma():
    ref = frozen_reference(TinyDenoiser())
    policy = TinyDenoiser(seed=5)
    x0, cond = _batch(B=1, G=4)
    scores = torch.tensor([[3.0, 7.0, 1.0, 6.0]])
    grads, outs = {}, {}
    for obj in ("gpa", "gpa_linear"):
        policy.zero_grad()
        cfg = ObjectiveConfig(objective=obj, base_loss_weight=0.0, gpa_weight=1.0, beta=5.0)
        out = compute_loss(policy, ref, x0, cond, scores, cfg, torch.Generator().manual_seed(3))
        out.loss.backward()
        grads[obj] = torch.cat([p.grad.flatten() for p in policy.parameters()])
        outs[obj] = out
    sigma = outs["gpa"].metrics["sigma_mean"]
    assert 0.0 < sigma < 1.0 and abs(sigma - 0.5) > 1e-3  # a non-trivial ratio
    assert torch.allclose(grads["gpa"], sigma * grads["gpa_linear"], rtol=1e-4, atol=1e-7)
    # value check: linear loss = β Σ A d, logistic = −log σ(−β Σ A d)
    s_ad = outs["gpa_linear"].loss.item() / 5.0
    assert outs["gpa"].loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(5.0 * s_ad))), rel=1e-5)


def test_reference_never_changes_and_policy_learns_the_preference():
    base = TinyDenoiser()
    ref = frozen_reference(base)
    before = copy.deepcopy(ref.state_dict())
    policy = copy.deepcopy(base).train()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    x0, cond = _batch(B=2, G=4, seed=7)
    scores = torch.tensor([[1.0, 8.0, 3.0, 2.0], [9.0, 1.0, 4.0, 5.0]])
    cfg = ObjectiveConfig(objective="gpa", base_loss_weight=0.0, gpa_weight=1.0, beta=10.0)
    evalcfg = ObjectiveConfig(objective="gpa", base_loss_weight=0.0, gpa_weight=1.0, beta=10.0)
    start = _mean_loss(policy, ref, x0, cond, scores, evalcfg, seeds=range(100, 116))
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        opt.zero_grad()
        out = compute_loss(policy, ref, x0, cond, scores, cfg, g)
        out.loss.backward()
        opt.step()
    end = _mean_loss(policy, ref, x0, cond, scores, evalcfg, seeds=range(100, 116))
    assert end < start - 0.05
    for k, v in ref.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in ref.parameters())
    final = compute_loss(policy, ref, x0, cond, scores, evalcfg, torch.Generator().manual_seed(99))
    assert final.metrics["reward_accuracy"] == 1.0 and final.metrics["reward_margin"] > 0


def _recover_eps(model, x_t, t, x0):
    ab = model.alphas_cumprod[t].unsqueeze(-1)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def test_group_shares_eps_and_t_with_reference():
    ref = frozen_reference(TinyDenoiser())
    policy = TinyDenoiser(seed=3)
    policy.calls, ref.calls = [], []
    B, G = 3, 5
    x0, cond = _batch(B=B, G=G)
    scores = torch.rand(B, G, generator=torch.Generator().manual_seed(2)) * 10
    cfg = ObjectiveConfig(objective="gpa", base_loss_weight=1.0)
    compute_loss(policy, ref, x0, cond, scores, cfg, torch.Generator().manual_seed(0))
    assert len(ref.calls) == 1 and len(policy.calls) == 2  # GPA call + base-loss call
    (xp, tp), (xr, tr) = policy.calls[0], ref.calls[0]
    assert torch.equal(xp, xr) and torch.equal(tp, tr)  # policy and reference see the same noised inputs
    t = tp.view(B, G)
    assert (t == t[:, :1]).all() and (t >= T // 2).all() and (t < T).all()
    eps = _recover_eps(ref, xp, tp, x0.reshape(B * G, D)).view(B, G, D)
    assert torch.allclose(eps, eps[:, :1].expand_as(eps), atol=1e-4)
    assert not torch.allclose(eps[0, 0], eps[1, 0])  # …but differ between groups
    # the base-loss call draws t over the whole range, independently per hypothesis
    assert policy.calls[1][1].unique().numel() > 1


def test_zero_variance_groups_are_skipped_and_counted():
    ref = frozen_reference(TinyDenoiser())
    policy = TinyDenoiser(seed=4)
    x0, cond = _batch(B=2, G=3)
    scores = torch.tensor([[5.0, 5.0, 5.0], [1.0, 2.0, 6.0]])
    cfg = ObjectiveConfig(objective="gpa", base_loss_weight=0.0, gpa_weight=1.0)
    out = compute_loss(policy, ref, x0, cond, scores, cfg, torch.Generator().manual_seed(1))
    assert out.metrics["zero_variance_share"] == 0.5
    x0b = x0.clone()
    x0b[0] += 10.0  # the tied group's hypotheses cannot influence the loss
    out2 = compute_loss(policy, ref, x0b, cond, scores, cfg, torch.Generator().manual_seed(1))
    assert out2.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    policy.calls = []
    tied = compute_loss(policy, ref, x0, cond, torch.full((2, 3), 4.0), cfg, torch.Generator().manual_seed(1))
    assert tied.loss.item() == 0.0 and tied.metrics["zero_variance_share"] == 1.0 and policy.calls == []
    # no GPA term, so no loss_gpa: a logged window averages it over the steps that had one (a 0.0 pulled it down)
    assert "loss_gpa" not in tied.metrics
    from hmrcritic.alignment.finetune import _mean_metrics

    assert _mean_metrics([out.metrics, tied.metrics])["loss_gpa"] == out.metrics["loss_gpa"]


def test_dpo_uses_best_and_worst_with_antithetic_t_and_shared_eps():
    ref = frozen_reference(TinyDenoiser())
    policy = TinyDenoiser(seed=3)
    ref.calls = []
    B, G = 2, 4
    x0, cond = _batch(B=B, G=G)
    scores = torch.tensor([[1.0, 8.0, 3.0, 2.0], [9.0, 1.0, 4.0, 5.0]])
    compute_loss(
        policy, ref, x0, cond, scores, ObjectiveConfig(objective="dpo"), torch.Generator().manual_seed(0)
    )
    ((x_t, t),) = ref.calls
    assert x_t.shape[0] == 4 * B  # [w(t), w(T−1−t), l(t), l(T−1−t)]
    tw1, tw2, tl1, tl2 = t.view(4, B)
    assert torch.equal(tw2, T - 1 - tw1) and torch.equal(tl1, tw1) and torch.equal(tl2, tw2)
    rows = torch.arange(B)
    w, l = x0[rows, scores.argmax(1)], x0[rows, scores.argmin(1)]
    xs = torch.cat([w, w, l, l])
    eps = _recover_eps(ref, x_t, t, xs).view(4, B, D)
    assert torch.allclose(eps[0], eps[2], atol=1e-4) and torch.allclose(eps[0], eps[1], atol=1e-4)


def test_sft_trains_only_on_the_best_hypothesis():
    policy = TinyDenoiser(seed=3)
    x0, cond = _batch(B=2, G=3)
    scores = torch.tensor([[1.0, 8.0, 3.0], [9.0, 1.0, 4.0]])
    cfg = ObjectiveConfig(objective="sft")
    out = compute_loss(policy, None, x0, cond, scores, cfg, torch.Generator().manual_seed(0))
    x0b = x0.clone()
    x0b[0, 0] += 5
    x0b[1, 2] -= 5  # perturb non-best hypotheses only
    out2 = compute_loss(policy, None, x0b, cond, scores, cfg, torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx(out2.loss.item(), rel=1e-6)
    x0b[0, 1] += 1  # perturb a best one
    out3 = compute_loss(policy, None, x0b, cond, scores, cfg, torch.Generator().manual_seed(0))
    assert out3.loss.item() != pytest.approx(out.loss.item(), rel=1e-6)


def test_sft_skips_groups_whose_scores_all_tie():
    """A tied group has no best hypothesis: SFT must not imitate an arbitrary one (its hypothesis 0)."""
    policy = TinyDenoiser(seed=3)
    x0, cond = _batch(B=2, G=3)
    scores = torch.tensor([[5.0, 5.0, 5.0], [9.0, 1.0, 4.0]])
    cfg = ObjectiveConfig(objective="sft")
    policy.calls = []
    out = compute_loss(policy, None, x0, cond, scores, cfg, torch.Generator().manual_seed(0))
    assert [x.shape[0] for x, _ in policy.calls] == [1] and out.metrics["zero_variance_share"] == 0.5
    x0b = x0.clone()
    x0b[0] += 10.0  # the tied group's hypotheses cannot influence the loss
    out2 = compute_loss(policy, None, x0b, cond, scores, cfg, torch.Generator().manual_seed(0))
    assert out2.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    policy.calls = []
    tied = compute_loss(policy, None, x0, cond, torch.full((2, 3), 4.0), cfg, torch.Generator().manual_seed(0))
    assert tied.loss.item() == 0.0 and not tied.loss.requires_grad and policy.calls == []


@pytest.mark.parametrize("bad", [{"beta": float("nan")}, {"beta": 0.0}, {"beta": -5.0},
                                 {"gpa_weight": float("nan")}, {"base_loss_weight": -1.0}])
def test_objective_config_refuses_non_finite_or_reversing_settings(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ObjectiveConfig(objective="gpa", **bad)


def test_total_is_weighted_sum_of_gpa_and_base():
    ref = frozen_reference(TinyDenoiser())
    policy = TinyDenoiser(seed=6)
    x0, cond = _batch()
    scores = torch.tensor([[1.0, 4.0, 2.0], [3.0, 0.0, 6.0]])
    out = compute_loss(
        policy,
        ref,
        x0,
        cond,
        scores,
        ObjectiveConfig(gpa_weight=0.1, base_loss_weight=1.0),
        torch.Generator().manual_seed(0),
    )
    m = out.metrics
    assert out.loss.item() == pytest.approx(0.1 * m["loss_gpa"] + 1.0 * m["loss_base"], rel=1e-5)
    nb = ObjectiveConfig(objective="gpa_no_base_loss")
    assert nb.objective == "gpa" and nb.base_loss_weight == 0.0
    with pytest.raises(ValueError):
        ObjectiveConfig(objective="ppo")


@pytest.mark.parametrize("objective", ["gpa", "gpa_linear", "gpa_no_base_loss", "dpo", "sft"])
def test_loss_equals_the_documented_formula(objective):
    """Each objective's value, recomputed from the definitions on the (t, ε) the code drew (read back from the
    noised inputs it fed the models): A_i = (s_i − mean s)/(pop. std s + 1e-8), e = mean_D (ε − ε_model(x_t))²,
    d_i = e_θ − e_ref; gpa = w·mean_groups −log σ(−β Σ_i A_i d_i) + w_b·mean e_θ(base draws); gpa_linear the
    same with β Σ A d; dpo = mean over pairs × {t, T−1−t} of −log σ(−β/2 (d_w − d_l)); sft = mean e_θ(best).
    The tied group is left out of every preference term (and of SFT) but not of the base loss."""
    ref = frozen_reference(TinyDenoiser())
    policy = TinyDenoiser(seed=5)
    B, G = 3, 4
    x0, cond = _batch(B=B, G=G, seed=11)
    scores = torch.tensor([[3.0, 7.0, 1.0, 6.0], [2.0, 2.0, 2.0, 2.0], [9.0, 0.5, 4.0, 4.5]])
    cfg = ObjectiveConfig(objective=objective, beta=3.0, gpa_weight=0.7, base_loss_weight=1.3)
    policy.calls = []
    out = compute_loss(policy, ref if objective != "sft" else None, x0, cond, scores, cfg,
                       torch.Generator().manual_seed(4))
    kept = [0, 2]

    def err(model, x, t, eps, c):
        ab = model.alphas_cumprod[t].unsqueeze(-1)
        with torch.no_grad():
            return (eps - model.net(torch.cat([ab.sqrt() * x + (1 - ab).sqrt() * eps, t.float()[:, None] / T, c],
                                              -1))).pow(2).mean(1)

    def read_back(call, xs):
        x_t, t = call
        return t, _recover_eps(policy, x_t, t, xs)

    beta, w, wb = cfg.beta, cfg.gpa_weight, cfg.base_loss_weight
    if objective.startswith("gpa"):
        s = scores[kept]
        A = (s - s.mean(1, keepdim=True)) / (s.std(1, unbiased=False, keepdim=True) + 1e-8)
        xs = x0[kept].reshape(-1, D)
        c = cond.keypoints[kept].repeat_interleave(G, 0)
        t, eps = read_back(policy.calls[0], xs)
        d = (err(policy, xs, t, eps, c) - err(ref, xs, t, eps, c)).view(len(kept), G)
        sad = (A * d).sum(1)
        logistic = -torch.nn.functional.logsigmoid(-beta * sad).mean()
        l_gpa = (beta * sad).mean() if objective == "gpa_linear" else logistic
        expected = w * l_gpa
        if objective != "gpa_no_base_loss":
            xb = x0.reshape(-1, D)
            tb, eb = read_back(policy.calls[1], xb)
            expected = expected + wb * err(policy, xb, tb, eb, cond.keypoints.repeat_interleave(G, 0)).mean()
        else:
            assert len(policy.calls) == 1
    elif objective == "dpo":
        rows = torch.tensor(kept)
        xw, xl = x0[rows, scores[rows].argmax(1)], x0[rows, scores[rows].argmin(1)]
        xs = torch.cat([xw, xw, xl, xl])
        c = cond.keypoints[rows].repeat(4, 1)
        t, eps = read_back(policy.calls[0], xs)
        e = err(policy, xs, t, eps, c) - err(ref, xs, t, eps, c)
        d_w, d_l = e[: 2 * len(kept)], e[2 * len(kept):]
        expected = -torch.nn.functional.logsigmoid(-beta / 2 * (d_w - d_l)).mean()
    else:
        rows = torch.tensor(kept)
        xb = x0[rows, scores[rows].argmax(1)]
        t, eps = read_back(policy.calls[0], xb)
        expected = err(policy, xb, t, eps, cond.keypoints[rows]).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
