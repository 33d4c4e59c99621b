"""Review s37 (mutation audit f): render.py and mannequin.py.

Each test pins a behaviour a user (or the VLM judge looking at the pictures) depends on, which a mutant of the code
changed while every existing test still passed. The expected values are worked out by hand from the docstrings
(pinhole camera, OpenCV pixel centres, (W,H) sizes), never copied from the code's own output."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from hmrcritic.errors import InputError
from hmrcritic.hmr import mannequin
from hmrcritic.hmr import render as R


@pytest.fixture(scope="module")
def renderer():
    r = R.Renderer()
    yield r
    r.close()


def _sphere(centre, radius=0.3, subdivisions=2):
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(s.vertices + np.asarray(centre), np.float32), np.asarray(s.faces)


def _box(extents, centre=(0.0, 0.0, 3.0)):
    b = trimesh.creation.box(extents=extents)
    return np.asarray(b.vertices + np.asarray(centre), np.float32), np.asarray(b.faces)


# ------------------------------------------------------------------------------------------------ camera, sizes
def test_default_image_size_is_twice_the_principal_point_as_w_by_h(renderer):
    """No image_size: (W,H) = (2cx, 2cy), and a mask is (H,W). With cx ≠ cy a W/H mix-up gives a transposed mask."""
    K = np.array([[100.0, 0, 40.0], [0, 100.0, 25.0], [0, 0, 1]])
    v, f = _sphere([0.0, 0.0, 3.0], radius=0.2)
    m = renderer.mask(v, f, K)
    assert m.shape == (50, 80)  # H = 2·25 rows, W = 2·40 columns
    ys, xs = np.nonzero(m)
    assert abs(xs.mean() - 40.0) <= 1.0 and abs(ys.mean() - 25.0) <= 1.0  # the on-axis sphere at (cx, cy)


@pytest.mark.parametrize("which", [(0, 0), (1, 1)])
def test_a_negative_focal_length_is_refused(renderer, which):
    """A negative fy (a y-flip folded into K) would draw the body upside down, silently; K must have fx, fy > 0."""
    K = np.array([[100.0, 0, 32.0], [0, 100.0, 32.0], [0, 0, 1]])
    K[which] = -100.0
    v, f = _sphere([0.0, 0.0, 3.0])
    with pytest.raises(InputError, match="positive focal lengths"):
        renderer.mask(v, f, K)


def test_overlay_on_an_unevenly_rounded_thumbnail_scales_each_axis_by_its_own_factor(renderer):
    """A 21×200 thumbnail of a 200×2000 frame (the width 20 rounded up to 21) is the same picture (one side within a
    pixel), and K is rescaled by 21/200 across but 200/2000 down: a point at row 1800 of the frame lies at row
    (1800 + 0.5)·0.1 − 0.5 = 179.55 of the thumbnail, column (99.5 + 0.5)·0.105 − 0.5 = 10.0."""
    W, H = 200, 2000
    K = np.array([[2000.0, 0, 99.5], [0, 2000.0, 999.5], [0, 0, 1]])
    y = (1800.0 - 999.5) * 10.0 / 2000.0  # the sphere's centre projects to row 1800, column 99.5 of the frame
    v, f = _sphere([0.0, y, 10.0], radius=0.3, subdivisions=3)
    out = renderer.overlay(np.zeros((200, 21, 3), np.uint8), v, f, K, color=(1, 1, 1), alpha=1.0, image_size=(W, H))
    assert out.shape == (200, 21, 3)
    ys, xs = np.nonzero(out.any(-1))
    assert abs(ys.mean() - 179.55) <= 0.6 and abs(xs.mean() - 10.0) <= 0.6
    # the disc's radius, 2000·0.3/10 = 60 frame px, is 6 rows and 6.3 columns there
    assert 10 <= np.ptp(ys) + 1 <= 14


def test_closing_one_renderer_keeps_the_gl_context_another_one_uses():
    """close(): "the GL context ... is freed when no renderer is left using it" — closing one of two renderers in use
    keeps the one process-wide context (a new one costs ~100 ms of GL start-up and shader compilation)."""
    K = np.array([[100.0, 0, 32.0], [0, 100.0, 32.0], [0, 0, 1]])
    v, f = _sphere([0.0, 0.0, 3.0])
    a, b = R.Renderer(), R.Renderer()
    try:
        assert a.mask(v, f, K).any() and b.mask(v, f, K).any()
        context = R._GL_STATE["offscreen"]
        assert context is not None
        a.close()
        assert R._GL_STATE["offscreen"] is context
        assert b.mask(v, f, K).any() and R._GL_STATE["offscreen"] is context
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------------------------------------------ images
def test_an_rgba_image_keeps_its_rgb_off_the_mesh(renderer):
    K = np.array([[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]])
    v, f = _sphere([0.0, 0.0, 3.0], radius=0.2)
    img = np.empty((64, 64, 4), np.uint8)
    img[:] = (10, 20, 30, 255)
    out = renderer.overlay(img, v, f, K)
    assert out.shape == (64, 64, 3) and tuple(out[0, 0]) == (10, 20, 30)


def test_a_16bit_image_is_scaled_by_65535_to_255(renderer):
    """As read_image scales a 16-bit file: v·255/65535 = v/257; 51400 = 200·257 is 200 (not 201), 65535 is 255."""
    K = np.array([[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]])
    v, f = _sphere([0.0, 0.0, 3.0], radius=0.1)
    img = np.full((64, 64, 3), 51400, np.uint16)
    img[:, :4] = 65535
    out = renderer.overlay(img, v, f, K)
    assert tuple(out[0, 20]) == (200, 200, 200) and tuple(out[0, 0]) == (255, 255, 255)


def test_a_float_image_whose_brightest_pixel_is_exactly_one_is_in_0_1(renderer):
    """A float image in [0,1] with a white pixel (max == 1.0) is a [0,1] image: 0.2 is 51, 1.0 is 255."""
    K = np.array([[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]])
    v, f = _sphere([0.0, 0.0, 3.0], radius=0.1)
    img = np.full((64, 64, 3), 0.2, np.float32)
    img[0, 0] = 1.0
    out = renderer.overlay(img, v, f, K)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 20]) == (51, 51, 51)


# ---------------------------------------------------------------------------------------------------- grids
@pytest.mark.parametrize("n, cols", [(4, 2), (5, 4)])
def test_grid_cells_are_in_reading_order_cols_per_row(renderer, n, cols):
    """Hypothesis i sits in row i // cols, column i % cols (reading order, ``cols`` cells per row), as its label says.
    The hypotheses stand further right with i, so the mesh centroid of cell i (by that layout) grows with i."""
    K = np.array([[150.0, 0, 63.5], [0, 150.0, 47.5], [0, 0, 1]])
    f = _sphere([0, 0, 0], 0.15)[1]
    xs = np.linspace(-0.4, 0.4, n)
    vs = np.stack([_sphere([x, 0.0, 3.0], 0.15)[0] for x in xs])
    g = renderer.group_grid(None, vs, f, K, cols=cols, tile=64, pad=4, labels=False, image_size=(128, 96))
    rows = -(-n // cols)
    assert g.shape == (rows * 48 + (rows + 1) * 4, cols * 64 + (cols + 1) * 4, 3)
    centres = []
    for i in range(n):
        y0, x0 = 4 + (i // cols) * 52, 4 + (i % cols) * 68
        cell = g[y0:y0 + 48, x0:x0 + 64]
        drawn = np.argwhere((cell != 255).any(-1))
        assert len(drawn) > 20, i  # every hypothesis has its own cell
        centres.append(drawn[:, 1].mean())
    # the sphere's column in a 64 px tile of the 128 px frame: (150·x/3 + 63.5 + 0.5)/2 − 0.5
    np.testing.assert_allclose(centres, (150 * xs / 3 + 64) / 2 - 0.5, atol=1.0)


def test_an_empty_tile_is_behind_the_camera_only_when_the_whole_body_is():
    """A body out of view to the side that reaches from 1 m behind the camera to 1 m in front of it is "not in view";
    only a body wholly behind the camera (z ≤ 0) is "behind camera"."""
    v, f = _box((0.4, 0.4, 2.0), centre=(10.0, 0.0, 0.0))  # z in [-1, 1], 10 m to the right
    assert R._empty_reason(v, f) == "not in view"
    assert R._empty_reason(v - [0.0, 0.0, 1.5], f) == "behind camera"  # z in [-2.5, -0.5]


# ---------------------------------------------------------------------------------------------- side views
def test_group_extent_is_the_largest_side_view_extent_of_the_group():
    """Seen from 90° the view's horizontal is the body's depth (z) and its vertical its height (y): a box 0.1×0.2×1.0
    (x,y,z) spans 1.0 m, one 0.1×0.5×0.3 spans 0.5 m; the group's extent is 1.0. Seen from the front (0°): 0.2, 0.5."""
    a = _box((0.1, 0.2, 1.0))[0]
    b = _box((0.1, 0.5, 0.3), centre=(0.4, -0.2, 5.0))[0]
    vs = np.stack([a, b])
    assert R.group_extent(vs, 90.0) == pytest.approx(1.0, abs=1e-5)
    assert R.group_extent(vs, 0.0) == pytest.approx(0.5, abs=1e-5)
    assert R.group_extent(vs[:1], 0.0) == pytest.approx(0.2, abs=1e-5)


