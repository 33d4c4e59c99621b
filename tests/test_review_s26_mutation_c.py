"""Review s26 (mutation C): tests that kill mutants of the HMR model's maths (``hmr/diffusion.py``), the camera, the
rotations, the scene generator and the export writer that every earlier test let live.

Each test checks a property worked out here (a closed form, a least-squares optimality condition, a documented
range or rule), never the code's own output pinned.
"""

from __future__ import annotations

import pytest
import torch

from hmrcritic.hmr import diffusion as Dm

# ------------------------------------------------------------------------------------------- solve_translation


def test_tx_ty_refitted_at_the_depth_floor_minimise_the_weighted_residual_at_that_depth():
    """Where the depth is raised to its floor, tx and ty are "re-fitted for that depth": for a fixed tz the
    algebraic residuals ``fx(X+tx) + (cx-u)(Z+tz)`` (and the y one) are linear in tx (ty) with the constant
    coefficient fx (fy), so the confidence-weighted least-squares optimum makes their weighted sums zero. A sign
    flipped in the re-fit moved the body off its keypoints while still in front of the camera."""
    g = torch.Generator().manual_seed(5)
    joints = (torch.rand(17, 3, generator=g) - 0.5)[None].double()
    K = torch.tensor([[[600.0, 0, 300], [0, 550.0, 260], [0, 0, 1]]], dtype=torch.float64)
    cam = joints[0] + torch.tensor([0.2, -0.1, 2.5], dtype=torch.float64)
    uv = cam[:, :2] / cam[:, 2:3] * torch.tensor([600.0, 550.0]) + torch.tensor([300.0, 260.0])
    uv = uv + torch.randn(17, 2, generator=g).double() * 15  # noisy: no exact fit at any depth
    w = torch.rand(17, generator=g).double() * 0.9 + 0.1
    w[3] = 0.0  # a missing keypoint carries no weight
    kp = torch.cat([uv, w[:, None]], -1)[None]
    t = Dm.solve_translation(joints, kp, K, min_depth=6.0)[0]  # the floor (6 m) is behind the 2.5 m fit
    assert float(t[2]) == 6.0
    X, Y, Z = (joints[0] + t).unbind(-1)
    rx = 600.0 * X + (300.0 - uv[:, 0]) * Z
    ry = 550.0 * Y + (260.0 - uv[:, 1]) * Z
    scale = float((w * (rx.abs() + ry.abs())).sum())
    assert abs(float((w * rx).sum())) < 1e-9 * scale
    assert abs(float((w * ry).sum())) < 1e-9 * scale


# ------------------------------------------------------------------------------------------ the model condition


def test_a_keypoint_inside_a_landscape_image_but_past_its_height_is_visible():
    """condition_from_keypoints: "keypoints outside the image are treated as missing", the image being W wide and
    H high. In a 640×360 image a point at u = 500 is inside, one at v = 400 is not (u and v compared with W and
    H, not the other way round)."""
    kp = torch.zeros(1, 17, 3)
    kp[0, :, 0] = torch.linspace(100, 300, 17)
    kp[0, :, 1] = torch.linspace(80, 300, 17)
    kp[0, :, 2] = 1.0
    kp[0, 0, :2] = torch.tensor([500.0, 200.0])  # inside: u < W = 640 (though > H = 360)
    kp[0, 1, :2] = torch.tensor([200.0, 400.0])  # outside: v > H = 360 (though < W)
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 180], [0, 0, 1]])
    cond = Dm.condition_from_keypoints(kp, K, (640, 360))
    assert float(cond.keypoints_px[0, 0, 2]) == 1.0
    assert float(cond.keypoints_px[0, 1, 2]) == 0.0


# -------------------------------------------------------------------------------------------- normalisation


def test_a_dimension_that_never_moves_in_the_training_data_gets_the_std_floor():
    """DiffusionConfig.std_floor: "floor for the per-dimension std of x0 (joints that barely move in the data)".
    Without it a constant dimension had std 0 and the standardised space (and every sample) was inf/NaN."""
    model = Dm.HMRDiffusion(Dm.DiffusionConfig(d_model=16, layers=1, heads=2, std_floor=0.05))
    x0 = torch.randn(64, Dm.X_DIM, generator=torch.Generator().manual_seed(0))
    x0[:, 7] = 0.25  # never moves
    model.set_normalization(x0)
    assert float(model.x_std[7]) == pytest.approx(0.05)
    assert torch.isfinite(model.normalize(x0)).all()
    assert torch.allclose(model.x_std[8], x0[:, 8].std())  # a dimension that moves keeps its own spread


