"""Review s31: a logic read of the dual memory (store, rules, prototypes) against Chroma 1.5's own behaviour.

* Chroma refuses a repeated id in one ``get``/``update`` (``DuplicateIDError``): ``retire(["a", "a"])``,
  ``prototypes.get(["p", "p"])`` and ``rules.embeddings(["a", "a"])`` ended in Chroma's bare error.
* ``RuleMemory.update`` wrote the rules whose text stayed before embedding the changed texts: a text model that
  could not load (AssetError) left half of one update written.
* ``PrototypeMemory.add`` wrote the running content sum only after every upsert batch: a batch that failed after
  an earlier one had replaced prototypes (same ids: the count unchanged) left the old sum, which still matched the
  count, so ``version()`` described contents the memory no longer held, for good.
* A write batch nested through *another* store on the same folder (shared file lock, supported by ``_write``) did
  not drop the outer store's cached rules and version: the outer batch read counts from before the nested write
  and could write them back over it (a lost use).
"""

from __future__ import annotations

import numpy as np
import pytest

from hmrcritic.errors import AssetError
from hmrcritic.memory import rules as rules_mod
from hmrcritic.memory.embeddings import POSE_DIM
from hmrcritic.memory.maintenance import plan_merges
from hmrcritic.memory.schema import Prototype, Rule, RuleCondition
from hmrcritic.memory.store import MemoryStore


def _proto(pid: str, v: np.ndarray, overall: float) -> Prototype:
    return Prototype(proto_id=pid, embedding=np.asarray(v, dtype=np.float32).tolist(), overall=overall,
                     motion_structure=5, physical_feasibility=5, image_alignment=5)


@pytest.fixture()
def store(tmp_path):
    with MemoryStore(tmp_path / "mem", chroma_url="") as s:
        yield s


def test_retire_with_an_id_listed_twice_retires_it(store):
    """``retire`` read the rules by id (one copy per listed id) and updated them in one Chroma call, which refuses
    a repeated id: ``DuplicateIDError`` instead of the rule retired."""
    rid = store.rules.all()[0].rule_id
    store.rules.retire([rid, rid])
    assert store.rules.get([rid])[0].retired


def test_update_with_a_rule_listed_twice_is_an_input_error(store):
    """Two different copies of one rule in one update: which one wins is not for Chroma's error to say."""
    from hmrcritic.errors import InputError

    r = store.rules.all()[0]
    a, b = r.model_copy(update={"n_used": 3, "n_success": 1}), r.model_copy(update={"n_used": 4})
    with pytest.raises(InputError, match="more than once"):
        store.rules.update([a, b])
    assert store.rules.get([r.rule_id])[0].n_used == r.n_used


def test_prototype_get_and_rule_embeddings_with_a_repeated_id(store):
    rng = np.random.default_rng(0)
    store.prototypes.add([_proto("p0", rng.normal(size=POSE_DIM), 5.0)])
    got = store.prototypes.get(["p0", "p0"])
    assert [p.proto_id for p in got] == ["p0", "p0"]
    rid = store.rules.all()[0].rule_id
    emb = store.rules.embeddings([rid, rid])
    assert list(emb) == [rid] and emb[rid].shape == (384,)


def test_update_embeds_changed_texts_before_it_writes_anything(store, monkeypatch):
    """One update of two rules, one with new counts and one with a new text: the counts were written, then the
    text model failed to load, and the update stopped half-way."""
    r0, r1 = store.rules.all()[:2]
    before = store.version()

    def broken(texts):
        raise AssetError("text embedding model could not be loaded")

    monkeypatch.setattr(rules_mod, "embed_text", broken)
    a = r0.model_copy(update={"n_used": r0.n_used + 5, "n_success": r0.n_success + 1})
    b = r1.model_copy(update={"text": r1.text + " (edited)"})
    with pytest.raises(AssetError):
        store.rules.update([a, b])
    store.refresh()
    assert store.rules.get([r0.rule_id])[0].n_used == r0.n_used
    assert store.version() == before


def test_a_prototype_write_that_fails_part_way_leaves_no_stale_content_sum(store, monkeypatch):
    """Replacing two prototypes (same ids: the count stays) in two upsert batches, the second failing: the first
    batch's replacement is stored, but the content sum kept in the collection metadata was the old one, and its
    count still matched — ``version()`` went on describing the old contents and ``verify_version()`` was False."""
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(2, POSE_DIM))
    store.prototypes.add([_proto("p0", vecs[0], 5.0), _proto("p1", vecs[1], 5.0)])
    assert store.verify_version()
    from chromadb.api.client import Client
    from chromadb.api.models.Collection import Collection

    monkeypatch.setattr(Client, "get_max_batch_size", lambda self: 1)
    real = Collection.upsert
    calls = []

    def upsert(self, **kw):
        calls.append(kw["ids"])
        if len(calls) == 2:
            raise RuntimeError("disk went away")
        return real(self, **kw)

    monkeypatch.setattr(Collection, "upsert", upsert)
    with pytest.raises(RuntimeError):
        store.prototypes.add([_proto("p0", vecs[0], 1.0), _proto("p1", vecs[1], 1.0)])
    monkeypatch.undo()
    store.refresh()
    assert store.prototypes.get(["p0"])[0].overall == 1.0  # the first batch did land
    assert store.verify_version()
    fresh = MemoryStore(store.path, chroma_url="", read_only=True)
    assert fresh.verify_version() and fresh.version() == store.version()


def test_a_write_nested_through_another_store_is_seen_by_the_outer_batch(tmp_path):
    """Store ``b`` on the same folder writes inside ``a``'s batch (it shares the file lock): ``a`` then read the
    use counts from before, and writing them back (as ``retire`` does) lost ``b``'s use."""
    a = MemoryStore(tmp_path / "mem", chroma_url="")
    b = MemoryStore(tmp_path / "mem", chroma_url="")
    rid = a.rules.all()[0].rule_id
    n0 = a.rules.get([rid])[0].n_used
    with a._write():
        v0 = a.version()
        b.rules.record_use([rid], True)
        assert a.rules.get([rid])[0].n_used == n0 + 1
        assert a.version() != v0
        a.rules.retire([rid])
    fresh = MemoryStore(tmp_path / "mem", chroma_url="", read_only=True)
    got = fresh.rules.get([rid])[0]
    assert got.retired and got.n_used == n0 + 1


def test_maintenance_never_retires_a_hard_rule_by_a_text_merge():
    """CONTRACTS: maintenance never retires a hard constraint nor merges it into a soft twin. A rule without a
    condition (a VLM's prose rule), used more, whose text reads like the hard rule's, kept it: ``_text_compatible``
    lets a missing condition match anything, and the hard rule was retired (its condition moved to the prose rule)."""
    hard = Rule(rule_id="starter-hyperext-mild", text="A knee bent backwards by more than 10 degrees.",
                condition=RuleCondition(measure="hyperextension_deg", comparator=">", threshold=10.0, points=5.0,
                                        hard=True))
    prose = Rule(rule_id="rule-prose", text="A knee bent backwards by more than ten degrees.", n_used=9,
                 n_success=5, origin="mined")
    v = np.ones(384, dtype=np.float32)
    plan = plan_merges([hard, prose], {hard.rule_id: v, prose.rule_id: v})
    assert not any(m == hard.rule_id for _, m in plan.merged)
