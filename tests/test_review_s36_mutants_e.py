"""Review s36 (mutants, part e): tests that kill mutants of memory/maintenance.py, memory/prototypes.py and
memory/embeddings.py which the suite let live. Every expected value is worked out by hand from the documented
behaviour (module docstrings, docs/CONTRACTS.md), never copied from the code's output."""

from __future__ import annotations

import numpy as np
import pytest

from hmrcritic.errors import InputError
from hmrcritic.memory.embeddings import POSE_DIM, TEXT_DIM, embed_text, pose_embedding
from hmrcritic.memory.maintenance import plan_merges, same_condition
from hmrcritic.memory.prototypes import PrototypeMemory
from hmrcritic.memory.schema import Prototype, Rule, RuleCondition
from hmrcritic.memory.store import MemoryStore


def _rule(rid: str, *, thr: float | None = 10.0, cmp: str = ">", n_used: int = 0, n_success: int = 0,
          retired: bool = False) -> Rule:
    cond = None if thr is None else RuleCondition(measure="penetration_mm", comparator=cmp, threshold=thr,
                                                  points=2.0)
    return Rule(rule_id=rid, text=f"rule {rid}", n_used=n_used, n_success=n_success, condition=cond,
                retired=retired)


# ---- memory/maintenance.py ----------------------------------------------------------------------------------


def test_opposite_comparators_on_one_threshold_are_not_the_same_condition():
    # "penetration > 10" and "penetration < 10" fire on disjoint poses: merging them would keep one and
    # retire its opposite (module docstring: same measure *and comparator*)
    assert not same_condition(_rule("a", cmp=">"), _rule("b", cmp="<"))
    assert plan_merges([_rule("a", cmp=">", n_used=3), _rule("b", cmp="<")]).merged == []


def test_text_similarity_is_a_cosine_of_the_vectors_whatever_their_length():
    # two prose rules; cosine([0.5, 0], [0.5, 0.01]) ≈ 0.9998 > 0.9: duplicates, though their dot product is 0.25
    plan = plan_merges([_rule("a", thr=None, n_used=2), _rule("b", thr=None)],
                       {"a": np.array([0.5, 0.0]), "b": np.array([0.5, 0.01])})
    assert plan.merged == [("a", "b")]
    # cosine([3, 0], [0.5, 3]) = 1.5 / (3 · 3.041) ≈ 0.16: not duplicates, though their dot product is 1.5
    plan = plan_merges([_rule("a", thr=None, n_used=2), _rule("b", thr=None)],
                       {"a": np.array([3.0, 0.0]), "b": np.array([0.5, 3.0])})
    assert plan.merged == []


def test_opposite_text_vectors_are_not_duplicates():
    # cosine −1 is as unlike as two texts get; only a similarity *above* 0.9 merges
    plan = plan_merges([_rule("a", thr=None, n_used=2), _rule("b", thr=None)],
                       {"a": np.array([1.0, 0.0]), "b": np.array([-1.0, 0.0])})
    assert plan.merged == []


def test_a_retired_rule_is_never_merged_again():
    # merging plans over *active* rules: a retired twin was already merged or retired and keeps its history
    plan = plan_merges([_rule("a", n_used=5), _rule("b", n_used=9, retired=True)])
    assert plan.merged == [] and plan.updates == {}


def test_a_rule_is_absorbed_into_one_cluster_only():
    # a (10, 3 uses) and b (11.6, 2 uses) are apart: tol = 0.1 · 11.6 = 1.16 < 1.6. c (10.8, 1 use) is within
    # tolerance of both (1.08 ≥ 0.8 and 1.16 ≥ 0.8). The most used, a, absorbs c first; c must not then be
    # merged into b as well (its one use would be counted twice: 3+1 and 2+1 of 6 uses in all)
    plan = plan_merges([_rule("a", thr=10.0, n_used=3), _rule("b", thr=11.6, n_used=2),
                        _rule("c", thr=10.8, n_used=1)])
    assert plan.merged == [("a", "c")]
    assert plan.updates["a"].n_used == 4
    assert "b" not in plan.updates


# ---- memory/prototypes.py -----------------------------------------------------------------------------------


def _proto(pid: str, *, source: str = "", seed: int = 0) -> Prototype:
    v = np.random.default_rng(seed).normal(size=POSE_DIM).astype(np.float32)
    return Prototype(proto_id=pid, embedding=v.tolist(), overall=5.0, motion_structure=5.0,
                     physical_feasibility=5.0, image_alignment=5.0, source=source)


@pytest.fixture()
def store(tmp_path):
    with MemoryStore(tmp_path / "mem", chroma_url="") as s:
        yield s


def test_derived_ids_tell_apart_two_sources_with_the_same_pose(store):
    # an empty proto_id is "derived from source + embedding": the same pose seen in two training groups is two
    # prototypes, not one replacing the other
    ids = store.prototypes.add([_proto("", source="train/1#h0"), _proto("", source="train/2#h0")])
    assert len(set(ids)) == 2
    assert store.prototypes.count() == 2


def test_get_answers_in_the_order_asked(store):
    store.prototypes.add([_proto("a", seed=1), _proto("b", seed=2), _proto("c", seed=3)])
    assert [p.proto_id for p in store.prototypes.get(["c", "a", "b"])] == ["c", "a", "b"]


