"""Session 34 review: three leftovers.

1. A raw HTTP header line quoted in free text (an endpoint's error body, a proxy's or ``curl -v``'s dump) kept its
   key in view: ``X-API-Key: …``, Azure's ``api-key: …``, ``Cookie: …`` were masked by no rule (only Bearer/Basic and
   the ``name=value`` / JSON forms were). A closed list of secret header names is read now; prose stays.
2. ROS's calibrations were refused: ROS 2's ``sensor_msgs/CameraInfo`` JSON (lower-case ``k``, ``d``), the YAML file
   ``camera_calibration`` writes, and the YAML ``cv2.FileStorage`` writes by default (``%YAML:1.0``,
   ``!!opencv-matrix``).
3. ``critique_groups(workers=0)`` (or negative) ran one group at a time as if 1 had been asked for.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from hmrcritic import redact
from hmrcritic.errors import InputError
from hmrcritic.hmr import intrinsics as I

# ------------------------------------------------------------------------------------------ 1. header lines
HEADER_LINES = [
    ("X-Auth-Token: 9f8e7d6c5b4a3210", "9f8e7d6c5b4a3210"),
    ("X-API-Key: abcd1234efgh", "abcd1234efgh"),
    ("api-key: 0a1b2c3d4e5f6a7b8c9d", "0a1b2c3d4e5f6a7b8c9d"),  # Azure OpenAI's header
    ("Proxy-Authorization: Basic dXNlcjpwYXNzMTIzNDU=", "dXNlcjpwYXNzMTIzNDU="),
    ("Proxy-Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),  # "user:pass": no digit, still the password
    ("Cookie: session=abc123def456; theme=dark", "abc123def456"),
    ("X-Goog-Api-Key: AIzaSyA1b2C3d4E5f6G7h8", "AIzaSyA1b2C3d4E5f6G7h8"),
    ("x-api-key: sk-ant-api03-abcdEFGH1234", "sk-ant-api03-abcdEFGH1234"),  # Anthropic's header
    ("Authorization: token ghp_abcdef1234567890", "ghp_abcdef1234567890"),  # GitHub's scheme
    ("Set-Cookie: sid=31d4d96e407aad42; Path=/; Secure", "31d4d96e407aad42"),
    ("Ocp-Apim-Subscription-Key: 0123456789abcdef", "0123456789abcdef"),
]


@pytest.mark.parametrize("line, secret", HEADER_LINES)
def test_a_secret_header_line_quoted_in_free_text_is_masked(clean_secrets, line, secret):
    name, rest = line.split(":", 1)  # a header name in any case (HTTP/2 dumps lower-case them)
    for text in (line, f"HTTP 401: echo of request headers:\n> {line}\r\n> Host: api.example",
                 f"proxy said {{{line}, via: squid}}", f"curl -H '{line}' https://api.example/v1",
                 f'{{"error": "bad header \\"{line}\\""}}', f"{name.upper()}:{rest}", f"{name.lower()}:{rest}"):
        out = clean_secrets.scrub(text)
        assert secret not in out, (text, out)
        assert redact.MASK in out


def test_a_header_line_keeps_what_is_around_its_value(clean_secrets):
    scrub = clean_secrets.scrub
    assert scrub("> X-API-Key: abcd1234efgh\r\n> Host: api.example") == "> X-API-Key: ***\r\n> Host: api.example"
    assert scrub('-H "api-key: abcd1234efgh" -d @body.json') == '-H "api-key: ***" -d @body.json'
    # an authorization header keeps its scheme and what follows the credential, as the Bearer rule did
    assert scrub("request with Authorization: Bearer sk-abc123456789 failed") == \
        "request with Authorization: Bearer *** failed"
    assert scrub("Authorization: token ghp_abcdef1234567890 (retrying)") == "Authorization: token *** (retrying)"
    assert scrub("authorization: bearer abcd1234efgh5678") == "authorization: bearer ***"
    # the value of an escaped header inside a JSON string ends at its escaped line end
    assert scrub('"X-Api-Key: abcd1234efgh\\r\\nHost: h"') == '"X-Api-Key: ***\\r\\nHost: h"'


@pytest.mark.parametrize("text", [
    "Token: the number of tokens",  # no header of the list
    "Cookie: none",  # a value without a token: 8+ characters with a digit, as the Bearer rule reads one
    "X-Auth-Token: see the docs",
    "api-key: missing",
    "Authorization: Basic authentication failed",
    "Note: 12345678 things were read",
    "Max-Api-Key: abcd1234efgh",  # a name only ending like one of the list
    "mykey-key: abcd1234efgh",
    "timestamps 12:34:56, key: 0123456789",  # "key:" alone is no header of the list
])
def test_prose_and_other_names_stay_readable(clean_secrets, text):
    assert clean_secrets.scrub(text) == text


def test_a_header_line_scrub_stays_linear(clean_secrets):
    """Long values and many names: no pattern that rescans a value from every position of it."""
    import time

    texts = ["x-api-key: " + "a" * 60_000, ("X-API-Key: " + "b" * 50 + " ") * 1000, "Max-Api-Key: " * 5000,
             "Authorization: Basic " + "A" * 60_000, "Cookie:" + " a-b" * 20_000]
    t0 = time.perf_counter()
    for text in texts:
        clean_secrets.scrub(text)
    assert time.perf_counter() - t0 < 2.0


# ------------------------------------------------------------------------------------------ 2. ROS / OpenCV files
SIZE = (640, 480)
K_REF = np.array([[800.0, 0.0, 300.0], [0.0, 790.0, 250.0], [0.0, 0.0, 1.0]], dtype=np.float32)

ROS2_CAMERA_INFO = {
    "header": {"stamp": {"sec": 0, "nanosec": 0}, "frame_id": "camera_optical_frame"},
    "height": 480, "width": 640, "distortion_model": "plumb_bob", "d": [0.0, 0.0, 0.0, 0.0, 0.0],
    "k": [800.0, 0.0, 300.0, 0.0, 790.0, 250.0, 0.0, 0.0, 1.0],
    "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    "p": [800.0, 0.0, 300.0, 0.0, 0.0, 790.0, 250.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "binning_x": 0, "binning_y": 0,
    "roi": {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0, "do_rectify": False},
}

# as ``ros2 run camera_calibration cameracalibrator`` writes ost.yaml
ROS_YAML = """\
image_width: 640
image_height: 480
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [800.0, 0.0, 300.0, 0.0, 790.0, 250.0, 0.0, 0.0, 1.0]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [0.0, 0.0, 0.0, 0.0, 0.0]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
projection_matrix:
  rows: 3
  cols: 4
  data: [800.0, 0.0, 300.0, 0.0, 0.0, 790.0, 250.0, 0.0, 0.0, 0.0, 1.0, 0.0]
