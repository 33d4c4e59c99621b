"""Session 34, re-read of round 1 (redact's header lines, YAML calibrations, ``trace --last`` of a finished run).

Each test but the last few pinned a bug the re-read demonstrated (written as strict xfails, un-marked once fixed in
the same session); the others pin what the re-read found right."""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager

import pytest
import yaml

from hmrcritic.errors import InputError
from hmrcritic.hmr.intrinsics import read_intrinsics_json
from hmrcritic.redact import scrub

SECRET = "abc123def456"


def _aliases(levels: int) -> str:
    """A YAML preamble whose ``*a{levels}`` is a list expanding to 10 ** (levels + 1) numbers, in a few hundred
    bytes (each level's list names the one below ten times: PyYAML shares the node, anything that walks it
    expands it)."""
    lines = ["a0: &a0 [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


# --- intrinsics.py: YAML aliases ("billion laughs") -------------------------------------------------------------


@pytest.mark.parametrize("tail", [
    "model: *a5\nparams: [1, 2, 3, 4]\n",           # COLMAP model's error message reprs the whole expansion
    "K: [500, 500, 320, 240]\nD: [*a5]\n",           # valid K: the distortion check's repr is built, then dropped
    "focal_length: [*a5]\nprincipal_point: [1, 2]\n",
    "K: [500, 500, 320, 240]\nwidth: [*a5]\nheight: 480\n",
])
def test_yaml_alias_expansion_is_refused(tmp_path, tail):
    p = tmp_path / "cam.yaml"
    p.write_text(_aliases(5) + tail)  # 10**6 numbers: fast here, the same code path as 10**9
    assert p.stat().st_size < 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError) as err:
            read_intrinsics_json(p, (640, 480))
    assert len(str(err.value)) < 2000, f"message of {len(str(err.value))} characters"


def test_opencv_nd_matrix_beside_camera_matrix_is_read(tmp_path):
    p = tmp_path / "calib.yml"
    p.write_text("%YAML:1.0\n---\ncamera_matrix: !!opencv-matrix\n   rows: 3\n   cols: 3\n   dt: d\n"
                 "   data: [ 5.0000000000000000e+02, 0., 3.2000000000000000e+02, 0., 5.0000000000000000e+02,\n"
                 "       2.4000000000000000e+02, 0., 0., 1. ]\n"
                 "points: !!opencv-nd-matrix\n   sizes: [ 2, 2, 2 ]\n   dt: f\n"
                 "   data: [ 1., 1., 1., 1., 1., 1., 1., 1. ]\n")
    K = read_intrinsics_json(p, (640, 480))
    assert K[0, 0] == 500 and K[0, 2] == 320 and K[1, 2] == 240


def test_opencv_filestorage_and_ros_yaml_read_and_turned_upright(tmp_path):
    """What the round promised, checked with files written as the tools write them (passes now)."""
    cv = tmp_path / "cv.yml"
    cv.write_text("%YAML:1.0\r\n---\r\ncamera_matrix: !!opencv-matrix\r\n   rows: 3\r\n   cols: 3\r\n   dt: d\r\n"
                  "   data: [ 5.0000000000000000e+02, 0., 3.2000000000000000e+02, 0.,\r\n"
                  "       5.0000000000000000e+02, 2.4000000000000000e+02, 0., 0., 1. ]\r\n"
                  "image_width: 640\r\nimage_height: 480\r\n")
    assert read_intrinsics_json(cv, (640, 480)).tolist() == [[500, 0, 320], [0, 500, 240], [0, 0, 1]]
    ros2 = tmp_path / "info.yaml"
    ros2.write_text("header:\n  stamp:\n    sec: 1\n    nanosec: 5\n  frame_id: cam\nheight: 480\nwidth: 640\n"
                    "distortion_model: plumb_bob\nd: []\nk:\n" + "".join(f"- {v}\n" for v in
                                                                        (500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0, 0, 1))
                    + "roi:\n  x_offset: 0\n  height: 0\n  width: 0\n---\n")
    # a phone photo (EXIF 6): the raw 640x480 frame's calibration turned with the pixels, (cx, cy) -> (H - cy, cx)
    assert read_intrinsics_json(ros2, (480, 640), exif_orientation=6).tolist() == [[500, 0, 240], [0, 500, 320],
                                                                                   [0, 0, 1]]


