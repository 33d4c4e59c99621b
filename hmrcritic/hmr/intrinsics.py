"""A user image's camera intrinsics: the default guess, a known principal point, or a calibration file.

Why this matters to the model: the denoiser is conditioned on the *ray* of the person box's centre,
``(c - principal point) / focal`` (:func:`hmrcritic.hmr.diffusion.make_condition`), and every hypothesis' translation
is solved through K. A crop of a larger photo keeps the photo's optical centre, which is then not the crop's
centre: with the default (centred) K a person at the crop's middle reads as seen head-on although the camera saw
them off-axis, and the body is tilted to match. So a user who knows their camera gives it here.

Accepted calibration files (JSON; numbers in pixels of the image as used — upright, as its EXIF orientation says):

- a 3×3 matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``, its 9 numbers row by row, or 4 numbers ``[fx, fy, cx, cy]``;
- an object holding one of those under ``K``, ``camera_matrix``, ``intrinsics``, ``intrinsic`` or ``cam_K``
  (OpenCV's JSON ``{"rows": 3, "cols": 3, "data": [9]}`` too, as ``cv2.FileStorage`` writes a calibration);
- an object with ``fx``, ``fy``, ``cx``, ``cy`` (``f`` for both focal lengths), or with ``focal_length`` (one number or
  ``[fx, fy]``) and ``principal_point`` (``[cx, cy]``), as PyTorch3D-style camera files name them.

An object may say which image size the numbers are for (``width``/``height``, ``image_width``/``image_height`` or
``image_size: [W, H]``); a size that is not the image's is refused (intrinsics scale with the resolution, and
guessing whether a user resized or cropped would be wrong half the time). A skew or a last row other than
``[0, 0, 1]`` is refused: projection and rendering read fx, fy, cx, cy only. Non-zero lens distortion
coefficients warn: the model assumes a pinhole camera, so keypoints should come from the undistorted image.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np

from hmrcritic.errors import InputError
from hmrcritic.hmr import camera
from hmrcritic.io import read_small_json

MAX_INTRINSICS_FILE_BYTES = 1_000_000
MATRIX_KEYS = ("K", "camera_matrix", "intrinsics", "intrinsic", "cam_K")
DISTORTION_KEYS = ("dist_coeffs", "distortion_coefficients", "dist", "distortion", "D")
FORMATS = ("a 3x3 K, its 9 numbers, [fx, fy, cx, cy], or an object with K / camera_matrix / intrinsics, "
           "fx fy cx cy, or focal_length + principal_point")


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _numbers(value, where: str) -> list[float]:
    """Flatten a list (or list of rows) of plain JSON numbers; anything else is refused naming ``where``."""
    flat = []
    for item in value if isinstance(value, list) else [value]:
        for x in item if isinstance(item, list) else [item]:
            if not _is_number(x):
                raise InputError(f"{where}: {x!r} is not a number ({FORMATS})")
            flat.append(float(x))
    return flat


def _matrix_from(value, where: str) -> np.ndarray:
    """K from a matrix-like value: 3×3 rows, 9 numbers, 4 numbers [fx, fy, cx, cy], or OpenCV's {rows, cols, data}."""
    if isinstance(value, dict) and "data" in value:  # cv2.FileStorage's JSON matrix node
        value = value["data"]
    if not isinstance(value, list):
        raise InputError(f"{where}: not intrinsics ({FORMATS})")
    rows = [row for row in value if isinstance(row, list)]
    if rows and not (len(value) == 3 and all(isinstance(row, list) and len(row) == 3 for row in value)):
        raise InputError(f"{where}: a matrix needs three rows of three numbers")
    flat = _numbers(value, where)
    if len(flat) == 4:
        fx, fy, cx, cy = flat
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    if len(flat) != 9:
        raise InputError(f"{where}: {len(flat)} numbers are not intrinsics ({FORMATS})")
    return np.array(flat, dtype=np.float64).reshape(3, 3)