"""

# as ``cv2.FileStorage("calib.yml", cv2.FILE_STORAGE_WRITE)`` writes it (written by hand: cv2 may be absent)
OPENCV_YAML = """\
%YAML:1.0
---
image_width: 640
image_height: 480
camera_matrix: !!opencv-matrix
   rows: 3
   cols: 3
   dt: d
   data: [ 8.0000000000000000e+02, 0., 3.0000000000000000e+02, 0.,
       7.9000000000000000e+02, 2.5e2, 0., 0., 1. ]
distortion_coefficients: !!opencv-matrix
   rows: 1
   cols: 5
   dt: d
   data: [ 0., 0., 0., 0., 0. ]
"""


def _no_warning_read(path, size=SIZE, orientation=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return I.read_intrinsics_json(path, size, exif_orientation=orientation)


def test_ros2_camera_info_json_is_read(tmp_path):
    path = tmp_path / "camera_info.json"
    path.write_text(json.dumps(ROS2_CAMERA_INFO))
    np.testing.assert_allclose(_no_warning_read(path), K_REF)
    # its width and height are the size it states: another image's is refused
    with pytest.raises(InputError, match="640x480 image, this one is 320x240"):
        I.read_intrinsics_json(path, (320, 240))
    # its lower-case d is distortion, as ROS 1's D is
    path.write_text(json.dumps({**ROS2_CAMERA_INFO, "d": [-0.28, 0.07, 0.0, 0.0, 0.0]}))
    with pytest.warns(UserWarning, match=r"distortion \(d\)"):
        I.read_intrinsics_json(path, SIZE)


def test_ros1_camera_info_json_is_read(tmp_path):
    info = {k: v for k, v in ROS2_CAMERA_INFO.items() if k not in ("k", "d", "r", "p")}
    info.update(K=ROS2_CAMERA_INFO["k"], D=ROS2_CAMERA_INFO["d"], R=ROS2_CAMERA_INFO["r"], P=ROS2_CAMERA_INFO["p"])
    path = tmp_path / "camera_info.json"
    path.write_text(json.dumps(info))
    np.testing.assert_allclose(_no_warning_read(path), K_REF)


@pytest.mark.parametrize("name, text", [("ost.yaml", ROS_YAML), ("calib.yml", OPENCV_YAML),
                                        ("CALIB.YML", OPENCV_YAML.replace("\n", "\r\n"))])
def test_yaml_calibration_files_are_read(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode())
    np.testing.assert_allclose(_no_warning_read(path), K_REF)
    with pytest.raises(InputError, match="640x480 image, this one is 1280x960"):
        I.read_intrinsics_json(path, (1280, 960))


def test_a_ros_topic_echo_of_camera_info_is_read(tmp_path):
    """``ros2 topic echo --once /camera_info > cam.yaml`` writes YAML block lists and ends with "---" (an empty
    second document); ``rostopic echo -n 1`` (ROS 1) does too, with upper-case K and D."""
    def block(name, values):
        return f"{name}:\n" + "".join(f"- {v}\n" for v in values)

    info = ROS2_CAMERA_INFO
    body = ("header:\n  stamp:\n    sec: 1700000000\n    nanosec: 5\n  frame_id: camera_color_optical_frame\n"
            "height: 480\nwidth: 640\ndistortion_model: plumb_bob\n")
    for k, d in (("k", "d"), ("K", "D")):
        path = tmp_path / f"echo_{k}.yaml"
        path.write_text(body + block(d, info["d"]) + block(k, info["k"]) + "binning_x: 0\nroi:\n  x_offset: 0\n"
                        "  height: 0\n  width: 0\n  do_rectify: false\n---\n")
        np.testing.assert_allclose(_no_warning_read(path), K_REF)
    path.write_text("K: [800, 790, 300, 250]\n---\nK: [1, 1, 1, 1]\n")
    with pytest.raises(InputError, match="holds 2 YAML documents"):
        I.read_intrinsics_json(path, SIZE)


def test_a_yaml_calibration_of_the_raw_frame_is_turned_upright(tmp_path):
    path = tmp_path / "ost.yaml"
    path.write_text(ROS_YAML)
    # a phone photo (EXIF 6) stored 640x480, used upright as 480x640: the file's size is the raw frame's
    K = _no_warning_read(path, size=(480, 640), orientation=6)
    np.testing.assert_allclose(K, I.upright_intrinsics(K_REF.astype(np.float64), (640, 480), 6))


def test_yaml_distortion_warns(tmp_path):
    path = tmp_path / "calib.yml"
    path.write_text(OPENCV_YAML.replace("data: [ 0., 0., 0., 0., 0. ]", "data: [ -2.8e-01, 7.0e-02, 0., 0., 0. ]"))
    with pytest.warns(UserWarning, match="distortion_coefficients"):
        I.read_intrinsics_json(path, SIZE)


def test_yaml_floats_without_a_dot_or_an_exponent_sign_are_numbers(tmp_path):
    path = tmp_path / "cam.yaml"
    path.write_text("fx: 8e2\nfy: 7.9e2\ncx: 3E+2\ncy: 250\nwidth: 640\nheight: 480\n")
    np.testing.assert_allclose(_no_warning_read(path), K_REF)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("just some text\n", "plain text"),
    ("K: [1, 2\n", "not valid YAML"),
    ("camera_matrix: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
    ("camera_matrix: !!opencv-matrix [1, 2, 3]\n", "must be a mapping"),
    ("K: " + "[" * 5000 + "]" * 5000 + "\n", "YAML"),
])
def test_a_yaml_that_is_no_calibration_is_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "cam.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        I.read_intrinsics_json(path, SIZE)
    assert str(path) in str(err.value)


def test_a_large_yaml_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "cam.yaml"
    path.write_text("# " + "x" * (I.MAX_INTRINSICS_FILE_BYTES + 10) + "\n")
    with pytest.raises(InputError, match="is not an intrinsics file"):
        I.read_intrinsics_json(path, SIZE)


def test_the_opencv_tag_reader_leaves_safe_load_as_it_was():
    """The tag is read by a SafeLoader subclass only: ``yaml.safe_load`` elsewhere in the process still refuses it."""
    import yaml

    I._calibration_loader()
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load("m: !!opencv-matrix {rows: 1, cols: 1, dt: d, data: [1.]}")
    assert yaml.safe_load("x: 1e3") == {"x": "1e3"}


# ------------------------------------------------------------------------------------------ 3. workers
@pytest.mark.parametrize("workers", [0, -1, np.int64(0)])
def test_critique_groups_refuses_fewer_than_one_worker(monkeypatch, workers):
    from hmrcritic.agent import api

    calls = []
    monkeypatch.setattr(api, "critique_group", lambda *a, **k: calls.append(k))
    with pytest.raises(InputError, match=f"workers must be at least 1, got {int(workers)}"):
        api.critique_groups([{"sample": None, "hypotheses": None, "group_id": "g0"}], workers=workers)
    assert calls == []
