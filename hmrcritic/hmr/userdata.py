"""Your own data: labelled scenes for ``hmrcritic evaluate --data FILE.npz``, unlabelled inputs for ``hmrcritic
export --data FILE`` (session 33; before, both took the built-in splits only).

**Labelled scenes** (:func:`read_labelled`). Before, a user with labelled data of their own (3DPW, EMDB, a capture
of theirs, converted) had to call :func:`hmrcritic.hmr.metrics.standard_metrics` themselves. One ``.npz``
(``numpy.savez``) with a row per scene:

- ``keypoints (n,17,3)``: COCO-17 ``[u, v, confidence]`` in pixels (confidence 0 = not visible);
- ``K (n,3,3)`` or one ``(3,3)`` for all: pinhole intrinsics in pixels (no skew);
- ``image_size (n,2)`` or one ``(2,)``: (W, H) in whole pixels;
- the labels, SMPL parameters in the **OpenCV camera frame** (x right, y down, z forward; metres), as the built-in
  splits hold them: ``global_orient (n,3)``, ``body_pose (n,69)``, ``betas (n,10)``, ``transl (n,3)`` — or the layouts
  other SMPL tools write (``poses (n,72)``, per-joint ``(n,23,3)``, fewer betas: :mod:`hmrcritic.hmr.smpl_arrays`).

The labels are posed with the body model in use (``HMRCRITIC_BODY_MODEL``, else the built-in mannequin), so SMPL
labels of a real dataset need that SMPL file set; on the mannequin the figures compare the model's bodies with the
mannequin posed as the labels say, which is what the shipped model was trained on — the evaluation says so.

**Unlabelled inputs** (:func:`read_inputs`) — what the paper aligns on: images with 2D keypoints and no 3D labels.
Either the same ``.npz`` without labels (an optional ``sample_id (n,)`` of strings names the rows), or a JSON lines
file (or a JSON list) with one object per input::

    {"image": "imgs/a.jpg", "keypoints": "kps/a.json"}
    {"image": "imgs/b.jpg", "keypoints": "kps/b.json", "person": 1, "id": "b-second", "focal": 1400,
     "principal_point": [900, 500]}

``image`` and ``keypoints`` are read as ``sample``/``critique`` read them (any keypoint format they take); the
optional ``id`` (default: the image's stem, with ``_p<person>``), ``person``, ``keypoint_layout``, ``focal``,
``principal_point`` and ``intrinsics`` (a calibration file) are theirs too; relative paths are relative to the list's
folder. Every entry is read before anything is sampled: a bad one stops the read naming its line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hmrcritic import config
from hmrcritic.errors import InputError, warn_caller
from hmrcritic.hmr.smpl_arrays import check_smpl_arrays
from hmrcritic.io import not_a_file_error, read_npz

# ~0.6 kB a scene: a million scenes fit
MAX_LABELLED_BYTES = 1 << 30
INPUT_KEYS = ("keypoints", "K", "image_size")
FORMAT = ("keypoints (n,17,3) px, K (n,3,3) or (3,3), image_size (n,2) or (2,), and SMPL labels global_orient "
          "(n,3), body_pose (n,69), betas (n,10), transl (n,3) in the OpenCV camera frame")
# what export --data reads from an .npz: the inputs without labels (FORMAT's labels named export users' files wrong)
INPUTS_FORMAT = ("keypoints (n,17,3) px, K (n,3,3) or (3,3), image_size (n,2) or (2,), and optionally sample_id "
                 "(n,)")


def _load_npz(p: Path, fmt: str = FORMAT) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive (:func:`hmrcritic.io.read_npz`); ``fmt``: what the errors say is expected
    (labelled scenes, or :data:`INPUTS_FORMAT` for unlabelled inputs)."""
    return read_npz(p, fmt, MAX_LABELLED_BYTES, "split it")


def _numbers(a: np.ndarray, key: str, where: str) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise InputError(f"{where}: {key} holds {a.dtype} values, expected real numbers")
    return a.astype(np.float64)


def _per_scene(a: np.ndarray, key: str, shape: tuple, n: int, where: str) -> np.ndarray:
    """``a`` as ``(n, *shape)``: one row per scene, or one shared by all."""
    if a.shape == shape:
        return np.broadcast_to(a, (n, *shape)).copy()
    if a.shape != (n, *shape):
        raise InputError(f"{where}: {key} has shape {a.shape}, expected ({n}, {', '.join(map(str, shape))}) or "
                         f"{shape} for every scene")
    return a


