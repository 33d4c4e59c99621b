"""Review (session 35): a mutation audit of hmrcritic/alignment/dataset.py.

Each test pins a behaviour docs/CONTRACTS.md ("alignment/dataset.py" and the export-folder layout) or a docstring of
the module promises, which a mutant of the module (a flipped comparison, a dropped check, chosen/rejected swapped …)
survived in the existing tests. Expected values are worked out by hand from those promises, not copied from output.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.alignment import dataset as D
from hmrcritic.errors import AssetError

X = 8  # a small x0 width: the module does not care about the model's 154


def _hyps(n: int, x: int = X) -> dict:
    return {
        "x0": np.arange(n * x, dtype=np.float32).reshape(n, x),
        "global_orient": np.zeros((n, 3), np.float32),
        "body_pose": np.zeros((n, 69), np.float32),
        "betas": np.zeros((n, 10), np.float32),
        "transl": np.zeros((n, 3), np.float32),
    }


def _cond() -> dict:
    kp = np.concatenate([np.full((17, 2), 100.0), np.ones((17, 1))], 1)
    return D.condition_arrays(kp, [[500, 0, 256], [0, 500, 256], [0, 0, 1]], (512, 512))


def _scores(overall) -> list[HypothesisScore]:
    return [HypothesisScore(index=i, motion_structure=1.0, physical_feasibility=2.0, image_alignment=3.0, overall=s,
                            rationale="r") for i, s in enumerate(overall)]


def _header(n: int, **kw) -> D.DatasetHeader:
    return D.DatasetHeader(**{"source": "test", "model_hash": "h", "judge": "builtin", "num_generations": n,
                              "sample_steps": 2, "seed": 7, "x_dim": X, **kw})


def _record(root, gid: str, overall, **kw) -> D.GroupRecord:
    n = len(overall)
    cref, href = D.write_group_arrays(root, gid, _cond(), _hyps(n))
    fields = {"group_id": gid, "input_id": gid, "source": "test", "condition": cref, "hypotheses": href,
              "num_hypotheses": n, "x_dim": X, "scores": _scores(overall), "judge": "builtin",
              "memory_version": "m0", "model_hash": "h", "seed": 7, "group_seed": 1, **kw}
    return D.build_record(**fields)


def _write(root, groups: dict, finished: bool = True, **header) -> list[D.GroupRecord]:
    """A complete dataset folder: header, arrays, manifest and pairs, written with the module's own writers."""
    n = len(next(iter(groups.values())))
    recs = [_record(root, gid, overall) for gid, overall in groups.items()]
    counts = {"finished": True, "groups": len(recs)} if finished else {"finished": False}
    D.write_header(root, _header(n, counts=counts, **header))
    D.rewrite_manifest(root, recs)
    if finished:
        D.write_pairs(root, recs)
    return recs


def _lines(root) -> list[str]:
    return (root / D.MANIFEST).read_text().splitlines(keepends=True)


# ------------------------------------------------------------------------------------------ record schema


@pytest.mark.parametrize("path", ["other/in0.cond.npz", "groups/in0.cond.txt", "groups/in0"])
def test_an_array_path_must_be_groups_slash_a_npz_file(path):
    """ArrayRef: "always groups/<group_id>.<cond|hyps>.npz" (CONTRACTS); another folder or another kind of file is
    no record of this dataset's layout."""
    with pytest.raises(ValueError, match="is not groups/<name>.npz"):
        D.ArrayRef(path=path, sha256="0" * 64)
    assert D.ArrayRef(path="groups/in0.cond.npz", sha256="0" * 64).path == "groups/in0.cond.npz"


def test_scores_out_of_hypothesis_order_are_refused(tmp_path):
    """"scores (N HypothesisScore, index 0..N-1 in order)": a record whose scores are all there but listed in
    another order would pair score i with hypothesis j."""
    rec = _record(tmp_path, "g", [1.0, 5.0])
    raw = rec.model_dump()
    raw["scores"] = list(reversed(raw["scores"]))  # indexes 1, 0
    with pytest.raises(ValueError, match="hypothesis order"):
        D.GroupRecord.model_validate(raw)


