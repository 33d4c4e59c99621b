"""Human3.6M-17 keypoint files (VideoPose3D, MotionBERT): read with ``layout="h36m17"`` and mapped to COCO-17, and a
COCO-17 reading of one warns (session 32; before, README told users to convert such files themselves and a file left
unconverted gave wrong poses without a word)."""

import json
import warnings

import numpy as np
import pytest

from hmrcritic.errors import InputError
from hmrcritic.hmr import data as D

# H36M-17 names in VideoPose3D's order, written out here (not taken from the code) to check its table
H36M17 = ["pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "spine",
          "thorax", "nose", "head", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder", "right_elbow",
          "right_wrist"]


def as_h36m(coco: np.ndarray) -> np.ndarray:
    """A COCO-17 person (17,3) as a Human3.6M-17 detector would give it: the shared joints by name, the pelvis and
    thorax as the midpoints of the hips and shoulders, the spine between them, the head between the eyes."""
    names = D.COCO17_NAMES
    h = np.zeros((17, 3), coco.dtype)
    for i, name in enumerate(H36M17):
        if name in names:
            h[i] = coco[names.index(name)]

    def mid(a, b):
        return np.r_[(a[:2] + b[:2]) / 2, min(a[2], b[2])]

    h[0] = mid(coco[11], coco[12])
    h[8] = mid(coco[5], coco[6])
    h[7] = mid(h[0], h[8])
    h[10] = mid(coco[1], coco[2])
    return h


def standing_coco() -> np.ndarray:
    """A person standing upright in a 640×480 image, COCO-17 order, every point visible."""
    pts = {"nose": (320, 60), "left_eye": (326, 54), "right_eye": (314, 54), "left_ear": (334, 58),
           "right_ear": (306, 58), "left_shoulder": (360, 110), "right_shoulder": (280, 110),
           "left_elbow": (375, 180), "right_elbow": (265, 180), "left_wrist": (380, 240), "right_wrist": (260, 240),
           "left_hip": (345, 250), "right_hip": (295, 250), "left_knee": (348, 340), "right_knee": (292, 340),
           "left_ankle": (350, 430), "right_ankle": (290, 430)}
    return np.array([[*pts[n], 0.9] for n in D.COCO17_NAMES], dtype=np.float64)


