"""Records stored in the dual memory (Chroma metadata holds them flattened; these are the typed views)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Comparator = Literal[">", ">=", "<", "<="]


# A graded rule takes off at most this many times its points (one outlier measure cannot zero a score).
GRADED_CAP = 3.0


class RuleCondition(BaseModel):
    """An executable condition on an evidence measure: fires when ``measure comparator threshold``.

    Numbers must be finite: Chroma keeps the condition as JSON, where NaN/inf are written as ``null``, so a
    non-finite threshold or points would be stored and then fail to load — every later read of the memory's
    rules would raise. (An inf ``per`` would silently come back as None, a step rule.)"""

    model_config = ConfigDict(allow_inf_nan=False)

    measure: str
    comparator: Comparator
    threshold: float
    points: float = Field(..., description="points (0-10) on the rule book's scale, taken off when the condition "
                                           "fires: each keeps exp(-0.03 · the rule's weight) of the score "
                                           "(judges.POINT_DECAY, judges.rule_weight; 1 for a hard rule)")
    axis: str | None = Field(None, description="axis that loses the points besides overall; None = overall")
    per: float | None = Field(
        None, gt=0, description="graded rule: take off `points` for every `per` units beyond the threshold "
                                f"(at most {GRADED_CAP:g}× points); None = a step rule, `points` once")
    hard: bool = Field(
        False, description="a hard constraint (the pose is anatomically impossible when it fires): its points "
                           "are fixed — not reweighed by how often it improved a ranking, not smoothed away by "
                           "the neighbour check, never retired — because ranking by 3D error cannot judge "
                           "feasibility")

    def fires(self, value: float) -> bool:
        return {
            ">": value > self.threshold,
            ">=": value >= self.threshold,
            "<": value < self.threshold,
            "<=": value <= self.threshold,
        }[self.comparator]

    def deduction(self, values) -> np.ndarray:
        """Points taken off each value, ``(n,)`` float64: 0 where the condition does not fire; ``points`` for
        a step rule; ``points · min(cap, distance beyond the threshold / per)`` for a graded one.

        Why graded rules: a step rule only splits a group in two, so it cannot say that 150 mm from the
        group's consensus is worse than 90 mm. A graded rule carries a measure's *weight* — the knowledge of
        how much a measure matters, which exploration can learn and an equal-weight judge lacks."""
        v = np.asarray(values, dtype=np.float64)
        t = self.threshold
        fired = {">": v > t, ">=": v >= t, "<": v < t, "<=": v <= t}[self.comparator]
        if self.per is None:
            return np.where(fired, self.points, 0.0)
        beyond = np.abs(v - t) / self.per
        return np.where(fired, self.points * np.clip(beyond, 0.0, GRADED_CAP), 0.0)


class Rule(BaseModel):
    rule_id: str
    text: str
    tags: list[str] = Field(default_factory=list)
    n_used: int = 0
    n_success: int = 0
    origin: Literal["starter", "mined", "user"] = "starter"
    round_created: int = 0
    condition: RuleCondition | None = None
    retired: bool = False

    @property
    def success_rate(self) -> float:
        return self.n_success / self.n_used if self.n_used else 0.0

    @property
    def hard(self) -> bool:
        """Whether the rule is a hard constraint (see :attr:`RuleCondition.hard`)."""
        return self.condition is not None and self.condition.hard


class Prototype(BaseModel):
    """A past scored hypothesis: its pose embedding, settled scores and rationale."""

    proto_id: str
    embedding: list[float]
    overall: float
    motion_structure: float
    physical_feasibility: float
    image_alignment: float
    rationale: str = ""
    tags: list[str] = Field(default_factory=list)
    source: str = Field("", description="where it came from, e.g. 'train/000123#h4' (never an eval group)")
    error_mm: float | None = Field(None, description="true PA-MPJPE when it was written while exploring")


class ScoreCalibration(BaseModel):
    """How a judge's raw ``overall`` maps onto the scale of true error, learned while exploring.

    Why: the builtin judge's score is ``10·exp(−points)``, and how many points an explored rule set stacks
    varies from one exploration to the next, so the same score can mean 60 mm in one memory and 120 mm in
    another. Exploration fits ``log s' = intercept + slope · log s`` (least squares) to
    ``log settled_overall(true error)`` on held-out labelled groups of its split, scored with the final rule
    set and without prototypes. The map is increasing, so no ranking (within or across groups) changes;
    what changes is that scores become comparable (point-wise Pearson). It belongs to the rule set it was
    fitted on (``rules_fingerprint``) and to the judge that produced the scores (``judge``).

    Numbers must be finite: stored as JSON, a NaN/inf would come back as ``null`` and the memory's calibration
    would be unreadable (an import would accept a record that the memory then cannot read back)."""

    model_config = ConfigDict(allow_inf_nan=False)

    judge: str = "builtin"
    slope: float = Field(..., gt=0, description="γ: log-score units of error per log-score unit of the judge")
    intercept: float
    groups: int = Field(..., ge=1, description="labelled groups the map was fitted on")
    hypotheses: int = Field(..., ge=2)
    split: str = ""
    first_group: str = Field("", description="group id of the first fitting group (the rest follow it)")
    pearson_before: float = Field(..., description="point-wise Pearson of overall with −error on the fit set")
    pearson_after: float
    rules_fingerprint: str = Field("", description="the active rule set it was fitted for")
    error_metric: Literal["pa_mpjpe", "mpjpe", "pve", "mix"] = Field(
        "pa_mpjpe", description="the true error it maps onto (exploration's --error-metric; absent from "
                                "calibrations fitted before session 29: PA-MPJPE)")

    def apply(self, log_overall):
        """Calibrated log scores (capped at log 10). Increasing in ``log_overall``."""
        x = np.asarray(log_overall, dtype=np.float64)
        return np.minimum(self.intercept + self.slope * x, np.log(10.0))