def test_calibration_loader_stays_safe_and_private(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("K: !!python/object/apply:os.system ['echo no']\n")
    with pytest.raises(InputError, match="constructor"):
        read_intrinsics_json(p, (640, 480))
    # its additions stay on its subclass: safe_load elsewhere reads as before
    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load("a: !!opencv-matrix {rows: 1}")


# --- redact.py: raw header lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    repr(f"X-API-Key: {SECRET}\nCookie: sid={SECRET}\n"),
    f"send: b'POST /v1 HTTP/1.1\\r\\nHost: h\\r\\nX-API-Key: {SECRET}\\r\\n\\r\\n'",
    '{"headers": "Host: h\\r\\nCookie: sid=' + SECRET + '\\r\\n"}',
])
def test_header_after_escaped_newline_is_masked(text):
    assert SECRET not in scrub(text)


@pytest.mark.parametrize("text", [
    f"Authorization: Bearer tok987654321 X-API-Key: {SECRET}",
    f"Idempotency-Key: 1 X-API-Key: {SECRET}",
])
def test_second_header_on_a_line_is_masked(text):
    assert SECRET not in scrub(text)


@pytest.mark.parametrize("text", [
    f'Cookie: session="{SECRET}"',
    f'Set-Cookie: sid="{SECRET}"; Path=/; HttpOnly',
    f'X-API-Key: "{SECRET}"',
    f"X-API-Key: '{SECRET}'",
])
def test_quoted_header_value_is_masked(text):
    assert SECRET not in scrub(text)


def test_cookie_after_comma_is_masked():
    assert SECRET not in scrub(f"Set-Cookie: theme=dark; Path=/, sid={SECRET}; HttpOnly")


@pytest.mark.parametrize("text", [
    repr({"Set-Cookie": f"sid={SECRET}"}),
    repr({"x-functions-key": SECRET}),
    repr({"x-rapidapi-key": SECRET}),
    repr([("x-api-key", SECRET)]),
])
def test_secret_header_in_a_headers_repr_is_masked(text):
    assert SECRET not in scrub(text)


def test_header_rules_that_hold():
    """Spellings the round handles (pass now), and prose it leaves alone."""
    for text in (f"X-Api-Key:{SECRET}", f"x-api-key:\t{SECRET}\r\nHost: a", f"Cookie: a=1; session={SECRET}",
                 f"{{'x-api-key': '{SECRET}'}}", f"curl -H 'X-API-Key: {SECRET}'", "Authorization: Basic dXNlcjpwYXNz"):
        assert SECRET not in scrub(text) and "dXNlcjpwYXNz" not in scrub(text), text
    for prose in ("Note: the cache-key: user12345678 was not found", "Cookie: none", "X-Auth-Token: see the docs",
                  "Authorization: required since v2.0.0-rc1 for uploads"):
        assert scrub(prose) == prose
    t0 = time.perf_counter()
    scrub("Cookie: " + "a=" * 500_000)
    scrub(("x-api-key:" + " " * 100 + "'") * 9_000)
    assert time.perf_counter() - t0 < 5


# --- trace.py: LAST pointed at a finished run ----------------------------------------------------------------------


def test_point_last_at_finished_checks_under_the_lock(tmp_path, monkeypatch):
    from hmrcritic.agent import trace

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    d = trace.traces_dir()
    d.mkdir(parents=True)
    (d / "old.jsonl").write_text("{}\n")
    (d / "newer.jsonl").write_text("{}\n")
    (d / "LAST").write_text("newer\n")
    real = trace._pointer_lock

    @contextmanager
    def prune_got_there_first(folder):
        # another process's `runs prune` held the lock first: it removed the old trace (LAST already names a
        # trace that is left, so its repoint keeps it)
        (d / "old.jsonl").unlink(missing_ok=True)
        with real(folder):
            yield

    monkeypatch.setattr(trace, "_pointer_lock", prune_got_there_first)
    trace.point_last_at_finished("old")
    assert (d / "LAST").read_text().strip() == "newer"