def _first(mask: np.ndarray) -> int:
    return int(np.argwhere(mask)[0][0])


def _check_inputs(kp: np.ndarray, K: np.ndarray, size: np.ndarray, where: str) -> None:
    """The inputs' checks, vectorised over the scenes (a python loop per scene took seconds at 100k)."""
    vis = kp[..., 2] > 0
    conf_ok = np.isfinite(kp[..., 2]) & (kp[..., 2] >= 0) & (kp[..., 2] <= 1.1)  # a heatmap peak may pass 1
    if not conf_ok.all():
        i = _first((~conf_ok).any(-1))
        raise InputError(f"{where}: keypoint confidences of scene {i} are not in [0, 1]: "
                         f"{np.round(kp[i, :, 2], 3).tolist()}")
    bad = (vis & ~np.isfinite(kp[..., :2]).all(-1)).any(-1)
    if bad.any():
        raise InputError(f"{where}: a visible keypoint of scene {_first(bad)} is NaN/inf")
    if not np.isfinite(K).all():
        raise InputError(f"{where}: K of scene {_first(~np.isfinite(K).all((1, 2)))} contains NaN/inf")
    fx, fy = K[:, 0, 0], K[:, 1, 1]
    pinhole = ((fx > 0) & (fy > 0) & (np.abs(K[:, 0, 1]) <= 1e-6 * fx) & (np.abs(K[:, 1, 0]) <= 1e-6 * fy)
               & np.isclose(K[:, 2], [0.0, 0.0, 1.0], atol=1e-6).all(-1))
    if not pinhole.all():
        i = _first(~pinhole)
        raise InputError(f"{where}: K of scene {i} is not pinhole intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] "
                         f"with fx, fy > 0: {np.round(K[i], 4).tolist()}")
    whole = np.isfinite(size).all(-1) & (size > 0).all(-1) & (size == np.round(size)).all(-1)
    if not whole.all():
        i = _first(~whole)
        raise InputError(f"{where}: image_size of scene {i} is {size[i].tolist()}, expected whole pixels (W, H) > 0")
    normalised = (vis.any(-1) & (np.where(vis, np.abs(kp[..., 0]), 0).max(-1) <= 1.0)
                  & (np.where(vis, np.abs(kp[..., 1]), 0).max(-1) <= 1.0) & (size.max(-1) > 2))
    if normalised.any():
        raise InputError(f"{where}: the keypoints of scene {_first(normalised)} lie within [0, 1]: give pixels "
                         "(multiply u by W and v by H)")


# a body's root (transl) projects within ~0.4 of its keypoints' box diagonal of the box's centre (the synthetic splits:
# median 0.1, at most 0.4; SMPL's pelvis offset adds ~0.15); labels in a world frame land several boxes away
OTHER_FRAME_MEDIAN_RATIO = 0.75