def test_advantages_of_another_length_are_refused(tmp_path):
    rec = _record(tmp_path, "g", [1.0, 5.0, 3.0])
    raw = rec.model_dump()
    raw["advantages"] = raw["advantages"][:2]
    with pytest.raises(ValueError, match="num_hypotheses=3"):
        D.GroupRecord.model_validate(raw)


def test_zero_variance_holds_at_exactly_the_tolerance(tmp_path):
    """zero_variance = max(overall) − min(overall) ≤ 1e-6 (CONTRACTS): a spread of exactly 1e-6 is zero-variance."""
    assert 1e-6 - 0.0 == D.ZERO_VARIANCE_TOL == 1e-6
    assert _record(tmp_path, "a", [0.0, 1e-6]).zero_variance is True
    assert _record(tmp_path, "b", [0.0, 2e-6]).zero_variance is False


# ------------------------------------------------------------------------------------------ arrays


def test_arrays_checksum_is_the_documented_recipe_and_covers_the_shape():
    """CONTRACTS: sha256 over the arrays in sorted key order, each key.encode() + dtype.str.encode() +
    repr(shape).encode() + C-order bytes. The same bytes in another shape are other arrays."""
    import hashlib

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([3, 4], dtype=np.int64)
    h = hashlib.sha256()
    for key, arr in (("K", b), ("a", a)):  # sorted: "K" < "a"
        h.update(key.encode() + arr.dtype.str.encode() + repr(arr.shape).encode() + arr.tobytes())
    assert D.arrays_checksum({"a": a, "K": b}) == h.hexdigest()
    assert D.arrays_checksum({"a": a}) != D.arrays_checksum({"a": a.reshape(3, 2)})


@pytest.mark.parametrize("edit", ["fy0", "w0", "h0"])
def test_a_condition_with_a_zero_focal_length_or_image_side_is_refused(edit):
    """check_condition: "K must be finite intrinsics with focal lengths > 0" (both fx and fy) and image_size (W, H)
    > 0 (both sides): either at 0 makes every loss of the group NaN."""
    cond = _cond()
    if edit == "fy0":
        cond["K"] = cond["K"].copy()
        cond["K"][1, 1] = 0
        match = "focal lengths > 0"
    else:
        cond["image_size"] = np.array([0, 512] if edit == "w0" else [512, 0], dtype=np.int64)
        match = r"image_size must be \(W, H\) > 0"
    with pytest.raises(AssetError, match=match):
        D.check_condition(cond, "c")
    D.check_condition(_cond(), "c")  # the unedited condition passes


@pytest.mark.parametrize("n_file", [2, 4])
def test_a_hypotheses_file_must_hold_as_many_hypotheses_as_the_record_says(n_file):
    with pytest.raises(AssetError, match=f"x0 has {n_file} hypotheses, the record says 3"):
        D.check_hypotheses(_hyps(n_file), "h", 3)
    assert D.check_hypotheses(_hyps(3), "h", 3) == (3, X)


def test_one_non_finite_value_in_x0_is_refused():
    hyps = _hyps(3)
    hyps["x0"][1, 2] = np.nan
    with pytest.raises(AssetError, match="non-finite"):
        D.check_hypotheses(hyps, "h")


def test_an_array_file_over_the_size_cap_is_refused(tmp_path, monkeypatch):
    """load_npz refuses a file whose arrays would take more than MAX_ARRAY_FILE_BYTES uncompressed: a cap of 1 kB
    and a file of 2 kB of zeros (over it, under twice or four times it)."""
    path = tmp_path / "z.npz"
    np.savez_compressed(path, x0=np.zeros(512, np.float32))  # 2048 bytes unpacked
    monkeypatch.setattr(D, "MAX_ARRAY_FILE_BYTES", 1024)
    with pytest.raises(AssetError, match="uncompressed"):
        D.load_npz(path)
    monkeypatch.setattr(D, "MAX_ARRAY_FILE_BYTES", 4096)
    assert D.load_npz(path)["x0"].shape == (512,)


