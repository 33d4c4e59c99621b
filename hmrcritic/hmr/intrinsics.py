"""A user image's camera intrinsics: the default guess, a known principal point, or a calibration file.

Why this matters to the model: the denoiser is conditioned on the *ray* of the person box's centre,
``(c - principal point) / focal`` (:func:`hmrcritic.hmr.diffusion.make_condition`), and every hypothesis' translation
is solved through K. A crop of a larger photo keeps the photo's optical centre, which is then not the crop's
centre: with the default (centred) K a person at the crop's middle reads as seen head-on although the camera saw
them off-axis, and the body is tilted to match. So a user who knows their camera gives it here.

Accepted calibration files (JSON, or YAML for a ``.yaml``/``.yml`` file; numbers in pixels of the image as used —
upright, as its EXIF orientation says):

- a 3×3 matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``, its 9 numbers row by row, or 4 numbers ``[fx, fy, cx, cy]``;
- an object holding one of those under ``K``, ``camera_matrix``, ``intrinsics``, ``intrinsic`` or ``cam_K``
  (OpenCV's JSON ``{"rows": 3, "cols": 3, "data": [9]}`` too, as ``cv2.FileStorage`` writes a calibration);
- an object with ``fx``, ``fy``, ``cx``, ``cy`` (``f`` for both focal lengths; nerfstudio's ``transforms.json`` names
  them ``fl_x``, ``fl_y``), or with ``focal_length`` (one number or ``[fx, fy]``) and ``principal_point``
  (``[cx, cy]``), as PyTorch3D-style camera files name them;
- Open3D's ``PinholeCameraIntrinsic`` JSON: ``intrinsic_matrix``, 9 numbers **column by column**, as Open3D writes it;
- a COLMAP camera (``model`` and ``params``, as pycolmap's ``Camera.todict()`` and COLMAP-to-JSON scripts write it) of
  a pinhole model or one whose extra parameters are distortion (``SIMPLE_PINHOLE``, ``PINHOLE``, ``SIMPLE_RADIAL``,
  ``RADIAL``, ``OPENCV``, ``FULL_OPENCV``);
- ROS's camera calibration: ``sensor_msgs/CameraInfo`` as JSON (ROS 1 ``K``, ``D``; ROS 2 lower case ``k``, ``d``;
  with ``width``/``height``), and the YAML file ``camera_calibration`` writes (``image_width``, ``image_height``,
  ``camera_matrix: {rows, cols, data}``, ``distortion_coefficients``; its rectification and projection matrices are
  not read: K is the raw image's camera);
- the YAML file OpenCV's ``cv2.FileStorage`` writes by default (a ``%YAML:1.0`` first line, ``!!opencv-matrix``
  nodes).

YAML is read with PyYAML's safe loader (pinned: chromadb, transformers and langchain-core need it), which builds plain
lists, numbers and strings only; its one addition reads OpenCV's ``!!opencv-matrix`` tag as the mapping it is, and
numbers such as ``1e-3`` (YAML 1.2 and OpenCV write them; YAML 1.1 reads them as text) as numbers.

A K written column by column where a row-major one is expected (numpy's ``K.T``) is refused saying so: the
``[0, 0, 1]`` row is then a column.

An object may say which image size the numbers are for (``width``/``height``, ``image_width``/``image_height`` or
``image_size: [W, H]``); a size that is not the image's is refused (intrinsics scale with the resolution, and
guessing whether a user resized or cropped would be wrong half the time) — except the raw (stored) frame's size of
a photo its EXIF orientation turns a quarter (5-8): calibration tools see the sensor's frame, so the K is turned
upright with the pixels (:func:`upright_intrinsics`). Where the frame cannot be told (orientations 2-4 keep the
size; a bare matrix states none), the K is taken as of the upright image and a warning gives the raw-frame
reading's numbers. A skew or a last row other than
``[0, 0, 1]`` is refused: projection and rendering read fx, fy, cx, cy only. Non-zero lens distortion
coefficients warn: the model assumes a pinhole camera, so keypoints should come from the undistorted image.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np

from hmrcritic.errors import InputError, warn_caller
from hmrcritic.hmr import camera
from hmrcritic.io import not_a_file_error, read_small_json

MAX_INTRINSICS_FILE_BYTES = 1_000_000
MATRIX_KEYS = ("K", "camera_matrix", "intrinsics", "intrinsic", "cam_K")
DISTORTION_KEYS = ("dist_coeffs", "distortion_coefficients", "dist", "distortion", "D", "d")
# nerfstudio's transforms.json keeps its distortion as single numbers beside the focal lengths
NERFSTUDIO_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
# COLMAP camera models whose parameters are the pinhole's (their first ones) and lens distortion (the rest):
# model -> (number of parameters, whether one focal length serves both axes)
COLMAP_MODELS = {"SIMPLE_PINHOLE": (3, True), "PINHOLE": (4, False), "SIMPLE_RADIAL": (4, True),
                 "RADIAL": (5, True), "OPENCV": (8, False), "FULL_OPENCV": (12, False)}
FORMATS = ("a 3x3 K, its 9 numbers, [fx, fy, cx, cy], or an object with K / camera_matrix / intrinsics, "
           "fx fy cx cy (fl_x fl_y), focal_length + principal_point, Open3D's intrinsic_matrix, a COLMAP "
           "model + params or ROS CameraInfo's k")
YAML_SUFFIXES = (".yaml", ".yml")
# ROS 2's sensor_msgs/CameraInfo names K and D in lower case (ROS 1's ``K``, ``D`` are read as above). Looked for
# only after every other form: a lone "k" beside fx, fy, cx, cy may be something else of a camera file.
ROS2_MATRIX_KEY = "k"


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
    if "intrinsic_matrix" in data:  # Open3D's PinholeCameraIntrinsic: 9 numbers column by column
        flat = _numbers(data["intrinsic_matrix"], f"{where}: intrinsic_matrix")
        if len(flat) != 9:
            raise InputError(f"{where}: intrinsic_matrix holds {len(flat)} numbers, Open3D writes 9 (column by "
                             "column)")
        return np.array(flat, dtype=np.float64).reshape(3, 3).T
    if "model" in data and "params" in data:
        return _colmap_matrix(data, where)
    if any(k in data for k in ("fx", "fy", "f", "cx", "cy", "fl_x", "fl_y")):
        fx = data.get("fx", data.get("fl_x", data.get("f")))
        fy = data.get("fy", data.get("fl_y", data.get("f")))
        missing = [k for k, v in (("fx", fx), ("fy", fy), ("cx", data.get("cx")), ("cy", data.get("cy"))) if v is None]
        if missing:
            raise InputError(f"{where}: missing {', '.join(missing)} (give fx, fy, cx, cy; or f, cx, cy)")
        return _matrix_from([fx, fy, data["cx"], data["cy"]], where)
    if ROS2_MATRIX_KEY in data:
        return _matrix_from(data[ROS2_MATRIX_KEY], f"{where}: {ROS2_MATRIX_KEY}")
    raise InputError(f"{where}: no intrinsics found ({FORMATS})")


def _colmap_model(data: dict) -> str | None:
    """The COLMAP model name of a camera object, upper case; pycolmap's enum written as text
    (``"CameraModelId.PINHOLE"``) too."""
    model = data.get("model")
    return model.rsplit(".", 1)[-1].upper() if isinstance(model, str) else None


def _colmap_matrix(data: dict, where: str) -> np.ndarray:
    """K of a COLMAP camera object (``model``, ``params``): the pinhole part of the models that have one."""
    model = _colmap_model(data)
    if model not in COLMAP_MODELS:
        raise InputError(f"{where}: COLMAP model {data['model']!r} is not a pinhole camera with distortion "
                         f"({', '.join(COLMAP_MODELS)}): undistort the images (colmap image_undistorter) and give "
                         "the PINHOLE camera it writes")
    count, one_focal = COLMAP_MODELS[model]
    params = _numbers(data["params"], f"{where}: params")
    if len(params) != count:
        raise InputError(f"{where}: a COLMAP {model} camera has {count} params, this one {len(params)}")
    fx, fy, rest = (params[0], params[0], params[1:]) if one_focal else (params[0], params[1], params[2:])
    return np.array([[fx, 0.0, rest[0]], [0.0, fy, rest[1]], [0.0, 0.0, 1.0]])


def _stated_size(data: dict, where: str) -> tuple[float, float] | None:
    """The image size a calibration object says its numbers are for, if it says one."""
    if "image_size" in data:
        return _pair(data["image_size"], "image_size", where)
    for w_key, h_key in (("width", "height"), ("image_width", "image_height"), ("w", "h")):
        if w_key in data and h_key in data:
            return _numbers(data[w_key], f"{where}: {w_key}")[0], _numbers(data[h_key], f"{where}: {h_key}")[0]
    return None


def _distortion_warning(where: str, key: str) -> None:
    warn_caller(f"{where}: lens distortion ({key}) is not modelled — the model assumes a pinhole camera; "
                "give keypoints detected on the undistorted image")


def _warn_distortion(data: dict, where: str) -> None:
    model = _colmap_model(data)
    if model in COLMAP_MODELS and "params" in data and not any(k in data for k in MATRIX_KEYS):
        one_focal = COLMAP_MODELS[model][1]
        if any(abs(c) > 1e-9 for c in _numbers(data["params"], where)[3 if one_focal else 4:]):
            _distortion_warning(where, f"COLMAP {model} params")
        return
    single = [k for k in NERFSTUDIO_DISTORTION_KEYS if _is_number(data.get(k)) and abs(data[k]) > 1e-9]
    if single:
        _distortion_warning(where, ", ".join(single))
        return
    for key in DISTORTION_KEYS:
        if key not in data:
            continue
        value = data[key]["data"] if isinstance(data[key], dict) and "data" in data[key] else data[key]
        try:
            coeffs = _numbers(value, where)
        except InputError:
            return
        if any(abs(c) > 1e-9 for c in coeffs):
            _distortion_warning(where, key)
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
        if np.allclose(K[:, 2], [0.0, 0.0, 1.0], atol=1e-6) and abs(K[0, 1]) <= 1e-6 * fx:
            # [[fx, 0, 0], [0, fy, 0], [cx, cy, 1]]: a row-major K's transpose (numpy's K.T, a column-major
            # writer); the old message showed the matrix without saying what was wrong with it
            raise InputError(f"{where}: K's rows and columns are swapped — its last column is [0, 0, 1], the "
                             "principal point in its last row, as numpy's K.T writes it (Open3D's intrinsic_matrix "
                             f"is read column by column): give it row by row, {np.round(K.T, 4).tolist()}")
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


def _swapped_advice(data: dict) -> str:
    """Why a stated size can be this image's turned a quarter: a rotation (EXIF), or a file that writes (H, W).

    Before, only the EXIF rotation was named, also for an image without one whose file wrote ``image_size`` as
    PyTorch3D writes it, (height, width): the advice to swap fx/fy and cx/cy was then wrong."""
    hw = (" — or the file writes image_size as [H, W] (PyTorch3D does): give width and height instead"
          if "image_size" in data else "")
    # an EXIF-rotated image never reaches here (its raw frame's calibration is turned upright): this one has none
    return (" (turned a quarter, and the image has no EXIF orientation that would turn it: give the calibration of "
            f"the image as it is stored{hw})")


def _resize_or_crop_advice(K: np.ndarray) -> str:
    """What to do with a calibration of another size; for a crop, the flags that say it without a new file."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    flags = (f" — or, as fx = fy, focal {fx:g} and principal point ({cx:g} − x0, {cy:g} − y0) with the crop's "
             "corner (x0, y0)" if abs(fx - fy) <= 1e-6 * fx else "")
    return ("; scale fx and cx by the width ratio and fy and cy by the height ratio (for a resize), or subtract the "
            f"crop's corner from cx, cy (for a crop{flags})")


