"""Rendering: silhouettes agree with the camera model, overlays only touch mesh pixels, grids and side views
have the promised layout, files are written whole. Real pyrender on EGL (Mesa llvmpipe without a GPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw

from hmrcritic.errors import InputError
from hmrcritic.hmr import render as R


@pytest.fixture(scope="module")
def renderer():
    r = R.Renderer()
    yield r
    r.close()


def _sphere(centre, radius=0.3, subdivisions=3):
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(s.vertices + np.asarray(centre), np.float32), np.asarray(s.faces)


# An off-centre principal point, unequal focal lengths and a non-square image catch any mix-up of
# x/y, W/H or the OpenCV → OpenGL conversion.
K_ODD = np.array([[300.0, 0, 140.0], [0, 270.0, 100.0], [0, 0, 1]])
SIZE_ODD = (320, 240)  # (W, H)


def _project(v, K):
    uv = (K @ (v / v[:, 2:3]).T).T
    return uv[:, :2]


def _convex_hull(pts):
    """Andrew's monotone chain (2D), counter-clockwise, no repeated end point."""
    pts = sorted(map(tuple, pts))

    def cross(a, b):  # the z of a 2-D cross product (np.cross on 2-vectors is deprecated since NumPy 2.0)
        return a[0] * b[1] - a[1] * b[0]

    def half(points):
        out = []
        for p in points:
            while len(out) >= 2 and cross(np.subtract(out[-1], out[-2]), np.subtract(p, out[-2])) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return half(pts) + half(pts[::-1])


def _hull_mask(uv, W, H):
    im = Image.new("1", (W, H), 0)
    # PIL fills pixel (x, y) whose centre lies inside, as in the OpenCV convention (centres at integers)
    ImageDraw.Draw(im).polygon(_convex_hull(uv), fill=1)
    return np.asarray(im, dtype=bool)


def test_silhouette_matches_projected_vertices(renderer):
    v, f = _sphere([0.25, -0.1, 2.5])
    W, H = SIZE_ODD
    m = renderer.mask(v, f, K_ODD, SIZE_ODD)
    assert m.shape == (H, W) and m.dtype == bool and m.sum() > 500
    uv = _project(v, K_ODD)
    ys, xs = np.nonzero(m)
    assert abs(xs.min() - uv[:, 0].min()) <= 2 and abs(xs.max() - uv[:, 0].max()) <= 2
    assert abs(ys.min() - uv[:, 1].min()) <= 2 and abs(ys.max() - uv[:, 1].max()) <= 2
    # every projected vertex lands on the silhouette (rim vertices may sit on its 1-px border)
    px = np.round(uv).astype(int)
    assert m[px[:, 1], px[:, 0]].mean() > 0.9
    padded = np.zeros((H + 2, W + 2), bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            padded[dy : dy + H, dx : dx + W] |= m
    assert padded[px[:, 1] + 1, px[:, 0] + 1].all()
    hull = _hull_mask(uv, W, H)
    iou = (m & hull).sum() / (m | hull).sum()
    assert iou > 0.97, iou


def test_mesh_moved_right_moves_right_and_down_moves_down(renderer):
    v, f = _sphere([0.0, 0.0, 3.0], radius=0.2)
    base = np.argwhere(renderer.mask(v, f, K_ODD, SIZE_ODD)).mean(0)
    right = np.argwhere(renderer.mask(v + [0.3, 0, 0], f, K_ODD, SIZE_ODD)).mean(0)
    down = np.argwhere(renderer.mask(v + [0, 0.3, 0], f, K_ODD, SIZE_ODD)).mean(0)
    assert right[1] - base[1] == pytest.approx(300.0 * 0.3 / 3.0, abs=1.0)  # columns: +x
    assert down[0] - base[0] == pytest.approx(270.0 * 0.3 / 3.0, abs=1.0)  # rows: +y (OpenCV y down)


def test_depth_is_camera_z(renderer):
    v, f = _sphere([0.0, 0.0, 3.0], radius=0.3)
    K = np.array([[200.0, 0, 63.5], [0, 200.0, 63.5], [0, 0, 1]])
    d = renderer.render_depth(v, f, K, (128, 128))
    assert d[64, 64] == pytest.approx(2.7, abs=0.01)  # nearest point of the sphere
    assert d[0, 0] == 0.0
    behind = renderer.mask(v - [0, 0, 6.0], f, K, (128, 128))  # behind the camera: nothing drawn
    assert not behind.any()


def test_overlay_changes_only_mesh_pixels(renderer):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(SIZE_ODD[1], SIZE_ODD[0], 3), dtype=np.uint8)
    v, f = _sphere([0.1, 0.1, 2.0])
    out = renderer.overlay(img, v, f, K_ODD, color=(1.0, 0.2, 0.2), alpha=0.9)
    m = renderer.mask(v, f, K_ODD, SIZE_ODD)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(out[~m], img[~m])
    assert (np.abs(out[m].astype(int) - img[m].astype(int)).sum(-1) > 0).mean() > 0.95
    assert out[m][:, 0].mean() > out[m][:, 2].mean() + 40  # reddish mesh
    # shaded, not flat: the lit sphere has a range of brightness
    opaque = renderer.overlay(None, v, f, K_ODD, alpha=1.0, image_size=SIZE_ODD, bg_color=(0.0, 0.0, 0.0))
    lum = opaque[m].mean(-1)
    assert lum.max() - lum.min() > 40
    assert (opaque[~m] == 0).all()


