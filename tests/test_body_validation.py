"""Body-model files that look like SMPL but are not usable: each gives one AssetError line naming the file and
the key, at load time, instead of a bare IndexError/ValueError from smplx or NaN vertices later."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from hmrcritic.errors import AssetError
from hmrcritic.hmr import body as B
from hmrcritic.hmr import mannequin


@pytest.fixture(scope="module")
def raw():
    mannequin.ensure_mannequin()
    with open(mannequin.default_folder() / mannequin.FILE_NAME, "rb") as fh:
        return pickle.load(fh)


def _kintree(parent_of_5):
    def mutate(d):
        d["kintree_table"] = np.array(d["kintree_table"])
        d["kintree_table"][0, 5] = parent_of_5

    return mutate


CASES = {
    "parent out of range": (_kintree(99), "kintree_table gives joint 5 the parent 99"),
    "parent after the joint": (_kintree(7), "kintree_table gives joint 5 the parent 7"),
    "NaN posedirs": (lambda d: d.__setitem__("posedirs", np.full_like(np.asarray(d["posedirs"]), np.nan)),
                     "'posedirs' contains NaN"),
    "part_of_vertex too short": (lambda d: d.__setitem__("part_of_vertex", np.zeros(5, np.int64)), "part_of_vertex"),
    "part_of_vertex not ints": (lambda d: d.__setitem__("part_of_vertex", "abc"), "part_of_vertex"),
    "vertex_ids not ints": (lambda d: d.__setitem__("vertex_ids", {"nose": "x"}), "vertex_ids"),
    "fractional faces": (lambda d: d.__setitem__("f", np.asarray(d["f"]) + 0.5), "non-integer vertex indices"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_model_is_one_line_naming_file_and_key(raw, tmp_path, case):
    mutate, match = CASES[case]
    data = copy.deepcopy(raw)
    mutate(data)
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(AssetError, match=match) as err:
        B.read_model_arrays(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_official_root_parent_is_accepted(raw, tmp_path):
    data = copy.deepcopy(raw)
    data["kintree_table"] = np.array(data["kintree_table"]).astype(np.uint32)
    data["kintree_table"][0, 0] = 2**32 - 1  # how the official SMPL files mark the root
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(data))
    model = B.BodyModel(B.read_model_arrays(path), name=str(path))
    out = model(np.zeros((1, 3)), np.zeros((1, 69)), np.zeros((1, 10)))
    assert np.isfinite(out.vertices.numpy()).all()


def test_a_truncated_npz_model_is_named_as_one(raw, tmp_path):
    """Cut short, an .npz is no longer recognised as a zip and was read as a pickle: the error spoke of an
    unpickling failure, not of the damaged archive."""
    full = tmp_path / "model.npz"
    np.savez(full, **{k: np.asarray(v) for k, v in raw.items() if k in B.REQUIRED_LAYOUT})
    cut = tmp_path / "cut.npz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(AssetError, match="truncated or corrupt .npz") as info:
        B.read_model_arrays(cut)
    assert str(cut) in str(info.value) and "\n" not in str(info.value)
