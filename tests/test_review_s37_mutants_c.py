"""Session 37 mutation audit of hmrcritic/memory/store.py (the Chroma dual memory).

Each test pins a behaviour a user relies on, with an answer worked out by hand from the docstrings, CONTRACTS.md
and DESIGN.md, and kills a mutant of store.py that the existing tests let through (a cosine index built as
Euclidean, a write lock left held, a reset that drops one collection, an import that drops or double-counts
records, ...). Kept small and fast: a few stores on tmp folders, no starter seeding where it is not the point.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmrcritic.errors import AssetError, InputError
from hmrcritic.memory import MemoryStore, Prototype, Rule
from hmrcritic.memory import store as store_mod
from hmrcritic.memory.embeddings import POSE_DIM, TEXT_DIM


def _unit(i: int, dim: int) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


def _proto(pid: str, vec, overall: float = 5.0) -> Prototype:
    return Prototype(proto_id=pid, embedding=[float(x) for x in vec], overall=overall, motion_structure=5.0,
                     physical_feasibility=5.0, image_alignment=5.0, rationale=pid, source=f"train/{pid}#h0")


def _rule(rid: str, text: str, used: int = 0) -> Rule:
    return Rule(rule_id=rid, text=text, tags=["legs"], n_used=used, n_success=0, origin="user")


def test_prototype_similarity_is_cosine_not_euclidean(tmp_path):
    """prototypes.py: "vector = its pose_embedding (cosine space)", query returns "cosine similarity, most similar
    first". By hand, for the query e0: a prototype 3·e0 points the same way (cosine 1.0) though it is far in
    Euclidean distance (|3e0 - e0|² = 4); 0.6·e0 + 0.8·e1 has cosine 0.6 and is near (|.|² = 0.8). A collection
    made in l2 space ranked them the other way and gave similarities of 1 - 4 and 1 - 0.8."""
    store = MemoryStore(tmp_path / "m", chroma_url="", seed_starter=False)
    near_l2 = 0.6 * _unit(0, POSE_DIM) + 0.8 * _unit(1, POSE_DIM)
    store.prototypes.add([_proto("same-direction", 3.0 * _unit(0, POSE_DIM)), _proto("near-in-l2", near_l2)])
    (row,) = store.prototypes.query(_unit(0, POSE_DIM), k=2, include_embeddings=False)
    assert [p.proto_id for p, _ in row] == ["same-direction", "near-in-l2"]
    assert row[0][1] == pytest.approx(1.0, abs=1e-4) and row[1][1] == pytest.approx(0.6, abs=1e-4)
    store.close()


def _lock_free(path) -> bool:
    """Whether another holder (a new lock object, a new file descriptor, another thread) gets the write lock."""
    import threading

    from filelock import FileLock

    other = FileLock(str(path / store_mod.LOCK_NAME), is_singleton=False, thread_local=False)
    got = []

    def take() -> None:
        try:
            other.acquire(timeout=0.5)
        except Exception:
            got.append(False)
        else:
            got.append(True)
            other.release()

    t = threading.Thread(target=take)
    t.start()
    t.join()
    return got == [True]


def test_a_write_batch_lets_go_of_the_lock_and_its_holder_record(tmp_path):
    """store docstring: every write batch takes ``<memory_dir>/.write.lock`` and the holder record
    (``.write.json``) is "written by the holder and removed on release". After a write returns -- also one that
    failed, whose traceback the caller still holds (a notebook's last exception keeps the batch's frame, and with
    it the lock object, alive) -- another writer must get the lock at once, not wait out
    HMRCRITIC_MEMORY_LOCK_TIMEOUT."""
    path = tmp_path / "m"
    store = MemoryStore(path, chroma_url="", seed_starter=False)
    store.rules.add([_rule("user-1", "a")], embeddings=_unit(0, TEXT_DIM)[None])
    assert not (path / store_mod.HOLDER_NAME).exists() and _lock_free(path)
    with pytest.raises(InputError, match="already exists") as failed:
        store.rules.add([_rule("user-1", "a")], embeddings=_unit(0, TEXT_DIM)[None])
    assert failed.value.__traceback__ is not None  # held while the lock is tried
    assert not (path / store_mod.HOLDER_NAME).exists() and _lock_free(path)
    store.close()


def test_reset_drops_both_collections_and_the_exploration_records(tmp_path):
    """MemoryStore.reset: "Delete both collections and recreate them", and the exploration records go with the
    contents (a kept progress record made the next exploration skip its rounds)."""
    path = tmp_path / "m"
    store = MemoryStore(path, chroma_url="", seed_starter=False)
    store.rules.add([_rule("user-1", "knees bend forward")], embeddings=_unit(0, TEXT_DIM)[None])
    store.prototypes.add([_proto("p0", _unit(0, POSE_DIM))])
    for name in store_mod.EXPLORE_FILES:
        (path / name).write_text("{}")
    store.reset(seed_starter=False)
    assert store.rules.count(include_retired=True) == 0 and store.prototypes.count() == 0
    assert [n for n in store_mod.EXPLORE_FILES if (path / n).exists()] == []
    store.close()


def _export(path, rules=(), protos=(), **extra) -> None:
    data = {"format": store_mod.EXPORT_FORMAT, "schema": store_mod.SCHEMA_VERSION,
            "embeddings": {n: {"id": e, "dim": d} for n, (e, d) in store_mod.COLLECTIONS.items()},
            "rules": list(rules), "prototypes": list(protos), **extra}
    path.write_text(json.dumps(data))


def _rule_rec(rid: str, text: str, used: int, vec=None) -> dict:
    rec = _rule(rid, text, used).model_dump(mode="json")
    rec["embedding"] = [float(x) for x in (vec if vec is not None else _unit(1, TEXT_DIM))]
    return rec


def test_import_replaces_a_rule_only_when_the_file_has_more_uses(tmp_path):
    """import_json: "a rule id already present is replaced only when the file's copy has more uses". By hand:
    ours has 2 uses; the file's copy with 2 uses is skipped (ours kept, text unchanged), with 3 it replaces ours."""
    store = MemoryStore(tmp_path / "m", chroma_url="", seed_starter=False)
    store.rules.add([_rule("user-1", "ours", used=2)], embeddings=_unit(0, TEXT_DIM)[None])
    f = tmp_path / "same.json"
    _export(f, rules=[_rule_rec("user-1", "ours", 2)])
    counts = store.import_json(f)
    assert (counts["rules_added"], counts["rules_updated"], counts["rules_skipped"]) == (0, 0, 1)
    _export(f, rules=[_rule_rec("user-1", "ours", 3)])
    counts = store.import_json(f)
    assert (counts["rules_added"], counts["rules_updated"], counts["rules_skipped"]) == (0, 1, 0)
    assert store.rules.get(["user-1"])[0].n_used == 3
    store.close()


