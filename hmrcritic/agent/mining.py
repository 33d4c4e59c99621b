"""Rule mining while exploring (PAPER.md §3 step 4): turn the critic's mistakes into new, testable rules.

Two sources of proposals, one gate:

* **Builtin miner** (:func:`mine_rules`) — for the offline judge, whose rules must be *executable*. Over the
  batch's mistakes it searches the evidence measures for the condition ``measure comparator threshold``
  (thresholds at quantiles of the batch's values, comparator on the measure's "worse" side) that best
  singles out the hypotheses the critic **over-rated** (information gain of "fires" about "over-rated"),
  sizes the deduction from the score gap (how far above their true-rank score those hypotheses sat), and
  keeps the candidate only if applying it to the batch's scores raises the mean group Spearman
  (simulated, so a rule that merely fits noise or hurts well-ranked groups is not written).
* **Judge proposals** (a VLM's ``propose_rules``) — parsed and validated by :func:`validate_proposal`: the
  text must be usable, an executable condition must name a known measure (:data:`agent.evidence.MEASURES`),
  a comparator, a finite threshold and sane points, and must not hurt the batch when simulated. A rule
  without a condition is accepted as text only (a VLM can read it; the builtin judge cannot apply it).

Every rejection carries a one-line reason that exploration logs; nothing here raises on bad proposals.
Beyond the paper: the paper's critic writes rules in prose only; executable conditions are hmrcritic's
extension (PAPER.md §6) and are what lets the simulated Spearman test exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hmrcritic.agent.schema import AXES, ProposedRule
from hmrcritic.hmr.metrics import spearman
from hmrcritic.memory.schema import Rule, RuleCondition
from hmrcritic.memory.starter_rules import normalise_tags

COMPARATORS = (">", ">=", "<", "<=")
QUANTILES = tuple(np.round(np.linspace(0.05, 0.95, 19), 3))
POINT_MULTIPLIERS = (0.5, 1.0, 2.0, 3.0, 4.0)
MAX_POINTS = 6.0
MIN_POINTS = 0.5
MAX_TEXT = 400


@dataclass
class BatchGroup:
    """What mining needs of one explored group: its evidence, the critic's final overall scores, the true
    error driving exploration (lower is better) and its evidence tags."""

    group_id: str
    evidence: dict[str, np.ndarray]
    overall: np.ndarray
    error: np.ndarray
    tags: list[str] = field(default_factory=list)
    rules_text: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(len(self.overall))

    def to_json(self) -> dict:
        """Plain JSON (floats round-trip exactly), so a resumed exploration mines on the same history."""
        return {"group_id": self.group_id, "evidence": {k: np.asarray(v, np.float64).tolist()
                                                         for k, v in self.evidence.items()},
                "overall": np.asarray(self.overall, np.float64).tolist(),
                "error": np.asarray(self.error, np.float64).tolist(), "tags": list(self.tags),
                "rules_text": list(self.rules_text)}

    @classmethod
    def from_json(cls, d: dict) -> BatchGroup:
        return cls(str(d["group_id"]), {k: np.asarray(v, np.float64) for k, v in d["evidence"].items()},
                   np.asarray(d["overall"], np.float64), np.asarray(d["error"], np.float64),
                   list(d.get("tags", [])), list(d.get("rules_text", [])))


@dataclass
class Candidate:
    measure: str
    comparator: str
    threshold: float
    points: float
    gain: float  # mean change of group Spearman(overall, −error) over the validation groups
    info_gain: float  # bits: how well "fires" singles out the over-rated hypotheses
    support: int  # over-rated hypotheses it fires on
    fires: int  # all hypotheses it fires on
    tags: list[str] = field(default_factory=list)
    per: float | None = None  # graded: points per `per` units beyond the threshold

    def condition(self) -> RuleCondition:
        from hmrcritic.agent.evidence import MEASURES

        return RuleCondition(measure=self.measure, comparator=self.comparator, threshold=self.threshold,
                             points=self.points, axis=MEASURES[self.measure].axis, per=self.per)

    def spec(self) -> tuple:
        return (self.measure, self.comparator, self.threshold, self.points, self.per)


@dataclass
class Rejection:
    text: str
    reason: str

    def as_dict(self) -> dict:
        return {"text": self.text[:200], "reason": self.reason}


# -------------------------------------------------------------------------------------------- ranks/mistakes
def ranks(values: np.ndarray, descending: bool) -> np.ndarray:
    """0-based rank of each value (stable), best first."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(-v if descending else v, kind="stable")
    out = np.empty(len(v), dtype=np.int64)
    out[order] = np.arange(len(v))
    return out


