"""Review s13 (perf): the render step was made faster (own PNG encoder, labels drawn on crops, an exact
shortcut for opaque overlays, contiguous normal accumulation). These tests pin that what it produces did not
change: each output is compared pixel for pixel with the pre-change code, kept here as a reference path."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw, ImageFont

from hmrcritic.hmr import render as R


# ------------------------------------------------------------------------------- the pre-change code paths
def _ref_encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(R._check_image(img)).save(buf, format="PNG")
    return buf.getvalue()


def _ref_vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        for d in range(3):
            vn[:, d] += np.bincount(f[:, k], weights=fn[:, d], minlength=len(v))
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return (vn / np.maximum(norm, 1e-12)).astype(np.float32)


def _ref_draw_labels(grid: np.ndarray, items, size: int) -> np.ndarray:
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:
        font = ImageFont.load_default()
    im = Image.fromarray(grid)
    draw = ImageDraw.Draw(im)
    for x, y, text in items:
        box = draw.textbbox((x + 3, y + 2), text, font=font)
        draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
        draw.text((x + 3, y + 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(im).copy()


def _ref_overlay(self, image, vertices, faces, K, color=R.DEFAULT_COLOR, alpha: float = 0.85, image_size=None,
                 bg_color=(1.0, 1.0, 1.0)):
    if image is not None:
        img = R._check_image(image)
        image_size = (img.shape[1], img.shape[0])
    else:
        W, H = R._size_from(image_size, R._check_K(K))
        img = np.empty((H, W, 3), np.uint8)
        img[:] = R._rgb8(bg_color)
    rgb, depth = self._render(vertices, faces, K, image_size, color, depth_only=False)
    m = depth > 0
    out = img.copy()
    a = float(np.clip(alpha, 0.0, 1.0))
    blend = a * rgb[m].astype(np.float32) + (1.0 - a) * img[m].astype(np.float32)
    out[m] = np.clip(blend.round(), 0, 255).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------------------ inputs
K_ODD = np.array([[300.0, 0, 140.0], [0, 270.0, 100.0], [0, 0, 1]])
SIZE_ODD = (320, 240)  # (W, H)


@pytest.fixture(scope="module")
def renderer():
    r = R.Renderer()
    yield r
    r.close()


def _photo(W: int, H: int, seed: int = 0) -> np.ndarray:
    """A photo-like image: smooth gradients plus noise (a flat image would hide compositing differences)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 255 / max(1, W - 1), y * 255 / max(1, H - 1), (x + y) % 256], -1)
    return np.clip(base + rng.normal(0, 25, (H, W, 3)), 0, 255).astype(np.uint8)


def _group(n: int = 5, seed: int = 1):
    """n bodies-ish: a torso ellipsoid with a limb, jittered per hypothesis; shared faces (as a group has)."""
    torso = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    torso.apply_scale([0.18, 0.35, 0.12])
    limb = trimesh.creation.capsule(height=0.4, radius=0.05, count=[12, 12])
    limb.apply_translation([0.25, 0.1, 0.0])
    mesh = trimesh.util.concatenate([torso, limb])
    v0, faces = np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces)
    rng = np.random.default_rng(seed)
    vs = np.stack([v0 + rng.normal(0, 0.01, v0.shape) + [rng.normal(0, 0.05), 0.0, 2.5 + 0.1 * i]
                   for i in range(n)]).astype(np.float32)
    return vs, faces


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 9, 3), (7, 1, 3), (33, 17, 3), (240, 320, 3), (20, 30),
                                   (12, 10, 4)])
def test_encode_png_decodes_to_the_pixels_pillows_encoder_gave(shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape).astype(np.uint8)
    if len(shape) == 3 and shape[0] >= 20:
        img = _photo(shape[1], shape[0])
    data = R.encode_png(img)
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(data)) as im:
        got = np.asarray(im)
        assert im.mode == "RGB" and im.format == "PNG"
    with Image.open(io.BytesIO(_ref_encode_png(img))) as im:
        ref = np.asarray(im)
    assert got.shape == ref.shape and np.array_equal(got, ref)


def test_encode_png_takes_float_images_like_before():
    img = np.linspace(0, 1, 5 * 6 * 3).reshape(5, 6, 3)
    with Image.open(io.BytesIO(R.encode_png(img))) as a, Image.open(io.BytesIO(_ref_encode_png(img))) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_vertex_normals_match_the_reference_bit_for_bit():
    rng = np.random.default_rng(0)
    s = trimesh.creation.icosphere(subdivisions=3)
    v = (np.asarray(s.vertices) + rng.normal(0, 0.05, s.vertices.shape)).astype(np.float32)
    f = np.asarray(s.faces, np.int64)
    f_degenerate = np.concatenate([f, [[0, 0, 1]]])
    v_unused = np.concatenate([v, [[9.0, 9.0, 9.0]]]).astype(np.float32)  # a vertex no face uses: normal 0
    for vv, ff in ((v, f), (v.astype(np.float64), f), (v, f_degenerate), (v_unused, f)):
        got, ref = R.vertex_normals(vv, ff), _ref_vertex_normals(vv, ff)
        assert got.dtype == ref.dtype and np.array_equal(got, ref)


