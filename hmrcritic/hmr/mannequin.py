"""The built-in **mannequin**: a license-free, procedurally generated, SMPL-compatible body model.

Why it exists: the SMPL model files may not be redistributed, yet every code path of the toolkit (fitting,
rendering, metrics, the agent's evidence) should run on a real ``smplx.SMPL`` with real linear blend
skinning. So this module generates, with our own code, a model file in SMPL's layout (``v_template``, ``f``,
``shapedirs``, ``posedirs``, ``J_regressor``, ``weights``, ``kintree_table``) that ``smplx`` loads exactly
like the official one. Nothing here comes from SMPL's data.

What it looks like: an artist's mannequin in SMPL's T-pose, metres, y up, facing +z, the body's left on +x,
the pelvis joint at the origin, about 1.73 m tall. Each of the 24 body parts (the part of joint ``j`` is the
segment driven by ``j``: part 18, the left elbow, is the left forearm) is one closed, watertight surface
(an elliptical tube with rounded caps) that overlaps its neighbours around the joints.

Skinning (why the parts bend together): the weight of joint ``k`` against its parent is one smooth function
of *position* (a smoothstep of the distance along the bone from the joint, fading out radially), evaluated
identically for the vertices of both neighbouring parts. Where the upper-arm and forearm surfaces overlap
around the elbow they therefore receive the same weights and move together, so no gap opens at a 90° elbow
or knee, unlike rigid per-part skinning.

Beyond the issue text: ``posedirs`` is zero except for one *twist corrective* per joint. Plain linear blend
skinning shrinks the cross-section where weights are blended when a joint twists about its bone (the "candy
wrapper": to 50 % of the area for a 90° twist at the 50/50 ring). SMPL fixes this with learnt pose blend
shapes; we add the analytic equivalent: the pose feature ``f = Σ (R-I)_ij (2 a_i a_j - δ_ij) = 2(1-cos θ)
(a·n)²`` isolates the twist about the bone axis ``a`` (zero for pure bending), and each blended vertex is
pushed out radially by ``g(α) f`` with ``g`` chosen so that a 90° twist keeps the ring's radius.

Shape space: 10 directions, each the central difference of the generator with respect to one physical
factor, scaled so that one unit of beta is about one standard deviation of an adult population
(:data:`SHAPE_DIRECTIONS`). Joints follow shape because ``J_regressor`` averages a ring of vertices centred on
each joint.

Determinism: fixed dtypes, no dict-order or random state, pickle protocol 4; two generations are
byte-identical. The cached file is regenerated when it is missing or when its recorded generator version
(which includes a hash of this source file) or content hash no longer match.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmrcritic import config
from hmrcritic.io import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file

GENERATOR_VERSION = "1"
FILE_NAME = "SMPL_MANNEQUIN.pkl"
PICKLE_PROTOCOL = 4

PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]

# (name, standard deviation of the underlying factor, what +1 does). Order = beta index.
SHAPE_DIRECTIONS: list[tuple[str, float, str]] = [
    ("height", 0.04, "uniform scale about the pelvis: +1 ≈ +7 cm of height (adult SD ≈ 7 cm)"),
    ("limb_length", 0.03, "arm and leg bones 3 % longer"),
    ("girth", 0.08, "torso radii +8 % and limb radii +5.6 % (weight)"),
    ("shoulder_width", 0.07, "collar bones and upper chest 7 % wider"),
    ("hip_width", 0.07, "hip joints and pelvis 7 % wider"),
    ("torso_length", 0.04, "spine and neck segments 4 % longer"),
    ("leg_torso_ratio", 0.03, "legs 3 % longer, spine 3 % shorter (height roughly kept)"),
    ("arm_length", 0.04, "upper arm and forearm 4 % longer"),
    ("head_size", 0.05, "head 5 % larger"),
    ("chest_depth", 0.08, "torso front-back depth +8 % (chest and belly)"),
]

# Template joints of the left side and the midline (metres, pelvis at the origin). The right side mirrors x.
_JOINTS_LEFT = {
    0: (0.0, 0.0, 0.0),
    1: (0.085, -0.075, 0.0),
    3: (0.0, 0.105, -0.015),
    4: (0.095, -0.455, 0.01),
    6: (0.0, 0.225, -0.01),
    7: (0.095, -0.855, -0.025),
    9: (0.0, 0.335, -0.005),
    10: (0.10, -0.915, 0.105),
    12: (0.0, 0.505, -0.02),
    13: (0.075, 0.42, -0.015),
    15: (0.0, 0.575, 0.0),
    16: (0.185, 0.445, -0.02),
    18: (0.445, 0.445, -0.03),
    20: (0.695, 0.445, -0.03),
    22: (0.78, 0.44, -0.03),
}
_MIRROR = {2: 1, 5: 4, 8: 7, 11: 10, 14: 13, 17: 16, 19: 18, 21: 20, 23: 22}


@dataclass(frozen=True)
class _PartStyle:
    """Surface of one part: radii (width, thickness) at the start and end of its axis, a mid bulge, cap
    lengths (proximal, distal), sampling (around, body rings, cap rings) and the width reference direction."""

    r0: tuple[float, float]
    r1: tuple[float, float]
    bulge: tuple[float, float]
    caps: tuple[float, float]
    around: int
    rings: int
    cap_rings: int
    width_ref: str  # "x" or "z"


_S = _PartStyle
# Keyed by the left/midline joint; the right side uses its mirror's style.
_STYLES = {
    0: _S((0.165, 0.11), (0.145, 0.10), (0.0, 0.0), (0.12, 0.04), 20, 6, 3, "x"),
    3: _S((0.145, 0.10), (0.15, 0.10), (0.0, 0.0), (0.04, 0.04), 20, 6, 3, "x"),
    6: _S((0.15, 0.10), (0.16, 0.105), (0.0, 0.0), (0.04, 0.04), 20, 5, 3, "x"),
    9: _S((0.16, 0.105), (0.12, 0.075), (0.01, 0.01), (0.04, 0.04), 20, 8, 3, "x"),
    12: _S((0.058, 0.055), (0.052, 0.05), (0.0, 0.0), (0.03, 0.03), 12, 4, 2, "x"),
    15: _S((0.06, 0.07), (0.075, 0.09), (0.008, 0.008), (0.04, 0.095), 20, 10, 4, "x"),
    13: _S((0.06, 0.06), (0.055, 0.055), (0.0, 0.0), (0.04, 0.05), 12, 5, 2, "z"),
    16: _S((0.05, 0.048), (0.04, 0.036), (0.004, 0.004), (0.05, 0.038), 12, 10, 3, "z"),
    18: _S((0.04, 0.036), (0.03, 0.022), (0.005, 0.004), (0.038, 0.022), 12, 10, 3, "z"),
    20: _S((0.03, 0.02), (0.043, 0.015), (0.0, 0.0), (0.02, 0.015), 10, 4, 2, "z"),
    22: _S((0.042, 0.013), (0.034, 0.01), (0.0, 0.0), (0.013, 0.012), 10, 4, 2, "z"),
    1: _S((0.085, 0.085), (0.052, 0.052), (0.005, 0.008), (0.085, 0.052), 12, 10, 3, "x"),
    4: _S((0.05, 0.05), (0.03, 0.03), (0.006, 0.012), (0.05, 0.03), 12, 10, 3, "x"),
    7: _S((0.03, 0.035), (0.045, 0.023), (0.004, 0.0), (0.03, 0.02), 12, 7, 3, "x"),
    10: _S((0.045, 0.022), (0.035, 0.015), (0.0, 0.0), (0.022, 0.012), 10, 3, 2, "x"),
}
_PRIMARY_CHILD = {0: 3, 3: 6, 6: 9, 9: 12, 12: 15, 1: 4, 4: 7, 7: 10, 13: 16, 16: 18, 18: 20, 20: 22}
_END_LENGTH = {15: 0.13, 22: 0.085, 10: 0.06}  # parts with no child joint: length of their axis


def _mirror_of(j: int) -> int:
    return _MIRROR.get(j, j)


def _is_right(j: int) -> bool:
    return j in _MIRROR


# ----------------------------------------------------------------------------------------------- geometry
def _factors(z: np.ndarray) -> dict[str, float]:
    sd = [d[1] for d in SHAPE_DIRECTIONS]
    f = {name: 1.0 + sd[i] * float(z[i]) for i, (name, _, _) in enumerate(SHAPE_DIRECTIONS)}
    f["leg_torso_inv"] = 1.0 - sd[6] * float(z[6])
    f["limb_girth"] = 1.0 + 0.7 * sd[2] * float(z[2])
    return f


def _skeleton(z: np.ndarray) -> np.ndarray:
    """Joint positions (24,3) for shape factors ``z`` (SD units): bone offsets scaled per group, then
    the whole body scaled about the pelvis."""
    f = _factors(z)
    base = np.zeros((24, 3))
    for j, p in _JOINTS_LEFT.items():
        base[j] = p
    for r, left in _MIRROR.items():
        base[r] = base[left] * np.array([-1.0, 1.0, 1.0])
    J = np.zeros((24, 3))
    for j in range(1, 24):
        p = PARENTS[j]
        off = base[j] - base[p]
        m = _mirror_of(j)
        if m == 1:  # hip
            off = off * np.array([f["hip_width"], 1.0, 1.0])
        elif m in (4, 7):  # thigh, shin
            off = off * f["limb_length"] * f["leg_torso_ratio"]
        elif m in (3, 6, 9, 12):  # spine, neck
            off = off * f["torso_length"] * f["leg_torso_inv"]
        elif m == 13:  # collar from spine3
            off = off * np.array([f["shoulder_width"], 1.0, 1.0])
        elif m == 16:  # shoulder from collar
            off = off * f["shoulder_width"]
        elif m in (18, 20):  # elbow, wrist
            off = off * f["limb_length"] * f["arm_length"]
        elif m == 15:
            off = off * f["head_size"]
        J[j] = J[p] + off
    return J * f["height"]


def _part_frames(J: np.ndarray, z: np.ndarray):
    """Per part: start point, unit axis, length, width/thickness directions and its (scaled) style."""
    f = _factors(z)
    out = {}
    for j in range(24):
        m = _mirror_of(j)
        st = _STYLES[m]
        start = J[j].copy()
        if m == 7:  # foot: axis from the heel (below and behind the ankle) to the ball of the foot
            start = J[j] + np.array([0.0, -0.045, -0.035]) * f["height"]
            end = J[_side(_PRIMARY_CHILD[m], j)]
        elif m in _END_LENGTH:
            parent_axis = J[j] - J[PARENTS[j]]
            if m == 15:
                d = np.array([0.0, 1.0, 0.0])
            elif m == 10:
                d = np.array([0.0, -0.08, 1.0])
            else:
                d = parent_axis
            d = d / np.linalg.norm(d)
            length = _END_LENGTH[m] * f["height"] * (f["head_size"] if m == 15 else 1.0)
            end = J[j] + d * length
        else:
            end = J[_side(_PRIMARY_CHILD[m], j)]
        axis = end - start
        length = float(np.linalg.norm(axis))
        u = axis / length
        ref = np.array([1.0, 0.0, 0.0]) if st.width_ref == "x" else np.array([0.0, 0.0, 1.0])
        e1 = ref - (ref @ u) * u
        e1 = e1 / np.linalg.norm(e1)
        e2 = np.cross(u, e1)
        # radii scaling by shape factors
        s_w = f["height"]
        s_t = f["height"]
        if m in (0, 3, 6, 9):
            s_w *= f["girth"]
            s_t *= f["girth"] * f["chest_depth"]
        elif m in (1, 4, 13, 16, 18, 12):
            s_w *= f["limb_girth"]
            s_t *= f["limb_girth"]
        elif m == 15:
            s_w *= f["head_size"]
            s_t *= f["head_size"]
        r0 = np.array(st.r0) * [s_w, s_t]
        r1 = np.array(st.r1) * [s_w, s_t]
        if m == 0:
            r0 = r0 * [f["hip_width"], 1.0]
        if m == 9:
            r1 = r1 * [f["shoulder_width"], 1.0]
        caps = np.array(st.caps) * (s_w if m != 15 else f["height"] * f["head_size"])
        bulge = np.array(st.bulge) * [s_w, s_t]
        out[j] = dict(
            start=start, u=u, length=length, e1=e1, e2=e2, r0=r0, r1=r1, bulge=bulge, caps=caps, style=st
        )
    return out


_MIRROR_INV = {v: k for k, v in _MIRROR.items()}


def _side(left_joint: int, like: int) -> int:
    """``left_joint`` (a left or midline joint) on the same side as joint ``like``."""
    return _MIRROR_INV.get(left_joint, left_joint) if _is_right(like) else left_joint


def _ring_params(fr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axial positions s (m, from the part's start) and radii (w, t) of every ring, proximal to distal,
    plus the two pole positions. Caps are quarter-ellipses so each part is a smooth closed surface."""
    st = fr["style"]
    o_p, o_d = fr["caps"]
    a_p = (np.pi / 2) * np.arange(st.cap_rings, 0, -1) / (st.cap_rings + 1)  # large → small angle
    t = np.linspace(0.0, 1.0, st.rings)
    a_d = (np.pi / 2) * np.arange(1, st.cap_rings + 1) / (st.cap_rings + 1)
    body_r = (
        fr["r0"][None]
        + (fr["r1"] - fr["r0"])[None] * t[:, None]
        + fr["bulge"][None] * np.sin(np.pi * t)[:, None]
    )
    s = np.concatenate([-o_p * np.sin(a_p), t * fr["length"], fr["length"] + o_d * np.sin(a_d)])
    r = np.concatenate([fr["r0"][None] * np.cos(a_p)[:, None], body_r, fr["r1"][None] * np.cos(a_d)[:, None]])
    poles = np.array([-o_p, fr["length"] + o_d])
    return s, r, poles


