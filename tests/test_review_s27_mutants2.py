"""Session 27 (second mutation round): tests for mutants of the export's resume and accounting, the scene
generator's truncation rules and the calibration fit's scoring settings that the suite let survive. Each test
names the behaviour it pins and why it matters; the session's report lists the mutants each one kills."""

from __future__ import annotations

import numpy as np
import pytest

# ------------------------------------------------------------------------------------------- scene generator


@pytest.mark.parametrize("axis", [0, 1])
def test_a_generated_keypoint_on_the_first_pixel_past_the_border_is_truncated(axis):
    """data._corrupt: a W×H image has pixels 0 … W−1, so a point projected at u = W (or v = H) is outside it and
    hidden as truncated, one at W − 0.01 is kept — the rule evidence.evidence_tags reads back ("a seen keypoint at
    u ≥ W tags truncation"): a generator keeping u = W wrote scenes whose visible points tag truncation."""
    from test_review_s26_mutation_c import _corrupt, _layout

    uv, pts, box = _layout(W=256, H=256)
    uv[0, 9, axis] = 256.0  # noise off (noise_frac 0): the stored point is exactly this
    uv[0, 10, axis] = 256.0 - 0.01
    out = _corrupt(uv, pts, box, W=256, H=256)
    hidden = out[0, :, 2] == 0
    assert hidden[9] and not hidden[10]
    assert hidden.sum() == 1


def test_a_point_less_than_ten_centimetres_in_front_of_the_camera_is_truncated_wherever_it_projects():
    """data._corrupt: a point behind the camera (or closer than 0.1 m) is not seen, even where its (meaningless)
    projection lands inside the image — a hand reaching past the lens. Kept, it handed the model a keypoint the
    camera cannot have seen; at exactly 0.1 m the point is in front and kept."""
    from test_review_s26_mutation_c import _corrupt, _layout

    uv, pts, box = _layout()
    pts[0, 9, 2] = -0.4  # behind the camera; its pixel (set by _layout) is well inside the image
    pts[0, 10, 2] = 0.05
    pts[0, 7, 2] = 0.1
    out = _corrupt(uv, pts, box)
    hidden = out[0, :, 2] == 0
    assert 0 < uv[0, 9, 0] < 256 and 0 < uv[0, 9, 1] < 256
    assert hidden[9] and hidden[10] and not hidden[7]
    assert hidden.sum() == 2
    np.testing.assert_array_equal(out[0, [9, 10]], 0.0)  # stored as [0, 0, 0], the contract's hidden point


# ----------------------------------------------------------------------------------------------- calibration


@pytest.mark.usefixtures("explore_prior")
def test_calibrating_a_memory_fits_raw_scores_whatever_calibration_and_prototypes_it_holds(tmp_path):
    """calibration.calibrate_memory scores its groups "with memory's rules (prototypes, and any old calibration,
    off)": the map is of the judge's *raw* log score. Fitted on scores already passed through an old map (slope 2
    here) the new map composes with it, and fitted with the prototypes' group level on, it learns that shift too —
    either way the stored map no longer describes what the judge hands it. The memory holds both (a slope-2
    calibration, prototypes of every group's true pose labelled 1 mm, which lift the level), and the fit must equal
    one made from ``score_groups(..., use_calibration=False, use_prototypes=False)``."""
    from hmrcritic.agent.calibration import calibrate_memory, fit_calibration
    from hmrcritic.agent.groups import groups_from_perturbed_gt
    from hmrcritic.agent.learning_curve import score_groups
    from hmrcritic.hmr.data import SceneSet, generate_split
    from hmrcritic.memory.embeddings import pose_embedding
    from hmrcritic.memory.schema import Prototype, ScoreCalibration
    from hmrcritic.memory.store import MemoryStore

    groups = groups_from_perturbed_gt(SceneSet(generate_split("train", tmp_path / "train", n=3, quiet=True)),
                                      num_groups=3, num_generations=6, seed=0)
    mem = MemoryStore(tmp_path / "mem")
    mem.set_calibration(ScoreCalibration(slope=2.0, intercept=0.5, groups=1, hypotheses=2, pearson_before=0.0,
                                         pearson_after=0.0, rules_fingerprint=mem.rules_fingerprint()))
    mem.prototypes.add([Prototype(proto_id=f"p{i}", embedding=pose_embedding(g.sample.joints3d)[0].tolist(),
                                  overall=10.0, motion_structure=10.0, physical_feasibility=10.0,
                                  image_alignment=10.0, error_mm=1.0, source=f"train/{g.group_id}")
                        for i, g in enumerate(groups)])
    raw, _ = score_groups(groups, mem, "full", agent_config={"use_calibration": False, "use_prototypes": False,
                                                             "learn": False})
    cal = calibrate_memory(mem, groups)
    want = fit_calibration(raw, [g.errors_mm for g in groups])
    assert (cal.slope, cal.intercept) == (pytest.approx(want.slope, rel=1e-9), pytest.approx(want.intercept, rel=1e-9))
    assert mem.calibration().slope == pytest.approx(want.slope, rel=1e-9)