def upright_intrinsics(K: np.ndarray, raw_size: tuple[float, float], orientation: int) -> np.ndarray:
    """K of an image's raw (stored) frame, ``raw_size`` (W, H), turned as its EXIF ``orientation`` (2-8) turns the
    pixels upright (PIL's ``exif_transpose``: 2 mirror, 3 half turn, 4 flip, 5 transpose, 6 a quarter clockwise,
    7 transverse, 8 a quarter counter-clockwise). For 5-8 the focal lengths swap axes; the principal point moves as
    a pixel does — a phone photo (6) takes a raw (cx, cy) to (H − cy, cx), not to (cy, cx). (A mirror also flips
    the camera's handedness; K cannot say that, and the keypoints are of the upright image anyway.)"""
    Wr, Hr = raw_size
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if orientation in (2, 3, 4):
        cx_up, cy_up = {2: (Wr - cx, cy), 3: (Wr - cx, Hr - cy), 4: (cx, Hr - cy)}[orientation]
        return np.array([[fx, 0.0, cx_up], [0.0, fy, cy_up], [0.0, 0.0, 1.0]])
    cx_up, cy_up = {5: (cy, cx), 6: (Hr - cy, cx), 7: (Hr - cy, Wr - cx), 8: (cy, Wr - cx)}[orientation]
    return np.array([[fy, 0.0, cx_up], [0.0, fx, cy_up], [0.0, 0.0, 1.0]])


