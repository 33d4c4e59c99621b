"""Review s22 (report): what a user sees of a critique — report.html and the grids behind it.

A hypothesis whose mesh draws nothing (behind the camera, off the image, every vertex at one point) left a plain
tile in the grid, read as "this hypothesis is the photo"; a NaN body in a grid was "mesh: vertex 5 is not finite"
without saying which hypothesis; a K whose principal point is off the image, with no image size, was blamed on an
image size the caller never gave; a missing render in the report named only its file name, not where it was
looked for."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from hmrcritic.agent.api import ScoredGroup
from hmrcritic.agent.report import render_html
from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.errors import InputError
from hmrcritic.hmr import render as R

K = np.array([[200.0, 0, 63.5], [0, 200.0, 63.5], [0, 0, 1]])


@pytest.fixture(scope="module")
def renderer():
    r = R.Renderer()
    yield r
    r.close()


def _sphere(centre, radius=0.3):
    s = trimesh.creation.icosphere(subdivisions=2, radius=radius)
    return np.asarray(s.vertices + np.asarray(centre), np.float32), np.asarray(s.faces)


def _group():
    v, f = _sphere([0.0, 0.0, 0.0])
    front, behind, off_image = v + [0, 0, 3.0], v + [0, 0, -3.0], v + [10.0, 0, 3.0]
    point = np.zeros_like(v) + [0, 0, 3.0]
    return np.stack([front, behind, off_image, point]).astype(np.float32), f


def test_a_tile_whose_mesh_draws_nothing_says_why_and_a_visible_one_is_unchanged(renderer):
    vs, f = _group()
    tile, pad = 64, 4
    grid = renderer.group_grid(None, vs, f, K, cols=4, tile=tile, labels=False, image_size=(128, 128), side=True,
                               pad=pad)
    cell = 2 * tile
    tiles = [grid[pad:pad + tile, pad + i * (cell + pad):pad + i * (cell + pad) + tile] for i in range(4)]
    sides = [grid[pad:pad + tile, pad + i * (cell + pad) + tile:pad + (i + 1) * (cell + pad) - pad] for i in range(4)]
    # behind the camera, off the image, one point: each overlay tile carries a dark note, not a plain white tile
    for i in (1, 2, 3):
        assert (tiles[i] < 100).all(-1).any(), f"tile {i} is blank"
    assert (sides[3] < 100).all(-1).any()  # the side view of a one-point mesh is empty too
    # the visible hypothesis is drawn exactly as alone (no note on it); its side view (same scale) too
    alone = renderer.group_grid(None, vs[:1], f, K, cols=1, tile=tile, labels=False, image_size=(128, 128),
                                side=True, pad=pad)
    np.testing.assert_array_equal(tiles[0], alone[pad:pad + tile, pad:pad + tile])
    np.testing.assert_array_equal(sides[0], alone[pad:pad + tile, pad + tile:pad + cell])
    assert [R._empty_reason(v, f) for v in vs[1:]] == ["behind camera", "not in view", "no area"]
    assert R._empty_reason(vs[0] * 1e-3 + [0, 0, 0.002], f) == "too close"  # in front, nearer than the near plane
    # alpha 0 shows no mesh anywhere, by request: no tile is called "not in view"
    faint = renderer.group_grid(None, vs[:1], f, K, cols=1, tile=tile, labels=False, image_size=(128, 128),
                                alpha=0.0)
    assert (faint[pad:pad + tile, pad:pad + tile] == 255).all()


def test_a_non_finite_hypothesis_in_a_grid_is_named(renderer):
    vs, f = _group()
    vs[2, 5, 1] = np.nan
    with pytest.raises(InputError, match=r"hypothesis 2 \(of 4\): vertex 5 is not finite"):
        renderer.group_grids(None, vs, f, K, image_size=(128, 128))


@pytest.mark.parametrize("cx", [-50.0, 0.2])
def test_no_image_size_with_the_principal_point_off_the_image_names_k_not_a_size_never_given(renderer, cx):
    v, f = _sphere([0.0, 0.0, 3.0])
    Kc = K.copy()
    Kc[0, 2] = cx
    with pytest.raises(InputError, match=r"no image size given.*principal point.*image_size=\(W,H\)"):
        renderer.mask(v, f, Kc)
    assert renderer.mask(v, f, Kc, (128, 128)).shape == (128, 128)  # with a size it renders (off-centre)


def test_a_missing_render_says_where_it_was_looked_for(tmp_path):
    run = tmp_path / "runs" / "groups" / "g-1"
    res = ScoredGroup(group_id="g-1", scores=[HypothesisScore(index=0, motion_structure=5, physical_feasibility=5,
                                                               image_alignment=5, overall=5, rationale="ok")],
                      ranking=[0], renders={"overlay_grid": str(run / "overlay_grid.png")})
    html = render_html(res)
    assert f"image missing — {run / 'overlay_grid.png'}: file not found" in html


def test_one_camera_with_a_roll_keeps_the_shape_of_one_without():
    """look_at_rotation of one camera (3,) was (3,3) without a roll and (1,3,3) with a scalar roll."""
    import torch

    from hmrcritic.hmr import camera

    pos, target = torch.tensor([0.3, 0.5, 3.0]), torch.zeros(3)
    plain = camera.look_at_rotation(pos, target)
    rolled = camera.look_at_rotation(pos, target, torch.tensor(0.4))
    assert plain.shape == rolled.shape == (3, 3)
    c, s = np.cos(0.4), np.sin(0.4)
    np.testing.assert_allclose(rolled.numpy(), np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ plain.numpy(), atol=1e-6)
    # batched: as before, with one roll per camera or one for all
    many = camera.look_at_rotation(pos.expand(4, 3), target.expand(4, 3), torch.full((4,), 0.4))
    assert many.shape == (4, 3, 3) and torch.allclose(many, rolled.expand(4, 3, 3))
    assert camera.look_at_rotation(pos.expand(4, 3), target.expand(4, 3), torch.tensor(0.4)).shape == (4, 3, 3)
