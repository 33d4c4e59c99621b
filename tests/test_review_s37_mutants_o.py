"""Session 37 mutation audit (helper o) of what the VLM judge is sent (agent/prompts.py) and of a user's own scenes
(hmr/userdata.py): tests for mutants the suite let through, each with an answer worked out by hand from the
docstrings, README and docs/CONTRACTS.md, not copied from the code's own output.

Amounts of 10 from judges.of_ten's docstring, 10 · (1 − exp(−0.03 · points · weight)), weight 1 for an untried rule:
2 points 0.5824. Cameras: fx = fy = 1000 px, principal point (320, 240); a point (x, y, z) m projects to
(320 + 1000 x / z, 240 + 1000 y / z) px."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmrcritic.agent import prompts
from hmrcritic.agent.judges import JudgeContext
from hmrcritic.agent.schema import GroupCritique, HypothesisScore
from hmrcritic.errors import InputError
from hmrcritic.memory.schema import Rule, RuleCondition

# ---------------------------------------------------------------------------------------------------- prompts


def _rule(rule_id="r1", points=2.0, threshold=0.1, per=None, text="keypoints off -> take off 2 points"):
    return Rule(rule_id=rule_id, text=text, condition=RuleCondition(
        measure="reproj_rel", comparator=">", threshold=threshold, points=points, per=per))


def _ctx(**kw) -> JudgeContext:
    fields = dict(group_id="g37o", num_hypotheses=3, evidence={"reproj_rel": [0.3, 0.05, 0.3]},
                  measure_info={"reproj_rel": "fraction of the box diagonal; higher is worse"}, rules=[_rule()])
    fields.update(kw)
    return JudgeContext(**fields)


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_a_graded_rule_taking_the_same_amount_everywhere_shows_that_amount():
    """rules_block: a graded rule shows what it takes where it holds. 2 points per 0.1 beyond 0.1: hyp 0 and 2
    (0.3: (0.3 − 0.1) / 0.1 = 2 steps = 4 points, under the cap of 3 × 2) both take 10 · (1 − exp(−0.03 · 4)) =
    1.131 of 10, one amount, not a range; hyp 1 (0.05) is below the threshold."""
    line = _line(prompts.rules_block([_rule(per=0.1)], _ctx().evidence), "- [r1] ")
    assert line.endswith("holds for hyp 0, 2 (taking 1.13 of 10)")


def test_numbers_at_the_decade_boundaries_keep_three_significant_digits():
    """_fmt: 3 significant digits: 1 reads "1.00", 10 "10.0", 100 "100" (not "100.0", four)."""
    assert [prompts._fmt(v) for v in (1.0, 10.0, 100.0, -100.0)] == ["1.00", "10.0", "100", "-100"]


def test_the_ask_names_the_last_index():
    """CRITIQUE_SYSTEM: "one entry per index 0..N-1"; the ask for a group of 3 says indices 0..2 (an index 3 would
    be refused as out of range by the parser)."""
    text = prompts.critique_text(_ctx(), images=[])
    assert text.endswith("Score all 3 hypotheses (indices 0..2, each exactly once) on the 0-10 scale.")
    assert text.startswith("GROUP g37o: 3 hypotheses, indices 0..2.")


def test_a_recalled_rule_text_is_cut_at_its_bound():
    """MAX_RULE_CHARS = 300: "Cap the long free-text pieces so a group ... stays a few kB of text"."""
    text = "knee bent " * 60  # 600 characters
    line = _line(prompts.rules_block([_rule(text=text)]), "- [r1] ")
    quoted, _ = json.JSONDecoder().raw_decode(line[len("- [r1] "):])
    assert len(quoted) == 300 and quoted == " ".join(text.split())[:300]


def test_previous_scores_are_shown_only_on_a_revise_round():
    """critique_text: the previous overall scores go with the feedback that asks for a revision; a first round (no
    feedback) does not show a previous critique's scores to anchor on."""
    prev = GroupCritique(group_id="g37o", scores=[
        HypothesisScore(index=i, motion_structure=5, physical_feasibility=5, image_alignment=5, overall=o,
                        rationale="r") for i, o in enumerate((7.0, 3.5, 1.0))])
    assert "YOUR PREVIOUS" not in prompts.critique_text(_ctx(previous=prev), images=[])
    revise = prompts.critique_text(_ctx(previous=prev, feedback="apply r1"), images=[])
    assert "YOUR PREVIOUS overall scores (index:score): 0:7.00; 1:3.50; 2:1.00" in revise


