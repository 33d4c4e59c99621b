"""Keeping an explored rule memory tidy: merge near-duplicate rules, retire rules that keep failing.

Both are *planned* as pure functions over a list of rules (and, for text similarity, their vectors) and return
the rules to write back with absolute statistics. Exploration writes the plan inside the batch's locked write
and records it first, so re-applying a plan after a crash changes nothing (idempotent) — no use is counted
twice. Nothing is ever deleted: merged and retired rules get ``retired = True`` and keep their history, so
the memory version still reflects them and ``hmrcritic memory rules --all`` shows them.

Near-duplicates (the issue's two tests):
  * the same executable condition up to the threshold: same measure and comparator, both step or both
    graded, with thresholds within ``rel_tol`` of each other (relative to the larger threshold, at least 5 %
    of the measure's scale); or
  * text-embedding cosine above ``text_threshold`` (0.9) where the conditions do not contradict (both
    absent, one absent, or the same measure and comparator) — the starter set's mild/severe pairs read alike
    but differ in threshold by far more than ``rel_tol`` and stay apart.
The kept rule of a cluster is the most used (then the oldest, then the lowest id); it absorbs the merged
rule's uses, successes and tags. Retirement: success rate below ``min_rate`` after at least ``min_uses``
uses. Starter rules can be retired too (the paper keeps or drops rules by their record, whoever wrote them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hmrcritic.memory.schema import Rule
from hmrcritic.memory.starter_rules import normalise_tags

TEXT_THRESHOLD = 0.9
REL_TOL = 0.1
RETIRE_MIN_USES = 8
RETIRE_MIN_RATE = 0.3


@dataclass
class MaintenancePlan:
    merged: list[tuple[str, str]] = field(default_factory=list)  # (kept_id, merged_id)
    retired: list[str] = field(default_factory=list)  # ids retired for failing (not merges)
    updates: dict[str, Rule] = field(default_factory=dict)  # id -> rule to write back (absolute)

    def as_dict(self) -> dict:
        return {"merged": [list(p) for p in self.merged], "retired": list(self.retired)}


def _scale(measure: str) -> float:
    try:
        from hmrcritic.agent.evidence import MEASURES

        return MEASURES[measure].scale if measure in MEASURES else 1.0
    except Exception:  # memory must not depend on the agent package being importable
        return 1.0


def same_condition(a: Rule, b: Rule, rel_tol: float = REL_TOL) -> bool:
    """Same measure and comparator, thresholds within ``rel_tol`` (see module docstring), and both step rules
    or both graded: a graded rule weighs a measure where a step rule only splits it, so neither replaces the
    other."""
    ca, cb = a.condition, b.condition
    if ca is None or cb is None or (ca.measure, ca.comparator) != (cb.measure, cb.comparator):
        return False
    if (ca.per is None) != (cb.per is None) or ca.hard != cb.hard:
        return False
    tol = rel_tol * max(abs(ca.threshold), abs(cb.threshold), 0.05 * _scale(ca.measure))
    return abs(ca.threshold - cb.threshold) <= tol


def _text_compatible(a: Rule, b: Rule) -> bool:
    ca, cb = a.condition, b.condition
    # a hard constraint never merges with a rule that is not one: a condition-less (prose) rule used more, whose
    # text read like it, absorbed it — the hard rule retired, its condition moved to a soft rule (session 31)
    if a.hard != b.hard:
        return False
    if ca is None or cb is None:
        return True
    return same_condition(a, b, rel_tol=REL_TOL)


def plan_merges(rules: list[Rule], embeddings: dict[str, np.ndarray] | None = None,
                text_threshold: float = TEXT_THRESHOLD, rel_tol: float = REL_TOL) -> MaintenancePlan:
    """Clusters of near-duplicate active rules; the kept rule absorbs the others' statistics and tags."""
    plan = MaintenancePlan()
    active = sorted((r.model_copy(deep=True) for r in rules if not r.retired),
                    key=lambda r: (-r.n_used, r.round_created, r.rule_id))
    if len(active) < 2:
        return plan
    sims = None
    if embeddings and all(r.rule_id in embeddings for r in active):
        mat = np.stack([np.asarray(embeddings[r.rule_id], dtype=np.float64) for r in active])
        mat = mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
        sims = mat @ mat.T
    absorbed: set[int] = set()
    for i, keep in enumerate(active):
        if i in absorbed:
            continue
        for j in range(i + 1, len(active)):
            if j in absorbed:
                continue
            other = active[j]
            dup = same_condition(keep, other, rel_tol) or (
                sims is not None and sims[i, j] > text_threshold and _text_compatible(keep, other))
            if not dup:
                continue
            absorbed.add(j)
            keep.n_used += other.n_used
            keep.n_success += other.n_success
            keep.tags = normalise_tags(keep.tags + other.tags)
            keep.condition = keep.condition or other.condition
            other.retired = True
            plan.merged.append((keep.rule_id, other.rule_id))
            plan.updates[keep.rule_id] = keep
            plan.updates[other.rule_id] = other
    return plan


def plan_retirements(rules: list[Rule], min_uses: int = RETIRE_MIN_USES,
                     min_rate: float = RETIRE_MIN_RATE) -> MaintenancePlan:
    """Active rules whose success rate stays below ``min_rate`` after ``min_uses`` uses — except hard
    constraints: their success is counted against the 3D error ranking, which cannot judge feasibility."""
    plan = MaintenancePlan()
    for r in rules:
        if not r.retired and not r.hard and r.n_used >= min_uses and r.success_rate < min_rate:
            r2 = r.model_copy(deep=True)
            r2.retired = True
            plan.retired.append(r.rule_id)
            plan.updates[r.rule_id] = r2
    return plan


def plan_maintenance(rules: list[Rule], embeddings: dict[str, np.ndarray] | None = None, *,
                     text_threshold: float = TEXT_THRESHOLD, rel_tol: float = REL_TOL,
                     min_uses: int = RETIRE_MIN_USES, min_rate: float = RETIRE_MIN_RATE) -> MaintenancePlan:
    """Merges first (a merged rule's record joins its twin's), then retirement on the merged records."""
    merges = plan_merges(rules, embeddings, text_threshold, rel_tol)
    after = [merges.updates.get(r.rule_id, r) for r in rules]
    retire = plan_retirements(after, min_uses, min_rate)
    plan = MaintenancePlan(merged=merges.merged, retired=retire.retired,
                           updates={**merges.updates, **retire.updates})
    return plan


def maintain(memory, embeddings: bool = True, **kwargs) -> MaintenancePlan:
    """Plan and apply maintenance on a writable :class:`~hmrcritic.memory.store.MemoryStore` (one locked
    write). ``embeddings`` False skips the text-similarity test (no text model needed)."""
    with memory._write():
        rules = memory.rules.all(include_retired=True)
        emb = memory.rules.embeddings([r.rule_id for r in rules if not r.retired]) if embeddings else None
        plan = plan_maintenance(rules, emb, **kwargs)
        if plan.updates:
            memory.rules.update(list(plan.updates.values()))
    return plan
