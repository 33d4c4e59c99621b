"""A new user's walk through session 33's own-data paths (``export --data LIST``, ``--intrinsics``, ``evaluate
--data``) with the files such a user has: lists written on Windows, calibrations from common tools, a world-frame
labelled file. Each test failed before its fix (review s33, user walk)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from hmrcritic.errors import InputError


def _photo(folder, name="a.png", size=(640, 480)):
    from PIL import Image

    path = folder / name
    Image.new("RGB", size).save(path)
    return path


def _kp_file(folder, name="a.json"):
    from test_review_s32_keypoints import standing_coco

    path = folder / name
    path.write_text(json.dumps(standing_coco().tolist()))
    return path


ENTRIES = [{"image": "a.png", "keypoints": "a.json"}, {"image": "a.png", "keypoints": "a.json", "id": 2}]


# ------------------------------------------------------------------------------------------- input lists
@pytest.mark.parametrize("encode", [
    lambda text: b"\xef\xbb\xbf" + text.encode(),  # Notepad's "UTF-8 with BOM"
    lambda text: text.encode("utf-16"),  # Windows PowerShell's Out-File / ">"
])
@pytest.mark.parametrize("as_list", [True, False])
def test_a_list_written_on_windows_reads(tmp_path, encode, as_list):
    """A JSON list behind a UTF-8 byte-order mark was taken for JSON lines ("item 1: not a JSON object ('[')"); a
    UTF-16 file, list or lines, was read as garbage."""
    from hmrcritic.hmr.userdata import read_inputs

    _photo(tmp_path), _kp_file(tmp_path)
    text = (json.dumps(ENTRIES, indent=1) if as_list else "\r\n".join(json.dumps(e) for e in ENTRIES)) + "\r\n\r\n"
    listing = tmp_path / ("inputs.json" if as_list else "inputs.jsonl")
    listing.write_bytes(encode(text.replace("\n", "\r\n") if as_list else text))
    assert [s.sample_id for s in read_inputs(listing)] == ["a", "2"]


def test_a_list_not_in_utf8_is_refused_naming_its_line(tmp_path):
    """A cp1252 "é" in a file name was read as U+FFFD and reported as a file not found under a name the user
    never wrote."""
    from hmrcritic.hmr.userdata import read_inputs

    _photo(tmp_path, "é.png"), _kp_file(tmp_path)
    listing = tmp_path / "inputs.jsonl"
    listing.write_bytes((json.dumps(ENTRIES[0]) + "\n" + json.dumps({"image": "é.png", "keypoints": "a.json"},
                                                                      ensure_ascii=False)).encode("cp1252"))
    with pytest.raises(InputError, match=r"inputs.jsonl:2: not UTF-8 text"):
        read_inputs(listing)


def test_a_name_with_a_unicode_line_separator_is_one_entry(tmp_path):
    """JSON allows U+2028 unescaped inside a string; str.splitlines split the entry there ("not a JSON object")."""
    from hmrcritic.hmr.userdata import read_inputs

    _photo(tmp_path, "a\u2028b.png"), _kp_file(tmp_path)
    listing = tmp_path / "inputs.jsonl"
    listing.write_text(json.dumps({"image": "a\u2028b.png", "keypoints": "a.json", "id": "ab"},
                                  ensure_ascii=False) + "\n", encoding="utf-8")
    assert [s.sample_id for s in read_inputs(listing)] == ["ab"]


def test_an_indented_object_says_which_layouts_a_list_has(tmp_path):
    from hmrcritic.hmr.userdata import read_inputs

    listing = tmp_path / "inputs.jsonl"
    listing.write_text(json.dumps(ENTRIES[0], indent=2))
    with pytest.raises(InputError, match=r"inputs.jsonl:1: .*one JSON object over several lines.*JSON list"):
        read_inputs(listing)


# ------------------------------------------------------------------------------------------- calibrations
def _read(tmp_path, obj, size=(640, 480)):
    from hmrcritic.hmr.intrinsics import read_intrinsics_json

    path = tmp_path / "cam.json"
    path.write_text(json.dumps(obj))
    return read_intrinsics_json(path, size)


K_ROWS = [[700.0, 0.0, 330.0], [0.0, 710.0, 250.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("obj", [
    # nerfstudio's transforms.json (its frames and zero distortion beside)
    {"camera_model": "OPENCV", "fl_x": 700, "fl_y": 710, "cx": 330, "cy": 250, "w": 640, "h": 480, "k1": 0.0,
     "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": []},
    # Open3D's PinholeCameraIntrinsic.json: column by column
    {"width": 640, "height": 480, "intrinsic_matrix": [700, 0, 0, 0, 710, 0, 330, 250, 1]},
    # COLMAP cameras as JSON (pycolmap's enum written as text too)
    {"model": "PINHOLE", "width": 640, "height": 480, "params": [700, 710, 330, 250]},
    {"model": "CameraModelId.OPENCV", "width": 640, "height": 480, "params": [700, 710, 330, 250, 0, 0, 0, 0]},
])
def test_common_tools_calibration_files_read(tmp_path, obj):
    """Before: nerfstudio "missing fx, fy", Open3D and COLMAP "no intrinsics found"."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero distortion: no warning
        np.testing.assert_array_equal(_read(tmp_path, obj), np.array(K_ROWS, dtype=np.float32))


