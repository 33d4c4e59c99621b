"""Review s17: user inputs to ``critique`` / ``sample`` as real tools write them (keypoint JSON, images)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from hmrcritic.errors import InputError
from hmrcritic.hmr import data as D

# a person in a 640x480 image: joint i at (300 + 5i, 100 + 20i); the left/right pairs differ in x
XY = np.array([[300.0 + 5 * i, 100.0 + 20 * i] for i in range(17)])
CONF = np.linspace(0.5, 0.95, 17)


def write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def body25(xy, conf):
    """A BODY_25 person whose COCO-17 joints are ``xy`` (neck and mid-hip added, feet left empty)."""
    b = np.zeros((25, 3))
    for c, i in enumerate(D.BODY25_TO_COCO17):
        b[i] = [*xy[c], conf[c]]
    b[1], b[8] = [310, 150, 0.9], [320, 300, 0.9]
    return b.ravel().tolist()


@pytest.mark.parametrize("wrap", ["list", "instance_info"])
def test_mmpose_keypoints_with_separate_scores_are_read(tmp_path, wrap):
    """MMPose writes (n,2) points and ``keypoint_scores`` apart: refused as "got shape [17, 2]" before.

    RTMPose's SimCC scores exceed 1; they are clipped to [0, 1] (the model clamps them so too)."""
    inst = {"keypoints": XY.tolist(), "keypoint_scores": (CONF * 6).tolist(), "bbox": [[0, 0, 9, 9]],
            "bbox_score": 0.9}
    obj = [inst] if wrap == "list" else {"meta_info": {"dataset_name": "coco"}, "instance_info": [inst]}
    kp = D.read_keypoints_json(write(tmp_path, "mm.json", obj), image_size=(640, 480))
    np.testing.assert_allclose(kp[:, :2], XY)
    np.testing.assert_allclose(kp[:, 2], np.clip(CONF * 6, 0, 1))
    with pytest.raises(InputError, match="keypoint_scores"):
        D.read_keypoints_json(write(tmp_path, "bad.json", [{"keypoints": XY.tolist(), "keypoint_scores": [1] * 5}]))


def test_several_people_take_the_most_confident_and_say_which(tmp_path):
    """OpenPose lists people in no useful order: a weak, tiny background person first was taken ("using the
    first"), so the subject's hypotheses were sampled for someone else."""
    far = body25(XY * 0.1, CONF * 0.3)
    obj = {"version": 1.3, "people": [{"pose_keypoints_2d": far}, {"pose_keypoints_2d": body25(XY, CONF)}]}
    with pytest.warns(UserWarning, match=r"2 people found; using the most confident \(entry 1"):
        kp = D.read_keypoints_json(write(tmp_path, "op.json", obj), image_size=(640, 480))
    np.testing.assert_allclose(kp[:, :2], XY)  # BODY_25 mapped back to the right (left/right kept) joints
    np.testing.assert_allclose(kp[:, 2], CONF, rtol=1e-6)
    # COCO detector results: the same rule
    res = [{"image_id": 1, "category_id": 1, "keypoints": np.c_[XY * 0.1, CONF * 0.2].ravel().tolist(), "score": 0.3},
           {"image_id": 1, "category_id": 1, "keypoints": np.c_[XY, CONF].ravel().tolist(), "score": 0.9}]
    with pytest.warns(UserWarning, match="entry 1"):
        kp = D.read_keypoints_json(write(tmp_path, "res.json", res))
    np.testing.assert_allclose(kp[:, :2], XY)


def test_normalised_coordinates_are_refused(tmp_path):
    """[0, 1] coordinates (MediaPipe-style) were read as pixels: a person one pixel tall, critiqued silently."""
    path = write(tmp_path, "norm.json", np.c_[XY / [640, 480], CONF].tolist())
    with pytest.raises(InputError, match="normalised") as exc:
        D.read_keypoints_json(path, image_size=(640, 480))
    assert "\n" not in str(exc.value)
    off = np.c_[XY / [640, 480], CONF]
    off[15:, 1] = 1.04  # ankles just past the bottom border, as normalising tools write them
    with pytest.raises(InputError, match="normalised"):
        D.read_keypoints_json(write(tmp_path, "off.json", off.tolist()), image_size=(640, 480))


@pytest.mark.parametrize("n_points", [26, 133])
def test_halpe26_and_wholebody_take_their_coco17_body(tmp_path, n_points):
    """Halpe-26 and COCO-WholeBody start with COCO-17 in COCO's order; both were refused as a wrong shape."""
    pts = np.full((n_points, 3), [200.0, 200.0, 0.5])
    pts[:17] = np.c_[XY, CONF]
    for name, obj in (("flat.json", [{"image_id": 1, "category_id": 1, "keypoints": pts.ravel().tolist(),
                                       "score": 0.9}]), ("rows.json", pts.tolist())):
        kp = D.read_keypoints_json(write(tmp_path, name, obj), image_size=(640, 480))
        np.testing.assert_allclose(kp[:, :2], XY)
        np.testing.assert_allclose(kp[:, 2], CONF, rtol=1e-6)


