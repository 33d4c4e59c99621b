"""A user image's camera: ``--principal-point`` and ``--intrinsics`` (session 33).

Before, a user image always got a centred K (only ``--focal`` could change it), so a crop of a larger photo — the
usual input of a person detector's pipeline — was conditioned as if seen head-on: the model is fed the ray of the
person box's centre, ``(c - principal point) / focal``. The crop test below shows what a known principal point buys:
a crop with the photo's optical centre gives the full photo's hypotheses, the centred default does not."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from hmrcritic.errors import InputError
from hmrcritic.hmr import intrinsics as I

SIZE = (640, 480)
K_REF = np.array([[800.0, 0.0, 300.0], [0.0, 790.0, 250.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def write(tmp_path, obj, name="cam.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("obj", [
    [[800, 0, 300], [0, 790, 250], [0, 0, 1]],
    [800, 0, 300, 0, 790, 250, 0, 0, 1],
    [800, 790, 300, 250],
    {"K": [[800, 0, 300], [0, 790, 250], [0, 0, 1]]},
    {"camera_matrix": {"rows": 3, "cols": 3, "dt": "d", "data": [800, 0, 300, 0, 790, 250, 0, 0, 1]},
     "distortion_coefficients": {"rows": 1, "cols": 5, "dt": "d", "data": [0, 0, 0, 0, 0]}},
    {"intrinsics": [800, 790, 300, 250], "width": 640, "height": 480},
    {"fx": 800, "fy": 790, "cx": 300, "cy": 250},
    {"focal_length": [800, 790], "principal_point": [300, 250], "image_size": [640, 480]},
])
def test_calibration_forms_read_to_one_k(tmp_path, obj):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero distortion and a matching size say nothing
        K = I.read_intrinsics_json(write(tmp_path, obj), SIZE)
    assert K.dtype == np.float32 and np.array_equal(K, K_REF)


def test_one_focal_for_both_axes(tmp_path):
    K = I.read_intrinsics_json(write(tmp_path, {"f": 700, "cx": 320, "cy": 240}), SIZE)
    assert K[0, 0] == K[1, 1] == 700
    K = I.read_intrinsics_json(write(tmp_path, {"focal_length": 700, "principal_point": [320, 240]}), SIZE)
    assert K[0, 0] == K[1, 1] == 700


@pytest.mark.parametrize("obj,needle", [
    ([[800, 2, 300], [0, 790, 250], [0, 0, 1]], "skewed K"),
    ([[800, 0, 300], [0, 790, 250], [0.1, 0, 1]], "not a pinhole K"),
    ([[1.2, 0, 0.5], [0, 1.6, 0.5], [0, 0, 1]], "normalised"),
    ([[-800, 0, 300], [0, 790, 250], [0, 0, 1]], "positive"),
    ([800, 790, 300], "3 numbers are not intrinsics"),
    ([[800, 0, 300], [0, 790, 250]], "three rows of three"),
    ([[800, 0], [0, 790], [0, 0]], "three rows of three"),
    ({"fx": 800, "fy": 790, "cx": 300}, "missing cy"),
    ({"fx": 800, "fy": True, "cx": 300, "cy": 2}, "not a number"),
    ({"K": "800 0 300"}, "not intrinsics"),
    ({"focal_length": 800}, "both focal_length and principal_point"),
    ({"camera": {}}, "no intrinsics found"),
    ({"K": [800, 790, 300, 250], "width": 1280, "height": 960}, "for a 1280x960 image, this one is 640x480"),
    ("K", "not intrinsics"),
])
def test_bad_calibrations_are_refused_naming_the_file(tmp_path, obj, needle):
    path = write(tmp_path, obj)
    with pytest.raises(InputError, match=needle) as exc:
        I.read_intrinsics_json(path, SIZE)
    assert str(path) in str(exc.value)


def test_a_calibration_of_the_raw_frame_of_an_exif_rotated_photo_says_so(tmp_path):
    path = write(tmp_path, {"K": [800, 790, 300, 250], "width": 480, "height": 640})
    with pytest.raises(InputError, match="EXIF orientation"):
        I.read_intrinsics_json(path, SIZE)


def test_lens_distortion_warns(tmp_path):
    path = write(tmp_path, {"K": [800, 790, 300, 250], "dist_coeffs": [-0.2, 0.05, 0, 0, 0]})
    with pytest.warns(UserWarning, match="distortion"):
        I.read_intrinsics_json(path, SIZE)


@pytest.mark.parametrize("content,needle", [(b"{not json", "not valid JSON"), (b"\xff\xfe\x00", "not a JSON text"),
                                            (b"[" * 100_000, "nested too deeply")])
def test_unreadable_files_are_one_line(tmp_path, content, needle):
    path = tmp_path / "cam.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=needle):
        I.read_intrinsics_json(path, SIZE)
    with pytest.raises(InputError, match="intrinsics file not found"):
        I.read_intrinsics_json(tmp_path / "nope.json", SIZE)
    with pytest.raises(InputError, match="is a folder"):
        I.read_intrinsics_json(tmp_path, SIZE)


def test_user_intrinsics_parts_and_conflicts(tmp_path):
    K = I.user_intrinsics(SIZE)
    assert np.array_equal(K, [[640, 0, 320], [0, 640, 240], [0, 0, 1]])
    K = I.user_intrinsics(SIZE, focal=500, principal_point=(1000.5, -20))  # outside the image: a crop's may be
    assert np.array_equal(K, np.array([[500, 0, 1000.5], [0, 500, -20], [0, 0, 1]], np.float32))
    with pytest.raises(InputError, match="not both"):
        I.user_intrinsics(SIZE, focal=500, intrinsics=write(tmp_path, [800, 790, 300, 250]))
    for bad in ("300,200", (1.0,), (float("nan"), 2.0), (True, 2.0), 5):
        with pytest.raises(InputError, match="principal_point"):
            I.user_intrinsics(SIZE, principal_point=bad)


@pytest.mark.parametrize("text,expected", [("960,540", (960.0, 540.0)), (" 12.5 , -3 ", (12.5, -3.0)),
                                           ("960 540", (960.0, 540.0))])
def test_principal_point_flag_parses(text, expected):
    assert I.parse_principal_point(text) == expected


@pytest.mark.parametrize("text", ["960", "960,540,1", "a,b", "nan,1", ""])
def test_principal_point_flag_refuses(text):
    with pytest.raises(InputError, match="--principal-point takes CX,CY"):
        I.parse_principal_point(text)


def _person():
    """A standing person's COCO-17 keypoints in a 640×480 frame, all visible (x 260–380, y 54–430)."""
    from tests.test_review_s32_keypoints import standing_coco

    return standing_coco()


