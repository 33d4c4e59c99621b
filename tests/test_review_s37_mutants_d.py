"""Mutation audit of hmrcritic/hmr/data.py (session 37, helper d): behaviour the synthetic data every figure is
measured on depends on, which the existing tests left open.

Each test is a constructed case whose answer follows from the module's docstrings, not the code's own output:
intrinsics and stored image size on a non-square image (every other test uses 256×256, where W and H are
interchangeable), the seed deciding the cameras too, splits with distinct seeds, chunking that does not reorder
scenes, the truncation / self-occlusion / face / minimum-visible rules of the corruption step on hand-placed points,
confidence dropping with the keypoint error, and a split's indexing across shard boundaries.
"""

from __future__ import annotations

import numpy as np
import pytest

from hmrcritic.hmr import data as D

W, H = 320, 192  # a non-square image: a swapped W/H shows only here


# ------------------------------------------------------------------------------------------- intrinsics
@pytest.fixture(scope="module")
def wide(body):
    """Clean scenes (focal_scale exactly 1, no noise or occluders) on a 320×192 image."""
    return D.make_scenes(6, 5, "clean", image_size=(W, H), body=body)


def test_intrinsics_on_a_non_square_image_centre_at_w_half_h_half_and_focal_max_side(wide):
    """``K`` is ``[[f, 0, W/2], [0, f, H/2], [0, 0, 1]]`` with f = focal_scale × max(W, H) (the clean preset's
    focal_scale is exactly 1, so f = 320); a swapped principal point or the smaller side moves every projection."""
    expected = np.array([[320.0, 0.0, 160.0], [0.0, 320.0, 96.0], [0.0, 0.0, 1.0]], np.float32)
    for K in wide["K"]:
        np.testing.assert_allclose(K, expected, atol=1e-4)


def test_the_stored_image_size_is_width_then_height(wide):
    """``image_size`` rows are ``[W, H]`` as given (Sample.image_size is (W, H) everywhere)."""
    assert wide["image_size"].tolist() == [[W, H]] * 6


def test_clean_keypoints_are_the_pinhole_projection_of_the_camera_frame_joints(wide):
    """u = f·x/z + W/2, v = f·y/z + H/2 for every SMPL-24 joint, written out by hand on the non-square image."""
    j = wide["joints3d"].astype(np.float64)
    u = 320.0 * j[..., 0] / j[..., 2] + W / 2
    v = 320.0 * j[..., 1] / j[..., 2] + H / 2
    sm = wide["smpl24_keypoints"]
    vis = sm[..., 2] > 0
    assert vis.mean() > 0.9
    np.testing.assert_allclose(sm[..., 0][vis], u[vis], atol=0.05)
    np.testing.assert_allclose(sm[..., 1][vis], v[vis], atol=0.05)


def test_truncation_on_a_non_square_image_uses_width_for_u_and_height_for_v(body):
    """Visible points lie in [0, W) × [0, H); on a wide image a point below the bottom edge (v ≥ H, but < W) is
    truncated. Scenes that fill the image and are pushed off-centre, so that some points leave it."""
    preset = {**D.PRESETS["clean"], "fill": (0.9, 0.95), "centre_jitter": 0.4}
    a = D.make_scenes(60, 13, preset, image_size=(W, H), body=body)
    kp, clean = a["keypoints"], a["keypoints_clean"]
    vis = kp[..., 2] > 0
    below = (clean[..., 1] >= H) & (clean[..., 1] < W) & (clean[..., 0] >= 0) & (clean[..., 0] < W)
    assert below.any()  # the case that tells the axes apart is there
    assert not vis[below].any()
    u, v = kp[..., 0][vis], kp[..., 1][vis]
    assert ((u >= 0) & (u < W) & (v >= 0) & (v < H)).all()


# ------------------------------------------------------------------------------------------- seeds, splits
def test_the_seed_decides_the_cameras_too(body):
    """A scene is deterministic per seed, cameras included: another seed must draw other cameras (the train
    preset's focal_scale is uniform in [0.8, 1.6], so the focal lengths differ), the same seed the same ones."""
    a, b, c = (D.make_scenes(4, s, "train", body=body) for s in (21, 21, 22))
    np.testing.assert_array_equal(a["K"], b["K"])
    assert not np.array_equal(a["K"][:, 0, 0], c["K"][:, 0, 0])