def test_coco_annotation_file_of_one_image(tmp_path):
    """A COCO annotation file ({"images", "annotations"}) was "unrecognised"; one image's is read (flags 2 ->
    confidence 1), and one covering several images is refused with a line that says so."""
    ann = {"image_id": 1, "category_id": 1, "num_keypoints": 17,
           "keypoints": np.c_[XY, np.full(17, 2)].ravel().tolist()}
    obj = {"images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}], "annotations": [ann]}
    kp = D.read_keypoints_json(write(tmp_path, "ann.json", obj))
    np.testing.assert_allclose(kp[:, :2], XY)
    assert (kp[:, 2] == 1).all()
    obj["annotations"].append({**ann, "image_id": 2})
    with pytest.raises(InputError, match="2 images"):
        D.read_keypoints_json(write(tmp_path, "ann2.json", obj))


def test_points_without_confidence_say_what_is_accepted(tmp_path):
    """(17,2) points: the refusal names the missing confidence and the accepted formats."""
    with pytest.raises(InputError, match=r"without a confidence.*accepted: .*OpenPose.*MMPose"):
        D.read_keypoints_json(write(tmp_path, "xy.json", XY.tolist()))


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG (I;16) became almost all white: convert("RGB") clips every value above 255."""
    grey = (np.arange(64)[None, :].repeat(48, 0) * 1000).astype(np.uint16)  # 0 … 63000
    Image.fromarray(grey).save(tmp_path / "g16.png")
    img = D.read_image(tmp_path / "g16.png")
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    np.testing.assert_allclose(img[0, :, 0], np.round(grey[0] / 257), atol=1)
    # 8-bit modes keep their values
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = [200, 50, 10]
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    for name in ("rgba.png", "cmyk.jpg"):
        assert np.abs(D.read_image(tmp_path / name)[0, 0].astype(int) - [200, 50, 10]).max() <= 2, name


def test_exif_rotated_image_whose_keypoints_do_not_fit_says_why(tmp_path):
    """The image is used upright (as OpenCV reads it); keypoints made in the stored frame were refused as
    "outside the 300×400 image" of a photo whose file says 400×300, without the reason."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / "side.jpg", exif=exif)
    upright = write(tmp_path, "up.json", [[100 + 5 * i, 50 + 20 * i, 0.9] for i in range(17)])
    s = D.sample_from_user(tmp_path / "side.jpg", upright)
    assert s.image_size == (300, 400) and s.K[0, 2] == 150 and s.K[1, 2] == 200
    stored = write(tmp_path, "stored.json", [[300 + 5 * i, 50 + 10 * i, 0.9] for i in range(17)])
    with pytest.raises(InputError, match="EXIF orientation") as exc:
        D.sample_from_user(tmp_path / "side.jpg", stored)
    assert "\n" not in str(exc.value)


def test_sample_cli_reads_an_mmpose_file(tmp_path, capsys):
    """End to end: ``hmrcritic sample --image --keypoints mmpose.json`` (refused before)."""
    from hmrcritic.cli import main

    Image.fromarray(np.full((480, 640, 3), 90, np.uint8)).save(tmp_path / "im.png")
    kp = write(tmp_path, "mm.json", [{"keypoints": XY.tolist(), "keypoint_scores": CONF.tolist()}])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # one person: nothing to warn about
        rc = main(["sample", "--image", str(tmp_path / "im.png"), "--keypoints", str(kp), "-n", "2",
                   "--no-render", "--out", str(tmp_path / "out"), "--json"])
    assert rc == 0, capsys.readouterr()
    saved = np.load(tmp_path / "out" / "hypotheses.npz")
    np.testing.assert_allclose(saved["keypoints"][..., :2].reshape(17, 2), XY)


def test_transparent_png_is_flattened_onto_white_like_the_report(tmp_path):
    """Alpha was dropped: transparent pixels showed their hidden colour (black here, or whatever a cut-out tool
    left) in the overlays, while the report shows the same input on white."""
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[:, :30] = [200, 50, 10, 255]  # left half opaque, right half transparent black
    Image.fromarray(rgba).save(tmp_path / "cut.png")
    img = D.read_image(tmp_path / "cut.png")
    assert img[0, 0].tolist() == [200, 50, 10] and img[0, -1].tolist() == [255, 255, 255]
    Image.fromarray(rgba).convert("RGB").convert("P").save(tmp_path / "p.png", transparency=0)
    assert D.read_image(tmp_path / "p.png").shape == (40, 60, 3)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_json_written_by_windows_tools_is_read(tmp_path, encoding):
    """A UTF-8 BOM was "not valid JSON (Unexpected UTF-8 BOM)" and UTF-16 (PowerShell's Out-File) "not a JSON
    text file"; JSON allows both."""
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(np.c_[XY, CONF].tolist()), encoding=encoding)
    np.testing.assert_allclose(D.read_keypoints_json(path)[:, :2], XY)
