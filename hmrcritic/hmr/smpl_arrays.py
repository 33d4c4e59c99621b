"""SMPL parameter arrays from files and callers, checked once for every reader (hypotheses, labels).

``critique --hypotheses`` and ``evaluate --data`` both take SMPL parameters written by other tools: the same
layouts are read (exactly: each only a reshape, a split or zero padding) and the same things refused (not numbers,
NaN, counts that disagree, a translation that is not metres, shapes far outside SMPL's space), with the same words.
Lived in ``agent/api.py`` until session 33, when the labelled-data reader of ``hmr/`` needed it (hmr may not import
the agent).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hmrcritic.errors import InputError

SMPL_KEYS = {"global_orient": 3, "body_pose": 69, "betas": 10, "transl": 3}
MAX_ABS_BETA = 50.0
# metres: far past any telephoto framing (a person 1 km away renders), short of numbers that are not a placement —
# an overflowed integer, or float32 rounding the body's own metre-scale size away
MAX_ABS_TRANSL_M = 1e5


def common_layouts(arrays: dict, where: str) -> dict:
    """The layouts other SMPL tools write, read as ours (exactly: each is only a reshape or a split):
    ``poses (N, 72)`` or ``(N, 24, 3)`` (AMASS, many fitting codes) split into global_orient and body_pose,
    and per-joint ``(N, 23, 3)`` / ``(N, 1, 3)`` rotations flattened. Before, each was refused as "missing
    global_orient" or "wrong shape", leaving the user to find the convention."""
    arrays = dict(arrays)
    if "poses" in arrays and "global_orient" not in arrays and "body_pose" not in arrays:
        p = np.asarray(arrays.pop("poses"))
        if p.ndim == 3 and p.shape[1:] == (24, 3):
            p = p.reshape(p.shape[0], -1)
        if p.ndim == 1:
            p = p[None]
        if p.ndim != 2 or p.shape[1] != 72:
            raise InputError(f"{where}: poses has shape {p.shape}, expected (N, 72) SMPL axis-angle (24 joints × 3)"
                             + other_body_poses(p))
        arrays["global_orient"], arrays["body_pose"] = p[:, :3], p[:, 3:]
    for key, joints in (("global_orient", 1), ("body_pose", 23)):
        a = arrays.get(key)
        if a is not None and np.ndim(a) == 3 and np.shape(a)[1:] == (joints, 3):
            arrays[key] = np.asarray(a).reshape(np.shape(a)[0], joints * 3)
    return arrays


# SMPL-X's and SMPL+H's axis-angle poses (smplx.joint_names): joint count → the model and what follows its 22 body
# joints. Their first 22 are SMPL's (pelvis … right_wrist); SMPL's last two (22, 23) are its hands.
OTHER_BODIES = {55: ("SMPL-X", "jaw, eyes and 30 finger joints"), 52: ("SMPL+H", "30 finger joints")}


def other_body_poses(p: np.ndarray) -> str:
    """The hint after a refused ``poses``: how SMPL-X's (N, 165) and SMPL+H's (N, 156) become SMPL's 72 numbers.
    It said "keep their first 24 as SMPL's", which read SMPL-X's jaw and eyes (joints 22–24; SMPL+H's 22+ are
    fingers) as SMPL's left and right hand."""
    joints = p.shape[1] // 3 if p.ndim == 2 and p.shape[1] % 3 == 0 else \
        p.shape[1] if p.ndim == 3 and p.shape[2] == 3 else None
    if joints not in OTHER_BODIES:  # another layout: the two common ones named, nothing guessed about this one
        return ("; from SMPL-X (N, 165) or SMPL+H (N, 156) poses keep their first 22 joints, SMPL's pelvis … "
                "right_wrist (poses[:, :66]), and append 6 zeros for SMPL's two hand joints: their joints 22 on "
                "are jaw, eyes and fingers")
    name, rest = OTHER_BODIES[joints]
    keep = ("poses[:, :22] and append 2 zero rotations" if p.ndim == 3
            else "poses[:, :66] (22 joints × 3) and append 6 zeros")
    return (f"; {name} poses share SMPL's first 22 joints (pelvis … right_wrist), then hold {rest}, not SMPL's "
            f"two hand joints: keep {keep} for SMPL's hands (held flat)")


def other_body_pose(a: np.ndarray) -> str:
    """The hint after a refused ``body_pose`` of 21 joints: SMPL-X's and SMPL+H's ``body_pose`` (smplx's own output)
    hold the 21 joints after the pelvis up to the wrists, (N, 63) or (N, 21, 3); SMPL's 23 add its two hand joints.
    The bare "expected (N, 69)" left a SMPL-X user guessing which 6 numbers were missing, and where."""
    if a.ndim == 0 or (a.shape[-1] != 63 and a.shape[-2:] != (21, 3)):
        return ""
    keep = "append 2 zero rotations" if a.shape[-1] == 3 else "append 6 zeros"
    return ("; 21 joints are SMPL-X's or SMPL+H's body_pose (left_hip … right_wrist, which are SMPL's first 21 "
            f"too): {keep} for SMPL's two hand joints (held flat)")


