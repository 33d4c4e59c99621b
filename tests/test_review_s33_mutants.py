"""Session 33: tests for mutants of calibration, group statistics, cameras and atomic file IO that the suite let
survive (a mutation audit of hmrcritic/agent/calibration.py, hmrcritic/alignment/stats.py, hmrcritic/hmr/camera.py
and hmrcritic/io.py). Each test checks documented behaviour against an independent reference, not a mutant's text.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrcritic.errors import InputError
from hmrcritic.memory.schema import ScoreCalibration


# ------------------------------------------------------------------------------------------ agent/calibration.py
def test_scores_that_do_not_rank_error_at_all_are_refused():
    """``fit_calibration`` "raises InputError when ... the scores do not rank error at all (slope ≤ 0)". Scores
    ½, 1, 2 for errors 50, 10, 50 mm: log-scores symmetric about 0 and equal errors at both ends make the
    least-squares slope exactly 0 — a critic whose scores say nothing about error. Refused, not stored as a map
    clipped up to the lower slope bound (which would invent a calibration)."""
    from hmrcritic.agent.calibration import fit_calibration

    with pytest.raises(InputError, match="ranks backwards"):
        fit_calibration([[0.5, 1.0, 2.0]], [[50.0, 10.0, 50.0]])


def test_a_calibration_on_exactly_the_trusted_number_of_groups_is_not_doubted():
    """``calibration_doubts``: "too few groups" means *fewer than* ``MIN_TRUSTED_GROUPS`` (its own message says
    "fewer than 8"); a fit on exactly that many is not doubted, one fewer is."""
    from hmrcritic.agent.calibration import MIN_TRUSTED_GROUPS, calibration_doubts

    base = dict(slope=0.5, intercept=0.1, hypotheses=320, pearson_before=0.5, pearson_after=0.6)
    assert calibration_doubts(ScoreCalibration(groups=MIN_TRUSTED_GROUPS, **base)) == []
    assert calibration_doubts(ScoreCalibration(groups=MIN_TRUSTED_GROUPS - 1, **base)) == [
        f"fitted on {MIN_TRUSTED_GROUPS - 1} group(s) only (fewer than {MIN_TRUSTED_GROUPS})"]


def test_a_slope_held_at_the_lower_bound_is_said_to_be_doubtful():
    """``calibration_doubts`` names "a slope held at a bound of SLOPE_RANGE" — either bound. A fit whose
    least-squares slope is flatter than the range (true γ = 0.005, errors built so log settled = −1 + γ·log s)
    is held at the lower bound, and the doubt says the fit wanted less; only the upper bound was checked."""
    from hmrcritic.agent.calibration import MIN_TRUSTED_GROUPS, SLOPE_RANGE, calibration_doubts, fit_calibration

    s = np.linspace(1.0, 1.5, 12)
    y = -1.0 + 0.005 * np.log(s)
    errors = -60.0 * np.log(np.exp(y) / 10.0)  # settled_overall(e) = 10·exp(−e/60) = exp(y)
    cal = fit_calibration([s] * MIN_TRUSTED_GROUPS, [errors] * MIN_TRUSTED_GROUPS)
    assert cal.slope == SLOPE_RANGE[0]
    assert calibration_doubts(cal) == [f"its slope is held at the bound {SLOPE_RANGE[0]:g} (the fit wanted less)"]


def test_calibrating_on_no_groups_says_none_were_given(tmp_path):
    """``calibrate_memory`` with an empty list of labelled groups says so ("no labelled groups given"); without
    that check it went on to score nothing and reported "the critiques of all 0 calibration group(s) failed",
    blaming critiques that never ran. The memory keeps no calibration."""
    from hmrcritic.agent.calibration import calibrate_memory
    from hmrcritic.memory.store import MemoryStore

    mem = MemoryStore(tmp_path / "m", chroma_url="")
    try:
        with pytest.raises(InputError, match="no labelled groups given"):
            calibrate_memory(mem, [])
        assert mem.calibration() is None
    finally:
        mem.close()


# ------------------------------------------------------------------------------------------------ hmr/camera.py
def test_sampled_cameras_follow_the_presets_ranges_and_jitter_both_ways():
    """``sample_cameras``: azimuth, elevation, focal scale and fill are uniform over the preset's ranges (degrees
    returned as radians), and ``centre_jitter`` is a fraction of the image the person is moved off-centre by —
    either way on each axis (uniform in ±centre_jitter). A jitter drawn on one side only put every synthetic
    person right of and below the image centre: a bias the model would learn."""
    from hmrcritic.hmr.camera import sample_cameras
    from hmrcritic.hmr.data import PRESETS

    preset = PRESETS["wild"]
    cams = sample_cameras(4000, np.random.default_rng(0), preset)
    for key, rng_key in (("azimuth", "azimuth_deg"), ("elevation", "elevation_deg")):
        lo, hi = np.deg2rad(preset[rng_key])
        assert lo <= cams[key].min() and cams[key].max() <= hi
        assert cams[key].min() < lo + 0.05 * (hi - lo) and cams[key].max() > hi - 0.05 * (hi - lo)
    for key in ("focal_scale", "fill"):
        lo, hi = preset[key]
        assert lo <= cams[key].min() and cams[key].max() <= hi
    j, cj = cams["jitter"], preset["centre_jitter"]
    assert j.shape == (4000, 2) and np.abs(j).max() <= cj
    for axis in (0, 1):  # both sides of the centre, about equally often, out to nearly the full jitter
        assert j[:, axis].min() < -0.9 * cj and j[:, axis].max() > 0.9 * cj
        assert abs(float(np.mean(j[:, axis] > 0)) - 0.5) < 0.05


# ------------------------------------------------------------------------------------------ alignment/stats.py
def test_the_zero_variance_share_counts_every_tied_group_of_a_batch():
    """``GroupStatTracker.summary()["zero_variance_share"]`` is the share of groups seen whose hypotheses all
    scored alike — "the first thing to look at when alignment does not move". Two of three groups in one batch
    tied (and one of two in the next) is 3 of 5, counted by hand; counting a batch once however many of its
    groups tie said 2 of 5."""
    from hmrcritic.alignment.stats import GroupStatTracker

    tracker = GroupStatTracker()
    mask = tracker.update(["a", "b", "c"], torch.tensor([[5.0, 5.0, 5.0], [1.0, 2.0, 3.0], [7.0, 7.0, 7.0]]))
    assert mask.tolist() == [True, False, True]
    tracker.update(["d", "e"], torch.tensor([[4.0, 4.0, 4.0], [0.0, 9.0, 3.0]]))
    summary = tracker.summary()
    assert summary["groups"] == 5 and summary["zero_variance_share"] == pytest.approx(3 / 5)


# ------------------------------------------------------------------------------------------------------- io.py
def test_an_out_folder_that_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch):
    """``check_out_folder`` refuses an ``--out`` whose nearest existing folder is not writable, naming it, before
    a command's work (else ``critique --learn`` wrote the memory and then failed at the end). Root passes every
    permission check, so the folder's answer to ``os.access`` is what is faked here; the folder itself is real."""
    import os

    from hmrcritic.io import check_out_folder

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path, mode, *a, **kw):
        if os.path.abspath(path) == str(locked) and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **kw)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(InputError, match=f"{locked} is not writable"):
        check_out_folder(locked / "run" / "deeper", "the run")
    check_out_folder(tmp_path / "free" / "run", "the run")  # a writable parent: no refusal


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs here")
def test_an_atomic_write_never_replaces_a_pipe_with_a_file(tmp_path):
    """``atomic_write_bytes`` (every writer's path, the Python API's included) refuses a target that is no file to
    replace — the check runs in the write itself, not only in the commands that call it first. Over a FIFO the
    rename swapped the pipe for a regular file its reader never saw; the pipe must still be a pipe afterwards."""
    import os
    import stat

    from hmrcritic.io import atomic_write_json

    fifo = tmp_path / "scores.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        atomic_write_json(fifo, {"a": 1})
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]  # no temporary file left either


