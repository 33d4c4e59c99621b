"""Session 37, helper j: the survivors two mutation audits left open in hmrcritic/hmr/data.py and
hmrcritic/alignment/export.py, each pinned by a test whose answer is worked out by hand from a docstring, README or
docs/CONTRACTS.md, not copied from the code's output.

data.py: wild's ``labels_eval.npz`` checked by ``verify_split_files`` (and left out with ``labels=False``), a shard
of 0 scenes refused, ``load_split`` regenerating for another explicit ``n`` or another generator version, the
out-of-image test with width and height on their own axes, leftovers of live generations kept, and the staging
folder removed when a generation fails.

export.py: the ExportConfig bounds the existing ``test_config_bounds`` leaves open (num_generations at its maximum,
a negative limit, threads_per_worker), and the export loop's bookkeeping: the progress callback counting failed
groups, the kept count of a stopped resume, the rate of a run that wrote nothing, and only an unusable endpoint's
failures counting toward the stop. The scorers are deterministic stand-ins for the agent; the sampler is the real
one on a tiny random checkpoint. Runs in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.alignment import dataset as DS
from hmrcritic.alignment.export import ExportConfig, export
from hmrcritic.errors import AssetError, InputError, JudgeError
from hmrcritic.hmr import data as D
from hmrcritic.hmr.diffusion import MAX_GENERATIONS

ME = "test_review_s37_mutants_j"


# =============================================================================================== hmr/data.py
def _edit_manifest(folder, **changes) -> dict:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))
    return m


def test_verify_split_files_checks_wilds_labels_file_unless_labels_false(tmp_path, body):
    """Docstring: "Each shard (and wild's labels file) against the sha256 its manifest recorded … ``labels=False``
    leave[s] wild's labels file … out". A wild split's labels_eval.npz replaced by other bytes is named as not
    matching; with labels=False the same split is accepted (export never opens that file)."""
    folder = D.generate_split("wild", tmp_path / "wild", n=3, body=body, quiet=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    D.verify_split_files(manifest, folder)  # whole: accepted
    (folder / "labels_eval.npz").write_bytes(b"not the labels that were generated")
    with pytest.raises(AssetError, match=r"labels_eval\.npz does not match"):
        D.verify_split_files(manifest, folder)
    D.verify_split_files(manifest, folder, labels=False)


def test_a_manifest_with_a_shard_of_zero_scenes_is_refused(tmp_path, body):
    """SceneSet: "a count below 1" is no split manifest. A shard listed with ``"n": 0`` (its file holds 3 scenes)
    must be one AssetError line, not an empty split (len 0) or a misindexed one."""
    folder = D.generate_split("test", tmp_path / "test", n=3, body=body, quiet=True)
    m = json.loads((folder / "manifest.json").read_text())
    m["shards"][0]["n"] = 0
    _edit_manifest(folder, shards=m["shards"])
    with pytest.raises(AssetError, match="a shard of 0 scenes"):
        D.SceneSet(folder)


def test_load_split_with_another_explicit_n_regenerates_at_that_size(tmp_path):
    """load_split: "with an explicit ``n`` a different size too" is regenerated. n=3 then n=4 gives 4 scenes,
    and n=4 again keeps that split (same manifest, nothing regenerated)."""
    assert len(D.load_split("test", tmp_path, n=3, quiet=True)) == 3
    four = D.load_split("test", tmp_path, n=4, quiet=True)
    assert len(four) == 4 and four.manifest["n"] == 4
    again = D.load_split("test", tmp_path, n=4, quiet=True)
    assert again.manifest["seconds"] == four.manifest["seconds"] and again._manifest_id == four._manifest_id


def test_load_split_regenerates_a_split_of_another_generator_version(tmp_path):
    """load_split: "A split made by another generator version … is regenerated". A manifest marked with an older
    generator is replaced by a split of this one (and generate=False names the version instead of using it)."""
    D.load_split("test", tmp_path, n=3, quiet=True)
    _edit_manifest(tmp_path / "test", generator_version="scenes-0/old")
    with pytest.raises(AssetError, match="made by generator scenes-0/old"):
        D.load_split("test", tmp_path, n=3, generate=False)
    ss = D.load_split("test", tmp_path, n=3, quiet=True)
    assert ss.manifest["generator_version"] == D.GENERATOR_VERSION
    assert json.loads((tmp_path / "test" / "manifest.json").read_text())["generator_version"] == D.GENERATOR_VERSION


def _person_640x480() -> np.ndarray:
    """A standing person well inside a 640×480 image (COCO-17 order), every point visible."""
    xy = [(320, 100), (330, 90), (310, 90), (340, 95), (300, 95), (360, 150), (280, 150), (380, 210), (260, 210),
          (390, 270), (250, 270), (345, 280), (295, 280), (350, 350), (290, 350), (352, 420), (288, 420)]
    return np.array([[x, y, 0.9] for x, y in xy], dtype=np.float64)


def test_a_point_below_a_landscape_image_is_hidden_though_it_lies_within_the_width(tmp_path):
    """read_keypoints_json with image_size (W, H) = (640, 480): a visible point "more than 2 % past the border" is
    hidden with a warning. The left ankle at v = 560 lies past H + 2 % of max(W, H) = 480 + 12.8, though within
    W = 640: it must be hidden (the other 16 points stay as given). With W and H swapped it would pass."""
    kp = _person_640x480()
    kp[15] = (300, 560, 0.9)
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(kp.tolist()))
    with pytest.warns(UserWarning, match=r"keypoint 15 \(left_ankle\) lies outside the 640×480 image"):
        out = D.read_keypoints_json(path, image_size=(640, 480))
    assert out[15].tolist() == [0.0, 0.0, 0.0]
    keep = [i for i in range(17) if i != 15]
    np.testing.assert_allclose(out[keep], kp[keep].astype(np.float32))


def test_leftovers_of_a_live_generation_stay_and_a_dead_ones_go(tmp_path):
    """_remove_dead_leftovers: this host's staging/swap folders "whose process no longer runs" are removed, "never
    one a live process may be writing right now". The parent of this test process is alive (and is not this
    process); a process that has exited is not."""
    out = tmp_path / "test"
    host = D._this_host()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = proc.pid
    live = os.getppid()
    assert live != os.getpid()
    folders = {
        "live_staging": tmp_path / f".staging-test-{live}@{host}",
        "live_old": tmp_path / f".old-test-{live}",  # no host: an older release's name, this host's
        "dead_staging": tmp_path / f".staging-test-{dead}@{host}",
        "dead_old": tmp_path / f".old-test-{dead}",
    }
    for f in folders.values():
        (f / "x").mkdir(parents=True)
    removed = D._remove_dead_leftovers(out)
    assert {k: f.exists() for k, f in folders.items()} == {
        "live_staging": True, "live_old": True, "dead_staging": False, "dead_old": False}
    assert sorted(removed) == sorted([folders["dead_staging"], folders["dead_old"]])


def test_a_generation_that_fails_leaves_no_staging_folder(tmp_path, body, monkeypatch):
    """generate_split is "written to a staging folder and swapped in, so a crash never leaves a half-written split":
    a failure while writing (here the manifest's write) removes the staging folder, and no split is left."""

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(D, "atomic_write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        D.generate_split("test", tmp_path / "test", n=2, body=body, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []


# ======================================================================================= alignment/export.py
@pytest.mark.parametrize("field,ok,bad", [
    ("num_generations", MAX_GENERATIONS, MAX_GENERATIONS + 1),
    ("limit", 1, -1),
    ("limit", 1, -5),
    ("workers", 1, -1),
    ("threads_per_worker", 1, 0),
    ("sample_steps", 1000, -3),
])
def test_config_bounds_beyond_the_existing_ones(field, ok, bad):
    """The bounds ExportConfig states in its messages: num_generations in 2..MAX_GENERATIONS (the maximum itself
    taken), limit ≥ 1 (so any negative one is refused, not only 0), workers ≥ 1, threads_per_worker ≥ 1, steps in
    1..1000."""
    assert MAX_GENERATIONS == 1024  # diffusion's documented cap on a group's size
    ExportConfig(out="x", split="s", **{field: ok})
    name = {"sample_steps": "steps", "threads_per_worker": "threads_per_worker"}.get(field, field.replace("_", "-"))
    with pytest.raises(InputError, match=name):
        ExportConfig(out="x", split="s", **{field: bad})


@dataclasses.dataclass
class Inp:
    sample_id: str
    keypoints: np.ndarray
    K: np.ndarray
    image_size: tuple


@dataclasses.dataclass
class Scored:
    scores: list
    memory_version: str = "mem-s37j"


def flat(sample, hypotheses, **kw):
    n = hypotheses.body_pose.shape[1]
    return Scored([HypothesisScore(index=i, motion_structure=5.0, physical_feasibility=5.0, image_alignment=5.0,
                                   overall=5.0, rationale=f"hypothesis {i}") for i in range(n)])


FAILING: set[str] = set()  # ids the `switchable` scorer fails (set by a test between runs; the serial executor
# scores in this process)


def _unusable() -> JudgeError:
    exc = JudgeError("the endpoint refused the connection")
    exc.endpoint_unusable, exc.endpoint, exc.cause = True, "http://127.0.0.1:9/v1", "connection refused"
    return exc


def down_except_ok(sample, hypotheses, **kw):
    """An unusable VLM endpoint for every input whose id does not end in "ok"."""
    if not sample.sample_id.endswith("ok"):
        raise _unusable()
    return flat(sample, hypotheses)


def switchable(sample, hypotheses, **kw):
    if sample.sample_id in FAILING:
        raise RuntimeError(f"judge down for {sample.sample_id}")
    return flat(sample, hypotheses)


def make_inputs(ids) -> list[Inp]:
    rng = np.random.default_rng(0)
    K = np.array([[500, 0, 256], [0, 500, 256], [0, 0, 1]], np.float32)
    return [Inp(sid, np.concatenate([rng.uniform(150, 350, (17, 2)), rng.uniform(0.5, 1, (17, 1))], 1)
                .astype(np.float32), K, (512, 512)) for sid in ids]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion, save_model

    torch.manual_seed(0)
    model = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2, T=100))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(model, path)
    return path