def _warn_frame_unknown(where: str, K: np.ndarray, image_size, orientation: int | None, sized: bool) -> None:
    """Warn where an EXIF-turned image's calibration may be of its raw frame and nothing tells which: orientations
    2-4 keep the size (mirrored, upside down), and a calibration that states no size (a bare matrix) of a 5-8 one.
    The principal point the raw-frame reading would give is said, so either reading is one edit away."""
    # a stated size tells the frames of a quarter-turned photo apart, except a square one's
    if orientation not in (2, 3, 4, 5, 6, 7, 8) or (sized and orientation in (5, 6, 7, 8)
                                                    and image_size[0] != image_size[1]):
        return
    W, H = image_size
    raw = (W, H) if orientation in (2, 3, 4) else (H, W)
    up = upright_intrinsics(K, raw, orientation)
    turned = {2: "mirrored", 3: "turned a half", 4: "flipped"}.get(orientation, "turned a quarter")
    warn_caller(f"{where}: the image is {turned} upright by its EXIF orientation ({orientation}) and the "
                "calibration is taken as of the upright image; if it is of the raw (sensor) frame, the upright one "
                f"has fx {up[0, 0]:g}, fy {up[1, 1]:g}, principal point ({up[0, 2]:g}, {up[1, 2]:g})"
                + ("" if sized or orientation in (2, 3, 4) else
                   " — or give the file its width and height (the raw frame's) and it is turned with the image"))


