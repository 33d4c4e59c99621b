"""Score calibration: put the builtin judge's raw ``overall`` on the scale of true error (fitted by exploration).

Why (measured, README "Critic"): the builtin judge scores ``10·exp(−points)``, and how many points an
explored rule set stacks differs from one exploration to the next (one run mines 8-point rules graded every
0.005 of relative reprojection error, another 2-point ones). Rankings do not care, but the same score then
means a different error in different memories, and the critic's point-wise Pearson (the paper's "do scores
mean the same in an easy and a hard group?") was 0.55 / 0.50 in two of three explorations against the starter
memory's 0.62. A least-squares map ``log s' = a + γ · log s`` onto ``log settled_overall(error)`` — the score a
hypothesis deserved given its true error, the same mapping the prototypes settle on — fitted on labelled
groups the memory did not explore, puts every explored rule set on one scale. It is increasing, so no ranking
changes anywhere (within-group ρ, top-1 picks, DPO/SFT picks); GPA's group-normalised advantages see the
changed spacing only.

The map is part of the memory (``MemoryStore.calibration``), tied to the judge that produced the scores and
to the rule set it was fitted for; the recall node hands it to the judge with the rules. The paper has no
such step (its VLM reads prototypes as calibration examples); it is an hmrcritic extension.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hmrcritic.agent.judges import judge_name, settled_overall
from hmrcritic.agent.learning_curve import pooled_pearson, score_groups
from hmrcritic.errors import InputError
from hmrcritic.memory.schema import ScoreCalibration

# Labelled groups a calibration is fitted on by default: 32 × 16 = 512 (score, error) pairs for two parameters.
# `python benchmarks/calibration_stability.py`: fitted on disjoint sets of 8 / 16 / 32 / 64 train groups, the
# slope's SD is 0.38 / 0.09 / 0.04 / 0.04 and the worst set's test point-wise r 0.573 / 0.680 / 0.687 / 0.687
# (uncalibrated 0.622; benchmarks/results/calibration_stability.json): 32 is where more groups stop paying.
CALIBRATION_GROUPS = 32
SLOPE_RANGE = (0.02, 3.0)
MIN_SCORE = 1e-3  # log of a zero score is clipped here


def fit_calibration(scores: Sequence[Any], errors: Sequence[Any], *, judge: str = "builtin", split: str = "",
                    first_group: str = "", rules_fingerprint: str = "",
                    error_metric: str = "pa_mpjpe") -> ScoreCalibration:
    """Least-squares ``log settled_overall(error) ≈ intercept + slope · log score`` over all hypotheses of all
    groups (None entries, groups the critic failed on, are skipped).

    Raises :class:`InputError` when there is nothing to fit or the scores do not rank error at all (slope ≤ 0:
    a calibration cannot repair a critic that scores backwards)."""
    if len(scores) != len(errors):
        raise InputError(f"score calibration: {len(scores)} groups of scores but {len(errors)} of errors")
    pairs = [(np.asarray(s, np.float64).ravel(), np.asarray(e, np.float64).ravel())
             for s, e in zip(scores, errors, strict=True) if s is not None]
    if not pairs or sum(len(s) for s, _ in pairs) < 2:
        raise InputError("score calibration: no scored hypotheses to fit on")
    bad = [i for i, (s, e) in enumerate(pairs) if len(s) != len(e)]
    if bad:
        s, e = pairs[bad[0]]
        raise InputError(f"score calibration: a group has {len(s)} scores for {len(e)} errors")
    s = np.concatenate([p[0] for p in pairs])
    e = np.concatenate([p[1] for p in pairs])
    ok = np.isfinite(s) & np.isfinite(e)
    s, e = s[ok], e[ok]
    if len(s) < 2:
        raise InputError(f"score calibration: {len(s)} hypotheses with a finite score and error; nothing to fit")
    x = np.log(np.maximum(s, MIN_SCORE))  # a score of 0 counts as MIN_SCORE (no log of 0)
    y = np.log(settled_overall(e))
    var = float(np.var(x))
    # ptp, not var: n equal scores can leave a variance of ~1e-32 (the mean is rounded), and the slope of
    # noise over noise is then arbitrary — a made-up calibration or a false "ranks backwards"
    if np.ptp(x) == 0:
        raise InputError("score calibration: the scores do not vary; nothing to fit")
    slope = float(np.mean((x - x.mean()) * (y - y.mean())) / var)
    if slope <= 0:
        raise InputError(f"score calibration: scores rise with error on the fit set (slope {slope:.3f}); "
                         "the critic ranks backwards there, a calibration cannot fix that")
    slope = float(np.clip(slope, *SLOPE_RANGE))
    intercept = float(y.mean() - slope * x.mean())
    cal = ScoreCalibration(judge=judge, slope=slope, intercept=intercept, groups=len(pairs), hypotheses=len(x),
                           split=split, first_group=first_group, pearson_before=pooled_pearson([s], [e]),
                           pearson_after=0.0, rules_fingerprint=rules_fingerprint, error_metric=error_metric)
    cal.pearson_after = pooled_pearson([np.exp(cal.apply(x))], [e])
    return cal


MIN_TRUSTED_GROUPS = 8  # under this many fitting groups a calibration is said to be noisy (the default fits 32)
# a drop of point-wise r on the fit set said as a doubt: the map is fitted in log space, not for r, and the demo's
# 32-group fit moves r by −0.011 (0.671 → 0.660) while putting scores on the error scale as meant
R_DROP_NOTED = 0.02


def calibration_doubts(cal: ScoreCalibration) -> list[str]:
    """What makes a fitted calibration doubtful, measured on its own fit: too few groups, a slope held at a bound
    of ``SLOPE_RANGE`` (the least-squares slope was outside it), or a point-wise Pearson that the map lowered by
    more than ``R_DROP_NOTED``.

    Why: ``explore --calibration-groups 2`` fitted r 0.197 → 0.171 with the slope at its cap 3.0 and stored it
    without a word; every critique's overall then fell to 0.3–0.7 (as if 160–200 mm off) while the axes said 7–10.
    Said, not refused: which calibration a memory keeps is an exploration decision (published figures)."""
    doubts = []
    if cal.groups < MIN_TRUSTED_GROUPS:
        doubts.append(f"fitted on {cal.groups} group(s) only (fewer than {MIN_TRUSTED_GROUPS})")
    if cal.slope in SLOPE_RANGE:
        doubts.append(f"its slope is held at the bound {cal.slope:g} (the fit wanted "
                      f"{'more' if cal.slope == SLOPE_RANGE[1] else 'less'})")
    if cal.pearson_after < cal.pearson_before - R_DROP_NOTED:
        doubts.append(f"it lowers point-wise r on its own fit ({cal.pearson_before:.3f} → {cal.pearson_after:.3f})")
    return doubts


def calibrate_memory(memory: Any, groups: Sequence[Any], *, judge: Any = "builtin",
                     agent_config: dict | None = None, split: str = "", error_metric: str = "pa_mpjpe",
                     progress: Callable[[int, int], None] | None = None) -> ScoreCalibration:
    """Score labelled ``groups`` with ``memory``'s rules (prototypes, and any old calibration, off), fit the
    map and store it in the memory. Returns it.

    The groups should be ones the memory did not learn from (exploration uses the next groups of its split);
    ``progress(i, n)`` is called per group. ``error_metric`` is the error exploration learned from
    (``explore --error-metric``): fitted on PA-MPJPE whatever the metric, a memory explored on MPJPE scored
    ``overall`` on the PA-MPJPE scale while its rules and prototypes followed MPJPE, and the critique's note said
    "the error exploration learned from"."""
    from hmrcritic.agent.explore import exploration_error

    if not groups:
        raise InputError("score calibration: no labelled groups given")
    # PA-MPJPE: the groups' own errors_mm; the mix is the weighted mean, in mm (explore.error_table)
    errors = [exploration_error(g, error_metric) for g in groups]
    name = judge_name(judge)
    cfg = {**(agent_config or {}), "judge": name, "use_prototypes": False, "use_calibration": False,
           "learn": False}
    failed: list[str] = []
    scores, _ = score_groups(groups, memory, "full", judge=judge, agent_config=cfg, tag="calibrate",
                             progress=progress, failures=failed)
    if all(s is None for s in scores):
        # said with the reason: "no scored hypotheses to fit on" alone (exploration's "score calibration not
        # refitted: …" note) read as if there had been nothing to score, the cause of every failure dropped
        raise InputError(f"score calibration: the critiques of all {len(groups)} calibration group(s) failed; "
                         f"first: {failed[0] if failed else 'no reason given'}")
    # the first group the fit used: a first group whose critique failed is skipped by the fit, and naming it had
    # ``memory stats`` say the calibration was fitted from a group it never saw
    first = next((g.group_id for g, s in zip(groups, scores, strict=True) if s is not None), groups[0].group_id)
    cal = fit_calibration(scores, errors, judge=name, split=split, first_group=first,
                          rules_fingerprint=memory.rules_fingerprint(), error_metric=error_metric)
    memory.set_calibration(cal)
    return cal