def test_chunking_does_not_reorder_scenes(body):
    """``chunk`` is a memory detail: the train split (20,000 scenes) is generated in chunks of 4,096, and scene i
    must keep pose i and its category whatever the chunk size."""
    one = D.make_scenes(6, 8, "clean", body=body)
    parts = D.make_scenes(6, 8, "clean", body=body, chunk=2)
    for k in ("body_pose", "betas", "category"):
        np.testing.assert_array_equal(parts[k], one[k])


def test_default_split_seeds_differ_so_train_and_test_hold_other_scenes(tmp_path, body):
    """``train`` and ``test`` share a preset and differ only by their fixed seeds: the same seed would make the
    held-out test split a copy of the training scenes. Same size, default seeds: no pose in both."""
    seeds = [SPLIT[1] for SPLIT in D.SPLITS.values()]
    assert len(set(seeds)) == len(seeds)
    tr = D.SceneSet(D.generate_split("train", tmp_path / "train", n=5, body=body, quiet=True))
    te = D.SceneSet(D.generate_split("test", tmp_path / "test", n=5, body=body, quiet=True))
    ptr, pte = tr.arrays(["body_pose"])["body_pose"], te.arrays(["body_pose"])["body_pose"]
    assert not any(np.array_equal(x, y) for x in ptr for y in pte)


def test_every_index_reads_its_own_scene_across_shard_boundaries(tmp_path, body):
    """Scene i of a sharded split is ``<split>-<i:06d>``, also at the first scene of each shard."""
    ss = D.SceneSet(D.generate_split("test", tmp_path / "test", n=5, shard_size=2, body=body, quiet=True))
    assert [ss[i].sample_id for i in range(5)] == [f"test-{i:06d}" for i in range(5)]
    assert [ss[i - 5].sample_id for i in range(5)] == [f"test-{i:06d}" for i in range(5)]


# ---------------------------------------------------------------------------- corruption on placed points
CLEAN = D.PRESETS["clean"]  # no noise, no outliers, no occluders: only the rule under test acts


def _placed(n=1):
    """17 COCO points well inside a 320×192 image, 2 m in front of the camera."""
    uv = np.tile(np.stack([np.linspace(100, 220, 17), np.linspace(60, 140, 17)], -1), (n, 1, 1))
    pts = np.zeros((n, 17, 3))
    pts[..., 0], pts[..., 1], pts[..., 2] = np.linspace(-0.3, 0.3, 17), np.linspace(-0.2, 0.2, 17), 2.0
    return uv, pts


def _corrupt(uv, pts, cfg=CLEAN, face=()):
    return D._corrupt(uv, pts, np.full(len(uv), 150.0), cfg, W, H, np.random.default_rng(0), D._LIMBS_COCO,
                      list(face))


def test_points_at_or_past_the_border_or_behind_the_camera_are_hidden_as_zeros():
    """Truncation: u ∈ [0, W) and v ∈ [0, H) are in the image (u = W is past it); a point behind the camera is never
    seen, wherever its projection falls. Hidden points are stored as [0, 0, 0]."""
    uv, pts = _placed()
    uv[0, 3] = (W, 50)  # exactly on the right border: pixel W does not exist
    uv[0, 4] = (50, H + 20)  # below the image, though v < W
    uv[0, 5] = (-0.5, 50)  # left of it
    pts[0, 6, 2] = -1.0  # behind the camera, projection inside the image
    out = _corrupt(uv, pts)
    hidden = [3, 4, 5, 6]
    assert (out[0, hidden] == 0).all()
    rest = [i for i in range(17) if i not in hidden]
    assert (out[0, rest, 2] > 0.5).all()
    np.testing.assert_array_equal(out[0, rest, :2], uv[0, rest])  # no noise in the clean preset