def test_a_crop_with_its_photos_principal_point_gives_the_photos_hypotheses(tmp_path):
    """The point of the flag: a person at the right of a 1280×720 photo, cropped to 200×420 around them, the
    keypoints shifted by the crop's corner and the photo's principal point minus that corner given: the condition
    and the sampled hypotheses are the photo's. The crop's centred default K conditions on another ray (the person
    seen head-on) and gives other bodies."""
    from hmrcritic.hmr import diffusion
    from hmrcritic.hmr.data import sample_from_user

    kp = _person()
    kp[:, :2] += (650.0, 150.0)  # x 910–1030, y 204–580 of the photo
    corner = np.array([870.0, 180.0])
    photo, crop = tmp_path / "photo.png", tmp_path / "crop.png"
    Image.new("RGB", (1280, 720)).save(photo)
    Image.new("RGB", (200, 420)).save(crop)
    kp_crop = kp.copy()
    kp_crop[:, :2] -= corner
    assert (kp_crop[:, :2] > 0).all() and (kp_crop[:, 0] < 200).all() and (kp_crop[:, 1] < 420).all()
    full = sample_from_user(photo, write(tmp_path, kp.tolist(), "kp.json"))
    kp_path = write(tmp_path, kp_crop.tolist(), "kp_crop.json")
    cx, cy = 640 - corner[0], 360 - corner[1]
    known = sample_from_user(crop, kp_path, focal=1280, principal_point=(cx, cy))
    default = sample_from_user(crop, kp_path)
    from_file = sample_from_user(crop, kp_path, intrinsics=write(tmp_path, {
        "fx": 1280, "fy": 1280, "cx": cx, "cy": cy, "width": 200, "height": 420}))
    assert np.array_equal(known.K, from_file.K)

    def condition(s):
        return diffusion.condition_from_keypoints(torch.as_tensor(s.keypoints, dtype=torch.float32)[None],
                                                  torch.as_tensor(s.K)[None],
                                                  torch.tensor([s.image_size], dtype=torch.float32))

    c_full, c_known, c_default = condition(full), condition(known), condition(default)
    assert torch.allclose(c_full.box, c_known.box, atol=1e-6)
    assert torch.allclose(c_full.keypoints, c_known.keypoints, atol=1e-5)
    assert (c_full.box[0, :2] - c_default.box[0, :2]).abs().max() > 0.2  # the centred guess: another ray

    model = diffusion.load_model()

    def hyps(s, c):
        g = diffusion.sample(model, c, num_generations=4, steps=4, generator=torch.Generator().manual_seed(0),
                             K=torch.as_tensor(s.K)[None], keypoints=torch.as_tensor(s.keypoints,
                                                                                    dtype=torch.float32)[None])
        return g.numpy(0)

    h_full, h_known, h_default = hyps(full, c_full), hyps(known, c_known), hyps(default, c_default)
    for key in ("global_orient", "body_pose", "transl"):
        assert np.allclose(h_full[key], h_known[key], atol=1e-3), key
    assert np.abs(h_full["global_orient"] - h_default["global_orient"]).max() > 1e-2


