"""Session 27 review: the input readers' leftovers — split manifests naming files outside the split, memory import of
a file with a BOM or in UTF-16, booleans in keypoint slots, train-base's --out naming a file, body-model values
finite yet too large to pose. Each test failed before its fix."""

from __future__ import annotations

import contextlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from hmrcritic.errors import AssetError, InputError

# ---------------------------------------------------------------------------------------------- split manifests


def _split_folder(root: Path, n: int = 3) -> dict:
    """A split folder as generate_split leaves it (one shard of ``n`` scenes, with its sha256); its manifest —
    session 26's fuzzing folder with the shard's checksum, which the readers checked here verify."""
    from test_review_s26_fuzz import _split_folder as unchecked_split_folder

    from hmrcritic.io import sha256_file

    manifest = unchecked_split_folder(root, n)
    manifest["seed"] = 7
    manifest["shards"][0]["sha256"] = sha256_file(root / "shard_000.npz")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest
    return manifest


@pytest.mark.parametrize("where", ["parent", "absolute", "nested"])
def test_a_manifest_naming_a_shard_outside_the_split_folder_is_refused(tmp_path, where):
    """``"file": "../x.npz"`` (or an absolute path) was read as the split's shard from wherever it named: a
    hand-edited or foreign manifest made every command read, hash and train on a file outside the split."""
    from hmrcritic.hmr.data import SceneSet, verify_split_files

    folder = tmp_path / "data" / "test"
    manifest = _split_folder(folder)
    outside = tmp_path / "elsewhere.npz"
    (folder / "shard_000.npz").rename(outside)  # a whole, readable shard: only its place is wrong
    name = {"parent": "../../elsewhere.npz", "absolute": str(outside), "nested": "sub/../../../elsewhere.npz"}[where]
    manifest["shards"][0]["file"] = name
    (folder / "manifest.json").write_text(json.dumps(manifest))
    pattern = (r"test/manifest\.json: names the file .*elsewhere\.npz.*not inside the split's folder; regenerate the "
               r"split: hmrcritic data generate --split test --n 3 --seed 7")
    with pytest.raises(AssetError, match=pattern):
        SceneSet(folder)[0]
    with pytest.raises(AssetError, match=pattern):
        verify_split_files(manifest, folder)  # `data info` and train-base check the files by this, from the manifest


def test_a_wild_manifest_naming_its_labels_outside_the_split_folder_is_refused(tmp_path):
    from hmrcritic.hmr.data import SceneSet

    folder = tmp_path / "wild"
    manifest = _split_folder(folder)
    manifest.update(split="wild", has_labels=False, labels_eval={"file": "../labels.npz"})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    np.savez(tmp_path / "labels.npz", sample_id=np.array(["test-000000"]))
    with pytest.raises(AssetError, match=r"wild/manifest\.json: names the file '\.\./labels\.npz'"):
        SceneSet(folder).eval_labels()


def test_a_split_manifest_with_a_list_as_its_split_name_is_an_asset_error_when_a_shard_is_damaged(tmp_path):
    """The regenerate command looked the manifest's split up in a dict: ``"split": ["test"]`` raised "unhashable
    type: 'list'" out of `data info` / train-base instead of naming the damaged shard."""
    from hmrcritic.hmr.data import verify_split_files

    folder = tmp_path / "test"
    manifest = _split_folder(folder)
    manifest["split"] = ["test"]
    (folder / "shard_000.npz").write_bytes(b"cut")
    with pytest.raises(AssetError, match=r"shard_000\.npz does not match its manifest"):
        verify_split_files(manifest, folder)


def test_a_generated_split_still_reads_and_verifies(tmp_path):
    """The confinement check refuses only names that leave the folder: a real split (shards, wild's labels) reads."""
    from hmrcritic.hmr.data import SceneSet, generate_split, verify_split_files

    folder = generate_split("wild", tmp_path / "wild", n=3, quiet=True)
    scenes = SceneSet(folder)
    verify_split_files(scenes.manifest, folder)
    assert len(scenes) == 3 and scenes[2].sample_id and len(scenes.eval_labels()["sample_id"]) == 3


# ---------------------------------------------------------------------------------------------- memory import

