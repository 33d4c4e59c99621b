"""Review s21 (mutation testing): tests that kill mutants of io, the dataset format, the stats tracker and the VLM
judge's retry policy that no other test noticed (each test's docstring names the promise it pins).

Mutants were made one at a time in a clone and run against the module's own tests; the survivors that break a
documented promise are pinned here."""

from __future__ import annotations

import json
import os
import re
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from hmrcritic.errors import JudgeError
from hmrcritic.io import append_jsonl, record_checksum

# ------------------------------------------------------------------------------------------------- io.py


def test_pid_alive_counts_another_users_process_as_alive(monkeypatch):
    """io.pid_alive's docstring: "another user's counts" — ``os.kill(pid, 0)`` refused with EPERM means the
    process exists (a lock's holder run by another user must not be called dead and its lock taken over)."""
    from hmrcritic import io as hio

    def refused(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(hio.os, "kill", refused)
    assert hio.pid_alive(4242) is True


def test_waiting_lock_times_out_into_the_callers_error_or_runs_unlocked(tmp_path):
    """io.waiting_lock: a wait for another holder that times out raises ``timed_out()``, or runs the block
    unlocked when ``timed_out`` is None; a free lock is held for the block and let go after it."""
    from filelock import FileLock

    from hmrcritic.io import waiting_lock

    class Stuck(Exception):
        pass

    path = tmp_path / "x.lock"
    other = FileLock(str(path))  # another open of the file: flock conflicts with it even in this process
    other.acquire()
    try:
        ran = []
        with pytest.raises(Stuck), waiting_lock(path, 0.05, timed_out=Stuck):
            ran.append("locked")
        assert ran == []
        with waiting_lock(path, 0.05):
            ran.append("unlocked")
        assert ran == ["unlocked"]
    finally:
        other.release()
    with waiting_lock(path, 0.05, timed_out=Stuck):
        probe = FileLock(str(path))
        with pytest.raises(Exception, match="not be acquired|Timeout"):
            probe.acquire(timeout=0.05)
    probe.acquire(timeout=0.05)  # released at the end of the block
    probe.release()


def test_exclusive_lock_names_its_holder_and_leaves_no_record(tmp_path):
    """io.exclusive_lock: a second holder fails at once with ``busy(holder)`` naming the first (``what`` and
    pid) from the record kept beside the lock; the record goes when the first lets go."""
    from hmrcritic.io import LockBusy, exclusive_lock

    lock = tmp_path / ".job.lock"
    with exclusive_lock(lock, "an export"):
        assert json.loads((tmp_path / ".job.json").read_text())["what"] == "an export"
        with pytest.raises(LockBusy, match=rf"an export \(pid {os.getpid()}, since \d{{4}}-"), \
                exclusive_lock(lock, "another export"):
            pass
    assert not (tmp_path / ".job.json").exists()
    with exclusive_lock(lock, "later"):  # free again
        pass


def test_newest_mtime_sees_a_file_written_deep_inside_a_folder(tmp_path):
    """io.newest_mtime: the newest mtime in the tree (a folder's own mtime does not change when a file deep
    inside it is written: prune dated a snapshot being written by it); 0.0 for a path that is gone."""
    from hmrcritic.io import newest_mtime

    deep = tmp_path / "snap" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "f.bin").write_bytes(b"x")
    for p in (tmp_path / "snap", tmp_path / "snap" / "a", deep):
        os.utime(p, (1000.0, 1000.0))
    os.utime(deep / "f.bin", (5000.0, 5000.0))
    assert newest_mtime(tmp_path / "snap") == 5000.0
    assert newest_mtime(tmp_path / "gone") == 0.0


