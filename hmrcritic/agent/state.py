"""Graph state and the agent's settings.

State stays small and plain (ids, paths, floats, lists, dicts of JSON types): the SQLite checkpointer
serialises it after every node, and numpy values do not survive that (STACK.md). Pydantic records
(critique, rules, reflection issues) travel as their ``model_dump()``; the recalled prototype hits, N × k of
them, are packed (each distinct prototype once: :func:`pack_prototype_hits`). The arrays of a group
(hypotheses, joints, evidence, renders) live in its run folder; the state holds the folder's path.

:class:`AgentConfig` is passed to the graph as ``config["configurable"]["agent"]`` (a plain dict), so every
node reads the same settings and a run can be reproduced from its checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hmrcritic.agent.judges import PROTO_LEVEL
from hmrcritic.config import env_chroma_url, env_flag, env_number
from hmrcritic.config import memory_dir as _env_memory_dir
from hmrcritic.redact import register_url

# the most HMRCRITIC_MAX_REFLECTIONS, HMRCRITIC_RULES_K and HMRCRITIC_PROTOTYPES_K (and the fields) take
MAX_REFLECTIONS, MAX_RULES_K, MAX_PROTOTYPES_K = 100, 10_000, 1_000


def canonical_judge(name: str) -> str:
    """``VLM`` or `` builtin`` is the judge make_judge builds for it, while the judge cache, the model identity
    and thread reuse compare the name exactly: one spelling for both (an unknown name stays as given, for
    make_judge's error)."""
    key = name.strip().lower()
    return key if key in ("builtin", "vlm") else name


class AgentConfig(BaseModel):
    """Settings of one agent run. Every field but ``settle_with_labels`` and
    ``success_tau`` (learning settings, not run settings) has an ``HMRCRITIC_*`` environment fallback."""

    # the ranges below hold for values from the environment too (pydantic does not check defaults otherwise)
    model_config = ConfigDict(validate_default=True, allow_inf_nan=False)

    judge: str = Field(default_factory=lambda: (os.environ.get("HMRCRITIC_JUDGE") or "").strip() or "builtin")
    # upper bounds far above any use (defaults 2, 16, 5): unbounded, ``HMRCRITIC_MAX_REFLECTIONS=99999999999999999999``
    # passed doctor and became a LangGraph recursion limit of that size (a runaway loop never stopped), and a huge k
    # asked Chroma for that many rules or prototypes per hypothesis
    max_reflections: int = Field(default_factory=lambda: env_number(
        "HMRCRITIC_MAX_REFLECTIONS", 2, int, maximum=MAX_REFLECTIONS), ge=0, le=MAX_REFLECTIONS)
    rules_k: int = Field(default_factory=lambda: env_number("HMRCRITIC_RULES_K", 16, int, maximum=MAX_RULES_K),
                         ge=0, le=MAX_RULES_K)
    prototypes_k: int = Field(default_factory=lambda: env_number(
        "HMRCRITIC_PROTOTYPES_K", 5, int, maximum=MAX_PROTOTYPES_K), ge=0, le=MAX_PROTOTYPES_K)
    ucb_c: float = Field(default_factory=lambda: env_number("HMRCRITIC_UCB_C", 1.0, float), ge=0)
    learn: bool = Field(default_factory=lambda: env_flag("HMRCRITIC_LEARN", False))
    render: bool = Field(default_factory=lambda: env_flag("HMRCRITIC_RENDER", True))
    # through config (as the CLI): a trailing \r from a Windows env file dropped, a dangling link named
    memory_dir: str | None = Field(
        default_factory=lambda: str(_env_memory_dir()) if os.environ.get("HMRCRITIC_MEMORY", "").strip() else None)
    chroma_url: str | None = Field(default_factory=env_chroma_url)
    use_memory: bool = Field(default_factory=lambda: env_flag("HMRCRITIC_USE_MEMORY", True))
    use_rules: bool = Field(default_factory=lambda: env_flag("HMRCRITIC_USE_RULES", True))
    use_prototypes: bool = Field(default_factory=lambda: env_flag("HMRCRITIC_USE_PROTOTYPES", True))
    proto_weight: float = Field(default_factory=lambda: env_number("HMRCRITIC_PROTO_WEIGHT", 0.3, float), ge=0, le=1)
    proto_level: float = Field(
        default_factory=lambda: env_number("HMRCRITIC_PROTO_LEVEL", PROTO_LEVEL, float), ge=0, le=1,
        description="builtin judge: share of the way a group's score level moves to its labelled prototypes'",
    )
    use_calibration: bool = Field(
        default_factory=lambda: env_flag("HMRCRITIC_USE_CALIBRATION", True),
        description="apply the memory's score calibration (fitted by exploration; it belongs to the rules)",
    )
    settle_with_labels: bool = Field(
        True, description="when learning on labelled groups, prototypes keep scores settled on the true error"
    )
    success_tau: float = Field(0.5, description="Spearman ρ a labelled group must reach for its rules to succeed")

    @field_validator("judge")
    @classmethod
    def _canonical_judge(cls, v: str) -> str:
        return canonical_judge(v)

    @field_validator("chroma_url")
    @classmethod
    def _mask_chroma_credentials(cls, v: str | None) -> str | None:
        """A Chroma address may carry ``user:password@`` (also without a scheme, which the scrubber cannot
        recognise alone): registered here, every log, trace and export of this process masks it."""
        register_url(v)
        return v

    @classmethod
    def from_config(cls, config: dict | None) -> AgentConfig:
        """The settings inside a LangGraph ``RunnableConfig`` (defaults + env when absent)."""
        raw = ((config or {}).get("configurable") or {}).get("agent")
        if isinstance(raw, AgentConfig):
            return raw
        return cls.model_validate(raw or {})


class AgentState(TypedDict, total=False):
    """What the checkpointer stores per group (one thread per group)."""

    group_id: str
    run_id: str
    inputs_digest: str  # content hash of the inputs: a thread is reused only for the same inputs
    settings_digest: str  # agent settings + image/mask bytes: a finished thread is reused only for equal ones
    judge: str  # the judge's name: a finished thread is reused only by the same judge
    judge_model: str | None  # the VLM behind it (model @ endpoint), None for the builtin judge
    run_dir: str  # per-group folder: inputs.npz, bodies.npz, evidence.npz, renders, critique.json
    num_hypotheses: int
    image_path: str | None
    has_labels: bool  # the inputs carry true per-hypothesis errors (exploration / warm-up only)
    renders: dict[str, str]  # name → png path
    evidence: dict[str, list[float]]
    tags: list[str]
    rules: list[dict[str, Any]]  # Rule dumps
    # recalled prototypes, packed (:func:`pack_prototype_hits`); read with :func:`prototype_hits`
    prototype_recall: dict[str, Any]
    prototypes: list[list[dict[str, Any]]]  # older checkpoints: per hypothesis, PrototypeHit dumps
    memory_version: str
    calibration: dict[str, Any] | None  # ScoreCalibration dump, when the memory has one for this judge
    critique: dict[str, Any]  # GroupCritique dump
    round: int  # 0 = first critique; k = k-th revision
    issues: list[dict[str, Any]]  # ReflectionIssue dumps raised by the last reflect
    feedback: str
    reflections: list[dict[str, Any]]  # one record per reflect: round, issues, changes
    memory_written: dict[str, Any]
    done: bool


def pack_prototype_hits(rows: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-hypothesis PrototypeHit dumps as the state keeps them: each distinct prototype once
    (``prototypes``, its dump without the similarity) and per hypothesis ``[index, similarity]`` pairs in recall
    order (``hits``).

    The hypotheses of a group mostly recall the same few prototypes, and the checkpointer stores the whole
    state after every node: the dumps themselves, rationales and all, made a checkpoint of a group of 256
    hypotheses 0.7 MB (2.7 MB at 1024), written after each of the five to nine nodes. A prototype is one
    record when all of its fields are equal (one id whose record differs is kept twice, not merged)."""
    records: list[dict[str, Any]] = []
    first: dict[str, int] = {}  # proto_id → index of its first record
    hits = []
    for row in rows:
        packed = []
        for hit in row:
            rec = {k: v for k, v in hit.items() if k != "similarity"}
            j = first.get(rec.get("proto_id"))
            if j is None or records[j] != rec:
                j = next((i for i, r in enumerate(records) if r == rec), None) if j is not None else None
            if j is None:
                j = len(records)
                records.append(rec)
                first.setdefault(rec.get("proto_id"), j)
            packed.append([j, hit["similarity"]])
        hits.append(packed)
    return {"prototypes": records, "hits": hits}


def prototype_hits(state: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The recalled prototypes of ``state`` per hypothesis, as PrototypeHit dumps in recall order (the fields in
    PrototypeHit's order, as ``model_dump`` gives them). Reads a checkpoint written before the state packed them
    (its ``prototypes``) too: such a thread resumes, and a finished one is reused, with the same hits."""
    packed = state.get("prototype_recall")
    if not packed:
        return [[dict(h) for h in row] for row in state.get("prototypes") or []]
    records = packed["prototypes"]
    return [[{"proto_id": records[j].get("proto_id"), "similarity": sim, **records[j]} for j, sim in row]
            for row in packed["hits"]]