def _pair(value, name: str, where: str) -> tuple[float, float]:
    flat = _numbers(value, f"{where}: {name}")
    if len(flat) == 1:
        return flat[0], flat[0]
    if len(flat) != 2:
        raise InputError(f"{where}: {name} must be one number or two, got {len(flat)}")
    return flat[0], flat[1]


def _matrix_from_object(data: dict, where: str) -> np.ndarray:
    """K from a calibration object, by the first naming scheme it uses (see the module docstring)."""
    for key in MATRIX_KEYS:
        if key in data:
            return _matrix_from(data[key], f"{where}: {key}")
    if "focal_length" in data or "principal_point" in data:
        if not ("focal_length" in data and "principal_point" in data):
            raise InputError(f"{where}: give both focal_length and principal_point")
        fx, fy = _pair(data["focal_length"], "focal_length", where)
        cx, cy = _pair(data["principal_point"], "principal_point", where)
        if not isinstance(data["principal_point"], list):
            raise InputError(f"{where}: principal_point must be [cx, cy]")
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    if any(k in data for k in ("fx", "fy", "f", "cx", "cy")):
        fx, fy = data.get("fx", data.get("f")), data.get("fy", data.get("f"))
        missing = [k for k, v in (("fx", fx), ("fy", fy), ("cx", data.get("cx")), ("cy", data.get("cy"))) if v is None]
        if missing:
            raise InputError(f"{where}: missing {', '.join(missing)} (give fx, fy, cx, cy; or f, cx, cy)")
        return _matrix_from([fx, fy, data["cx"], data["cy"]], where)
    raise InputError(f"{where}: no intrinsics found ({FORMATS})")


def _stated_size(data: dict, where: str) -> tuple[float, float] | None:
    """The image size a calibration object says its numbers are for, if it says one."""
    if "image_size" in data:
        return _pair(data["image_size"], "image_size", where)
    for w_key, h_key in (("width", "height"), ("image_width", "image_height"), ("w", "h")):
        if w_key in data and h_key in data:
            return _numbers(data[w_key], f"{where}: {w_key}")[0], _numbers(data[h_key], f"{where}: {h_key}")[0]
    return None


def _warn_distortion(data: dict, where: str) -> None:
    for key in DISTORTION_KEYS:
        if key not in data:
            continue
        value = data[key]["data"] if isinstance(data[key], dict) and "data" in data[key] else data[key]
        try:
            coeffs = _numbers(value, where)
        except InputError:
            return
        if any(abs(c) > 1e-9 for c in coeffs):
            warnings.warn(f"{where}: lens distortion ({key}) is not modelled — the model assumes a pinhole camera; "
                          "give keypoints detected on the undistorted image", stacklevel=3)
        return