def test_import_reuses_stored_vectors_only_from_the_same_text_embedder(tmp_path):
    """import_json: "Stored vectors are reused when the file's embedding identity matches ours, otherwise rule
    texts are re-embedded". A file from another text embedder carrying e0 as a rule's vector: the stored vector
    must be this memory's embedding of the text (unit length, never exactly e0), not the foreign one."""
    store = MemoryStore(tmp_path / "m", chroma_url="", seed_starter=False)
    foreign = tmp_path / "foreign.json"
    _export(foreign, rules=[_rule_rec("user-1", "the knees bend backwards", 0, vec=_unit(0, TEXT_DIM))])
    data = json.loads(foreign.read_text())
    data["embeddings"][store_mod.RULES_COLLECTION] = {"id": "another-text-embedder", "dim": TEXT_DIM}
    foreign.write_text(json.dumps(data))
    assert store.import_json(foreign)["rules_added"] == 1
    vec = store.rules.embeddings(["user-1"])["user-1"]
    assert not np.allclose(vec, _unit(0, TEXT_DIM), atol=1e-3)
    # the same file from our own embedder: its vector is kept as it is
    _export(foreign, rules=[_rule_rec("user-2", "the knees bend backwards", 0, vec=_unit(0, TEXT_DIM))])
    store.import_json(foreign)
    assert np.allclose(store.rules.embeddings(["user-2"])["user-2"], _unit(0, TEXT_DIM), atol=1e-6)
    store.close()


def test_import_refuses_a_rule_id_given_twice(tmp_path):
    """An import is all or nothing, and one id must not be two rules: the file holding it twice is refused."""
    store = MemoryStore(tmp_path / "m", chroma_url="", seed_starter=False)
    f = tmp_path / "dup.json"
    _export(f, rules=[_rule_rec("user-1", "a", 0), _rule_rec("user-1", "b", 5)])
    with pytest.raises(InputError, match="more than once"):
        store.import_json(f)
    assert store.rules.count(include_retired=True) == 0
    store.close()