def test_cli_takes_the_camera_flags_and_refuses_them_for_a_scene(tmp_path, capsys):
    from hmrcritic import cli

    img = tmp_path / "img.png"
    Image.new("RGB", (640, 480)).save(img)
    kp = write(tmp_path, _person().tolist(), "kp.json")
    cam = write(tmp_path, {"fx": 700, "fy": 700, "cx": 250, "cy": 200})
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    base = ["sample", "--image", str(img), "--keypoints", str(kp), "-n", "2", "--steps", "2", "--no-render"]
    assert cli.main([*base, "--focal", "700", "--principal-point", "250,200", "--out", str(out_a)]) == 0
    assert cli.main([*base, "--intrinsics", str(cam), "--out", str(out_b)]) == 0
    a, b = np.load(out_a / "hypotheses.npz"), np.load(out_b / "hypotheses.npz")
    assert np.array_equal(a["K"], b["K"]) and np.array_equal(a["K"], [[700, 0, 250], [0, 700, 200], [0, 0, 1]])
    assert np.array_equal(a["transl"], b["transl"])
    capsys.readouterr()
    for command in ("sample", "critique"):
        for flags in (["--principal-point", "1,2"], ["--intrinsics", str(cam)]):
            assert cli.main([command, "--scene", "test:0", *flags, "--out", str(tmp_path / "o")]) == 2
            err = capsys.readouterr().err
            assert "is for a user image" in err and "own camera" in err, err
        assert cli.main([command, "--image", str(img), "--keypoints", str(kp), "--intrinsics", str(cam), "--focal",
                         "500", "--out", str(tmp_path / "o")]) == 2
        assert "not both" in capsys.readouterr().err
        assert cli.main([command, "--image", str(img), "--keypoints", str(kp), "--principal-point", "250",
                         "--out", str(tmp_path / "o")]) == 2
        assert "--principal-point takes CX,CY" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_critique_refuses_sampled_hypotheses_under_another_camera(tmp_path, capsys, small_prior):
    """`sample --principal-point …` then `critique --hypotheses` without it judged every body under a camera its
    ``transl`` was not solved for (the bodies off their keypoints): refused, naming both cameras. The same flags
    critique the group; a file of another tool (no K) is not checked."""
    from hmrcritic import cli

    img = tmp_path / "img.png"
    Image.new("RGB", (640, 480)).save(img)
    kp = write(tmp_path, _person().tolist(), "kp.json")
    user = ["--image", str(img), "--keypoints", str(kp)]
    camera = ["--focal", "700", "--principal-point", "250,200"]
    assert cli.main(["sample", *user, *camera, "-n", "2", "--steps", "2", "--no-render", "--out",
                     str(tmp_path / "s")]) == 0
    hyps = str(tmp_path / "s" / "hypotheses.npz")
    critique = ["critique", *user, "--hypotheses", hyps, "--no-render", "--max-reflections", "0", "--memory-dir",
                str(tmp_path / "m")]
    capsys.readouterr()
    assert cli.main([*critique, "--out", str(tmp_path / "c0")]) == 2
    err = capsys.readouterr().err
    assert "was sampled with fx 700, fy 700, principal point (250, 200) for a 640x480 image" in err, err
    assert "principal point (320, 240)" in err and not (tmp_path / "c0").exists()
    assert cli.main([*critique, *camera, "--out", str(tmp_path / "c1")]) == 0
    arrays = dict(np.load(hyps))
    np.savez(tmp_path / "other_tool.npz", **{k: arrays[k] for k in ("global_orient", "body_pose", "betas", "transl")})
    critique[critique.index(hyps)] = str(tmp_path / "other_tool.npz")
    assert cli.main([*critique, "--out", str(tmp_path / "c2")]) == 0