def _warn_other_frame(kp: np.ndarray, K: np.ndarray, transl: np.ndarray, where: str) -> None:
    """Warn when the labelled bodies, projected through K, are not where their keypoints are (most scenes).

    The behind-the-camera refusal catches an OpenGL-frame file; a world-frame one (3DPW's ``trans``/``poses``
    before its ``cam_poses`` are applied) usually has its bodies in front of the camera and was evaluated without
    a word. Its transl does not enter the figures (they are root-aligned), but its global_orient does: MPJPE and
    PVE then compare bodies turned as the world frame is. A warning, not an error: one scene's odd box (a person
    mostly hidden) is no proof, so the median over the file decides."""
    uvw = np.einsum("nij,nj->ni", K, transl)
    uv = uvw[:, :2] / uvw[:, 2:]
    vis = kp[..., 2] > 0
    seen = vis.sum(-1) >= 2
    if not seen.any():
        return
    lo = np.where(vis[..., None], kp[..., :2], np.inf).min(1)
    hi = np.where(vis[..., None], kp[..., :2], -np.inf).max(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.linalg.norm(uv - (lo + hi) / 2, axis=-1) / np.linalg.norm(hi - lo, axis=-1)
    ratio = ratio[seen & np.isfinite(ratio)]
    if ratio.size and np.median(ratio) > OTHER_FRAME_MEDIAN_RATIO:
        warn_caller(f"{where}: the bodies (transl projected through K) lie a median {np.median(ratio):.1f} person "
                    "sizes from their keypoints: the labels look to be in another frame than the camera's (3DPW's "
                    "trans and poses are in the world frame: apply cam_poses first); transl does not enter the "
                    "figures, but global_orient does (MPJPE and PVE compare the bodies as turned)")


def read_labelled(path, limit: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Inputs and SMPL labels of a user's labelled ``.npz`` (the module docstring), checked, as float32 arrays with
    one row per scene (``K (n,3,3)``, ``image_size (n,2)``), and the number of scenes kept (``limit``: the first
    ones). Every error is one :class:`InputError` naming the file and, where it is one scene's, that scene."""
    if not isinstance(path, str | os.PathLike):
        raise InputError(f"data must be a file path (str or Path), got {type(path).__name__}")
    p = config.path_arg(path, "data")  # "" refused, "~" expanded, as every path argument
    if not p.is_file():
        raise not_a_file_error(p, "labelled .npz")
    where = str(p)
    if _is_json_text(p):
        # an input list given to evaluate read "not a readable .npz archive of arrays (ValueError)": say which
        # command takes it
        raise InputError(f"{where}: a JSON file, not an .npz: evaluate --data takes labelled scenes as one .npz "
                         f"({FORMAT}); a list of images and keypoint files without labels is for export --data")
    arrays = _load_npz(p)
    missing = [k for k in INPUT_KEYS if k not in arrays]
    if missing:
        raise InputError(f"{where}: missing {', '.join(missing)}; expected {FORMAT}")
    kp = _numbers(arrays["keypoints"], "keypoints", where)
    if kp.ndim != 3 or kp.shape[1:] != (17, 3):
        raise InputError(f"{where}: keypoints has shape {kp.shape}, expected (n, 17, 3) COCO-17 [u, v, confidence]")
    n = kp.shape[0]
    if n == 0:
        raise InputError(f"{where}: no scenes")
    K = _per_scene(_numbers(arrays["K"], "K", where), "K", (3, 3), n, where)
    size = _per_scene(_numbers(arrays["image_size"], "image_size", where), "image_size", (2,), n, where)
    if not set(arrays) - {*INPUT_KEYS, "sample_id"}:
        # inputs without labels, as export --data takes them: "missing array 'global_orient'" did not say that
        raise InputError(f"{where}: no SMPL labels (global_orient, body_pose, betas, transl), only inputs: "
                         "evaluate needs labelled scenes; inputs without labels are for export --data")
    labels = check_smpl_arrays({k: v for k, v in arrays.items() if k not in INPUT_KEYS}, where, rows="scenes",
                               row="scene", shared_ok=False)
    if labels["body_pose"].shape[0] != n:
        raise InputError(f"{where}: the labels have {labels['body_pose'].shape[0]} scenes, keypoints {n}")
    _check_inputs(kp, K, size, where)
    behind = labels["transl"][:, 2] <= 0
    if behind.any():
        i = _first(behind)
        raise InputError(f"{where}: scene {i}'s body is at depth {labels['transl'][i, 2]:.3g} m, behind the camera: "
                         "the labels must be in the OpenCV camera frame (z forward); from a y-up / z-backward "
                         "(OpenGL) frame negate y and z of transl and rotate global_orient by 180° about x")
    _warn_other_frame(kp, K, labels["transl"], where)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a whole number ≥ 1 of scenes (or None for all), got {limit!r}")
    keep = n if limit is None else min(int(limit), n)
    out = {"keypoints": kp, "K": K, "image_size": size, **labels}
    return {k: np.ascontiguousarray(v[:keep], dtype=np.float32) for k, v in out.items()}, keep


INPUT_FIELDS = ("image", "keypoints", "id", "person", "keypoint_layout", "focal", "principal_point", "intrinsics")
MAX_INPUT_LIST_BYTES = 64 << 20


def _input_entries(p: Path) -> list[tuple[str, object]]:
    """(where, parsed value) of each entry: ``FILE:LINE`` of a JSON lines file, ``FILE item N`` of a JSON list.

    The text is decoded as json decodes a file — UTF-8 with or without a byte-order mark, UTF-16/32 — since
    Windows tools write those: a JSON list behind a UTF-8 BOM was read as JSON lines ("line 1: not a JSON object
    ('[')") and a PowerShell (UTF-16) list as garbage. Text that is not in one of them is refused naming its line,
    not read with replacement characters (a cp1252 "é" became a "file not found" for a name with "?" in it).
    Lines end at "\\n" only (a "\\r" before it dropped): str.splitlines also splits at U+2028 and U+0085, which
    JSON allows unescaped inside a string (a file name)."""
    import json

    from hmrcritic.io import read_small_json

    raw = p.read_bytes() if p.stat().st_size <= MAX_INPUT_LIST_BYTES else None
    if raw is None:
        raise InputError(f"{p}: larger than {MAX_INPUT_LIST_BYTES >> 20} MB: not an input list (split it)")
    encoding = json.detect_encoding(raw)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1 if encoding.startswith("utf-8") else 1
        raise InputError(f"{p}:{line}: not UTF-8 text (the list names files: save it as UTF-8)") from None
    if text.lstrip("\ufeff \t\r\n")[:1] == "[":  # one JSON list
        data = read_small_json(p, "input list", MAX_INPUT_LIST_BYTES)
        return [(f"{p} item {i}", entry) for i, entry in enumerate(data, 1)]
    entries = []
    text = text.lstrip("\ufeff")
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entries.append((f"{p}:{number}", json.loads(line)))
        except (ValueError, RecursionError):
            hint = ""
            try:  # one object written over several lines (indented): say what the two accepted layouts are
                if isinstance(json.loads(text), dict):
                    hint = ("; the file is one JSON object over several lines — a list has one object a line "
                            "(JSON lines) or is a JSON list [{...}, {...}]")
            except (ValueError, RecursionError):
                pass
            raise InputError(f"{p}:{number}: not a JSON object ({line.strip()[:60]!r}){hint}") from None
    return entries


def _input_path(value, field: str, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: {field} must be a file path (text), got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _sample_of(entry, where: str, base: Path):
    """One input list entry as a :class:`hmrcritic.hmr.data.Sample` (labels: none), or an InputError at ``where``."""
    from hmrcritic.hmr.data import sample_from_user

    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected an object with image and keypoints, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(INPUT_FIELDS))
    if unknown:  # a typo ("keypoint", "princpal_point") dropped silently would export under the default camera
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(INPUT_FIELDS)})")
    missing = [k for k in ("image", "keypoints") if k not in entry]
    if missing:
        raise InputError(f"{where}: missing {' and '.join(missing)}")
    kwargs = {k: entry[k] for k in ("person", "focal", "principal_point") if entry.get(k) is not None}
    for k in ("person", "focal"):
        if k in kwargs and (isinstance(kwargs[k], bool) or not isinstance(kwargs[k], int | float)):
            raise InputError(f"{where}: {k} must be a number, got {kwargs[k]!r}")
    if entry.get("intrinsics") is not None:
        kwargs["intrinsics"] = _input_path(entry["intrinsics"], "intrinsics", where, base)
    # outside the try below, which prefixes ``where``: _input_path's errors name it already (a null image read
    # "inputs.jsonl:1: inputs.jsonl:1: image must be a file path")
    image = _input_path(entry["image"], "image", where, base)
    keypoints = _input_path(entry["keypoints"], "keypoints", where, base)
    try:
        sample = sample_from_user(image, keypoints, keypoint_layout=entry.get("keypoint_layout") or "coco17",
                                  decode_image=False, **kwargs)  # the header's size: a list of photos reads fast
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    if entry.get("id") is not None:
        if not isinstance(entry["id"], str | int) or isinstance(entry["id"], bool) or not str(entry["id"]).strip():
            # "or a number" refused 1.5 under a message that allowed it: a float id (1.5, 3.0, 1e20 -> "1e+20")
            # would not read back as written, so whole numbers only, and the message says so
            raise InputError(f"{where}: id must be text or a whole number, got {entry['id']!r}")
        sample.sample_id = str(entry["id"])
    return sample