def _export(tmp_path: Path) -> tuple[dict, Path]:
    from hmrcritic.memory.store import MemoryStore

    src = MemoryStore(tmp_path / "source")
    src.export_json(tmp_path / "export.json")
    return json.loads((tmp_path / "export.json").read_text(encoding="utf-8")), tmp_path / "export.json"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le"])
def test_memory_import_reads_an_export_with_a_bom_or_in_utf16(tmp_path, encoding):
    """An export re-saved by a Windows editor (UTF-8 with a BOM) or written through PowerShell's ``>`` (UTF-16) was
    refused as "Unexpected UTF-8 BOM" / "not readable JSON", where the keypoint reader takes both."""
    from hmrcritic.memory.store import MemoryStore

    doc, _ = _export(tmp_path)
    doc["rules"][0]["rule_id"] = "imported-rule"
    doc["rules"][0]["text"] = "Knees bend forward — not backward"  # a non-ASCII character, as rule texts hold
    path = tmp_path / "re-saved.json"
    path.write_bytes(json.dumps(doc, ensure_ascii=False).encode(encoding))
    target = MemoryStore(tmp_path / "target")
    assert target.import_json(path)["rules_added"] == 1
    assert {r.rule_id: r.text for r in target.rules.all()}["imported-rule"] == "Knees bend forward — not backward"


def test_memory_import_of_bytes_in_no_encoding_is_still_a_clear_error(tmp_path):
    from hmrcritic.memory.store import MemoryStore

    path = tmp_path / "bad.json"
    path.write_bytes(b'{"format": "\xff\xfe\xfd"}')
    target = MemoryStore(tmp_path / "target")
    before = target.version()
    with pytest.raises(InputError, match=r"memory import: .*bad\.json is not readable JSON"):
        target.import_json(path)
    assert target.version() == before


# ---------------------------------------------------------------------------------------------- keypoint values

def _pts() -> list[list[float]]:
    return [[100.0 + 10 * i, 200.0 + 5 * i, 0.9] for i in range(17)]


def _layouts(pts: list[list]) -> dict[str, object]:
    """The same 17 points in each reader layout (COCO-17 list, flat, COCO annotation, OpenPose, MMPose, people)."""
    flat = [v for p in pts for v in p]
    body25 = [[0.0, 0.0, 0.0]] * 25
    from hmrcritic.hmr.data import BODY25_TO_COCO17

    body25 = [list(p) for p in body25]
    for k, j in enumerate(BODY25_TO_COCO17):
        body25[int(j)] = pts[k]
    return {
        "list": pts,
        "flat": flat,
        "coco": {"keypoints": flat},
        "coco_results": [{"image_id": 1, "keypoints": flat, "score": 0.9}],
        "openpose": {"people": [{"pose_keypoints_2d": [v for p in body25 for v in p]}]},
        "mmpose": [{"keypoints": [p[:2] for p in pts], "keypoint_scores": [p[2] for p in pts]}],
        "people": [pts, pts],
    }


@pytest.mark.parametrize("layout", ["list", "flat", "coco", "coco_results", "openpose", "mmpose", "people"])
@pytest.mark.parametrize("slot", [0, 1, 2])
def test_a_boolean_in_a_keypoint_slot_is_refused(tmp_path, layout, slot):
    """JSON true/false read as 1.0/0.0: `true` as a confidence was a point seen for sure, `false` a hidden one, and
    in a coordinate a point at pixel 1 or 0 — all without a word."""
    from hmrcritic.hmr.data import read_keypoints_json

    pts = _pts()
    pts[5][slot] = True
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(_layouts(pts)[layout]))
    with pytest.raises(InputError, match=r"kp\.json: keypoints?(_scores)? holds true/false where numbers are "):
        read_keypoints_json(path)
    # the same file with the number in its place reads (the layouts themselves are fine)
    pts[5][slot] = _pts()[5][slot]
    path.write_text(json.dumps(_layouts(pts)[layout]))
    # (two people: the reader says which it took)
    with pytest.warns(UserWarning, match="2 people found") if layout == "people" else contextlib.nullcontext():
        assert read_keypoints_json(path)[5].tolist() == pytest.approx(pts[5], abs=1e-4)