def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def test_h36m_file_maps_to_coco_with_the_face_hidden(tmp_path):
    coco = standing_coco()
    path = write(tmp_path, "h36m.json", as_h36m(coco).tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = D.read_keypoints_json(path, image_size=(640, 480), layout="h36m17")
    body = [i for i, n in enumerate(D.COCO17_NAMES) if "eye" not in n and "ear" not in n]
    np.testing.assert_allclose(got[body], coco[body], atol=1e-4)
    assert (got[1:5] == 0).all()  # eyes and ears: H36M has none, so hidden (confidence 0)


@pytest.mark.parametrize("form", ["points", "flat", "mmpose", "coco_annotation"])
def test_h36m_layout_in_every_17_point_form(tmp_path, form):
    h = as_h36m(standing_coco())
    obj = {"points": h.tolist(), "flat": h.ravel().tolist(),
           "mmpose": [{"keypoints": h[:, :2].tolist(), "keypoint_scores": h[:, 2].tolist()}],
           "coco_annotation": {"keypoints": h.ravel().tolist()}}[form]
    got = D.read_keypoints_json(write(tmp_path, "k.json", obj), layout="H36M-17")  # spelled as people write it
    assert got[D.COCO17_NAMES.index("left_knee"), 0] == pytest.approx(348)
    assert got[D.COCO17_NAMES.index("right_wrist"), 0] == pytest.approx(260)


def test_h36m_file_read_as_coco_warns_and_coco_does_not(tmp_path):
    coco = standing_coco()
    with pytest.warns(UserWarning, match="Human3.6M-17"):
        D.read_keypoints_json(write(tmp_path, "h36m.json", as_h36m(coco).tolist()), image_size=(640, 480))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.read_keypoints_json(write(tmp_path, "coco.json", coco.tolist()), image_size=(640, 480))


def test_upper_body_crop_does_not_warn(tmp_path):
    """A head-and-shoulders crop is mostly its face: its face points span much of what is visible, yet it is COCO."""
    coco = standing_coco()
    coco[9:, 2] = 0  # wrists, hips and legs out of view (elbows kept)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.read_keypoints_json(write(tmp_path, "crop.json", coco.tolist()))


def test_the_warning_threshold_separates_the_orders_on_generated_scenes(body):
    """The comment at FACE_SPREAD_WARN: COCO-17 readings of noisy test-preset scenes stay under it, the same scenes
    in H36M's order read as COCO-17 mostly exceed it, and the warning's test fires on none of the first and most of
    the second."""
    scenes = D.make_scenes(400, 11, preset="test", body=body)["keypoints"].astype(np.float64)
    coco = [D._face_spread(k.copy()) for k in scenes]
    h36m = [D._face_spread(as_h36m(k)) for k in scenes]
    coco = np.array([s for s in coco if s is not None])
    h36m = np.array([s for s in h36m if s is not None])
    assert len(coco) > 100 and len(h36m) > 100
    assert coco.max() < D.FACE_SPREAD_WARN
    assert (h36m > D.FACE_SPREAD_WARN).mean() > 0.6
    assert not any(D._looks_like_h36m(k.copy()) for k in scenes)
    assert np.mean([D._looks_like_h36m(as_h36m(k)) is not None for k in scenes]) > 0.25  # a third unjudged


def test_random_points_rarely_look_like_h36m():
    """Points in no body's order (tests' random fixtures) span anything; the pelvis-between-the-hips check keeps
    them from warning for their spread alone."""
    rng = np.random.default_rng(0)
    clouds = [np.c_[rng.uniform(20, 200, (17, 2)), np.full(17, 0.8)] for _ in range(500)]
    assert sum(D._face_spread(c) > D.FACE_SPREAD_WARN for c in clouds) > 200  # the spread alone would warn often
    assert sum(D._looks_like_h36m(c) is not None for c in clouds) < 25


def test_h36m_layout_refuses_other_point_sets(tmp_path):
    body25 = {"people": [{"pose_keypoints_2d": [100.0, 100.0, 0.9] * 25}]}
    with pytest.raises(InputError, match="layout h36m17 is for files of 17 points.*OpenPose"):
        D.read_keypoints_json(write(tmp_path, "op.json", body25), layout="h36m17")
    halpe = [[100.0 + i, 100.0 + 2 * i, 0.9] for i in range(26)]
    with pytest.raises(InputError, match="Halpe-26"):
        D.read_keypoints_json(write(tmp_path, "halpe.json", halpe), layout="h36m17")


@pytest.mark.parametrize("bad", ["h36m", "coco", "", None, 17])
def test_unknown_layout_is_one_clear_error(tmp_path, bad):
    path = write(tmp_path, "coco.json", standing_coco().tolist())
    with pytest.raises(InputError, match="keypoint layout must be one of coco17, h36m17"):
        D.read_keypoints_json(path, layout=bad)


def test_nan_in_an_h36m_point_is_named_by_its_h36m_index(tmp_path):
    h = as_h36m(standing_coco()).tolist()
    h[0][0] = None  # the pelvis, which the mapping drops: still garbage in the file
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(h).replace("null", "NaN"))
    with pytest.raises(InputError, match="Human3.6M-17 keypoint 0 is NaN"):
        D.read_keypoints_json(path, layout="h36m17")


def test_sample_from_user_takes_the_layout(tmp_path):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.new("RGB", (640, 480)).save(img)
    path = write(tmp_path, "h36m.json", as_h36m(standing_coco()).tolist())
    sample = D.sample_from_user(img, path, keypoint_layout="h36m17")
    assert (sample.keypoints[1:5, 2] == 0).all()
    assert sample.keypoints[D.COCO17_NAMES.index("left_ankle"), 1] == pytest.approx(430)
    with pytest.raises(InputError, match="keypoint layout"):
        D.sample_from_user(img, path, keypoint_layout="openpose")


def test_cli_takes_the_layout_and_refuses_it_for_a_scene(tmp_path, capsys):
    from PIL import Image

    from hmrcritic import cli
    from hmrcritic.commands import load_input_sample

    img = tmp_path / "img.png"
    Image.new("RGB", (640, 480)).save(img)
    path = write(tmp_path, "h36m.json", as_h36m(standing_coco()).tolist())
    sample = load_input_sample(None, str(img), str(path), keypoint_layout="h36m17")  # what `critique` reads
    assert (sample.keypoints[1:5, 2] == 0).all()
    for command in ("sample", "critique"):
        out = str(tmp_path / "o")
        assert cli.main([command, "--scene", "test:0", "--keypoint-layout", "h36m17", "--out", out]) == 2
        assert "--keypoint-layout applies to --keypoints files" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
