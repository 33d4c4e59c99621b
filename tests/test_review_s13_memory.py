"""Review s13 (memory): embeddings, prototype retrieval, schema validation, score calibration and the pose prior
on degenerate or malformed input. Valid input keeps its numbers; these pin the invalid-input behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hmrcritic.agent.calibration import fit_calibration
from hmrcritic.agent.prior import fit_gmm, pose_features
from hmrcritic.errors import InputError
from hmrcritic.memory import POSE_DIM, MemoryStore, Prototype, Rule, RuleCondition, pose_embedding
from hmrcritic.memory.embeddings import TEXT_DIM, embed_text
from hmrcritic.memory.schema import ScoreCalibration


def _joints(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=0.3, size=(n, 24, 3))


# ---- text embedding ----------------------------------------------------------------------------------------
def test_embed_text_single_string_is_one_text():
    """A bare string used to be iterated: one vector per character ("hello" → 5 rows)."""
    one = embed_text("hello world")
    assert one.shape == (1, TEXT_DIM)
    np.testing.assert_allclose(one, embed_text(["hello world"]), atol=1e-6)


def test_embed_text_batch_matches_single_and_edge_texts_are_unit():
    texts = ["knee bent backwards", "", "é 日本語 🙂", "x " * 3000]
    batch = embed_text(texts)
    single = np.concatenate([embed_text([t]) for t in texts])
    assert batch.shape == (4, TEXT_DIM) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embed_text(texts[:1]), embed_text(texts[:1]))  # deterministic


# ---- pose embedding ----------------------------------------------------------------------------------------
def test_pose_embedding_invariances():
    from scipy.spatial.transform import Rotation

    j = _joints(3)
    rot = Rotation.random(random_state=1).as_matrix()
    e0 = pose_embedding(j)
    np.testing.assert_allclose(pose_embedding(j @ rot.T * 2.5 + [1.0, 2.0, 3.0]), e0, atol=1e-6)
    np.testing.assert_allclose(pose_embedding(torch.tensor(j[1])), e0[1:2], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(e0, axis=1), 1.0, atol=1e-6)


def test_pose_embedding_empty_batch_gives_no_vectors():
    """(0, 24, 3) used to raise a bare ValueError from numpy's reshape."""
    out = pose_embedding(np.zeros((0, 24, 3)))
    assert out.shape == (0, POSE_DIM) and out.dtype == np.float32


@pytest.mark.parametrize("up", [(0.0, -1.0), np.tile([0.0, -1.0, 0.0], (2, 1)), (0.0, np.nan, 0.0)])
def test_pose_embedding_rejects_malformed_up(up):
    """A wrong-shaped ``up`` used to raise numpy's broadcast/reshape ValueError; a NaN one gave NaN vectors."""
    with pytest.raises(InputError, match="up must be"):
        pose_embedding(_joints(3), up=up)


# ---- prototype retrieval -----------------------------------------------------------------------------------
def _proto(i: int, emb) -> Prototype:
    return Prototype(proto_id=f"p{i}", embedding=[float(x) for x in emb], overall=5.0, motion_structure=5.0,
                     physical_feasibility=5.0, image_alignment=5.0)


def test_prototype_query_rejects_non_finite_vector(tmp_path):
    """A NaN query vector used to come back as neighbours with NaN similarity."""
    store = MemoryStore(tmp_path / "m", seed_starter=False)
    e = pose_embedding(_joints(3))
    store.prototypes.add([_proto(i, v) for i, v in enumerate(e)])
    hits = store.prototypes.query(e[0], k=50)[0]  # k above the collection size: all of them, best first
    assert [p.proto_id for p, _ in hits][0] == "p0" and len(hits) == 3
    assert store.prototypes.query(np.zeros((0, POSE_DIM)), k=2) == []
    with pytest.raises(InputError, match="NaN"):
        store.prototypes.query(np.full(POSE_DIM, np.nan), k=2)


# ---- schema ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{"threshold": float("nan")}, {"points": float("inf")}, {"per": float("inf")}])
def test_rule_condition_rejects_non_finite_numbers(kw):
    base = {"measure": "reproj_rel", "comparator": ">", "threshold": 0.1, "points": 2.0}
    with pytest.raises(ValueError, match="finite"):
        RuleCondition(**{**base, **kw})


def test_import_with_nan_threshold_is_refused_and_memory_stays_readable(tmp_path):
    """Chroma keeps a condition as JSON, where NaN becomes null: an imported NaN threshold was stored and then
    every read of the memory's rules raised a pydantic ValidationError."""
    src = MemoryStore(tmp_path / "src", seed_starter=False)
    rule = Rule(rule_id="user-1", text="Projected joints far off the keypoints.", origin="user",
                condition=RuleCondition(measure="reproj_rel", comparator=">", threshold=0.1, points=2.0))
    src.rules.add([rule], embeddings=np.full((1, TEXT_DIM), TEXT_DIM ** -0.5, np.float32))
    src.export_json(tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    data["rules"][0]["condition"]["threshold"] = float("nan")
    (tmp_path / "m.json").write_text(json.dumps(data))  # Python's json writes NaN and reads it back
    dst = MemoryStore(tmp_path / "dst", seed_starter=False)
    with pytest.raises(InputError, match="malformed record rules"):
        dst.import_json(tmp_path / "m.json")
    assert dst.rules.all(include_retired=True) == []


def test_calibration_rejects_non_finite_numbers():
    """A NaN intercept (e.g. from an import) was accepted and then unreadable once stored."""
    with pytest.raises(ValueError, match="finite"):
        ScoreCalibration(slope=1.0, intercept=float("nan"), groups=1, hypotheses=2, pearson_before=0.1,
                         pearson_after=0.1)


# ---- score calibration -------------------------------------------------------------------------------------
@pytest.mark.parametrize("score,n", [(3.7, 100), (7.3, 3), (9.99, 1000)])
def test_fit_calibration_equal_scores_do_not_vary(score, n):
    """n equal scores leave np.var ~1e-32 (not 0), so the fit either made up a slope from rounding noise or
    claimed the critic ranks backwards."""
    errors = np.random.default_rng(0).uniform(10, 100, n)
    with pytest.raises(InputError, match="do not vary"):
        fit_calibration([np.full(n, score)], [errors])


# ---- pose prior --------------------------------------------------------------------------------------------
def test_pose_features_empty_batch():
    """(0, 69) used to raise torch's "cannot reshape tensor of 0 elements into shape [0, -1]"."""
    assert tuple(pose_features(np.zeros((0, 69), np.float32)).shape) == (0, 138)


def test_fit_gmm_with_fewer_distinct_poses_than_components():
    """k-means++ seeding divided 0 by 0 once every distinct pose was a centre (torch.multinomial raised)."""
    poses = np.zeros((600, 69), np.float32)  # 600 poses → 2 components asked, 1 distinct pose
    prior = fit_gmm(pose_features(poses))
    assert np.all(np.isfinite(prior.nll(poses[:2])))