def test_shading_does_not_depend_on_face_winding(renderer):
    v, f = _sphere([0.0, 0.0, 2.5])
    K = np.array([[200.0, 0, 63.5], [0, 200.0, 63.5], [0, 0, 1]])
    a = renderer.overlay(None, v, f, K, alpha=1.0)
    b = renderer.overlay(None, v, f[:, ::-1], K, alpha=1.0)  # inside-out winding
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    lum = a[renderer.mask(v, f, K)].mean(-1)
    # lit from the viewer's upper left: the upper-left quadrant of the sphere is brighter than the lower right
    m = renderer.mask(v, f, K)
    ul = a[:64, :64][m[:64, :64]].mean()
    lr = a[64:, 64:][m[64:, 64:]].mean()
    assert ul > lr + 10 and lum.min() > 0


def test_side_view_shows_depth_extent(renderer):
    box = trimesh.creation.box(extents=(0.1, 0.2, 1.0))  # thin in x, long along the viewing direction z
    v = np.asarray(box.vertices + [0, 0, 4.0], np.float32)
    f = np.asarray(box.faces)
    front = renderer.overlay(None, v, f, np.array([[400.0, 0, 128], [0, 400.0, 128], [0, 0, 1]]))
    side = renderer.side_view(v, f, size=128)
    assert front.shape == (256, 256, 3) and side.shape == (128, 128, 3)
    drawn = np.argwhere((side != 255).any(-1))
    h = np.ptp(drawn[:, 0]) + 1
    w = np.ptp(drawn[:, 1]) + 1
    assert w / h == pytest.approx(5.0, rel=0.1)  # the 1.0 m depth now spans the width, 0.2 m the height
    assert w > 0.75 * 128  # framed to fill the view