def _part_vertices(fr) -> np.ndarray:
    st = fr["style"]
    s, r, poles = _ring_params(fr)
    phi = 2 * np.pi * np.arange(st.around) / st.around
    c, sn = np.cos(phi), np.sin(phi)
    rings = (
        fr["start"][None, None]
        + s[:, None, None] * fr["u"][None, None]
        + (r[:, 0:1] * c[None])[..., None] * fr["e1"][None, None]
        + (r[:, 1:2] * sn[None])[..., None] * fr["e2"][None, None]
    )
    p0 = fr["start"] + poles[0] * fr["u"]
    p1 = fr["start"] + poles[1] * fr["u"]
    return np.concatenate([p0[None], rings.reshape(-1, 3), p1[None]])


def _part_faces(st: _PartStyle, offset: int) -> np.ndarray:
    n = st.around
    m = st.rings + 2 * st.cap_rings
    ring = 1 + np.arange(m)[:, None] * n + np.arange(n)[None]  # (m, n) local indices
    nxt = np.roll(ring, -1, axis=1)
    a, b, c, d = ring[:-1], nxt[:-1], nxt[1:], ring[1:]
    quads = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    pole_d = 1 + m * n
    cap_p = np.stack([np.zeros(n, dtype=np.int64), nxt[0], ring[0]], -1)
    cap_d = np.stack([ring[-1], nxt[-1], np.full(n, pole_d)], -1)
    return np.concatenate([cap_p, quads, cap_d]).astype(np.int64) + offset


