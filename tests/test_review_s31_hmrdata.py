"""Session 31 review of the HMR data, rendering and metrics code (hmr/data.py, render.py, poses.py).

Each test pins one finding: a user-facing reader that returned a near-black image for a float image, and
docstrings / comments that promised what the code does not do. The generated splits are identified by their
content, so the pose generator's behaviour is measured and documented here, never changed.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from hmrcritic.hmr import anatomy, poses


def test_a_float_image_in_0_1_reads_as_a_visible_image_not_black(tmp_path):
    """PIL opens a 32-bit float TIFF as mode "F"; one in [0, 1] (the usual range of a float export) was rounded to
    0/1 and read as a black image, overlaid and critiqued without a word. render._check_image reads a float array
    with max <= 1 as [0, 1] too; read_image now agrees with it."""
    from PIL import Image

    from hmrcritic.hmr.data import read_image

    ramp = np.linspace(0.0, 1.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    path = tmp_path / "float01.tiff"
    Image.fromarray(ramp, mode="F").save(path)
    img = read_image(path)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert img.max() == 255 and img.min() == 0
    np.testing.assert_array_equal(img[..., 0], np.round(ramp * 255).astype(np.uint8))


def test_a_float_image_already_in_0_255_reads_as_before(tmp_path):
    """Floats past 1 are taken as 0..255 values, as they were."""
    from PIL import Image

    from hmrcritic.hmr.data import read_image

    ramp = np.linspace(0.0, 255.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    path = tmp_path / "float255.tiff"
    Image.fromarray(ramp, mode="F").save(path)
    np.testing.assert_array_equal(read_image(path)[..., 1], np.round(ramp).astype(np.uint8))


def _side_correlation() -> float:
    """The largest |correlation| between a left joint's perturbation and its right counterpart's (any axis)."""
    p = poses._Pose(8000, np.random.default_rng(0))
    poses._perturb(p)
    J = poses._J
    worst = 0.0
    for name in anatomy.BODY_JOINT_NAMES:
        if not name.startswith("left_"):
            continue
        for ax in range(3):
            a, b = p.e[:, J[name], ax], p.e[:, J["right_" + name[5:]], ax]
            worst = max(worst, abs(float(np.corrcoef(a, b)[0, 1])))
    return worst


def test_the_pose_noise_docstrings_do_not_promise_a_left_right_correlation_the_code_lacks():
    """_perturb draws its "shared" component per joint (shared[:, j] of the right joint itself, not of its left
    counterpart), so the two sides' perturbations are independent: measured |r| < 0.05 on every joint and axis.
    The module docstring said the perturbation was "correlated ... between the two sides" and _perturb's that a
    shared component "mirrors across the sides". Changing the draw would change every generated split, so the
    documentation now says what the code does."""
    assert _side_correlation() < 0.05
    for doc in (poses.__doc__, poses._perturb.__doc__):
        assert "between the two sides" not in doc
        assert "mirrors across the sides" not in doc


def test_the_standing_comment_says_which_way_the_pelvis_tilts():
    """_standing's weight shift w > 0 relaxes the left leg, and p.g[:, 2] += 3 * w raises the left (+x) hip
    (Rz(+) turns +x towards +y): the comment said the pelvis "drops towards the relaxed side", the opposite."""
    rng = np.random.default_rng(0)
    w = np.random.default_rng(0).uniform(-1, 1, 2000)  # _standing's first draw
    p = poses._Pose(2000, rng)
    poses._standing(p)
    g, b = poses._finalise(p)
    j = anatomy.forward_kinematics(g, b).numpy()
    left_minus_right = j[:, 1, 1] - j[:, 2, 1]
    assert np.corrcoef(w, left_minus_right)[0, 1] > 0.99  # the relaxed (left, w > 0) side is the higher one
    assert "drops towards the relaxed side" not in inspect.getsource(poses._standing)


@pytest.mark.parametrize("phrase", ["camera + lights"])
def test_the_render_docstring_names_what_the_scene_holds(phrase):
    """Shading is baked into vertex colours and drawn unlit (FLAT): the reused scene holds a camera and no light,
    while the module docstring said "one scene (camera + lights)"."""
    from hmrcritic.hmr import render

    assert phrase not in render.__doc__
    src = inspect.getsource(render.Renderer._get_scene)
    assert "Light" not in src  # no light is added: the docstring must not promise one