# ------------------------------------------------------------------------------------------------------ export


def recording_score(sample, hypotheses, judge="builtin", memory=None, config=None, group_id=None):
    """test_export's scorer, first writing the agent thread the export named (``group_id``) to the file
    ``HMRCRITIC_TEST_THREADS`` names: the thread is what the agent's checkpointer resumes a group's critique from."""
    import os

    from test_export import fake_score

    with open(os.environ["HMRCRITIC_TEST_THREADS"], "a", encoding="utf-8") as fh:
        fh.write(f"{sample.sample_id} {group_id}\n")
    return fake_score(sample, hypotheses, judge=judge, memory=memory, config=config, group_id=group_id)


def test_a_group_scored_again_with_another_memory_gets_a_new_agent_thread(tmp_path, monkeypatch):
    """export: a group's checkpointer thread is "new whenever anything that changes its critique changes", the
    memory's version included. An export whose every group failed leaves no group, so the next run takes the folder
    over even after the memory changed (rules added); resuming the old run's thread there would continue a
    critique begun with the old rules. Same memory, same thread (what a plain re-run resumes)."""
    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment.export import export
    from hmrcritic.memory.schema import Rule, RuleCondition
    from hmrcritic.memory.store import MemoryStore

    model = tiny_model(tmp_path / "tiny.pt")
    threads = tmp_path / "threads.txt"
    monkeypatch.setenv("HMRCRITIC_TEST_THREADS", str(threads))
    inputs = make_inputs(1)
    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", inputs[0].sample_id)

    def run():
        cfg = cfg_for(tmp_path / "ds", model, score_group="test_review_s27_mutants2:recording_score",
                      use_memory=True, memory=str(tmp_path / "mem"))
        return export(cfg, inputs=inputs)

    assert run().failures == 1
    assert run().failures == 1  # the same memory: a re-run
    mem = MemoryStore(tmp_path / "mem")
    mem.rules.add([Rule(rule_id="user-x", text="x", origin="user",
                        condition=RuleCondition(measure="reproj_px", comparator=">", threshold=9, points=2))])
    del mem
    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", "")
    assert run().new_groups == 1
    seen = [line.split() for line in threads.read_text().splitlines()]
    assert [s for s, _ in seen] == [inputs[0].sample_id] * 3
    first, again, changed = (t for _, t in seen)
    assert first == again and changed != first


def test_the_manifest_and_pairs_follow_the_input_order_not_the_ids(tmp_path):
    """export rewrites the manifest "in input order" at the end (pairs.jsonl follows it): a user's inputs listed
    img002, img000, img001 give records in that order, so record i is input i — not sorted by id, which is
    another order whenever the ids do not sort as the inputs were given."""
    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export
    from hmrcritic.io import read_jsonl

    inputs = [make_inputs(3)[i] for i in (2, 0, 1)]
    export(cfg_for(tmp_path / "ds", tiny_model(tmp_path / "tiny.pt")), inputs=inputs)
    want = [s.sample_id for s in inputs]
    assert [r.input_id for r in D.read_manifest(tmp_path / "ds")] == want
    assert [p["prompt"]["input_id"] for p in read_jsonl(tmp_path / "ds" / D.PAIRS)] == want


