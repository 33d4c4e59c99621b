"""The body model: ``smplx.SMPL`` (24 joints, 10 betas) behind one small, device-agnostic API.

Why a wrapper: every caller (data generation, the diffusion sampler, metrics, renders, the agent's evidence)
needs the same three things from SMPL: batched vertices, the 24 joints, and a few named keypoint sets
(``smpl24``, ``lsp14``, COCO-17 with face points taken from vertices). The wrapper also decides *which* model
file is used (an explicit path, ``HMRCRITIC_BODY_MODEL``, else the generated mannequin of
:mod:`hmrcritic.hmr.mannequin`) and turns every way a model file can be wrong into one
:class:`~hmrcritic.errors.AssetError` line that names the file and the expected layout.

Model files are read with a restricted unpickler (numpy, scipy.sparse and plain Python only), so a model
file cannot run code. Official SMPL ``.pkl`` files contain ``chumpy`` objects; chumpy does not work on
Python 3.11 / numpy 2, so :func:`convert_smpl_pkl` rewrites them as plain numpy without importing chumpy.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hmrcritic import config
from hmrcritic.errors import AssetError, InputError, keywords_checked, warn_caller
from hmrcritic.hmr import mannequin

SMPL_JOINT_NAMES: list[str] = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
]  # fmt: skip
SMPL_PARENTS: list[int] = list(mannequin.PARENTS)
EXTRA_NAMES: list[str] = ["nose", "reye", "leye", "rear", "lear"]  # order of BodyOutput.extra (smplx's)

# LSP-14 order: r_ankle, r_knee, r_hip, l_hip, l_knee, l_ankle, r_wrist, r_elbow, r_shoulder, l_shoulder,
# l_elbow, l_wrist, neck, head — taken from SMPL joints.
JOINT_SETS: dict[str, list[int]] = {
    "smpl24": list(range(24)),
    "lsp14": [8, 5, 2, 1, 4, 7, 21, 19, 17, 16, 18, 20, 12, 15],
}
COCO17_NAMES: list[str] = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
# Indices into cat([joints (24), extra (5)]): face points from vertices, the rest from SMPL joints.
COCO17_FROM_SMPL: list[int] = [24, 26, 25, 28, 27, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8]

REQUIRED_LAYOUT = {
    "v_template": "(V,3)", "f": "(F,3)", "shapedirs": "(V,3,>=10)", "posedirs": "(V,3,207)",
    "J_regressor": "(24,V)", "weights": "(V,24)", "kintree_table": "(2,24)",
}  # fmt: skip
_LAYOUT_TEXT = (
    "expected a chumpy-free SMPL model: a pickled dict or .npz with "
    + ", ".join(f"{k} {v}" for k, v in REQUIRED_LAYOUT.items())
    + " (and vertex_ids for nose, reye, leye, rear, lear unless V = 6890)"
)


def joint_set(name: str) -> list[int]:
    """SMPL joint indices of a named joint set (``smpl24`` or ``lsp14``)."""
    try:
        return list(JOINT_SETS[name])
    except KeyError:
        raise ValueError(f"unknown joint set {name!r}; known: {', '.join(JOINT_SETS)}") from None


@dataclass
class BodyOutput:
    vertices: torch.Tensor  # (B,V,3)
    joints: torch.Tensor  # (B,24,3)
    extra: torch.Tensor  # (B,5,3): nose, reye, leye, rear, lear


class BodyModel:
    """A loaded SMPL-layout model (real SMPL or the mannequin) with a batched forward pass.

    Call with ``global_orient (B,3)``, ``body_pose (B,69)``, ``betas (B,10)`` and optional ``transl (B,3)``
    (tensors or arrays; any leading shape, e.g. ``(B,N,…)`` for hypothesis groups, which the outputs keep).
    Inputs are moved to the model's device; gradients flow through.
    """

    def __init__(self, arrays: dict, name: str, device: str | torch.device = "cpu"):
        import smplx
        from smplx.utils import Struct

        self.name = name
        # sha256 of the model file (None: the mannequin, which the project generates): what a split's scenes were
        # posed with, since the path names no content (a file replaced at the same path, a relative path)
        self.source_sha256: str | None = None
        self.device = torch.device(device)
        self.faces = np.asarray(arrays["f"], dtype=np.int64)
        self.num_vertices = int(arrays["v_template"].shape[0])
        self.num_betas = 10
        vertex_ids = arrays.get("vertex_ids")
        if vertex_ids is None:
            from smplx.vertex_ids import vertex_ids as smplx_ids

            if self.num_vertices != 6890:
                raise AssetError(
                    f"{name}: model has {self.num_vertices} vertices and no 'vertex_ids' (nose, reye, leye, "
                    "rear, lear); only 6890-vertex SMPL files can use the standard face vertices"
                )
            vertex_ids = smplx_ids["smplh"]
        self.vertex_ids = {k: int(vertex_ids[k]) for k in EXTRA_NAMES}
        part = arrays.get("part_of_vertex")
        self.part_of_vertex = (
            np.asarray(part, dtype=np.int64) if part is not None else np.asarray(arrays["weights"]).argmax(1)
        )
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a warning about 10 betas
            self.smpl = smplx.SMPL(
                model_path=name,
                data_struct=Struct(**arrays),
                num_betas=10,
                vertex_ids=self.vertex_ids,
                use_hands=False,
                use_feet_keypoints=False,
                create_global_orient=False,
                create_body_pose=False,
                create_betas=False,
                create_transl=False,
            )
        self.smpl.to(self.device).eval()
        for p in self.smpl.parameters():
            p.requires_grad_(False)

    def _as(self, x, width: int, what: str) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        if t.shape[-1:] != (width,):
            raise ValueError(f"{what} must have last dimension {width}, got shape {tuple(t.shape)}")
        return t

    def __call__(self, global_orient, body_pose, betas, transl=None) -> BodyOutput:
        go = self._as(global_orient, 3, "global_orient")
        bp = self._as(body_pose, 69, "body_pose")
        be = self._as(betas, 10, "betas")
        tr = self._as(transl, 3, "transl") if transl is not None else None
        parts = {"global_orient": go, "body_pose": bp, "betas": be, **({"transl": tr} if tr is not None else {})}
        lead = torch.broadcast_shapes(*(t.shape[:-1] for t in parts.values()))
        for name, t in parts.items():
            # broadcasting aligns trailing dims: a (B,10) betas under (B,N,69) poses paired betas row n with
            # hypothesis n (silently, when B == N). Fewer leading dims are fine only when they are all 1.
            if t.dim() - 1 < len(lead) and any(s != 1 for s in t.shape[:-1]):
                raise ValueError(f"BodyModel: {name} {tuple(t.shape)} has fewer leading dims than {tuple(lead)}; "
                                 "give every input the same leading dims, e.g. betas[:, None] for (B,N,…) poses")
        n = int(np.prod(lead)) if len(lead) else 1
        # the width spelled out: reshape(0, -1) is ambiguous and raised before the empty-batch branch below
        go, bp, be = (t.expand(*lead, t.shape[-1]).reshape(n, t.shape[-1]) for t in (go, bp, be))
        if n == 0:
            z = go.new_zeros
            return BodyOutput(z(*lead, self.num_vertices, 3), z(*lead, 24, 3), z(*lead, 5, 3))
        out = self.smpl(global_orient=go, body_pose=bp, betas=be, return_verts=True)
        verts, joints = out.vertices, out.joints
        if tr is not None:
            t = tr.expand(*lead, 3).reshape(n, 1, 3)
            verts, joints = verts + t, joints + t
        return BodyOutput(
            vertices=verts.reshape(*lead, self.num_vertices, 3),
            joints=joints[:, :24].reshape(*lead, 24, 3),
            extra=joints[:, 24:29].reshape(*lead, 5, 3),
        )

    def coco17(self, out: BodyOutput) -> torch.Tensor:
        """COCO-17 keypoints (…,17,3): face points from the extra vertex joints, the rest from SMPL joints."""
        allj = torch.cat([out.joints, out.extra], dim=-2)
        return allj[..., COCO17_FROM_SMPL, :]

    def template(self, betas=None) -> BodyOutput:
        """Zero-pose body (betas default 0): the canonical T-pose, y up, facing +z."""
        be = torch.zeros(1, 10) if betas is None else betas
        zeros = torch.zeros(1, 3)
        return self(zeros, torch.zeros(1, 69), be)

    def __repr__(self) -> str:
        return (
            f"BodyModel(name={self.name!r}, vertices={self.num_vertices}, faces={len(self.faces)}, "
            f"device={self.device})"
        )


# ------------------------------------------------------------------------------------------ file reading
class _ChumpyFound(Exception):
    pass


class _ChStandIn:
    """Stands in for ``chumpy.ch.Ch`` (and any chumpy class) while unpickling: keeps the pickled state and
    exposes the underlying array as ``x`` / ``r``."""

    _state = None

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._state = state

    def __reduce__(self):  # never re-pickled as a stand-in
        raise TypeError("chumpy stand-in cannot be pickled; convert it with .x first")

    @property
    def x(self):
        state = self._state
        if isinstance(state, tuple):  # (dict, slotstate)
            state = next((s for s in state if isinstance(s, dict)), None)
        if isinstance(state, dict):
            value = state.get("x")  # a plain Ch stores its array as ``x`` (chumpy's __getstate__)
            if isinstance(value, _ChStandIn):
                value = value.x
            if value is not None and not isinstance(value, dict):
                return np.asarray(value)
        raise ValueError("chumpy object without a stored array (a derived expression)")

    r = x


class _SparseStandIn:
    """Stands in for a pickled ``scipy.sparse`` matrix from any scipy version (module paths moved).
    Unpickling creates it with ``__new__`` and hands it the matrix's ``__dict__``."""

    _fmt = "csc"
    _state = None

    def __setstate__(self, state):
        self._state = state

    def toarray(self) -> np.ndarray:
        import scipy.sparse as sp

        st = self._state if isinstance(self._state, dict) else {}
        fmt = st.get("format", self._fmt)
        shape = tuple(st.get("_shape", st.get("shape", ())))
        if fmt in ("csc", "csr"):
            cls = sp.csc_matrix if fmt == "csc" else sp.csr_matrix
            return cls((st["data"], st["indices"], st["indptr"]), shape=shape).toarray()
        if fmt == "coo":
            return sp.coo_matrix((st["data"], (st["row"], st["col"])), shape=shape).toarray()
        raise ValueError(f"unsupported sparse format {fmt!r}")