def check_intrinsics(K, image_size: tuple[int, int], where: str = "intrinsics") -> np.ndarray:
    """``K`` as a float32 (3,3) pinhole matrix, or :class:`InputError` saying what is wrong with it.

    The same conditions the critique refuses a K on (finite, fx, fy > 0, no skew, last row ``[0, 0, 1]``), checked
    here so a user's file fails when read, naming the file, not groups later."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise InputError(f"{where}: K must be a finite 3x3 matrix, got {K.tolist()}")
    fx, fy = K[0, 0], K[1, 1]
    if not (fx > 0 and fy > 0):
        raise InputError(f"{where}: focal lengths must be positive pixels, got fx={fx:g}, fy={fy:g}")
    if abs(K[0, 1]) > 1e-6 * fx:
        raise InputError(f"{where}: a skewed K (K[0][1] = {K[0, 1]:g}) is not supported: projection and rendering "
                         "read fx, fy, cx, cy only")
    if abs(K[1, 0]) > 1e-6 * fy or not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-6):
        raise InputError(f"{where}: not a pinhole K (expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), got "
                         f"{np.round(K, 4).tolist()}")
    W, H = image_size
    cx, cy = K[0, 2], K[1, 2]
    # A principal point outside the image is allowed: a small crop of a large photo keeps the photo's optical
    # centre, which may lie many crop-widths away. Normalised units (fx ≈ 1, cx ≈ 0.5) are not pixels.
    if fx < 0.05 * max(W, H) and abs(cx) < 2 and abs(cy) < 2:
        raise InputError(f"{where}: fx={fx:g}, cx={cx:g} look normalised to the image size; give pixels "
                         f"(fx × {W}, cx × {W}, fy × {H}, cy × {H})")
    return K.astype(np.float32)


def read_intrinsics_json(path, image_size: tuple[int, int]) -> np.ndarray:
    """K (3,3) float32 from a calibration JSON file (formats: the module docstring), for an image of ``image_size``
    (W, H) as used. Errors are :class:`InputError` naming the file."""
    if not isinstance(path, str | os.PathLike):
        raise InputError(f"intrinsics must be a file path (str or Path), got {type(path).__name__}")
    p = Path(path)
    data = read_small_json(p, "intrinsics", MAX_INTRINSICS_FILE_BYTES)
    where = str(p)
    if isinstance(data, dict):
        K = _matrix_from_object(data, where)
        size = _stated_size(data, where)
        W, H = image_size
        if size is not None and (abs(size[0] - W) > 0.5 or abs(size[1] - H) > 0.5):
            swapped = abs(size[0] - H) <= 0.5 and abs(size[1] - W) <= 0.5
            raise InputError(
                f"{where}: the intrinsics are for a {size[0]:g}x{size[1]:g} image, this one is {W}x{H}"
                + (" (its EXIF orientation turns it upright: swap fx/fy and cx/cy for the upright image)" if swapped
                   else "; scale fx and cx by the width ratio and fy and cy by the height ratio (for a resize), "
                        "or subtract the crop's corner from cx, cy (for a crop)"))
        _warn_distortion(data, where)
    else:
        K = _matrix_from(data, where)
    return check_intrinsics(K, image_size, where)


def check_principal_point(value) -> tuple[float, float]:
    """``(cx, cy)`` as two finite floats, or :class:`InputError` (a string, a bool, one number, NaN)."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 2:
        raise InputError(f"principal_point must be (cx, cy) in pixels, got {value!r}")
    try:
        cx, cy = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"principal_point must be two numbers (cx, cy) in pixels, got {value!r}") from None
    if not (math.isfinite(cx) and math.isfinite(cy)) or any(isinstance(v, bool) for v in value):
        raise InputError(f"principal_point must be two finite numbers (pixels), got {value!r}")
    return cx, cy


def user_intrinsics(image_size: tuple[int, int], focal: float | None = None, principal_point=None,
                    intrinsics=None) -> np.ndarray:
    """K (3,3) float32 for a user image of ``image_size`` (W, H): a calibration file (``intrinsics``, a path), or
    the default guess — focal = max(W, H), principal point at the centre — with ``focal`` and/or
    ``principal_point`` (cx, cy) replacing its parts. A file together with either part is refused: which one wins
    would be a guess."""
    W, H = image_size
    if intrinsics is not None:
        if focal is not None or principal_point is not None:
            raise InputError("give either an intrinsics file or focal / principal point, not both")
        return read_intrinsics_json(intrinsics, image_size)
    K = camera.default_intrinsics(W, H, focal).numpy()
    if principal_point is not None:
        K[0, 2], K[1, 2] = check_principal_point(principal_point)
    return check_intrinsics(K, image_size, "principal point" if principal_point is not None else "intrinsics")


def parse_principal_point(text: str) -> tuple[float, float]:
    """``"CX,CY"`` (a comma or a space between; pixels) from the command line."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise InputError(f"--principal-point takes CX,CY in pixels (e.g. 960,540), got {text!r}")
    return values


__all__ = [
    "check_intrinsics",
    "check_principal_point",
    "parse_principal_point",
    "read_intrinsics_json",
    "user_intrinsics",
]