def test_group_grid_layout_and_labels(renderer):
    img = np.full((96, 128, 3), 90, np.uint8)
    K = np.array([[150.0, 0, 63.5], [0, 150.0, 47.5], [0, 0, 1]])
    vs = np.stack([_sphere([0.1 * i - 0.2, 0, 3.0], 0.2, 2)[0] for i in range(5)])
    f = _sphere([0, 0, 0], 0.2, 2)[1]
    g = renderer.group_grid(img, vs, f, K, cols=3, tile=64, pad=4, labels=False)
    assert g.shape == (2 * 48 + 3 * 4, 3 * 64 + 4 * 4, 3)
    gl = renderer.group_grid(img, vs, f, K, cols=3, tile=64, pad=4, labels=True)
    assert not np.array_equal(g[4:20, 4:30], gl[4:20, 4:30])  # a label is drawn in the first cell's corner
    diff = (g != gl).any(-1)
    label_zone = np.zeros_like(diff)
    for i in range(5):
        y0, x0 = 4 + (i // 3) * 52, 4 + (i % 3) * 68
        assert diff[y0 : y0 + 16, x0 : x0 + 30].any()  # every cell carries its label
        label_zone[y0 : y0 + 24, x0 : x0 + 40] = True
    assert not (diff & ~label_zone).any()  # and labels touch nothing else
    # each cell is that hypothesis' overlay: the sphere's centre column moves right with the index
    centres = []
    for i in range(3):
        cell = g[4:52, 4 + i * 68 : 4 + i * 68 + 64]
        cols = np.argwhere((cell != 90).any(-1))[:, 1]
        centres.append(cols.mean())
    assert centres[0] < centres[1] < centres[2]
    gs = renderer.group_grid(img, vs, f, K, cols=2, tile=64, pad=4, side=True)
    assert gs.shape == (3 * 48 + 4 * 4, 2 * (64 + 48) + 3 * 4, 3)
    gn = renderer.group_grid(None, vs[:2], f, K, cols=4, tile=64, image_size=(128, 96), labels=False)
    assert gn.shape == (48 + 8, 2 * 64 + 12, 3)


def test_both_grids_at_once_render_each_overlay_once_and_match_the_single_grids(renderer, monkeypatch):
    """The critique draws the overlay grid and the overlay + side grid of a group: the overlays were rendered
    twice (3N renders). ``group_grids`` gives the same two images pixel for pixel from 2N renders."""
    img = np.full((96, 128, 3), 90, np.uint8)
    K = np.array([[150.0, 0, 63.5], [0, 150.0, 47.5], [0, 0, 1]])
    vs = np.stack([_sphere([0.1 * i - 0.2, 0.05 * i, 3.0], 0.2, 2)[0] for i in range(5)])
    f = _sphere([0, 0, 0], 0.2, 2)[1]
    one = renderer.group_grid(img, vs, f, K, cols=3, tile=64)
    two = renderer.group_grid(img, vs, f, K, cols=3, tile=64, side=True)
    calls = []
    real = type(renderer)._render
    monkeypatch.setattr(type(renderer), "_render", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    g1, g2 = renderer.group_grids(img, vs, f, K, cols=3, tile=64)
    assert len(calls) == 2 * len(vs)
    np.testing.assert_array_equal(g1, one)
    np.testing.assert_array_equal(g2, two)


def test_input_errors_are_clear(renderer):
    v, f = _sphere([0, 0, 3.0])
    K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    bad = v.copy()
    bad[7, 1] = np.nan
    with pytest.raises(InputError, match="vertex 7"):
        renderer.mask(bad, f, K)
    with pytest.raises(InputError, match="face indices"):
        renderer.mask(v, f + len(v), K)
    with pytest.raises(InputError, match="intrinsics"):
        renderer.mask(v, f, np.eye(2))


def test_save_png_and_write_obj(tmp_path, renderer):
    v, f = _sphere([0, 0, 3.0], 0.3, 1)
    img = renderer.overlay(None, v, f, np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]]))
    p = R.save_png(tmp_path / "a" / "o.png", img)
    assert np.array_equal(np.asarray(Image.open(p).convert("RGB")), img)
    o = R.write_obj(tmp_path / "m.obj", v, f)
    mesh = trimesh.load(o, process=False)
    assert np.allclose(mesh.vertices, v, atol=1e-5) and np.array_equal(mesh.faces, f)
    assert not [x for x in os.listdir(tmp_path) if x.endswith(".tmp")]


def test_get_renderer_is_shared_and_close_is_idempotent():
    r = R.get_renderer()
    assert R.get_renderer() is r
    v, f = _sphere([0, 0, 3.0], 0.3, 1)
    K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    assert r.mask(v, f, K).any()
    R.close()
    R.close()
    assert r.mask(v, f, K).any()  # usable again after close
    R.close()


