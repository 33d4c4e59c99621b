"""``hmrcritic evaluate --data FILE.npz``: one's own labelled data (session 33; before, only the built-in splits).

The check that matters: the test split written out as a user's file gives the split's own figures, to the last
digit — the file path is the same evaluation, not a second one that could drift."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hmrcritic.errors import InputError
from hmrcritic.hmr.userdata import read_labelled

KEYS = ["keypoints", "K", "image_size", "global_orient", "body_pose", "betas", "transl"]


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    """Tiny synthetic splits in their own data folder (as tests/test_evaluate.py makes them)."""
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HMRCRITIC_DATA", str(root))
        mp.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
        yield root


@pytest.fixture()
def tiny_model(tmp_path):
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion, save_model

    torch.manual_seed(0)
    m = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2))
    with torch.no_grad():
        m.joint_out.weight.normal_(0, 0.05)
    return m, save_model(m, tmp_path / "tiny.pt")


def _test_arrays():
    from hmrcritic.hmr.data import load_split

    return {k: np.asarray(v) for k, v in load_split("test").arrays(KEYS).items()}


def test_the_test_split_as_a_file_gives_the_splits_figures(tiny_splits, tiny_model, tmp_path):
    from hmrcritic.hmr.evaluate import evaluate_model

    model, _ = tiny_model
    arrays = _test_arrays()
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    kw = dict(num_generations=3, steps=2, limit=4, batch_size=2, nn_baseline=False)
    notes: list[str] = []
    a = evaluate_model(model, "test", **kw)
    b = evaluate_model(model, data=path, notify=notes.append, **kw)
    assert b.pop("split") == str(path) and a.pop("split") == "test"
    assert a.keys() == b.keys()
    for k in {k for k in a if k != "seconds" and not k.endswith("_per_s")}:  # timings differ
        same = a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k]))
        assert same, (k, a[k], b[k])
    assert a["n_samples"] == 4 and any("mannequin" in n for n in notes)


def test_other_tools_layouts_read_as_ours(tiny_splits, tmp_path):
    arrays = _test_arrays()
    n = len(arrays["keypoints"])
    np.savez(tmp_path / "ours.npz", **arrays)
    theirs = {k: arrays[k] for k in ("keypoints", "transl")}
    theirs["poses"] = np.concatenate([arrays["global_orient"], arrays["body_pose"]], 1).reshape(n, 24, 3)
    theirs["betas"] = np.concatenate([arrays["betas"], np.zeros((n, 6), np.float32)], 1)  # 16, the rest zero
    theirs["K"] = arrays["K"][0]  # one K for all (the test split's share one size; K differs: only if equal)
    theirs["image_size"] = arrays["image_size"][0]
    if not (arrays["K"] == arrays["K"][0]).all():
        theirs["K"] = arrays["K"]
    np.savez(tmp_path / "theirs.npz", **theirs)
    a, n_a = read_labelled(tmp_path / "ours.npz")
    b, n_b = read_labelled(tmp_path / "theirs.npz", limit=3)
    assert n_a == n and n_b == 3
    for k in KEYS:
        assert a[k].dtype == np.float32 and np.array_equal(a[k][:3], b[k]), k


def _bad(tmp_path, arrays, **changes):
    arrays = {**arrays, **changes}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change,needle", [
    ({"K": None}, "missing K"),
    ({"keypoints": np.zeros((5, 18, 3))}, "expected (n, 17, 3)"),
    ({"betas": np.zeros((2, 10))}, "betas has 2 scenes, others have"),
    ({"image_size": np.array([640.5, 480])}, "expected whole pixels"),
    ({"K": np.array([[500, 3, 320], [0, 500, 240], [0, 0, 1.0]])}, "not pinhole intrinsics"),
])
def test_bad_files_are_one_line_naming_what(tiny_splits, tmp_path, change, needle):
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")) as exc:
        read_labelled(_bad(tmp_path, _test_arrays(), **change))
    assert "bad.npz" in str(exc.value)


def test_bad_scenes_are_named(tiny_splits, tmp_path):
    arrays = _test_arrays()
    transl = arrays["transl"].copy()
    transl[2, 2] = -3.0
    with pytest.raises(InputError, match="scene 2's body is at depth -3 m, behind the camera.*OpenGL"):
        read_labelled(_bad(tmp_path, arrays, transl=transl))
    pose = arrays["body_pose"].copy()
    pose[1, 5] = np.nan
    with pytest.raises(InputError, match="body_pose of scene 1 contains NaN"):
        read_labelled(_bad(tmp_path, arrays, body_pose=pose))
    kp = arrays["keypoints"].copy()
    kp[3, :, :2] /= np.r_[640.0, 480.0] * 2
    with pytest.raises(InputError, match="keypoints of scene 3 lie within \\[0, 1\\]"):
        read_labelled(_bad(tmp_path, arrays, keypoints=kp))
    kp = arrays["keypoints"].copy()
    kp[0, 0, 2] = 7.0
    with pytest.raises(InputError, match="confidences of scene 0"):
        read_labelled(_bad(tmp_path, arrays, keypoints=kp))


def test_unreadable_files(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        read_labelled(tmp_path / "x.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(InputError, match="single .npy array"):
        read_labelled(tmp_path / "one.npy")
    np.savez(tmp_path / "obj.npz", keypoints=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="not plain numbers"):
        read_labelled(tmp_path / "obj.npz")
    with pytest.raises(InputError, match="is a folder"):
        read_labelled(tmp_path)
    with pytest.raises(InputError, match="labelled .npz file not found"):
        read_labelled(tmp_path / "nope.npz")
    with pytest.raises(InputError, match="must be a file path"):
        read_labelled(3)


def test_cli_evaluates_a_file_and_refuses_it_with_a_split(tiny_splits, tiny_model, tmp_path, capsys):
    from hmrcritic.cli import main

    _, model_path = tiny_model
    path = tmp_path / "mine.npz"
    np.savez(path, **_test_arrays())
    args = ["evaluate", "--model", str(model_path), "--data", str(path), "-n", "2", "--steps", "2", "--no-nn"]
    assert main([*args, "--limit", "2", "--json"]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out.strip().splitlines()[-1])
    assert res["split"] == str(path) and res["n_samples"] == 2 and math.isfinite(res["pa_mpjpe_mean_mm"])
    assert "mannequin" in captured.err
    assert main([*args, "--split", "wild"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*args, "--limit", "999", "--json"]) == 0
    assert f"{path} has only" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- unlabelled inputs
def _photo(tmp_path, name="a.png", size=(640, 480)):
    from PIL import Image

    path = tmp_path / name
    Image.new("RGB", size).save(path)
    return path


def _kp_file(tmp_path, name="a.json"):
    from test_review_s32_keypoints import standing_coco

    path = tmp_path / name
    path.write_text(json.dumps(standing_coco().tolist()))
    return path


def test_an_input_list_reads_as_sample_and_critique_read_each_input(tmp_path):
    from hmrcritic.hmr.data import sample_from_user
    from hmrcritic.hmr.userdata import read_inputs

    (tmp_path / "imgs").mkdir()
    _photo(tmp_path / "imgs", "a.png"), _photo(tmp_path / "imgs", "b.png", (800, 600))
    _kp_file(tmp_path, "a.json"), _kp_file(tmp_path, "b.json")
    cam = tmp_path / "cam.json"
    cam.write_text(json.dumps({"fx": 900, "fy": 900, "cx": 400, "cy": 280}))
    lines = [{"image": "imgs/a.png", "keypoints": "a.json"},
             {"image": "imgs/b.png", "keypoints": str(tmp_path / "b.json"), "id": "bee", "intrinsics": "cam.json"},
             {"image": "imgs/a.png", "keypoints": "a.json", "id": 7, "focal": 500, "principal_point": [300, 200]}]
    listing = tmp_path / "inputs.jsonl"
    listing.write_text("# my photos\n" + "\n".join(json.dumps(x) for x in lines) + "\n\n")
    samples = read_inputs(listing)
    assert [s.sample_id for s in samples] == ["a", "bee", "7"]
    direct = sample_from_user(tmp_path / "imgs" / "a.png", tmp_path / "a.json")
    assert np.array_equal(samples[0].keypoints, direct.keypoints) and np.array_equal(samples[0].K, direct.K)
    assert samples[1].image_size == (800, 600) and samples[1].K[0, 2] == 400
    assert samples[2].K[0, 0] == 500 and samples[2].K[1, 2] == 200
    assert all(s.global_orient is None for s in samples)  # no labels
    as_list = tmp_path / "inputs.json"
    as_list.write_text(json.dumps(lines))
    assert [s.sample_id for s in read_inputs(as_list)] == ["a", "bee", "7"]


@pytest.mark.parametrize("entry,needle", [
    ({"image": "a.png"}, "inputs.jsonl:2: missing keypoints"),
    ({"image": "a.png", "keypoints": "a.json", "princpal_point": [1, 2]}, "unknown field(s) princpal_point"),
    ({"image": "nope.png", "keypoints": "a.json"}, "inputs.jsonl:2: .*nope.png"),
    ({"image": "a.png", "keypoints": "a.json", "focal": "big"}, "focal must be a number"),
    ({"image": "a.png", "keypoints": "a.json", "principal_point": [1]}, "principal_point"),
    ({"image": "a.png", "keypoints": 5}, "keypoints must be a file path"),
    ({"image": "a.png", "keypoints": "a.json", "id": "a"}, "inputs 1 and 2 have the same id 'a'"),
    ("a.png", "expected an object"),
])
def test_a_bad_entry_stops_the_read_naming_its_line(tmp_path, entry, needle):
    from hmrcritic.hmr.userdata import read_inputs

    _photo(tmp_path), _kp_file(tmp_path)
    listing = tmp_path / "inputs.jsonl"
    listing.write_text(json.dumps({"image": "a.png", "keypoints": "a.json"}) + "\n" + json.dumps(entry) + "\n")
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        read_inputs(listing)


def test_unlabelled_npz_inputs(tiny_splits, tmp_path):
    from hmrcritic.hmr.userdata import read_inputs

    arrays = _test_arrays()
    n = len(arrays["keypoints"])
    np.savez(tmp_path / "kp.npz", **{k: arrays[k] for k in ("keypoints", "K", "image_size")})
    samples = read_inputs(tmp_path / "kp.npz")
    assert len(samples) == n and samples[0].sample_id == "kp-000000" and samples[0].global_orient is None
    assert np.array_equal(samples[2].keypoints, arrays["keypoints"][2].astype(np.float32))
    ids = np.array([f"frame{i}" for i in range(n)])
    np.savez(tmp_path / "ids.npz", sample_id=ids, **{k: arrays[k] for k in ("keypoints", "K", "image_size")})
    assert read_inputs(tmp_path / "ids.npz")[1].sample_id == "frame1"
    np.savez(tmp_path / "dup.npz", sample_id=np.array(["x"] * n),
             **{k: arrays[k] for k in ("keypoints", "K", "image_size")})
    with pytest.raises(InputError, match="same id 'x'"):
        read_inputs(tmp_path / "dup.npz")
    np.savez(tmp_path / "nok.npz", keypoints=arrays["keypoints"])
    with pytest.raises(InputError, match="missing K, image_size"):
        read_inputs(tmp_path / "nok.npz")


def test_export_takes_an_input_list_and_resumes_it(tmp_path, capsys, small_prior):
    """``export --data inputs.jsonl``: the paper's setting — one's own images with 2D keypoints and no 3D labels —
    scored into a valid preference dataset (the builtin judge), its ids the list's; the same command again has
    nothing left to do. Before, ``--data`` took only split folders ("not a folder")."""
    from test_export import tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.cli import main

    model = tiny_model(tmp_path / "tiny.pt")
    _photo(tmp_path, "a.png"), _photo(tmp_path, "b.png", (800, 600)), _kp_file(tmp_path, "a.json")
    listing = tmp_path / "inputs.jsonl"
    listing.write_text(json.dumps({"image": "a.png", "keypoints": "a.json"}) + "\n"
                       + json.dumps({"image": "b.png", "keypoints": "a.json", "id": "bee"}) + "\n")
    argv = ["export", "--data", str(listing), "--model", str(model), "-n", "3", "--steps", "2", "--no-memory",
            "--out", str(tmp_path / "ds"), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["groups"], summary["failures"]) == (2, 0)
    rep = D.validate_dataset(tmp_path / "ds")
    assert rep.ok, rep.errors
    assert sorted(r.input_id for r in D.read_manifest(tmp_path / "ds")) == ["a", "bee"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["new_groups"] == 0
    listing.write_text(json.dumps({"image": "a.png", "keypoints": "missing.json"}) + "\n")
    assert main([*argv[:-3], "--out", str(tmp_path / "ds2")]) == 2
    assert "inputs.jsonl:1" in capsys.readouterr().err and not (tmp_path / "ds2").exists()


@pytest.mark.parametrize("orientation", [None, 6])
def test_an_input_lists_images_are_sized_from_their_headers(tmp_path, orientation, monkeypatch):
    """1,000 phone photos took ~7 minutes to list (every pixel decoded to learn the size): an input list reads the
    header alone — the same size read_image gives, upright by EXIF — and read_image is not called."""
    from PIL import Image

    from hmrcritic.hmr import data as hdata
    from hmrcritic.hmr.userdata import read_inputs

    im = Image.new("RGB", (640, 480))
    exif = im.getexif()
    if orientation:
        exif[0x0112] = orientation
    im.save(tmp_path / "a.jpg", exif=exif)
    assert hdata.image_size_of(tmp_path / "a.jpg") == hdata.read_image(tmp_path / "a.jpg").shape[1::-1]
    _kp_file(tmp_path, "a.json")
    (tmp_path / "in.jsonl").write_text(json.dumps({"image": "a.jpg", "keypoints": "a.json"}) + "\n")
    monkeypatch.setattr(hdata, "read_image", lambda *a: pytest.fail("decoded the pixels"))
    assert read_inputs(tmp_path / "in.jsonl")[0].image_size == ((480, 640) if orientation else (640, 480))
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match="not a readable image"):
        hdata.image_size_of(tmp_path / "b.jpg")


def test_a_resumed_export_refuses_an_input_changed_under_its_id(tmp_path, capsys, small_prior):
    """An input list edited under the same id (a camera corrected) was skipped as "already done": the group sampled
    under the old camera stayed in the dataset without a word (found by session 33's README walk)."""
    from test_export import tiny_model

    from hmrcritic.cli import main

    model = tiny_model(tmp_path / "tiny.pt")
    _photo(tmp_path, "a.png"), _kp_file(tmp_path, "a.json")
    listing = tmp_path / "inputs.jsonl"
    listing.write_text(json.dumps({"image": "a.png", "keypoints": "a.json", "focal": 1600}) + "\n")
    argv = ["export", "--data", str(listing), "--model", str(model), "-n", "2", "--steps", "2", "--no-memory",
            "--out", str(tmp_path / "ds")]
    assert main(argv) == 0
    assert main(argv) == 0  # unchanged: resumes, nothing to do
    listing.write_text(json.dumps({"image": "a.png", "keypoints": "a.json", "focal": 1500}) + "\n")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "input 'a' has other K than when its group" in err and "give the changed input a new id" in err, err
