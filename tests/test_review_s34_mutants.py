"""Session 34 mutation audit of hmr/smpl_arrays.py, hmr/userdata.py, agent/mining.py and agent/groups.py.

Each test here pins a documented behaviour (docs/CONTRACTS.md, the modules' docstrings) that a mutant of the
code survived: no earlier test failed when it was broken. The expectations come from the contract or an
independent computation, not from the code's own text."""

from __future__ import annotations

import numpy as np
import pytest

from hmrcritic.errors import InputError
from hmrcritic.hmr.smpl_arrays import check_smpl_arrays


def _ours(n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"global_orient": rng.normal(0, 0.3, (n, 3)).astype(np.float32),
            "body_pose": rng.normal(0, 0.2, (n, 69)).astype(np.float32),
            "betas": rng.normal(0, 1, (n, 10)).astype(np.float32),
            "transl": np.tile(np.float32([0, 0.2, 5]), (n, 1))}


# ------------------------------------------------------------------------------------------ hmr/smpl_arrays.py
def test_a_file_with_our_keys_and_a_poses_array_reads_our_keys():
    """``poses`` is read only where global_orient and body_pose are absent: a file carrying both (a converter
    that kept the source's poses beside ours) reads as ours — the extra key is ignored, as every extra key is."""
    ours = _ours()
    other = np.ones((4, 72), np.float32)
    got = check_smpl_arrays({**ours, "poses": other}, "h.npz")
    for k, v in ours.items():
        np.testing.assert_array_equal(got[k], v)


def test_a_one_input_group_with_its_leading_one_reads_as_its_rows():
    """``group.numpy()`` of a one-input group is ``(1, N, …)``; it reads as the N hypotheses."""
    ours = _ours()
    got = check_smpl_arrays({k: v[None] for k, v in ours.items()}, "g")
    for k, v in ours.items():
        np.testing.assert_array_equal(got[k], v)


def test_no_rows_is_refused_by_name():
    ours = _ours()
    with pytest.raises(InputError, match="h.npz: no hypotheses"):
        check_smpl_arrays({k: v[:0] for k, v in ours.items()}, "h.npz")


def test_max_rows_accepts_exactly_the_maximum_and_refuses_one_more():
    """CONTRACTS.md: 1 ≤ N ≤ 1,024 — the bound itself is accepted."""
    got = check_smpl_arrays(_ours(5), "h", max_rows=5)
    assert got["body_pose"].shape == (5, 69)
    with pytest.raises(InputError, match="h: 6 hypotheses, at most 5 accepted"):
        check_smpl_arrays(_ours(6), "h", max_rows=5)


def test_without_shared_ok_one_betas_row_for_many_is_refused():
    """Labelled scenes each carry their own body (``shared_ok=False``): one betas row for 4 scenes is a count
    mismatch, not a shape silently given to every scene."""
    ours = _ours()
    with pytest.raises(InputError, match="betas has 1 scenes, others have 4"):
        check_smpl_arrays({**ours, "betas": ours["betas"][:1]}, "d.npz", rows="scenes", row="scene",
                          shared_ok=False)
    with pytest.raises(InputError, match="transl has 1 scenes, others have 4"):
        check_smpl_arrays({**ours, "transl": ours["transl"][:1]}, "d.npz", rows="scenes", row="scene",
                          shared_ok=False)


@pytest.mark.parametrize("key", ["global_orient", "body_pose", "betas", "transl"])
def test_the_first_non_finite_row_is_named(key):
    ours = _ours(5)
    bad = ours[key].copy()
    bad[1, 0] = np.nan
    bad[3, 0] = np.inf
    with pytest.raises(InputError, match=f"h: {key} of hypothesis 1 contains NaN/inf"):
        check_smpl_arrays({**ours, key: bad}, "h")