def _surface(z: np.ndarray):
    J = _skeleton(z)
    frames = _part_frames(J, z)
    verts = [_part_vertices(frames[j]) for j in range(24)]
    return J, frames, verts


# ----------------------------------------------------------------------------------------------- skinning
def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _blend_specs(J: np.ndarray, frames) -> dict[int, dict]:
    """Per joint k ≥ 1: the blending axis (the child part's axis; the shin's for the ankle, since the foot
    runs forward), half-width h of the blend zone and the radius beyond which a parent part stops
    following."""
    specs = {}
    for k in range(1, 24):
        p = PARENTS[k]
        m = _mirror_of(k)
        if m == 7:  # ankle: blend along the shin
            a = frames[p]["u"]
            r = float(np.max(frames[p]["r1"]))
        else:
            a = frames[k]["u"]
            r = float(np.max(frames[k]["r0"]))
        h = min(0.8 * r, 0.3 * frames[k]["length"], 0.3 * float(np.linalg.norm(J[k] - J[p])))
        specs[k] = dict(a=a, h=h, r=r, origin=J[k])
    return specs


def _skin_weights(J, frames, verts, part) -> np.ndarray:
    X = np.concatenate(verts)
    V = X.shape[0]
    W = np.zeros((V, 24))
    specs = _blend_specs(J, frames)
    children = {j: [k for k in range(24) if PARENTS[k] == j] for j in range(24)}

    def child_fraction(k, idx, radial_fade):
        sp = specs[k]
        d = X[idx] - sp["origin"]
        s = d @ sp["a"]
        c = _smoothstep((s + sp["h"]) / (2 * sp["h"]))
        if radial_fade:
            rad = np.linalg.norm(d - s[:, None] * sp["a"][None], axis=1)
            c = c * (1.0 - _smoothstep((rad - 1.15 * sp["r"]) / (0.5 * sp["r"])))
        return c

    for j in range(24):
        idx = np.nonzero(part == j)[0]
        own = np.ones(idx.size)
        if j != 0:
            c = child_fraction(j, idx, radial_fade=False)
            W[idx, PARENTS[j]] += 1.0 - c
            own = c
        kids = children[j]
        if kids:
            cs = np.stack([child_fraction(k, idx, radial_fade=True) for k in kids], 1)
            scale = 1.0 / np.maximum(1.0, cs.sum(1))
            for i, k in enumerate(kids):
                W[idx, k] += own * cs[:, i] * scale
            own = own * (1.0 - cs.sum(1) * scale)
        W[idx, j] += own
    W[W < 1e-9] = 0.0
    return W / W.sum(1, keepdims=True)