def rank_matched_scores(overall: np.ndarray, error: np.ndarray) -> np.ndarray:
    """The critic's own scores re-assigned by the true ranking: the hypothesis with the k-th lowest error
    gets the critic's k-th highest score. It is "what the critic should have said" on its own scale; the
    settled prototype score and the score gap of a mistake are measured against it."""
    s = np.sort(np.asarray(overall, dtype=np.float64))[::-1]
    return s[ranks(error, descending=False)]


def overrated_mask(g: BatchGroup, min_shift: int | None = None) -> np.ndarray:
    """The damaging over-ratings: hypotheses in the worse half by true error that the critic put at least
    ``min_shift`` places (default max(2, N/4)) above their true rank. (Swaps among good hypotheses are
    mistakes too, but no deduction rule should be mined from them.)"""
    shift = max(2, g.n // 4) if min_shift is None else min_shift
    return ((ranks(g.error, False) - ranks(g.overall, True)) >= shift) & (g.error > np.median(g.error))


def underrated_mask(g: BatchGroup, min_shift: int | None = None) -> np.ndarray:
    """Hypotheses in the better half by true error that the critic put ``min_shift`` places too low."""
    shift = max(2, g.n // 4) if min_shift is None else min_shift
    return ((ranks(g.overall, True) - ranks(g.error, False)) >= shift) & (g.error <= np.median(g.error))


def group_spearman(overall: np.ndarray, error: np.ndarray) -> float:
    """Spearman ρ(overall, −error); a constant score (no ranking at all) counts as 0."""
    if np.ptp(overall) <= 0 or np.ptp(error) <= 0:
        return 0.0
    return float(spearman(np.asarray(overall, np.float64), -np.asarray(error, np.float64)))


# -------------------------------------------------------------------------------------------- simulation
def _stack(groups: list[BatchGroup]) -> dict[int, list[int]]:
    """Group indices by size so equal-size groups are simulated in one tensor op."""
    by_n: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_n.setdefault(g.n, []).append(i)
    return by_n


def _fires(values: np.ndarray, comparator: str, thresholds: np.ndarray) -> np.ndarray:
    v = values[None]
    t = thresholds.reshape(-1, *([1] * values.ndim))
    return {">": v > t, ">=": v >= t, "<": v < t, "<=": v <= t}[comparator]


def _as_condition(c) -> RuleCondition:
    """A condition from a :class:`RuleCondition` or a tuple ``(measure, comparator, threshold, points[, per])``."""
    if isinstance(c, RuleCondition):
        return c
    measure, cmp, thr, pts, *rest = c
    return RuleCondition(measure=measure, comparator=cmp, threshold=float(thr), points=float(pts),
                         per=(rest[0] if rest else None))


def log_scores(overall: np.ndarray) -> np.ndarray:
    """The builtin judge's scores in its own (log) units, where a rule's deduction is additive."""
    return np.log(np.clip(np.asarray(overall, np.float64), 1e-6, None))


def deduct(overall: np.ndarray, evidence: dict[str, np.ndarray], cond, sign: float = 1.0) -> np.ndarray:
    """``overall`` after (``sign`` = −1: before) a condition's deduction, exactly as the builtin judge applies
    it: a factor ``exp(−POINT_DECAY · points)`` (an untried rule's weight is 1). A group without the measure is
    unchanged."""
    from hmrcritic.agent.judges import POINT_DECAY

    c = _as_condition(cond)
    if c.measure not in evidence:
        return np.asarray(overall, np.float64)
    return np.asarray(overall, np.float64) * np.exp(-sign * POINT_DECAY * c.deduction(evidence[c.measure]))


def simulate_gains(groups: list[BatchGroup], conditions: list) -> np.ndarray:
    """Change of each group's Spearman when each condition — a :class:`RuleCondition` or ``(measure,
    comparator, threshold, points[, per])`` — takes its deduction off ``overall`` the way the builtin judge
    does (multiplicatively, :func:`deduct`); a group without the measure is unchanged.
    Returns ``(len(conditions), len(groups))``; vectorised per group size."""
    from hmrcritic.agent.judges import POINT_DECAY

    out = np.zeros((len(conditions), len(groups)))
    if not conditions or not groups:
        return out
    conds = [_as_condition(c) for c in conditions]
    for _, idx in _stack(groups).items():
        gs = [groups[i] for i in idx]
        ov = torch.as_tensor(np.stack([log_scores(g.overall) for g in gs]), dtype=torch.float64)  # (G,N)
        neg_err = -torch.as_tensor(np.stack([g.error for g in gs]), dtype=torch.float64)
        base = torch.nan_to_num(spearman(ov, neg_err), nan=0.0)
        offs = np.zeros((len(conds), len(gs), gs[0].n))
        for j, g in enumerate(gs):
            for c, cond in enumerate(conds):
                if cond.measure in g.evidence:
                    offs[c, j] = cond.deduction(g.evidence[cond.measure])
        new = ov[None] - POINT_DECAY * torch.as_tensor(offs)
        rho = torch.nan_to_num(spearman(new, neg_err.expand_as(new)), nan=0.0)
        out[:, idx] = (rho - base[None]).numpy()
    return out


def simulate_gain(groups: list[BatchGroup], conditions: list) -> np.ndarray:
    """Mean over the groups of :func:`simulate_gains`: ``(len(conditions),)``."""
    if not conditions or not groups:
        return np.zeros(len(conditions))
    return simulate_gains(groups, conditions).mean(-1)


# ------------------------------------------------------------------------------------------ builtin miner
def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def information_gain(fires: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Bits of information "fires" (C, M) gives about the binary ``label`` (M,), per candidate."""
    m = label.size
    pos = label.sum()
    h0 = _entropy(np.array(pos / m))
    n1 = fires.sum(-1)
    n0 = m - n1
    p1 = np.where(n1 > 0, (fires & label[None]).sum(-1) / np.maximum(n1, 1), 0.0)
    p0 = np.where(n0 > 0, (~fires & label[None]).sum(-1) / np.maximum(n0, 1), 0.0)
    return h0 - (n1 / m) * _entropy(p1) - (n0 / m) * _entropy(p0)


def measure_tags(measure: str) -> list[str]:
    """The retrieval tags a measure speaks to (its own tag, plus the limbs for knee/elbow hyperextension)."""
    from hmrcritic.agent.evidence import MEASURES

    spec = MEASURES.get(measure)
    if spec is None:
        return []
    tags = [spec.tag]
    if spec.tag == "hyperextension":
        tags += ["joint_limits", "legs", "arms"]
    return normalise_tags(tags)


def _context_tags(groups: list[BatchGroup], measure: str, hit_groups: list[int], max_tags: int = 4) -> list[str]:
    """Measure tags, then the tags present in most groups where the rule fires, so that Ψ's tag overlap
    retrieves the rule for groups like the ones it was mined on (capped at ``max_tags``)."""
    tags = measure_tags(measure)
    counts: dict[str, int] = {}
    for i in hit_groups:
        for t in groups[i].tags:
            counts[t] = counts.get(t, 0) + 1
    common = sorted((t for t, c in counts.items() if c >= 0.8 * max(1, len(hit_groups))),
                    key=lambda t: (-counts[t], t))
    for t in common:
        if len(tags) >= max_tags:
            break
        if t not in tags:
            tags.append(t)
    return normalise_tags(tags)


def _too_close(measure: str, cmp: str, thr: float, existing: list[RuleCondition], rel_tol: float) -> bool:
    from hmrcritic.agent.evidence import MEASURES

    scale = MEASURES[measure].scale if measure in MEASURES else 1.0
    for c in existing:
        if c.measure == measure and c.comparator == cmp and \
                abs(c.threshold - thr) <= rel_tol * max(abs(c.threshold), abs(thr), 0.05 * scale):
            return True
    return False


def mine_rules(
    batch: list[BatchGroup],
    validation: list[BatchGroup] | None = None,
    existing: list[Rule] | None = None,
    max_rules: int = 2,
    min_gain: float = 0.01,
    min_support: int = 2,
    min_lift: float = 1.5,
    rel_tol: float = 0.1,
    measures: list[str] | None = None,
    graded: bool = True,
) -> tuple[list[Candidate], list[Rejection]]:
    """Executable rules from the over-rated hypotheses of ``batch`` (see the module docstring).

    ``validation`` (default: ``batch``) are the groups the simulated Spearman gain is averaged over; the
    caller passes the batch plus recent batches so one lucky batch cannot write a rule. ``existing`` rules'
    conditions are not proposed again (same measure and comparator, threshold within ``rel_tol``). A candidate
    must fire on at least ``min_support`` over-rated hypotheses, with a share of over-rated ones ``min_lift``
    times the batch's, and help more validation groups than it hurts. Rules are picked greedily: the second
    one must still gain once the first is applied.

    With ``graded`` (default) the search also tries graded rules (``points`` per ``per`` units beyond the
    threshold; thresholds at the 10–75 % quantiles of the batch, ``per`` a fraction of the measure's spread):
    they carry how *much* a measure matters, which a step rule cannot, and they are held to the same test
    (simulated gain on the validation groups, consistency). Beyond the paper (its rules are prose).
    """
    from hmrcritic.agent.evidence import MEASURES

    validation = list(validation) if validation else list(batch)
    rejected: list[Rejection] = []
    over = [overrated_mask(g) for g in batch]
    if not batch or sum(int(m.sum()) for m in over) == 0:
        return [], [Rejection("(builtin miner)", "no over-rated hypothesis in the batch: nothing to mine")]
    existing_conds = [r.condition for r in (existing or []) if r.condition is not None and not r.retired]
    names = sorted({k for g in batch for k in g.evidence} & set(measures or MEASURES))
    chosen: list[Candidate] = []
    for _ in range(max_rules):
        best: Candidate | None = None
        pool: list[tuple[str, str, float, float, float, int, int, list[int]]] = []
        for name in names:
            pooled = _pooled(batch, over, name)
            if pooled is None:
                continue
            cmp, present, vals, label = pooled
            # gap: how far each hypothesis sat above the score its true rank deserved
            gap = np.concatenate([batch[i].overall - rank_matched_scores(batch[i].overall, batch[i].error)
                                  for i in present])
            thr = np.unique(np.round(np.quantile(vals, QUANTILES), 6))
            fires = _fires(vals, cmp, thr)  # (T, M)
            ig = information_gain(fires, label)
            for t_i, t in enumerate(thr):
                f = fires[t_i]
                support = int((f & label).sum())
                if support < min_support or f.all() or not f.any():
                    continue
                if support / f.sum() < min_lift * label.mean():  # fires on everything alike: no signal
                    continue
                if _too_close(name, cmp, float(t), existing_conds + [c.condition() for c in chosen], rel_tol):
                    continue
                pos_gap = gap[f & label]
                base_pts = float(np.median(pos_gap)) if pos_gap.size else 1.0
                pool.append((name, cmp, float(t), max(base_pts, MIN_POINTS), float(ig[t_i]), support,
                             int(f.sum()), _hit_groups(batch, present, f)))
        if not pool and not graded:
            if not chosen:
                rejected.append(Rejection("(builtin miner)", "no condition fires on enough over-rated hypotheses "
                                          f"(≥ {min_support}, share ≥ {min_lift}× the batch's)"))
            break
        # keep the most informative thresholds per measure, then test their point sizes by simulation
        pool.sort(key=lambda p: -p[4])
        shortlist = pool[: 4 * max(1, len(names))]
        conds, meta = [], []
        for p in shortlist:
            for mult in POINT_MULTIPLIERS:
                pts = float(np.clip(round(p[3] * mult * 2) / 2, MIN_POINTS, MAX_POINTS))
                conds.append((p[0], p[1], p[2], pts, None))
                meta.append(p)
        if graded:
            for p in _graded_pool(batch, names, over, existing_conds + [c.condition() for c in chosen], rel_tol):
                for pts in GRADED_POINTS:
                    conds.append((p[0], p[1], p[2], pts, p[-1]))
                    meta.append(p[:-1])
        val_groups = _apply(validation, chosen)
        per_group = simulate_gains(val_groups, conds)
        gains = per_group.mean(-1)
        # consistency: a real regularity helps more groups than it hurts; one fitted to a few groups' noise
        # does not (small batches make a lucky threshold easy to find)
        consistent = (per_group > 1e-9).sum(-1) > (per_group < -1e-9).sum(-1)
        for (name, cmp, thr, pts, per), p, gain, ok in zip(conds, meta, gains, consistent, strict=True):
            if not ok:
                continue
            if best is None or gain > best.gain + 1e-12 or (abs(gain - best.gain) <= 1e-12 and p[4] > best.info_gain):
                best = Candidate(name, cmp, _nice(thr), pts, float(gain), p[4], p[5], p[6],
                                 tags=_context_tags(batch, name, p[7]), per=None if per is None else _nice(per))
        if best is None and not chosen:
            rejected.append(Rejection("(builtin miner)", "no condition on the evidence singles out the over-rated "
                                      "hypotheses consistently (support, lift or consistency too low)"))
        if best is None or best.gain < min_gain:
            if best is not None:
                rejected.append(Rejection(
                    rule_text(best), f"simulated Spearman gain {best.gain:+.4f} below {min_gain} on "
                    f"{len(validation)} groups"))
            break
        chosen.append(best)
        names = [n for n in names if n != best.measure]
    return chosen, rejected


GRADED_QUANTILES = (0.1, 0.25, 0.5, 0.75)
GRADED_PER = (0.25, 0.5, 1.0)  # × the measure's standard deviation over the batch
GRADED_POINTS = (1.0, 2.0, 4.0, 8.0)


def _graded_pool(batch: list[BatchGroup], names: list[str], over: list[np.ndarray], existing: list[RuleCondition],
                 rel_tol: float) -> list[tuple]:
    """Graded candidates ``(measure, comparator, threshold, 0, info_gain=0, support, fires, hit_groups, per)``
    for every measure with spread in the batch (points are tried by the caller)."""
    pool = []
    for name in names:
        pooled = _pooled(batch, over, name)
        if pooled is None:
            continue
        cmp, present, vals, label = pooled
        sd = float(vals.std())
        if not np.isfinite(sd) or sd <= 0:
            continue
        qs = np.quantile(vals, GRADED_QUANTILES if cmp == ">" else [1 - q for q in GRADED_QUANTILES])
        for t in np.unique(np.round(qs, 6)):
            if _too_close(name, cmp, float(t), [c for c in existing if c.per is not None], rel_tol):
                continue
            f = _fires(vals, cmp, np.array([t]))[0]
            hits = _hit_groups(batch, present, f)
            for k in GRADED_PER:
                pool.append((name, cmp, float(t), 0.0, 0.0, int((f & label).sum()), int(f.sum()), hits,
                             _nice(k * sd)))
    return pool


def _pooled(batch: list[BatchGroup], over: list[np.ndarray], name: str):
    """A measure over the batch: ``(comparator on its worse side, indices of the groups that have it, their
    values concatenated, their over-rated labels concatenated)``, or None when no group has it."""
    from hmrcritic.agent.evidence import MEASURES

    present = [i for i, g in enumerate(batch) if name in g.evidence]
    if not present:
        return None
    cmp = ">" if MEASURES[name].higher_is_worse else "<"
    vals = np.concatenate([np.asarray(batch[i].evidence[name], np.float64) for i in present])
    return cmp, present, vals, np.concatenate([over[i] for i in present])


def _hit_groups(batch: list[BatchGroup], present: list[int], fires: np.ndarray) -> list[int]:
    """The groups (of ``present``, whose values are concatenated in ``fires``) where a condition fires at all."""
    out, off = [], 0
    for i in present:
        k = batch[i].n
        if fires[off:off + k].any():
            out.append(i)
        off += k
    return out


def _nice(x: float) -> float:
    """A threshold a person can read (3 significant digits)."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.3g}")


def _apply(groups: list[BatchGroup], chosen: list[Candidate]) -> list[BatchGroup]:
    """The groups with already-chosen rules' deductions applied (for greedy selection)."""
    if not chosen:
        return groups
    out = []
    for g in groups:
        ov = g.overall.copy()
        for c in chosen:
            ov = deduct(ov, g.evidence, c.condition())
        out.append(BatchGroup(g.group_id, g.evidence, ov, g.error, g.tags))
    return out


_CMP_WORDS = {">": "above", ">=": "at or above", "<": "below", "<=": "at or below"}


def rule_text(c: Candidate | RuleCondition) -> str:
    """A readable deduction sentence for a mined condition."""
    from hmrcritic.agent.evidence import MEASURES
    from hmrcritic.memory.schema import GRADED_CAP

    spec = MEASURES[c.measure]
    desc = spec.description[0].upper() + spec.description[1:]
    pts = f"{c.points:g} point{'' if c.points == 1 else 's'}"
    if getattr(c, "per", None):
        return (f"{desc} ({c.measure}) {_CMP_WORDS[c.comparator]} {c.threshold:g} {spec.unit} → take off {pts} "
                f"for every {c.per:g} {spec.unit} beyond it (at most {GRADED_CAP * c.points:g}).")
    return f"{desc} ({c.measure}) {_CMP_WORDS[c.comparator]} {c.threshold:g} {spec.unit} → take off {pts}."


def candidate_to_rule(c: Candidate, round_created: int) -> Rule:
    """A mined rule (id derived from its text, so writing it twice is idempotent)."""
    return Rule(rule_id="", text=rule_text(c), tags=c.tags, origin="mined", round_created=round_created,
                condition=c.condition())


# ---------------------------------------------------------------------------------------- judge proposals
def _why(exc: Exception) -> str:
    """What failed, in one line: a ValidationError's first line is only "1 validation error for ProposedRule"
    (what the reason said for every bad proposal, so exploration's log never told which field was wrong)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'rule'}: {e['msg']}" for e in exc.errors()[:3])
    else:
        text = " ".join(str(exc).split())
    return text[:160]


def _echo(value: Any, width: int = 40) -> str:
    """``repr(value)``, cut to about ``width`` characters with an ellipsis (a proposal's field quoted in a reason)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def validate_proposal(
    proposal: Any,
    round_created: int,
    validation: list[BatchGroup] | None = None,
    existing: list[Rule] | None = None,
    max_harm: float = 0.0,
    rel_tol: float = 0.1,
) -> tuple[Rule | None, Rejection | None]:
    """A judge's proposal as a mined :class:`Rule`, or the reason it is rejected.

    Accepts a :class:`ProposedRule`, a dict of its fields or a JSON string. An executable condition must be
    complete and on a known measure; when ``validation`` groups are given its simulated Spearman change must
    not fall below ``-max_harm`` (the rule must not make the batch's rankings worse)."""
    from hmrcritic.agent.evidence import MEASURES

    raw_text = ""
    try:
        if isinstance(proposal, str):
            p = ProposedRule.model_validate_json(proposal)
        elif isinstance(proposal, ProposedRule):
            p = proposal
        else:
            p = ProposedRule.model_validate(proposal)
    except Exception as exc:
        raw_text = str(proposal)[:120]
        return None, Rejection(raw_text, f"does not parse as a rule ({type(exc).__name__}: {_why(exc)})")
    text = " ".join(str(p.text or "").split())
    if len(text) < 8:
        return None, Rejection(text, "rule text is empty or too short to be a checkable statement")
    if len(text) > MAX_TEXT:
        return None, Rejection(text, f"rule text longer than {MAX_TEXT} characters")
    parts = [p.measure, p.comparator, p.threshold]
    cond = None
    if any(x is not None for x in parts):
        if any(x is None for x in parts):
            return None, Rejection(text, "incomplete condition: needs measure, comparator and threshold")
        # the judge's values are echoed cut short: a 10 kB "measure" made a 10 kB reason, printed and logged
        if p.measure not in MEASURES:
            return None, Rejection(text, f"condition on unknown measure {_echo(p.measure)} (known: "
                                         f"{', '.join(sorted(MEASURES))})")
        if p.comparator not in COMPARATORS:
            return None, Rejection(text, f"comparator {_echo(p.comparator)} is not one of {' '.join(COMPARATORS)}")
        thr = float(p.threshold)
        if not math.isfinite(thr):
            return None, Rejection(text, f"threshold {p.threshold!r} is not a finite number")
        pts = 2.0 if p.points is None else float(p.points)
        if not math.isfinite(pts) or not (0 < pts <= 10):
            return None, Rejection(text, f"points {p.points!r} outside (0, 10]")
        axis = p.axis if p.axis in AXES else MEASURES[p.measure].axis
        per = None if p.per is None else float(p.per)
        if per is not None and not (math.isfinite(per) and per > 0):
            return None, Rejection(text, f"per {p.per!r} must be a positive number (or omitted for a step rule)")
        cond = RuleCondition(measure=p.measure, comparator=p.comparator, threshold=thr, points=pts, axis=axis,
                             per=per)
        existing_conds = [r.condition for r in (existing or []) if r.condition is not None and not r.retired]
        if _too_close(cond.measure, cond.comparator, thr, existing_conds, rel_tol):
            return None, Rejection(text, f"duplicates an existing rule on {cond.measure} {cond.comparator} "
                                         f"≈{thr:g}")
        if validation:
            gain = float(simulate_gain(validation, [cond])[0])
            if gain < -max_harm:
                return None, Rejection(text, f"makes the batch's rankings worse when applied (simulated "
                                             f"Spearman change {gain:+.4f})")
    tags = normalise_tags(list(p.tags or []))
    if cond is not None:
        tags = normalise_tags(tags + measure_tags(cond.measure))
    rule = Rule(rule_id="", text=text, tags=tags, origin="mined", round_created=round_created, condition=cond)
    return rule, None
