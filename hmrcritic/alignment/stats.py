"""Group-normalised advantages and a per-group statistics tracker.

GPA (PAPER.md §4) turns the critic's scores of one group into advantages ``A_i = (s_i − mean(s)) / std(s)``
(population std + 1e-8), so that only the *ranking within a group* matters and groups of easy and hard
inputs weigh alike. The same function fills the ``advantages`` field of the exported dataset and feeds the
objectives, so both use one formula. The finetuner recomputes them over the hypotheses it draws each step and
never reads the stored field: they differ when it draws fewer than a group holds (``num_generations`` < G) or
scales otherwise (``scale_rewards`` other than ``group``).

:class:`GroupStatTracker` follows flow_grpo's per-prompt stat tracker: it accumulates the reward
statistics of every group seen in a logging window (mean, spread, zero-variance share, best-minus-worst
gap) so the finetuner can log how informative its batches are. A zero-variance group (all hypotheses
scored alike) carries no preference signal and is skipped by the GPA loss; its share is the first thing
to look at when alignment does not move.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SCALE_REWARDS = ("group", "batch", "none")
ZERO_VARIANCE_TOL = 1e-6
STD_EPS = 1e-8


def group_advantages(
    scores: torch.Tensor, scale_rewards: str = "group", eps: float = STD_EPS
) -> torch.Tensor:
    """Advantages of scores ``(B, G)`` along the group axis.

    - ``group``: ``(s − mean_g) / (std_g + eps)`` (population std; the paper's GPA),
    - ``batch``: ``(s − mean_g) / (std over the whole batch + eps)`` (keeps the scale of scores across
      groups, as TRL's ``scale_rewards="batch"``),
    - ``none``: ``s − mean_g`` (no scaling; Dr. GRPO-style).
    Zero-variance groups get advantages exactly 0 under every mode.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    # A NaN or inf score made every advantage of its group (of the batch, for "batch") NaN: a silent NaN loss
    if scores.is_floating_point() and not bool(torch.isfinite(scores).all()):
        raise ValueError(f"scores must be finite; got {int((~torch.isfinite(scores)).sum())} NaN/inf value(s)")
    s = scores.to(torch.float64) if scores.dtype != torch.float64 else scores
    centred = s - s.mean(dim=-1, keepdim=True)
    if scale_rewards == "group":
        adv = centred / (s.std(dim=-1, unbiased=False, keepdim=True) + eps)
    elif scale_rewards == "batch":
        adv = centred / (s.std(unbiased=False) + eps)
    else:
        adv = centred
    adv = torch.where(zero_variance_mask(s)[..., None], torch.zeros_like(adv), adv)
    return adv.to(scores.dtype if scores.is_floating_point() else torch.float32)


def zero_variance_mask(scores: torch.Tensor, tol: float = ZERO_VARIANCE_TOL) -> torch.Tensor:
    """``(B,)`` True where every hypothesis of a group has (numerically) the same score."""
    return (scores.max(dim=-1).values - scores.min(dim=-1).values) <= tol


def advantages_np(overall: Sequence[float], scale_rewards: str = "group") -> list[float]:
    """Advantages of one group's overall scores as plain floats (for the dataset manifest)."""
    t = torch.as_tensor(np.asarray(overall, dtype=np.float64))[None]
    return [float(v) for v in group_advantages(t, scale_rewards)[0]]


class GroupStatTracker:
    """Accumulates per-group reward statistics over a logging window (flow_grpo-style).

    ``update(group_ids, scores)`` records each group's scores; ``summary()`` reports the number of groups
    and distinct groups seen, the zero-variance share, mean score, mean within-group std and mean
    best-minus-worst gap; ``clear()`` starts a new window.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._n = 0
        self._ids: set[str] = set()
        self._zero = 0
        self._sum_mean = 0.0
        self._sum_std = 0.0
        self._sum_gap = 0.0

    def update(self, group_ids: Sequence[str], scores: torch.Tensor) -> torch.Tensor:
        """Record a batch of groups; returns their zero-variance mask ``(B,)``."""
        s = scores.detach().to(torch.float64)
        if s.ndim != 2 or s.shape[0] != len(group_ids):
            raise ValueError(f"scores must be (B, G) with B = len(group_ids); got {tuple(s.shape)}")
        zero = zero_variance_mask(s)
        self._n += s.shape[0]
        self._ids.update(group_ids)
        self._zero += int(zero.sum())
        self._sum_mean += float(s.mean(dim=-1).sum())
        self._sum_std += float(s.std(dim=-1, unbiased=False).sum())
        self._sum_gap += float((s.max(dim=-1).values - s.min(dim=-1).values).sum())
        return zero

    def state_dict(self) -> dict:
        """The open window as plain types (a training state saved mid-window resumes it exactly)."""
        return {"n": self._n, "ids": sorted(self._ids), "zero": self._zero, "sum_mean": self._sum_mean,
                "sum_std": self._sum_std, "sum_gap": self._sum_gap}

    def load_state_dict(self, state: dict) -> None:
        self._n, self._ids, self._zero = int(state["n"]), set(state["ids"]), int(state["zero"])
        self._sum_mean, self._sum_std, self._sum_gap = (float(state[k]) for k in ("sum_mean", "sum_std", "sum_gap"))

    def summary(self) -> dict[str, float]:
        n = max(self._n, 1)
        return {
            "groups": self._n,
            "distinct_groups": len(self._ids),
            "zero_variance_share": self._zero / n,
            "score_mean": self._sum_mean / n,
            "score_std_mean": self._sum_std / n,
            "score_gap_mean": self._sum_gap / n,
        }
