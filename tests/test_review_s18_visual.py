"""Review s18 (visual): what the pictures and the reports actually show — the grids a critic (and the VLM)
looks at, and the report's notes about them."""

from __future__ import annotations

import re

import numpy as np
import pytest
import trimesh
from PIL import Image

from hmrcritic.agent.api import ScoredGroup
from hmrcritic.agent.report import render_html
from hmrcritic.agent.schema import HypothesisScore


@pytest.fixture(scope="module")
def renderer():
    from hmrcritic.hmr.render import Renderer

    r = Renderer()
    yield r
    r.close()


def _sphere(centre, radius=0.2):
    s = trimesh.creation.icosphere(subdivisions=3)
    return (radius * np.asarray(s.vertices) + centre).astype(np.float32), np.asarray(s.faces)


def _group(n: int = 1) -> ScoredGroup:
    scores = [HypothesisScore(index=i, motion_structure=5, physical_feasibility=5, image_alignment=5, overall=5 - i,
                              rationale=f"r{i}") for i in range(n)]
    return ScoredGroup(group_id="g", scores=scores, ranking=list(range(n)))


# --------------------------------------------------------------------------------------------- grids
def test_a_small_image_is_tiled_at_the_tile_size_with_the_mesh_where_it_projects(renderer):
    """A 64×64 input (a person crop) kept its own size in the grids: 64 px tiles for the VLM, a 12 px label over
    a fifth of each, although group_grid says tiles are drawn at ``tile`` px on the longer side."""
    W = H = 64
    img = np.full((H, W, 3), 90, np.uint8)
    K = np.array([[64.0, 0, 32.0], [0, 64.0, 32.0], [0, 0, 1]])
    centres = [[-0.3, 0.2, 3.0], [0.4, -0.3, 3.0]]
    vs = np.stack([_sphere(c)[0] for c in centres])
    f = _sphere(centres[0])[1]
    g = renderer.group_grid(img, vs, f, K, cols=2, tile=256, pad=4, labels=False)
    assert g.shape == (256 + 2 * 4, 2 * 256 + 3 * 4, 3)
    for i, c in enumerate(centres):
        cell = g[4:4 + 256, 4 + i * 260:4 + i * 260 + 256]
        ys, xs = np.nonzero((cell != 90).any(-1))
        u, v = (np.array(c[:2]) / c[2] * 64.0 + 32.0 + 0.5) * 4 - 0.5  # the projection at 4× the resolution
        assert abs(xs.mean() - u) < 1.5 and abs(ys.mean() - v) < 1.5
        assert 2 * 0.2 / 3.0 * 64 * 4 * 0.9 < np.ptp(xs) + 1 < 2 * 0.2 / 3.0 * 64 * 4 * 1.1  # drawn 4× as large
    side = renderer.group_grid(img, vs, f, K, cols=2, tile=256, pad=4, side=True, labels=False)
    assert side.shape == (256 + 2 * 4, 2 * (256 + 256) + 3 * 4, 3)  # and so are its side views


def test_an_image_at_or_above_the_tile_size_is_tiled_as_before(renderer):
    """Images the tile already fits (every synthetic scene, every photo) keep their exact grids."""
    from hmrcritic.hmr.render import scale_intrinsics

    img = np.full((96, 128, 3), 90, np.uint8)
    K = np.array([[150.0, 0, 63.5], [0, 150.0, 47.5], [0, 0, 1]])
    vs = np.stack([_sphere([0.1, 0, 3.0])[0]])
    f = _sphere([0, 0, 3.0])[1]
    same = renderer.group_grid(img, vs, f, K, cols=1, tile=128, pad=0, labels=False)
    np.testing.assert_array_equal(same, renderer.overlay(img, vs[0], f, K))
    half = renderer.group_grid(img, vs, f, K, cols=1, tile=64, pad=0, labels=False)
    np.testing.assert_array_equal(half, renderer.overlay(np.full((48, 64, 3), 90, np.uint8), vs[0], f,
                                                         scale_intrinsics(K, 0.5)))


# -------------------------------------------------------------------------------------------- report
def test_the_note_of_a_downscaled_render_names_where_the_full_size_file_is(tmp_path):
    """The report said "full size (2068×524) in side_grid.png", but the grids live in the run folder: beside
    report.html (``critique --out``: report and scores.json only; a demo scene folder: grid.png, no
    side_grid.png) there is no such file."""
    run = tmp_path / "runs" / "groups" / "g"
    run.mkdir(parents=True)
    rng = np.random.default_rng(0)
    big, small = run / "side_grid.png", run / "overlay_grid.png"
    Image.fromarray(rng.integers(0, 255, (300, 2000, 3), dtype=np.uint8)).save(big)
    Image.fromarray(rng.integers(0, 255, (300, 1000, 3), dtype=np.uint8)).save(small)  # > KEEP_BYTES: re-encoded
    res = _group()
    res.renders = {"overlay_grid": str(small), "side_grid": str(big)}
    page = render_html(res)
    captions = re.findall(r'<figcaption class="muted">([^<]*)</figcaption>', page)
    assert len(captions) == 2
    assert "re-encoded" in captions[0] and str(small) in captions[0]
    assert "full size (2000×300)" in captions[1] and str(big) in captions[1]


def test_grid_cells_of_a_blank_background_group_are_visibly_apart(renderer):
    """Without an input image (every synthetic scene) the tiles are white, and so were the gutters between
    them: a limb clipped at the edge of tile #6 ran on into tile #7 with nothing to tell where one ends."""
    K = np.array([[150.0, 0, 64.0], [0, 150.0, 48.0], [0, 0, 1]])
    v, f = _sphere([0.1, 0.0, 3.0])
    vs = np.stack([v, v, v])
    for side in (False, True):
        g = renderer.group_grid(None, vs, f, K, cols=2, tile=128, pad=4, side=side, labels=False,
                                image_size=(128, 96))
        cell_w = 128 + (96 if side else 0)
        gutters = [g[:, :4], g[:, 4 + cell_w:8 + cell_w], g[:4], g[100:104]]
        for gut in gutters:
            assert (np.abs(gut.astype(int) - 255).sum(-1) > 60).all()  # far from the white tiles
            assert (np.abs(gut.astype(int) - 230).sum(-1) > 60).all()  # and from the side views' grey
        tile = g[4:100, 4:132]
        assert (tile[0] == 255).all()  # the tiles themselves stay on white
