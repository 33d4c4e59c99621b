"""Session 37, mutation audit of hmrcritic/alignment/export.py: tests that kill mutants the existing tests let live.

Each test is a constructed case whose answer is worked out by hand from the module's docstrings, README and
docs/CONTRACTS.md (scores matched to their hypothesis by index, input order, per-input seeds, resume without
skips or duplicates, a refused change of input, the stop on an unusable endpoint, temporary files). The scorers
below are deterministic stand-ins for the agent; the sampler is the real one on a tiny random checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest
import torch

from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import ExportConfig, export, strip_labels
from hmrcritic.errors import InputError, JudgeError

ME = "test_review_s37_mutants_b"


@dataclasses.dataclass
class Inp:
    sample_id: str
    keypoints: np.ndarray
    K: np.ndarray
    image_size: tuple
    joints3d: np.ndarray | None = None


@dataclasses.dataclass
class Scored:
    scores: list
    memory_version: str = "mem-s37"


def _score(i: int, overall: float) -> HypothesisScore:
    return HypothesisScore(index=i, motion_structure=overall, physical_feasibility=overall, image_alignment=overall,
                           overall=overall, rationale=f"hypothesis {i}")


def rising_reversed(sample, hypotheses, **kw):
    """Hypothesis i scores 2·i (0, 2, 4, 6 for a group of 4), returned LAST FIRST: the export must place each score
    by its ``index``, so hypothesis 3 is the best and 0 the worst whatever order the scorer lists them in."""
    n = hypotheses.body_pose.shape[1]
    return Scored([_score(i, 2.0 * i) for i in reversed(range(n))])


def flat(sample, hypotheses, **kw):
    n = hypotheses.body_pose.shape[1]
    return Scored([_score(i, 5.0) for i in range(n)])


def _unusable() -> JudgeError:
    exc = JudgeError("the endpoint refused the connection")
    exc.endpoint_unusable, exc.endpoint, exc.cause = True, "http://127.0.0.1:9/v1", "connection refused"
    return exc


def down_except_ok(sample, hypotheses, **kw):
    """An unusable VLM endpoint for every input whose id does not end in "ok"."""
    if not sample.sample_id.endswith("ok"):
        raise _unusable()
    return flat(sample, hypotheses)


def make_inputs(ids, seed: int = 0, same_keypoints: bool = False) -> list[Inp]:
    rng = np.random.default_rng(seed)
    kp0 = np.concatenate([rng.uniform(150, 350, size=(17, 2)), rng.uniform(0.5, 1, size=(17, 1))], 1)
    out = []
    for sid in ids:
        kp = kp0 if same_keypoints else np.concatenate(
            [rng.uniform(150, 350, size=(17, 2)), rng.uniform(0.5, 1, size=(17, 1))], 1)
        out.append(Inp(sid, kp.astype(np.float32), np.array([[500, 0, 256], [0, 500, 256], [0, 0, 1]], np.float32),
                       (512, 512), joints3d=np.ones((24, 3), np.float32)))
    return out


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion, save_model

    torch.manual_seed(0)
    model = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2, T=100))
    for head in (model.joint_out, model.shape_out):
        torch.nn.init.normal_(head.weight, std=0.3)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(model, path)
    return path


def cfg(out, model_path, scorer="flat", **kw) -> ExportConfig:
    base = {"split": "inline", "num_generations": 4, "sample_steps": 2, "score_group": f"{ME}:{scorer}",
            "use_memory": False}
    return ExportConfig(out=str(out), model=str(model_path), **{**base, **kw})


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------------------------- scores ↔ hypotheses


def test_scores_listed_out_of_order_land_on_their_hypothesis(model_path, tmp_path):
    """Scores 0, 2, 4, 6 for hypotheses 0..3, listed 3, 2, 1, 0: the record keeps score i at hypothesis i, the
    advantages rise with the index and sum to 0 (group-normalised over the group's hypotheses), and the pair's
    chosen is hypothesis 3 (overall 6), its rejected hypothesis 0 (overall 0), margin 6."""
    root = tmp_path / "ds"
    export(cfg(root, model_path, "rising_reversed"), inputs=make_inputs(["a"]))
    (rec,) = D.read_manifest(root)
    assert [s.index for s in rec.scores] == [0, 1, 2, 3]
    assert [s.overall for s in rec.scores] == [0.0, 2.0, 4.0, 6.0]
    adv = np.asarray(rec.advantages)
    assert adv.shape == (4,) and np.all(np.diff(adv) > 0) and abs(adv.sum()) < 1e-6
    assert adv[0] < 0 < adv[3] and np.isclose(adv[0], -adv[3]) and np.isclose(adv[1], -adv[2])
    (pair,) = _lines(root / D.PAIRS)
    assert set(pair) >= {"prompt", "chosen", "rejected"}
    assert (pair["chosen"]["index"], pair["rejected"]["index"], pair["margin"]) == (3, 0, 6.0)
    assert pair["chosen"]["overall"] == 6.0 and pair["rejected"]["overall"] == 0.0


# ------------------------------------------------------------------------------------------ order and seeds


def test_manifest_and_pairs_follow_input_order_not_id_order(model_path, tmp_path):
    """"The manifest is rewritten in input order": ids given as zeta, alpha, mid stay in that order (sorting by id
    would give alpha, mid, zeta), in the manifest and in pairs.jsonl."""
    root = tmp_path / "ds"
    ids = ["zeta", "alpha", "mid"]
    export(cfg(root, model_path, "rising_reversed"), inputs=make_inputs(ids))
    assert [r.input_id for r in D.read_manifest(root)] == ids
    assert [p["prompt"]["input_id"] for p in _lines(root / D.PAIRS)] == ids


def test_each_input_id_draws_its_own_group_whatever_its_position(model_path, tmp_path):
    """Per-group seed from (seed, input_id): two inputs with the same keypoints but other ids draw other hypotheses,
    and an input draws the same hypotheses alone as third in a list (no dependence on position or on the others)."""
    both = make_inputs(["p", "q", "r"], same_keypoints=True)
    export(cfg(tmp_path / "three", model_path), inputs=both)
    export(cfg(tmp_path / "one", model_path), inputs=both[2:])
    recs = {r.input_id: r for r in D.read_manifest(tmp_path / "three")}
    x0 = {k: D.load_npz(tmp_path / "three" / r.hypotheses.path)["x0"] for k, r in recs.items()}
    assert not np.allclose(x0["p"], x0["q"])
    assert recs["p"].group_seed != recs["q"].group_seed
    (alone,) = D.read_manifest(tmp_path / "one")
    assert np.array_equal(D.load_npz(tmp_path / "one" / alone.hypotheses.path)["x0"], x0["r"])
    assert alone.group_seed == recs["r"].group_seed


# -------------------------------------------------------------------------------------------------- resume


def test_resume_with_a_smaller_limit_counts_only_these_inputs_and_adds_nothing(model_path, tmp_path):
    """3 groups written; the same export with limit=2 has 2 inputs, both done before, nothing new, and the dataset
    still holds 3 groups (none dropped, none duplicated); the header says finished with 3 groups."""
    root = tmp_path / "ds"
    inputs = make_inputs(["a", "b", "c"])
    export(cfg(root, model_path), inputs=inputs)
    s = export(cfg(root, model_path, limit=2), inputs=inputs)
    assert (s.inputs, s.done_before, s.new_groups, s.groups) == (2, 2, 0, 3)
    assert [r.input_id for r in D.read_manifest(root)] == ["a", "b", "c"]
    counts = D.read_header(root).counts
    assert counts["finished"] is True and counts["groups"] == 3 and counts["inputs"] == 2


def test_limit_keeps_exactly_the_first_n_inputs(model_path, tmp_path):
    s = export(cfg(tmp_path / "ds", model_path, limit=2), inputs=make_inputs(["a", "b", "c"]))
    assert (s.inputs, s.groups) == (2, 2)
    assert [r.input_id for r in D.read_manifest(tmp_path / "ds")] == ["a", "b"]


def test_a_changed_input_under_a_done_id_is_refused_but_float_noise_is_not(model_path, tmp_path):
    """A resume whose input "b" moved 5 px is refused naming it (before the header is rewritten: the dataset stays
    finished); the same input re-read with 1e-6 of noise resumes with nothing new."""
    root = tmp_path / "ds"
    inputs = make_inputs(["a", "b"])
    export(cfg(root, model_path), inputs=inputs)
    moved = [inputs[0], dataclasses.replace(inputs[1], keypoints=inputs[1].keypoints + np.float32(5))]
    with pytest.raises(InputError, match="'b' has other keypoints"):
        export(cfg(root, model_path), inputs=moved)
    assert D.read_header(root).counts["finished"] is True
    noisy = [inputs[0], dataclasses.replace(inputs[1], keypoints=inputs[1].keypoints + np.float32(1e-6))]
    assert export(cfg(root, model_path), inputs=noisy).new_groups == 0


def test_duplicate_ids_are_refused_before_the_folder_is_written(model_path, tmp_path):
    """Refused before the header: a dataset.json marked unfinished would tell the user to re-run the same command."""
    root = tmp_path / "ds"
    with pytest.raises(InputError, match="duplicate input id 'a'"):
        export(cfg(root, model_path), inputs=make_inputs(["a", "b", "a"]))
    assert not (root / D.HEADER).exists()


def test_leftover_temporary_files_go_on_resume_and_others_stay(model_path, tmp_path):
    """A kill mid-write leaves ``.<name>.<random>.tmp``: removed on resume; a file of the user's own that merely
    ends in .tmp stays."""
    root = tmp_path / "ds"
    export(cfg(root, model_path), inputs=make_inputs(["a"]))
    ours = [root / ".manifest.jsonl.x1y2.tmp", root / D.GROUPS / ".a-123.cond.npz.x1y2.tmp"]
    theirs = root / ".notes.tmp"
    for p in [*ours, theirs]:
        p.write_bytes(b"partial")
    export(cfg(root, model_path), inputs=make_inputs(["a"]))
    assert [p.exists() for p in ours] == [False, False] and theirs.exists()


# ------------------------------------------------------------------------------------ unusable endpoint stop


def test_an_unusable_endpoint_stops_after_three_in_a_row_listing_the_rest(model_path, tmp_path):
    """Inputs a..e all fail on an unusable endpoint: the export stops after the 3rd (UNUSABLE_IN_A_ROW = 3) with
    a JudgeError; d and e are in failures.jsonl as not_attempted, a, b, c with their own error, in input order."""
    root = tmp_path / "ds"
    with pytest.raises(JudgeError, match="3 groups in a row failed"):
        export(cfg(root, model_path, "down_except_ok"), inputs=make_inputs(list("abcde")))
    fails = _lines(root / D.FAILURES)
    assert [f["input_id"] for f in fails] == list("abcde")
    assert [f["stage"] for f in fails] == ["score"] * 3 + ["not_attempted"] * 2
    assert D.read_header(root).counts["finished"] is False


def test_a_written_group_resets_the_unusable_count(model_path, tmp_path):
    """a, b fail, c is written, d, e fail: never 3 in a row, so every input is tried and the export ends normally."""
    root = tmp_path / "ds"
    s = export(cfg(root, model_path, "down_except_ok"), inputs=make_inputs(["a", "b", "cok", "d", "e"]))
    assert (s.groups, s.failures) == (1, 4)
    assert all(f["stage"] == "score" for f in _lines(root / D.FAILURES))


def test_the_last_input_failing_third_in_a_row_ends_as_finished(model_path, tmp_path):
    """a, b, c (all inputs) fail unusable: the third is the last, nothing is left to stop for, so the export ends as
    any export with failures does (no JudgeError, header finished, pairs.jsonl written)."""
    root = tmp_path / "ds"
    s = export(cfg(root, model_path, "down_except_ok"), inputs=make_inputs(["a", "b", "c"]))
    assert (s.groups, s.failures) == (0, 3)
    assert D.read_header(root).counts["finished"] is True and (root / D.PAIRS).exists()


# ------------------------------------------------------------------------------------------ config, labels


@pytest.mark.parametrize("field,ok,bad", [("num_generations", 2, 1), ("limit", 1, 0), ("sample_steps", 1, 0),
                                          ("sample_steps", 1000, 1001), ("workers", 1, 0)])
def test_config_bounds(field, ok, bad):
    ExportConfig(out="x", split="s", **{field: ok})
    with pytest.raises(InputError, match=field.replace("sample_steps", "steps").replace("_", "-")):
        ExportConfig(out="x", split="s", **{field: bad})


def test_labels_are_stripped_from_non_dataclass_samples():
    ns = types.SimpleNamespace(sample_id="a", keypoints=1, K=2, image_size=3, joints3d=np.ones(3), betas=np.ones(10))
    out = strip_labels(ns)
    assert out.joints3d is None and out.betas is None and out.keypoints == 1
    assert ns.joints3d is not None  # a copy: the caller's sample is left as it was


def test_a_group_whose_arrays_are_gone_is_exported_again_on_resume(model_path, tmp_path):
    """The manifest lists a and b, but b's hypotheses file is gone (deleted, never fsynced): the resume must not
    skip b as done — it samples and writes it again, and the dataset is valid with both groups once each."""
    root = tmp_path / "ds"
    inputs = make_inputs(["a", "b"])
    export(cfg(root, model_path), inputs=inputs)
    b = D.read_manifest(root)[1]
    (root / b.hypotheses.path).unlink()
    s = export(cfg(root, model_path), inputs=inputs)
    assert (s.done_before, s.new_groups, s.groups, s.repaired_lines) == (1, 1, 2, 1)
    assert [r.input_id for r in D.read_manifest(root)] == ["a", "b"]
    assert D.validate_dataset(root).ok


def test_a_resume_with_another_seed_is_refused(model_path, tmp_path):
    """seed is a header setting: resuming with seed=1 into a seed=0 folder (other group ids: every group "new")
    would mix two seeds' groups under one header; refused naming the seed, nothing added."""
    root = tmp_path / "ds"
    export(cfg(root, model_path), inputs=make_inputs(["a"]))
    with pytest.raises(InputError, match="seed"):
        export(cfg(root, model_path, seed=1), inputs=make_inputs(["a"]))
    assert len(D.read_manifest(root)) == 1


def test_a_resume_that_stops_keeps_the_old_counts_marked_unfinished(model_path, tmp_path):
    """CONTRACTS: "a resume keeps the old counts and sets finished false". a, b written (2 groups); the resume's
    c, d, e fail on an unusable endpoint with f still to come: it stops, the header says unfinished, 2 groups."""
    root = tmp_path / "ds"
    export(cfg(root, model_path, "down_except_ok"), inputs=make_inputs(["aok", "bok"]))
    with pytest.raises(JudgeError):
        export(cfg(root, model_path, "down_except_ok"), inputs=make_inputs(["aok", "bok", "c", "d", "e", "f"]))
    counts = D.read_header(root).counts
    assert counts["finished"] is False and counts.get("groups") == 2