def test_an_atomic_write_onto_a_folder_names_it_and_a_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
    """io.atomic_write_bytes: a target that is a folder is an IsADirectoryError naming it (not os.replace's error
    naming the hidden temporary file); a write that fails at the rename removes its temporary file and keeps the
    old file."""
    from hmrcritic import io as hio

    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        hio.atomic_write_text(tmp_path / "d", "x")
    assert info.value.filename == str(tmp_path / "d")
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    target = tmp_path / "keep.json"
    target.write_text("old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hio.os, "replace", fail)
    with pytest.raises(OSError) as info:
        hio.atomic_write_text(target, "new")
    assert info.value.filename == str(target)  # names the file asked for
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["d", "keep.json"]


def test_as_text_decodes_a_names_bytes_as_utf8_and_replaces_the_rest():
    """io.as_text: a name whose bytes are not UTF-8 (surrogate-escaped by Python) becomes U+FFFD, a UTF-8 name
    read under an ASCII locale is itself again, and a lone surrogate from JSON is replaced too."""
    from hmrcritic.io import as_text

    assert as_text("caf\udce9.jpg") == "caf\ufffd.jpg"
    assert as_text("caf\udcc3\udca9.jpg") == "café.jpg"
    assert as_text("plain.jpg") == "plain.jpg"
    assert "\ud800" not in as_text("a\ud800b") and as_text("a\ud800b").encode("utf-8")


def test_read_jsonl_skips_lines_that_parse_but_are_no_record(tmp_path):
    """io.read_jsonl: a line that is JSON but not an object (``5``, ``[...]``, ``"x"``) is no record: skipped like
    a torn line, never handed to a caller that indexes it by key."""
    from hmrcritic.io import append_jsonl, read_jsonl

    log = tmp_path / "log.jsonl"
    log.write_text('5\n[{"checksum": "x"}]\n"text"\nnull\n')
    append_jsonl(log, {"step": 1})
    assert [r["step"] for r in read_jsonl(log)] == [1]
# --------------------------------------------------------------------------------------- dataset helpers

X_DIM = 16


def _scores(overall):
    from hmrcritic.agent.schema import HypothesisScore

    return [HypothesisScore(index=i, motion_structure=s, physical_feasibility=s, image_alignment=s, overall=s,
                            rationale="r") for i, s in enumerate(overall)]


def _write_dataset(root: Path, groups: dict[str, list[float]], seed: int = 0, finish: bool = True) -> list:
    """A dataset written the way an export writes it: header, arrays, checksummed manifest lines, pairs and
    (``finish``) the finished counts. ``groups`` maps a group id to its hypotheses' overall scores."""
    from hmrcritic.alignment import dataset as D

    n = len(next(iter(groups.values())))
    header = D.DatasetHeader(source="test", model_hash="x", judge="builtin", num_generations=n, sample_steps=2,
                             seed=seed, x_dim=X_DIM)
    D.write_header(root, header)
    records = []
    for g, (gid, overall) in enumerate(groups.items()):
        rng = np.random.default_rng(g)
        x0 = rng.normal(size=(n, X_DIM)).astype(np.float32)
        hyps = {"x0": x0, "global_orient": np.zeros((n, 3), np.float32), "body_pose": np.zeros((n, 69), np.float32),
                "betas": np.zeros((n, 10), np.float32), "transl": np.zeros((n, 3), np.float32)}
        cond = D.condition_arrays(np.ones((17, 3)), np.diag([500.0, 500.0, 1.0]), (512, 512))
        cref, href = D.write_group_arrays(root, gid, cond, hyps)
        rec = D.build_record(group_id=gid, input_id=gid, source="test", condition=cref, hypotheses=href,
                             num_hypotheses=n, x_dim=X_DIM, scores=_scores(overall), judge="builtin",
                             memory_version="m0", model_hash="x", seed=seed, group_seed=g)
        append_jsonl(root / D.MANIFEST, {k: v for k, v in rec.to_line_dict().items() if k != "checksum"})
        records.append(rec)
    n_pairs = D.write_pairs(root, records)
    if finish:
        header.counts = {"finished": True, "inputs": len(records), "groups": len(records), "failures_open": 0,
                         "pairs": n_pairs}
        D.write_header(root, header)
    return records


def test_group_ids_and_seeds_depend_on_source_input_and_export_seed():
    """dataset.group_id_for: deterministic and file-name safe from (source, input id, export seed), the readable
    part cut at 40 characters; group_seed_for: from (export seed, input id), whatever worker draws it. A seed left
    out made two exports with different --seed share group ids (and a resume mix them)."""
    from hmrcritic.alignment.dataset import group_id_for, group_seed_for

    gid = group_id_for("test", "img 1/a.jpg", 0)
    assert gid == group_id_for("test", "img 1/a.jpg", 0) and re.fullmatch(r"img_1_a\.jpg-[0-9a-f]{12}", gid)
    assert gid != group_id_for("test", "img 1/a.jpg", 1) and gid != group_id_for("wild", "img 1/a.jpg", 0)
    assert len(group_id_for("test", "x" * 100, 0)) == 40 + 1 + 12
    assert group_seed_for(0, "a") == group_seed_for(0, "a")
    assert group_seed_for(0, "a") != group_seed_for(1, "a") and group_seed_for(0, "a") != group_seed_for(0, "b")


def test_arrays_checksum_covers_dtype_and_shape_not_only_bytes():
    """dataset.arrays_checksum: "key, dtype, shape, bytes" — the same bytes read as another dtype or shape are
    other arrays, and a file rewritten so must not keep its manifest checksum."""
    from hmrcritic.alignment.dataset import arrays_checksum

    a = np.arange(6, dtype=np.float32)
    base = arrays_checksum({"x0": a.reshape(2, 3)})
    assert base == arrays_checksum({"x0": a.reshape(2, 3).copy()})
    assert base != arrays_checksum({"x0": a.reshape(3, 2)})
    assert base != arrays_checksum({"x0": a.view(np.int32).reshape(2, 3)})
    assert base != arrays_checksum({"x1": a.reshape(2, 3)})


@pytest.mark.parametrize("what", ["fy0", "height0", "n", "nan"])
def test_group_arrays_with_a_zero_focal_or_size_or_the_wrong_count_are_refused(what):
    """dataset.check_condition: focal lengths (both) and image size (both sides) > 0; check_hypotheses: the
    record's hypothesis count and finite x0 (a NaN made every loss of the group NaN)."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.errors import AssetError

    n = 3
    hyps = {"x0": np.zeros((n, X_DIM), np.float32), "global_orient": np.zeros((n, 3), np.float32),
            "body_pose": np.zeros((n, 69), np.float32), "betas": np.zeros((n, 10), np.float32),
            "transl": np.zeros((n, 3), np.float32)}
    K, size = np.diag([500.0, 500.0, 1.0]), (512, 512)
    if what == "fy0":
        K[1, 1] = 0.0
    elif what == "height0":
        size = (512, 0)
    elif what == "nan":
        hyps["x0"][1, 2] = np.nan
    cond = D.condition_arrays(np.ones((17, 3)), K, size)
    if what in ("n", "nan"):  # the condition is good and passes: the hypotheses are what is refused
        D.check_condition(cond, "c")
        with pytest.raises(AssetError, match=r"^h: x0 (has 3 hypotheses|contains non-finite)"):
            D.check_hypotheses(hyps, "h", n=n + 1 if what == "n" else n)
    else:
        with pytest.raises(AssetError, match=r"^c: (K must be|image_size must be)"):
            D.check_condition(cond, "c")


def test_pairs_skip_tied_groups_and_pair_the_first_best_with_the_first_worst(tmp_path):
    """dataset.pair_records: best vs worst hypothesis of each group with a score gap (a tied group has no pair),
    ties resolved to the lowest index, the margin their overall difference."""
    from hmrcritic.alignment import dataset as D

    recs = _write_dataset(tmp_path, {"g0": [3.0, 7.0, 7.0, 1.0, 1.0], "tied": [5.0] * 5})
    pairs = D.pair_records(recs)
    assert [p["group_id"] for p in pairs] == ["g0"]
    assert pairs[0]["chosen"]["index"] == 1 and pairs[0]["rejected"]["index"] == 3
    assert pairs[0]["margin"] == pytest.approx(6.0)
    assert [r.zero_variance for r in recs] == [False, True]


def test_a_header_mismatch_names_the_seed_and_the_width():
    """dataset.header_mismatch: a record of an export with another seed or x_dim is another export's."""
    from hmrcritic.alignment import dataset as D

    rec = D.build_record(group_id="g", input_id="g", source="test", condition=D.ArrayRef(path="groups/g.cond.npz",
                         sha256="0"), hypotheses=D.ArrayRef(path="groups/g.hyps.npz", sha256="0"), num_hypotheses=2,
                         x_dim=X_DIM, scores=_scores([1.0, 2.0]), judge="builtin", memory_version="m0",
                         model_hash="x", seed=3, group_seed=0)
    header = D.DatasetHeader(source="test", model_hash="x", judge="builtin", num_generations=2, sample_steps=2,
                             seed=3, x_dim=X_DIM)
    assert D.header_mismatch(header, rec) == []
    assert D.header_mismatch(header.model_copy(update={"seed": 4}), rec) == ["seed=3"]
    assert D.header_mismatch(header.model_copy(update={"x_dim": X_DIM + 1}), rec) == [f"x_dim={X_DIM}"]
    assert D.header_mismatch(header.model_copy(update={"x_dim": None}), rec) == []


def test_read_and_repair_keep_the_first_of_duplicate_ids_and_end_the_file_with_a_newline(tmp_path):
    """dataset.read_manifest: "first of duplicate ids kept"; repair_manifest drops the later duplicate and
    rewrites a manifest whose last line lacks its newline (the next append must not join it)."""
    from hmrcritic.alignment import dataset as D

    _write_dataset(tmp_path, {"g0": [1.0, 2.0], "g1": [2.0, 1.0]})
    path = tmp_path / D.MANIFEST
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    dup = {**first, "memory_version": "m1"}
    dup["checksum"] = record_checksum(dup)
    path.write_text(lines[0] + "\n" + lines[1] + "\n" + json.dumps(dup))  # no newline at the end
    recs = D.read_manifest(tmp_path)
    assert [(r.group_id, r.memory_version) for r in recs] == [("g0", "m0"), ("g1", "m0")]
    kept, dropped = D.repair_manifest(tmp_path)
    assert [r.group_id for r in kept] == ["g0", "g1"] and dropped == 1
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    path.write_text(lines[0] + "\n" + lines[1])  # only the newline missing
    assert D.repair_manifest(tmp_path)[1] == 0 and path.read_text().endswith("\n")
    (tmp_path / "groups" / "g1.hyps.npz").unlink()  # a record whose arrays are gone is dropped too
    kept, dropped = D.repair_manifest(tmp_path)
    assert [r.group_id for r in kept] == ["g0"] and dropped == 1 and path.read_text() == lines[0] + "\n"


def test_validate_reports_each_documented_problem(tmp_path):
    """dataset.validate_dataset: a torn last line, advantages that do not match the scores, array files no record
    names (a warning), a missing or edited pairs file, a finished export's group count, an unfinished export (a
    warning), open failures (a warning), and ``max_errors``."""
    from hmrcritic.alignment import dataset as D

    good = tmp_path / "good"
    _write_dataset(good, {"g0": [1.0, 2.0, 4.0], "g1": [3.0, 2.0, 1.0]})
    rep = D.validate_dataset(good)
    assert rep.ok and rep.errors == [] and rep.warnings == [] and rep.groups == 2 and rep.pairs == 2

    def fresh(name):
        import shutil

        shutil.copytree(good, tmp_path / name)
        return tmp_path / name

    torn = fresh("torn")
    (torn / D.MANIFEST).write_text((torn / D.MANIFEST).read_text().rstrip("\n"))
    assert any("torn last line" in e for e in D.validate_dataset(torn).errors)

    adv = fresh("adv")
    lines = (adv / D.MANIFEST).read_text().splitlines()
    rec = json.loads(lines[0])
    rec["advantages"] = list(reversed(rec["advantages"]))
    rec["checksum"] = record_checksum(rec)
    (adv / D.MANIFEST).write_text(json.dumps(rec) + "\n" + lines[1] + "\n")
    assert any("advantages do not match" in e for e in D.validate_dataset(adv).errors)

    version = fresh("version")
    lines = (version / D.MANIFEST).read_text().splitlines()
    rec = json.loads(lines[1])
    rec["format_version"] = 2
    rec["checksum"] = record_checksum(rec)
    (version / D.MANIFEST).write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
    assert "manifest.jsonl:2: format_version 2 != header 1" in D.validate_dataset(version).errors

    narrow = fresh("narrow")
    hyps = D.load_npz(narrow / "groups" / "g0.hyps.npz")
    hyps["x0"] = hyps["x0"][:, :-1]
    D.atomic_save_npz(narrow / "groups" / "g0.hyps.npz", **hyps)
    lines = (narrow / D.MANIFEST).read_text().splitlines()
    rec = json.loads(lines[0])
    rec["hypotheses"]["sha256"] = D.arrays_checksum(hyps)
    rec["checksum"] = record_checksum(rec)
    (narrow / D.MANIFEST).write_text(json.dumps(rec) + "\n" + lines[1] + "\n")
    assert f"manifest.jsonl:1: groups/g0.hyps.npz: x0 width {X_DIM - 1} != x_dim {X_DIM}" in \
        D.validate_dataset(narrow).errors

    count = fresh("count")
    header = D.read_header(count)
    D.write_header(count, header.model_copy(update={"num_generations": 4}))
    assert "manifest.jsonl:1: 3 hypotheses, the header says 4" in D.validate_dataset(count).errors

    orphan = fresh("orphan")
    (orphan / D.GROUPS / "stray.hyps.npz").write_bytes((orphan / D.GROUPS / "g0.hyps.npz").read_bytes())
    rep = D.validate_dataset(orphan)
    assert rep.ok and any("not referenced" in w for w in rep.warnings)

    nopairs = fresh("nopairs")
    (nopairs / D.PAIRS).unlink()
    assert any("pairs.jsonl: missing" in e for e in D.validate_dataset(nopairs).errors)
    edited = fresh("edited")
    (edited / D.PAIRS).write_text((edited / D.PAIRS).read_text().splitlines()[0] + "\n")
    assert any("not the pairs of the manifest" in e for e in D.validate_dataset(edited).errors)

    lost = fresh("lost")
    (lost / D.MANIFEST).write_text((lost / D.MANIFEST).read_text().splitlines()[0] + "\n")
    D.write_pairs(lost, D.read_manifest(lost))
    assert any("the finished export wrote 2 groups" in e for e in D.validate_dataset(lost).errors)

    unfinished = fresh("unfinished")
    header = D.read_header(unfinished)
    header.counts = {"finished": False}
    D.write_header(unfinished, header)
    (unfinished / D.FAILURES).write_text('{"group_id": "g9", "input_id": "g9", "stage": "score", "error": "x"}\n')
    rep = D.validate_dataset(unfinished)
    assert rep.ok and any("did not finish" in w for w in rep.warnings)
    assert any("1 input(s) failed" in w for w in rep.warnings)

    many = tmp_path / "many"
    _write_dataset(many, {"g0": [1.0, 2.0], "g1": [2.0, 1.0], "g2": [1.0, 3.0]})
    for p in (many / D.GROUPS).iterdir():
        p.unlink()  # two errors a record
    errors = D.validate_dataset(many, max_errors=3).errors
    assert "… too many errors, stopped" in errors
    assert [e for e in errors if e.startswith("manifest.jsonl:")] == [
        f"manifest.jsonl:{i}: {kind} file groups/g{i - 1}.{suffix}.npz missing"
        for i in (1, 2) for kind, suffix in (("condition", "cond"), ("hypotheses", "hyps"))]


def test_the_reader_skips_tied_groups_on_request_and_verifies_the_condition_file_too(tmp_path):
    """dataset.GroupPreferenceDataset: ``skip_zero_variance`` leaves out groups whose scores all tie; ``verify``
    checks both array files' checksums (the condition file's change named, not blamed on the hypotheses)."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.errors import AssetError

    _write_dataset(tmp_path, {"g0": [1.0, 2.0], "tied": [4.0, 4.0]})
    assert len(D.GroupPreferenceDataset(tmp_path)) == 2
    ds = D.GroupPreferenceDataset(tmp_path, skip_zero_variance=True)
    assert [r.group_id for r in ds.records] == ["g0"]
    item = ds[0]
    assert item["advantages"].tolist() == pytest.approx([-1.0, 1.0])
    cond = D.load_npz(tmp_path / "groups" / "g0.cond.npz")
    cond["K"] = cond["K"] * 2
    D.atomic_save_npz(tmp_path / "groups" / "g0.cond.npz", **cond)
    with pytest.raises(AssetError, match=r"g0\.cond\.npz: checksum"):
        ds[0]
    assert D.GroupPreferenceDataset(tmp_path, verify=False)[0]["K"][0, 0] == 1000.0


def test_a_group_whose_scores_differ_by_no_more_than_the_tolerance_is_tied():
    """dataset.build_record / stats.zero_variance_mask: scores within ZERO_VARIANCE_TOL (1e-6) of each other
    are a tie (zero_variance, zero advantages), at the tolerance included."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.stats import ZERO_VARIANCE_TOL, zero_variance_mask

    assert zero_variance_mask(torch.tensor([[0.0, ZERO_VARIANCE_TOL]], dtype=torch.float64)).tolist() == [True]
    assert zero_variance_mask(torch.tensor([[0.0, 3 * ZERO_VARIANCE_TOL]], dtype=torch.float64)).tolist() == [False]
    rec = D.build_record(group_id="g", input_id="g", source="test", condition=D.ArrayRef(path="groups/g.cond.npz",
                         sha256="0"), hypotheses=D.ArrayRef(path="groups/g.hyps.npz", sha256="0"), num_hypotheses=2,
                         x_dim=X_DIM, scores=_scores([5.0, 5.0 + 5e-7]), judge="builtin", memory_version="m0",
                         model_hash="x", seed=0, group_seed=0)
    assert rec.zero_variance and rec.advantages == [0.0, 0.0]


def test_a_record_whose_scores_are_not_in_hypothesis_order_is_refused():
    """dataset.GroupRecord: scores must be in hypothesis order with index 0..N-1 (the advantages and pairs are
    positional)."""
    from pydantic import ValidationError

    from hmrcritic.alignment import dataset as D

    fields = dict(group_id="g", input_id="g", source="test", condition=D.ArrayRef(path="groups/g.cond.npz",
                  sha256="0"), hypotheses=D.ArrayRef(path="groups/g.hyps.npz", sha256="0"), num_hypotheses=2,
                  x_dim=X_DIM, judge="builtin", memory_version="m0", model_hash="x", seed=0, group_seed=0)
    D.build_record(**fields, scores=_scores([1.0, 2.0]))
    swapped = list(reversed(_scores([1.0, 2.0])))
    with pytest.raises(ValidationError, match="hypothesis order"):
        D.build_record(**fields, scores=swapped)


@pytest.mark.parametrize(("key", "value"), [
    ("source", "wild"), ("model_hash", "y"), ("judge", "vlm"), ("judge_model", "m @ http://h/v1"),
    ("scorer", "mod:fn"), ("memory_version", "m9"), ("num_generations", 7), ("sample_steps", 9), ("seed", 5),
    ("x_dim", X_DIM + 1)])
def test_resuming_an_export_with_any_recorded_setting_changed_is_refused_naming_both(tmp_path, key, value):
    """CONTRACTS.md (dataset.json): resuming into a folder with any of source, model_hash, judge, judge_model,
    scorer, memory_version, num_generations, sample_steps, seed or x_dim different is refused, both values named;
    the folder is left as it was."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import _check_or_write_header
    from hmrcritic.errors import InputError

    _write_dataset(tmp_path, {"g0": [1.0, 2.0], "g1": [2.0, 1.0]})
    old = D.read_header(tmp_path)
    before = (tmp_path / D.HEADER).read_bytes()
    new = old.model_copy(update={key: value, "counts": {}})
    with pytest.raises(InputError, match=rf"different {key} \({key}: {re.escape(repr(getattr(old, key)))} there, "
                                         rf"{re.escape(repr(value))} now\)"):
        _check_or_write_header(tmp_path, new)
    assert (tmp_path / D.HEADER).read_bytes() == before


def test_resuming_an_export_with_the_same_settings_marks_it_unfinished_and_keeps_its_counts(tmp_path):
    """export._check_or_write_header: the same settings resume; the header keeps the folder's counts, marked
    unfinished until the run's end rewrites them (validate then tells a partial dataset)."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import _check_or_write_header

    _write_dataset(tmp_path, {"g0": [1.0, 2.0], "g1": [2.0, 1.0]})
    old = D.read_header(tmp_path)
    _check_or_write_header(tmp_path, old.model_copy(update={"counts": {}}))
    counts = D.read_header(tmp_path).counts
    assert counts == {**old.counts, "finished": False} and counts["groups"] == 2
# ------------------------------------------------------------------------------------------ stats tracker


def test_group_stat_tracker_summary_by_hand_and_its_state_round_trip():
    """stats.GroupStatTracker (the finetuner's ``batch_*`` log fields): mean score, mean within-group population
    std and mean best-minus-worst gap per group seen; an empty window summarises to zeros (no division by zero);
    ``state_dict``/``load_state_dict`` (through JSON, as a training state is saved) resume the window exactly."""
    from hmrcritic.alignment.stats import GroupStatTracker

    empty = GroupStatTracker().summary()
    assert empty == {"groups": 0, "distinct_groups": 0, "zero_variance_share": 0.0, "score_mean": 0.0,
                     "score_std_mean": 0.0, "score_gap_mean": 0.0}
    s = torch.tensor([[1.0, 2.0, 6.0], [5.0, 5.0, 5.0]])
    tr = GroupStatTracker()
    zero = tr.update(["a", "b"], s)
    assert zero.tolist() == [False, True]
    tr.update(["a", "c"], s + 1.0)
    summ = tr.summary()
    std0 = float(np.std([1.0, 2.0, 6.0]))  # population std
    assert summ["groups"] == 4 and summ["distinct_groups"] == 3 and summ["zero_variance_share"] == 0.5
    assert summ["score_mean"] == pytest.approx((3 + 5 + 4 + 6) / 4)
    assert summ["score_std_mean"] == pytest.approx(2 * std0 / 4)
    assert summ["score_gap_mean"] == pytest.approx((5 + 0 + 5 + 0) / 4)
    again = GroupStatTracker()
    again.load_state_dict(json.loads(json.dumps(tr.state_dict())))
    assert again.summary() == pytest.approx(summ)
    again.update(["d"], torch.tensor([[0.0, 10.0, 10.0]]))
    tr.update(["d"], torch.tensor([[0.0, 10.0, 10.0]]))
    assert again.summary() == pytest.approx(tr.summary()) and again.summary()["distinct_groups"] == 4
    tr.clear()
    assert tr.summary() == empty
    with pytest.raises(ValueError):
        tr.update(["a"], s)  # two groups' scores for one id


def test_advantages_keep_the_scores_float_dtype():
    """stats.group_advantages computes in float64 and hands back the scores' own float dtype (float32 for integer
    scores): a float64 caller (the manifest's advantages_np) must not be rounded through float32."""
    from hmrcritic.alignment.stats import advantages_np, group_advantages

    s = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64) / 3
    adv = group_advantages(s)
    assert adv.dtype == torch.float64
    ref = (s - s.mean()) / (s.std(unbiased=False) + 1e-8)
    assert torch.equal(adv, ref)
    assert group_advantages(torch.tensor([[1, 2, 4]])).dtype == torch.float32
    assert advantages_np([1 / 3, 2 / 3, 4 / 3]) == ref[0].tolist()