def test_one_focal_colmap_models_and_their_distortion(tmp_path):
    K = _read(tmp_path, {"model": "SIMPLE_PINHOLE", "width": 640, "height": 480, "params": [700, 330, 250]})
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == (700, 700, 330, 250)
    with pytest.warns(UserWarning, match="COLMAP SIMPLE_RADIAL params"):
        _read(tmp_path, {"model": "SIMPLE_RADIAL", "width": 640, "height": 480, "params": [700, 330, 250, 0.05]})
    with pytest.warns(UserWarning, match=r"lens distortion \(k1\)"):
        _read(tmp_path, {"fl_x": 700, "fl_y": 700, "cx": 330, "cy": 250, "k1": -0.1})
    with pytest.raises(InputError, match="COLMAP model 'OPENCV_FISHEYE' is not a pinhole.*undistort"):
        _read(tmp_path, {"model": "OPENCV_FISHEYE", "params": [700, 700, 330, 250, 0, 0, 0, 0]})
    with pytest.raises(InputError, match="a COLMAP PINHOLE camera has 4 params, this one 3"):
        _read(tmp_path, {"model": "PINHOLE", "params": [700, 330, 250]})


def test_a_transposed_k_is_named_as_such(tmp_path):
    """numpy's K.T was refused as "not a pinhole K" with the matrix shown, not what was wrong with it."""
    with pytest.raises(InputError, match=r"rows and columns are swapped.*give it row by row, \[\[700.0, 0.0, 330.0\]"):
        _read(tmp_path, {"K": np.array(K_ROWS).T.tolist()})


def test_an_image_size_written_h_w_is_not_blamed_on_exif_alone(tmp_path):
    """PyTorch3D writes image_size as (H, W); the advice was only "its EXIF orientation turns it upright"."""
    with pytest.raises(InputError, match=r"\[H, W\] \(PyTorch3D does\)"):
        _read(tmp_path, {"focal_length": [700, 700], "principal_point": [330, 250], "image_size": [480, 640]})


def test_a_photos_calibration_for_a_crop_says_the_flags(tmp_path):
    """A calibration of the whole photo, given for a crop of it: the focal + principal point that need no new file."""
    obj = {"image_width": 1920, "image_height": 1080, "camera_matrix": {
        "type_id": "opencv-matrix", "rows": 3, "cols": 3, "dt": "d", "data": [1500, 0, 960, 0, 1500, 540, 0, 0, 1]}}
    with pytest.raises(InputError, match=r"focal 1500 and principal point \(960 − x0, 540 − y0\)"):
        _read(tmp_path, obj)


# ------------------------------------------------------------------------------------------- labelled files
@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HMRCRITIC_DATA", str(root))
        mp.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
        from hmrcritic.hmr.data import load_split

        keys = ["keypoints", "K", "image_size", "global_orient", "body_pose", "betas", "transl"]
        yield {k: np.asarray(v) for k, v in load_split("test").arrays(keys).items()}


def test_world_frame_labels_warn(test_split, tmp_path):
    """A 3DPW-like file whose bodies are in a world frame, in front of the camera, was read without a word (only a
    body behind the camera was refused); its global_orient would be compared as turned."""
    from hmrcritic.hmr.userdata import read_labelled

    np.savez(tmp_path / "mine.npz", **test_split)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_labelled(tmp_path / "mine.npz")  # the split itself: in its camera's frame, no warning
    world = {**test_split, "transl": test_split["transl"] + np.array([1.0, 3.0, 0.0])}
    np.savez(tmp_path / "world.npz", **world)
    with pytest.warns(UserWarning, match=r"world.npz: .*another frame than the camera's .*cam_poses"):
        read_labelled(tmp_path / "world.npz")


@pytest.mark.parametrize("bad_id", [1.5, 3.0, True, " "])
def test_an_id_that_is_not_text_or_a_whole_number_says_whole(tmp_path, bad_id):
    """1.5 was refused as "id must be text or a number" — a number."""
    from hmrcritic.hmr.userdata import read_inputs

    _photo(tmp_path), _kp_file(tmp_path)
    listing = tmp_path / "inputs.jsonl"
    listing.write_text(json.dumps({**ENTRIES[0], "id": bad_id}) + "\n")
    with pytest.raises(InputError, match="inputs.jsonl:1: id must be text or a whole number"):
        read_inputs(listing)


def test_an_unlabelled_npz_given_to_evaluate_says_where_it_belongs(test_split, tmp_path):
    from hmrcritic.hmr.userdata import read_labelled

    np.savez(tmp_path / "kp.npz", sample_id=np.array(["a", "b", "c", "d", "e"][:len(test_split["K"])]),
             **{k: test_split[k] for k in ("keypoints", "K", "image_size")})
    with pytest.raises(InputError, match="kp.npz: no SMPL labels .*export --data"):
        read_labelled(tmp_path / "kp.npz")