# ------------------------------------------------------------------------------------------ manifest


def test_a_line_edited_after_its_checksum_is_dropped_by_the_reader(tmp_path):
    """parse_manifest_line: a line whose checksum does not match is corrupt (None), whatever the schema says."""
    _write(tmp_path, {"a": [1.0, 5.0], "b": [2.0, 3.0]})
    lines = _lines(tmp_path)
    raw = json.loads(lines[0])
    raw["scores"][0]["overall"] = 9.0  # a valid record, but no longer the one the checksum was taken over
    assert D.parse_manifest_line(json.dumps(raw)) is None
    (tmp_path / D.MANIFEST).write_text(json.dumps(raw) + "\n" + lines[1])
    records, skipped, _ = D.scan_manifest(tmp_path)
    assert [r.group_id for r in records] == ["b"] and skipped == [1]


def test_the_reader_keeps_the_first_of_repeated_group_ids_and_names_repeats(tmp_path):
    """read_manifest: "first of duplicate ids kept"; scan_manifest lists each repeat as (line, first line, group id,
    same record)."""
    recs = _write(tmp_path, {"a": [1.0, 5.0], "b": [2.0, 3.0]})
    other = recs[0].model_copy(update={"input_id": "another"})
    lines = _lines(tmp_path)
    text = lines[0] + lines[1] + lines[0] + json.dumps(other.to_line_dict()) + "\n"
    (tmp_path / D.MANIFEST).write_text(text)
    records, skipped, repeats = D.scan_manifest(tmp_path)
    assert [r.group_id for r in records] == ["a", "b"] and records[0].input_id == "a"
    assert skipped == [] and repeats == [(3, 1, "a", True), (4, 1, "a", False)]


def test_repair_drops_a_record_whose_condition_file_changed(tmp_path):
    """record_files_ok: both array files must have the checksums the record names — the condition's too."""
    _write(tmp_path, {"a": [1.0, 5.0], "b": [2.0, 3.0]})
    cond = _cond()
    cond["keypoints"] = cond["keypoints"] + 1  # still a valid condition, but not the one recorded
    D.atomic_save_npz(tmp_path / "groups" / "a.cond.npz", **cond)
    kept, dropped = D.repair_manifest(tmp_path)
    assert [r.group_id for r in kept] == ["b"] and dropped == 1
    assert [r.group_id for r in D.read_manifest(tmp_path)] == ["b"]


def test_repair_keeps_one_line_per_group_id(tmp_path):
    _write(tmp_path, {"a": [1.0, 5.0], "b": [2.0, 3.0]})
    lines = _lines(tmp_path)
    (tmp_path / D.MANIFEST).write_text(lines[0] + lines[1] + lines[0])
    kept, dropped = D.repair_manifest(tmp_path)
    assert [r.group_id for r in kept] == ["a", "b"] and dropped == 1
    assert _lines(tmp_path) == lines


def test_repair_ends_a_complete_last_line_without_newline(tmp_path):
    """A kill between a record and its newline leaves the record whole: repair keeps it and writes the newline, so
    the export's next append does not join two records on one line."""
    _write(tmp_path, {"a": [1.0, 5.0], "b": [2.0, 3.0]})
    text = (tmp_path / D.MANIFEST).read_text()
    (tmp_path / D.MANIFEST).write_text(text.rstrip("\n"))
    kept, dropped = D.repair_manifest(tmp_path)
    assert len(kept) == 2 and dropped == 0
    assert (tmp_path / D.MANIFEST).read_text() == text


# ------------------------------------------------------------------------------------------ pairs


