"""Dual memory in Chroma: semantic rules and episodic prototypes.

Importing this package is cheap (no Chroma, no text model); the heavy parts load on first use. It exports
what a caller of :class:`MemoryStore` meets: the records it stores and returns (``calibration()`` gives a
:class:`ScoreCalibration`) and the errors it raises beyond ``hmrcritic.errors`` (read-only, unwritable).
"""

from hmrcritic.memory.embeddings import POSE_DIM, TEXT_DIM, embed_text, pose_embedding
from hmrcritic.memory.schema import Prototype, Rule, RuleCondition, ScoreCalibration
from hmrcritic.memory.starter_rules import STARTER_RULES, TAG_VOCABULARY, normalise_tags
from hmrcritic.memory.store import MemoryStore, ReadOnlyMemoryError, UnwritableMemoryError

__all__ = [
    "MemoryStore", "ReadOnlyMemoryError", "UnwritableMemoryError", "Rule", "RuleCondition", "Prototype",
    "ScoreCalibration", "STARTER_RULES",
    "TAG_VOCABULARY", "normalise_tags", "embed_text", "pose_embedding", "POSE_DIM", "TEXT_DIM",
]
