"""Session 21: inputs and settings as users have them — keypoint files as a detector's raw array of people, a
split whose images were deleted, a device from the environment (found by the session-21 reviews)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from hmrcritic.hmr.data import read_keypoints_json


def _person(seed: int, conf: float, points: int = 17) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(20, 200, (points, 2)), np.full(points, conf)]


@pytest.mark.parametrize("flat", [False, True])
def test_a_plain_list_of_people_takes_the_most_confident(tmp_path, flat):
    """``[[17 × [x, y, c]], [17 × [x, y, c]]]`` (or one flat row of 51 per person) was refused as "got shape
    [2, 17, 3]" while every other multi-person form picks the most confident person with a warning."""
    weak, strong = _person(0, 0.2), _person(1, 0.9)
    people = [q.ravel().tolist() if flat else q.tolist() for q in (weak, strong)]
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(people))
    with pytest.warns(UserWarning, match="2 people found; using the most confident \\(entry 1"):
        got = read_keypoints_json(path)
    np.testing.assert_allclose(got, strong, rtol=1e-6)


def test_one_person_in_a_list_of_people_reads_without_a_warning(tmp_path):
    person = _person(2, 0.8)
    path = tmp_path / "kp.json"
    path.write_text(json.dumps([person.tolist()]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = read_keypoints_json(path)
    np.testing.assert_allclose(got, person, rtol=1e-6)


def test_a_list_of_body25_people_maps_to_coco17(tmp_path):
    """Each person of 25 points is BODY_25: mapped to COCO-17 as OpenPose's own files are."""
    from hmrcritic.hmr.data import BODY25_TO_COCO17

    strong = _person(3, 0.9, points=25)
    path = tmp_path / "kp.json"
    path.write_text(json.dumps([_person(4, 0.1, points=25).tolist(), strong.tolist()]))
    with pytest.warns(UserWarning, match="most confident"):
        got = read_keypoints_json(path)
    np.testing.assert_allclose(got, strong[BODY25_TO_COCO17], rtol=1e-6)


def test_data_info_names_images_deleted_after_generation(tmp_path, monkeypatch):
    """A split generated with ``--render`` whose images were deleted afterwards was summarised as ``images: True``,
    while every sample read from it quietly had no image to overlay or align against."""
    from typer.testing import CliRunner

    from hmrcritic.cli import app

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    runner = CliRunner()
    made = runner.invoke(app, ["data", "generate", "--split", "test", "--n", "3", "--render", "--json"])
    assert made.exit_code == 0, made.output
    ok = runner.invoke(app, ["data", "info", "--split", "test", "--json"])
    assert ok.exit_code == 0, ok.output
    images = sorted((tmp_path / "data" / "test" / "images").glob("*.png"))
    assert len(images) == 3
    images[0].unlink()
    gone = runner.invoke(app, ["data", "info", "--split", "test"])
    assert gone.exit_code != 0 and "2 of the split's 3 images are there" in str(gone.exception)


def test_a_device_from_the_environment_is_named_as_such(monkeypatch):
    """``HMRCRITIC_DEVICE=cuda`` on a CPU-only torch told the user to "use --device cpu", a flag they never
    typed; the error names the variable and how to undo it (a --device given keeps its own advice)."""
    import torch

    from hmrcritic.config import check_device
    from hmrcritic.errors import InputError

    if torch.cuda.is_available():
        pytest.skip("needs a torch without usable CUDA")
    monkeypatch.setenv("HMRCRITIC_DEVICE", "cuda")
    with pytest.raises(InputError, match=r"'cuda' \(from HMRCRITIC_DEVICE\).*unset HMRCRITIC_DEVICE or set it to cpu"):
        check_device(None)
    with pytest.raises(InputError, match=r"'cuda': .*use --device cpu"):
        check_device("cuda")
