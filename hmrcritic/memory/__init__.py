"""Dual memory in Chroma: semantic rules and episodic prototypes.

Importing this package is cheap (no Chroma, no text model); the heavy parts load on first use.
"""

from hmrcritic.memory.embeddings import POSE_DIM, TEXT_DIM, embed_text, pose_embedding
from hmrcritic.memory.schema import Prototype, Rule, RuleCondition
from hmrcritic.memory.starter_rules import STARTER_RULES, TAG_VOCABULARY, normalise_tags
from hmrcritic.memory.store import MemoryStore, ReadOnlyMemoryError

__all__ = [
    "MemoryStore", "ReadOnlyMemoryError", "Rule", "RuleCondition", "Prototype", "STARTER_RULES",
    "TAG_VOCABULARY", "normalise_tags", "embed_text", "pose_embedding", "POSE_DIM", "TEXT_DIM",
]