@pytest.mark.parametrize("th,cols,n,prefix", [(96, 4, 7, "#"), (8, 3, 9, "#"), (40, 2, 3, "hyp ")])
def test_labels_drawn_on_crops_match_drawing_on_the_whole_grid(th, cols, n, prefix):
    pad, tw = 4, int(th * 1.3)
    rows = math.ceil(n / cols)
    grid = _photo(cols * tw + (cols + 1) * pad, rows * th + (rows + 1) * pad)
    corners = [(pad + (i // cols) * (th + pad), pad + (i % cols) * (tw + pad)) for i in range(n)]
    items = [(x0, y0, f"{prefix}{i}") for i, (y0, x0) in enumerate(corners)]
    items.append((grid.shape[1] - 5, grid.shape[0] - 5, "#99"))  # runs off the grid's corner: clipped alike
    size = max(12, th // 10)
    ref = _ref_draw_labels(grid.copy(), items, size)
    got = R._draw_labels(grid.copy(), items, size)
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("alpha", [1.0, 0.85, 0.3, 0.0, 1.7, -0.2])
def test_overlay_matches_the_reference_blend(renderer, alpha):
    vs, faces = _group(1)
    img = _photo(*SIZE_ODD)
    before = img.copy()
    got = renderer.overlay(img, vs[0], faces, K_ODD, alpha=alpha)
    ref = _ref_overlay(renderer, img, vs[0], faces, K_ODD, alpha=alpha)
    assert np.array_equal(img, before)  # the caller's image is never drawn on
    assert got.dtype == np.uint8 and got.shape == ref.shape and np.array_equal(got, ref)
    got = renderer.overlay(None, vs[0], faces, K_ODD, alpha=alpha, image_size=SIZE_ODD, bg_color=(0.2, 0.5, 0.9))
    ref = _ref_overlay(renderer, None, vs[0], faces, K_ODD, alpha=alpha, image_size=SIZE_ODD,
                       bg_color=(0.2, 0.5, 0.9))
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("image", ["photo", None])
def test_group_grids_and_their_pngs_match_the_reference_renderer(renderer, monkeypatch, tmp_path, image):
    """The critique's render step end to end (two grids, then PNG files) against the pre-change code."""
    vs, faces = _group(5)
    img = _photo(*SIZE_ODD) if image else None
    kw = {"cols": 3, "tile": 128, "image_size": SIZE_ODD}
    got = renderer.group_grids(img, vs, faces, K_ODD, **kw)
    got_side = renderer.group_grid(img, vs, faces, K_ODD, side=True, **kw)
    files = [R.save_png(tmp_path / f"{k}.png", g) for k, g in zip("os", got, strict=True)]
    with monkeypatch.context() as mp:
        mp.setattr(R, "vertex_normals", _ref_vertex_normals)
        mp.setattr(R, "_draw_labels", _ref_draw_labels)
        mp.setattr(R.Renderer, "overlay", _ref_overlay)
        ref = renderer.group_grids(img, vs, faces, K_ODD, **kw)
    assert [g.shape for g in got] == [g.shape for g in ref]
    for g, r_ in zip(got, ref, strict=True):
        assert np.array_equal(g, r_)
    assert np.array_equal(got_side, ref[1])
    for path, r_ in zip(files, ref, strict=True):
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(im), r_)


def test_a_gl_library_that_cannot_load_is_a_render_error_naming_the_way_out():
    """With PYOPENGL_PLATFORM=osmesa and no OSMesa, the first import of pyrender raised a bare ImportError
    (the CLI printed "ImportError: ('Unable to load OpenGL library', ...)" with no hint), and the hint it had
    elsewhere suggested osmesa to a user whose osmesa had just failed."""
    import subprocess
    import sys

    code = ("import os; os.environ['PYOPENGL_PLATFORM']='osmesa'\n"
            "import numpy as np\n"
            "from hmrcritic.hmr.render import Renderer, RenderError\n"
            "v=np.array([[0,0,2.],[.1,0,2],[0,.1,2]]); f=np.array([[0,1,2]])\n"
            "K=np.array([[50.,0,8],[0,50,8],[0,0,1]])\n"
            "try:\n    Renderer().mask(v, f, K, (16, 16)); print('RENDERED')\n"
            "except RenderError as e:\n    print('RENDERERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if "RENDERED" in out.stdout:
        pytest.skip("this machine has OSMesa")
    assert "RENDERERROR" in out.stdout, out.stdout + out.stderr
    assert "libosmesa6" in out.stdout and "unset PYOPENGL_PLATFORM" in out.stdout