def _yaml_float_pattern():
    import re

    # YAML 1.1 (PyYAML) reads a float only with a "." and a signed exponent: "1e-3", "5.0e2" were text
    return re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$")


@functools.lru_cache(maxsize=1)
def _calibration_loader():
    """PyYAML's SafeLoader (what ``yaml.safe_load`` uses: plain data only, no Python objects; its libyaml twin
    CSafeLoader where there is one) and two additions, on a subclass (SafeLoader itself stays as it was for every
    other user in the process): OpenCV's ``!!opencv-matrix`` tag (``tag:yaml.org,2002:opencv-matrix``), read as the
    mapping it is (rows, cols, dt, data), which SafeLoader refuses as an unknown tag, and YAML 1.2's floats without
    a "." or an exponent sign."""
    import yaml

    # libyaml's parser where PyYAML was built with it (the wheels are): the pure-Python one took 8 s on a 750 KB
    # file, a size the bound lets through
    class CalibrationLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        pass

    def opencv_matrix(loader, node):
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, "an !!opencv-matrix must be a mapping",
                                                    node.start_mark)
        return loader.construct_mapping(node, deep=True)

    CalibrationLoader.add_constructor("tag:yaml.org,2002:opencv-matrix", opencv_matrix)
    # the other nodes cv2.FileStorage writes (!!opencv-nd-matrix, !!opencv-sparse-matrix) beside a camera matrix:
    # read as the mappings they are, so the file is not refused over a node that is never used
    CalibrationLoader.add_multi_constructor("tag:yaml.org,2002:opencv-",
                                            lambda loader, _suffix, node: opencv_matrix(loader, node))
    CalibrationLoader.add_implicit_resolver("tag:yaml.org,2002:float", _yaml_float_pattern(), list("-+0123456789."))
    return CalibrationLoader