_SPARSE_STANDINS = {
    fmt: type(f"_{fmt}_standin", (_SparseStandIn,), {"_fmt": fmt}) for fmt in ("csc", "csr", "coo")
}


_NUMPY_NAMES = {"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"}
_SAFE_BUILTINS = {"object", "slice", "complex", "set", "frozenset", "bytearray", "range"}


class _ModelUnpickler(pickle.Unpickler):
    """Unpickles numpy / scipy.sparse / plain Python only. chumpy classes become :class:`_ChStandIn` when
    ``allow_chumpy`` (conversion), else raise :class:`_ChumpyFound`."""

    def __init__(self, fh, allow_chumpy: bool):
        super().__init__(fh, encoding="latin1")
        self.allow_chumpy = allow_chumpy

    def find_class(self, module: str, name: str):
        # A dotted name is followed attribute by attribute (protocol 4), so an allowed module is a way to any
        # object reachable from it: numpy.dtypes + "__builtins__.get" reached eval. Plain names only, and from
        # numpy.dtypes only its dtype classes.
        if "." in name or (module == "numpy.dtypes" and not name.endswith("DType")):
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        root = module.split(".")[0]
        if root == "chumpy":
            if not self.allow_chumpy:
                raise _ChumpyFound()
            return _ChStandIn
        if root == "numpy" and (name in _NUMPY_NAMES or module == "numpy.dtypes"):
            return super().find_class(module, name)
        if root == "scipy" and ".sparse" in module:
            for fmt, cls in _SPARSE_STANDINS.items():
                if name.startswith(fmt):
                    return cls
        if module in ("copyreg", "copy_reg") and name in ("_reconstructor", "__newobj__"):
            return super().find_class(module, name)
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # bytes in protocol-2 pickles
            return super().find_class(module, name)
        if module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _plain(value, key: str, path: Path):
    """A stand-in or sparse value as a plain numpy array."""
    if isinstance(value, _ChStandIn):
        try:
            return value.x
        except ValueError as exc:
            raise AssetError(
                f"{path}: key '{key}' is a chumpy expression without stored values ({exc})"
            ) from None
    if isinstance(value, _SparseStandIn):
        # its state is whatever the file holds: one without its arrays, an index pointer of the wrong length or
        # an unknown format raised a bare KeyError / ValueError / TypeError ("error: KeyError: 'data'") that named
        # neither the file nor the key
        try:
            return value.toarray()
        except (KeyError, TypeError, ValueError) as exc:
            raise AssetError(f"{path}: key '{key}' is a sparse matrix that cannot be rebuilt "
                             f"({type(exc).__name__}: {exc}); {_LAYOUT_TEXT}") from None
    if hasattr(value, "toarray") and not isinstance(value, np.ndarray):  # a real scipy sparse matrix
        return value.toarray()
    return value