def test_a_busy_lock_held_on_another_machine_names_that_machine(tmp_path):
    """``exclusive_lock``: on a folder shared between machines the holder's record carries its host, and the busy
    message says "pid N on HOST" when that host is not this one ("pid N" alone named an unrelated process here);
    for a holder on this machine no host is added."""
    import json
    import os
    import socket

    from hmrcritic.io import LockBusy, exclusive_lock

    lock, record = tmp_path / ".job.lock", tmp_path / ".job.json"
    with exclusive_lock(lock, "an exploration"):
        with pytest.raises(LockBusy) as here, exclusive_lock(lock, "another"):
            pass
        assert f"(pid {os.getpid()}, since " in str(here.value)
        held = json.loads(record.read_text())
        record.write_text(json.dumps({**held, "pid": 4321, "host": "build-node-7"}))
        assert socket.gethostname() != "build-node-7"
        with pytest.raises(LockBusy, match=r"an exploration \(pid 4321 on build-node-7, since "), \
                exclusive_lock(lock, "another"):
            pass


def test_leftovers_of_a_name_with_glob_characters_are_the_ones_removed(tmp_path):
    """``remove_write_leftovers`` deletes ``.NAME.*.tmp`` of the names given, NAME taken literally: for
    ``scores[1].json`` the brackets are no character class, which left its own leftover in place and deleted
    ``.scores1.json.*.tmp``, another file's write in progress."""
    from hmrcritic.io import remove_write_leftovers

    mine = tmp_path / ".scores[1].json.ab12cd34.tmp"
    other = tmp_path / ".scores1.json.ef56gh78.tmp"
    for p in (mine, other, tmp_path / "scores[1].json"):
        p.write_bytes(b"x")
    remove_write_leftovers(tmp_path, ["scores[1].json"])
    assert not mine.exists()
    assert other.exists() and (tmp_path / "scores[1].json").exists()


