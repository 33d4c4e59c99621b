"""Review round s31 (the HMR half, walked through as a 3D-human-vision engineer bringing their own images, keypoints
and SMPL file): the shipped model's body, and the user-input paths of ``sample``."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from hmrcritic.hmr import body as B
from hmrcritic.hmr import mannequin


@pytest.fixture(scope="module")
def user_smpl(tmp_path_factory):
    """A user's own SMPL-layout file (the mannequin's arrays under another name): a body model other than the
    mannequin by name and content, as HMRCRITIC_BODY_MODEL=/path/SMPL_NEUTRAL.pkl gives."""
    mannequin.ensure_mannequin()
    arrays = B.read_model_arrays(mannequin.default_folder() / mannequin.FILE_NAME)
    path = tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.pkl"
    path.write_bytes(pickle.dumps(arrays))
    return path


# ---- the shipped checkpoint's body model ------------------------------------------------------------------------
def test_the_shipped_model_is_known_to_be_trained_on_the_mannequin(tmp_path, user_smpl):
    """The shipped base_model.pt predates train-base's record of the body its scenes were posed with
    (``extra["data"]`` has no ``body_model``), so ``trained_body_model`` was None for it and neither ``sample`` nor
    ``evaluate`` said a word when HMRCRITIC_BODY_MODEL named the user's own SMPL file — the one case the note exists
    for (README: "evaluate and sample note when the one in use differs"). Judged by the file's content: a copy is the
    same model, another checkpoint without the record stays unknown."""
    from hmrcritic.hmr import evaluate as E
    from hmrcritic.hmr.diffusion import DEFAULT_CHECKPOINT, load_model

    shipped = load_model()
    assert "body_model" not in shipped.checkpoint_extra.get("data", {})  # why the fallback is needed
    user_body = B.load_body_model(user_smpl)
    assert E.trained_body_model(shipped, user_body) == "mannequin"
    copy = tmp_path / "base_copy.pt"
    shutil.copyfile(DEFAULT_CHECKPOINT, copy)
    assert E.trained_body_model(load_model(copy), user_body) == "mannequin"
    # another checkpoint that records nothing: unknown, as before (no guess)
    other = load_model(copy)
    other.checkpoint_path = str(tmp_path / "missing.pt")
    assert E.trained_body_model(other, user_body) is None
    in_memory = load_model()
    del in_memory.checkpoint_path
    assert E.trained_body_model(in_memory, user_body) is None
    # the report line built from it
    res = {"split": "test", "n_samples": 1, "num_generations": 2, "steps": 2, "joint_set": "lsp14",
           "body_model": user_body.name, "trained_body_model": E.trained_body_model(shipped, user_body)}
    line = f"trained on scenes of body model mannequin, not {user_body.name}"
    assert line in E.format_report({**res, **_blank_figures()})


def _blank_figures() -> dict:
    from hmrcritic.hmr import evaluate as E

    return {**dict.fromkeys(E._FIGURES), "implausible_rate": None, "diversity_visible_balanced_mm": None,
            "diversity_occluded_balanced_mm": None, "diversity_joint_set": "", "seconds": 0.0,
            "hypotheses_per_s": 0.0}


def test_sample_with_a_users_smpl_file_notes_the_shipped_models_body(tmp_path, user_smpl, monkeypatch):
    """``hmrcritic sample`` with HMRCRITIC_BODY_MODEL set and the shipped model posed the mannequin-trained
    hypotheses on the user's body without the note it gives for a checkpoint that records its body."""
    from PIL import Image
    from typer.testing import CliRunner

    from hmrcritic.cli import app

    W, H = 320, 240
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / "me.png")
    body = B.load_body_model()
    import torch

    pose = torch.zeros(1, 69)
    out = body(torch.tensor([[np.pi, 0.0, 0.0]]), pose, torch.zeros(1, 10), torch.tensor([[0.0, 0.0, 4.0]]))
    pts = body.coco17(out)[0].numpy()
    uv = pts[:, :2] / pts[:, 2:] * 300 + np.array([W / 2, H / 2])
    (tmp_path / "me.json").write_text(json.dumps(np.c_[uv, np.full(17, 0.9)].tolist()))
    monkeypatch.setenv("HMRCRITIC_BODY_MODEL", str(user_smpl))
    res = CliRunner().invoke(app, ["sample", "--image", str(tmp_path / "me.png"), "--keypoints",
                                   str(tmp_path / "me.json"), "-n", "2", "--steps", "2", "--no-render",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert f"trained on scenes of body model mannequin, not {user_smpl}" in res.output


def test_sample_summary_names_the_body_its_translation_was_solved_on(tmp_path, user_smpl, monkeypatch):
    """``transl`` in hypotheses.npz is body-specific (the posed pelvis is J0(betas) + transl, and J0 differs between
    a user's SMPL file and the mannequin), but nothing ``sample`` wrote said which body it was: a folder read later
    (or by a colleague without HMRCRITIC_BODY_MODEL set) was posed on another body without a word. summary.json
    (and ``--json``) now names it, with its sha256 (None: the mannequin, which the project generates)."""
    from hmrcritic.hmr.data import Sample
    from hmrcritic.hmr.diffusion import load_model, sample_to_dir
    from hmrcritic.io import sha256_file

    kp = np.zeros((17, 3), np.float32)
    kp[5:] = np.c_[np.linspace(100, 156, 12), np.linspace(60, 200, 12), np.full(12, 0.9)]
    K = np.array([[256, 0, 128], [0, 256, 128], [0, 0, 1]], np.float32)
    item = Sample(sample_id="me", keypoints=kp, K=K, image_size=(256, 256))
    model = load_model()
    for body, name, sha in ((B.load_body_model(user_smpl), str(user_smpl), sha256_file(user_smpl)),
                            (B.load_body_model(), "mannequin", None)):
        out = tmp_path / name.replace("/", "_")
        summary = sample_to_dir(model, item, out, num_generations=2, steps=2, render=False, body=body)
        written = json.loads((out / "summary.json").read_text())
        assert summary["body_model"] == written["body_model"] == name
        assert summary["body_sha256"] == written["body_sha256"] == sha


# ---- a keypoint file of several people ---------------------------------------------------------------------------
def _person(x0: float, conf: float) -> np.ndarray:
    """17 COCO points of one standing person at x0 px (a 640×480 image), all seen with ``conf``."""
    y = np.array([60, 55, 55, 58, 58, 100, 100, 150, 150, 200, 200, 210, 210, 300, 300, 390, 390], float)
    x = x0 + np.array([0, -5, 5, -10, 10, -30, 30, -40, 40, -45, 45, -20, 20, -22, 22, -24, 24], float)
    return np.c_[x, y, np.full(17, conf)]


def _multi_person_files(tmp_path) -> dict:
    """The same two people (0: faint, at x 150; 1: confident, at x 450) in each multi-person form the reader takes."""
    a, b = _person(150, 0.4), _person(450, 0.9)
    forms = {
        "openpose": {"people": [{"pose_keypoints_2d": np.r_[p[[0, 5, 6, 8, 10, 5, 7, 9, 11, 12, 14, 16, 11, 13, 15,
                                                                 2, 1, 4, 3]], np.zeros((6, 3))].ravel().tolist()}
                                for p in (a, b)]},
        "coco_results": [{"image_id": 1, "category_id": 1, "keypoints": p.ravel().tolist(), "score": 0.9}
                         for p in (a, b)],
        "mmpose": [{"keypoints": p[:, :2].tolist(), "keypoint_scores": p[:, 2].tolist()} for p in (a, b)],
        "plain_list": [a.tolist(), b.tolist()],
    }
    files = {}
    for name, data in forms.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(data))
    return files


@pytest.mark.parametrize("form", ["openpose", "coco_results", "mmpose", "plain_list"])
def test_a_person_of_several_is_chosen_by_index(tmp_path, form, recwarn):
    """A detector's file of a whole group gave only its most confident person: the others could be reached only by
    cutting the file into one per person. ``person=`` (``sample --person``) takes any of them, without the
    "N people found" warning; an index past the people there is one line naming how many there are."""
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.data import read_keypoints_json

    path = _multi_person_files(tmp_path)[form]
    for i, x0 in ((0, 150), (1, 450)):
        kp = read_keypoints_json(path, image_size=(640, 480), person=i)
        assert abs(float(kp[11:13, 0].mean()) - x0) < 1e-3, (form, i, kp[11:13])
    assert not [w for w in recwarn.list if "people found" in str(w.message)]
    with pytest.raises(InputError, match=r"person 2 asked for, but the file holds 2 people \(0\.\.1\)"):
        read_keypoints_json(path, person=2)
    with pytest.warns(UserWarning, match=r"using the most confident \(entry 1.*--person"):
        kp = read_keypoints_json(path)  # unchanged without it
    assert abs(float(kp[11:13, 0].mean()) - 450) < 1e-3


def test_person_on_a_file_of_one_and_of_the_wrong_type(tmp_path):
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.data import read_keypoints_json

    one = tmp_path / "one.json"
    one.write_text(json.dumps(_person(300, 0.9).tolist()))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"keypoints": _person(300, 0.9).ravel().tolist()}))
    for path in (one, ann):
        assert read_keypoints_json(path, person=0).shape == (17, 3)
        with pytest.raises(InputError, match=r"person 1 asked for, but the file holds 1 person"):
            read_keypoints_json(path, person=1)
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(InputError, match="person must be a person's index"):
            read_keypoints_json(one, person=bad)


def test_sample_person_flag(tmp_path):
    """``hmrcritic sample --person I``: that person's keypoints in hypotheses.npz, the id told apart by ``_pI``;
    refused with --scene (one person)."""
    from PIL import Image
    from typer.testing import CliRunner

    from hmrcritic.cli import app

    Image.fromarray(np.full((480, 640, 3), 90, np.uint8)).save(tmp_path / "group.png")
    files = _multi_person_files(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["sample", "--image", str(tmp_path / "group.png"), "--keypoints",
                                   str(files["openpose"]), "--person", "0", "-n", "2", "--steps", "2",
                                   "--no-render", "--json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "people found" not in res.output
    kp = np.load(out / "hypotheses.npz")["keypoints"]
    assert abs(float(kp[11:13, 0].mean()) - 150) < 1e-3
    assert json.loads((out / "summary.json").read_text())["sample_id"] == "group_p0"
    res = CliRunner().invoke(app, ["sample", "--scene", "test:0", "--person", "1", "--out", str(tmp_path / "s")])
    assert res.exit_code != 0 and "--person applies to --keypoints" in str(res.exception)