def _subtrees() -> list[list[int]]:
    sub = [[j] for j in range(24)]
    for j in range(23, 0, -1):
        sub[PARENTS[j]].extend(sub[j])
    return [sorted(s) for s in sub]


def _twist_posedirs(J, frames, X, W) -> np.ndarray:
    """Twist correctives (see the module docstring): (V,3,207), nonzero only in blend zones."""
    V = X.shape[0]
    P = np.zeros((V, 3, 207))
    specs = _blend_specs(J, frames)
    subs = _subtrees()
    for k in range(1, 24):
        alpha = W[:, subs[k]].sum(1)
        idx = np.nonzero((alpha > 1e-6) & (alpha < 1 - 1e-6))[0]
        if idx.size == 0:
            continue
        al = alpha[idx]
        gain = (1.0 / np.sqrt(1.0 - 2.0 * al * (1.0 - al)) - 1.0) / 2.0
        a = specs[k]["a"]
        d = X[idx] - J[k]
        radial = d - (d @ a)[:, None] * a[None]
        M = 2.0 * np.outer(a, a) - np.eye(3)
        P[idx, :, 9 * (k - 1) : 9 * k] = (gain[:, None] * radial)[:, :, None] * M.reshape(1, 1, 9)
    return P


# ----------------------------------------------------------------------------------------------- assembly
def _vertex_ids(J, frames, verts, offsets) -> dict[str, int]:
    """Face keypoints (nose, eyes, ears) as the head vertices nearest to anatomical targets."""
    hv = verts[15]
    fr = frames[15]
    y0 = J[15]
    w, t = fr["r1"]
    targets = {
        "nose": y0 + np.array([0.0, 0.06, t * 1.2]),
        "reye": y0 + np.array([-0.032, 0.09, t]),
        "leye": y0 + np.array([0.032, 0.09, t]),
        "rear": y0 + np.array([-w * 1.2, 0.08, 0.0]),
        "lear": y0 + np.array([w * 1.2, 0.08, 0.0]),
    }
    return {k: int(offsets[15] + np.argmin(np.linalg.norm(hv - p, axis=1))) for k, p in targets.items()}