# --------------------------------------------------------------------------------------------- objectives


def _fixed_errors(monkeypatch, err_pol):
    """Make the objectives see these policy denoising errors (the reference's all 0): the metrics can then be
    checked by hand against the module docstring's formulas."""
    from hmrcritic.alignment import objectives as O

    def errors(policy, reference, x0, t, eps, cond):
        assert x0.shape[0] == len(err_pol)
        return torch.tensor(err_pol, dtype=torch.float64, requires_grad=True), torch.zeros(len(err_pol),
                                                                                           dtype=torch.float64)

    monkeypatch.setattr(O, "_policy_and_reference_errors", errors)


def test_dpo_metrics_follow_its_formula(monkeypatch):
    """objectives.dpo_loss: L = −log σ(−β/2 · Δ) per antithetic pair, Δ = (e_θ(w) − e_ref(w)) − (e_θ(l) − e_ref(l)),
    and its logged ``sigma_mean`` is σ(β/2 · Δ) — the same β/2 as the loss, so it reads as the share of the
    saturation the loss reached; ``reward_margin`` is −β (d_w − d_l) averaged over both timesteps."""
    from hmrcritic.alignment.objectives import ObjectiveConfig, compute_loss

    # rows: winner at t, winner at T−1−t, loser at t, loser at T−1−t
    _fixed_errors(monkeypatch, [0.02, 0.04, 0.05, 0.03])
    delta = np.array([0.02 - 0.05, 0.04 - 0.03])
    beta = 100.0
    x0 = torch.zeros((1, 3, 4), dtype=torch.float64)
    out = compute_loss(types.SimpleNamespace(num_timesteps=10), None, x0, torch.zeros((1, 2)),
                       torch.tensor([[1.0, 5.0, 3.0]]), ObjectiveConfig(objective="dpo", beta=beta))

    def sig(v):
        return 1 / (1 + np.exp(-v))

    m = out.metrics
    assert m["loss"] == pytest.approx(float(np.mean(-np.log(sig(-beta / 2 * delta)))))
    assert m["sigma_mean"] == pytest.approx(float(np.mean(sig(beta / 2 * delta))))
    assert m["reward_margin"] == pytest.approx(float(-beta * delta.mean()))
    assert m["reward_accuracy"] == 1.0  # the winner is denoised better on average


