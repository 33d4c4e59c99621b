"""Records stored in the dual memory (Chroma metadata holds them flattened; these are the typed views)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Comparator = Literal[">", ">=", "<", "<="]


class RuleCondition(BaseModel):
    """An executable condition on an evidence measure: fires when ``measure comparator threshold``."""

    measure: str
    comparator: Comparator
    threshold: float
    points: float = Field(..., description="points taken off (0-10 scale) when the condition fires")
    axis: str | None = Field(None, description="axis that loses the points besides overall; None = overall")

    def fires(self, value: float) -> bool:
        return {
            ">": value > self.threshold,
            ">=": value >= self.threshold,
            "<": value < self.threshold,
            "<=": value <= self.threshold,
        }[self.comparator]


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