def test_a_non_square_side_view_frames_the_whole_body_in_its_centre(renderer):
    """size=(W,H)=(200,100): the output is (100,200,3), the body fits the shorter side and sits in the middle."""
    v, f = _sphere([0.2, 0.1, 3.0], radius=0.3)
    side = renderer.side_view(v, f, size=(200, 100), bg_color=(1.0, 1.0, 1.0))
    assert side.shape == (100, 200, 3)
    ys, xs = np.nonzero((side != 255).any(-1))
    assert ys.min() > 0 and ys.max() < 99 and xs.min() > 0 and xs.max() < 199  # nothing clipped at the border
    assert abs(xs.mean() - 99.5) <= 1.0 and abs(ys.mean() - 49.5) <= 1.0
    assert np.ptp(ys) + 1 > 0.75 * 100  # and framed to fill the shorter side


# ---------------------------------------------------------------------------------------------- mannequin
def test_the_mannequin_generator_version_follows_its_source(tmp_path, monkeypatch):
    """The cache is regenerated when the generator changes: its version carries a hash of mannequin.py, so a copy
    of the source with one byte more gives another version (and a cached file from the old one is stale)."""
    from pathlib import Path

    src = Path(mannequin.__file__).read_bytes()
    version = mannequin.generator_version()
    assert version == mannequin.generator_version()  # a pure function of the source
    edited = tmp_path / "mannequin.py"
    edited.write_bytes(src + b"\n")
    monkeypatch.setattr(mannequin, "__file__", str(edited))
    assert mannequin.generator_version() != version
    assert mannequin.generator_version().startswith(f"{mannequin.GENERATOR_VERSION}-")


