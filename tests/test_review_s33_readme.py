"""README's session-33 user-data paragraphs, followed literally as a new user (review of session 33).

"Unlabelled inputs of your own (`export --data FILE`) ... every entry checked (an unknown field, a missing file, a
repeated id: refused naming the line)". A repeated id named the inputs' positions ("inputs 1 and 2"), which are not
the lines once the list has a comment or a blank line; a null image path named its line twice; an ``.npy`` given
where an ``.npz`` of inputs belongs was read as a text list ("not UTF-8 text ... save it as UTF-8"); and the
unlabelled ``.npz`` errors said what a *labelled* file holds. No model is needed: these are the reads before
anything is sampled."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hmrcritic.errors import InputError
from hmrcritic.hmr.userdata import read_inputs

# a standing person's COCO-17 points around the origin (pixels), placed in a 400x600 image
BODY = [[0, -160], [-8, -168], [8, -168], [-18, -164], [18, -164], [-40, -120], [40, -120], [-50, -60], [50, -60],
        [-55, 0], [55, 0], [-25, 0], [25, 0], [-27, 90], [27, 90], [-28, 180], [28, 180]]


@pytest.fixture()
def photo(tmp_path):
    Image.new("RGB", (400, 600), (90, 120, 150)).save(tmp_path / "a.png")
    (tmp_path / "a.json").write_text(json.dumps([[200 + x, 300 + y, 0.9] for x, y in BODY]))
    return {"image": "a.png", "keypoints": "a.json"}


def _inputs_npz(path, n=3, **extra):
    kp = np.array([[[200 + x, 300 + y, 0.9] for x, y in BODY]] * n, dtype=np.float32)
    K = np.array([[600, 0, 200], [0, 600, 300], [0, 0, 1]], dtype=np.float32)
    np.savez(path, keypoints=kp, K=K, image_size=np.array([400, 600]), **extra)
    return path


def test_a_repeated_id_names_both_lines(tmp_path, photo):
    listing = tmp_path / "inputs.jsonl"
    listing.write_text("# my photos\n\n" + json.dumps(photo) + "\n# the same one again\n" + json.dumps(photo) + "\n")
    with pytest.raises(InputError, match=r"inputs 1 and 2 have the same id 'a' \(lines 3 and 5\)"):
        read_inputs(listing)


def test_a_repeated_id_of_a_json_list_names_its_items(tmp_path, photo):
    listing = tmp_path / "inputs.json"
    listing.write_text(json.dumps([photo, photo]))
    with pytest.raises(InputError, match=r"inputs\.json: inputs 1 and 2 have the same id 'a'; "):
        read_inputs(listing)


def test_a_null_path_names_its_line_once(tmp_path, photo):
    listing = tmp_path / "inputs.jsonl"
    listing.write_text(json.dumps({**photo, "image": None}) + "\n")
    with pytest.raises(InputError) as err:
        read_inputs(listing)
    assert str(err.value) == f"{listing}:1: image must be a file path (text), got None"


def test_an_npy_is_not_taken_for_a_text_list(tmp_path):
    np.save(tmp_path / "kp.npy", np.zeros((2, 17, 3)))
    with pytest.raises(InputError, match="a single .npy array, not an .npz archive") as err:
        read_inputs(tmp_path / "kp.npy")
    assert "UTF-8" not in str(err.value) and "SMPL labels" not in str(err.value)


def test_an_npz_of_inputs_by_another_name_is_read_as_one(tmp_path):
    _inputs_npz(tmp_path / "kp.npz")
    (tmp_path / "kp.npz").rename(tmp_path / "kp.data")
    assert [s.sample_id for s in read_inputs(tmp_path / "kp.data")] == [f"kp-{i:06d}" for i in range(3)]


def test_unlabelled_npz_errors_say_what_an_inputs_file_holds(tmp_path):
    np.savez(tmp_path / "nok.npz", keypoints=np.zeros((2, 17, 3)))
    with pytest.raises(InputError, match="missing K, image_size") as err:
        read_inputs(tmp_path / "nok.npz")
    assert "optionally sample_id" in str(err.value) and "SMPL labels" not in str(err.value)


def test_a_repeated_sample_id_names_the_rows(tmp_path):
    _inputs_npz(tmp_path / "dup.npz", sample_id=np.array(["a", "b", "a"]))
    with pytest.raises(InputError, match=r"sample_id rows 0 and 2 have the same id 'a' \(rows from 0\)"):
        read_inputs(tmp_path / "dup.npz")


def test_an_input_list_given_to_evaluate_says_which_command_takes_it(tmp_path, photo):
    from hmrcritic.hmr.userdata import read_labelled

    listing = tmp_path / "inputs.jsonl"
    listing.write_text(json.dumps(photo) + "\n")
    with pytest.raises(InputError, match="a JSON file, not an .npz: .* is for export --data"):
        read_labelled(listing)