# -------------------------------------------------------------------------------------------- userdata: .npz
K0 = np.array([[1000.0, 0, 320], [0, 1000.0, 240], [0, 0, 1]])


def _keypoints(n: int, centre=(320.0, 240.0)) -> np.ndarray:
    """n scenes of 17 visible keypoints on a 200 × 200 px box around ``centre`` (its corners among them)."""
    grid = np.array([(u, v) for u in (-100, -50, 0, 50, 100) for v in (-100, 0, 100)][:15] + [(100, 100), (0, 50)])
    kp = np.ones((n, 17, 3))
    kp[..., :2] = np.asarray(centre) + grid
    return kp


def _scenes(n: int = 3, **changes) -> dict:
    arrays = {"keypoints": _keypoints(n), "K": K0, "image_size": np.array([640, 480]),
              "global_orient": np.zeros((n, 3)), "body_pose": np.zeros((n, 69)), "betas": np.zeros((n, 10)),
              "transl": np.tile([0.0, 0.0, 5.0], (n, 1))}
    arrays.update(changes)
    return arrays


def _npz(tmp_path, arrays, name="d.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_an_inputs_npz_keeps_each_rows_camera_and_its_size_as_w_h(tmp_path):
    """export --data KP.npz: ``K (n,3,3)`` is one camera per row and ``image_size`` is (W, H) (the module docstring);
    a Sample's image_size is (W, H) too (CONTRACTS: Sample). Row 1's camera differs from row 0's."""
    from hmrcritic.hmr.userdata import read_inputs

    K = np.stack([K0, K0, K0])
    K[1, 0, 0], K[1, 1, 1], K[1, 0, 2] = 1500.0, 1500.0, 300.0
    samples = read_inputs(_npz(tmp_path, {"keypoints": _keypoints(3), "K": K, "image_size": np.array([640, 480])}))
    assert [s.image_size for s in samples] == [(640, 480)] * 3
    assert samples[1].K[0, 0] == 1500.0 and samples[1].K[0, 2] == 300.0
    assert samples[0].K[0, 0] == 1000.0 and samples[2].K[0, 2] == 320.0


def test_keypoints_at_the_left_edge_in_pixels_are_not_taken_for_normalised(tmp_path):
    """Normalised keypoints are refused when *both* u and v lie within [0, 1] ("multiply u by W and v by H"). A
    person cut by the image's left edge, its visible keypoints at u ≤ 1 px but v in the hundreds, is in pixels."""
    from hmrcritic.hmr.userdata import read_labelled

    kp = _keypoints(3)
    kp[..., 0] = np.linspace(0.0, 1.0, 17)
    at_edge = np.tile([-1.6, 0.0, 5.0], (3, 1))  # the body where its keypoints are: u = 320 − 1000 · 1.6 / 5 = 0
    got, n = read_labelled(_npz(tmp_path, _scenes(keypoints=kp, transl=at_edge)))
    assert n == 3 and got["keypoints"][0, 16, 0] == 1.0
    kp[..., 1] = np.linspace(0.0, 1.0, 17)  # both: normalised
    with pytest.raises(InputError, match="lie within \\[0, 1\\]: give pixels"):
        read_labelled(_npz(tmp_path, _scenes(keypoints=kp, transl=at_edge), "n.npz"))


def test_bodies_a_third_of_a_box_from_their_keypoints_centre_do_not_warn(tmp_path):
    """_warn_other_frame: the root projects "within ~0.4 of its keypoints' box diagonal of the box's centre"; the
    warning is for a median beyond 0.75. Every body here projects 70 px right and 70 px down of its 200 × 200 px
    box's centre (transl x = y = 70 · 5 / 1000 = 0.35 m at 5 m): 99 / 283 = 0.35 of the diagonal, no warning (from
    the box's top-left corner it is 240 / 283 = 0.85)."""
    import warnings

    from hmrcritic.hmr.userdata import read_labelled

    path = _npz(tmp_path, _scenes(transl=np.tile([0.35, 0.35, 5.0], (3, 1))))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_labelled(path)
    assert not [w for w in caught if "another frame" in str(w.message)]


def test_a_rule_on_a_measure_this_group_lacks_is_shown_without_whom_it_holds_for():
    """A recalled rule may name a measure the group has no value for (a measure added later, or one skipped for
    this group): its line still shows the rule, with no "holds for", and the rest of the prompt is built."""
    rule = Rule(rule_id="h1", text="elbow bent backwards -> take off 3 points", condition=RuleCondition(
        measure="hyperextension_deg", comparator=">", threshold=15.0, points=3.0))
    text = prompts.critique_text(_ctx(rules=[rule, _rule()]), images=[])
    line = _line(text, "- [h1] ")
    assert "condition: hyperextension_deg > 15.0" in line and "holds for" not in line
    assert _line(text, "- [r1] ").endswith("holds for hyp 0, 2")


def test_the_mistakes_table_has_a_column_for_every_mistakes_measures():
    """mistakes_table: the columns are every measure of any mistake ("-" where one has no value), so a measure only
    the second mistake has still reaches the rule miner beside its hypothesis."""
    from hmrcritic.agent.judges import Mistake

    a = Mistake(index=0, overall=9.0, critic_rank=0, true_rank=2, error_mm=150.0, evidence={"reproj_rel": 0.4})
    b = Mistake(index=2, overall=2.0, critic_rank=2, true_rank=0, error_mm=40.0,
                evidence={"reproj_rel": 0.05, "penetration_mm": 12.5})
    table = prompts.mistakes_table([a, b])
    assert "hyp | verdict | overall | critic_rank | true_rank | error_mm | reproj_rel | penetration_mm" in table
    assert "\n0 | over-rated | 9.00 | 0 | 2 | 150 | 0.4 | -" in table
    assert "\n2 | under-rated | 2.00 | 2 | 0 | 40.0 | 0.05 | 12.5" in table


# ------------------------------------------------------------------------------------- userdata: input lists
def test_a_json_lists_bad_item_is_named_counting_from_one(tmp_path):
    """A JSON list's places are "FILE item N" (_input_entries), counted as the duplicate-id message counts inputs
    ("inputs 1 and 2"): its first item is item 1."""
    from hmrcritic.hmr.userdata import read_inputs

    listing = tmp_path / "inputs.json"
    listing.write_text(json.dumps([{"image": "a.png"}]))
    with pytest.raises(InputError, match=r"inputs.json item 1: missing keypoints"):
        read_inputs(listing)


def test_an_inputs_npz_without_rows_is_refused(tmp_path):
    """An .npz of (0, 17, 3) keypoints holds no input: refused by shape (as evaluate's "no scenes"), not an export
    of nothing."""
    from hmrcritic.hmr.userdata import read_inputs

    path = _npz(tmp_path, {"keypoints": np.zeros((0, 17, 3)), "K": K0, "image_size": np.array([640, 480])})
    with pytest.raises(InputError, match=r"keypoints has shape \(0, 17, 3\)"):
        read_inputs(path)


def test_a_json_list_given_to_evaluate_says_which_command_takes_it(tmp_path):
    """An input list is "a JSON lines file (or a JSON list)" (the module docstring): given to evaluate --data, the
    list form is named as a JSON file for export --data too, as JSON lines are (earlier tests wrote JSON lines only),
    not "not a readable .npz archive"."""
    from hmrcritic.hmr.userdata import read_labelled

    listing = tmp_path / "inputs.json"
    listing.write_text(json.dumps([{"image": "a.png", "keypoints": "a.json"}], indent=2))
    with pytest.raises(InputError, match="a JSON file, not an .npz: .* is for export --data"):
        read_labelled(listing)