def _read_raw(path: Path, allow_chumpy: bool) -> dict:
    if not path.exists():
        raise AssetError(f"body model file not found: {path} ({_LAYOUT_TEXT})")
    if not path.is_file():
        raise AssetError(f"body model path is not a file: {path} ({_LAYOUT_TEXT})")
    if zipfile.is_zipfile(path):  # .npz
        pickled = []
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {}
                for k in npz.files:
                    try:
                        data[k] = npz[k]
                    except ValueError as exc:  # an object member: loading it would unpickle
                        if "allow_pickle" not in str(exc):
                            raise
                        pickled.append(k)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            # a member cut short or altered (a bad CRC): the archive is damaged, its layout is not the question, and
            # the layout text ("expected ...") after it read as if the file were of another layout
            raise AssetError(f"{path}: a damaged .npz body model ({type(exc).__name__}: {exc}); copy or convert it "
                             "again") from None
        except Exception as exc:
            raise AssetError(
                f"{path}: unreadable .npz body model ({type(exc).__name__}: {exc}); {_expected(allow_chumpy)}"
            ) from None
        # Members that are pickled objects are never loaded. Those the model does not use (SMPL-X's joint2num and
        # part2num dicts) are left out: one of them made a SMPL-X file read as "unreadable .npz" instead of being
        # named as SMPL-X by _validate; one it uses is named here.
        used = [k for k in pickled if k in REQUIRED_LAYOUT or k in _OPTIONAL_KEYS]
        if used:
            raise AssetError(f"{path}: key(s) {', '.join(used)} are stored as pickled Python objects, which are not "
                             f"loaded; save them as plain numeric arrays; {_LAYOUT_TEXT}")
        return data
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise AssetError(f"{path}: the body model file is empty (0 bytes); copy it again")
    if head.startswith(b"\x93NUMPY"):
        raise AssetError(f"{path}: a single .npy array, not a body model; give the SMPL .pkl or an .npz of arrays; "
                         f"{_expected(allow_chumpy)}")
    if head.startswith(b"PK\x03\x04"):  # a zip's first entry without the zip's directory at its end: cut short
        raise AssetError(f"{path}: a truncated or corrupt .npz body model (a zip archive without its directory); "
                         "copy or convert it again")
    try:
        with open(path, "rb") as fh:
            data = _ModelUnpickler(fh, allow_chumpy).load()
    except _ChumpyFound:
        # official SMPL+H and MANO files are chumpy pickles too: they were told to convert, and the conversion then
        # said they are the wrong model; read with stand-ins (no code runs), a wrong model is named at once
        family = ""
        with contextlib.suppress(Exception), open(path, "rb") as fh:
            family = _other_family(_ModelUnpickler(fh, allow_chumpy=True).load())
        if family:
            raise _family_error(path, family) from None
        # the suggested output is named after the input: "SMPL_NEUTRAL_plain.pkl" for every file named a male or
        # female model's conversion as the neutral one
        import shlex

        plain = path.with_name(f"{path.stem}_plain.pkl")
        raise AssetError(
            f"{path} contains chumpy objects (an official SMPL .pkl); convert it once with "
            f"`hmrcritic body convert {shlex.quote(str(path))} {shlex.quote(str(plain))}` and use the converted "
            "file (HMRCRITIC_BODY_MODEL or --body-model)"
        ) from None
    except Exception as exc:
        if path.suffix.lower() == ".npz":
            # an .npz is a zip archive: one that is none (and no pickle either) was told it is "not a readable body
            # model" after an unpickling error, with the layout it should have
            raise AssetError(f"{path}: not an .npz (a zip archive) though named one, nor a pickle "
                             f"({type(exc).__name__}: {exc}); copy or download it again; "
                             f"{_expected(allow_chumpy)}") from None
        if isinstance(exc, EOFError) or "truncated" in str(exc):
            # a pickle cut short (an interrupted copy or download): the layout text after it sent the user to check
            # the file's keys, and ``body convert`` asked for the official .pkl it had been given
            raise AssetError(f"{path}: the body model file is cut short ({type(exc).__name__}: {exc}); copy it "
                             "again") from None
        raise AssetError(
            f"{path}: not a readable body model ({type(exc).__name__}: {exc}); {_expected(allow_chumpy)}"
        ) from None
    if not isinstance(data, dict):
        raise AssetError(
            f"{path}: body model must be a dict of arrays, got {type(data).__name__}; {_expected(allow_chumpy)}"
        )
    return data