@pytest.fixture(scope="module")
def body():
    from hmrcritic.hmr.body import load_body_model

    return load_body_model()


def _shaped(body, beta_index: int | None = None, value: float = 1.0, body_pose=None):
    """Vertices (V,3) and joints (24,3) of the mannequin with one beta set (rest pose unless ``body_pose``)."""
    import torch

    betas = torch.zeros(1, 10)
    if beta_index is not None:
        betas[0, beta_index] = value
    bp = torch.zeros(1, 69) if body_pose is None else torch.as_tensor(body_pose, dtype=torch.float32)[None]
    with torch.no_grad():
        out = body(torch.zeros(1, 3), bp, betas)
    return out.vertices[0].double().numpy(), out.joints[0].double().numpy(), out.extra[0].double().numpy()


@pytest.mark.parametrize("beta", range(10))
def test_every_shape_direction_keeps_the_skeleton_left_right_symmetric(body, beta):
    """No shape direction is one-sided ("arm and leg bones 3 % longer" means both arms and both legs): the joints of
    each right/left pair mirror each other in x (the body's left on +x, SMPL's T-pose)."""
    from hmrcritic.hmr.body import SMPL_JOINT_NAMES as names

    _, J, _ = _shaped(body, beta, 2.0)
    pairs = [(names.index(n), names.index("right_" + n[5:])) for n in names if n.startswith("left_")]
    assert len(pairs) == 9
    for left, right in pairs:
        np.testing.assert_allclose(J[right], J[left] * [-1.0, 1.0, 1.0], atol=1e-5, err_msg=names[left])


