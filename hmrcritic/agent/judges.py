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

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field

from hmrcritic.agent.schema import GroupCritique, RuleProposals
from hmrcritic.memory.schema import Rule


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
    error_mm: float = Field(..., description="true PA-MPJPE of this hypothesis")
    evidence: dict[str, float] = Field(default_factory=dict, description="its evidence row")
    note: str = ""


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
    previous: GroupCritique | None = Field(None, description="the critique being revised, if any")
    round: int = Field(0, ge=0, description="0 = first critique, k = k-th revision")

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