def test_transl_bound_is_the_documented_1e5_metres_and_names_the_row():
    ours = _ours(4)
    ok = ours["transl"].copy()
    ok[2] = [0.0, 0.0, 0.99e5]
    check_smpl_arrays({**ours, "transl": ok}, "h")
    far = ours["transl"].copy()
    far[2] = [0.0, 0.0, 2e5]
    with pytest.raises(InputError, match="transl of hypothesis 2 reaches 2e\\+05.*metres"):
        check_smpl_arrays({**ours, "transl": far}, "h")


def test_betas_bound_is_the_documented_50_and_names_the_row():
    ours = _ours(4)
    ok = ours["betas"].copy()
    ok[1, 0] = 49.0  # far out, but inside the contract's |β| ≤ 50
    check_smpl_arrays({**ours, "betas": ok}, "h")
    big = ours["betas"].copy()
    big[3, 2] = -60.0
    with pytest.raises(InputError, match="betas of hypothesis 3 reach 60"):
        check_smpl_arrays({**ours, "betas": big}, "h")


def test_complex_values_are_refused_not_cast_to_their_real_part():
    ours = _ours()
    with pytest.raises(InputError, match="body_pose holds complex\\d+ values, expected real numbers"):
        check_smpl_arrays({**ours, "body_pose": ours["body_pose"] + 1j}, "h")


@pytest.mark.parametrize("count,name", [(156, "SMPL\\+H"), (165, "SMPL-X")])
def test_refused_poses_of_another_body_name_that_body(count, name):
    ours = _ours()
    with pytest.raises(InputError, match=f"poses has shape \\(4, {count}\\).*{name} poses share SMPL's first 22"):
        check_smpl_arrays({"poses": np.zeros((4, count)), "betas": ours["betas"], "transl": ours["transl"]}, "h")


# ------------------------------------------------------------------------------------------ hmr/userdata.py
def _scenes(n: int = 4) -> dict[str, np.ndarray]:
    """n labelled scenes in the OpenCV camera frame: the body 5 m ahead on the optical axis, its keypoints a
    200 px box around the principal point (where transl projects: no other-frame warning)."""
    rng = np.random.default_rng(1)
    kp = np.zeros((n, 17, 3))
    kp[..., :2] = np.array([320.0, 240.0]) + rng.uniform(-100, 100, (n, 17, 2))
    kp[..., 2] = 1.0
    K = np.array([[1000.0, 0, 320], [0, 1000.0, 240], [0, 0, 1]])
    return {"keypoints": kp, "K": K, "image_size": np.array([640, 480]),
            "global_orient": np.zeros((n, 3)), "body_pose": np.zeros((n, 69)), "betas": np.zeros((n, 10)),
            "transl": np.tile([0.0, 0.0, 5.0], (n, 1))}