def test_gpa_metrics_follow_its_formula(monkeypatch):
    """objectives.gpa_loss: L_GPA = −log σ(−β Σ_i A_i d_i) with population-std advantages, ``sigma_mean`` =
    σ(β Σ A d), and the implicit reward r = −β d gives ``reward_margin`` = r_best − r_worst."""
    from hmrcritic.alignment.objectives import ObjectiveConfig, compute_loss

    d = np.array([0.03, -0.01, 0.02])
    _fixed_errors(monkeypatch, d.tolist())
    s = np.array([1.0, 5.0, 3.0])
    adv = (s - s.mean()) / (s.std() + 1e-8)
    beta = 100.0
    out = compute_loss(types.SimpleNamespace(num_timesteps=10), None, torch.zeros((1, 3, 4), dtype=torch.float64),
                       torch.zeros((1, 2)), torch.tensor([s.tolist()]),
                       ObjectiveConfig(objective="gpa", beta=beta, gpa_weight=1.0, base_loss_weight=0.0))
    x = beta * float((adv * d).sum())
    m = out.metrics
    assert m["loss_gpa"] == pytest.approx(float(np.log1p(np.exp(x)))) and m["loss"] == pytest.approx(m["loss_gpa"])
    assert m["sigma_mean"] == pytest.approx(1 / (1 + np.exp(-x)))
    assert m["reward_margin"] == pytest.approx(-beta * (d[1] - d[0])) and m["reward_accuracy"] == 1.0