def test_the_reader_drops_a_manifest_line_whose_checksum_does_not_match(tmp_path):
    """dataset.read_manifest / repair_manifest keep only "complete, checksummed records": a line changed after it was
    written (a score edited by hand, bytes flipped on disk into other valid JSON) is no record. Kept, finetune
    trained on scores no export gave, and a resumed export counted the group as done."""
    import json

    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export

    export(cfg_for(tmp_path / "ds", tiny_model(tmp_path / "tiny.pt")), inputs=make_inputs(2))
    path = tmp_path / "ds" / D.MANIFEST
    lines = path.read_text().splitlines(keepends=True)
    rec = json.loads(lines[1])
    rec["scores"][0]["overall"] = 10.0 if rec["scores"][0]["overall"] != 10.0 else 0.0
    assert D.GroupRecord.model_validate(rec)  # still a valid record by its schema: only the checksum tells
    path.write_text(lines[0] + json.dumps(rec) + "\n")
    assert [r.input_id for r in D.read_manifest(tmp_path / "ds")] == ["img000"]
    kept, dropped = D.repair_manifest(tmp_path / "ds")
    assert [r.input_id for r in kept] == ["img000"] and dropped == 1
    assert path.read_text() == lines[0]


def test_groups_left_not_attempted_stay_open_failures_after_a_shorter_run(tmp_path, monkeypatch):
    """An export stopped by its endpoint lists the groups it never sent (stage ``not_attempted``) in failures.jsonl
    so that they "read as failed, not as missing". A later run on fewer inputs (a smaller --limit) that finishes
    keeps them there, as any open failure of an input beyond its own: the header's ``failures_open`` and validate's
    warning still count them, and say they were never tried."""
    from openai_stub_server import StubOpenAIServer
    from test_export import cfg_for, make_inputs, tiny_model
    from test_review_s22_vlmdown import SCORER, vlm_env

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export
    from hmrcritic.errors import JudgeError
    from hmrcritic.io import read_jsonl

    model = tiny_model(tmp_path / "tiny.pt")
    root = tmp_path / "ds"
    inputs = make_inputs(5)
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        cfg = cfg_for(root, model, judge="vlm", score_group=SCORER)
        with pytest.raises(JudgeError, match="export stopped"):
            export(cfg, inputs=inputs)
        srv.default = "good"
        s = export(cfg, inputs=inputs[:3])
    assert (s.new_groups, s.groups, s.failures) == (3, 3, 0)
    fails = read_jsonl(root / D.FAILURES)
    assert [(f["input_id"], f["stage"]) for f in fails] == [("img003", "not_attempted"), ("img004", "not_attempted")]
    assert D.read_header(root).counts["failures_open"] == 2
    warning = [w for w in D.validate_dataset(root).warnings if "failed" in w]
    assert warning and "2 input(s) failed" in warning[0] and "2 of them were not attempted" in warning[0]


def test_a_resumed_export_redoes_a_group_whose_condition_file_no_longer_matches_its_record(tmp_path):
    """dataset.repair_manifest (an export resuming) keeps a record only if both array files "have the checksums the
    record names" — the condition's too, not only the hypotheses': a condition overwritten with another input's
    keypoints (same keys and shapes) would pair the record's scores with a person they were never given for. The
    group is dropped and sampled again; validate passes afterwards."""
    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export

    model = tiny_model(tmp_path / "tiny.pt")
    root = tmp_path / "ds"
    export(cfg_for(root, model), inputs=make_inputs(2))
    rec = D.read_manifest(root)[1]
    cond = D.load_npz(root / rec.condition.path)
    cond["keypoints"] = np.asarray(cond["keypoints"]) + np.float32(3.0)  # another person, same layout
    hyps = D.load_npz(root / rec.hypotheses.path)
    D.write_group_arrays(root, rec.group_id, cond, hyps)
    kept, dropped = D.repair_manifest(root)
    assert [r.group_id for r in kept] == [D.read_manifest(root)[0].group_id] and dropped == 1
    s = export(cfg_for(root, model), inputs=make_inputs(2))
    assert (s.done_before, s.new_groups) == (1, 1)
    assert D.validate_dataset(root).ok
