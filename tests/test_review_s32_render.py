"""Review s32 (render): the pictures a user and a VLM see are drawn where the camera puts the body.

``overlay`` / ``group_grid`` / ``group_grids`` take an image and ``image_size`` (W,H), the frame ``K`` and the
keypoints are in. An image of another resolution than that frame (a half-size copy of the photo the keypoints were
detected on) was drawn with ``K`` as it was: the mesh landed where K puts it in the frame's pixels, not the image's
(twice too large and off-centre on a half-size copy), and the grids' tiles were framed on the image, not the frame.
An image of another shape (a transposed or cropped one) cannot be matched to K at all and is refused."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from hmrcritic.errors import InputError
from hmrcritic.hmr import render as R

W, H = 320, 240
K = np.array([[300.0, 0, 170.0], [0, 280.0, 110.0], [0, 0, 1]])  # off-centre, unequal focal lengths


@pytest.fixture(scope="module")
def renderer():
    r = R.Renderer()
    yield r
    r.close()


def _sphere(centre, radius=0.3):
    s = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    return np.asarray(s.vertices + np.asarray(centre), np.float32), np.asarray(s.faces)


def _extent(m: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(m)
    return np.array([xs.min(), xs.max(), ys.min(), ys.max()], np.float64)


def _projected_extent(v, K) -> np.ndarray:
    uv = (K @ (v / v[:, 2:3]).T).T[:, :2]
    return np.array([uv[:, 0].min(), uv[:, 0].max(), uv[:, 1].min(), uv[:, 1].max()])


def test_overlay_on_a_resized_image_puts_the_mesh_where_K_puts_it(renderer):
    v, f = _sphere([0.4, -0.2, 3.0])
    full = renderer.overlay(np.zeros((H, W, 3), np.uint8), v, f, K, alpha=1.0, color=(1, 1, 1))
    half = renderer.overlay(np.zeros((H // 2, W // 2, 3), np.uint8), v, f, K, alpha=1.0, color=(1, 1, 1),
                            image_size=(W, H))
    assert half.shape == (H // 2, W // 2, 3)  # the image's own size: its pixels off the mesh stay as they were
    proj = _projected_extent(v, K)
    np.testing.assert_allclose(_extent(full.any(-1)), proj, atol=1.5)
    # the same place on the half-size picture (pixel centres: (u + 0.5) / 2 - 0.5)
    np.testing.assert_allclose(_extent(half.any(-1)), (proj + 0.5) / 2 - 0.5, atol=1.5)


def test_overlay_with_image_size_equal_to_the_image_is_unchanged(renderer):
    v, f = _sphere([0.1, 0.1, 2.5])
    img = np.full((H, W, 3), 40, np.uint8)
    a = renderer.overlay(img, v, f, K)
    b = renderer.overlay(img, v, f, K, image_size=(W, H))
    np.testing.assert_array_equal(a, b)


def test_group_grid_on_a_resized_image_frames_the_tiles_on_K(renderer):
    vs = np.stack([_sphere([x, 0.0, 3.0])[0] for x in (-0.5, 0.3)])
    f = _sphere([0, 0, 3])[1]
    kw = dict(cols=2, tile=96, labels=False, alpha=1.0, color=(1, 1, 1), image_size=(W, H))
    full = renderer.group_grid(np.zeros((H, W, 3), np.uint8), vs, f, K, **kw)
    half = renderer.group_grid(np.zeros((H // 2, W // 2, 3), np.uint8), vs, f, K, **kw)
    assert full.shape == half.shape
    mesh_full = (full == 255).all(-1)
    mesh_half = (half == 255).all(-1)
    assert mesh_full.sum() > 200
    assert (mesh_full != mesh_half).sum() <= 0.02 * mesh_full.sum()  # same tiles, same bodies, same places
    full2, side2 = renderer.group_grids(np.zeros((H // 2, W // 2, 3), np.uint8), vs, f, K, cols=2, tile=96,
                                        labels=False, alpha=1.0, color=(1, 1, 1), image_size=(W, H))
    np.testing.assert_array_equal(full2, half)


@pytest.mark.parametrize("shape", [(W, H), (H // 2, W // 3)])  # transposed; cropped to another aspect
def test_an_image_of_another_shape_than_the_frame_is_refused(renderer, shape):
    v, f = _sphere([0.0, 0.0, 3.0])
    img = np.zeros((*shape, 3), np.uint8)  # numpy (rows, cols): the frame's W rows, H columns
    with pytest.raises(InputError, match="image_size"):
        renderer.overlay(img, v, f, K, image_size=(W, H))
    with pytest.raises(InputError, match="image_size"):
        renderer.group_grid(img, v[None], f, K, image_size=(W, H))


def test_a_resized_image_with_rounded_sides_is_accepted(renderer):
    # 1/3 of 320×240 is 106.7×80: a resampler rounds one side; still the same picture
    v, f = _sphere([0.0, 0.0, 3.0])
    out = renderer.overlay(np.zeros((80, 107, 3), np.uint8), v, f, K, alpha=1.0, image_size=(W, H))
    assert out.shape == (80, 107, 3) and out.any()


def test_side_view_looks_from_the_persons_left_front_to_the_left():
    # a person facing the camera (OpenCV frame: x right, y down, z forward) has their left side at +x: the 90° side
    # camera is there, so +x is the nearest, and their front (towards the camera, small z) is on the view's left
    v = np.array([[0.5, 0, 3], [-0.5, 0, 3], [0, 0, 2.8], [0, 0, 3.2], [0, -0.9, 3], [0, 0.9, 3]], np.float32)
    v_side, Ks = R._side_camera(v, 200, 200, 90.0, None, None)
    assert np.argmin(v_side[:, 2]) == 0  # the person's left side is nearest
    u = Ks[0, 0] * v_side[:, 0] / v_side[:, 2] + Ks[0, 2]
    row = Ks[1, 1] * v_side[:, 1] / v_side[:, 2] + Ks[1, 2]
    assert u[2] < u[3]  # front left, back right: a proper rotation, not a mirror image
    assert row[4] < row[5]  # head (y up = -y) at the top, feet at the bottom