# ------------------------------------------------------------------------------------------ VLM retry policy


def _judge(max_retries: int, **kw):
    from hmrcritic.agent.vlm import VLMJudge
    from hmrcritic.config import JudgeSettings

    return VLMJudge(JudgeSettings(base_url="http://127.0.0.1:9/v1", model="m", timeout_s=1.0,
                                  max_retries=max_retries, max_tokens=None), **kw)


def _fake_clock(monkeypatch):
    """Record the waits of the retry loop instead of sleeping them; the jitter draws its upper bound."""
    from hmrcritic.agent import vlm

    slept, drawn = [], []
    monkeypatch.setattr(vlm, "time", types.SimpleNamespace(sleep=slept.append, time=time.time,
                                                           monotonic=time.monotonic))
    monkeypatch.setattr(vlm, "random", types.SimpleNamespace(uniform=lambda a, b: drawn.append((a, b)) or b))
    return slept, drawn


def _failing(exc_factory):
    def build(mode, retry_reason):
        raise exc_factory()
    return build


def _rate_limited(headers: dict):
    import httpx
    import openai

    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    response = httpx.Response(429, headers=headers, request=request)
    return openai.RateLimitError("rate limit reached", response=response, body=None)


def test_backoff_doubles_from_its_base_is_capped_and_jittered_between_half_and_all(monkeypatch):
    """VLMJudge's docstring: retry k waits ``min(backoff_max_s, backoff_base_s * 2**k)`` scaled by a jitter in
    [0.5, 1]; a group fails after 1 + max_retries attempts, the error saying how many."""
    import openai

    slept, drawn = _fake_clock(monkeypatch)
    judge = _judge(4, backoff_base_s=1.0, backoff_max_s=3.0)
    with pytest.raises(JudgeError, match="after 5 attempts"):
        judge._call("g1", object, _failing(lambda: openai.APIConnectionError(request=None)), lambda d: d)
    assert slept == [1.0, 2.0, 3.0, 3.0]
    assert drawn == [(0.5, 1.0)] * 4