# ---------------------------------------------------------------------------------------------- train-base --out

@pytest.mark.parametrize("name", ["model.pt", "notes.txt"])
def test_train_base_refuses_a_file_as_out_before_printing_anything(tmp_path, capsys, name):
    """``--out`` is the run folder: a file there failed only at the folder's making, after "training base model ->
    FILE (… steps …)" had been printed as if the run had begun (and as "File exists")."""
    from hmrcritic.cli import main

    out = tmp_path / name
    out.write_bytes(b"someone's file")
    assert main(["train-base", "--steps", "2", "--batch-size", "4", "--out", str(out)]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "is a file; give a folder for the run" in cap.err and str(out) in cap.err, cap.err
    assert out.read_bytes() == b"someone's file"


# ---------------------------------------------------------------------------------------------- body files

@pytest.fixture(scope="module")
def mannequin_arrays() -> dict:
    from hmrcritic.hmr import mannequin
    from hmrcritic.hmr.body import read_model_arrays

    file = mannequin.default_folder() / mannequin.FILE_NAME
    mannequin.ensure_mannequin(file.parent)
    return read_model_arrays(file)


@pytest.mark.parametrize("key", ["v_template", "shapedirs", "posedirs", "J_regressor", "weights"])
def test_a_body_model_value_finite_but_huge_is_refused_at_load(tmp_path, mannequin_arrays, key):
    """3e38 is finite in float32 and passed the range check, but posing it overflowed: an inf template, NaN joints
    (and NaN evidence downstream) with no word of the file. Refused at load, naming the file and key."""
    import torch

    from hmrcritic.hmr.body import BodyModel, load_body_model

    arrays = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in mannequin_arrays.items()}
    arrays[key] = arrays[key] / np.abs(arrays[key]).max() * 3e38  # the largest value 3e38, the rest in proportion
    # what loading it gave before: a model that poses some ordinary bodies as inf / NaN
    finite = []
    with torch.no_grad():
        m = BodyModel(arrays, name="probe")
        # whether a given pose overflows depends on the float kernels (on an AMD EPYC none of the first three
        # did, and the precondition failed at HEAD): the larger rotations make sure one of them does
        for go, bp in ((0.0, 0.3), (0.8, 0.3), (1.5, 1.0), (0.0, 2.0), (0.0, -2.0)):
            out = m(torch.full((1, 3), go), torch.full((1, 69), bp), torch.full((1, 10), 2.0))
            finite.append(bool(torch.isfinite(out.vertices).all() and torch.isfinite(out.joints).all()))
    assert not all(finite)
    path = tmp_path / "huge.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=4))
    with pytest.raises(AssetError, match=rf"huge\.pkl: key '{key}' holds a value of 3e\+38, too large for a body"):
        load_body_model(path)


def test_body_models_and_values_just_under_the_bound_still_load(tmp_path, mannequin_arrays):
    """The mannequin loads by both paths the toolkit takes (the default, and a file named by path: how a SMPL file
    is read); one with values just under the bound poses finitely, so the bound refuses only what cannot pose."""
    import shutil

    import torch

    from hmrcritic.hmr import mannequin
    from hmrcritic.hmr.body import MAX_MODEL_VALUE, load_body_model

    assert load_body_model().num_vertices == mannequin_arrays["v_template"].shape[0]
    copy = tmp_path / "SMPL_NEUTRAL.pkl"
    shutil.copyfile(mannequin.default_folder() / mannequin.FILE_NAME, copy)
    assert load_body_model(copy).num_vertices == mannequin_arrays["v_template"].shape[0]
    arrays = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in mannequin_arrays.items()}
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        arrays[key] = np.clip(arrays[key] * 1e9, -0.9 * MAX_MODEL_VALUE, 0.9 * MAX_MODEL_VALUE)
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=4))
    m = load_body_model(path)
    with torch.no_grad():
        out = m(torch.full((1, 3), 0.5), torch.full((1, 69), 0.5), torch.full((1, 10), 50.0))
    assert torch.isfinite(out.vertices).all() and torch.isfinite(out.joints).all()
