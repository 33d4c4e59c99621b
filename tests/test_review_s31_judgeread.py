"""Session-31 logic read of the graph nodes, the built-in judge and the evidence.

The refusal tests here failed before their fix (the others pin that valid evidence is unchanged):

* a measure that came out NaN (inputs finite in float64 but beyond float32's range, where the measures are
  computed) was turned into 0 by ``compute_evidence``'s final ``nan_to_num`` — for ``reproj_px`` that is a
  perfect fit, so the most broken hypothesis read as the best aligned one;
* the built-in judge ranked a NaN measure *better than the best* of its group (``_mean_rank`` compares NaN as
  neither less nor equal: rank −0.5) and scored it, and an evidence list of one value was broadcast over the
  whole group or failed as a bare IndexError in the rationale. Both are now a JudgeError naming the measure.
"""

from __future__ import annotations

import numpy as np
import pytest

from hmrcritic.agent.evidence import GroupInputs, compute_evidence
from hmrcritic.agent.judges import BuiltinJudge, JudgeContext
from hmrcritic.errors import InputError, JudgeError
from hmrcritic.memory.schema import Rule, RuleCondition


class _FlatPrior:
    """A pose prior that reads every pose as typical (the tests here are about the other measures)."""

    def nll(self, pose):
        return np.zeros(len(pose))


def _inputs(n: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return dict(
        joints=rng.normal(size=(n, 24, 3)) * 0.3 + np.array([0.0, 0.0, 3.0]),
        coco17=rng.normal(size=(n, 17, 3)) * 0.3 + np.array([0.0, 0.0, 3.0]),
        body_pose=rng.normal(size=(n, 69)) * 0.2,
        keypoints=np.c_[rng.uniform(100, 200, size=(17, 2)), np.ones(17)],
        K=np.array([[500.0, 0.0, 128.0], [0.0, 500.0, 128.0], [0.0, 0.0, 1.0]]),
        image_size=(256, 256),
    )


# ------------------------------------------------------------------------------------------------ evidence
@pytest.mark.parametrize("field", ["coco17", "joints", "body_pose"])
def test_a_measure_that_comes_out_nan_is_an_error_not_a_perfect_zero(field):
    d = _inputs()
    bad = d[field].copy()
    bad[1] = 1e39  # finite in float64, inf once cast to the measures' float32: NaN downstream
    d[field] = bad
    with pytest.raises(InputError, match="NaN"):  # was: reproj_px / consensus / joint_limit_deg 0 for h1
        compute_evidence(GroupInputs(**d), prior=_FlatPrior())


def test_ordinary_inputs_still_give_finite_evidence():
    ev = compute_evidence(GroupInputs(**_inputs()), prior=_FlatPrior())
    assert all(np.isfinite(v).all() and v.shape == (3,) for v in ev.values())


# ------------------------------------------------------------------------------------------- builtin judge
def test_builtin_judge_refuses_nan_evidence_instead_of_ranking_it_best():
    ev = {"reproj_px": [5.0, float("nan"), 20.0], "penetration_mm": [1.0, 2.0, 3.0]}
    ctx = JudgeContext(group_id="g", num_hypotheses=3, evidence=ev)
    with pytest.raises(JudgeError, match="reproj_px"):  # was: h1 scored as better on reproj_px than h0
        BuiltinJudge().critique(ctx)


def test_builtin_judge_refuses_an_evidence_list_of_the_wrong_length():
    rule = Rule(rule_id="r", text="reproj > 10", condition=RuleCondition(
        measure="reproj_px", comparator=">", threshold=10.0, points=8.0))
    ctx = JudgeContext(group_id="g", num_hypotheses=3, evidence={"reproj_px": [50.0]}, rules=[rule])
    with pytest.raises(JudgeError, match="3 hypotheses"):  # was: a bare IndexError from the rationale
        BuiltinJudge().critique(ctx)


def test_builtin_judge_scores_finite_evidence_as_before():
    ev = {"reproj_px": [5.0, 12.0, 20.0], "penetration_mm": [1.0, 2.0, 3.0]}
    crit = BuiltinJudge().critique(JudgeContext(group_id="g", num_hypotheses=3, evidence=ev))
    overall = [s.overall for s in crit.scores]
    assert overall[0] == 10.0 and overall[0] > overall[1] > overall[2]


# ------------------------------------------------------------------------------------------------ pose prior
def test_a_cached_prior_that_loads_but_holds_nan_is_refitted_not_trusted(monkeypatch):
    """``get_pose_prior`` promised "a corrupt cache file is regenerated, never trusted", but only a file that failed
    to load was: one that loaded with NaN (or mis-shaped) arrays was used, and every pose_prior_nll came out NaN."""
    from hmrcritic.agent import prior as P
    from hmrcritic.hmr.poses import sample_poses
    from hmrcritic.io import atomic_save_npz

    poses = np.asarray(sample_poses(60, seed=0)["body_pose"], dtype=np.float32)
    monkeypatch.setattr(P, "_train_poses", lambda: (poses, "judgeread-test"))
    P.set_pose_prior(None)
    try:
        D = 23 * 6
        atomic_save_npz(P._prior_path("judgeread-test"), weights=np.ones(1), means=np.full((1, D), np.nan),
                        chols=np.eye(D)[None], reference=np.float64(0.0), spread=np.float64(1.0))
        nll = P.get_pose_prior().nll(poses[:3])
        assert np.isfinite(nll).all()  # was: all NaN (the NaN means were trusted)
    finally:
        P.set_pose_prior(None)