def test_paged_reads_and_batched_writes_keep_every_record(tmp_path, monkeypatch):
    """Large collections are read in pages of ``_PAGE`` and written in batches of the client's maximum: a page or
    batch boundary must neither drop nor repeat a record. With pages and batches of 2, five prototypes are five
    in the collection and five, each once, in the export."""
    monkeypatch.setattr(store_mod, "_PAGE", 2)
    store = MemoryStore(tmp_path / "m", chroma_url="", seed_starter=False)
    monkeypatch.setattr(type(store._client), "get_max_batch_size", lambda self: 2)
    store.prototypes.add([_proto(f"p{i}", _unit(i, POSE_DIM)) for i in range(5)])
    assert store.prototypes.count() == 5
    out = tmp_path / "e.json"
    store.export_json(out)
    assert sorted(p["proto_id"] for p in json.loads(out.read_text())["prototypes"]) == [f"p{i}" for i in range(5)]
    store.close()


def test_merge_explored_is_a_union_that_keeps_ours_first():
    """merge_explored: per split "the union of the learned-from and the calibration group ids (ours first, in
    order), other fields ours where both have them"; returns how many ids it adds. By hand: ours [a, b] seed 1,
    theirs [b, c, c] seed 2 → [a, b, c], one added, seed 1; a split only theirs has is taken whole."""
    ours = {"splits": {"train": {"group_ids": ["a", "b"], "seed": 1}}}
    theirs = {"splits": {"train": {"group_ids": ["b", "c", "c"], "seed": 2},
                         "val": {"group_ids": ["v"], "calibration_group_ids": ["w"]}}}
    merged, added = store_mod.merge_explored(ours, theirs)
    assert merged["splits"]["train"] == {"group_ids": ["a", "b", "c"], "seed": 1}
    assert merged["splits"]["val"] == {"group_ids": ["v"], "calibration_group_ids": ["w"]}
    assert added == 3
    assert ours == {"splits": {"train": {"group_ids": ["a", "b"], "seed": 1}}}  # not changed in place


def test_an_id_of_exactly_the_limit_is_accepted():
    """Imported ids are "1-256 printable characters": 256 passes, 257 and a line break do not."""
    store_mod._check_imported_id("rule", "r" * store_mod.MAX_IMPORTED_ID_CHARS)
    with pytest.raises(InputError):
        store_mod._check_imported_id("rule", "r" * (store_mod.MAX_IMPORTED_ID_CHARS + 1))
    with pytest.raises(InputError):
        store_mod._check_imported_id("rule", "a\nb")


def test_a_stored_vector_of_the_wrong_length_is_not_reused():
    """_finite_vector: "a list of ``dim`` finite numbers": one number short is not a reusable embedding."""
    assert store_mod._finite_vector([0.5] * TEXT_DIM, TEXT_DIM)
    assert not store_mod._finite_vector([0.5] * (TEXT_DIM - 1), TEXT_DIM)
    assert not store_mod._finite_vector([0.5] * (TEXT_DIM - 1) + [float("nan")], TEXT_DIM)


def test_a_prototype_sum_marked_unknown_is_rescanned(tmp_path):
    """store._proto_sum: "A missing or stale sum (count mismatch) falls back to a scan"; a prototype write marks
    the stored sum unknown (count -1) before its first record. A write cut short there leaves a bogus sum with
    count -1: the version must still describe the records (verify_version True, the version as before)."""
    store = MemoryStore(tmp_path / "m", chroma_url="", seed_starter=False)
    store.prototypes.add([_proto("p0", _unit(0, POSE_DIM)), _proto("p1", _unit(1, POSE_DIM))])
    before = store.version()
    with store._write():
        store._store_proto_sum(12345, -1)
    store.refresh()
    assert store.version() == before and store.verify_version()
    store.close()


@pytest.mark.parametrize("server, refused", [(None, True), ("http://elsewhere:8000", False)])
def test_a_reset_marker_refuses_only_the_memory_it_was_written_for(tmp_path, server, refused):
    """_reset_marked: the marker says whether the reset cut short was of the memory on disk (server None) or of
    one on a server; only the memory it names is refused (the other opens as usual)."""
    path = tmp_path / "m"
    MemoryStore(path, chroma_url="", seed_starter=False).close()
    (path / store_mod.RESET_MARKER).write_text(json.dumps({"pid": 1, "since": "x", "server": server}))
    if refused:
        with pytest.raises(AssetError, match="reset was cut short"):
            MemoryStore(path, chroma_url="")
    else:
        MemoryStore(path, chroma_url="").close()