def ten_betas(betas: np.ndarray, where: str) -> np.ndarray:
    """SMPL's 10 shape coefficients from another count, where that is exact: fewer are the same body with the
    rest zero; more (16, 300 from a fitting code) only when every coefficient past the tenth is zero."""
    count = betas.shape[1]
    if count < 10:
        return np.concatenate([betas, np.zeros((betas.shape[0], 10 - count), betas.dtype)], axis=1)
    if np.all(np.abs(betas[:, 10:]) < 1e-6):
        return betas[:, :10]
    raise InputError(f"{where}: betas has {count} coefficients and those past the tenth are not zero; the body "
                     "model uses SMPL's 10 (refit the shape with 10, or drop the rest knowingly: betas[:, :10])")


def check_smpl_arrays(arrays: dict, where: str, rows: str = "hypotheses", row: str = "hypothesis",
                      max_rows: int | None = None, too_many: Callable[[int], str] | None = None,
                      shared_ok: bool = True) -> dict[str, np.ndarray]:
    """``global_orient (N,3)``, ``body_pose (N,69)``, ``betas (N,10)``, ``transl (N,3)`` float32 from ``arrays``
    (other tools' layouts read by :func:`common_layouts`), or one :class:`InputError` naming ``where`` and the
    first bad ``row`` (of ``rows``). ``max_rows``: more rows are refused with ``too_many(n)``'s words; with
    ``shared_ok`` one betas / transl row is shared by every row (a common layout of hypotheses)."""
    arrays = common_layouts(arrays, where)
    out = {}
    n = None
    for key, dim in SMPL_KEYS.items():
        if key not in arrays:
            if key == "transl":
                continue
            raise InputError(f"{where}: missing array {key!r} (needs global_orient, body_pose, betas, transl)")
        dtype = np.asarray(arrays[key]).dtype
        if not np.issubdtype(dtype, np.number):
            raise InputError(f"{where}: {key} holds {dtype} values, expected numbers")
        if np.issubdtype(dtype, np.complexfloating):  # the cast below dropped the imaginary part with a mere warning
            raise InputError(f"{where}: {key} holds {dtype} values, expected real numbers")
        a = np.asarray(arrays[key], dtype=np.float32)
        if a.ndim == 3 and a.shape[0] == 1:  # group.numpy() of a one-input group: (1, N, …), as the group itself is
            a = a[0]
        if a.ndim == 1:
            a = a[None]
        if key == "betas" and a.ndim == 2 and a.shape[1] != dim:
            a = ten_betas(a, where)
        if a.ndim != 2 or a.shape[1] != dim:
            raise InputError(f"{where}: {key} has shape {a.shape}, expected (N, {dim})"
                             + (other_body_pose(a) if key == "body_pose" else ""))
        n = a.shape[0] if n is None else n
        if n == 0:  # before the counts are compared: a shared (1, 10) betas read "betas has 1 hypotheses, others 0"
            raise InputError(f"{where}: no {rows}")
        if max_rows is not None and n > max_rows:
            raise InputError(too_many(n) if too_many else f"{where}: {n} {rows}, at most {max_rows} accepted")
        if shared_ok and key in ("betas", "transl") and a.shape[0] == 1 and n > 1:
            a = np.repeat(a, n, axis=0)  # one body shape / placement shared by every hypothesis (a common layout)
        if a.shape[0] != n:
            raise InputError(f"{where}: {key} has {a.shape[0]} {rows}, others have {n}")
        if not np.isfinite(a).all():
            i = int(np.argwhere(~np.isfinite(a))[0][0])
            raise InputError(f"{where}: {key} of {row} {i} contains NaN/inf")
        out[key] = a
    if "transl" not in out:
        raise InputError(f"{where}: missing array 'transl' (camera translation per {row})")
    far = np.abs(out["transl"]).max(axis=1) > MAX_ABS_TRANSL_M
    if far.any():
        i = int(np.argmax(far))
        raise InputError(f"{where}: transl of {row} {i} reaches {np.abs(out['transl'][i]).max():.3g}; the "
                         f"camera translation is in metres (at most {MAX_ABS_TRANSL_M:g} accepted)")
    big = np.abs(out["betas"]).max(axis=1) > MAX_ABS_BETA
    if big.any():  # SMPL's shape space spans about ±5 standard deviations; far beyond it is not a body
        i = int(np.argmax(big))
        raise InputError(f"{where}: betas of {row} {i} reach {np.abs(out['betas'][i]).max():.3g}; SMPL shape "
                         f"coefficients are standard deviations (|β| ≲ 5, at most {MAX_ABS_BETA:g} accepted)")
    return out