def generate_arrays() -> dict:
    """The mannequin as a dict in SMPL's layout (plus ``J``, ``part_of_vertex``, ``vertex_ids`` and
    ``generator_version``, which smplx ignores). Pure function of this source file."""
    z0 = np.zeros(10)
    J, frames, verts = _surface(z0)
    sizes = [v.shape[0] for v in verts]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    part = np.concatenate([np.full(n, j, dtype=np.int64) for j, n in enumerate(sizes)])
    X = np.concatenate(verts)
    faces = np.concatenate([_part_faces(frames[j]["style"], int(offsets[j])) for j in range(24)])
    W = _skin_weights(J, frames, verts, part)

    shapedirs = np.zeros((X.shape[0], 3, 10))
    for i in range(10):
        e = np.zeros(10)
        e[i] = 1.0
        plus = np.concatenate(_surface(e)[2])
        minus = np.concatenate(_surface(-e)[2])
        shapedirs[:, :, i] = (plus - minus) / 2.0

    Jreg = np.zeros((24, X.shape[0]))
    for k in range(24):
        # ankle: the shin's distal ring (the foot's axis does not pass through the ankle)
        host = PARENTS[k] if _mirror_of(k) == 7 else k
        st = frames[host]["style"]
        ring = st.cap_rings + (st.rings - 1 if host != k else 0)
        start = int(offsets[host]) + 1 + ring * st.around
        Jreg[k, start : start + st.around] = 1.0 / st.around

    kintree = np.stack([np.array(PARENTS, dtype=np.int64), np.arange(24, dtype=np.int64)])
    return {
        "v_template": X.astype(np.float64),
        "f": faces.astype(np.int64),
        "shapedirs": shapedirs.astype(np.float64),
        "posedirs": _twist_posedirs(J, frames, X, W).astype(np.float32),
        "J_regressor": Jreg.astype(np.float64),
        "weights": W.astype(np.float64),
        "kintree_table": kintree,
        "J": J.astype(np.float64),
        "part_of_vertex": part,
        "vertex_ids": _vertex_ids(J, frames, verts, offsets),
        "shape_directions": [d[0] for d in SHAPE_DIRECTIONS],
        "generator_version": generator_version(),
    }