def test_pairs_are_best_against_worst_with_ties_to_the_lowest_index(tmp_path):
    """CONTRACTS: chosen = SIDE(argmax), rejected = SIDE(argmin) of overall, ties to the lowest index; margin =
    overall[best] − overall[worst]; no pair for a zero-variance group."""
    recs = [_record(tmp_path, "g", [2.0, 9.0, 9.0, 2.0, 5.0]), _record(tmp_path, "z", [4.0, 4.0, 4.0, 4.0, 4.0])]
    pairs = D.pair_records(recs)
    assert len(pairs) == 1
    p = pairs[0]
    assert p["group_id"] == "g" and p["prompt"] == {"condition": "groups/g.cond.npz", "input_id": "g"}
    assert p["chosen"]["index"] == 1 and p["rejected"]["index"] == 0
    assert p["chosen"]["overall"] == 9.0 and p["rejected"]["overall"] == 2.0 and p["margin"] == 7.0
    assert p["chosen"]["hypotheses"] == "groups/g.hyps.npz"
    assert p["chosen"]["scores"] == {"motion_structure": 1.0, "physical_feasibility": 2.0, "image_alignment": 3.0}
    assert p["chosen"]["advantage"] > 0 > p["rejected"]["advantage"]


# ------------------------------------------------------------------------------------------ header and validate


@pytest.mark.parametrize("version", [0, 2])
def test_a_header_of_another_format_version_is_refused(tmp_path, version):
    """"format_version 1 (reader refuses others: read_header)" — older as well as newer."""
    _write(tmp_path, {"a": [1.0, 5.0]})
    raw = json.loads((tmp_path / D.HEADER).read_text())
    raw["format_version"] = version
    (tmp_path / D.HEADER).write_text(json.dumps(raw))
    with pytest.raises(AssetError, match=f"format_version {version} unsupported"):
        D.read_header(tmp_path)
    assert not D.validate_dataset(tmp_path).ok


def _rewrite_first(root, **update) -> None:
    """Replace the first manifest record with a copy carrying ``update`` (re-checksummed: a whole record)."""
    records = D.read_manifest(root)
    records[0] = records[0].model_copy(update=update)
    D.rewrite_manifest(root, records)


@pytest.mark.parametrize("field,value", [("seed", 8), ("x_dim", X + 1), ("source", "elsewhere")])
def test_a_record_of_another_export_is_refused_by_validate_and_the_reader(tmp_path, field, value):
    """CONTRACTS: "source/judge/model_hash/seed/split/x_dim equal the header's"; the reader refuses a record of
    another export, validate calls it an error."""
    _write(tmp_path, {"a": [1.0, 5.0], "b": [2.0, 3.0]})
    _rewrite_first(tmp_path, **{field: value})
    report = D.validate_dataset(tmp_path)
    assert not report.ok and any("a record of another export" in e and f"{field}=" in e for e in report.errors)
    with pytest.raises(AssetError, match="a record of another export"):
        D.GroupPreferenceDataset(tmp_path)


def test_validate_reports_an_array_file_whose_contents_changed(tmp_path):
    _write(tmp_path, {"a": [1.0, 5.0], "b": [2.0, 3.0]})
    hyps = _hyps(2)
    hyps["x0"] = hyps["x0"] + 1
    D.atomic_save_npz(tmp_path / "groups" / "b.hyps.npz", **hyps)
    report = D.validate_dataset(tmp_path)
    assert not report.ok and report.errors == ["manifest.jsonl:2: groups/b.hyps.npz: checksum mismatch"]


def test_validate_refuses_a_pair_line_without_prompt_chosen_rejected(tmp_path):
    _write(tmp_path, {"a": [1.0, 5.0]})
    (tmp_path / D.PAIRS).write_text(json.dumps({"group_id": "a", "margin": 4.0}) + "\n")
    report = D.validate_dataset(tmp_path)
    assert not report.ok and any(e.startswith("pairs.jsonl:1: malformed") for e in report.errors)