def _expected(allow_chumpy: bool) -> str:
    """What a file that does not read as a body model should have been. ``body convert`` (``allow_chumpy``) takes
    the official chumpy .pkl: "expected a chumpy-free SMPL model" sent its user looking for the converted file,
    the one convert makes, as its input."""
    if allow_chumpy:
        return "give the official SMPL .pkl (e.g. basicModel_neutral_lbs_10_207_0_v1.0.0.pkl) to convert"
    return _LAYOUT_TEXT


_OPTIONAL_KEYS = ("part_of_vertex", "vertex_ids", "J")
# joint count → the SMPL-family model it identifies (models with 24 joints are SMPL)
_OTHER_FAMILIES = {52: "SMPL+H", 55: "SMPL-X", 16: "MANO (a hand)", 5: "FLAME (a head)"}


def _other_family(data: dict) -> str:
    """ "a SMPL-X model (55 joints)" when the file's joint count names another SMPL-family model, else ""."""
    for key, joints in (("kintree_table", lambda s: s[1] if len(s) == 2 else None),
                        ("J_regressor", lambda s: s[0] if len(s) == 2 else None),
                        ("posedirs", lambda s: s[-1] // 9 + 1 if len(s) == 3 and s[-1] % 9 == 0 else None)):
        try:
            n = joints(tuple(np.shape(_plain(data[key], key, Path()))))
        except Exception:  # noqa: BLE001 (missing or unreadable: the checks below say so)
            continue
        if n in _OTHER_FAMILIES:
            return f"a {_OTHER_FAMILIES[n]} model ({n} joints)"
    return ""


def _family_error(path: Path, family: str) -> AssetError:
    return AssetError(f"{path} is {family}, not SMPL: hmrcritic needs the 24-joint SMPL body model (e.g. "
                      f"SMPL_NEUTRAL.pkl / basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl); {_LAYOUT_TEXT}")


# the largest magnitude of any value in v_template, shapedirs, posedirs, J_regressor and weights (see _validate)
MAX_MODEL_VALUE = 1e6


def _validate(data: dict, path: Path) -> dict:
    """Check the SMPL layout; return a dict of arrays with fixed dtypes (plus optional extras)."""
    # a SMPL-X or SMPL+H file given by mistake (they sit beside SMPL in the same downloads) was refused for a
    # 'posedirs' shape, which did not say that the file is the wrong model
    family = _other_family(data)
    if family:
        raise _family_error(path, family)
    missing = [k for k in REQUIRED_LAYOUT if k not in data]
    if missing:
        raise AssetError(f"{path}: missing key(s) {', '.join(missing)}; {_LAYOUT_TEXT}")
    out = {}
    for k in REQUIRED_LAYOUT:
        v = _plain(data[k], k, path)
        try:
            out[k] = np.asarray(v)
        except Exception:
            raise AssetError(f"{path}: key '{k}' is not an array; {_LAYOUT_TEXT}") from None
        # complex numbers too: their imaginary part was dropped by the casts below (a warning, then other values)
        if (out[k].dtype == object or not np.issubdtype(out[k].dtype, np.number)
                or np.issubdtype(out[k].dtype, np.complexfloating)):
            raise AssetError(f"{path}: key '{k}' is not numeric (dtype {out[k].dtype}); {_LAYOUT_TEXT}")
    V = out["v_template"].shape[0] if out["v_template"].ndim == 2 else -1
    expect = {
        "v_template": lambda s: len(s) == 2 and s[1] == 3 and s[0] > 0,
        "f": lambda s: len(s) == 2 and s[1] == 3,
        "shapedirs": lambda s: len(s) == 3 and s[0] == V and s[1] == 3 and s[2] >= 10,
        "posedirs": lambda s: len(s) == 3 and s[0] == V and s[1] == 3 and s[2] == 207,
        "J_regressor": lambda s: len(s) == 2 and s[0] == 24 and s[1] == V,
        "weights": lambda s: len(s) == 2 and s[0] == V and s[1] == 24,
        "kintree_table": lambda s: len(s) == 2 and s[0] == 2 and s[1] == 24,
    }
    for k, ok in expect.items():
        if not ok(out[k].shape):
            raise AssetError(
                f"{path}: key '{k}' has shape {tuple(out[k].shape)}, expected {REQUIRED_LAYOUT[k]} "
                f"with V={V}; {_LAYOUT_TEXT}"
            )
    if out["f"].size and (out["f"].min() < 0 or out["f"].max() >= V):
        raise AssetError(f"{path}: faces index vertices outside 0..{V - 1}; {_LAYOUT_TEXT}")
    if not np.issubdtype(out["f"].dtype, np.integer) and not np.array_equal(out["f"], np.round(out["f"])):
        raise AssetError(f"{path}: key 'f' holds non-integer vertex indices; {_LAYOUT_TEXT}")
    # posedirs too: a NaN there gave NaN vertices for every body, even at zero pose (NaN·0 = NaN)
    for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        out[k] = out[k].astype(np.float64)
        if not np.isfinite(out[k]).all():
            raise AssetError(f"{path}: key '{k}' contains NaN or inf")
        # the model runs in float32: a value past its range (1e300, finite here) became inf there, and every
        # vertex NaN with no word of the file
        if out[k].size and np.abs(out[k]).max() > np.finfo(np.float32).max:
            raise AssetError(f"{path}: key '{k}' holds values beyond float32 range (|x| > 3.4e38); {_LAYOUT_TEXT}")
        # finite in float32 is not enough: 3e38 in v_template or shapedirs (times a β of 2) posed an inf template
        # and NaN joints. No body model comes near MAX_MODEL_VALUE (SMPL's vertices are metres, its blend shapes,
        # regressor and weights below 1; a model in millimetres stays under 1e4), and with every key under it the
        # posing stays finite in float32 (SMPL's 6890 vertices × 1e6 regressor × (1e6 + 500·1e6 shape + 414·1e6
        # pose) ≈ 6e18 per joint, ~1e37 once chained and skinned, under 3.4e38)
        if out[k].size and np.abs(out[k]).max() >= MAX_MODEL_VALUE:
            raise AssetError(f"{path}: key '{k}' holds a value of {np.abs(out[k]).max():.3g}, too large for a body "
                             f"model (|x| < {MAX_MODEL_VALUE:g}: metres, or blend weights); {_LAYOUT_TEXT}")
    # smplx poses joints in index order, so each joint's parent must come before it (SMPL's own root
    # entry is -1 or 2**32-1 and is ignored); anything else raised a bare IndexError deep in smplx
    parents = out["kintree_table"][0, 1:].astype(np.int64)
    bad = np.flatnonzero((parents < 0) | (parents >= np.arange(1, 24)))
    if bad.size:
        j = int(bad[0]) + 1
        raise AssetError(f"{path}: kintree_table gives joint {j} the parent {int(parents[j - 1])}; each joint j "
                         f"needs a parent in 0..j-1")
    out["posedirs"] = out["posedirs"].astype(np.float32)
    out["f"] = out["f"].astype(np.int64)
    out["kintree_table"] = out["kintree_table"].astype(np.int64)
    out["shapedirs"] = out["shapedirs"][:, :, :10]
    for k in _OPTIONAL_KEYS:
        if k in data:
            out[k] = data[k]
    if out.get("part_of_vertex") is not None:  # consumers index per-vertex arrays with it: (V,) in 0..23
        try:
            part = np.asarray(_plain(out["part_of_vertex"], "part_of_vertex", path))
            ok = part.shape == (V,) and np.issubdtype(part.dtype, np.integer) and part.min() >= 0 and part.max() < 24
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise AssetError(f"{path}: 'part_of_vertex' must be {V} ints in 0..23 (the joint of each vertex)")
        out["part_of_vertex"] = part.astype(np.int64)
    vid = out.get("vertex_ids")
    if isinstance(vid, np.ndarray):  # .npz cannot hold a dict: (5,) ints in EXTRA_NAMES order
        if vid.shape != (5,) or not np.issubdtype(vid.dtype, np.integer):
            raise AssetError(f"{path}: 'vertex_ids' must be 5 ints ({', '.join(EXTRA_NAMES)})")
        out["vertex_ids"] = dict(zip(EXTRA_NAMES, (int(i) for i in vid), strict=True))
    if out.get("vertex_ids") is not None:
        vid = out["vertex_ids"]
        try:  # a dict of names → ints; anything else (strings, a list) is one clear line, not a ValueError
            ok = isinstance(vid, dict) and all(0 <= int(vid.get(k, -1)) < V for k in EXTRA_NAMES)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise AssetError(f"{path}: 'vertex_ids' must give {', '.join(EXTRA_NAMES)} as vertex indices < {V}")
    return out


def read_model_arrays(path: str | Path) -> dict:
    """Read and validate a chumpy-free SMPL-layout file (.pkl or .npz) into a dict of numpy arrays."""
    path = Path(path).expanduser()
    return _validate(_read_raw(path, allow_chumpy=False), path)


def convert_smpl_pkl(src: str | Path, dst: str | Path) -> Path:
    """Rewrite an official (chumpy) SMPL ``.pkl`` as a plain-numpy pickle, without chumpy.

    chumpy objects are replaced during unpickling by stand-ins that keep their stored array, the sparse
    ``J_regressor`` becomes dense, and the result is validated before it is written atomically.
    """
    from hmrcritic.io import atomic_write_bytes

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_file():  # the input is the official chumpy file, not the chumpy-free one _read_raw describes
        what = "a folder" if src.is_dir() else "not a regular file" if src.exists() else "not found"
        raise AssetError(f"body convert: {src} is {what}; give the official "
                         "SMPL .pkl (e.g. basicModel_neutral_lbs_10_207_0_v1.0.0.pkl) to convert")
    raw = _read_raw(src, allow_chumpy=True)
    if not isinstance(raw, dict):
        raise AssetError(f"{src}: not a SMPL model dict")
    plain = {k: _plain(v, k, src) for k, v in raw.items() if k in REQUIRED_LAYOUT or k == "J"}
    if isinstance(raw.get("vertex_ids"), dict):  # a non-SMPL mesh names its face vertices itself: keep them
        plain["vertex_ids"] = {str(k): int(v) for k, v in raw["vertex_ids"].items()}
    elif isinstance(raw.get("vertex_ids"), np.ndarray):  # an .npz's form, 5 ints (_validate reads it as the dict):
        # dropped, a converted mesh other than SMPL's 6890 vertices no longer loaded ("no 'vertex_ids'")
        plain["vertex_ids"] = raw["vertex_ids"]
    arrays = _validate(plain, src)
    if "J" in plain and isinstance(plain["J"], np.ndarray):
        arrays["J"] = np.asarray(plain["J"], dtype=np.float64)
    buf = io.BytesIO()
    pickle.dump(arrays, buf, protocol=4)
    return atomic_write_bytes(dst, buf.getvalue())


# ------------------------------------------------------------------------------------------ loading
_CACHE: dict[tuple[str, str], BodyModel] = {}
_LOCK = threading.Lock()


def resolve_model_path(path: str | Path | None = None) -> Path | None:
    """The model file in use: ``path``, else ``HMRCRITIC_BODY_MODEL``, else None (the mannequin)."""
    if path is not None:
        return config.path_arg(path, "body model path")
    return config.body_model_path()


@keywords_checked
def load_body_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> BodyModel:
    """Load (once per (file, device)) the body model: ``path`` → ``HMRCRITIC_BODY_MODEL`` → the mannequin,
    generated on first use into ``cache_dir()/mannequin/SMPL_MANNEQUIN.pkl``.

    A ``path`` or ``device`` of the wrong kind is refused with one line (:class:`InputError`), not a bare
    ``TypeError`` from ``Path`` or ``RuntimeError`` from ``torch.device``."""
    if path is not None and not isinstance(path, str | os.PathLike):
        raise InputError(f"load_body_model: path must be a file path (str or Path) or None, got "
                         f"{type(path).__name__}")
    try:
        dev = str(torch.device(device))
    except (RuntimeError, TypeError, ValueError):
        got = repr(device[:40]) if isinstance(device, str) else type(device).__name__
        raise InputError(f"load_body_model: device must be a torch device such as 'cpu' or 'cuda', got {got}") \
            from None
    if dev.startswith("cuda") and not torch.cuda.is_available():  # else a bare AssertionError from torch
        raise InputError(f"load_body_model: device {dev} asked for, but this torch has no usable CUDA "
                         f"({torch.__version__}); use 'cpu'")
    file = resolve_model_path(path)
    if file is None:
        file = mannequin.default_folder() / mannequin.FILE_NAME
        key, name = (f"mannequin:{file}", dev), "mannequin"
    else:
        key, name = (str(file.resolve()), dev), str(file)
    with _LOCK:
        model = _CACHE.get(key)
        if model is not None:
            return model
        if name == "mannequin":
            mannequin.ensure_mannequin(file.parent)
        try:
            arrays = read_model_arrays(file)
        except AssetError as exc:
            if path is not None or name == "mannequin":
                raise
            # the file came from the environment, not the command line: "body model file not found: SMPL.pkl" from
            # a `body info` or `sample` given no body model sent a user who had forgotten an exported variable
            # looking for the file's name in their command
            raise AssetError(f"HMRCRITIC_BODY_MODEL: {exc}; or unset HMRCRITIC_BODY_MODEL to use the built-in "
                             "mannequin") from None
        if name != "mannequin":
            from hmrcritic.io import sha256_file

            _warn_unless_metres(arrays["v_template"], file)
            model = BodyModel(arrays, name=name, device=dev)
            model.source_sha256 = sha256_file(file)
        else:
            model = BodyModel(arrays, name=name, device=dev)
        _CACHE[key] = model
        return model


REST_HEIGHT_M = (0.3, 3.0)  # a rest body outside this is not in metres (an infant is ~0.5 m, the tallest ~2.7 m)


def _warn_unless_metres(v_template: np.ndarray, path: Path) -> None:
    """Warn when a user's body file is evidently not in metres (SMPL's unit): a file in millimetres loaded and
    sampled without a word, its hypotheses' ``transl`` some 3,000 "metres" from the camera. A warning, not a
    refusal: the file is a valid SMPL layout, and an unusual body is the user's to judge."""
    height = float(np.ptp(np.asarray(v_template)[:, 1])) if len(v_template) else 0.0
    low, high = REST_HEIGHT_M
    if low <= height <= high:
        return
    guess = (" (millimetres?)" if 300 <= height <= 3000 else " (centimetres?)" if 30 <= height <= 300
             else "")
    warn_caller(f"{path}: its rest body (betas 0) is {height:.4g} units tall; SMPL files are in metres, a body "
                f"{low}–{high} m tall{guess}: every length this model gives (joints, meshes, transl, errors in "
                "mm) is in its units")


def clear_cache() -> None:
    """Forget loaded models (tests; after regenerating a file)."""
    with _LOCK:
        _CACHE.clear()


# ------------------------------------------------------------------------------------------ summaries
def body_info(model: BodyModel) -> dict:
    """Plain-type summary of a model (for ``hmrcritic body info`` and ``doctor``)."""
    with torch.no_grad():
        verts = model.template().vertices[0].cpu().numpy()
    return {
        "source": model.name,
        "vertices": model.num_vertices,
        "faces": int(len(model.faces)),
        "joints": 24,
        "betas": model.num_betas,
        "height_m": round(float(verts[:, 1].max() - verts[:, 1].min()), 4),
    }


def obj_output_path(out: str | Path, what: str = "export_template_obj: output") -> Path:
    """The file a template export writes for ``out``: a name ending in ``.obj`` (any case) as given; a name without
    an extension with ``.obj`` added (``body export-obj mannequin`` wrote a file named ``mannequin`` that no mesh
    viewer or file dialog offered as a mesh); any other extension refused, before anything is loaded or written:
    the file is Wavefront OBJ text, which a ``.ply``/``.stl`` reader rejects, and ``body export-obj
    SMPL_NEUTRAL.pkl`` (a slip for ``info --body-model``) replaced the user's body model with a mesh."""
    path = Path(out).expanduser()
    if path.name.lower().endswith(".obj"):
        return path
    if not path.suffix and path.name and not path.name.endswith("."):
        return path.with_name(path.name + ".obj")
    # a name of "." or "..", a folder, gets the file name inside it (with_name refuses an empty name)
    example = (path / "body.obj" if path.name in ("", ".", "..")
               else path.with_name((path.stem.rstrip(".") or "body") + ".obj"))
    raise InputError(f"{what} {out} is named {path.suffix or repr(path.name)}, but the template is written as a "
                     f"Wavefront .obj; name it .obj (e.g. {example})")


def export_template_obj(model: BodyModel, out: str | Path) -> Path:
    """The zero-pose, betas-0 mesh as a Wavefront .obj (atomic write) at :func:`obj_output_path` of ``out``: the
    path returned is the file written (``.obj`` added to a name without an extension)."""
    from hmrcritic.io import atomic_write_text

    out = obj_output_path(out)

    with torch.no_grad():
        verts = model.template().vertices[0].cpu().numpy()
    lines = [f"# hmrcritic body model: {model.name}"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in model.faces]
    return atomic_write_text(out, "\n".join(lines) + "\n")