def _write(tmp_path, arrays, name="d.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _read(tmp_path, **changes):
    from hmrcritic.hmr.userdata import read_labelled

    return read_labelled(_write(tmp_path, {**_scenes(), **changes}))


def test_the_synthetic_scenes_read(tmp_path, recwarn):
    got, n = _read(tmp_path)
    assert n == 4 and got["K"].shape == (4, 3, 3) and got["image_size"].tolist() == [[640, 480]] * 4
    assert not [w for w in recwarn if "another frame" in str(w.message)]


@pytest.mark.parametrize("conf,ok", [(1.05, True), (1.5, False), (-0.5, False)])
def test_keypoint_confidences_are_in_0_1_with_a_heatmap_peaks_margin(tmp_path, conf, ok):
    kp = _scenes()["keypoints"]
    kp[2, 5, 2] = conf
    if ok:
        _read(tmp_path, keypoints=kp)
    else:
        with pytest.raises(InputError, match="keypoint confidences of scene 2 are not in \\[0, 1\\]"):
            _read(tmp_path, keypoints=kp)


def test_a_visible_non_finite_keypoint_is_refused_and_an_invisible_one_is_not(tmp_path):
    kp = _scenes()["keypoints"]
    kp[1, 3, 0] = np.nan
    with pytest.raises(InputError, match="a visible keypoint of scene 1 is NaN/inf"):
        _read(tmp_path, keypoints=kp)
    kp[1, 3, 2] = 0.0  # not visible: its position is not read
    _read(tmp_path, keypoints=kp)


@pytest.mark.parametrize("where", [(1, 0), (2, 0), (2, 2)])
def test_k_that_is_not_pinhole_intrinsics_is_refused(tmp_path, where):
    """Pinhole intrinsics are [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]: a skew below the diagonal or a last row
    other than [0, 0, 1] is another camera model."""
    K = _scenes()["K"].copy()
    K[where] = 3.0
    with pytest.raises(InputError, match="K of scene 0 is not pinhole intrinsics"):
        _read(tmp_path, K=K)


@pytest.mark.parametrize("size", [[0, 480], [640, -480]])
def test_an_image_size_that_is_not_positive_is_refused(tmp_path, size):
    with pytest.raises(InputError, match="expected whole pixels \\(W, H\\) > 0"):
        _read(tmp_path, image_size=np.array(size))


def test_labels_in_another_frame_warn_by_the_median_not_by_one_scene(tmp_path):
    """One scene whose body is far from its keypoints (a person mostly hidden) is no proof; most are."""
    base = _scenes()
    one = base["transl"].copy()
    one[0, 0] = 5.0  # 1000 px to the right of its keypoints' box: 1 scene of 4
    with _no_frame_warning():
        _read(tmp_path, transl=one)
    most = base["transl"].copy()
    most[:3, 0] = 5.0
    with pytest.warns(UserWarning, match="another frame than the camera's"):
        _read(tmp_path, transl=most)


class _no_frame_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self.caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert not [w for w in self.caught if "another frame" in str(w.message)]


def test_labels_for_fewer_scenes_than_keypoints_are_refused(tmp_path):
    s = _scenes()
    labels = {k: s[k][:3] for k in ("global_orient", "body_pose", "betas", "transl")}
    with pytest.raises(InputError, match="the labels have 3 scenes, keypoints 4"):
        _read(tmp_path, **labels)


def test_a_body_at_depth_zero_is_refused(tmp_path):
    transl = _scenes()["transl"].copy()
    transl[3, 2] = 0.0
    with pytest.raises(InputError, match="scene 3's body is at depth 0 m, behind the camera"):
        _read(tmp_path, transl=transl)


def test_limit_zero_is_refused_and_a_limit_past_the_end_keeps_every_scene(tmp_path):
    from hmrcritic.hmr.userdata import read_labelled

    path = _write(tmp_path, _scenes())
    with pytest.raises(InputError, match="limit must be a whole number ≥ 1"):
        read_labelled(path, limit=0)
    got, keep = read_labelled(path, limit=10)
    assert keep == 4 and len(got["keypoints"]) == 4


def test_complex_keypoints_are_refused(tmp_path):
    kp = _scenes()["keypoints"].astype(np.complex128)
    with pytest.raises(InputError, match="keypoints holds complex128 values, expected real numbers"):
        _read(tmp_path, keypoints=kp)


def test_an_inputs_npz_refuses_float_sample_ids(tmp_path):
    """sample_id: strings or integers (CONTRACTS / the module docstring); 1.5 would not read back as written."""
    from hmrcritic.hmr.userdata import read_inputs

    s = _scenes()
    arrays = {k: s[k] for k in ("keypoints", "K", "image_size")}
    ok = read_inputs(_write(tmp_path, {**arrays, "sample_id": np.arange(4)}, "ints.npz"))
    assert [x.sample_id for x in ok] == ["0", "1", "2", "3"]
    with pytest.raises(InputError, match="sample_id must be \\(4,\\) strings or integers"):
        read_inputs(_write(tmp_path, {**arrays, "sample_id": np.arange(4) + 0.5}, "floats.npz"))


@pytest.mark.parametrize("field", ["focal", "person"])
def test_an_input_list_refuses_true_as_a_number(tmp_path, field):
    import json

    from hmrcritic.hmr.userdata import read_inputs

    listing = tmp_path / "in.jsonl"
    listing.write_text(json.dumps({"image": "a.jpg", "keypoints": "a.json", field: True}) + "\n")
    with pytest.raises(InputError, match=f"in.jsonl:1: {field} must be a number, got True"):
        read_inputs(listing)


# ------------------------------------------------------------------------------------------ agent/mining.py
def _bg(overall, error):
    from hmrcritic.agent.mining import BatchGroup

    return BatchGroup("g", {}, np.asarray(overall, np.float64), np.asarray(error, np.float64))


def test_overrated_is_the_worse_half_put_at_least_max_2_n_4_places_too_high():
    """9 hypotheses, error = index (true rank = index); default shift max(2, 9 // 4) = 2. The critic's order
    moves hypothesis 6 up exactly 2 places and 4 (the median itself) up 2 as well: only the worse half
    (error > median) at ≥ 2 places counts; one place up does not."""
    from hmrcritic.agent.mining import overrated_mask

    order = [0, 1, 4, 2, 6, 3, 5, 7, 8]  # 4 at place 2 (2 up, but it is the median), 6 at place 4 (2 up)
    overall = np.empty(9)
    overall[order] = np.linspace(1.0, 0.1, 9)
    got = overrated_mask(_bg(overall, np.arange(9.0)))
    # independent: shift = true place − critic place; worse half = error > 4
    place = np.empty(9, int)
    place[order] = np.arange(9)
    expected = ((np.arange(9) - place) >= 2) & (np.arange(9) > 4)
    assert expected.tolist() == [False] * 6 + [True, False, False]
    assert got.tolist() == expected.tolist()
    one_up = [0, 1, 2, 3, 4, 6, 5, 7, 8]  # 6 only 1 place up: not a damaging over-rating
    overall[one_up] = np.linspace(1.0, 0.1, 9)
    assert not overrated_mask(_bg(overall, np.arange(9.0))).any()
    # a small group still needs 2 places (max(2, 5 // 4) = 2): the worst of 5 one place up is a near-tie
    assert not overrated_mask(_bg(np.array([1.0, 0.8, 0.6, 0.2, 0.4]), np.arange(5.0))).any()
    assert overrated_mask(_bg(np.array([1.0, 0.8, 0.3, 0.2, 0.9]), np.arange(5.0))).tolist() == [False] * 4 + [True]


def test_rank_matched_scores_give_the_kth_best_error_the_kth_highest_score():
    from hmrcritic.agent.mining import rank_matched_scores

    got = rank_matched_scores(np.array([0.1, 0.5, 0.9]), np.array([30.0, 10.0, 20.0]))
    np.testing.assert_array_equal(got, [0.1, 0.9, 0.5])


def test_ranks_of_ties_keep_their_order():
    from hmrcritic.agent.mining import ranks

    v = np.repeat([3.0, 1.0, 2.0], 20)
    np.testing.assert_array_equal(ranks(v, descending=True), np.r_[np.arange(20), np.arange(40, 60),
                                                                    np.arange(20, 40)])
    np.testing.assert_array_equal(ranks(v, descending=False), np.r_[np.arange(40, 60), np.arange(20),
                                                                     np.arange(20, 40)])


def test_a_constant_score_or_error_has_spearman_zero():
    from hmrcritic.agent.mining import group_spearman

    assert group_spearman(np.ones(5), np.arange(5.0)) == 0.0
    assert group_spearman(np.arange(5.0), np.ones(5)) == 0.0
    assert group_spearman(np.arange(5.0)[::-1].copy(), np.arange(5.0)) == pytest.approx(1.0)


def test_information_gain_is_the_entropy_drop_over_both_sides():
    from hmrcritic.agent.mining import information_gain

    def h(p):
        return 0.0 if p in (0, 1) else -(p * np.log2(p) + (1 - p) * np.log2(1 - p))

    label = np.array([True, True, False, False])
    fires = np.array([[True, False, False, False], [True, True, False, False]])
    expected = [1.0 - 0.25 * h(1.0) - 0.75 * h(1 / 3), 1.0]
    np.testing.assert_allclose(information_gain(fires, label), expected, atol=1e-9)


def test_a_proposals_own_axis_is_kept_and_an_unknown_one_falls_back_to_the_measures():
    """ProposedRule.axis is the judge's choice where it names one of AXES; otherwise the measure's own axis."""
    from hmrcritic.agent.mining import validate_proposal

    base = {"text": "Reprojection far off the keypoints means a wrong pose", "measure": "reproj_px",
            "comparator": ">", "threshold": 30.0, "points": 2.0}
    rule, why = validate_proposal({**base, "axis": "physical_feasibility"}, round_created=1)
    assert why is None and rule.condition.axis == "physical_feasibility"
    rule, why = validate_proposal({**base, "axis": "nonsense"}, round_created=1)
    assert why is None and rule.condition.axis == "image_alignment"


# ------------------------------------------------------------------------------------------ agent/groups.py
def test_a_sample_missing_any_one_label_is_refused():
    from types import SimpleNamespace

    from hmrcritic.agent.groups import true_errors

    s = SimpleNamespace(sample_id="s1", global_orient=np.zeros(3), body_pose=np.zeros(69), betas=None)
    with pytest.raises(InputError, match="sample s1: has no SMPL labels"):
        true_errors(_ours(2), s)


def test_group_ids_are_fixed_width_and_repeated_sample_ids_kept_apart():
    from types import SimpleNamespace

    from hmrcritic.agent.groups import _group_ids

    assert _group_ids(SimpleNamespace(name="test"), [0, 12]) == {0: "test-000000", 12: "test-000012"}
    samples = [SimpleNamespace(sample_id="a"), SimpleNamespace(sample_id="a"), SimpleNamespace(sample_id="b")]
    assert _group_ids(samples, [0, 1, 2]) == {0: "a-000000", 1: "a-000001", 2: "b"}


@pytest.mark.parametrize("scene_id,expected", [
    ("test-000012", ("test", 12)), ("train-" + "9" * 18, ("train", 10 ** 18 - 1)),
    ("train-" + "9" * 19, None), ("test-١٢", None), ("mine-000001", None), ("test-", None)])
def test_split_scene_reads_split_ids_only(scene_id, expected):
    from hmrcritic.agent.groups import split_scene

    assert split_scene(scene_id) == expected


def test_group_indices_start_inside_the_split_and_stop_at_its_end():
    from hmrcritic.agent.groups import _indices

    assert _indices(list(range(5)), 10, 3) == [3, 4]
    with pytest.raises(InputError, match="split has 5 samples; cannot start at 5"):
        _indices(list(range(5)), 1, 5)


@pytest.mark.parametrize("kw,name", [({"start": -1}, "start"), ({"num_generations": 0}, "num_generations"),
                                     ({"seed": -1}, "seed"), ({"num_groups": -1}, "num_groups")])
def test_group_arguments_below_their_floor_are_refused(kw, name):
    from hmrcritic.agent.groups import _check_args

    args = {"num_groups": 1, "num_generations": 2, "seed": 0, "start": 0, **kw}
    with pytest.raises(InputError, match=name):
        _check_args(**args)


def test_reads_images_by_name_or_judge_and_with_rendering():
    from hmrcritic.agent.groups import reads_images
    from hmrcritic.agent.judges import BuiltinJudge

    assert not reads_images(" Builtin ") and reads_images("vlm") and reads_images("builtin", render=True)
    assert not reads_images(BuiltinJudge()) and reads_images(BuiltinJudge(), render=True)


def test_an_unknown_group_source_is_refused():
    from hmrcritic.agent.groups import group_model

    assert group_model("perturbed") is None
    with pytest.raises(InputError, match="group source 'models': choose auto, model or perturbed"):
        group_model("models")