@pytest.mark.parametrize("written", [1, 3])
def test_validate_compares_a_finished_exports_group_count_both_ways(tmp_path, written):
    """"validate checks … a finished export's group count": lines lost (3 written, 2 there) or added (1 written)."""
    _write(tmp_path, {"a": [1.0, 5.0], "b": [2.0, 3.0]})
    raw = json.loads((tmp_path / D.HEADER).read_text())
    raw["counts"]["groups"] = written
    (tmp_path / D.HEADER).write_text(json.dumps(raw))
    report = D.validate_dataset(tmp_path)
    assert not report.ok and any(f"the finished export wrote {written} groups" in e for e in report.errors)


def test_validate_reports_a_record_of_another_format_version(tmp_path):
    _write(tmp_path, {"a": [1.0, 5.0]})
    _rewrite_first(tmp_path, format_version=2)
    report = D.validate_dataset(tmp_path)
    assert not report.ok and "manifest.jsonl:1: format_version 2 != header 1" in report.errors


def test_failed_groups_are_counted_once_each(tmp_path):
    """open_failures: "each once, in file order"; a group failed on two runs is two lines, one input."""
    _write(tmp_path, {"a": [1.0, 5.0]})
    lines = [{"group_id": g, "input_id": g, "stage": "score", "error": "e"} for g in ("x", "y", "x", "a")]
    (tmp_path / D.FAILURES).write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    assert D.open_failures(tmp_path, {"a"}) == ["x", "y"]
    assert any(w.startswith("2 input(s) failed") for w in D.validate_dataset(tmp_path).warnings)


# ------------------------------------------------------------------------------------------ reader


def test_the_reader_verifies_checksums_unless_told_not_to(tmp_path):
    _write(tmp_path, {"a": [1.0, 5.0]})
    cond = _cond()
    cond["keypoints"] = cond["keypoints"] + 1
    D.atomic_save_npz(tmp_path / "groups" / "a.cond.npz", **cond)
    with pytest.raises(AssetError, match=r"a\.cond\.npz: checksum does not match manifest"):
        D.GroupPreferenceDataset(tmp_path)[0]
    assert D.GroupPreferenceDataset(tmp_path, verify=False)[0]["keypoints"][0, 0] == 101.0


def test_a_reader_item_carries_the_stored_scores_and_advantages_in_hypothesis_order(tmp_path):
    """Item: overall (N,), axes (N,3) in AXES order, advantages (N,) — the stored ones, hypothesis i at row i."""
    _write(tmp_path, {"a": [1.0, 5.0, 3.0]})
    item = D.GroupPreferenceDataset(tmp_path)[0]
    assert item["overall"].tolist() == [1.0, 5.0, 3.0]
    assert item["axes"].tolist() == [[1.0, 2.0, 3.0]] * 3
    # A_i = (s_i − 3) / (std + 1e-8), std = sqrt(8/3): negative, positive, zero
    std = np.sqrt(8 / 3)
    assert np.allclose(item["advantages"].numpy(), [-2 / std, 2 / std, 0.0], atol=1e-6)
    assert item["x0"].shape == (3, X) and item["x0"][1, 0] == X


def test_the_reader_refuses_two_different_records_of_one_group(tmp_path):
    recs = _write(tmp_path, {"a": [1.0, 5.0], "b": [2.0, 3.0]})
    other = recs[0].model_copy(update={"input_id": "another"})
    with open(tmp_path / D.MANIFEST, "a") as fh:
        fh.write(json.dumps(other.to_line_dict()) + "\n")
    with pytest.raises(AssetError, match="group a is on line 1 and again, with other content, on line 3"):
        D.GroupPreferenceDataset(tmp_path)


def test_skip_zero_variance_leaves_out_the_groups_without_a_preference(tmp_path):
    _write(tmp_path, {"a": [1.0, 5.0], "z": [4.0, 4.0], "b": [2.0, 3.0]})
    assert [r.group_id for r in D.GroupPreferenceDataset(tmp_path, skip_zero_variance=True).records] == ["a", "b"]
    assert len(D.GroupPreferenceDataset(tmp_path)) == 3
