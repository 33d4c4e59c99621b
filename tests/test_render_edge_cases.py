"""Rendering edge cases: the depth pass is double-sided like the colour pass (flipped winding, a camera
inside the mesh), empty groups and malformed image sizes give shapes or one-line InputErrors."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from hmrcritic.errors import InputError
from hmrcritic.hmr import render as R

K = np.array([[200.0, 0, 63.5], [0, 200.0, 63.5], [0, 0, 1]])


@pytest.fixture(scope="module")
def renderer():
    r = R.Renderer()
    yield r
    r.close()


def _sphere(centre, radius=0.3):
    s = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    return np.asarray(s.vertices + np.asarray(centre), np.float32), np.asarray(s.faces)


def test_depth_ignores_face_winding(renderer):
    v, f = _sphere([0.0, 0.0, 3.0])
    d = renderer.render_depth(v, f, K, (128, 128))
    flipped = renderer.render_depth(v, f[:, ::-1].copy(), K, (128, 128))
    _, colour_depth = renderer.render(v, f[:, ::-1].copy(), K, (128, 128))
    assert d[64, 64] == pytest.approx(2.7, abs=0.01)
    # the near side, not the far side (3.3 m) that back-face culling left of an inside-out mesh
    assert flipped[64, 64] == pytest.approx(2.7, abs=0.01)
    np.testing.assert_allclose(flipped, d, atol=1e-4)
    np.testing.assert_allclose(colour_depth, d, atol=1e-4)


def test_camera_inside_the_mesh_sees_its_inside(renderer):
    v, f = _sphere([0.0, 0.0, 0.1], radius=1.0)
    m = renderer.mask(v, f, K, (128, 128))
    assert m.all()  # every ray from inside a closed surface hits it
    d = renderer.render_depth(v, f, K, (128, 128))
    assert d[64, 64] == pytest.approx(1.1, abs=0.01)
    # an open mesh seen from behind is drawn too
    keep = (v[f][:, :, 2] > 0.5).all(1)
    assert renderer.mask(v, f[keep], K, (128, 128)).any()


def test_masks_of_an_empty_group(renderer):
    v, f = _sphere([0.0, 0.0, 3.0])
    out = renderer.masks(np.zeros((0, len(v), 3), np.float32), f, K, (40, 30))
    assert out.shape == (0, 30, 40) and out.dtype == bool


@pytest.mark.parametrize("size", [(float("nan"), 64), (64,), (64, 64, 3), "64x64", ()])
def test_malformed_image_size_is_one_clear_line(renderer, size):
    v, f = _sphere([0.0, 0.0, 3.0])
    with pytest.raises(InputError, match="image size"):
        renderer.mask(v, f, K, size)


@pytest.mark.parametrize("size", [0, -5, (0, 64)])
def test_side_view_of_an_empty_size_names_the_size(renderer, size):
    v, f = _sphere([0.0, 0.0, 3.0])
    with pytest.raises(InputError, match="image size"):
        renderer.side_view(v, f, size=size)
