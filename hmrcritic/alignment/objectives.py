"""Preference objectives for the diffusion HMR model, each against a frozen reference copy.

Notation. A batch holds B groups of G hypotheses ``x0 (B,G,D)`` with critic scores ``s (B,G)`` and one
condition per group. For a noise ``ε`` and a timestep ``t``,
``x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε`` (the model's ``q_sample``), and the denoising error of a model is
``e(x0) = mean_D (ε − ε_model(x_t, t, c))²``. The implicit reward of hypothesis i is ``−d_i`` with

    d_i = e_θ(x0_i) − e_ref(x0_i)          (policy error − reference error, same ε, t, c)

so a hypothesis the policy denoises better than the reference has a positive implicit reward.

``gpa`` (default; PAPER.md §4, the released recipe, DGPO's logistic form)::

    A_i   = (s_i − mean(s)) / (std(s) + 1e-8)          (population std; ``scale_rewards`` group|batch|none)
    L_GPA = −log σ(−β · Σ_i A_i d_i)                   (β = 100)
    L     = gpa_weight · L_GPA + base_loss_weight · L_base     (0.1 and 1.0)

with one ε and one t per group, shared by all G members and by policy and reference, ``t ~ U[t_min, T)``,
``t_min = T/2`` by default (only the noisier half). Because Σ_i A_i = 0 the partition function cancels.
``∂L_GPA/∂θ = σ(β Σ A d) · β Σ_i A_i ∂d_i/∂θ``: the linear gradient scaled by σ(βΣAd), which saturates once
a group is separated. Groups whose scores all tie carry no preference and are skipped (counted).
``L_base`` is the ordinary DDPM denoising loss on the group's own hypotheses (fresh ε, t ~ U[0, T)), a
regulariser against drift; ``base_loss_weight = 0`` gives the "gpa_no_base_loss" variant.

``gpa_linear`` (the equation printed in the paper; λ_t and T folded into β)::

    L_GPA = β · Σ_i A_i d_i

``dpo`` (ADHMR's pairwise Diffusion-DPO baseline): winner w = best-scored, loser l = worst-scored of each
group, one shared ε per pair, antithetic timesteps over the full range — each pair is evaluated at t and
at T−1−t (t ~ U[0, T)) and the two losses are averaged (our reading of "antithetic"; a variance-reduction
pairing)::

    L_DPO = −log σ(−β/2 · [(e_θ(w) − e_ref(w)) − (e_θ(l) − e_ref(l))])       (β = 100, no base loss)

``sft``: best-of-group SFT — plain denoising loss on the best-scored hypothesis of each group (rejection
sampling finetuning). This is *not* the paper's SFT baseline, which finetunes on pseudo-3D labels.

Where we differ from a literal reading of the paper: ``||·||²`` is taken as the mean over the D coordinates
(as Diffusion-DPO's code does), which only rescales β.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hmrcritic.alignment.stats import SCALE_REWARDS, group_advantages, zero_variance_mask

OBJECTIVES = ("gpa", "gpa_linear", "dpo", "sft")

# The ObjectiveConfig fields an objective does not read: DPO pairs the best and worst hypothesis over the full t range,
# without advantages or a base loss; best-of-group SFT is a plain denoising loss, so β is unused too. ``finetune``
# says so when one is set (a --t-min sweep of DPO trained the same model each time) and resumes whatever they are.
UNUSED_SETTINGS = {
    "dpo": ("t_min", "gpa_weight", "base_loss_weight", "scale_rewards"),
    "sft": ("t_min", "gpa_weight", "base_loss_weight", "scale_rewards", "beta"),
}


@dataclass
class ObjectiveConfig:
    """Hyper-parameters of the objectives (familiar TRL-style names where there is one)."""

    objective: str = "gpa"
    beta: float = 100.0
    t_min: int | None = None  # GPA: lower end of t ~ U[t_min, T); None → T // 2
    gpa_weight: float = 0.1
    base_loss_weight: float = 1.0
    scale_rewards: str = "group"

    def __post_init__(self) -> None:
        if self.objective == "gpa_no_base_loss":
            self.objective, self.base_loss_weight = "gpa", 0.0
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            # TRL's older boolean form is what a TRL user types: name its two values here
            raise ValueError(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)} (TRL's True is group, False "
                             f"none), got {self.scale_rewards!r}")
        # A NaN β trains every weight to NaN and a negative one reverses the preference; both used to run to
        # the end and save the broken checkpoint.
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        for name in ("gpa_weight", "base_loss_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------- helpers


def repeat_condition(cond: Any, repeats: int | torch.Tensor) -> Any:
    """Repeat every per-sample field of a condition along the batch axis (``repeat_interleave``).

    Works for a tensor, a dict or a dataclass (the model's ``Condition``): tensors with a leading batch
    axis are repeated; other fields are kept.
    """
    if isinstance(cond, torch.Tensor):
        return cond.repeat_interleave(repeats, dim=0) if cond.ndim > 0 else cond
    if isinstance(cond, dict):
        return {k: repeat_condition(v, repeats) for k, v in cond.items()}
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        changes = {f.name: repeat_condition(getattr(cond, f.name), repeats) for f in dataclasses.fields(cond)}
        return dataclasses.replace(cond, **changes)
    return cond


def select_condition(cond: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` of every per-sample field of a condition."""
    if isinstance(cond, torch.Tensor):
        return cond[index] if cond.ndim > 0 else cond
    if isinstance(cond, dict):
        return {k: select_condition(v, index) for k, v in cond.items()}
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        changes = {f.name: select_condition(getattr(cond, f.name), index) for f in dataclasses.fields(cond)}
        return dataclasses.replace(cond, **changes)
    return cond


def denoise_error(model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: Any) -> torch.Tensor:
    """Per-sample ``mean_D (ε − ε_model(q_sample(x0, t, ε), t, c))²`` for ``x0 (M,D)``; returns ``(M,)``."""
    x_t = model.q_sample(x0, t, eps)
    pred = model.predict_eps(x_t, t, cond)
    return (eps - pred).pow(2).flatten(1).mean(dim=1)


def _policy_and_reference_errors(policy, reference, x0, t, eps, cond):
    """Errors of policy (with grad) and frozen reference (no grad) on the very same noised inputs."""
    err_pol = denoise_error(policy, x0, t, eps, cond)
    with torch.no_grad():
        err_ref = denoise_error(reference, x0, t, eps, cond)
    return err_pol, err_ref


def _uniform_t(low: int, high: int, n: int, generator, device) -> torch.Tensor:
    return torch.randint(low, high, (n,), generator=generator, device=device)


def _base_loss(policy, x0_flat, cond_flat, generator) -> torch.Tensor:
    """The ordinary DDPM loss: fresh ε and t ~ U[0, T) per hypothesis."""
    M = x0_flat.shape[0]
    T = int(policy.num_timesteps)
    t = _uniform_t(0, T, M, generator, x0_flat.device)
    eps = torch.randn(x0_flat.shape, generator=generator, device=x0_flat.device, dtype=x0_flat.dtype)
    return denoise_error(policy, x0_flat, t, eps, cond_flat).mean()


def _best_worst(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the best and worst hypothesis of each group (ties → lowest index)."""
    return scores.argmax(dim=1), scores.argmin(dim=1)


# ------------------------------------------------------------------------------------ objectives


def gpa_loss(policy, reference, x0, cond, scores, cfg: ObjectiveConfig, generator=None) -> ObjectiveOutput:
    """GPA (logistic or linear) + base denoising regulariser. ``x0 (B,G,D)``, ``scores (B,G)``."""
    B, G, D = x0.shape
    T = int(policy.num_timesteps)
    t_min = T // 2 if cfg.t_min is None else int(cfg.t_min)
    if not 0 <= t_min < T:
        raise ValueError(f"t_min must be in [0, {T}), got {t_min}")
    dev = x0.device
    zero = zero_variance_mask(scores)
    adv = group_advantages(scores.to(torch.float32), cfg.scale_rewards).to(x0.dtype)  # (B,G)
    keep = ~zero
    metrics: dict[str, float] = {"zero_variance_share": float(zero.float().mean()), "groups": float(B)}
    x0_flat = x0.reshape(B * G, D)
    cond_flat = repeat_condition(cond, G)
    parts = []
    if keep.any():
        # One t and one ε per group, shared by its G members and by policy and reference.
        t_group = _uniform_t(t_min, T, B, generator, dev)
        eps_group = torch.randn((B, 1, D), generator=generator, device=dev, dtype=x0.dtype)
        idx = keep.nonzero(as_tuple=True)[0]
        Bk = idx.numel()
        xk = x0[idx].reshape(Bk * G, D)
        tk = t_group[idx].repeat_interleave(G)
        ek = eps_group[idx].expand(Bk, G, D).reshape(Bk * G, D)
        ck = repeat_condition(select_condition(cond, idx), G)
        err_pol, err_ref = _policy_and_reference_errors(policy, reference, xk, tk, ek, ck)
        d = (err_pol - err_ref).view(Bk, G)
        s_ad = (adv[idx] * d).sum(dim=1)  # Σ_i A_i d_i per group
        if cfg.objective == "gpa_linear":
            l_gpa = (cfg.beta * s_ad).mean()
        else:
            l_gpa = -F.logsigmoid(-cfg.beta * s_ad).mean()
        parts.append(cfg.gpa_weight * l_gpa)
        metrics["loss_gpa"] = float(l_gpa.detach())
        metrics["sigma_mean"] = float(torch.sigmoid(cfg.beta * s_ad.detach()).mean())
        metrics.update(_reward_metrics(d.detach(), scores[idx], cfg.beta))
    # every group tied: no GPA term, and no loss_gpa either — a 0.0 here pulled the logged mean of a window down
    if cfg.base_loss_weight > 0:
        l_base = _base_loss(policy, x0_flat, cond_flat, generator)
        parts.append(cfg.base_loss_weight * l_base)
        metrics["loss_base"] = float(l_base.detach())
    loss = torch.stack(parts).sum() if parts else x0.new_zeros((), requires_grad=True)
    metrics["loss"] = float(loss.detach())
    return ObjectiveOutput(loss, metrics)


def dpo_loss(policy, reference, x0, cond, scores, cfg: ObjectiveConfig, generator=None) -> ObjectiveOutput:
    """ADHMR's Diffusion-DPO on the best vs worst hypothesis of each group (antithetic t, shared ε)."""
    B, G, D = x0.shape
    T = int(policy.num_timesteps)
    dev = x0.device
    zero = zero_variance_mask(scores)
    metrics: dict[str, float] = {"zero_variance_share": float(zero.float().mean()), "groups": float(B)}
    idx = (~zero).nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        loss = x0.new_zeros((), requires_grad=True)
        metrics["loss"] = 0.0
        return ObjectiveOutput(loss, metrics)
    Bk = idx.numel()
    best, worst = _best_worst(scores[idx])
    rows = torch.arange(Bk, device=dev)
    xw, xl = x0[idx][rows, best], x0[idx][rows, worst]  # (Bk, D)
    t = _uniform_t(0, T, Bk, generator, dev)
    t2 = torch.cat([t, T - 1 - t])  # antithetic pair
    eps = torch.randn((Bk, D), generator=generator, device=dev, dtype=x0.dtype).repeat(2, 1)
    # Winner and loser in one forward, rows [w(t), w(T−1−t), l(t), l(T−1−t)], each block Bk long.
    xx = torch.cat([xw.repeat(2, 1), xl.repeat(2, 1)])
    tt = torch.cat([t2, t2])
    ee = torch.cat([eps, eps])
    cc = select_condition(cond, idx[rows.repeat(4)])
    err_pol, err_ref = _policy_and_reference_errors(policy, reference, xx, tt, ee, cc)
    d = (err_pol - err_ref).view(2, 2 * Bk)  # [winner; loser] × (pairs at t and T−1−t)
    delta = d[0] - d[1]
    loss = -F.logsigmoid(-cfg.beta / 2 * delta).mean()
    dd = d.detach().view(2, 2, Bk).mean(dim=1)  # average the two timesteps → (2, Bk)
    metrics.update(
        {
            "loss": float(loss.detach()),
            "loss_dpo": float(loss.detach()),
            "reward_margin": float((-cfg.beta * (dd[0] - dd[1])).mean()),
            "reward_accuracy": float(((dd[0] - dd[1]) < 0).float().mean()),
            "sigma_mean": float(torch.sigmoid(cfg.beta / 2 * delta.detach()).mean()),
        }
    )
    return ObjectiveOutput(loss, metrics)


def sft_loss(policy, reference, x0, cond, scores, cfg: ObjectiveConfig, generator=None) -> ObjectiveOutput:
    """Best-of-group SFT: plain denoising loss (t ~ U[0,T), fresh ε) on each group's best hypothesis."""
    B, G, D = x0.shape
    best, _ = _best_worst(scores)
    xb = x0[torch.arange(B, device=x0.device), best]
    zero = zero_variance_mask(scores)
    # A group whose scores all tie has no best: its "best" would be hypothesis 0, an arbitrary pick that SFT
    # would then imitate. Skip it, as GPA (zero advantages) and DPO (no pair) do.
    if not zero.any():
        loss = _base_loss(policy, xb, cond, generator)
    elif zero.all():
        loss = torch.zeros((), device=x0.device)
    else:
        keep = torch.nonzero(~zero).squeeze(1)
        loss = _base_loss(policy, xb[keep], select_condition(cond, keep), generator)
    metrics = {"loss": float(loss.detach()), "zero_variance_share": float(zero.float().mean()), "groups": float(B)}
    # every group tied: no SFT term, and no loss_sft either (as GPA's loss_gpa and DPO's loss_dpo) — its 0.0 pulled
    # the logged mean of the window down
    if not zero.all():
        metrics["loss_sft"] = metrics["loss"]
    return ObjectiveOutput(loss, metrics)


def _reward_metrics(d: torch.Tensor, scores: torch.Tensor, beta: float) -> dict[str, float]:
    """Implicit reward r_i = −β d_i: the best-minus-worst margin and its sign accuracy (the share of groups
    whose best-scored hypothesis the policy already denoises better, relative to the reference, than the
    worst)."""
    best, worst = _best_worst(scores)
    rows = torch.arange(d.shape[0], device=d.device)
    r = -beta * d
    margin = r[rows, best] - r[rows, worst]
    return {"reward_margin": float(margin.mean()), "reward_accuracy": float((margin > 0).float().mean())}


_DISPATCH = {"gpa": gpa_loss, "gpa_linear": gpa_loss, "dpo": dpo_loss, "sft": sft_loss}


def compute_loss(
    policy, reference, x0, cond, scores, cfg: ObjectiveConfig, generator=None
) -> ObjectiveOutput:
    """Dispatch on ``cfg.objective``. ``x0 (B,G,D)``, ``scores (B,G)`` (overall), ``cond`` for B groups."""
    if x0.ndim != 3 or scores.shape != x0.shape[:2]:
        raise ValueError(
            f"x0 must be (B,G,D) and scores (B,G); got {tuple(x0.shape)} and {tuple(scores.shape)}"
        )
    # A NaN/inf score gave GPA a NaN loss, and DPO and SFT silently took the NaN-scored hypothesis as the best one
    # (argmax treats NaN as the largest value): refuse it here, for every objective.
    if scores.is_floating_point() and not bool(torch.isfinite(scores).all()):
        raise ValueError(f"scores must be finite; got {int((~torch.isfinite(scores)).sum())} NaN/inf value(s)")
    return _DISPATCH[cfg.objective](policy, reference, x0, cond, scores, cfg, generator)


def frozen_reference(model):
    """A frozen copy of the base model (eval mode, no grads) to measure implicit rewards against."""
    import copy

    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