def test_newest_mtime_dates_a_link_in_the_tree_by_the_link_not_by_what_it_names(tmp_path):
    """``newest_mtime`` is when the path "or anything in it was last written": a link inside a run folder (to a
    shared data file, a memory elsewhere) is dated by itself. Dated by its target, a folder nobody touched for
    days looked as fresh as a file outside it that another job keeps writing, and ``runs prune`` kept it."""
    import os

    from hmrcritic.io import newest_mtime

    outside = tmp_path / "shared.bin"
    outside.write_bytes(b"x")  # written now
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_bytes(b"{}\n")
    (run / "data").symlink_to(outside)
    for p in (run / "log.jsonl", run / "data", run):
        os.utime(p, (1000.0, 1000.0), follow_symlinks=False)
    assert newest_mtime(run) == 1000.0
    assert newest_mtime(outside) > 1000.0


def test_finite_json_nulls_every_nan_and_infinity_at_any_depth():
    """``finite_json``: "every NaN or ±inf float as None", in dicts, lists (tuples too) at any depth, numpy scalars
    and arrays taken as their Python values first; the strict JSON then parses with a strict reader (no bare
    NaN/Infinity)."""
    import json
    import math

    from hmrcritic.io import finite_json

    obj = {"a": math.inf, "b": [-math.inf, 1.5, math.nan], "c": (np.float32("nan"), 2),
           "d": {"e": np.array([1.0, np.inf, -np.inf])}, "f": np.float64(-np.inf), "g": "NaN"}
    want = {"a": None, "b": [None, 1.5, None], "c": [None, 2], "d": {"e": [1.0, None, None]}, "f": None,
            "g": "NaN"}
    got = finite_json(obj)
    assert got == want

    def refuse(word):
        raise ValueError(word)

    assert json.loads(json.dumps(got), parse_constant=refuse) == want


def test_a_record_checksum_is_the_documented_hash_whatever_the_key_order(tmp_path):
    """docs/CONTRACTS.md: a line's ``"checksum"`` is ``sha256(json.dumps(record without "checksum",
    sort_keys=True).encode("utf-8")).hexdigest()[:16]`` — computed here from that formula, for other tools that
    verify logs — and a reader re-serialises the parsed object, so a line whose keys another tool wrote in another
    order still verifies (``read_jsonl`` keeps it)."""
    import hashlib
    import json

    from hmrcritic.io import read_jsonl, record_checksum

    rec = {"step": 3, "loss": 0.25, "group_id": "train-000001", "nested": {"b": 1, "a": [2, 3]}}
    want = hashlib.sha256(json.dumps(rec, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    assert record_checksum(rec) == want
    reordered = dict(reversed(list(rec.items())))
    assert record_checksum({**reordered, "checksum": "ignored"}) == want
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({**reordered, "checksum": want}) + "\n", encoding="utf-8")
    assert read_jsonl(log) == [{**reordered, "checksum": want}]