def cfg(out, model_path, scorer="flat", **kw) -> ExportConfig:
    base = {"split": "inline", "num_generations": 2, "sample_steps": 1, "score_group": f"{ME}:{scorer}",
            "use_memory": False}
    return ExportConfig(out=str(out), model=str(model_path), **{**base, **kw})


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_the_progress_callback_counts_failed_groups_and_groups_done_before(model_path, tmp_path):
    """The callback gets (groups tried so far, inputs): a failed group is tried too (the bar "counts every group
    tried"), and a resume starts from the groups done before. aok, b (fails), cok → 1/3, 2/3, 3/3; the resume with
    dok added has aok and cok done and retries b → 3/4, 4/4."""
    root, calls = tmp_path / "ds", []
    export(cfg(root, model_path, "down_except_ok"), inputs=make_inputs(["aok", "b", "cok"]),
           progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    s = export(cfg(root, model_path, "down_except_ok"), inputs=make_inputs(["aok", "b", "cok", "dok"]),
               progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 4), (4, 4)]
    assert (s.done_before, s.new_groups, s.failures) == (2, 1, 1)


def test_a_stopped_resume_says_the_groups_written_before_are_kept(model_path, tmp_path):
    """The stop's line says how many groups the dataset keeps: aok and bok were written by the first run, the resume
    writes none before c, d, e fail on an unusable endpoint with f to come — "The 2 group(s) … are kept", not "No
    group was written"."""
    root = tmp_path / "ds"
    export(cfg(root, model_path, "down_except_ok"), inputs=make_inputs(["aok", "bok"]))
    with pytest.raises(JudgeError, match=r"The 2 group\(s\) written to .* are kept"):
        export(cfg(root, model_path, "down_except_ok"), inputs=make_inputs(["aok", "bok", "c", "d", "e", "f"]))