def test_query_answers_cosine_similarity_most_similar_first(store):
    # a query equal to a stored vector has similarity 1; its negation has similarity −1 (cosine space)
    p = _proto("p", seed=4)
    q = _proto("q", seed=5)
    store.prototypes.add([p, q])
    v = np.asarray(p.embedding, np.float32)
    (row,) = store.prototypes.query(v, k=2)
    assert row[0][0].proto_id == "p"
    assert row[0][1] == pytest.approx(1.0, abs=1e-5)
    (row,) = store.prototypes.query(-v, k=2)
    assert row[-1][0].proto_id == "p" and row[-1][1] == pytest.approx(-1.0, abs=1e-5)


def test_prototype_tags_are_normalised_like_rule_tags(store):
    store.prototypes.add([_proto("p").model_copy(update={"tags": [" Occlusion", "not-a-tag", "occlusion"]})])
    assert store.prototypes.get(["p"])[0].tags == ["occlusion"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_check_refuses_an_embedding_that_is_not_finite(bad):
    # "Embeddings must be pose_embedding vectors (POSE_DIM long, finite)": Chroma would store a NaN vector and
    # answer every later query with NaN similarities
    v = _proto("p").embedding
    v[3] = bad
    with pytest.raises(InputError, match="finite"):
        PrototypeMemory.check([_proto("p").model_copy(update={"embedding": v})])


def test_export_lists_prototypes_by_id_whatever_the_write_order(store):
    # an export is compared and diffed as a file: the same memory must export the same bytes
    store.prototypes.add([_proto("c", seed=1)])
    store.prototypes.add([_proto("a", seed=2), _proto("b", seed=3)])
    assert [r["proto_id"] for r in store.prototypes.export_records()] == ["a", "b", "c"]


def test_check_accepts_scores_on_the_scale_ends():
    p = _proto("p").model_copy(update={"overall": 0.0, "image_alignment": 10.0})
    assert PrototypeMemory.check([p])[0] == ["p"]


# ---- memory/embeddings.py -----------------------------------------------------------------------------------


def _canonical_pose() -> np.ndarray:
    """24 SMPL joints already in the body frame the docstring describes: pelvis at the origin, neck on +y (up),
    left-minus-right of hips plus shoulders along +x (left), so forward = left × up = +z and the canonical
    rotation is the identity. The hips and shoulders are twisted against each other (their sum, not the hips
    alone, points along x) and the hips tilt in y (the lateral must be made orthogonal to up)."""
    j = np.random.default_rng(7).normal(size=(24, 3))
    j[0] = 0.0
    j[12] = [0.0, 5.0, 0.0]
    j[1], j[2] = [1.0, 0.3, -0.5], [-1.0, -0.3, 0.5]  # hips: left − right = (2, 0.6, −1)
    j[16], j[17] = [0.0, 4.5, 0.5], [0.0, 4.5, -0.5]  # shoulders: left − right = (0, 0, 1)
    return j  # lateral = (2, 0.6, 0); orthogonal to up: (2, 0, 0)


def _expected(j: np.ndarray) -> np.ndarray:
    rest = j[1:].reshape(-1)
    return rest / np.linalg.norm(rest)


def test_a_pose_in_the_canonical_frame_embeds_as_its_unit_joint_vector():
    j = _canonical_pose()
    np.testing.assert_allclose(pose_embedding(j)[0], _expected(j), atol=1e-6)


def test_translation_rotation_and_scale_do_not_change_the_embedding():
    j = _canonical_pose()
    c, s = np.cos(0.7), np.sin(0.7)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    moved = 2.5 * j @ rot.T + np.array([3.0, -1.0, 8.0])
    np.testing.assert_allclose(pose_embedding(moved)[0], _expected(j), atol=1e-5)


def test_an_explicit_up_replaces_the_torso_axis():
    # tilt the neck: with up = +y given, the frame is still the identity (lateral along x), so the feature is
    # the joints themselves; the torso axis would have rotated the frame
    j = _canonical_pose()
    j[12] = [1.5, 5.0, 0.0]
    np.testing.assert_allclose(pose_embedding(j, up=(0.0, 1.0, 0.0))[0], _expected(j), atol=1e-6)
    assert not np.allclose(pose_embedding(j)[0], _expected(j), atol=1e-3)


def test_a_degenerate_pose_embeds_to_finite_numbers():
    # every joint on one point (a collapsed fit): no axis can be found, but the feature must stay finite —
    # a NaN vector is refused by every prototype add and query
    out = pose_embedding(np.ones((24, 3)))
    assert out.shape == (1, POSE_DIM) and np.all(np.isfinite(out))


def test_one_string_is_one_text_and_a_lone_surrogate_is_embedded_as_the_replacement_character():
    # embed_text's docstring: a single string is one text, shape (1, 384), not one vector per character; a lone
    # surrogate is embedded as U+FFFD instead of failing the tokenizer
    one = embed_text("knee bent backwards")
    assert one.shape == (1, TEXT_DIM)
    np.testing.assert_allclose(one, embed_text(["knee bent backwards"]), atol=1e-6)
    np.testing.assert_allclose(embed_text(["a \udcff b"]), embed_text(["a \ufffd b"]), atol=1e-6)
