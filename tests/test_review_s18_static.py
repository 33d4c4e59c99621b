"""Static-analysis review (s18): defects found by type checking and bug-pattern linting, each shown on a
concrete input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hmrcritic.errors import AssetError  # noqa: E402


def _tamper(root: Path, line: dict, ref: str, key: str, value: np.ndarray) -> None:
    """Replace one array of a group's file and re-sign the file's and the record's checksums, as a shared
    (hostile or broken) dataset could."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.io import atomic_save_npz, record_checksum

    path = root / line[ref]["path"]
    arrays = D.load_npz(path)
    arrays[key] = value
    atomic_save_npz(path, **arrays)
    line[ref]["sha256"] = D.arrays_checksum(arrays)
    body = {k: v for k, v in line.items() if k != "checksum"}
    (root / D.MANIFEST).write_text(json.dumps({**body, "checksum": record_checksum(body)}) + "\n")


@pytest.mark.parametrize("ref,key,value", [
    ("condition", "K", np.array([["f", "0", "c"]] * 3)),
    ("hypotheses", "x0", np.zeros((2, 154)).astype(str)),
    ("condition", "K", np.diag([500.0, 500.0, 1.0]).astype(np.complex64) + 300j),
])
def test_a_group_file_holding_strings_or_complex_numbers_is_reported_not_a_type_error(tmp_path, ref, key, value):
    """An .npz holds string and complex arrays without pickling. A string K or x0 made check_condition /
    check_hypotheses raise a bare TypeError from ``np.isfinite``: ``validate`` (whose job is to list what is wrong)
    and an export's resume (``repair_manifest``) stopped with a traceback; a complex K passed every check and the
    reader dropped its imaginary part (a ComplexWarning at best)."""
    from test_review_s17_security import _dataset

    from hmrcritic.alignment import dataset as D

    line = _dataset(tmp_path)
    _tamper(tmp_path, line, ref, key, value)
    report = D.validate_dataset(tmp_path)
    assert not report.ok and any("not real numbers" in e for e in report.errors), report.errors
    with pytest.raises(AssetError, match="not real numbers"):
        D.GroupPreferenceDataset(tmp_path)[0]
    kept, dropped = D.repair_manifest(tmp_path)
    assert (kept, dropped) == ([], 1)


@pytest.mark.parametrize("damage", ["no data", "short index pointer", "no shape"])
def test_a_body_model_with_a_broken_sparse_matrix_is_one_line_naming_file_and_key(tmp_path, damage):
    """A pickled scipy sparse matrix is rebuilt from the state the file holds (``_SparseStandIn``). A state without
    its arrays, with an index pointer of the wrong length or without a shape raised a bare KeyError / ValueError /
    TypeError from ``read_model_arrays``: the CLI said ``error: KeyError: 'data'``, naming neither the file nor the
    key, where every other malformed model is one AssetError line naming both."""
    import copy
    import pickle

    import scipy.sparse

    from hmrcritic.hmr import body as B
    from hmrcritic.hmr import mannequin

    mannequin.ensure_mannequin()
    with open(mannequin.default_folder() / mannequin.FILE_NAME, "rb") as fh:
        data = copy.deepcopy(pickle.load(fh))
    J = scipy.sparse.csc_matrix(np.asarray(data["J_regressor"]))
    state = J.__dict__
    if damage == "no data":
        del state["data"]
    elif damage == "short index pointer":
        state["indptr"] = state["indptr"][:2]
    else:
        state.pop("_shape", None)
        state.pop("shape", None)
        state["_shape"] = None
    data["J_regressor"] = J
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(AssetError, match="J_regressor") as err:
        B.read_model_arrays(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_dataset_header_that_is_not_utf8_is_reported_naming_the_file(tmp_path):
    """``read_header`` turned a malformed header into an AssetError naming the file, but a header re-saved as UTF-16
    (a Windows editor, PowerShell's Out-File) raised a bare UnicodeDecodeError: ``export validate`` printed
    "error: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff …" without a report or the file's name, and the
    finetuner and a resumed export stopped the same way."""
    from test_review_s17_security import _dataset

    from hmrcritic.alignment import dataset as D

    _dataset(tmp_path)
    header = tmp_path / D.HEADER
    header.write_bytes(header.read_text(encoding="utf-8").encode("utf-16"))
    with pytest.raises(AssetError, match="dataset.json: malformed header: not UTF-8"):
        D.read_header(tmp_path)
    report = D.validate_dataset(tmp_path)
    assert not report.ok and "not UTF-8" in report.errors[0] and str(header) in report.errors[0]


def test_reproduce_progress_log_is_written_in_utf8_whatever_the_locale(tmp_path):
    """``reproduce``'s ``progress.log`` was opened in the locale's encoding (every other file it writes is UTF-8):
    under an ASCII or Latin-1 locale (``LC_ALL=C`` without Python's UTF-8 mode, Windows' cp1252) the explore stage's
    first line ("… × 3 train groups of 6 → memory-…") raised UnicodeEncodeError and stopped the run."""
    import os
    import subprocess

    code = ("import sys; from pathlib import Path; from hmrcritic.alignment.reproduce import _Log; "
            "_Log(Path(sys.argv[1]), False)('explore: 1 round(s) \\u00d7 3 train groups of 6 \\u2192 memory-x')")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert "× 3 train groups of 6 → memory-x" in (tmp_path / "progress.log").read_text(encoding="utf-8")
