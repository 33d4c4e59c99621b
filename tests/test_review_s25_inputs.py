"""Review s25: user inputs as real tools and shells hand them over (keypoint JSON, images, paths)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import test_review_s17_inputs as s17

from hmrcritic.errors import InputError
from hmrcritic.hmr import data as D

# the person in a 640x480 image and the JSON writer of session 17's input tests
XY, CONF, write = s17.XY, s17.CONF, s17.write


@pytest.mark.filterwarnings("ignore:.*people found")
@pytest.mark.parametrize("where", ["coordinate", "people"])
def test_an_integer_past_float_range_is_refused_naming_the_file(tmp_path, where):
    """``10**400`` written out as an integer (json keeps it an int, unlike 1e400) raised a bare OverflowError from
    numpy, in the reader or in choosing among several people."""
    rows = [[*XY[i], CONF[i]] for i in range(17)]
    rows[3][0] = 10**400
    obj = rows if where == "coordinate" else [{"keypoints": rows}, {"keypoints": rows}]
    p = write(tmp_path, "big.json", obj)
    with pytest.raises(InputError, match="too large") as exc:
        D.read_keypoints_json(p, image_size=(640, 480))
    assert str(p) in str(exc.value)


def test_an_integer_of_thousands_of_digits_is_refused_naming_the_file(tmp_path):
    """Python's int-parsing limit (4,300 digits) raised a bare ValueError that told the user to change the
    interpreter's limit (``sys.set_int_max_str_digits``)."""
    p = tmp_path / "digits.json"
    p.write_text("[" + ",".join(f"[{'9' * 5000}, 1, 0.9]" for _ in range(17)) + "]")
    with pytest.raises(InputError, match="thousands of digits") as exc:
        D.read_keypoints_json(p)
    assert str(p) in str(exc.value) and "set_int_max_str_digits" not in str(exc.value)


@pytest.mark.parametrize("what", ["keypoint", "image"])
def test_a_fifo_is_named_as_no_regular_file_not_as_missing(tmp_path, what):
    """A path that exists but is no regular file (a FIFO; a shell's ``<(…)`` is one) was "file not found"."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    read = D.read_keypoints_json if what == "keypoint" else D.read_image
    with pytest.raises(InputError) as exc:
        read(fifo)
    msg = str(exc.value)
    assert str(fifo) in msg and "not found" not in msg and "not a regular file" in msg
    with pytest.raises(InputError, match="not found"):  # a missing file still says so
        read(tmp_path / "missing")


def test_openpose_coco18_output_maps_to_coco17(tmp_path):
    """OpenPose's COCO model (--model_pose COCO) and AlphaPose's OpenPose output write 18 points (a neck added, in
    OpenPose's order) under ``pose_keypoints_2d``; they were refused as "expected BODY_25"."""
    # OpenPose's COCO-18 order: nose, neck, r/l shoulder-elbow-wrist at 2-4 / 5-7, r/l hip-knee-ankle at 8-10 /
    # 11-13, right eye, left eye, right ear, left ear
    coco18_of_coco17 = [0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10]
    c18 = np.zeros((18, 3))
    for c, i in enumerate(coco18_of_coco17):
        c18[i] = [*XY[c], CONF[c]]
    c18[1] = [310, 150, 0.9]  # neck
    p = write(tmp_path, "op18.json", {"version": 1.3, "people": [{"pose_keypoints_2d": c18.ravel().tolist()}]})
    kp = D.read_keypoints_json(p, image_size=(640, 480))
    np.testing.assert_allclose(kp[:, :2], XY)
    np.testing.assert_allclose(kp[:, 2], CONF, rtol=1e-6)
    bad = write(tmp_path, "op19.json", {"people": [{"pose_keypoints_2d": [1.0] * 57}]})
    with pytest.raises(InputError, match="BODY_25.*COCO-18"):
        D.read_keypoints_json(bad)


def test_an_image_fifo_is_refused_by_the_cli_before_anything_runs(tmp_path, capsys):
    """End to end: ``critique --image <fifo>`` exits 2 with the path and the reason, not "not found"."""
    from hmrcritic.cli import main

    fifo = tmp_path / "im.png"
    os.mkfifo(fifo)
    kp = write(tmp_path, "kp.json", [[*XY[i], CONF[i]] for i in range(17)])
    rc = main(["critique", "--image", str(fifo), "--keypoints", str(kp), "--no-render", "--out",
               str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a regular file" in err and str(fifo) in err


def test_detector_results_of_several_images_are_refused(tmp_path):
    """A COCO results file (one list for a whole dataset) gave the most confident person of any image, with only
    "2 people found" said; the annotation file of several images was already refused. One image's results (its
    people) still read as before."""
    mine = [[*XY[i], 0.6] for i in range(17)]
    other = [[*(XY[i] + 40), 0.9] for i in range(17)]  # another image's person, more confident
    p = write(tmp_path, "results.json", [{"image_id": 1, "category_id": 1, "keypoints": sum(mine, []), "score": 0.6},
                                         {"image_id": 2, "category_id": 1, "keypoints": sum(other, []), "score": 0.9}])
    with pytest.raises(InputError, match="results for 2 images") as exc:
        D.read_keypoints_json(p, image_size=(640, 480))
    assert str(p) in str(exc.value)
    one = write(tmp_path, "one.json", [{"image_id": 7, "keypoints": sum(mine, []), "score": 0.6}])
    np.testing.assert_allclose(D.read_keypoints_json(one, image_size=(640, 480))[:, :2], XY)
