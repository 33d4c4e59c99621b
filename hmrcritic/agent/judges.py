"""Judges: who turns a group's evidence (and renders) into scores.

Every judge speaks the same protocol, so the graph does not care which one runs:

* :class:`JudgeContext` is everything a judge may look at for one group: the evidence table (one list per
  measure, one value per hypothesis), the retrieved rules, the retrieved prototypes per hypothesis, the
  paths of the renders, and — in a revise round — the feedback of the reflect node and the previous critique.
  It is plain pydantic (no numpy) so it can sit in graph state and be logged.
* :class:`Judge` has ``name``, ``critique(ctx) -> GroupCritique`` and ``propose_rules(ctx, mistakes) ->
  RuleProposals`` (rule mining while exploring). A judge that fails for a group after its retries raises
  :class:`hmrcritic.errors.JudgeError`; the graph turns that into a per-group error.

``BuiltinJudge`` (offline, deterministic) lives here; ``VLMJudge`` lives in ``agent/vlm.py`` and is imported
lazily by :func:`make_judge` so that the builtin path never imports langchain-openai.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, Field

from hmrcritic.agent.schema import AXES, GroupCritique, HypothesisScore, ProposedRule, RuleProposals
from hmrcritic.errors import JudgeError
from hmrcritic.memory.schema import Rule, ScoreCalibration


class PrototypeHit(BaseModel):
    """A retrieved prototype as a judge sees it: its settled scores, rationale and how similar it is.

    ``error_mm`` is the true PA-MPJPE recorded while the prototype was written on labelled (train) data;
    it is None for prototypes written without labels. The embedding is left out (judges never need it).
    """

    proto_id: str
    similarity: float = Field(..., description="cosine similarity in [-1, 1] between pose embeddings")
    overall: float
    motion_structure: float
    physical_feasibility: float
    image_alignment: float
    rationale: str = ""
    tags: list[str] = Field(default_factory=list)
    source: str = ""
    error_mm: float | None = None


class Mistake(BaseModel):
    """Where a critique disagreed with the ground truth (exploration on labelled groups): input to rule mining."""

    index: int = Field(..., description="hypothesis index within the group")
    overall: float = Field(..., description="the critic's overall score")
    critic_rank: int = Field(..., description="0 = ranked best by the critic")
    true_rank: int = Field(..., description="0 = lowest true error")
    error_mm: float = Field(..., description="true error of this hypothesis, mm (exploration's error metric: "
                                             "PA-MPJPE by default)")
    evidence: dict[str, float] = Field(default_factory=dict, description="its evidence row")
    note: str = ""


class ReflectionIssue(BaseModel):
    """One problem the reflect node found in a critique (structured, so a builtin judge can act on it;
    the same issues are rendered as the ``feedback`` text a VLM reads)."""

    kind: Literal["invalid", "contradiction", "prototype", "rule", "neighbours"]
    indices: list[int] = Field(default_factory=list, description="hypotheses concerned (pairs: [higher, better])")
    detail: str = ""
    rule_id: str | None = None
    target: float | None = Field(None, description="the overall score the check suggests, when it has one")


class JudgeContext(BaseModel):
    """Everything a judge may look at for one group (small, plain, serialisable)."""

    group_id: str
    num_hypotheses: int = Field(..., ge=1)
    evidence: dict[str, list[float]] = Field(
        default_factory=dict, description="measure name → one value per hypothesis (see agent/evidence.MEASURES)"
    )
    measure_info: dict[str, str] = Field(
        default_factory=dict, description="measure name → 'unit; higher is worse/better; description' for prompts"
    )
    tags: list[str] = Field(default_factory=list, description="evidence tags of the group (rule retrieval query)")
    rules: list[Rule] = Field(default_factory=list, description="retrieved rules, best first")
    prototypes: list[list[PrototypeHit]] = Field(
        default_factory=list, description="per hypothesis: retrieved prototypes, most similar first"
    )
    image_path: str | None = Field(None, description="the input image (may be None for synthetic scenes)")
    overlay_grid_path: str | None = Field(None, description="all hypotheses overlaid on the image, labelled 0..N-1")
    side_grid_path: str | None = Field(None, description="all hypotheses from the side, labelled 0..N-1")
    overlay_paths: list[str] = Field(default_factory=list, description="one overlay per hypothesis (optional)")
    feedback: str = Field("", description="reflect-node feedback for a revise round ('' on the first round)")
    issues: list[ReflectionIssue] = Field(default_factory=list, description="structured form of ``feedback``")
    previous: GroupCritique | None = Field(None, description="the critique being revised, if any")
    round: int = Field(0, ge=0, description="0 = first critique, k = k-th revision")
    calibration: ScoreCalibration | None = Field(
        None, description="the memory's score calibration for this judge (builtin: applied to overall)")

    def evidence_row(self, index: int) -> dict[str, float]:
        return {name: float(values[index]) for name, values in self.evidence.items()}


@runtime_checkable
class Judge(Protocol):
    """The judge protocol every judge implements (builtin, VLM, tests' own)."""

    name: str

    def critique(self, ctx: JudgeContext) -> GroupCritique:
        """Score every hypothesis of the group (exactly ``ctx.num_hypotheses`` scores, indices 0..N-1).

        Raise :class:`hmrcritic.errors.JudgeError` when no valid critique can be obtained.
        """
        ...

    def propose_rules(self, ctx: JudgeContext, mistakes: list[Mistake]) -> RuleProposals:
        """Mine at most two new, testable rules from the critique's mistakes on a labelled group."""
        ...


# --------------------------------------------------------------------------------------------------------------
# The builtin judge
# --------------------------------------------------------------------------------------------------------------

def rule_reliability(rule: Rule) -> float:
    """Laplace-smoothed success rate of a rule, ``(n_success + 1) / (n_used + 2)``: 0.5 for an untried rule."""
    return (rule.n_success + 1.0) / (rule.n_used + 2.0)


RULE_GAIN = 1.0


def rule_weight(rule: Rule, gain: float | None = None) -> float:
    """How much a rule's points count: ``max(0, 1 + gain · (2 · reliability − 1))`` — 1 for an untried rule,
    more for one whose deductions improved rankings while exploring, down to 0 for one that never did."""
    g = RULE_GAIN if gain is None else gain
    return max(0.0, 1.0 + g * (2.0 * rule_reliability(rule) - 1.0))


def apply_rules(rules: list[Rule], evidence: dict[str, list[float]], n: int, weighted: bool = False):
    """Fire every executable rule on every hypothesis.

    Returns ``(overall_off (n,), axis_off {axis: (n,)}, fired {rule_id: [indices]})``. A rule whose measure
    is not in this group's evidence (e.g. no ground plane) is skipped, not guessed. With ``weighted`` the
    points are scaled by ``2 · reliability`` (×1 for an untried rule, up to ×2 for one that always helped,
    toward 0 for one that never did), so what exploration learnt about a rule changes how much it counts.
    A hard constraint (``condition.hard``) always counts its stated points.
    """
    overall_off = np.zeros(n)
    axis_off = {a: np.zeros(n) for a in AXES}
    fired: dict[str, list[int]] = {}
    for rule in rules:
        cond = rule.condition
        if cond is None or cond.measure not in evidence:
            continue
        ded = cond.deduction(evidence[cond.measure])
        hits = [int(i) for i in np.nonzero(ded > 0)[0]]
        if not hits:
            continue
        fired[rule.rule_id] = hits
        pts = ded * (rule_weight(rule) if weighted and not cond.hard else 1.0)
        overall_off += pts
        if cond.axis in axis_off:
            axis_off[cond.axis] += pts
    return overall_off, axis_off, fired


def hard_points(rules: list[Rule], evidence: dict[str, list[float]], n: int) -> np.ndarray:
    """(n,) points the hard constraints among ``rules`` take off each hypothesis (0 where none fires)."""
    off, _, _ = apply_rules([r for r in rules if r.hard], evidence, n)
    return off


def prototype_consensus(hits: list[PrototypeHit], temperature: float = 0.05,
                        values=None) -> tuple[float, float] | None:
    """(similarity-weighted settled overall, confidence in [0, 1]) of one hypothesis' prototypes.

    ``values``: one value per hit to weigh instead of its settled ``overall``."""
    if not hits:
        return None
    sims = np.array([h.similarity for h in hits], dtype=np.float64)
    w = np.exp((sims - sims.max()) / temperature)
    v = np.array([h.overall for h in hits]) if values is None else np.asarray(values, dtype=np.float64)
    value = float((w * v).sum() / w.sum())
    confidence = float(np.clip(sims.max(), 0.0, 1.0)) ** 4
    return value, confidence


def settled_overall(error_mm, scale_mm: float = 60.0) -> np.ndarray:
    """The score a hypothesis deserved given its true error: 10 at 0 mm, 3.7 at ``scale_mm`` (60 mm).

    One mapping for everything that settles on the truth: the graph's ``memory_write`` on labelled groups,
    exploration's ``settle="error"`` and the prototype calibration below (:func:`prototype_level`)."""
    return 10.0 * np.exp(-np.asarray(error_mm, dtype=np.float64) / scale_mm)


def prototype_level(prototypes: list[list[PrototypeHit]], temperature: float = 0.05) -> tuple[float, float] | None:
    """(mean log score the group's nearest *labelled* prototypes deserved, mean confidence), or None.

    Per hypothesis: the similarity-weighted :func:`settled_overall` of the true errors of its recalled
    prototypes that carry one (written while exploring labelled groups), its confidence = top similarity⁴;
    then the mean over the hypotheses. It says how well poses like these actually went — an absolute level
    that a group's own evidence, ranked within the group, cannot give."""
    logs, confs = [], []
    for hits in prototypes:
        known = [h for h in hits if h.error_mm is not None]
        cons = prototype_consensus(known, temperature, values=settled_overall([h.error_mm for h in known]))
        if cons is None:
            continue
        logs.append(math.log(max(cons[0], 1e-3)))
        confs.append(cons[1])
    if not logs:
        return None
    return float(np.mean(logs)), float(np.mean(confs))


def calibrate_level(log_overall: np.ndarray, level: tuple[float, float] | None,
                    share: float) -> tuple[np.ndarray, float]:
    """Move a group's mean log score ``share · confidence`` of the way to the prototypes' level.

    One shift for every hypothesis, capped so that no score passes 10 (clipping would tie the best ones):
    the ranking within the group is exactly kept; what changes is that a score means the same in an easy
    and a hard group. Returns (calibrated log scores, the shift)."""
    if level is None or share <= 0 or len(log_overall) == 0:
        return log_overall, 0.0
    target, conf = level
    shift = share * conf * (target - float(np.mean(log_overall)))
    shift = min(shift, math.log(10.0) - float(np.max(log_overall)))
    return log_overall + shift, float(shift)


# A rule's points act multiplicatively: each point keeps exp(−POINT_DECAY) of the score. Subtracting and
# clipping at 0 would tie every badly broken hypothesis at 0 and throw their ranking away.
POINT_DECAY = 0.03
# One point at weight 1, out of a 10 (≈ 0.3): a deduction smaller than that is too small to hold a critique to.
ONE_POINT_OF_TEN = 10.0 * (1.0 - math.exp(-POINT_DECAY))


def of_ten(rule: Rule, points) -> np.ndarray:
    """A rule's points as what the built-in judge takes off a perfect 10 for them: ``10 · (1 − exp(−POINT_DECAY ·
    points · weight))`` (weight: :func:`rule_weight`, 1 for a hard constraint).

    Why: rule points are on the rule book's own scale (each point keeps exp(−0.03) of the score, as the built-in
    judge applies them), while the VLM judge is asked to start at 10 and deduct. Shown a starter rule's raw "take off
    8 points", a VLM following the prompt took 8 of 10 where the built-in judge takes 2.1; the starter rules firing on
    one hypothesis sum to 7–29 points, which floored most of a group at 0 (tied, so no advantage between them). The
    paper's deductions are of 100 (3–5 points for a flaw), close to these amounts, not 10 times them."""
    weight = 1.0 if rule.hard else rule_weight(rule)
    return 10.0 * (1.0 - np.exp(-POINT_DECAY * np.asarray(points, dtype=np.float64) * weight))


def rules_of_ten(rules: list[Rule], evidence: dict[str, list[float]], n: int) -> np.ndarray:
    """(n,) what all the rules that hold take off a perfect 10 together, as the built-in judge applies them: they
    compound (each keeps its share of what is left), ``10 · (1 − exp(−POINT_DECAY · Σ weighted points))``. A VLM
    adding up each rule's :func:`of_ten` amount passed 10 on a hypothesis many rules held for (tying it at 0),
    where the compounded amount stays under 10."""
    off, _, _ = apply_rules(rules, evidence, n, weighted=True)
    return 10.0 * (1.0 - np.exp(-POINT_DECAY * off))
# Weight of the generic evidence score (mean within-group rank of the measures, in [0, 1]) in log-score
# units; one rule point is POINT_DECAY of the same units, so ten points outweigh the whole generic score.
GENERIC_WEIGHT = 0.3
# How strongly a prototype consensus pulls: ``overall`` is multiplied by ((value + 0.1) / 10.1) ** β with
# β = PROTO_GAIN · proto_weight · confidence (log-space blend: it reorders, it does not flatten).
PROTO_GAIN = 0.3
# Share of the way a group's mean log score moves to its labelled prototypes' level (:func:`calibrate_level`),
# applied after the memory's score calibration. Chosen on held-out *train* groups
# (`python benchmarks/prototype_level.py [--warmup-groups 64]`): point-wise Pearson for shares
# 0 / 0.3 / 0.5 / 0.7 / 1.0 is 0.579 / 0.595 / 0.595 / 0.582 / 0.518 with 200 explored groups and
# 0.582 / 0.602 / 0.594 / 0.563 / 0.471 with 64: 0.3 is best with 64 and ties the best with 200 (before the score
# calibration existed, 0.5–0.7 were best: the level was then also making up for the raw scale being off). After
# the revise-loop fix, with 200: 0.561 / 0.584 / 0.588 / 0.577 / 0.514 on train (0.5 ahead by 0.004), 0.706 /
# 0.711 / 0.697 / 0.657 / 0.521 on test (reported only); 0.3 kept.
PROTO_LEVEL = 0.3


def _mean_rank(v: np.ndarray) -> np.ndarray:
    """0-based ranks, ties sharing their mean rank (as scipy's ``rankdata`` − 1)."""
    less = (v[None, :] < v[:, None]).sum(1)
    equal = (v[None, :] == v[:, None]).sum(1)
    return less + 0.5 * (equal - 1.0)


def generic_badness(evidence: dict[str, list[float]], n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The judge's knowledge-free evidence score: per measure, each hypothesis' within-group rank on the
    worse side (0 = best of the group, 1 = worst; ties share their mean rank), averaged over the measures
    with equal weights — overall and per axis.

    On the per-axis scores a measure on which the whole group ties counts 0 (nobody is worse than anybody):
    a group with no joint-limit, hyperextension or penetration at all reads 10 on physical feasibility rather
    than the 8.6 of a shared mean rank. ``overall`` keeps the mean rank — for it a tie is one constant shift
    of the group, which ranks nothing differently, and the memory's score calibration was fitted on it.

    It *measures* but does not know which measure matters or what value is clearly bad: that knowledge is
    what the rule memory holds (thresholds and points), so the judge without memory (``evidence_only``,
    ``no_rules``) is a generic one, and the rules are not a re-statement of its own scoring.
    """
    from hmrcritic.agent.evidence import MEASURES

    per_axis: dict[str, list[np.ndarray]] = {a: [] for a in AXES}
    for name, values in evidence.items():
        spec = MEASURES.get(name)
        if spec is None or n < 2:
            continue
        v = np.asarray(values, dtype=np.float64)
        v = v if spec.higher_is_worse else -v
        rank = _mean_rank(v) / (n - 1.0)
        per_axis[spec.axis].append((rank, rank if np.ptp(v) > 0 else np.zeros(n)))
    allm = [r for rs in per_axis.values() for r, _ in rs]
    overall = np.mean(allm, axis=0) if allm else np.zeros(n)
    axes = {a: (np.mean([r for _, r in rs], axis=0) if rs else np.zeros(n)) for a, rs in per_axis.items()}
    return overall, axes


def dominance_measures(rules: list[Rule], fired: dict[str, list[int]]) -> set[str]:
    """The measures :func:`dominance` compares: those the fired rules with points read (none: every measure)."""
    return {r.condition.measure for r in rules
            if r.condition is not None and r.rule_id in fired and r.condition.points > 0}


def dominance(rules: list[Rule], evidence: dict[str, list[float]], n: int) -> np.ndarray | None:
    """(n, n) bool, ``[i, j]``: hypothesis j dominates i — no worse on every measure a fired rule reads (every
    measure when no rule fires: what the rule memory says matters for this group) and better on one. None
    without any known measure. What the reflect node's contradiction check cites and the revise step repairs.

    Pareto dominance over the raw measures needs no weights: it is the one ordering that every weighting of the
    evidence agrees with, so a critique that breaks it (whatever rules and prototypes moved it) is wrong by the
    evidence itself. Measured on train groups, fixing these contradictions raises the rank agreement a little on
    top of rules and prototypes.
    """
    from hmrcritic.agent.evidence import MEASURES

    _, _, fired = apply_rules(rules, evidence, n)
    read = dominance_measures(rules, fired)
    rows = [np.asarray(v, dtype=np.float64) * (1.0 if MEASURES[k].higher_is_worse else -1.0)
            for k, v in evidence.items() if k in MEASURES and len(v) == n and (not read or k in read)]
    if not rows:
        return None
    worse = np.stack(rows)  # (M, n), higher is worse
    return (worse[:, :, None] >= worse[:, None, :]).all(0) & (worse[:, :, None] > worse[:, None, :]).any(0)


def _check_evidence(ctx: JudgeContext) -> None:
    """Refuse evidence the judge would misread, with a JudgeError naming it (scores of valid evidence unchanged).

    Why: a NaN compares as neither less nor equal, so :func:`_mean_rank` gave it rank −0.5 — better than the best
    of the group — and the hypothesis was scored on it (±inf ranks as the extreme it is, and is kept). A list with
    another number of values than hypotheses was broadcast or failed deep in numpy (an IndexError in the
    rationale). The graph's evidence (``compute_evidence``) is always finite and N long; this guards contexts
    built by hand."""
    n = ctx.num_hypotheses
    for name, values in ctx.evidence.items():
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (n,):
            raise JudgeError(f"group {ctx.group_id}: evidence {name} has {v.size} value(s) for {n} hypotheses")
        if np.isnan(v).any():  # ±inf ranks and fires as the worst/best value it is: kept
            raise JudgeError(f"group {ctx.group_id}: evidence {name} is NaN for hypotheses "
                             f"{np.flatnonzero(np.isnan(v)).tolist()[:8]}")


class BuiltinJudge:
    """Deterministic, offline judge: scores from measured evidence, retrieved rules and prototypes.

    1. Generic evidence (:func:`generic_badness`): the mean within-group rank of every measure, equal
       weights — ``overall = 10 · exp(−0.3 · rank_mean)`` (each axis from its own measures). This is all
       the judge knows without memory.
    2. Rules (semantic memory) carry the knowledge of which measures matter and how much: every retrieved
       rule whose executable condition fires takes its points off, as a factor ``exp(−0.03 · points ·
       weight)`` on ``overall`` and its axis (weight = 1 for an untried rule, up to 2 for one whose deductions
       improved rankings while warming up/exploring, toward 0 for one that never did).
    3. Prototypes (episodic memory), two ways:
       a. per hypothesis, the similarity-weighted settled ``overall`` of its nearest past poses multiplies
          ``overall`` by ``((value + 0.1) / 10.1) ** β``, ``β = 0.3 · proto_weight · confidence``
          (confidence = top similarity⁴) — a small nudge within the group;
       then, when the memory holds a score calibration fitted for its rules (``ctx.calibration``, fitted by
       exploration: :mod:`hmrcritic.agent.calibration`), ``log overall`` is mapped by it onto the true-error
       scale — an increasing map, so rankings do not change;
       b. per group, the level (:func:`calibrate_level`): the mean log score moves ``proto_level`` (0.3) ·
          confidence of the way to what the labelled prototypes of its hypotheses truly deserved
          (:func:`settled_overall` of their recorded errors). This is the paper's "calibration examples"
          made executable: it keeps every ranking and makes scores comparable across groups (point-wise
          Pearson), which evidence ranked within a group cannot do.
    4. Revision (``ctx.issues`` from the reflect node): starts from the previous critique and fixes each
       issue — recompute invalid scores, apply a fired rule that was not applied, and swap the scores of a
       hypothesis ranked above one that dominates it on the measures the fired rules read, move a score
       halfway to what its near-identical poses in the group imply (``neighbours``), and, with
       ``revise_prototypes``, toward a strongly similar prototype consensus. Every change is written into
       the summary.

    Beyond the paper: the paper's critic is a VLM; this judge makes the whole loop run offline and gives
    the memories something executable to act on (PAPER.md §6). Constants were tuned on train groups only.
    """

    name = "builtin"

    def __init__(self, proto_weight: float = 0.3, temperature: float = 0.05, point_decay: float = POINT_DECAY,
                 revise_prototypes: bool = False, generic_weight: float = GENERIC_WEIGHT,
                 proto_level: float = PROTO_LEVEL, **_: object):
        self.proto_weight = float(proto_weight)
        self.proto_level = float(proto_level)
        self.revise_prototypes = bool(revise_prototypes)
        self.temperature = float(temperature)
        self.point_decay = float(point_decay)
        self.generic_weight = float(generic_weight)

    def __repr__(self) -> str:
        return f"BuiltinJudge(proto_weight={self.proto_weight}, proto_level={self.proto_level})"

    # -- first critique ---------------------------------------------------------------------------------
    def generic_evidence(self, ctx: JudgeContext) -> dict[str, list[float]]:
        """The measures the knowledge-free evidence score reads (all of them). Rules still read every measure;
        a subclass that hides one here is a judge that can only learn about that measure from its memory."""
        return ctx.evidence

    def critique(self, ctx: JudgeContext) -> GroupCritique:
        _check_evidence(ctx)
        if ctx.round > 0 and ctx.previous is not None and ctx.issues:
            return self.revise(ctx)
        n = ctx.num_hypotheses
        g_all, g_axis = generic_badness(self.generic_evidence(ctx), n)
        overall_off, axis_off, fired = apply_rules(ctx.rules, ctx.evidence, n, weighted=True)
        gw = self.generic_weight
        s = {a: 10.0 * np.exp(-gw * g_axis[a] - self.point_decay * axis_off[a]) for a in AXES}
        log_overall = np.log(10.0) - gw * g_all - self.point_decay * overall_off
        proto_note: list[str] = [""] * n
        for i in range(min(n, len(ctx.prototypes))):
            cons = prototype_consensus(ctx.prototypes[i], self.temperature)
            if cons is None:
                continue
            value, conf = cons
            beta = PROTO_GAIN * self.proto_weight * conf
            log_overall[i] += beta * math.log((max(value, 0.0) + 0.1) / 10.1)
            proto_note[i] = f"similar past poses settled at {value:.1f} (weight {beta:.2f})"
        # onto the true-error scale the explored rule set was fitted for (after the nudge, whose strength was
        # chosen in the judge's own units; before the level, which is on the true-error scale)
        if ctx.calibration is not None:
            log_overall = ctx.calibration.apply(log_overall)
        log_overall, shift = calibrate_level(log_overall, prototype_level(ctx.prototypes[:n], self.temperature),
                                             self.proto_level)
        overall = np.exp(log_overall)
        scores = []
        for i in range(n):
            rules_i = [rid for rid, idx in fired.items() if i in idx]
            scores.append(HypothesisScore(
                index=i,
                motion_structure=float(s["motion_structure"][i]),
                physical_feasibility=float(s["physical_feasibility"][i]),
                image_alignment=float(s["image_alignment"][i]),
                overall=float(np.clip(overall[i], 0, 10)),
                rationale=self._rationale(ctx, i, rules_i, proto_note[i]),
            ))
        order = sorted(range(n), key=lambda i: -scores[i].overall)
        summary = (f"best h{order[0]} ({scores[order[0]].overall:.1f}), worst h{order[-1]} "
                   f"({scores[order[-1]].overall:.1f}); {len(fired)} rule(s) fired")
        if ctx.calibration is not None:
            summary += f"; scale calibrated (×s^{ctx.calibration.slope:.2f})"
        if shift:
            summary += f"; level calibrated ×{math.exp(shift):.2f} to how similar past poses truly went"
        return GroupCritique(scores=scores, summary=summary, rules_applied=sorted(fired))

    def _rationale(self, ctx: JudgeContext, i: int, rules_i: list[str], proto_note: str) -> str:
        from hmrcritic.agent.evidence import MEASURES, badness

        row = ctx.evidence_row(i)
        worst = sorted(((float(badness(k, [v])[0]), k, v) for k, v in row.items() if k in MEASURES),
                       reverse=True)[:2]
        parts = [f"{k}={v:.3g} {MEASURES[k].unit}" for b, k, v in worst if b > 0.05]
        text = ("worst evidence: " + ", ".join(parts)) if parts else "no measure is off"
        if rules_i:
            text += "; rules fired: " + ", ".join(rules_i)
        if proto_note:
            text += "; " + proto_note
        return text + "."

    # -- revision ---------------------------------------------------------------------------------------------
    def revise(self, ctx: JudgeContext) -> GroupCritique:
        """Fix the issues the reflect node raised, starting from the previous critique."""
        n = ctx.num_hypotheses
        if any(issue.kind == "invalid" for issue in ctx.issues):
            fresh = self.critique(ctx.model_copy(update={"round": 0, "issues": [], "previous": None}))
            fresh.summary = "revised: recomputed invalid critique; " + fresh.summary
            return fresh
        prev = {s.index: s.model_copy() for s in ctx.previous.scores}
        overall = np.array([prev[i].overall for i in range(n)], dtype=np.float64)
        applied = list(ctx.previous.rules_applied)
        changes: list[str] = []
        rules = {r.rule_id: r for r in ctx.rules}
        # a point is worth ``slope`` times less on a calibrated scale
        decay = self.point_decay * (ctx.calibration.slope if ctx.calibration is not None else 1.0)
        for issue in ctx.issues:
            if issue.kind == "rule" and issue.rule_id in rules and rules[issue.rule_id].condition is not None:
                cond = rules[issue.rule_id].condition
                ded = cond.deduction(ctx.evidence[cond.measure]) if cond.measure in ctx.evidence else \
                    np.full(n, cond.points)
                for i in issue.indices:
                    overall[i] = overall[i] * math.exp(-decay * float(ded[i]))
                if issue.rule_id not in applied:
                    applied.append(issue.rule_id)
                changes.append(f"applied {issue.rule_id} to h{','.join(map(str, issue.indices))}")
        for issue in ctx.issues:
            # This judge already blended the prototypes into its first critique; pulling further toward them
            # would count the same evidence twice (measured: it lowers the rank agreement). The check stays
            # in the reflect node for judges that may ignore prototypes (a VLM).
            if issue.kind == "prototype" and issue.target is not None and self.revise_prototypes:
                for i in issue.indices:
                    before = overall[i]
                    overall[i] = 0.5 * (overall[i] + issue.target)
                    changes.append(f"h{i} {before:.1f}→{overall[i]:.1f} toward similar past poses")
        # near-identical poses scored apart: move each flagged score halfway (in log units) to what its
        # pose-neighbours imply — all at once, from the scores the check saw (see nodes.neighbour_targets for
        # why it is a consistency check; its held-out effect is evaluate-critic's `no_revise` row)
        moved = []
        for issue in ctx.issues:
            if issue.kind == "neighbours" and issue.target is not None and issue.target > 0:
                for i in issue.indices:
                    overall[i] = math.sqrt(max(overall[i], 1e-6) * issue.target)
                    moved.append(i)
        if moved:
            changes.append(f"moved h{','.join(map(str, moved))} halfway to their pose-neighbours' scores")
        for issue in ctx.issues:
            if issue.kind == "contradiction" and len(issue.indices) == 2:
                hi, better = issue.indices
                if overall[hi] >= overall[better]:
                    # swap the two scores: the pair is put in the order the evidence demands while every
                    # other hypothesis keeps its place (pushing the dominated one just below the other
                    # can drop it past many; measured on train groups, the swap ranks better)
                    before = overall[hi]
                    overall[hi], overall[better] = overall[better], overall[hi]
                    if overall[hi] >= overall[better]:
                        overall[hi] = overall[better] * 0.995
                    changes.append(f"h{hi} {before:.1f}→{overall[hi]:.1f} swapped below h{better} (dominated)")
        if any(issue.kind == "contradiction" for issue in ctx.issues):
            # a swap can drop a hypothesis below one it dominates itself (h1 ≻ h0 ≻ h2 ranked h0, h2, h1:
            # swapping h0 and h1 puts h2 above h0): keep swapping pairs the same evidence orders until none is
            # inverted. Each such swap removes more inversions than it makes (dominance is transitive), so it ends.
            dominated = dominance(ctx.rules, ctx.evidence, ctx.num_hypotheses)
            while dominated is not None:
                inverted = np.argwhere(dominated & (overall[:, None] > overall[None, :]))
                if not len(inverted):
                    break
                hi, better = (int(k) for k in inverted[0])
                before = overall[hi]
                overall[hi], overall[better] = overall[better], overall[hi]
                changes.append(f"h{hi} {before:.1f}→{overall[hi]:.1f} swapped below h{better} (dominated)")
        scores = []
        for i in range(n):
            sc = prev[i]
            sc.overall = float(np.clip(overall[i], 0, 10))
            scores.append(sc)
        # the ranking now first: the previous summary behind it names the best and worst *before* this revision,
        # and a report or trace that showed it alone contradicted the scores beside it
        order = sorted(range(n), key=lambda i: -scores[i].overall)
        now = (f"now best h{order[0]} ({scores[order[0]].overall:.1f}), worst h{order[-1]} "
               f"({scores[order[-1]].overall:.1f})")
        summary = ("revised: " + ("; ".join(changes) if changes else "no change") + f"; {now} | before: "
                   + ctx.previous.summary)
        return GroupCritique(scores=scores, summary=summary[:2000], rules_applied=applied)

    # -- rule mining -----------------------------------------------------------------------------------------
    def propose_rules(self, ctx: JudgeContext, mistakes: list[Mistake]) -> RuleProposals:
        """Mine up to two threshold rules from over-rated hypotheses.

        For each measure, compare the over-rated hypotheses (critic rank much better than true rank) with the
        rest of the group; the measure that separates them best (largest gap in units of its scale) becomes
        a rule with its threshold halfway between the two groups' medians. Deterministic; the later
        exploration step keeps or retires it by its success rate.
        """
        from hmrcritic.agent.evidence import MEASURES, badness

        over = [m for m in mistakes if m.true_rank - m.critic_rank >= max(2, ctx.num_hypotheses // 4)]
        if not over or not ctx.evidence:
            return RuleProposals()
        over_idx = {m.index for m in over}
        rest = [i for i in range(ctx.num_hypotheses) if i not in over_idx]
        if not rest:
            return RuleProposals()
        gaps = []
        for name, values in ctx.evidence.items():
            if name not in MEASURES:
                continue
            v = np.asarray(values, dtype=np.float64)
            b = badness(name, v)
            gap = float(np.median(b[list(over_idx)]) - np.median(b[rest]))
            if gap > 0.25 and math.isfinite(gap):
                gaps.append((gap, name, float(np.median(v[list(over_idx)])), float(np.median(v[rest]))))
        gaps.sort(reverse=True)
        rules = []
        for gap, name, v_over, v_rest in gaps[:2]:
            spec = MEASURES[name]
            thr = round(0.5 * (v_over + v_rest), 4)
            cmp = ">" if spec.higher_is_worse else "<"
            pts = round(float(np.clip(2.0 * gap, 1.0, 4.0)), 1)
            tag = {"alignment": "alignment", "joint_limits": "joint_limits"}.get(spec.tag, spec.tag)
            rules.append(ProposedRule(
                text=f"{name} {cmp} {thr:g} {spec.unit} ({spec.description}) → take off {pts:g} points.",
                tags=[tag], measure=name, comparator=cmp, threshold=thr, points=pts, axis=spec.axis))
        return RuleProposals(rules=rules)


def judge_name(judge: str | Judge) -> str:
    """The name a judge is recorded under (config, exported records, a memory's calibration): the string
    itself, or the object's ``name`` ("custom" without one)."""
    return judge if isinstance(judge, str) else getattr(judge, "name", "custom")


def make_judge(name: str | Judge = "builtin", **kwargs) -> Judge:
    """A judge by name: ``builtin`` (offline) or ``vlm`` (OpenAI-compatible endpoint, imported lazily).

    An object that already implements :class:`Judge` is returned as is (tests, custom judges).
    """
    if not isinstance(name, str):
        if isinstance(name, Judge):
            return name
        raise TypeError(f"not a judge: {name!r}")
    key = name.strip().lower()
    if key == "builtin":
        return BuiltinJudge(**kwargs)
    if key == "vlm":
        from hmrcritic.agent.vlm import VLMJudge

        return VLMJudge(**kwargs)
    from hmrcritic.errors import InputError

    raise InputError(f"judge {name!r} is unknown; choose 'builtin' or 'vlm'")
