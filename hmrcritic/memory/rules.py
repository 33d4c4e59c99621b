"""Semantic rule memory: rules as Chroma records, retrieved by tag overlap + success rate + UCB (PAPER.md §2).

A rule is stored as one record of the ``semantic_rules`` collection: id = ``rule_id``, document = the rule
text, vector = the text embedding of the rule (used by ``memory search``, optional text relevance and
near-duplicate merging), metadata = tags, statistics and the executable condition, flattened because Chroma
metadata values must be str/int/float/bool (tags as a comma string, the condition as a JSON string).

Retrieval scores every active rule with

    Ψ_i = |T_q ∩ T_i| + n_success_i / n_used_i + C · sqrt(ln(N_total + 1) / (n_used_i + 1))

where N_total is the total number of uses over all active rules; the ``+ 1`` inside the log keeps it
defined for a fresh memory (the paper leaves it implicit). A never-used rule has success term 0. Ties are
broken by ``rule_id`` so retrieval is deterministic. With ``query_text`` we add the cosine similarity
between the query and the rule text (an hmrcritic extension, weight ``text_weight``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from typing import TYPE_CHECKING

import numpy as np

from hmrcritic.errors import InputError, check_number, warn_caller
from hmrcritic.memory.embeddings import embed_text
from hmrcritic.memory.schema import Rule, RuleCondition
from hmrcritic.memory.starter_rules import TAG_VOCABULARY, normalise_tags

if TYPE_CHECKING:
    from hmrcritic.memory.store import MemoryStore

RULES_COLLECTION = "semantic_rules"
INT_MAX = 2**63 - 1  # the largest integer Chroma metadata holds exactly


def rule_to_metadata(rule: Rule) -> dict:
    """Flatten a rule into Chroma metadata (scalars only)."""
    return {
        "tags": ",".join(rule.tags),
        "n_used": int(rule.n_used),
        "n_success": int(rule.n_success),
        "origin": rule.origin,
        "round_created": int(rule.round_created),
        "condition": rule.condition.model_dump_json() if rule.condition is not None else "",
        "retired": bool(rule.retired),
    }


def rule_from_record(rule_id: str, text: str, meta: dict) -> Rule:
    cond = meta.get("condition") or ""
    return Rule(
        rule_id=rule_id,
        text=text or "",
        tags=[t for t in str(meta.get("tags", "")).split(",") if t],
        n_used=int(meta.get("n_used", 0)),
        n_success=int(meta.get("n_success", 0)),
        origin=meta.get("origin", "mined"),
        round_created=int(meta.get("round_created", 0)),
        condition=RuleCondition.model_validate_json(cond) if cond else None,
        retired=bool(meta.get("retired", False)),
    )


def rule_key(rule: Rule) -> tuple:
    """What the memory version hashes for a rule (content and statistics, not the vector)."""
    cond = rule.condition.model_dump(mode="json") if rule.condition is not None else None
    return (rule.rule_id, rule.text, sorted(rule.tags), rule.n_used, rule.n_success, rule.retired, cond)


def psi_scores(rules: list[Rule], query_tags: list[str], ucb_c: float = 1.0) -> np.ndarray:
    """Ψ for each rule (PAPER.md §2); N_total sums ``n_used`` over the rules given."""
    tq = set(query_tags)
    n_total = sum(r.n_used for r in rules)
    log_n = math.log(n_total + 1)
    out = np.empty(len(rules), dtype=np.float64)
    for i, r in enumerate(rules):
        overlap = len(tq.intersection(r.tags))
        success = r.n_success / r.n_used if r.n_used > 0 else 0.0
        out[i] = overlap + success + ucb_c * math.sqrt(log_n / (r.n_used + 1))
    return out


def mined_rule_id(text: str) -> str:
    """Deterministic id for a rule added without one: the same text always maps to the same id."""
    norm = " ".join(text.lower().split())
    return "rule-" + hashlib.sha1(norm.encode("utf-8")).hexdigest()[:12]


class RuleMemory:
    """The ``semantic_rules`` collection of a :class:`~hmrcritic.memory.store.MemoryStore`."""

    def __init__(self, store: MemoryStore):
        self._store = store
        self._cache: list[Rule] | None = None
        self._cache_gen: tuple | None = None
        self._loads = 0  # bumped on every reload: keys the arrays derived from the cache

    # ---- reading -------------------------------------------------------------------------------------
    def _col(self):
        return self._store._collection(RULES_COLLECTION)

    def _load_all(self) -> list[Rule]:
        gen = self._store._content_key()
        if self._cache is None or self._cache_gen != gen:
            got = self._store._get_all(RULES_COLLECTION, include=["documents", "metadatas"])
            recs = zip(got["ids"], got["documents"], got["metadatas"], strict=True)
            rules = [rule_from_record(i, d, m) for i, d, m in recs]
            self._cache = sorted(rules, key=lambda r: r.rule_id)
            self._cache_gen = gen
            self._loads += 1
        return self._cache

    def invalidate(self) -> None:
        self._cache = None

    def all(self, include_retired: bool = False) -> list[Rule]:
        """Every rule sorted by id (copies: mutate and pass to :meth:`update`)."""
        return [r.model_copy(deep=True) for r in self._load_all() if include_retired or not r.retired]

    def count(self, include_retired: bool = False) -> int:
        return sum(1 for r in self._load_all() if include_retired or not r.retired)

    def get(self, rule_ids: list[str]) -> list[Rule]:
        """Rules by id, in the order asked; an unknown id is an InputError."""
        by_id = {r.rule_id: r for r in self._load_all()}
        missing = [i for i in rule_ids if i not in by_id]
        if missing:
            raise InputError(f"unknown rule id(s) {missing[:5]} in memory {self._store.location}")
        return [by_id[i].model_copy(deep=True) for i in rule_ids]

    def _ranked(self, query_tags: list[str], ucb_c: float, query_text: str | None,
                text_weight: float) -> list[tuple[Rule, float]]:
        """Vectorised Ψ over the cached active rules (sorted by id, so a stable sort breaks ties by id)."""
        rules = [r for r in self._load_all() if not r.retired]
        if not rules:
            return []
        key = self._loads
        if getattr(self, "_arr_key", None) != key:
            vocab = sorted({t for r in rules for t in r.tags})
            col = {t: i for i, t in enumerate(vocab)}
            tagmat = np.zeros((len(rules), max(len(vocab), 1)), dtype=np.float64)
            for i, r in enumerate(rules):
                tagmat[i, [col[t] for t in set(r.tags)]] = 1.0
            used = np.array([r.n_used for r in rules], dtype=np.float64)
            succ = np.array([r.n_success for r in rules], dtype=np.float64)
            self._arr = (col, tagmat, used, succ)
            self._arr_key = key
        col, tagmat, used, succ = self._arr
        # a list of tags or one comma-separated string (list() of a string was its characters: no tag matched)
        q = [col[t] for t in set(normalise_tags(query_tags)) if t in col]
        overlap = tagmat[:, q].sum(axis=1) if q else np.zeros(len(rules))
        success = np.divide(succ, used, out=np.zeros_like(succ), where=used > 0)
        psi = overlap + success + ucb_c * np.sqrt(math.log(used.sum() + 1) / (used + 1))
        if query_text:
            sims = self.text_similarity(query_text)
            psi = psi + text_weight * np.array([sims.get(r.rule_id, 0.0) for r in rules])
        order = np.argsort(-np.round(psi, 9), kind="stable")
        return [(rules[i], float(psi[i])) for i in order]

    def scored(self, query_tags: list[str], ucb_c: float = 1.0, query_text: str | None = None,
               text_weight: float = 1.0) -> list[tuple[Rule, float]]:
        """All active rules with Ψ, best first (ties by rule_id)."""
        ranked = self._ranked(query_tags, ucb_c, query_text, text_weight)
        return [(r.model_copy(deep=True), p) for r, p in ranked]

    def retrieve(self, query_tags: list[str], k: int = 8, ucb_c: float = 1.0,
                 query_text: str | None = None) -> list[Rule]:
        """The k best active rules by Ψ for these query tags (PAPER.md §2)."""
        if k <= 0:
            return []
        return [r.model_copy(deep=True) for r, _ in self._ranked(query_tags, ucb_c, query_text, 1.0)[:k]]

    def text_similarity(self, query_text: str) -> dict[str, float]:
        """Cosine similarity of the query text to every rule text (loads the text model)."""
        q = embed_text([query_text])
        with self._store._local_lock():
            n = self._col().count()
            if n == 0:
                return {}
            res = self._col().query(query_embeddings=q, n_results=n, include=["distances"])
        return {i: 1.0 - float(d) for i, d in zip(res["ids"][0], res["distances"][0], strict=True)}

    def search(self, query_text: str, k: int = 10, include_retired: bool = False) -> list[tuple[Rule, float]]:
        """Rules nearest in meaning to ``query_text`` (``memory search``), with cosine similarity. A ``k`` or a
        query of the wrong type is one InputError line (``k="3"`` was a TypeError from the slice, a query of 5 was
        embedded as the text "5")."""
        check_number("k", k, integer=True)
        if not isinstance(query_text, str):
            raise InputError(f"rules.search: query_text must be text, got {type(query_text).__name__}")
        by_id = {r.rule_id: r for r in self._load_all()}
        sims = self.text_similarity(query_text)
        ranked = sorted(sims.items(), key=lambda kv: (-kv[1], kv[0]))
        out = [(by_id[i].model_copy(deep=True), s) for i, s in ranked
               if i in by_id and (include_retired or not by_id[i].retired)]
        return out[:k] if k > 0 else []  # as retrieve: k=-1 sliced off the last rule only

    def embeddings(self, rule_ids: list[str] | None = None) -> dict[str, np.ndarray]:
        got = self._store._get_all(RULES_COLLECTION, include=["embeddings"], ids=rule_ids)
        pairs = zip(got["ids"], got["embeddings"], strict=True)
        return {i: np.asarray(e, dtype=np.float32) for i, e in pairs}

    # ---- writing -------------------------------------------------------------------------------------
    def validate(self, rule: Rule) -> Rule:
        """A checked copy of ``rule`` (text, statistics, tags, id) as :meth:`add` and :meth:`update` store it."""
        rule = rule.model_copy(deep=True)
        if not rule.text.strip():
            raise InputError(f"rule {rule.rule_id or '(new)'} has empty text")
        if rule.n_used < 0 or rule.n_success < 0 or rule.n_success > rule.n_used:
            raise InputError(f"rule {rule.rule_id}: need 0 <= n_success <= n_used, got "
                             f"{rule.n_success}/{rule.n_used}")
        if rule.n_used > INT_MAX or abs(rule.round_created) > INT_MAX:
            # Chroma keeps metadata integers as 64-bit: a larger count (an import file's) came back rounded, or,
            # past a float, failed the write with "Cannot convert Python object to UpdateMetadataValue"
            raise InputError(f"rule {rule.rule_id or '(new)'}: n_used and round_created must fit in 64 bits "
                             f"(at most {INT_MAX} in size)")
        given, rule.tags = rule.tags, normalise_tags(rule.tags)
        dropped = [t for t in (given.split(",") if isinstance(given, str) else given) if not normalise_tags([t])]
        if dropped:  # retrieval matches only the vocabulary's tags: an import's own tags were dropped without a word
            warn_caller(f"rule {rule.rule_id or '(new)'}: tag{'s' if len(dropped) > 1 else ''} "
                        f"{', '.join(repr(str(t))[:40] for t in dropped)} not in the tag vocabulary, dropped "
                        f"(known: {', '.join(TAG_VOCABULARY)})")
        if not rule.rule_id:
            rule.rule_id = mined_rule_id(rule.text)
        return rule

    @staticmethod
    def check_condition(rule: Rule) -> Rule:
        """``rule``, if its condition names a measure of the evidence registry and an axis of the critique
        schema (or none). For rules new to a memory (:meth:`add`, ``memory import``): a misspelt measure was stored
        and never fired, an unknown axis took its points off ``overall`` alone — both without a word. Rules already
        stored are not re-checked (an update of one written by another release still works)."""
        c = rule.condition
        if c is None:
            return rule
        from hmrcritic.agent.evidence import MEASURES  # lazily, as maintenance reads it: memory is below agent
        from hmrcritic.agent.schema import AXES

        if c.measure not in MEASURES:
            near = difflib.get_close_matches(c.measure, list(MEASURES), n=1)
            raise InputError(f"rule {rule.rule_id or '(new)'}: condition measure {c.measure!r} is not an evidence "
                             "measure" + (f" (did you mean {near[0]!r}?)" if near else "")
                             + f"; known: {', '.join(sorted(MEASURES))}")
        if c.axis is not None and c.axis not in AXES:
            raise InputError(f"rule {rule.rule_id or '(new)'}: condition axis {c.axis!r} is not one of "
                             f"{', '.join(AXES)} (or none: overall only)")
        return rule

    def add(self, rules: list[Rule], embeddings: np.ndarray | None = None) -> list[str]:
        """Add new rules; returns their ids (generated from the text when ``rule_id`` is empty).

        A rule without id whose text is already stored maps to the existing id and is not added twice; an
        explicit id that already exists is an InputError (use :meth:`update`). A condition on an unknown measure
        or axis is an InputError (:meth:`check_condition`)."""
        rules = [self.check_condition(self.validate(r)) for r in rules]
        if not rules:
            return []
        if embeddings is not None and np.shape(embeddings)[:1] != (len(rules),):
            # one vector per rule given, in order: fewer was an IndexError from inside the write, more were cut
            # without a word (and the vectors paired with the wrong rules if one had been left out)
            raise InputError(f"RuleMemory.add: {len(rules)} rule(s) but embeddings of shape {np.shape(embeddings)}; "
                             "give one vector per rule, in order (or none, to embed the texts)")
        with self._store._write():
            existing = {r.rule_id for r in self._load_all()}
            new, vec_idx, ids, seen = [], [], [], set()
            for i, r in enumerate(rules):
                ids.append(r.rule_id)
                if r.rule_id in existing or r.rule_id in seen:
                    if r.rule_id.startswith("rule-") and r.rule_id == mined_rule_id(r.text):
                        continue  # same text added again: idempotent
                    raise InputError(f"rule id {r.rule_id!r} already exists in memory {self._store.location}")
                seen.add(r.rule_id)
                new.append(r)
                vec_idx.append(i)
            if new:
                vecs = embed_text([r.text for r in new]) if embeddings is None else \
                    np.asarray(embeddings, dtype=np.float32)[vec_idx]
                self._store._check_dim(RULES_COLLECTION, vecs)
                self._store._upsert(RULES_COLLECTION, [r.rule_id for r in new], vecs,
                                    [rule_to_metadata(r) for r in new], [r.text for r in new])
        return ids

    def update(self, rules: list[Rule]) -> None:
        """Replace stored rules (text, tags, statistics, condition, retired) by id; re-embeds changed text."""
        rules = [self.validate(r) for r in rules]
        if not rules:
            return
        ids = [r.rule_id for r in rules]
        if len(set(ids)) != len(ids):
            # which copy should win is the caller's to say; Chroma refused the call with its bare DuplicateIDError
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise InputError(f"RuleMemory.update: rule id(s) {dup[:5]} listed more than once")
        with self._store._write():
            current = {r.rule_id: r for r in self._load_all()}
            missing = [r.rule_id for r in rules if r.rule_id not in current]
            if missing:
                raise InputError(f"cannot update unknown rule id(s) {missing[:5]} in {self._store.location}")
            changed_text = [r for r in rules if r.text != current[r.rule_id].text]
            same_text = [r for r in rules if r.text == current[r.rule_id].text]
            # embedded before the first write: a text model that fails to load (AssetError) wrote the unchanged-text
            # rules' records and then stopped, leaving half of one update (a maintenance plan, an import) applied
            vecs = embed_text([r.text for r in changed_text]) if changed_text else None
            if same_text:
                self._col().update(ids=[r.rule_id for r in same_text],
                                   metadatas=[rule_to_metadata(r) for r in same_text])
            if changed_text:
                self._store._upsert(RULES_COLLECTION, [r.rule_id for r in changed_text], vecs,
                                    [rule_to_metadata(r) for r in changed_text],
                                    [r.text for r in changed_text])

    def record_use(self, rule_ids: list[str], success: bool, ignore_unknown: bool = False) -> None:
        """``n_used += 1`` for each rule (and ``n_success += 1`` when ``success``); read-modify-write under
        the memory's write lock so two processes recording at once lose no counts. A rule id listed twice
        counts twice. Unknown ids are an InputError unless ``ignore_unknown`` (e.g. ids a VLM made up)."""
        rule_ids = list(rule_ids)
        if not rule_ids:
            return
        with self._store._write():
            current = {r.rule_id: r for r in self._load_all()}
            missing = sorted({i for i in rule_ids if i not in current})
            if missing and ignore_unknown:
                rule_ids = [i for i in rule_ids if i in current]
                if not rule_ids:
                    return
            elif missing:
                raise InputError(f"record_use: unknown rule id(s) {missing[:5]} in {self._store.location}")
            touched: dict[str, Rule] = {}
            for i in rule_ids:
                r = touched.setdefault(i, current[i].model_copy(deep=True))
                r.n_used += 1
                if success:
                    r.n_success += 1
            self._col().update(ids=list(touched), metadatas=[rule_to_metadata(r) for r in touched.values()])

    def retire(self, rule_ids: list[str]) -> None:
        """Exclude rules from retrieval without deleting them (their history stays in the version).

        Read and written back in one write batch: the records written carry their counts, so a use recorded by
        another writer between a separate read and write was overwritten (lost)."""
        with self._store._write():
            rules = self.get(list(dict.fromkeys(rule_ids)))  # an id listed twice is retired once (update refuses it)
            for r in rules:
                r.retired = True
            self.update(rules)

    def merge_near_duplicates(self, threshold: float = 0.9) -> list[tuple[str, str]]:
        """Retire active rules that duplicate a kept one; returns ``(kept_id, merged_id)`` pairs.

        The policy is exploration's (:func:`hmrcritic.memory.maintenance.plan_merges`, one place): the same
        executable condition up to a tolerance, or text cosine above ``threshold`` where the conditions do not
        contradict (the starter set's mild/severe pairs read alike but are different rules). The kept rule of a
        cluster is the most used; it absorbs the merged rules' statistics, tags and condition."""
        from hmrcritic.memory.maintenance import plan_merges

        with self._store._write():  # one read-modify-write, as retire: the kept rule's counts are written back
            rules = self.all()
            if len(rules) < 2:
                return []
            plan = plan_merges(rules, self.embeddings([r.rule_id for r in rules]), text_threshold=threshold)
            if plan.updates:
                self.update(list(plan.updates.values()))
        return plan.merged

    def export_records(self) -> list[dict]:
        emb = self.embeddings()
        out = []
        for r in self.all(include_retired=True):
            d = json.loads(r.model_dump_json())
            d["embedding"] = emb[r.rule_id].tolist() if r.rule_id in emb else None
            out.append(d)
        return out