def test_no_retries_is_one_attempt_said_in_the_singular(monkeypatch):
    """``max_retries=0``: one attempt, no wait, and the error reads "after 1 attempt"."""
    import openai

    slept, _ = _fake_clock(monkeypatch)
    with pytest.raises(JudgeError, match=r"after 1 attempt: "):
        _judge(0)._call("g1", object, _failing(lambda: openai.APIConnectionError(request=None)), lambda d: d)
    assert slept == []


@pytest.mark.parametrize(("headers", "wait"), [
    ({"Retry-After": "2"}, 2.0),  # larger than the backoff: the server's wait
    ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),  # milliseconds first, as the openai client reads them
    ({"Retry-After": "500"}, 7.0),  # capped at max_retry_after_s
    ({"Retry-After": "-5"}, 0.25),  # a negative wait is none: the backoff stays
])
def test_a_rate_limits_retry_after_is_waited_when_larger_and_capped(monkeypatch, headers, wait):
    """The docstring: the server's ``Retry-After`` (or ``retry-after-ms``) when larger than the backoff, capped
    at ``max_retry_after_s``."""
    slept, _ = _fake_clock(monkeypatch)
    judge = _judge(1, backoff_base_s=0.25, backoff_max_s=1.0, max_retry_after_s=7.0)
    with pytest.raises(JudgeError, match="rate limited"):
        judge._call("g1", object, _failing(lambda: _rate_limited(headers)), lambda d: d)
    assert slept == [pytest.approx(wait)]


