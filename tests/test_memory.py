"""Chroma dual memory: real Chroma on disk in tmp folders (and a real `chroma run` server if it starts)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hmrcritic.errors import AssetError, InputError
from hmrcritic.memory import (
    POSE_DIM,
    STARTER_RULES,
    TAG_VOCABULARY,
    MemoryStore,
    Prototype,
    ReadOnlyMemoryError,
    Rule,
    RuleCondition,
    pose_embedding,
)
from hmrcritic.memory.rules import psi_scores

MEASURES = {
    "reproj_rel",
    "reproj_px",
    "joint_limit_deg",
    "hyperextension_deg",
    "penetration_mm",
    "pose_prior_nll",
    "consensus_dev_mm",
    "floor_penetration_mm",
    "floating_mm",
    "silhouette_iou",
    "asymmetry",
}

# ---- a small synthetic skeleton (SMPL joint order, y up, left = +x, facing +z) ---------------------------
_T = np.array(
    [
        [0, 0, 0],
        [0.06, -0.09, 0],
        [-0.06, -0.09, 0],
        [0, 0.11, 0],
        [0.1, -0.47, 0],
        [-0.1, -0.47, 0],
        [0, 0.24, 0],
        [0.09, -0.88, -0.04],
        [-0.09, -0.88, -0.04],
        [0, 0.29, 0],
        [0.12, -0.94, 0.08],
        [-0.12, -0.94, 0.08],
        [0, 0.5, 0],
        [0.07, 0.4, 0],
        [-0.07, 0.4, 0],
        [0, 0.6, 0.05],
        [0.18, 0.43, 0],
        [-0.18, 0.43, 0],
        [0.44, 0.43, 0],
        [-0.44, 0.43, 0],
        [0.7, 0.43, 0],
        [-0.7, 0.43, 0],
        [0.78, 0.43, 0],
        [-0.78, 0.43, 0],
    ],
    dtype=np.float64,
)


def _rot(axis: str, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def _bend(j: np.ndarray, chain: list[int], pivot: int, axis: str, deg: float) -> np.ndarray:
    j = j.copy()
    j[chain] = (j[chain] - j[pivot]) @ _rot(axis, deg).T + j[pivot]
    return j


def _poses() -> dict[str, np.ndarray]:
    arms_down = _bend(_bend(_T, [18, 20, 22], 16, "z", -80), [19, 21, 23], 17, "z", 80)
    squat = _bend(_bend(_T, [4, 7, 10], 1, "x", -90), [5, 8, 11], 2, "x", -90)
    squat = _bend(_bend(squat, [7, 10], 4, "x", 90), [8, 11], 5, "x", 90)
    arm_up = _bend(_T, [18, 20, 22], 16, "z", 80)
    walk = _bend(_bend(arms_down, [4, 7, 10], 1, "x", -30), [5, 8, 11], 2, "x", 30)
    return {"tpose": _T, "arms_down": arms_down, "squat": squat, "arm_up": arm_up, "walk": walk}


def _disguise(j: np.ndarray, seed: int, noise_m: float = 0.005) -> np.ndarray:
    """Same pose seen differently: random rotation, scale, translation, plus a few mm of noise."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    return 1.15 * (j @ rot.T) + rng.normal(size=3) + rng.normal(scale=noise_m, size=j.shape)


def _proto(pid: str, emb: np.ndarray, overall: float = 5.0, **kw) -> Prototype:
    return Prototype(
        proto_id=pid,
        embedding=np.asarray(emb).tolist(),
        overall=overall,
        motion_structure=overall,
        physical_feasibility=overall,
        image_alignment=overall,
        **kw,
    )