def test_body_model_overlay_is_upright_and_aligned(renderer):
    torch = pytest.importorskip("torch")
    from hmrcritic.hmr.body import load_body_model

    body = load_body_model()
    out = body(
        torch.tensor([[np.pi, 0.0, 0.0]]),
        torch.zeros(1, 69),
        torch.zeros(1, 10),
        torch.tensor([[0.1, 0.2, 4.0]]),
    )
    v, j = out.vertices[0].numpy(), out.joints[0].numpy()
    K = np.array([[500.0, 0, 159.5], [0, 500.0, 199.5], [0, 0, 1]])
    m = renderer.mask(v, body.faces, K, (320, 400))
    uv = _project(v, K)
    ys, xs = np.nonzero(m)
    assert np.allclose(
        [xs.min(), xs.max(), ys.min(), ys.max()],
        [uv[:, 0].min(), uv[:, 0].max(), uv[:, 1].min(), uv[:, 1].max()],
        atol=2,
    )
    juv = np.round(_project(j, K)).astype(int)
    for name, idx in (("pelvis", 0), ("spine3", 9), ("head", 15)):
        assert m[juv[idx, 1], juv[idx, 0]], name  # inner joints project onto the body's silhouette
    assert juv[15, 1] < juv[0, 1] < juv[7, 1]  # head above pelvis above ankle: upright in image coordinates
    ms = renderer.masks(np.stack([v, v + [0.3, 0, 0]]), body.faces, K, (320, 400))
    assert ms.shape == (2, 400, 320) and np.array_equal(ms[0], m) and not np.array_equal(ms[1], m)


def test_closing_one_renderer_leaves_others_working():
    # regression: pyrender's EGL delete() terminates the shared display, so renderers must share one context
    a, b = R.Renderer(), R.Renderer()
    v, f = _sphere([0, 0, 3.0], 0.3, 1)
    K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    assert a.mask(v, f, K).any() and b.mask(v, f, K, (80, 64)).any()
    a.close()
    assert b.mask(v, f, K).any()
    b.close()
    assert a.mask(v, f, K).any()
    a.close()


def test_self_test_reports_gl():
    info = R.self_test()
    assert info["ok"], info
    assert info["pixels"] > 100 and info["renderer"]


_MASK_CODE = (
    "import numpy as np, trimesh\n"
    "from hmrcritic.hmr.render import Renderer, RenderError\n"
    "s = trimesh.creation.icosphere(1)\n"
    "K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])\n"
    "try:\n"
    "    Renderer().mask(s.vertices + [0, 0, 3], s.faces, K)\n"
    "    print('RENDERED')\n"
    "except RenderError as e:\n"
    "    print('ERR', e)\n"
)


def mask_in_fresh_process(**env_vars: str) -> tuple[str, str]:
    """Render one mask in a new Python process with ``env_vars`` set (GL platform choices are made at import):
    its stdout line ("RENDERED" or "ERR <message>") and the tail of its stderr."""
    env = dict(os.environ, **env_vars)
    out = subprocess.run([sys.executable, "-c", _MASK_CODE], env=env, capture_output=True, text=True, timeout=120)
    return out.stdout.strip(), out.stderr[-2000:]


def test_unavailable_gl_platform_gives_one_clear_line():
    line, err = mask_in_fresh_process(PYOPENGL_PLATFORM="no-such-platform")
    assert line.startswith("ERR"), err
    assert "PYOPENGL_PLATFORM=no-such-platform" in line and "libegl-mesa0" in line and "\n" not in line


def test_importing_render_metrics_doctor_does_not_import_pyrender():
    code = (
        "import sys, hmrcritic.hmr.render, hmrcritic.hmr.metrics, hmrcritic.commands.doctor\n"
        "print('pyrender' in sys.modules, 'OpenGL' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False False", out.stderr[-2000:]