def test_retry_after_as_an_http_date_is_the_seconds_until_then():
    """``_retry_after_s``: ``Retry-After`` may be an HTTP date (RFC 9110); the wait is the time until it, and a
    date already past is no wait."""
    import email.utils

    from hmrcritic.agent.vlm import _retry_after_s

    soon = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= _retry_after_s(_rate_limited({"Retry-After": soon})) <= 61
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    assert _retry_after_s(_rate_limited({"Retry-After": past})) == 0.0
    assert _retry_after_s(_rate_limited({"Retry-After": "soon-ish"})) is None


def test_an_error_object_in_a_200_is_read_with_its_own_status_or_502():
    """vlm._tolerated: a 200 holding an error and no completion is read as the HTTP error it names (a status in
    400–599), else as 502; LM Studio's "Unexpected endpoint" is a 404; tool-call arguments sent as an object
    become the JSON string the client expects."""
    from hmrcritic.agent.vlm import _tolerated

    for code, status in ((429, 429), (503, 503), (42, 502), (200, 502), (None, 502), ("x", 502)):
        body = {"error": {"code": code, "message": "provider failed"}}
        assert _tolerated(body) == (status, body), code
    assert _tolerated({"error": "Unexpected endpoint or method. (POST /chat/completions)"})[0] == 404
    body = {"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": {"scores": []}}}]}}]}
    assert _tolerated(body) == (200, body)
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"scores": []}'
    assert _tolerated({"choices": [{"message": {"content": "ok"}}]}) is None


@pytest.mark.parametrize("status", [408, 409])
def test_a_request_timeout_or_conflict_is_retried_as_server_busy(monkeypatch, status):
    """vlm._call: 408 and 409 (a proxy's request timeout, a lock timeout) are retried ("server busy"), with the
    server's Retry-After; other 4xx statuses are not."""
    import httpx
    import openai

    slept, _ = _fake_clock(monkeypatch)
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")

    def busy():
        response = httpx.Response(status, headers={"Retry-After": "3"}, request=request)
        return openai.APIStatusError("busy", response=response, body=None)

    with pytest.raises(JudgeError, match=r"after 2 attempts: server busy"):
        _judge(1, backoff_base_s=0.01)._call("g1", object, _failing(busy), lambda d: d)
    assert slept == [3.0]


def test_a_503s_retry_after_is_waited(monkeypatch):
    """vlm._call: a 503 (a model loading, an overloaded server) says when to come back; its Retry-After is
    waited like a rate limit's."""
    import httpx
    import openai

    slept, _ = _fake_clock(monkeypatch)
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")

    def loading():
        response = httpx.Response(503, headers={"Retry-After": "4"}, request=request)
        return openai.InternalServerError("model is loading", response=response, body=None)

    with pytest.raises(JudgeError, match=r"after 2 attempts: server error"):
        _judge(1, backoff_base_s=0.01)._call("g1", object, _failing(loading), lambda d: d)
    assert slept == [4.0]