def test_ears_are_on_their_own_side_of_the_head(body):
    """lear on the body's left (+x), rear on its right (−x), both beside the head, behind the nose."""
    _, J, extra = _shaped(body)
    nose, reye, leye, rear, lear = extra
    head = J[15]
    assert lear[0] > head[0] + 0.05 and rear[0] < head[0] - 0.05
    assert lear[2] < nose[2] and rear[2] < nose[2]
    assert abs(lear[0] + rear[0]) < 1e-3  # mirrored


def test_head_size_moves_the_head_joint_with_the_head(body):
    """head_size +1 SD makes the head 5 % larger about its base: the neck → head offset grows by 5 %, the neck stays."""
    _, J0, _ = _shaped(body)
    _, J1, _ = _shaped(body, 8, 1.0)
    np.testing.assert_allclose(J1[12], J0[12], atol=1e-6)
    np.testing.assert_allclose(J1[15] - J1[12], 1.05 * (J0[15] - J0[12]), atol=1e-5)


def _radial(v, a, b):
    """Distance of points v from the line through a and b."""
    u = (b - a) / np.linalg.norm(b - a)
    d = v - a
    return np.linalg.norm(d - (d @ u)[:, None] * u[None], axis=1)


def test_girth_widens_the_limbs_by_5_6_percent_and_shoulder_width_does_not(body):
    """SHAPE_DIRECTIONS: girth +1 SD is "limb radii +5.6 %" (0.7 of the torso's 8 %); the thigh's bones do not move,
    so every thigh vertex's distance from the hip-knee line grows by 5.6 %. Shoulder width leaves the thigh alone."""
    part = np.asarray(body.part_of_vertex)
    thigh = part == 1  # the left thigh (part of the left hip joint)
    v0, J0, _ = _shaped(body)
    for beta, ratio in ((2, 1.056), (3, 1.0)):
        v1, J1, _ = _shaped(body, beta, 1.0)
        np.testing.assert_allclose(J1[[1, 4]], J0[[1, 4]], atol=1e-6)
        r0 = _radial(v0[thigh], J0[1], J0[4])
        r1 = _radial(v1[thigh], J1[1], J1[4])
        np.testing.assert_allclose(r1, ratio * r0, rtol=2e-3, atol=1e-5)


def test_bending_the_knee_leaves_the_thigh_above_the_joints_overlap_where_it_was(body):
    """The weights blend only where the thigh and shin surfaces overlap around the knee (their caps reach ~5 cm past
    it): bending the left knee 90° leaves every thigh vertex more than 8 cm above the knee in place."""
    part = np.asarray(body.part_of_vertex)
    v0, J0, _ = _shaped(body)
    bp = np.zeros(69)
    bp[3 * (4 - 1)] = np.pi / 2  # joint 4, the left knee, about x
    v1, _, _ = _shaped(body, body_pose=bp)
    thigh = part == 1
    above = thigh & (v0[:, 1] > J0[4, 1] + 0.08)
    assert above.sum() > 50
    assert np.abs(v1[above] - v0[above]).max() < 1e-3
    below = part == 4  # the shin does follow the knee
    assert np.abs(v1[below] - v0[below]).max() > 0.1