def test_rule_vectors_of_the_wrong_width_are_refused_on_an_empty_memory(tmp_path):
    """_check_dim: rule vectors must have shape (n, TEXT_DIM). On an empty collection Chroma would take any width
    (and then refuse every later 384-wide query), so the store must refuse it."""
    store = MemoryStore(tmp_path / "m", chroma_url="", seed_starter=False)
    with pytest.raises(InputError, match="shape"):
        store.rules.add([_rule("user-1", "x")], embeddings=np.ones((1, TEXT_DIM - 1), dtype=np.float32))
    assert store.rules.count(include_retired=True) == 0
    store.close()


def test_finishing_a_creation_keeps_the_starter_rules_already_in(tmp_path):
    """_create_missing: a creation cut short "is finished by the next writable open, which adds the starter rules
    that are not in yet" -- the ones already in (with the uses they gathered) are left as they are."""
    from hmrcritic.memory.starter_rules import starter_rules

    path = tmp_path / "m"
    store = MemoryStore(path, chroma_url="")
    first = starter_rules()[0].rule_id
    store.rules.record_use([first] * 3, success=True)
    store.close()
    (path / store_mod.CREATE_MARKER).write_text("{}")
    again = MemoryStore(path, chroma_url="")
    assert again.rules.get([first])[0].n_used == 3
    assert again.rules.count() == len(starter_rules())
    assert not (path / store_mod.CREATE_MARKER).exists()
    again.close()


def test_the_lock_timeout_defaults_to_five_minutes(monkeypatch):
    """README: ``HMRCRITIC_MEMORY_LOCK_TIMEOUT`` (s a memory writer waits for another's write lock, default 300)."""
    monkeypatch.delenv("HMRCRITIC_MEMORY_LOCK_TIMEOUT", raising=False)
    assert store_mod._lock_timeout_s() == 300.0


def test_export_counts_distinct_explored_groups_and_import_writes_the_guard(tmp_path):
    """export_json returns "explored_groups": distinct ids per split (a group in both the learned-from and the
    calibration list counts once): by hand {a, b} + {b} in train and {v} in val = 3. Importing the file into an
    empty memory writes the guard (explored_on.json) there with those ids."""
    src_path = tmp_path / "src"
    src = MemoryStore(src_path, chroma_url="", seed_starter=False)
    guard = {"splits": {"train": {"group_ids": ["a", "b"], "calibration_group_ids": ["b"]},
                        "val": {"group_ids": ["v"]}}}
    (src_path / store_mod.EXPORTED_FILES["explored_on"]).write_text(json.dumps(guard))
    f = tmp_path / "e.json"
    assert src.export_json(f)["explored_groups"] == 3
    src.close()
    dst_path = tmp_path / "dst"
    dst = MemoryStore(dst_path, chroma_url="", seed_starter=False)
    assert dst.import_json(f)["explored_groups"] > 0
    written = json.loads((dst_path / store_mod.EXPORTED_FILES["explored_on"]).read_text())
    assert written["splits"]["train"]["group_ids"] == ["a", "b"] and written["splits"]["val"]["group_ids"] == ["v"]
    dst.close()


def test_import_counts_explored_groups_as_the_export_does(tmp_path):
    """CONTRACTS.md: export_json and import_json both report explored_groups, and `memory export` / `memory import`
    print it as "the N ... group ids". For one file into an empty memory the two must agree: by hand train {a, b}
    (b also a calibration group) and val {v} are 3 group ids, not 4."""
    src = MemoryStore(tmp_path / "src", chroma_url="", seed_starter=False)
    guard = {"splits": {"train": {"group_ids": ["a", "b"], "calibration_group_ids": ["b"]},
                        "val": {"group_ids": ["v"]}}}
    (tmp_path / "src" / store_mod.EXPORTED_FILES["explored_on"]).write_text(json.dumps(guard))
    f = tmp_path / "e.json"
    exported = src.export_json(f)["explored_groups"]
    src.close()
    dst = MemoryStore(tmp_path / "dst", chroma_url="", seed_starter=False)
    try:
        assert dst.import_json(f)["explored_groups"] == exported == 3
    finally:
        dst.close()


def test_stats_count_retired_rules_apart(tmp_path):
    """stats(): "rules" counts the active rules, "rules_retired" the retired ones. By hand: three user rules,
    one retired → 2 and 1."""
    store = MemoryStore(tmp_path / "m", chroma_url="", seed_starter=False)
    store.rules.add([_rule(f"user-{i}", f"text {i}") for i in range(3)],
                    embeddings=np.stack([_unit(i, TEXT_DIM) for i in range(3)]))
    store.rules.retire(["user-0"])
    s = store.stats()
    assert (s["rules"], s["rules_retired"]) == (2, 1)
    store.close()

