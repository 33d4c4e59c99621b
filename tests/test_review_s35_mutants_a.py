"""Mutation audit of hmrcritic/hmr/intrinsics.py and hmrcritic/hmr/rotations.py (session 35).

Each test here kills a mutant that every earlier test let live: a change to the code that a user's calibration file
or a pose would feel, but that no test noticed. Expected values are worked out by hand from the module docstrings
(a calibration a user would write; a rotation with a closed form), not copied from the code's output."""

import json
import math

import numpy as np
import pytest
import torch

from hmrcritic.errors import InputError
from hmrcritic.hmr import intrinsics as I
from hmrcritic.hmr import rotations as R

SIZE = (640, 480)


def write(tmp_path, obj, name="cam.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


# --- intrinsics.py ---------------------------------------------------------------------------------------------

def test_a_single_number_principal_point_is_refused(tmp_path):
    """``principal_point`` is ``[cx, cy]`` (module docstring); one number is not a point — reading 300 as (300, 300)
    would be a guess. (Mutant: the list check dropped, so ``_pair`` doubled the number.)"""
    with pytest.raises(InputError, match=r"principal_point must be \[cx, cy\]"):
        I.read_intrinsics_json(write(tmp_path, {"focal_length": 700, "principal_point": 300}), SIZE)


@pytest.mark.parametrize("skew", [2.0, -2.0])
def test_a_skew_of_either_sign_is_refused(tmp_path, skew):
    """A skewed K is refused (projection reads fx, fy, cx, cy only); a negative skew is as much a skew as a positive
    one. (Mutant: ``abs`` dropped from the skew test, so a negative K[0][1] passed and was silently ignored.)"""
    K = [[800, skew, 300], [0, 790, 250], [0, 0, 1]]
    with pytest.raises(InputError, match="skewed K"):
        I.read_intrinsics_json(write(tmp_path, K), SIZE)
    with pytest.raises(InputError, match="skewed K"):
        I.check_intrinsics(np.array(K, dtype=float), SIZE)


@pytest.mark.parametrize("stated", [(1280, 480), (640, 720)])
def test_a_stated_size_wrong_in_one_dimension_only_is_refused(tmp_path, stated):
    """A calibration that says it is for another image size is refused (intrinsics scale with the resolution) — also
    when only the width (a side-by-side stereo frame's calibration) or only the height differs. (Mutant: the two
    mismatches joined with ``and``, so one matching side let the wrong K through.)"""
    obj = {"fx": 800, "fy": 790, "cx": 300, "cy": 250, "width": stated[0], "height": stated[1]}
    with pytest.raises(InputError, match=f"for a {stated[0]}x{stated[1]} image, this one is 640x480"):
        I.read_intrinsics_json(write(tmp_path, obj), SIZE)


def test_a_bop_cam_k_is_read(tmp_path):
    """``cam_K`` (the BOP datasets' scene_camera.json name: 9 numbers, row by row) is one of the documented matrix
    keys. (Mutant: the last of MATRIX_KEYS dropped; such a file was refused as holding no intrinsics.)"""
    obj = {"cam_K": [800, 0, 300, 0, 790, 250, 0, 0, 1], "depth_scale": 1.0}
    K = I.read_intrinsics_json(write(tmp_path, obj), SIZE)
    assert np.array_equal(K, np.array([[800, 0, 300], [0, 790, 250], [0, 0, 1]], dtype=np.float32))


def test_nerfstudio_w_h_state_the_size(tmp_path):
    """nerfstudio's transforms.json says its image size as ``w``, ``h``; a calibration of the 1280x960 originals
    given for a 640x480 downscale is refused, not used at twice the focal length. (Mutant: ``w``/``h`` not read as a
    stated size.)"""
    obj = {"camera_model": "OPENCV", "fl_x": 1600, "fl_y": 1580, "cx": 600, "cy": 500, "w": 1280, "h": 960,
           "k1": 0, "k2": 0, "p1": 0, "p2": 0, "frames": []}
    with pytest.raises(InputError, match="for a 1280x960 image, this one is 640x480"):
        I.read_intrinsics_json(write(tmp_path, obj), SIZE)
    K = I.read_intrinsics_json(write(tmp_path, dict(obj, w=640, h=480)), SIZE)  # its own size: read
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == (1600, 1580, 600, 500)


# --- rotations.py ----------------------------------------------------------------------------------------------

def test_a_float16_rest_pose_is_the_identity():
    """The rest pose (a zero axis-angle) is the identity in every dtype; in float16 a floor of 1e-8 rounds to 0 and
    the zero rotation divided 0 by 0 (the docstring's case). (Mutant: the floor's ``finfo.tiny`` dropped.)"""
    m = R.axis_angle_to_matrix(torch.zeros(2, 3, dtype=torch.float16))
    assert m.dtype == torch.float16 and torch.isfinite(m).all()
    assert torch.equal(m, torch.eye(3, dtype=torch.float16).expand(2, 3, 3))


def test_matrix_to_quaternion_of_a_large_negative_turn_has_w_positive():
    """A 2.5 rad turn about -x: its quaternion is (cos 1.25, -sin 1.25, 0, 0), the w ≥ 0 one of the pair ±q the
    docstring promises (the >90° turn takes the x-led candidate, whose w comes out negative before the flip)."""
    half = 1.25
    c, s = math.cos(2 * half), math.sin(2 * half)
    m = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]], dtype=torch.float64)  # Rx(-2.5)
    q = R.matrix_to_quaternion(m)
    expected = torch.tensor([math.cos(half), -math.sin(half), 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(q, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(R.matrix_to_axis_angle(m), torch.tensor([-2.5, 0.0, 0.0], dtype=torch.float64),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x_plus_z", [1.2, -2.0, 3.0])
def test_exact_gimbal_lock_angles_rebuild_the_matrix(dtype, x_plus_z):
    """At y = +90° (an elbow flexed 90°) Rx(x) Ry(90°) Rz(z) = [[0, 0, 1], [sin(x+z), cos(x+z), 0],
    [-cos(x+z), sin(x+z), 0]] (multiplied out by hand): only x + z is defined, and the angles must rebuild the
    matrix. With exact zeros in the first row x and z each read atan2(0, 0) = 0, which rebuilds Ry(90°) — up to
    180° off. (Mutant: the lock test never true, so z was not re-solved.)"""
    s, c = math.sin(x_plus_z), math.cos(x_plus_z)
    m = torch.tensor([[0.0, 0.0, 1.0], [s, c, 0.0], [-c, s, 0.0]], dtype=dtype)
    angles = R.matrix_to_euler_xyz(m)
    assert abs(float(angles[1]) - math.pi / 2) < 1e-6
    assert abs(math.remainder(float(angles[0] + angles[2]) - x_plus_z, 2 * math.pi)) < 1e-5
    torch.testing.assert_close(R.euler_to_matrix(angles, "XYZ"), m, atol=1e-5, rtol=0)


def test_y_next_to_gimbal_lock_is_not_rounded_to_90_degrees():
    """y = 90° − 5e-6 rad in float32: sin y rounds to exactly 1.0, so asin reads 90° (5e-6 off), while cos y
    (≈ 5e-6, held to float32's relative precision in the first row) still tells the angle; the docstring: y comes
    from atan2 there. (Mutant: the atan2 re-read at lock dropped.)"""
    d = 5e-6
    y = math.pi / 2 - d
    cy, sy = math.cos(y), math.sin(y)
    m = torch.tensor([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]], dtype=torch.float32)  # Ry(y)
    assert float(m[0, 2]) == 1.0  # the case: sin y is 1 in float32
    angles = R.matrix_to_euler_xyz(m)
    assert abs(float(angles[1]) - y) < 1e-6


def test_an_opencv_yaml_error_names_the_files_own_line(tmp_path):
    """OpenCV's ``%YAML:1.0`` first line is dropped before parsing, its newline kept so an error's line number is
    still the file's: the stray ``: y`` on line 5 is reported at line 5. (Mutant: the newline dropped too, and
    every error pointed one line above the one to fix.)"""
    text = "%YAML:1.0\n---\nimage_width: 640\nimage_height: 480\ncamera_matrix: x: y\n"
    with pytest.raises(InputError, match=r"not valid YAML \(.* at line 5\)"):
        I.read_intrinsics_json(write(tmp_path, text, "calib.yml"), SIZE)