def _samples_of_npz(p: Path) -> list:
    from hmrcritic.hmr.data import Sample

    arrays = _load_npz(p, INPUTS_FORMAT)
    where = str(p)
    missing = [k for k in INPUT_KEYS if k not in arrays]
    if missing:
        raise InputError(f"{where}: missing {', '.join(missing)}; expected {INPUTS_FORMAT}")
    kp = _numbers(arrays["keypoints"], "keypoints", where)
    if kp.ndim != 3 or kp.shape[1:] != (17, 3) or kp.shape[0] == 0:
        raise InputError(f"{where}: keypoints has shape {kp.shape}, expected (n, 17, 3) COCO-17 [u, v, confidence]")
    n = kp.shape[0]
    K = _per_scene(_numbers(arrays["K"], "K", where), "K", (3, 3), n, where)
    size = _per_scene(_numbers(arrays["image_size"], "image_size", where), "image_size", (2,), n, where)
    _check_inputs(kp, K, size, where)
    if "sample_id" in arrays:
        ids = arrays["sample_id"]
        if ids.shape != (n,) or ids.dtype.kind not in "UiS":
            raise InputError(f"{where}: sample_id must be ({n},) strings or integers, got {ids.dtype} {ids.shape}")
        ids = [i.decode(errors="replace") if isinstance(i, bytes) else str(i) for i in ids.tolist()]
    else:
        # a fixed width, as the splits' ids have: padded to the row count, rows appended to the file renamed every
        # row (kp-0 → kp-00) and a resumed export sampled the whole file again beside its old groups
        ids = [f"{p.stem}-{i:06d}" for i in range(n)]
    return [Sample(sample_id=ids[i], keypoints=kp[i].astype(np.float32), K=K[i].astype(np.float32),
                   image_size=(int(size[i, 0]), int(size[i, 1]))) for i in range(n)]