def generator_version() -> str:
    """``GENERATOR_VERSION`` plus a hash of this file: any change to the generator regenerates the cache."""
    src = Path(__file__).read_bytes()
    return f"{GENERATOR_VERSION}-{hashlib.sha256(src).hexdigest()[:12]}"


def serialize(arrays: dict) -> bytes:
    buf = io.BytesIO()
    pickle.dump(arrays, buf, protocol=PICKLE_PROTOCOL)
    return buf.getvalue()


def write_mannequin(folder: str | Path | None = None) -> Path:
    """Generate the mannequin into ``folder`` (default ``cache_dir()/mannequin``) atomically, with a
    sidecar ``.json`` recording the generator version and the file's sha256."""
    folder = Path(folder) if folder is not None else default_folder()
    data = serialize(generate_arrays())
    path = atomic_write_bytes(folder / FILE_NAME, data)
    atomic_write_json(
        _sidecar(path), {"generator_version": generator_version(), "sha256": sha256_bytes(data)}
    )
    return path


def default_folder() -> Path:
    return config.cache_dir() / "mannequin"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def is_current(path: Path) -> bool:
    """True when ``path`` exists, was written by this generator version and is intact."""
    side = _sidecar(path)
    if not path.exists() or not side.exists():
        return False
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("generator_version") == generator_version() and meta.get("sha256") == sha256_file(path)


def ensure_mannequin(folder: str | Path | None = None) -> Path:
    """Path of the cached mannequin, (re)generating it when missing, stale or corrupt."""
    folder = Path(folder) if folder is not None else default_folder()
    path = folder / FILE_NAME
    if not is_current(path):
        write_mannequin(folder)
    return path
