"""The judge's decision schema, shared by every judge (builtin and VLM) and by the graph.

Scores are in [0, 10] on three axes plus ``overall``; only ``overall`` feeds the group advantages in
alignment. A VLM must answer with :class:`GroupCritique` (json_schema structured output); the builtin judge
builds the same objects from evidence.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field, field_validator

AXES = ("motion_structure", "physical_feasibility", "image_alignment")


def finite_float(x: Any, default: float | None = None) -> float | None:
    """``x`` as a finite float, else ``default`` (None, NaN, ±inf, text that is not a number, any other object):
    how a judge's answer, a stored score or a user's number is read without a traceback (an integer of hundreds
    of digits, which ``float`` refuses with OverflowError, included)."""
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return default
    return v if math.isfinite(v) else default


class HypothesisScore(BaseModel):
    """One hypothesis of a group, judged."""

    index: int = Field(..., ge=0, description="0-based index of the hypothesis within the group")
    motion_structure: float = Field(..., ge=0, le=10, description="3D pose/motion structure plausibility")
    physical_feasibility: float = Field(..., ge=0, le=10, description="joint limits, no self-penetration")
    image_alignment: float = Field(..., ge=0, le=10, description="agreement with the image and 2D keypoints")
    overall: float = Field(..., ge=0, le=10, description="overall quality; ranks the group")
    rationale: str = Field(..., description="one or two sentences citing the evidence")

    @field_validator("rationale")
    @classmethod
    def _short(cls, v: str) -> str:
        v = " ".join(v.split())
        return v[:600]


class GroupCritique(BaseModel):
    """All hypotheses of one group, scored in one call so that the scores are comparable."""

    scores: list[HypothesisScore]
    summary: str = Field("", description="what distinguishes the best from the worst hypotheses")
    rules_applied: list[str] = Field(default_factory=list, description="ids of the memory rules applied")


class ProposedRule(BaseModel):
    """A rule the judge proposes while exploring (rule mining)."""

    text: str = Field(..., description="a point deduction a person can check, e.g. 'knee bent backwards → −3'")
    tags: list[str] = Field(default_factory=list)
    measure: str | None = Field(None, description="evidence measure name for an executable condition")
    comparator: str | None = Field(None, description="one of > >= < <=")
    threshold: float | None = None
    points: float | None = Field(None, description="points (0-10) on the rule book's scale, taken off `overall` "
                                                   "when it fires: each costs about 3% of the score, so 8 points "
                                                   "take 2.1 of a 10")
    axis: str | None = Field(None, description="axis the deduction applies to, or None for overall only")
    per: float | None = Field(None, description="graded rule: take off `points` for every `per` units of the "
                                                "measure beyond the threshold (at most 3× points); omit for a "
                                                "one-off deduction")


class RuleProposals(BaseModel):
    rules: list[ProposedRule] = Field(default_factory=list, max_length=2)