def test_a_run_that_writes_nothing_has_no_rate(model_path, tmp_path):
    """groups_per_s is the rate of this run's new groups: a resume of a finished export writes none, so 0.0 (the
    summary then says "nothing left to do"), whatever the dataset already holds."""
    root = tmp_path / "ds"
    export(cfg(root, model_path), inputs=make_inputs(["a", "b"]))
    s = export(cfg(root, model_path), inputs=make_inputs(["a", "b"]))
    assert (s.new_groups, s.groups, s.groups_per_s) == (0, 2, 0.0)


def test_ordinary_failures_in_a_row_do_not_stop_the_export(model_path, tmp_path):
    """The export stops only for "groups in a row that failed because the judge's endpoint is unusable": a judge
    that fails a, b and c for reasons of their own (no ``endpoint_unusable``) is three failures like any others, and
    d, still to come, is tried and written; the export ends finished with no not_attempted line."""
    root = tmp_path / "ds"
    FAILING.clear()
    FAILING.update({"a", "b", "c"})
    try:
        s = export(cfg(root, model_path, "switchable"), inputs=make_inputs(["a", "b", "c", "d"]))
    finally:
        FAILING.clear()
    assert (s.new_groups, s.failures) == (1, 3)
    assert [f["input_id"] for f in _lines(root / DS.FAILURES)] == ["a", "b", "c"]
    assert all(f["stage"] == "score" for f in _lines(root / DS.FAILURES))
    assert DS.read_header(root).counts["finished"] is True