def test_a_joint_behind_the_torso_is_hidden_and_one_in_front_is_not():
    """Self-occlusion: the ray camera → joint passes through the torso (hip midpoint to shoulder midpoint) and the
    joint lies behind it. Torso 3 m away on the optical axis; a wrist 0.5 m behind it, the other 0.5 m in front."""
    uv, pts = _placed()
    pts[0, [11, 12, 5, 6]] = [[-0.1, 0.3, 3.0], [0.1, 0.3, 3.0], [-0.15, -0.3, 3.0], [0.15, -0.3, 3.0]]
    pts[0, 9] = [0.0, 0.0, 3.5]  # behind the torso, on the line of sight through it
    pts[0, 10] = [0.0, 0.05, 2.5]  # in front of it
    out = _corrupt(uv, pts, {**CLEAN, "self_occ_p": 1.0})
    assert (out[0, 9] == 0).all()
    assert out[0, 10, 2] > 0.5


def test_the_face_is_hidden_when_it_looks_away_and_seen_when_it_looks_at_the_camera():
    """Face occlusion: a face point clearly further from the camera than the ears' midpoint is hidden (the head
    turned away); nose and eyes nearer than the ears (facing the camera) stay visible, as do the ears."""
    cfg = {**CLEAN, "face_occ": True}
    uv, pts = _placed(2)
    pts[:, 3:5, 2] = 2.0  # ears
    pts[0, 0:3, 2] = 2.1  # sample 0: nose and eyes 10 cm behind the ears
    pts[1, 0:3, 2] = 1.9  # sample 1: 10 cm in front
    out = _corrupt(uv, pts, cfg, face=D._FACE_COCO)
    assert (out[0, 0:3] == 0).all() and (out[0, 3:5, 2] > 0.5).all()
    assert (out[1, 0:5, 2] > 0.5).all()


def test_occluders_that_would_hide_nearly_everything_are_dropped():
    """"Keep a usable minimum": a box occluder over the whole (tightly clustered) person would leave fewer than
    max(4, J // 3) points; then the occluders are dropped for that sample and every point in the image is seen."""
    n = 20
    uv, pts = _placed(n)
    uv[:] = np.array([160.0, 96.0]) + np.random.default_rng(1).uniform(-2, 2, (n, 17, 2))  # a 4 px cluster
    cfg = {**CLEAN, "box_p": 1.0, "boxes_max": 1}
    out = D._corrupt(uv, pts, np.full(n, 1000.0), cfg, W, H, np.random.default_rng(0), D._LIMBS_COCO, [])
    assert ((out[..., 2] > 0).sum(1) >= max(4, 17 // 3)).all()


def test_confidence_drops_with_the_keypoint_error():
    """"Pixel noise whose confidence drops with the error": over many noisy points, those moved furthest from their
    true position carry clearly lower confidence than those moved least."""
    n = 200
    uv, pts = _placed(n)
    out = _corrupt(uv, pts, {**CLEAN, "noise_frac": 0.03})
    err = np.linalg.norm(out[..., :2] - uv, axis=-1).ravel()
    conf = out[..., 2].ravel()
    assert (conf > 0).all()
    lo, hi = np.quantile(err, [0.25, 0.75])
    assert conf[err >= hi].mean() < conf[err <= lo].mean() - 0.05


# ------------------------------------------------------------------------------------------- a damaged split
def test_a_rendered_split_missing_one_image_is_refused(tmp_path, body):
    """``verify_split_files`` counts the rendered images against the manifest's ``n``: one image deleted of two
    leaves a sample with nothing to overlay, which must be named, not only a whole images folder gone. (A split
    marked rendered with two image files stands in for ``render_images=True``, whose renderer takes seconds.)"""
    from hmrcritic.errors import AssetError

    folder = D.generate_split("test", tmp_path / "test", n=2, body=body, quiet=True)
    manifest = {**D.SceneSet(folder).manifest, "images": True}
    (folder / "images").mkdir()
    for i in range(2):
        (folder / "images" / f"test-{i:06d}.png").write_bytes(b"")
    D.verify_split_files(manifest, folder)  # whole: accepted
    (folder / "images" / "test-000001.png").unlink()
    with pytest.raises(AssetError, match="1 of the split's 2 images"):
        D.verify_split_files(manifest, folder)