# ------------------------------------------------------------------------------------------------------ camera


def test_an_orbit_camera_at_positive_elevation_is_above_and_at_azimuth_zero_in_front():
    """camera.orbit_position: "azimuth 0 = in front of a body facing +z, positive elevation = above" in the y-up
    world, at ``distance`` from the target. A flipped elevation put every "from above" camera below the body."""
    from hmrcritic.hmr import camera

    target = torch.tensor([[0.1, 0.9, -0.2]])
    el = 0.6
    pos = camera.orbit_position(target, torch.tensor([3.0]), torch.tensor([0.0]), torch.tensor([el]))[0]
    off = pos - target[0]
    assert float(off.norm()) == pytest.approx(3.0, abs=1e-6)
    assert float(off[1]) == pytest.approx(3.0 * torch.sin(torch.tensor(el)).item(), abs=1e-6)  # above
    assert float(off[2]) > 0 and float(off[0]) == pytest.approx(0.0, abs=1e-6)  # in front (+z), not to a side
    # and the camera there, looking at the target, sees the target's up direction pointing up in the image
    rot = camera.look_at_rotation(pos[None], target)[0]
    up_in_image = rot @ torch.tensor([0.0, 1.0, 0.0])
    assert float(up_in_image[1]) < 0  # OpenCV: image y points down


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_camera_straight_above_or_below_takes_the_limit_of_the_azimuth_zero_orbit(sign):
    """camera.look_at_rotation: a camera exactly above (below) its target has its image x axis along world +x, "the
    limit of an orbit at azimuth 0 as the elevation approaches ±90°" — so the rotation there equals the one just
    short of vertical. With the limit taken the wrong way the image came out mirrored/rotated 180° there alone."""
    from hmrcritic.hmr import camera

    target = torch.zeros(1, 3, dtype=torch.float64)
    straight = camera.look_at_rotation(torch.tensor([[0.0, sign * 2.0, 0.0]], dtype=torch.float64), target)[0]
    near = camera.orbit_position(target, torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.0]),
                                 torch.tensor([sign * (torch.pi / 2 - 1e-6)]))
    limit = camera.look_at_rotation(near, target)[0]
    assert torch.allclose(straight, limit, atol=1e-5)
    assert torch.allclose(straight[0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(straight @ straight.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert float(torch.linalg.det(straight)) == pytest.approx(1.0)


def test_the_wild_presets_camera_roll_is_a_gaussian_cut_at_45_degrees():
    """camera.sample_cameras draws the roll from N(0, roll_deg) ("roll_deg is a standard deviation") and holds it
    within ±45°. With the wild preset's 15° about 0.3 % of the draws lie past 45°: without the cut the wild split
    (and every figure measured on it) changed, holding scenes rolled 50–70°."""
    import numpy as np

    from hmrcritic.hmr import camera
    from hmrcritic.hmr.data import PRESETS

    roll = np.rad2deg(camera.sample_cameras(20000, np.random.default_rng(0), PRESETS["wild"])["roll"])
    assert np.abs(roll).max() <= 45.0 + 1e-9
    assert (np.abs(roll) == 45.0).sum() > 10  # the tail is held at the cut, not redrawn
    assert np.std(roll) == pytest.approx(15.0, rel=0.05)


# ------------------------------------------------------------------------------------- scene corruption (data)

_QUIET = dict(noise_frac=0.0, outlier_p=0.0, box_p=0.0, boxes_max=0, limb_p=0.0, self_occ_p=0.0, face_occ=False)


def _layout(n: int = 1, W: int = 256, H: int = 256):
    """COCO-17 camera-frame points of an upright person 3 m away, facing the camera, and their pixels (f = 256)."""
    import numpy as np

    pts = np.zeros((17, 3))
    pts[:, 2] = 3.0
    pts[5], pts[6], pts[11], pts[12] = [-0.18, -0.25, 3], [0.18, -0.25, 3], [-0.1, 0.3, 3], [0.1, 0.3, 3]
    pts[[7, 9, 13, 15]] = [[-0.5, -0.1, 3], [-0.6, 0.1, 3], [-0.5, 0.6, 3], [-0.5, 0.8, 3]]
    pts[[8, 10, 14, 16]] = pts[[7, 9, 13, 15]] * [-1, 1, 1]
    pts[0:5] = [[0, -0.5, 2.9], [-0.03, -0.53, 2.92], [0.03, -0.53, 2.92], [-0.07, -0.5, 3.0], [0.07, -0.5, 3.0]]
    pts = np.repeat(pts[None], n, 0)
    uv = pts[..., :2] / pts[..., 2:] * 256.0 + np.array([W / 2, H / 2])
    box = np.linalg.norm(uv.max(1) - uv.min(1), axis=-1)
    return uv, pts, box


def _corrupt(uv, pts, box, W=256, H=256, seed=0, **cfg):
    import numpy as np

    from hmrcritic.hmr.data import _FACE_COCO, _LIMBS_COCO, _corrupt

    return _corrupt(uv, pts, box, {**_QUIET, **cfg}, W, H, np.random.default_rng(seed), _LIMBS_COCO, _FACE_COCO)


def test_a_limb_occluder_hides_a_tail_of_its_chain_down_to_the_end():
    """data._corrupt: "a limb hidden from a random joint to its end" — of the chain chosen, the hidden joints are
    a non-empty run ending at the chain's last joint (a wrist hidden with the elbow, never an elbow alone with the
    wrist in view)."""
    from hmrcritic.hmr.data import _LIMBS_COCO

    uv, pts, box = _layout(400)
    out = _corrupt(uv, pts, box, limb_p=1.0)
    hidden = out[..., 2] == 0
    for s in range(len(out)):
        chains = [c for c in _LIMBS_COCO if hidden[s, c].any()]
        assert len(chains) == 1, s
        flags = hidden[s, chains[0]].tolist()
        first = flags.index(True)
        assert all(flags[first:]) and not any(flags[:first]), (chains[0], flags)
    # every start joint is drawn: some arms lose only the wrist, some the whole arm
    arm = hidden[:, [5, 7, 9]]
    assert {tuple(r) for r in arm.tolist() if any(r)} == {(False, False, True), (False, True, True), (True, True, True)}


def test_a_joint_behind_the_torso_is_hidden_and_one_in_front_of_it_is_not():
    """data._corrupt's self-occlusion: "the ray camera→joint passes through the torso in front of the joint"."""
    uv, pts, box = _layout()
    pts[0, 9] = [0.0, 0.0, 3.4]  # left wrist behind the belly
    pts[0, 10] = [0.0, 0.0, 2.6]  # right wrist in front of it, on the same ray
    out = _corrupt(uv, pts, box, self_occ_p=1.0)
    hidden = out[0, :, 2] == 0
    assert hidden[9] and not hidden[10]
    assert hidden.sum() == 1


def test_a_face_turned_away_hides_the_points_further_than_the_ears():
    """data._corrupt: "the face looking away: a face point clearly further from the camera than the ears'
    midpoint" is hidden; the points nearer than the ears stay visible."""
    uv, pts, box = _layout()
    pts[0, 0, 2] = 3.1  # the nose 10 cm behind the ears: the person looks away
    out = _corrupt(uv, pts, box, face_occ=True)
    hidden = out[0, :, 2] == 0
    assert hidden[0] and not hidden[1:].any()


def test_when_occluders_hide_nearly_everything_they_are_dropped_for_that_sample():
    """data._corrupt: "if occluders hid nearly everything, drop them for that sample" (fewer than max(4, J/3)
    left visible): 13 of 17 points behind the torso would leave 4, so none is hidden."""
    uv, pts, box = _layout()
    rest = [j for j in range(17) if j not in (5, 6, 11, 12)]
    pts[0, rest] = [0.0, 0.0, 3.4]
    out = _corrupt(uv, pts, box, self_occ_p=1.0)
    assert (out[0, :, 2] > 0).all()


def test_truncation_compares_u_with_the_width_and_v_with_the_height():
    """data._corrupt: a point outside the W×H image is truncated (hidden); in a 400×200 image a point at u = 300 is
    inside, one at v = 240 is not."""
    uv, pts, box = _layout(W=400, H=200)
    uv[0, 9] = [300.0, 100.0]
    uv[0, 10] = [150.0, 240.0]
    out = _corrupt(uv, pts, box, W=400, H=200)
    hidden = out[0, :, 2] == 0
    assert not hidden[9] and hidden[10]
    assert hidden.sum() == 1


def test_keypoint_confidences_stay_within_their_range_and_fall_with_the_error():
    """Sample.keypoints carry confidences in (0, 1] for the visible points (0 = not visible), lower where the
    simulated detector erred more (``conf = 0.51 + 0.49·exp(−r²/2)``, r the error in units of its noise)."""
    import numpy as np

    uv, pts, box = _layout(300)
    out = _corrupt(uv, pts, box, noise_frac=0.02, outlier_p=0.1)
    conf = out[..., 2]
    assert conf.min() >= 0.51 and conf.max() <= 1.0
    err = np.linalg.norm(out[..., :2] - uv, axis=-1)
    assert np.corrcoef(err.ravel(), conf.ravel())[0, 1] < -0.5


# --------------------------------------------------------------------------------------------------- rotations


@pytest.mark.parametrize("y", [torch.pi / 2, -torch.pi / 2])
@pytest.mark.parametrize("x", [0.7, -1.9, 2.8])
def test_euler_angles_at_gimbal_lock_rebuild_the_rotation(x, y):
    """rotations.matrix_to_euler_xyz: at gimbal lock (y = ±90°) "the angles always rebuild m" — whatever x the
    noisy atan2 gives, z is re-solved from it, so euler_to_matrix(angles) is the rotation given."""
    from hmrcritic.hmr.rotations import euler_to_matrix, matrix_to_euler_xyz

    m = euler_to_matrix(torch.tensor([x, y, 0.4], dtype=torch.float64))
    back = euler_to_matrix(matrix_to_euler_xyz(m))
    assert torch.allclose(back, m, atol=1e-6)


# ------------------------------------------------------------------------------------ the preference dataset


def _group(root, gid: str, overall: list[float], x_dim: int = Dm.X_DIM, seed: int = 0):
    """One group written as the export writes it (arrays, then its checksummed manifest line); its record."""
    import numpy as np

    from hmrcritic.agent.schema import HypothesisScore
    from hmrcritic.alignment import dataset as D
    from hmrcritic.io import append_jsonl

    n = len(overall)
    rng = np.random.default_rng(seed)
    hyps = {"x0": rng.normal(size=(n, Dm.X_DIM)).astype(np.float32), "global_orient": np.zeros((n, 3), np.float32),
            "body_pose": np.zeros((n, 69), np.float32), "betas": np.zeros((n, 10), np.float32),
            "transl": np.zeros((n, 3), np.float32)}
    cond = D.condition_arrays(np.ones((17, 3)), np.diag([500.0, 500.0, 1.0]), (512, 512))
    cref, href = D.write_group_arrays(root, gid, cond, hyps)
    scores = [HypothesisScore(index=i, motion_structure=s, physical_feasibility=s, image_alignment=s, overall=s,
                              rationale="r") for i, s in enumerate(overall)]
    rec = D.build_record(group_id=gid, input_id=gid, source="test", condition=cref, hypotheses=href, num_hypotheses=n,
                         x_dim=x_dim, scores=scores, judge="builtin", memory_version="m0", model_hash="x", seed=0,
                         group_seed=seed)
    append_jsonl(root / D.MANIFEST, {k: v for k, v in rec.to_line_dict().items() if k != "checksum"})
    return rec


def test_a_resumed_export_redoes_a_group_whose_hypotheses_file_no_longer_matches_its_record(tmp_path):
    """dataset.repair_manifest (run when an export resumes) keeps a record only if "both array files exist, have
    the checksums the record names" and the width it names: a group whose hypotheses were overwritten by another
    run's, or whose record names another x_dim, is dropped (so it is sampled again), the others kept."""
    import numpy as np

    from hmrcritic.alignment import dataset as D

    _group(tmp_path, "keep", [1.0, 5.0, 9.0])
    _group(tmp_path, "swapped", [2.0, 4.0, 8.0], seed=1)
    _group(tmp_path, "wide", [3.0, 6.0, 7.0], x_dim=Dm.X_DIM + 6, seed=2)
    stale = tmp_path / D.MANIFEST
    lines = stale.read_text().splitlines()
    other = D.load_npz(tmp_path / D.read_manifest(tmp_path)[1].hypotheses.path)
    other["x0"] = np.asarray(other["x0"]) + 1.0  # same keys and shapes, other numbers
    D.write_group_arrays(tmp_path, "swapped", D.load_npz(tmp_path / D.read_manifest(tmp_path)[1].condition.path),
                         other)
    kept, dropped = D.repair_manifest(tmp_path)
    assert [r.group_id for r in kept] == ["keep"] and dropped == 2
    assert stale.read_text().splitlines() == lines[:1]


def test_each_side_of_a_pair_carries_its_own_hypothesis_advantage(tmp_path):
    """dataset.pair_records: ``chosen``/``rejected`` reference a hypothesis "with its scores" — its advantage is that
    hypothesis's own (the best one's above the group mean, the worst one's below), as the record stores it."""
    from hmrcritic.alignment import dataset as D

    rec = _group(tmp_path, "g", [4.0, 9.0, 1.0, 6.0])
    (pair,) = D.pair_records([rec])
    assert (pair["chosen"]["index"], pair["rejected"]["index"]) == (1, 2)
    assert pair["chosen"]["advantage"] == rec.advantages[1] > 0
    assert pair["rejected"]["advantage"] == rec.advantages[2] < 0
    assert pair["margin"] == pytest.approx(8.0)


# ------------------------------------------------------------------------------------------------------ export


def test_a_rerun_on_fewer_inputs_counts_only_their_groups_as_done_and_keeps_the_open_failure(tmp_path, monkeypatch):
    """export: "already done" (``done_before``, the bar, the callback) counts the groups *of these inputs*: a dataset
    exported earlier with a larger --limit holds groups beyond them, and counting those showed "4/2 groups". The
    header's ``failures_open`` is what failures.jsonl still lists (an input of the earlier run that failed), not
    how many failed on this run."""
    from test_export import SCORER, cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export, format_summary

    model = tiny_model(tmp_path / "tiny.pt")
    inputs = make_inputs(5)
    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", str(inputs[4].sample_id))
    first = export(cfg_for(tmp_path / "ds", model, score_group=SCORER), inputs=inputs)
    assert (first.new_groups, first.groups, first.failures) == (4, 4, 1)
    again = export(cfg_for(tmp_path / "ds", model, score_group=SCORER), inputs=inputs[:2])
    assert (again.inputs, again.done_before, again.new_groups, again.failures) == (2, 2, 0, 0)
    assert "groups: 2/2 " in format_summary(again)
    still_open = D.open_failures(tmp_path / "ds", [r.group_id for r in D.read_manifest(tmp_path / "ds")])
    assert len(still_open) == 1
    assert D.read_header(tmp_path / "ds").counts["failures_open"] == 1


def test_an_export_whose_last_groups_fail_on_the_endpoint_ends_finished_not_stopped(tmp_path, monkeypatch):
    """export stops on an unusable VLM endpoint "only while some group is still to come": when the failures in a row
    reach the limit at the last input, every input was tried, and the export ends as any export with failures
    does (finished, its pairs written), not with "re-run to continue"."""
    from openai_stub_server import StubOpenAIServer
    from test_export import cfg_for, make_inputs, tiny_model
    from test_review_s22_vlmdown import SCORER, vlm_env

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import UNUSABLE_IN_A_ROW, export

    model = tiny_model(tmp_path / "tiny.pt")
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        s = export(cfg_for(tmp_path / "ds", model, judge="vlm", score_group=SCORER),
                   inputs=make_inputs(UNUSABLE_IN_A_ROW))
    assert (s.groups, s.failures) == (0, UNUSABLE_IN_A_ROW)
    assert D.read_header(tmp_path / "ds").counts["finished"] is True