# ------------------------------------------------------------------------------------------------ memory


def _mark_collection(path: Path, name: str, meta: dict) -> None:
    import chromadb
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    client = chromadb.PersistentClient(str(path.resolve()))
    col = client.get_collection(name, embedding_function=None)
    col.modify(metadata={**(col.metadata or {}), **meta})
    SharedSystemClient.clear_system_cache()


@pytest.mark.parametrize("changed", ["id", "dim"])
def test_a_memory_built_with_another_embedding_of_the_same_width_is_refused(tmp_path, changed):
    """store.COLLECTIONS ("written into collection metadata, checked on open"): the embedding identity AND its
    dimension must both match. The other tests change both at once; a new text embedder of the same width (384)
    is the likely upgrade, and its vectors are not comparable with the stored ones."""
    from hmrcritic.errors import AssetError
    from hmrcritic.memory import MemoryStore
    from hmrcritic.memory.embeddings import TEXT_DIM, TEXT_EMBEDDING_ID
    from hmrcritic.memory.rules import RULES_COLLECTION

    path = tmp_path / "m"
    MemoryStore(path, seed_starter=False).close()
    meta = {"embedding_id": "another-text-embedder"} if changed == "id" else {"embedding_dim": TEXT_DIM + 1}
    _mark_collection(path, RULES_COLLECTION, meta)
    want = re.escape(f"{TEXT_EMBEDDING_ID!r} (dim {TEXT_DIM})")
    with pytest.raises(AssetError, match=rf"collection 'semantic_rules' was built with .* this hmrcritic uses {want}"):
        MemoryStore(path)


def test_an_import_keeps_this_memorys_calibration_unless_told_to_overwrite(tmp_path):
    """MemoryStore.import_json: "a calibration belongs to the rule set it was fitted for: take the file's when
    this memory has none (or with overwrite); otherwise keep ours"."""
    from hmrcritic.memory import MemoryStore
    from hmrcritic.memory.schema import ScoreCalibration

    def cal(slope):
        return ScoreCalibration(slope=slope, intercept=0.2, groups=3, hypotheses=4, pearson_before=0.5,
                                pearson_after=0.6)

    src = MemoryStore(tmp_path / "src", seed_starter=False)
    src.set_calibration(cal(1.5))
    export = tmp_path / "export.json"
    src.export_json(export)
    src.close()
    empty = MemoryStore(tmp_path / "empty", seed_starter=False)
    assert empty.import_json(export)["calibration"] is True and empty.calibration().slope == 1.5
    empty.close()
    ours = MemoryStore(tmp_path / "ours", seed_starter=False)
    ours.set_calibration(cal(0.7))
    assert ours.import_json(export)["calibration"] is False and ours.calibration().slope == 0.7
    assert ours.import_json(export, overwrite=True)["calibration"] is True and ours.calibration().slope == 1.5
    ours.close()
# ------------------------------------------------------------------------------------------------ runs.py


def test_remove_if_unheld_removes_nothing_it_cannot_lock(tmp_path):
    """runs.remove_if_unheld: "unlike prune_runs, nothing is removed where it cannot be locked: a live holder
    could not be told apart" (here its .in-use cannot be opened: it is a folder); a held folder stays, a free one
    goes; folder_in_use asks without leaving a lock file behind."""
    from hmrcritic.agent.runs import IN_USE_FILE, folder_in_use, in_use, remove_if_unheld

    odd = tmp_path / "odd"
    (odd / IN_USE_FILE).mkdir(parents=True)
    assert remove_if_unheld(odd) is False and odd.is_dir()
    held = tmp_path / "held"
    with in_use(held):
        assert folder_in_use(held) is True
        assert remove_if_unheld(held) is False and held.is_dir()
    plain = tmp_path / "plain"
    plain.mkdir()
    assert folder_in_use(plain) is False and not (plain / IN_USE_FILE).exists()
    assert remove_if_unheld(plain) is True and not plain.exists()


@pytest.mark.parametrize("days", [-1.0, float("nan")])
def test_prune_refuses_a_negative_or_nan_age(tmp_path, days):
    """runs.prune_runs: ``--older-than`` must be ≥ 0 days; NaN is no age either (every comparison with it is
    False: a prune of "nothing older than NaN" would report success having looked at nothing)."""
    from hmrcritic.agent.runs import prune_runs
    from hmrcritic.errors import InputError

    with pytest.raises(InputError, match="must be ≥ 0 days"):
        prune_runs(days, root=tmp_path)


def test_validate_stops_at_max_errors_on_lines_that_are_no_record(tmp_path):
    """dataset.validate_dataset's ``max_errors`` was checked only after a line that parsed as a record: a
    garbled manifest (500 lines of not-JSON) listed all 500 errors and never said it stopped."""
    from hmrcritic.alignment import dataset as D

    _write_dataset(tmp_path, {"g0": [1.0, 2.0]})
    (tmp_path / D.MANIFEST).write_text("not json\n" * 500)
    errors = D.validate_dataset(tmp_path).errors
    assert "… too many errors, stopped" in errors
    assert len([e for e in errors if e.endswith("not valid JSON")]) == 50