def _read_yaml(p: Path):
    """The value of a small YAML calibration file, every way it can fail an :class:`InputError` naming the file, as
    JSON's are (:func:`hmrcritic.io.read_small_json`): bounded in size before it is read, safe-loaded, and only a
    mapping or a matrix (a list) kept — any text is a YAML scalar, so a wrong file read as one string."""
    if not p.is_file():
        raise not_a_file_error(p, "intrinsics")
    size = p.stat().st_size
    if size > MAX_INTRINSICS_FILE_BYTES:
        raise InputError(f"{p}: {size} bytes is not an intrinsics file (at most "
                         f"{MAX_INTRINSICS_FILE_BYTES // 1_000_000} MB)")
    try:
        import yaml
    except ImportError:
        raise InputError(f"{p}: reading a YAML calibration needs PyYAML (pip install pyyaml), or give it as JSON"
                         ) from None
    raw = p.read_bytes()
    if raw.lstrip(b"\xef\xbb\xbf").startswith(b"%YAML:"):
        # OpenCV's "%YAML:1.0" directive is no YAML (PyYAML wants "%YAML 1.0"): the line is dropped, its newline kept
        # so an error's line number is still the file's
        raw = raw[raw.find(b"\n"):] if b"\n" in raw else b""
    try:
        # a SafeLoader subclass: plain data only. Every document, the empty ones dropped: ``ros2 topic echo --once
        # /camera_info > cam.yaml`` (and ROS 1's rostopic echo) ends the message with "---", an empty second one
        # an alias (``*name``) shares its anchor's node, and whatever walks the value (a message's repr, a check)
        # expands it: a 600-byte file of nested aliases made 10**9 numbers (minutes, gigabytes). No calibration
        # writer (OpenCV, ROS, JSON) writes one: refused before anything is built
        # (parsed for them only where one can be: an alias is written with "*", and the parse doubles the read)
        if b"*" in raw and any(isinstance(event, yaml.AliasEvent)
                               for event in yaml.parse(raw, Loader=_calibration_loader())):
            raise InputError(f"{p}: YAML aliases (*name) are not read in a calibration file: write the values out")
        docs = [d for d in yaml.load_all(raw, Loader=_calibration_loader()) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{p}: not valid YAML ({problem}"
                         + (f" at line {mark.line + 1})" if mark is not None else ")")) from None
    except RecursionError:
        raise InputError(f"{p}: YAML nested too deeply to be intrinsics") from None
    except ValueError:  # an integer of thousands of digits (Python's int-parsing limit)
        raise InputError(f"{p}: holds a number thousands of digits long, not intrinsics data") from None
    if len(docs) > 1:
        raise InputError(f"{p}: holds {len(docs)} YAML documents (\"---\" between them): give one calibration")
    data = docs[0] if docs else None
    if not isinstance(data, dict | list):
        raise InputError(f"{p}: holds no calibration: a YAML mapping of fields (or a matrix) is needed, this file is "
                         + ("empty" if data is None else "plain text" if isinstance(data, str)
                            else f"a single {type(data).__name__}") + f" ({FORMATS})")
    return data


def read_intrinsics_json(path, image_size: tuple[int, int], exif_orientation: int | None = None) -> np.ndarray:
    """K (3,3) float32 from a calibration file (formats: the module docstring; YAML for a ``.yaml``/``.yml`` name,
    else JSON), for an image of ``image_size`` (W, H) as used (upright). Errors are :class:`InputError` naming the
    file.

    A file that states the raw frame's size of an image whose ``exif_orientation`` (5-8) turns it upright is
    turned with it (:func:`upright_intrinsics`): calibration tools see the sensor's frame, while the image (and its
    keypoints, as OpenCV-based detectors read it) is used upright. Without a stated size the frame cannot be told:
    such an image warns."""
    if not isinstance(path, str | os.PathLike):
        raise InputError(f"intrinsics must be a file path (str or Path), got {type(path).__name__}")
    p = Path(path)
    data = (_read_yaml(p) if p.suffix.lower() in YAML_SUFFIXES
            else read_small_json(p, "intrinsics", MAX_INTRINSICS_FILE_BYTES))
    where = str(p)
    if isinstance(data, dict):
        K = _matrix_from_object(data, where)
        size = _stated_size(data, where)
        W, H = image_size
        rotated = exif_orientation in (5, 6, 7, 8)
        if size is not None and (abs(size[0] - W) > 0.5 or abs(size[1] - H) > 0.5):
            swapped = abs(size[0] - H) <= 0.5 and abs(size[1] - W) <= 0.5
            if swapped and rotated:  # the raw frame's calibration of a photo used upright: turn it too
                K = upright_intrinsics(K, size, exif_orientation)
            else:
                raise InputError(
                    f"{where}: the intrinsics are for a {size[0]:g}x{size[1]:g} image, this one is {W}x{H}"
                    + (_swapped_advice(data) if swapped else _resize_or_crop_advice(K)))
        else:
            _warn_frame_unknown(where, K, image_size, exif_orientation, sized=size is not None)
        _warn_distortion(data, where)
    else:
        K = _matrix_from(data, where)
        _warn_frame_unknown(where, K, image_size, exif_orientation, sized=False)
    return check_intrinsics(K, image_size, where)


def check_principal_point(value) -> tuple[float, float]:
    """``(cx, cy)`` as two finite floats, or :class:`InputError` (a string, a bool, one number, NaN)."""
    if (isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 2
            or any(isinstance(v, str | bytes) for v in value)):  # ["1", "2"] passed float() while a focal "1" did not
        raise InputError(f"principal_point must be (cx, cy) in pixels, got {value!r}")
    try:
        cx, cy = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"principal_point must be two numbers (cx, cy) in pixels, got {value!r}") from None
    if not (math.isfinite(cx) and math.isfinite(cy)) or any(isinstance(v, bool) for v in value):
        raise InputError(f"principal_point must be two finite numbers (pixels), got {value!r}")
    return cx, cy


def user_intrinsics(image_size: tuple[int, int], focal: float | None = None, principal_point=None,
                    intrinsics=None, exif_orientation: int | None = None) -> np.ndarray:
    """K (3,3) float32 for a user image of ``image_size`` (W, H): a calibration file (``intrinsics``, a path), or
    the default guess — focal = max(W, H), principal point at the centre — with ``focal`` and/or
    ``principal_point`` (cx, cy) replacing its parts. A file together with either part is refused: which one wins
    would be a guess. ``exif_orientation``: the image's tag, so a calibration of its raw frame is turned upright
    (:func:`read_intrinsics_json`)."""
    W, H = image_size
    if intrinsics is not None:
        if focal is not None or principal_point is not None:
            raise InputError("give either an intrinsics file or focal / principal point, not both")
        return read_intrinsics_json(intrinsics, image_size, exif_orientation=exif_orientation)
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
    "upright_intrinsics",
    "check_intrinsics",
    "check_principal_point",
    "parse_principal_point",
    "read_intrinsics_json",
    "user_intrinsics",
]