def read_inputs(path) -> list:
    """Unlabelled inputs (:class:`hmrcritic.hmr.data.Sample`, no labels) from an ``.npz`` or an input list (the
    module docstring), every one read and checked; ids must be unique. One :class:`InputError` naming the file
    and the entry (a list's line) otherwise."""
    if not isinstance(path, str | os.PathLike):
        raise InputError(f"inputs must be a file path (str or Path), got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise not_a_file_error(p, "input list")
    if p.suffix.lower() == ".npz" or _is_numpy_file(p):
        samples = _samples_of_npz(p)
        lines = None
    else:
        entries = _input_entries(p)
        if not entries:
            raise InputError(f"{p}: no inputs listed")
        samples = [_sample_of(entry, where, p.parent) for where, entry in entries]
        # a JSON lines file's places are "FILE:LINE" (a JSON list's "FILE item N": its items are the inputs)
        lines = [where.removeprefix(f"{p}:") for where, _ in entries] if entries[0][0].startswith(f"{p}:") else []
    first: dict[str, int] = {}
    for i, s in enumerate(samples):
        if s.sample_id in first:
            j = first[s.sample_id]
            if lines is None:  # an .npz: its rows, from 0 as numpy and the other .npz errors count them
                which, place = f"sample_id rows {j} and {i}", " (rows from 0)"
            else:
                # with the line numbers: "inputs 1 and 2" sent a user to lines 1 and 2 of a list whose comments and
                # blank lines put the two entries on lines 3 and 5 (the README promises "refused naming the line")
                which, place = f"inputs {j + 1} and {i + 1}", f" (lines {lines[j]} and {lines[i]})" if lines else ""
            raise InputError(f"{p}: {which} have the same id {s.sample_id!r}{place}; "
                             "give each its own (\"id\" in the list, sample_id in an .npz)")
        first[s.sample_id] = i
    return samples


def _is_json_text(p: Path) -> bool:
    """Whether ``p`` starts as an input list does: a JSON list or object first, after a byte-order mark, blank and
    ``#`` comment lines (which the input list reader skips), in any encoding json detects (UTF-8/16/32)."""
    import json

    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    text = head.decode(json.detect_encoding(head), errors="ignore").lstrip("\ufeff")
    for line in text.split("\n"):
        if line.strip() and not line.lstrip().startswith("#"):
            return line.lstrip()[:1] in ("{", "[")
    return False


def _is_numpy_file(p: Path) -> bool:
    """An ``.npz`` (a zip) or ``.npy`` by its first bytes, whatever its name: ``export --data kp.npy`` was read as
    an input list and refused as "kp.npy:1: not UTF-8 text (the list names files: save it as UTF-8)", which sent
    the user to their text editor; read as an archive, it says it is a single .npy array, not an .npz."""
    try:
        with open(p, "rb") as f:
            head = f.read(6)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head == b"\x93NUMPY"
