"""Synthetic scenes, split files and user-input readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hmrcritic.errors import InputError
from hmrcritic.hmr import anatomy, camera
from hmrcritic.hmr import data as D


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory, body):
    root = tmp_path_factory.mktemp("splits")
    return {
        name: D.generate_split(name, root / name, n=120, shard_size=50, body=body, quiet=True)
        for name in ("test", "wild")
    }


def test_fast_keypoint_joints_equal_full_forward(body):
    g = torch.Generator().manual_seed(0)
    go, bp, be = (
        torch.randn(16, 3, generator=g),
        torch.randn(16, 69, generator=g) * 0.4,
        torch.randn(16, 10, generator=g),
    )
    out = body(go, bp, be)
    joints, coco = D.keypoint_joints(body, go, bp, be)
    assert torch.allclose(joints, out.joints, atol=1e-5)
    assert torch.allclose(coco, body.coco17(out), atol=1e-5)


def test_clean_scenes_reproject_exactly(body):
    a = D.make_scenes(64, 11, "clean", body=body)
    K = torch.tensor(a["K"])
    out = body(a["global_orient"], a["body_pose"], a["betas"], a["transl"])
    # Camera-frame labels are consistent with the body model ...
    assert torch.allclose(out.joints, torch.tensor(a["joints3d"]), atol=1e-4)
    # ... and keypoints are their projections (no noise in the clean preset).
    uv = camera.project(body.coco17(out), K).numpy()
    vis = a["keypoints"][..., 2] > 0
    assert vis.mean() > 0.99
    assert np.abs(uv - a["keypoints"][..., :2])[vis].max() < 0.05
    sm = camera.project(torch.tensor(a["joints3d"]), K).numpy()
    assert np.abs(sm - a["smpl24_keypoints"][..., :2]).max() < 0.05
    # The person is roughly centred and spans a sensible part of the image.
    ext = (a["keypoints_clean"].max(1) - a["keypoints_clean"].min(1)).max(1) / 256
    assert ext.min() > 0.3 and ext.max() < 0.8
    centre = 0.5 * (a["keypoints_clean"].max(1) + a["keypoints_clean"].min(1))
    assert np.abs(centre - 128).max() < 40
    # Upright standing bodies face/stand upright in the image: head above the ankles (y down).
    up = a["category"] != 5
    assert (a["joints3d"][up, 15, 1] < a["joints3d"][up, 7, 1]).mean() > 0.95


def test_noisy_keypoints_hidden_points_and_confidences(body):
    a = D.make_scenes(400, 12, "train", body=body)
    # Ground truth is anatomically plausible on the body model's own joints (the implausible-rate baseline).
    assert not anatomy.is_implausible(torch.tensor(a["body_pose"]), torch.tensor(a["joints3d"])).any()
    kp = a["keypoints"]
    vis = kp[..., 2] > 0
    assert 0.5 < vis.mean() < 0.98
    assert (kp[~vis] == 0).all()  # hidden points carry no position
    assert (kp[..., 2][vis] > 0.5).all() and (kp[..., 2] <= 1).all()
    err = np.linalg.norm(kp[..., :2] - a["keypoints_clean"], axis=-1)[vis]
    assert 0.3 < np.median(err) < 5.0
    # Visible points are inside the image; truncated ones are not reported.
    assert (
        (kp[..., 0][vis] >= 0) & (kp[..., 0][vis] < 256) & (kp[..., 1][vis] >= 0) & (kp[..., 1][vis] < 256)
    ).all()


def test_truncation_hides_points_outside_the_image(body):
    preset = {**D.PRESETS["clean"], "fill": (0.9, 0.95), "centre_jitter": 0.4}
    a = D.make_scenes(200, 13, preset, body=body)
    clean = a["keypoints_clean"]
    outside = (clean[..., 0] < 0) | (clean[..., 0] >= 256) | (clean[..., 1] < 0) | (clean[..., 1] >= 256)
    assert outside.any()
    assert (a["keypoints"][..., 2][outside] == 0).all()
    assert (a["keypoints"][..., 2][~outside] > 0).mean() > 0.95


def test_occlusion_is_spatially_coherent(body):
    preset = {**D.PRESETS["clean"], "box_p": 1.0, "boxes_max": 1}
    a = D.make_scenes(200, 14, preset, body=body)
    hidden = a["keypoints"][..., 2] == 0
    assert hidden.any(1).mean() > 0.5
    # Hidden points cluster: their spread is smaller than the person's.
    spreads = []
    for i in np.nonzero(hidden.sum(1) >= 2)[0]:
        h = a["keypoints_clean"][i][hidden[i]]
        spreads.append(np.ptp(h, 0).max() / np.ptp(a["keypoints_clean"][i], 0).max())
    assert np.median(spreads) < 0.6


def test_splits_are_deterministic(tmp_path, body):
    a = D.generate_split("test", tmp_path / "a", n=40, body=body, quiet=True)
    b = D.generate_split("test", tmp_path / "b", n=40, body=body, quiet=True)
    sa, sb = D.SceneSet(a).arrays(), D.SceneSet(b).arrays()
    assert set(sa) == set(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    c = D.generate_split("test", tmp_path / "c", n=40, seed=99, body=body, quiet=True)
    assert not np.array_equal(D.SceneSet(c).arrays(["body_pose"])["body_pose"], sa["body_pose"])


def test_wild_is_harder_and_hides_its_labels(tiny_splits):
    test, wild = D.SceneSet(tiny_splits["test"]), D.SceneSet(tiny_splits["wild"])
    assert test.has_labels and not wild.has_labels
    for shard in wild.manifest["shards"]:
        with np.load(wild.folder / shard["file"]) as z:
            assert not set(z.files) & set(D.LABEL_KEYS)
    assert wild[0].body_pose is None and wild[0].joints3d is None
    with pytest.raises(KeyError):
        wild.arrays(["body_pose"])
    lab = wild.eval_labels()
    assert lab["body_pose"].shape == (120, 69) and list(lab["sample_id"]) == list(
        wild.arrays(["sample_id"])["sample_id"]
    )

    def stats(kp, clean):
        vis = kp[..., 2] > 0
        return vis.mean(), np.median(np.linalg.norm(kp[..., :2] - clean, axis=-1)[vis])

    tv, te = stats(test.arrays(["keypoints"])["keypoints"], test.eval_labels()["keypoints_clean"])
    wv, we = stats(wild.arrays(["keypoints"])["keypoints"], lab["keypoints_clean"])
    assert wv < tv - 0.05 and we > 1.5 * te


def test_sceneset_samples_and_manifest(tiny_splits):
    ss = D.SceneSet(tiny_splits["test"])
    assert len(ss) == 120 and len(ss.manifest["shards"]) == 3
    s = ss[117]
    assert s.sample_id == "test-000117" and s.keypoints.shape == (17, 3) and s.K.shape == (3, 3)
    assert s.image_size == (256, 256) and s.body_pose.shape == (69,) and s.category in D.poses.POSE_CATEGORIES
    assert ss[-1].sample_id == "test-000119"
    with pytest.raises(IndexError):
        ss[120]
    m = ss.manifest
    assert (
        m["split"] == "test"
        and m["n"] == 120
        and m["has_labels"]
        and m["generator_version"] == D.GENERATOR_VERSION
    )
    assert not any(p.name.startswith(".staging") for p in tiny_splits["test"].parent.iterdir())


def test_load_split_generates_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.01")
    ss = D.load_split("test", root=tmp_path, quiet=True)
    assert len(ss) == 10
    mtime = (tmp_path / "test" / "manifest.json").stat().st_mtime_ns
    assert len(D.load_split("test", root=tmp_path)) == 10
    assert (tmp_path / "test" / "manifest.json").stat().st_mtime_ns == mtime  # not regenerated
    from hmrcritic.errors import AssetError

    with pytest.raises(AssetError):
        D.load_split("wild", root=tmp_path, generate=False)
    with pytest.raises(InputError):
        D.load_split("nope", root=tmp_path)


# ---------------------------------------------------------------------------------------- user inputs
COCO = [[100 + i, 50 + 3 * i, 0.9] for i in range(17)]


def write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def test_keypoint_formats(tmp_path):
    a = D.read_keypoints_json(write(tmp_path, "a.json", COCO))
    b = D.read_keypoints_json(write(tmp_path, "b.json", [v for row in COCO for v in row]))
    c = D.read_keypoints_json(
        write(tmp_path, "c.json", {"keypoints": [v for r in COCO for v in (r[0], r[1], 2)]})
    )
    np.testing.assert_allclose(a, b)
    assert a.shape == (17, 3) and a.dtype == np.float32
    assert (c[:, 2] == 1).all() and np.allclose(c[:, :2], a[:, :2])
    flags = D.read_keypoints_json(
        write(tmp_path, "d.json", {"keypoints": [1, 2, 0] * 8 + [5, 6, 1] + [7, 8, 2] * 8})
    )
    assert (flags[:8] == 0).all() and flags[8, 2] == 0.5 and (flags[9:, 2] == 1).all()
    # a detector's scores in COCO-annotation form are confidences, not flags (a 0.9 is not "not labelled")
    scores = D.read_keypoints_json(write(tmp_path, "e.json", {"keypoints": [v for r in COCO for v in r[:2] + [0.9]]
                                                              [:-3] + [116, 98, 1.0]}))
    assert np.allclose(scores[:16, 2], 0.9) and scores[16, 2] == 1.0
    with pytest.raises(InputError, match="outside"):
        D.read_keypoints_json(write(tmp_path, "f.json", {"keypoints": [1, 2, 0.5] * 16 + [3, 4, 7]}))


def test_body25_maps_to_coco17(tmp_path):
    body25 = np.zeros((25, 3))
    body25[:, 0] = np.arange(25) * 10  # x encodes the BODY_25 index
    body25[:, 1] = 5
    body25[:, 2] = 0.8
    kp = D.read_keypoints_json(
        write(tmp_path, "op.json", {"people": [{"pose_keypoints_2d": body25.ravel().tolist()}]})
    )
    names_b25 = {
        "nose": 0,
        "left_eye": 16,
        "right_eye": 15,
        "left_ear": 18,
        "right_ear": 17,
        "left_shoulder": 5,
        "right_shoulder": 2,
        "left_elbow": 6,
        "right_elbow": 3,
        "left_wrist": 7,
        "right_wrist": 4,
        "left_hip": 12,
        "right_hip": 9,
        "left_knee": 13,
        "right_knee": 10,
        "left_ankle": 14,
        "right_ankle": 11,
    }
    for i, name in enumerate(D.COCO17_NAMES):
        assert kp[i, 0] == names_b25[name] * 10, name


def test_multiple_people_pick_first_and_warn(tmp_path):
    p1 = np.tile([10.0, 20.0, 0.9], 25).tolist()
    p2 = np.tile([30.0, 40.0, 0.9], 25).tolist()
    path = write(tmp_path, "two.json", {"people": [{"pose_keypoints_2d": p1}, {"pose_keypoints_2d": p2}]})
    with pytest.warns(UserWarning, match="2 people"):
        kp = D.read_keypoints_json(path)
    assert (kp[:, 0] == 10).all()


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        (COCO[:16], "expected COCO-17"),
        ([[1, 2]] * 17, "expected COCO-17"),
        ([[float("nan"), 1, 1]] + COCO[1:], "NaN"),
        ([["a", 1, 1]] + COCO[1:], "only numbers"),
        ([[1, 2, 0]] * 17, "no visible"),
        ({"people": []}, "no people"),
        ({"people": [{"pose_keypoints_2d": [1.0] * 60}]}, "BODY_25"),
        ({"foo": 1}, "unrecognised"),
        ([[1, 2, 1.7]] + COCO[1:], "confidence"),
    ],
)
def test_malformed_keypoints_raise_input_error(tmp_path, content, match):
    path = write(tmp_path, "bad.json", content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InputError, match=match) as exc:
        D.read_keypoints_json(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_binary_file_as_json(tmp_path):
    path = tmp_path / "image.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(InputError, match="JSON"):
        D.read_keypoints_json(path)


def test_points_outside_image_and_missing_file(tmp_path):
    # one point past the border is a truncated person: hidden, with a warning naming it
    path = write(tmp_path, "far.json", [[500, 50, 0.9]] + COCO[1:])
    with pytest.warns(UserWarning, match=r"keypoint 0 \(nose\) lies outside the 200×200 image: treated as hidden"):
        kp = D.read_keypoints_json(path, image_size=(200, 200))
    assert (kp[0] == 0).all() and (kp[1:] == np.asarray(COCO[1:], np.float32)).all()
    # most points outside: keypoints of another image (or size), refused
    with pytest.raises(InputError, match="6 of 17 visible keypoints"):
        D.read_keypoints_json(write(tmp_path, "far6.json", [[500, 50, 0.9]] * 6 + COCO[6:]),
                              image_size=(200, 200))
    with pytest.raises(InputError, match="not found"):
        D.read_keypoints_json(tmp_path / "missing.json")


def test_images_and_sample_from_user(tmp_path):
    from PIL import Image

    img = np.zeros((120, 160, 3), np.uint8)
    img[10:20, 30:40] = 200
    Image.fromarray(img).save(tmp_path / "im.png")
    Image.fromarray(img).save(tmp_path / "im.jpg")
    assert D.read_image(tmp_path / "im.png").shape == (120, 160, 3)
    assert D.read_image(tmp_path / "im.jpg").dtype == np.uint8
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, "rotate 90° clockwise to view"
    Image.fromarray(img).save(tmp_path / "sideways.jpg", exif=exif)
    assert D.read_image(tmp_path / "sideways.jpg").shape == (160, 120, 3)  # upright, as a viewer shows it
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(InputError, match="not a readable image"):
        D.read_image(tmp_path / "fake.png")
    with pytest.raises(InputError, match="not found"):
        D.read_image(tmp_path / "none.png")
    kp = write(tmp_path, "kp.json", [[20 + 5 * i, 10 + 5 * i, 0.9] for i in range(17)])
    s = D.sample_from_user(tmp_path / "im.png", kp)
    assert s.image_size == (160, 120) and s.K[0, 0] == 160 and s.K[0, 2] == 80 and s.K[1, 2] == 60
    assert s.body_pose is None and s.sample_id == "im"
    assert D.sample_from_user(tmp_path / "im.png", kp, focal=300).K[1, 1] == 300
    with pytest.raises(InputError):
        D.sample_from_user(tmp_path / "im.png", kp, focal=-1)
    with pytest.raises(InputError, match="kp.json"):
        D.read_keypoints_json(kp, image_size=(50, 50))


def test_cli_generate_and_info(tmp_path, monkeypatch):
    from hmrcritic.cli import main

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path))
    assert main(["data", "generate", "--split", "test", "--n", "30", "--json"]) == 0
    assert (tmp_path / "test" / "manifest.json").exists()
    assert main(["data", "info", "--split", "test", "--json"]) == 0
    assert main(["data", "info", "--split", "wild"]) == 2  # not generated: one-line error