def _rand_vecs(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _rule(rid: str, tags: list[str], used: int = 0, success: int = 0) -> Rule:
    return Rule(
        rule_id=rid,
        text=f"rule {rid}",
        tags=tags,
        n_used=used,
        n_success=success,
        origin="user",
        condition=RuleCondition(measure="reproj_rel", comparator=">", threshold=0.1, points=1.0),
    )


def _store_with(path: Path, rules: list[Rule]) -> MemoryStore:
    """A store holding exactly ``rules`` (random text vectors: these tests need no text model)."""
    store = MemoryStore(path, seed_starter=False)
    store.rules.add(rules, embeddings=_rand_vecs(len(rules), 384))
    return store


# ---- seeding -------------------------------------------------------------------------------------------
def test_fresh_memory_is_seeded_with_executable_starter_rules(tmp_path):
    store = MemoryStore(tmp_path / "mem")
    rules = store.rules.all()
    assert {r.rule_id for r in rules} == {r.rule_id for r in STARTER_RULES}
    assert len(rules) >= 12
    for r in rules:
        assert r.condition is not None and r.condition.measure in MEASURES, r.rule_id
        assert 0 < r.condition.points <= 10
        assert r.tags and set(r.tags) <= set(TAG_VOCABULARY), r.rule_id
        assert "point" in r.text and r.origin == "starter" and r.n_used == 0
    texts = " ".join(r.text.lower() for r in rules)
    for topic in ("knee", "spine", "torso", "ground", "floating", "keypoint", "prior", "consensus"):
        assert topic in texts, topic
    st = store.stats()
    assert st["rules"] == len(rules) and st["prototypes"] == 0
    assert st["embeddings"]["episodic_prototypes"]["dim"] == POSE_DIM
    # reopening does not seed twice
    assert MemoryStore(tmp_path / "mem").rules.count() == len(rules)


# ---- rule retrieval ------------------------------------------------------------------------------------
def test_retrieve_orders_by_psi_with_tag_overlap_and_ucb(tmp_path):
    store = _store_with(
        tmp_path / "m",
        [
            _rule("a-legs", ["legs", "hyperextension"]),
            _rule("b-arms", ["arms"]),
            _rule("c-none", []),
            _rule("d-failed", ["grounding"], used=6, success=0),
            _rule("e-good", ["grounding"], used=4, success=4),
        ],
    )
    got = store.rules.retrieve(["legs", "hyperextension"], k=5)
    assert got[0].rule_id == "a-legs"  # two shared tags beat every other term here
    # UCB: among rules with no tag overlap, the never-used one beats the used-and-failed one
    order = [r.rule_id for r in store.rules.retrieve([], k=5)]
    assert order.index("c-none") < order.index("d-failed")
    assert order[0] == "e-good"  # success rate 1 + its bonus
    # Ψ values match the formula computed by hand
    n_total = 10
    scored = dict((r.rule_id, psi) for r, psi in store.rules.scored(["grounding"], ucb_c=1.0))
    assert scored["d-failed"] == pytest.approx(1 + 0 + math.sqrt(math.log(n_total + 1) / 7))
    assert scored["e-good"] == pytest.approx(1 + 1 + math.sqrt(math.log(n_total + 1) / 5))
    assert scored["c-none"] == pytest.approx(math.sqrt(math.log(n_total + 1) / 1))
    # C scales the bonus; with C=0 the failed rule ties the unused one at 0 and the id decides
    zero = [r.rule_id for r in store.rules.retrieve([], k=5, ucb_c=0.0)]
    assert zero == ["e-good", "a-legs", "b-arms", "c-none", "d-failed"]
    assert len(store.rules.retrieve(["legs"], k=2)) == 2


def test_ties_are_broken_by_rule_id_and_retired_rules_are_excluded(tmp_path):
    store = _store_with(tmp_path / "m", [_rule(i, ["legs"]) for i in ("r3", "r1", "r2")])
    assert [r.rule_id for r in store.rules.retrieve(["legs"])] == ["r1", "r2", "r3"]
    store.rules.retire(["r1"])
    assert [r.rule_id for r in store.rules.retrieve(["legs"])] == ["r2", "r3"]
    assert store.rules.count() == 2 and store.rules.count(include_retired=True) == 3


def test_psi_for_a_fresh_memory_is_defined():
    scores = psi_scores([_rule("x", ["legs"]), _rule("y", [])], ["legs"], 1.0)
    assert np.all(np.isfinite(scores)) and scores.tolist() == [1.0, 0.0]


def test_record_use_arithmetic(tmp_path):
    store = _store_with(tmp_path / "m", [_rule("a", []), _rule("b", []), _rule("c", [], used=3, success=1)])
    store.rules.record_use(["a", "b", "a"], success=True)
    store.rules.record_use(["b", "c"], success=False)
    got = {r.rule_id: (r.n_used, r.n_success) for r in MemoryStore(tmp_path / "m").rules.all()}
    assert got == {"a": (2, 2), "b": (2, 1), "c": (4, 1)}
    assert store.rules.get(["b"])[0].success_rate == 0.5
    with pytest.raises(InputError, match="unknown rule"):
        store.rules.record_use(["nope"], success=True)
    with pytest.raises(InputError, match="already exists"):
        store.rules.add([_rule("a", [])], embeddings=_rand_vecs(1, 384))


# ---- prototypes ----------------------------------------------------------------------------------------
def test_pose_embedding_is_invariant_to_placement_but_not_to_pose():
    poses = _poses()
    e = pose_embedding(np.stack(list(poses.values())))
    assert e.shape == (5, POSE_DIM) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    exact = pose_embedding(_disguise(poses["squat"], seed=1, noise_m=0.0))[0]
    assert float(exact @ e[2]) == pytest.approx(1.0, abs=1e-5)
    # the camera (y down) frame and the body (y up) frame give the same feature
    flip = poses["walk"] @ np.diag([1.0, -1.0, -1.0])
    assert float(pose_embedding(flip)[0] @ e[4]) == pytest.approx(1.0, abs=1e-5)
    # left arm raised is not right arm raised (canonicalisation keeps left and right apart)
    right_up = _bend(_T, [19, 21, 23], 17, "z", -80)
    assert float(pose_embedding(right_up)[0] @ e[3]) < 0.9
    with pytest.raises(InputError, match="shape"):
        pose_embedding(np.zeros((3, 17, 3)))


def test_prototype_query_returns_the_nearest_pose(tmp_path):
    store = MemoryStore(tmp_path / "m", seed_starter=False)
    poses = _poses()
    names = list(poses)
    store.prototypes.add(
        [
            _proto(
                n,
                pose_embedding(poses[n])[0],
                overall=float(i + 3),
                rationale=f"a {n}",
                tags=["legs"],
                source=f"train/{i}#h0",
                error_mm=10.0 * i,
            )
            for i, n in enumerate(names)
        ]
    )
    assert store.prototypes.count() == len(names)
    queries = np.stack([_disguise(poses[n], seed=10 + i) for i, n in enumerate(names)])
    hits = store.prototypes.query(pose_embedding(queries), k=3)
    for n, row in zip(names, hits, strict=True):
        assert row[0][0].proto_id == n, (n, [(p.proto_id, s) for p, s in row])
        assert row[0][1] > 0.99 and row[1][1] < row[0][1] - 0.02
        assert row[0][0].rationale == f"a {n}" and row[0][0].tags == ["legs"]
    row = store.prototypes.query(pose_embedding(poses["squat"]), k=5)[0]
    squat_hits = {p.proto_id: s for p, s in row}
    assert squat_hits["tpose"] < 0.95  # a different pose is not a neighbour
    best = hits[names.index("walk")][0][0]
    assert best.error_mm == pytest.approx(40.0) and best.overall == 7.0 and len(best.embedding) == POSE_DIM
    assert store.prototypes.query_joints(poses["arm_up"], k=1)[0][0][0].proto_id == "arm_up"
    with pytest.raises(InputError, match="shape"):
        store.prototypes.query(np.zeros((1, 10)))
    with pytest.raises(InputError, match="outside"):
        store.prototypes.add([_proto("bad", pose_embedding(_T)[0], overall=11.0)])


def test_empty_prototype_memory_returns_empty_lists(tmp_path):
    store = MemoryStore(tmp_path / "m", seed_starter=False)
    assert store.prototypes.query(pose_embedding(_T), k=5) == [[]]


# ---- version, frozen memory -----------------------------------------------------------------------------
def test_version_is_stable_order_independent_and_changes_on_write(tmp_path):
    rules = [_rule("a", ["legs"]), _rule("b", [])]
    embs = _rand_vecs(4, POSE_DIM, seed=3)
    s1 = _store_with(tmp_path / "one", rules)
    s1.prototypes.add([_proto(f"p{i}", embs[i]) for i in range(4)])
    s2 = _store_with(tmp_path / "two", rules[::-1])
    s2.prototypes.add([_proto(f"p{i}", embs[i]) for i in (3, 1, 2)])
    s2.prototypes.add([_proto("p0", embs[0])])
    v = s1.version()
    assert v == s2.version() == MemoryStore(tmp_path / "one").version()
    code = f"from hmrcritic.memory import MemoryStore as M; print(M({str(tmp_path / 'one')!r}).version())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == v  # another process computes the same hash
    # the prototype part is a running sum kept in collection metadata; a stale sum is detected/recomputed
    assert s1.verify_version()
    col = s1._collection("episodic_prototypes")
    meta = dict(col.metadata)
    col.modify(metadata={**meta, "content_sum": "0" * 32})
    s1.refresh()
    assert not s1.verify_version() and s1.version() != v
    col = s1._collection("episodic_prototypes")
    col.modify(metadata={**meta, "content_sum": "0" * 32, "content_count": 99})  # count mismatch → scan
    s1.refresh()
    assert s1.version() == v
    s1._collection("episodic_prototypes").modify(metadata=meta)
    s1.refresh()
    s1.rules.record_use(["a"], success=False)
    v2 = s1.version()
    assert v2 != v
    s1.prototypes.add([_proto("p9", embs[0], overall=2.0)])
    assert s1.version() not in (v, v2)


def test_read_only_refuses_writes_and_leaves_content_unchanged(tmp_path):
    path = tmp_path / "frozen"
    store = _store_with(path, [_rule("a", ["legs"])])
    store.prototypes.add([_proto("p0", pose_embedding(_T)[0])])
    before = store.version()
    frozen = MemoryStore(path, read_only=True)
    for write in (
        lambda: frozen.rules.record_use(["a"], True),
        lambda: frozen.rules.add([_rule("z", [])], embeddings=_rand_vecs(1, 384)),
        lambda: frozen.prototypes.add([_proto("p1", pose_embedding(_T)[0])]),
        lambda: frozen.reset(),
    ):
        with pytest.raises(ReadOnlyMemoryError, match="read-only"):
            write()
    assert frozen.rules.retrieve(["legs"])[0].rule_id == "a"
    assert frozen.prototypes.query(pose_embedding(_T), k=1)[0][0][0].proto_id == "p0"
    # Chroma rewrites bytes of its SQLite/HNSW files on every open, even read-only (documented in
    # store.py), so "unchanged" is the content version, checked here from a fresh process.
    code = f"from hmrcritic.memory import MemoryStore as M; print(M({str(path)!r}, read_only=True).version())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == before == frozen.version()
    with pytest.raises(AssetError, match="no memory"):
        MemoryStore(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()


def test_embedding_mismatch_on_open_is_a_clear_error(tmp_path):
    import chromadb
    from chromadb.api.shared_system_client import SharedSystemClient

    path = tmp_path / "m"
    MemoryStore(path, seed_starter=False)
    SharedSystemClient.clear_system_cache()
    client = chromadb.PersistentClient(str(path.resolve()))
    col = client.get_collection("episodic_prototypes", embedding_function=None)
    col.modify(metadata={"embedding_id": "some-other-embedder", "embedding_dim": 512})
    SharedSystemClient.clear_system_cache()
    with pytest.raises(AssetError, match=r"dim 512.*memory reset"):
        MemoryStore(path)
    from hmrcritic.cli import main

    assert main(["memory", "reset", "--yes", "--memory-dir", str(path)]) == 0
    assert MemoryStore(path).rules.count() == len(STARTER_RULES)


# ---- export / import ------------------------------------------------------------------------------------
def test_export_reset_import_round_trip(tmp_path):
    path = tmp_path / "m"
    store = MemoryStore(path)
    rid = STARTER_RULES[0].rule_id
    store.rules.record_use([rid, rid], success=True)
    store.rules.add([_rule("user-1", ["spine"], used=2, success=1)], embeddings=_rand_vecs(1, 384))
    poses = _poses()
    store.prototypes.add([_proto(n, pose_embedding(p)[0], rationale=n) for n, p in poses.items()])
    before = store.version()
    out = tmp_path / "export.json"
    store.export_json(out)
    data = json.loads(out.read_text())
    assert len(data["rules"]) == len(STARTER_RULES) + 1 and len(data["prototypes"]) == len(poses)
    assert len(data["rules"][0]["embedding"]) == 384 and len(data["prototypes"][0]["embedding"]) == POSE_DIM
    store.reset()
    assert store.version() != before and store.prototypes.count() == 0
    counts = store.import_json(out)
    assert counts["rules_added"] == 1 and counts["rules_updated"] == 1 and counts["prototypes"] == len(poses)
    assert store.version() == before
    assert store.prototypes.query_joints(poses["squat"], k=1)[0][0][0].proto_id == "squat"
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(InputError, match="not an hmrcritic memory export"):
        store.import_json(bad)
    with pytest.raises(InputError, match="no file"):
        store.import_json(tmp_path / "absent.json")


@pytest.mark.parametrize("spoil", ["proto_overall", "proto_embedding", "rule_counts", "duplicate_rule"])
def test_an_import_with_one_bad_record_imports_nothing(tmp_path, spoil):
    """A bad record late in the file must not leave the rules before it merged: all or nothing."""
    store = MemoryStore(tmp_path / "m")
    store.prototypes.add([_proto("p0", pose_embedding(_poses()["squat"])[0])])
    out = tmp_path / "export.json"
    store.export_json(out)
    data = json.loads(out.read_text())
    data["rules"].append({**data["rules"][0], "rule_id": "brand-new", "text": "a new rule", "embedding": None})
    if spoil == "proto_overall":
        data["prototypes"][-1]["overall"] = 11.0
    elif spoil == "proto_embedding":
        data["prototypes"][-1]["embedding"] = data["prototypes"][-1]["embedding"][:5]
    elif spoil == "rule_counts":
        data["rules"][0].update(n_used=5, n_success=9)
    else:
        data["rules"].append(dict(data["rules"][-1]))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    before = store.version()
    with pytest.raises(InputError, match="nothing was imported"):
        store.import_json(bad, overwrite=True)
    assert store.version() == before
    assert "brand-new" not in {r.rule_id for r in store.rules.all(include_retired=True)}


def test_reset_forgets_what_exploration_recorded(tmp_path):
    """A reset memory has explored nothing: a kept progress record would make the next exploration skip every
    round as already done, into the empty memory."""
    from hmrcritic.memory.store import EXPLORE_FILES

    store = MemoryStore(tmp_path / "m")
    for name in EXPLORE_FILES:
        (tmp_path / "m" / name).write_text("{}")
    store.reset()
    assert not any((tmp_path / "m" / name).exists() for name in EXPLORE_FILES)


def test_a_refused_reset_deletes_nothing(tmp_path, capsys, memory_held_elsewhere):
    """`memory reset` while an exploration holds the memory fails at once — before dropping anything."""
    from hmrcritic.cli import main

    path = tmp_path / "m"
    n_rules = MemoryStore(path).rules.count()
    with memory_held_elsewhere(path):
        assert main(["memory", "reset", "--yes", "--no-seed", "--memory-dir", str(path)]) == 2
        assert "busy with an exploration" in capsys.readouterr().err
    assert MemoryStore(path).rules.count() == n_rules > 0


# ---- concurrency ----------------------------------------------------------------------------------------
_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from hmrcritic.memory import MemoryStore, Prototype
    path, tag, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = MemoryStore(path, seed_starter=False)
    rng = np.random.default_rng(abs(hash(tag)) % 1000)
    for b in range(0, n, batch):
        v = rng.normal(size=(batch, 69)); v /= np.linalg.norm(v, axis=1, keepdims=True)
        store.prototypes.add([Prototype(proto_id=f"{tag}-{b + i}", embedding=v[i].tolist(), overall=5,
                              motion_structure=5, physical_feasibility=5, image_alignment=5)
                              for i in range(batch)])
        store.rules.record_use(["shared"], success=(b // batch) % 2 == 0)
""")


@pytest.mark.slow
def test_two_processes_writing_lose_nothing(tmp_path):
    path = tmp_path / "m"
    _store_with(path, [_rule("shared", [])])
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    n, batch = 200, 10
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), tag, str(n), str(batch)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    store = MemoryStore(path)
    assert store.prototypes.count() == 2 * n
    shared = store.rules.get(["shared"])[0]
    assert (shared.n_used, shared.n_success) == (2 * n // batch, n // batch)
    # the vector index is intact: every stored vector finds itself
    got = store._get_all("episodic_prototypes", include=["embeddings"])
    ids, vecs = got["ids"], np.asarray(got["embeddings"])
    hits = store.prototypes.query(vecs, k=1, include_embeddings=False)
    assert [row[0][0].proto_id for row in hits] == ids


# ---- text embeddings (loads all-MiniLM-L6-v2 once) -------------------------------------------------------
@pytest.mark.slow
def test_text_search_merge_and_shipped_starter_vectors(tmp_path):
    from hmrcritic.memory.embeddings import embed_text
    from hmrcritic.memory.starter_rules import starter_embeddings, starter_rules

    rules = starter_rules()
    cached = starter_embeddings(rules)
    assert cached is not None
    fresh = embed_text([r.text for r in rules])
    assert np.min(np.sum(cached * fresh, axis=1)) > 0.999  # the shipped vectors are what the model computes
    store = MemoryStore(tmp_path / "m")
    hits = store.rules.search("the knee is bent backwards", k=3)
    assert hits[0][0].tags and "hyperextension" in hits[0][0].tags
    ids = store.rules.add(
        [
            Rule(
                rule_id="",
                text="Feet sink more than 3 cm below the ground plane → take off 3 points.",
                tags=["grounding"],
                n_used=3,
                n_success=2,
                origin="mined",
            ),
            Rule(
                rule_id="",
                text="A hand passes through the chest → take off 4 points.",
                tags=["penetration"],
                origin="mined",
            ),
        ]
    )
    assert ids[0].startswith("rule-")
    again = Rule(rule_id="", text=store.rules.get([ids[0]])[0].text, origin="mined")
    assert store.rules.add([again]) == [ids[0]]  # same text → same id, not stored twice
    merged = store.rules.merge_near_duplicates(threshold=0.9)
    pairs = dict((m, k) for k, m in merged)
    assert pairs.get("starter-floor-penetration") == ids[0]  # the more-used paraphrase absorbed the starter
    # mild/severe pairs read alike (cosine > 0.9) but have different thresholds: never merged
    assert "starter-keypoints-severe" not in pairs and "starter-keypoints-mild" not in pairs
    kept = store.rules.get([ids[0]])[0]
    assert kept.n_used == 3 and store.rules.get(["starter-floor-penetration"])[0].retired
    assert kept.condition is not None and kept.condition.measure == "floor_penetration_mm"  # adopted
    assert ids[1] not in pairs and not store.rules.get([ids[1]])[0].retired
    top = store.rules.retrieve([], k=3, query_text="limb through the torso")
    assert any("penetration" in r.tags for r in top)


# ---- CLI -----------------------------------------------------------------------------------------------
def test_cli_stats_rules_export_import_reset(tmp_path, capsys):
    from hmrcritic.cli import main

    path = tmp_path / "m"
    d = ["--memory-dir", str(path)]
    assert main(["memory", "reset", "--yes", *d]) == 0
    capsys.readouterr()
    assert main(["memory", "stats", "--json", *d]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["rules"] == len(STARTER_RULES) and st["prototypes"] == 0 and st["read_only"] is True
    MemoryStore(path).rules.record_use(["starter-prior"], success=False)
    assert main(["memory", "rules", "--json", *d]) == 0
    rows = json.loads(capsys.readouterr().out)
    psis = [r["psi"] for r in rows]
    assert psis == sorted(psis, reverse=True) and rows[-1]["rule_id"] == "starter-prior"
    assert main(["memory", "rules", "-k", "3", *d]) == 0 and "starter-asymmetry" in capsys.readouterr().out
    out = tmp_path / "e.json"
    assert main(["memory", "export", str(out), *d]) == 0 and out.exists()
    assert main(["memory", "reset", "--yes", "--no-seed", *d]) == 0
    assert MemoryStore(path).rules.count() == 0
    assert main(["memory", "import", str(out), "--json", *d]) == 0
    capsys.readouterr()
    assert MemoryStore(path).rules.get(["starter-prior"])[0].n_used == 1
    # a --memory-dir without a memory (a typo) is an error, and nothing is created there
    assert main(["memory", "stats", "--memory-dir", str(tmp_path / "nothing-here"), "--json"]) == 2
    assert "no memory at" in capsys.readouterr().err and not (tmp_path / "nothing-here").exists()
    assert main(["memory", "import", str(tmp_path / "absent.json"), *d]) == 2
    assert "no file" in capsys.readouterr().err


# ---- Chroma server (HttpClient) ------------------------------------------------------------------------
def test_http_client_backend(chroma_url, tmp_path):
    store = MemoryStore(tmp_path / "lockdir", chroma_url=chroma_url)
    assert store.stats()["backend"] == "http" and store.rules.count() == len(STARTER_RULES)
    poses = _poses()
    store.prototypes.add([_proto(n, pose_embedding(p)[0]) for n, p in poses.items()])
    assert store.prototypes.query_joints(_disguise(poses["walk"], 5), k=1)[0][0][0].proto_id == "walk"
    other = MemoryStore(tmp_path / "lockdir", chroma_url=chroma_url, read_only=True)
    assert other.version() == store.version()
    store.rules.record_use(["starter-prior"], success=True)
    assert other.rules.get(["starter-prior"])[0].n_used in (0, 1)  # cached view; refresh() re-reads
    other.refresh()
    assert other.rules.get(["starter-prior"])[0].n_used == 1


def test_threads_reading_while_one_writes(tmp_path):
    """A write batch reopens the process's Chroma system; readers in other threads must not break."""
    from concurrent.futures import ThreadPoolExecutor

    store = _store_with(tmp_path / "m", [_rule("a", ["legs"])])
    poses = _poses()
    store.prototypes.add([_proto(n, pose_embedding(p)[0]) for n, p in poses.items()])
    reader = MemoryStore(tmp_path / "m")  # a second store on the same path, as the agent's workers might hold

    def write(i: int) -> None:
        store.prototypes.add([_proto(f"w{i}", _rand_vecs(1, POSE_DIM, seed=i)[0])])
        store.rules.record_use(["a", "ghost"], success=True, ignore_unknown=True)

    def read(i: int) -> str:
        s = reader if i % 2 else store
        assert s.rules.retrieve(["legs"], k=1)[0].rule_id == "a"
        return s.prototypes.query_joints(poses["squat"], k=1)[0][0][0].proto_id

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(write if i % 3 == 0 else read, i) for i in range(45)]
        results = [f.result() for f in futures]
    assert all(r == "squat" for r in results if r is not None)
    assert store.prototypes.count() == len(poses) + 15
    assert reader.rules.get(["a"])[0].n_used == 15 and reader.version() == store.version()
