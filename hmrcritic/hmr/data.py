"""Samples, synthetic scene splits and readers for user inputs.

A *scene* is a posed body seen by a random camera: the procedural pose source (:mod:`poses`) → the body
model (batched) → a camera placed around the person (azimuth, elevation, distance, roll; the person
roughly centred and spanning a preset fraction of the image) → 2D keypoints in the COCO-17 and SMPL-24
layouts with the corruptions a real detector shows: pixel noise whose confidence drops with the error,
occasional outliers, spatially coherent occlusion (image-space boxes, a whole limb end, joints hidden
behind the torso, the face when it looks away) and truncation at the image border. Hidden points are
stored as ``[0, 0, 0]`` so their position cannot leak into a model.

Splits (:data:`SPLITS`) have fixed seeds: ``train`` (labelled), ``test`` (held out, labelled, other seed)
and ``wild`` (harder viewpoints, more noise/occlusion). ``wild``'s 3D labels live in a separate
``labels_eval.npz`` next to the condition shards, so finetuning code that reads the shards never sees them;
evaluation reads them through :meth:`SceneSet.eval_labels`. A split is a folder
``data_dir()/<split>/`` with ``shard_*.npz`` and ``manifest.json``, written into a staging folder and
swapped in atomically; :func:`load_split` generates it on first use under a file lock.

The readers turn user files (PNG/JPEG image; keypoint JSON: COCO-17, OpenPose BODY_25 / COCO-18, COCO results or
annotations, MMPose, AlphaPose, Halpe-26, COCO-WholeBody-133 — see ``KEYPOINT_FORMATS``) into a :class:`Sample` and
raise :class:`~hmrcritic.errors.InputError` naming the file and the problem for anything malformed.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import shutil
import sys
import time
import weakref
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import torch

from hmrcritic import config
from hmrcritic.errors import AssetError, InputError, keywords_checked, warn_caller
from hmrcritic.hmr import anatomy, camera, poses
from hmrcritic.hmr import intrinsics as intrinsics_mod
from hmrcritic.hmr.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from hmrcritic.io import (
    as_text,
    atomic_save_npz,
    atomic_write_json,
    newest_mtime,
    not_a_file_error,
    pid_alive,
    read_small_json,
    sha256_file,
)

GENERATOR_VERSION = f"scenes-1/{poses.GENERATOR_VERSION}"
DEFAULT_IMAGE_SIZE = (256, 256)

COCO17_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
# OpenPose BODY_25 index of each COCO-17 keypoint (BODY_25: 0 nose, 1 neck, 2-4 right arm, 5-7 left arm,
# 8 mid-hip, 9-11 right leg, 12-14 left leg, 15/16 right/left eye, 17/18 right/left ear, 19-24 feet).
BODY25_TO_COCO17 = [0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11]
# OpenPose COCO-18 (0 nose, 1 neck, 2-4 right arm, 5-7 left arm, 8-10 right leg, 11-13 left leg, 14/15 right/left
# eye, 16/17 right/left ear) index of each COCO-17 keypoint
COCO18_TO_COCO17 = [0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10]
# Human3.6M-17 (VideoPose3D / MotionBERT order: 0 pelvis, 1-3 right hip/knee/ankle, 4-6 left hip/knee/ankle,
# 7 spine, 8 thorax, 9 neck/nose, 10 head, 11-13 left shoulder/elbow/wrist, 14-16 right shoulder/elbow/wrist)
# index of each COCO-17 keypoint; -1: H36M has no such point (the eyes and ears), read as hidden. The point 9
# is the nose in MotionBERT's and VideoPose3D's COCO→H36M conversions, which copy the COCO hips to 1 and 4.
H36M17_TO_COCO17 = [9, -1, -1, -1, -1, 11, 14, 12, 15, 13, 16, 4, 1, 5, 2, 6, 3]
# the orders a 17-point keypoint file may be in; both hold 17 points, so the reader cannot tell them apart
KEYPOINT_LAYOUTS = ("coco17", "h36m17")

LABEL_KEYS = ("global_orient", "body_pose", "betas", "transl", "joints3d", "keypoints_clean", "category")
CONDITION_KEYS = ("keypoints", "smpl24_keypoints", "K", "image_size")

# Corruption and viewpoint presets. Ranges are uniform; roll_deg is a standard deviation.
PRESETS: dict[str, dict] = {
    "train": dict(
        azimuth_deg=(-180, 180),
        elevation_deg=(-10, 30),
        roll_deg=3.0,
        focal_scale=(0.8, 1.6),
        fill=(0.4, 0.8),
        centre_jitter=0.08,
        noise_frac=0.01,
        outlier_p=0.0,
        box_p=0.3,
        boxes_max=1,
        limb_p=0.15,
        self_occ_p=0.6,
        face_occ=True,
    ),
    "wild": dict(
        azimuth_deg=(-180, 180),
        elevation_deg=(-35, 65),
        roll_deg=15.0,
        focal_scale=(0.7, 2.0),
        fill=(0.45, 0.95),
        centre_jitter=0.18,
        noise_frac=0.025,
        outlier_p=0.04,
        box_p=0.7,
        boxes_max=2,
        limb_p=0.35,
        self_occ_p=0.9,
        face_occ=True,
    ),
    "clean": dict(
        azimuth_deg=(-180, 180),
        elevation_deg=(-10, 30),
        roll_deg=0.0,
        focal_scale=(1.0, 1.0),
        fill=(0.5, 0.7),
        centre_jitter=0.0,
        noise_frac=0.0,
        outlier_p=0.0,
        box_p=0.0,
        boxes_max=0,
        limb_p=0.0,
        self_occ_p=0.0,
        face_occ=False,
    ),
}
PRESETS["test"] = PRESETS["train"]
SPLITS: dict[str, tuple[int, int, str]] = {
    "train": (20000, 1001, "train"),
    "wild": (2000, 2002, "wild"),
    "test": (1000, 3003, "test"),
}

# Chains (COCO-17 indices / SMPL-24 indices) for limb occluders: a random tail of the chain is hidden.
_LIMBS_COCO = [[5, 7, 9], [6, 8, 10], [11, 13, 15], [12, 14, 16], [0, 1, 2, 3, 4]]
_LIMBS_SMPL = [[16, 18, 20, 22], [17, 19, 21, 23], [1, 4, 7, 10], [2, 5, 8, 11], [12, 15]]
_FACE_COCO = [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------- Sample
@dataclass
class Sample:
    """One input: COCO-17 keypoints ``[u, v, conf]`` (conf 0 = not visible), intrinsics and image size;
    labels (SMPL parameters in the camera frame, joints) when known."""

    sample_id: str
    keypoints: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]
    smpl24_keypoints: np.ndarray | None = None
    image_path: str | None = None
    mask_path: str | None = None
    global_orient: np.ndarray | None = None
    body_pose: np.ndarray | None = None
    betas: np.ndarray | None = None
    transl: np.ndarray | None = None
    joints3d: np.ndarray | None = None
    category: str | None = None

    @property
    def has_labels(self) -> bool:
        return self.body_pose is not None

    def __repr__(self) -> str:
        """One line: the id, what is visible, the image and whether it is labelled. The dataclass repr printed
        every array (79 lines for one sample) when a notebook cell ended with ``split[0]``; the arrays are the
        fields themselves."""
        try:  # a repr never raises: a tensor that requires grad, on a device, of a dtype numpy lacks still prints
            kp = self.keypoints
            kp = kp.detach().cpu().float() if hasattr(kp, "detach") else kp
            kp = np.asarray(kp, dtype=np.float64).reshape(-1, 3)
            seen = f"{int((kp[:, 2] > 0).sum())}/{len(kp)} keypoints visible"
        except Exception:  # a hand-made sample with other keypoints still prints
            seen = f"keypoints of type {type(self.keypoints).__name__}"
        try:
            size = tuple(int(v) for v in self.image_size)
        except Exception:  # None, a single number: shown as given
            size = self.image_size
        extra = "".join(f", {name}={getattr(self, name)!r}" for name in ("image_path", "category")
                        if getattr(self, name) is not None)
        return (f"Sample(sample_id={self.sample_id!r}, {seen}, image_size={size!r}"
                f"{extra}, {'labelled' if self.has_labels else 'unlabelled'})")


# ------------------------------------------------------------------------------------- scene generation
def _resolve_preset(preset) -> dict:
    if isinstance(preset, dict):
        return {**PRESETS["train"], **preset}
    try:
        return dict(PRESETS[preset])
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}") from None


def make_scenes(
    n: int,
    seed: int,
    preset="train",
    image_size=DEFAULT_IMAGE_SIZE,
    body=None,
    chunk: int = 4096,
    categories=None,
    progress=None,
) -> dict[str, np.ndarray]:
    """Generate ``n`` scenes as stacked numpy arrays (conditions and labels together), deterministic per
    ``seed``. ``body`` defaults to :func:`hmrcritic.hmr.body.load_body_model`."""
    from hmrcritic.hmr.body import load_body_model

    cfg = _resolve_preset(preset)
    body = body or load_body_model()
    W, H = int(image_size[0]), int(image_size[1])
    pose = poses.sample_poses(
        n, seed, categories, joints_fn=lambda g, b, be: keypoint_joints(body, g, b, be)[0]
    )
    rng = np.random.default_rng([seed, 7])
    cams = camera.sample_cameras(n, rng, cfg)
    out: dict[str, list] = {k: [] for k in (*CONDITION_KEYS, *LABEL_KEYS)}
    for s in range(0, n, chunk):
        sl = slice(s, min(n, s + chunk))
        part = _scene_chunk(
            body, {k: v[sl] for k, v in pose.items()}, {k: v[sl] for k, v in cams.items()}, cfg, W, H, rng
        )
        for k, v in part.items():
            out[k].append(v)
        if progress is not None:
            progress(sl.stop - sl.start)
    arrays = {k: np.concatenate(v) for k, v in out.items()}
    arrays["category"] = pose["category"].numpy().astype(np.int64)
    return arrays


# per body model object, dropped with it: keyed by id() a new body could reuse a freed id and get the old
# model's regressors
_FAST_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def keypoint_joints(body, global_orient, body_pose, betas) -> tuple[torch.Tensor, torch.Tensor]:
    """SMPL joints (B,24,3) and COCO-17 points (B,17,3) without skinning every vertex.

    Keypoints need the 24 joints and 5 face vertices only, so shape blending, pose correctives and
    skinning are evaluated for those 5 vertices (the rest of the mesh is ~99 % of the cost of a full
    SMPL forward). Equal to ``body(...)`` up to float rounding (tested); falls back to it for a body that
    does not expose smplx's buffers.
    """
    s = getattr(body, "smpl", None)
    if s is None or not hasattr(s, "posedirs") or not hasattr(body, "vertex_ids"):
        res = body(global_orient, body_pose, betas)
        return res.joints, body.coco17(res)
    from smplx.lbs import batch_rigid_transform, batch_rodrigues

    from hmrcritic.hmr.body import EXTRA_NAMES

    key = body
    if key not in _FAST_CACHE:
        ids = torch.tensor([body.vertex_ids[k] for k in EXTRA_NAMES], device=s.v_template.device)
        nv = s.v_template.shape[0]
        _FAST_CACHE[key] = {
            "j_t": s.J_regressor @ s.v_template,
            "j_sd": torch.einsum("jv,vkl->jkl", s.J_regressor, s.shapedirs),
            "e_t": s.v_template[ids],
            "e_sd": s.shapedirs[ids],
            "e_pd": s.posedirs.reshape(-1, nv, 3)[:, ids].reshape(s.posedirs.shape[0], -1),
            "e_w": s.lbs_weights[ids],
        }
    c = _FAST_CACHE[key]
    dev = s.v_template.device
    go, bp, be = (
        torch.as_tensor(x, dtype=torch.float32, device=dev) for x in (global_orient, body_pose, betas)
    )
    B = go.shape[0]
    joints_rest = c["j_t"] + torch.einsum("jkl,bl->bjk", c["j_sd"], be)
    extra = c["e_t"] + torch.einsum("vkl,bl->bvk", c["e_sd"], be)
    rot = batch_rodrigues(torch.cat([go, bp], 1).reshape(-1, 3)).reshape(B, 24, 3, 3)
    feat = (rot[:, 1:] - torch.eye(3, device=dev)).reshape(B, -1)
    extra = extra + (feat @ c["e_pd"]).reshape(B, -1, 3)
    joints, A = batch_rigid_transform(rot, joints_rest, s.parents, dtype=torch.float32)
    T = torch.einsum("vj,bjxy->bvxy", c["e_w"], A)
    extra = (T[..., :3, :3] @ extra[..., None])[..., 0] + T[..., :3, 3]
    from hmrcritic.hmr.body import BodyOutput

    out = BodyOutput(vertices=joints.new_zeros(B, 0, 3), joints=joints, extra=extra)
    return joints, body.coco17(out)


@torch.no_grad()
def _scene_chunk(body, pose: dict, cams: dict, cfg: dict, W: int, H: int, rng: np.random.Generator) -> dict:
    n = pose["body_pose"].shape[0]
    go_b, bp, betas = pose["global_orient_body"], pose["body_pose"], pose["betas"]
    joints_w, coco_w = (t.float().cpu() for t in keypoint_joints(body, go_b, bp, betas))
    pts_w = torch.cat([joints_w, coco_w], 1)
    centre = 0.5 * (pts_w.amin(1) + pts_w.amax(1))
    focal = torch.as_tensor(cams["focal_scale"], dtype=torch.float32) * max(W, H)
    K = torch.zeros(n, 3, 3)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = focal, focal, W / 2, H / 2, 1.0
    az, el, roll = (torch.as_tensor(cams[k], dtype=torch.float32) for k in ("azimuth", "elevation", "roll"))
    fill = torch.as_tensor(cams["fill"], dtype=torch.float32)
    dist = torch.full((n,), 4.0)
    for _ in range(3):  # distance so the person's larger projected side spans `fill` of the image
        pos = camera.orbit_position(centre, dist, az, el)
        rot = camera.look_at_rotation(pos, centre, roll)
        uv = camera.project((pts_w - pos[:, None]) @ rot.transpose(1, 2), K)
        extent = (uv.amax(1) - uv.amin(1)).amax(1) * 1.12  # joints sit inside the silhouette
        dist = dist * extent / (fill * min(W, H))
    # No body part closer than 0.6 m to the camera (extreme wide-angle close-ups look like nothing real).
    pos = camera.orbit_position(centre, dist, az, el)
    near = ((pts_w - pos[:, None]) @ camera.look_at_rotation(pos, centre, roll).transpose(1, 2))[..., 2].amin(
        1
    )
    dist = dist + (0.6 - near).clamp_min(0)
    # Shift the look-at point in the image plane so the person is off-centre by `jitter` of the image.
    jit = torch.as_tensor(cams["jitter"], dtype=torch.float32)
    pos = camera.orbit_position(centre, dist, az, el)
    rot = camera.look_at_rotation(pos, centre, roll)
    shift = -(jit[:, 0:1] * W * rot[:, 0] + jit[:, 1:2] * H * rot[:, 1]) * (dist / focal)[:, None]
    rot = camera.look_at_rotation(pos, centre + shift, roll)
    # Camera-frame parameters: X_cam = R (X_w - C). SMPL rotates about the root joint J0, hence transl.
    j0 = joints_w[:, 0]
    go_c = matrix_to_axis_angle(rot @ axis_angle_to_matrix(go_b))
    transl = ((j0 - pos)[:, None] @ rot.transpose(1, 2))[:, 0] - j0
    joints_c = (joints_w - pos[:, None]) @ rot.transpose(1, 2)
    coco_c = (coco_w - pos[:, None]) @ rot.transpose(1, 2)
    kp_clean = camera.project(coco_c, K)
    sm_clean = camera.project(joints_c, K)
    box = (kp_clean.amax(1) - kp_clean.amin(1)).norm(dim=-1).numpy()  # person box diagonal, px
    kp = _corrupt(kp_clean.numpy(), coco_c.numpy(), box, cfg, W, H, rng, _LIMBS_COCO, _FACE_COCO)
    sm = _corrupt(sm_clean.numpy(), joints_c.numpy(), box, cfg, W, H, rng, _LIMBS_SMPL, [])
    return {
        "keypoints": kp.astype(np.float32),
        "smpl24_keypoints": sm.astype(np.float32),
        "K": K.numpy().astype(np.float32),
        "image_size": np.tile(np.array([W, H], np.int32), (n, 1)),
        "global_orient": go_c.numpy().astype(np.float32),
        "body_pose": bp.numpy().astype(np.float32),
        "betas": betas.numpy().astype(np.float32),
        "transl": transl.numpy().astype(np.float32),
        "joints3d": joints_c.numpy().astype(np.float32),
        "keypoints_clean": kp_clean.numpy().astype(np.float32),
        "category": np.zeros(n, np.int64),  # filled by the caller
    }


def _corrupt(uv, pts_c, box, cfg, W, H, rng, limbs, face) -> np.ndarray:
    """Noise, confidences, occlusion and truncation for one layout: ``[u, v, c]`` (n,J,3), hidden points 0."""
    n, J, _ = uv.shape
    sigma = cfg["noise_frac"] * box * rng.uniform(0.5, 1.5, n)  # px, per sample
    err = rng.normal(0, 1, (n, J, 2)) * sigma[:, None, None]
    outlier = rng.random((n, J)) < cfg["outlier_p"]
    ang = rng.uniform(0, 2 * np.pi, (n, J))
    mag = rng.uniform(0.08, 0.25, (n, J)) * box[:, None]
    err[outlier] = np.stack([np.cos(ang), np.sin(ang)], -1)[outlier] * mag[outlier][:, None]
    r = np.linalg.norm(err, axis=-1) / np.maximum(2.0 * sigma[:, None], 0.02 * box[:, None])
    conf = 0.51 + 0.49 * np.exp(-0.5 * r**2) * rng.uniform(0.85, 1.0, (n, J))
    noisy = uv + err
    hidden = np.zeros((n, J), bool)
    # Image-space box occluders centred on a random joint (an object in front of the person).
    for _ in range(cfg["boxes_max"]):
        use = rng.random(n) < cfg["box_p"]
        c = uv[np.arange(n), rng.integers(0, J, n)] + rng.normal(0, 0.05, (n, 2)) * box[:, None]
        half = rng.uniform(0.1, 0.25, (n, 2)) * box[:, None]
        inside = (np.abs(uv - c[:, None]) <= half[:, None]).all(-1)
        hidden |= inside & use[:, None]
    # A limb hidden from a random joint to its end (out of view behind something, tucked away).
    use = rng.random(n) < cfg["limb_p"]
    which = rng.integers(0, len(limbs), n)
    start = rng.random(n)
    for li, chain in enumerate(limbs):
        for k, j in enumerate(chain):
            hidden[:, j] |= use & (which == li) & (k >= np.floor(start * len(chain)))
    # Self-occlusion: the ray camera→joint passes through the torso in front of the joint.
    if cfg["self_occ_p"] > 0:
        torso_a = np.broadcast_to(
            pts_c[:, None, 0] if J == 24 else 0.5 * (pts_c[:, None, 11] + pts_c[:, None, 12]), (n, J, 3)
        )
        torso_b = np.broadcast_to(
            pts_c[:, None, 12] if J == 24 else 0.5 * (pts_c[:, None, 5] + pts_c[:, None, 6]), (n, J, 3)
        )
        p = torch.from_numpy(pts_c.astype(np.float32))
        d = anatomy.segment_distance(
            torch.zeros_like(p),
            p * 0.97,
            torch.from_numpy(np.ascontiguousarray(torso_a, np.float32)),
            torch.from_numpy(np.ascontiguousarray(torso_b, np.float32)),
        )
        mid_depth = 0.5 * (torso_a[..., 2] + torso_b[..., 2])
        behind = (d.numpy() < 0.09) & (pts_c[..., 2] > mid_depth + 0.05)
        hidden |= behind & (rng.random((n, 1)) < cfg["self_occ_p"])
    # The face looking away: a face point clearly further from the camera than the ears' midpoint.
    if face and cfg["face_occ"]:
        mid = 0.5 * (pts_c[:, 3] + pts_c[:, 4])
        depth = pts_c[:, face, 2] - mid[:, None, 2]
        hidden[:, face] |= depth > np.array([0.02, 0.02, 0.02, 0.045, 0.045])
    # Keep a usable minimum: if occluders hid nearly everything, drop them for that sample.
    truncated = (noisy[..., 0] < 0) | (noisy[..., 0] >= W) | (noisy[..., 1] < 0) | (noisy[..., 1] >= H)
    truncated |= pts_c[..., 2] < 0.1
    too_few = (~hidden & ~truncated).sum(1) < max(4, J // 3)
    hidden[too_few] = False
    visible = ~hidden & ~truncated
    out = np.concatenate([noisy, conf[..., None]], -1)
    out[~visible] = 0.0
    return out


# ------------------------------------------------------------------------------------------ split files
def _split_root(root) -> Path:
    return config.path_arg(root, "root") if root is not None else config.data_dir()


# Scenes are built in memory before they are written (about 1.3 KB a scene, twice that at the peak): a million is
# 50× the train split and a few GB; an --n of 10**8 ran for minutes before the machine ran out of memory.
MAX_SCENES = 1_000_000


def _too_many(what: str, n) -> InputError:
    return InputError(f"{what} must be in 1..{MAX_SCENES:,} scenes (they are held in memory while generating, about "
                      f"1.3 KB each), got {n:,.0f}")


def default_size(name: str) -> int:
    """The split's default size times ``HMRCRITIC_SPLIT_SIZE_SCALE`` (tests use tiny splits).

    Held to :data:`MAX_SCENES` as ``data generate --n`` is: a scale of 100 sent a first use into generating
    2,000,000 scenes until memory ran out, and 1e305 overflowed to infinity (a bare OverflowError)."""
    scale = config.env_number("HMRCRITIC_SPLIT_SIZE_SCALE", 1.0, float, 0, above=True)
    size = SPLITS[name][0] * scale
    if not size <= MAX_SCENES:
        raise _too_many(f"split {name}: HMRCRITIC_SPLIT_SIZE_SCALE={scale:g} × {SPLITS[name][0]:,} scenes", size)
    return max(1, int(round(size)))


def _check_name(name: str) -> None:
    if name not in SPLITS:
        raise InputError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")


def _split_lock(folder: Path):
    """The lock ``.<name>.lock`` beside a split folder, held by :func:`load_split` while it checks and
    generates and by :func:`generate_split` while it swaps the new folder in. A singleton per path, so
    ``load_split`` → ``generate_split`` re-enters it instead of deadlocking on a second instance."""
    from filelock import FileLock

    return FileLock(str(folder.parent / f".{folder.name}.lock"), is_singleton=True)


FOREIGN_LEFTOVER_AGE_S = 86_400.0  # another host's staging folder untouched this long is a leftover


def _this_host() -> str:
    """This machine's name as it may stand in a folder name."""
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def _leftover_name(kind: str, out: Path) -> Path:
    """``.<kind>-<name>-<pid>@<host>`` beside ``out``: the folder a generation stages into (``staging``) or moves
    the split it replaces to (``old``). The host is in the name because a data folder can be shared across
    machines, where a pid says nothing about another machine's processes."""
    return out.parent / f".{kind}-{out.name}-{os.getpid()}@{_this_host()}"


def _remove_dead_leftovers(out: Path) -> list[Path]:
    """Remove the staging and swap folders (:func:`_leftover_name`) next to ``out`` that no generation is
    writing any more (a generation killed mid-way leaves them; nothing else ever would remove them): this
    host's whose process no longer runs, another host's untouched for :data:`FOREIGN_LEFTOVER_AGE_S` — never
    one a live process may be writing right now. Judged by pid alone, a live generation on another machine
    sharing the folder lost its staging folder. Names without a host (older releases) are this host's.
    Returns what was removed."""
    here = _this_host()
    removed = []
    for kind in ("staging", "old"):
        prefix = f".{kind}-{out.name}-"
        for path in out.parent.glob(f".{kind}-*"):
            pid, _, host = path.name[len(prefix):].partition("@")
            if not (path.name.startswith(prefix) and pid.isdigit()):
                continue
            if host in ("", here):
                if int(pid) == os.getpid() or pid_alive(pid):
                    continue
            elif time.time() - newest_mtime(path) < FOREIGN_LEFTOVER_AGE_S:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@keywords_checked
def generate_split(
    name: str,
    out_dir=None,
    n: int | None = None,
    seed: int | None = None,
    render_images: bool = False,
    shard_size: int = 1000,
    image_size=DEFAULT_IMAGE_SIZE,
    body=None,
    quiet: bool = False,
) -> Path:
    """Generate split ``name`` into ``out_dir`` (default ``data_dir()/<name>``) and return that folder.

    Written to a staging folder and swapped in, so a crash never leaves a half-written split; the staging
    and swap folders a killed run left behind are removed on the next run. The swap holds the split's lock
    (:func:`_split_lock`): two processes generating the same split at once would otherwise move each
    other's folders away mid-swap (``Directory not empty`` / ``No such file``) and orphan ``.old-*``."""
    from hmrcritic.hmr.body import load_body_model

    _check_name(name)
    _, seed_default, preset = SPLITS[name]
    n = default_size(name) if n is None else int(n)
    seed = seed_default if seed is None else int(seed)
    if n < 1:
        raise InputError(f"split {name}: n must be ≥ 1, got {n}")
    if n > MAX_SCENES:
        raise _too_many(f"split {name}: n", n)
    given = out = config.path_arg(out_dir, "out_dir") if out_dir is not None else _split_root(None) / name
    if out.is_symlink() and out.is_dir():
        # a split folder that is a link (the data on another drive): the new split replaces the folder it names,
        # there. Moving the link aside swapped the new split into the home in its place and left the link behind
        # as an `.old-*` that rmtree refuses to remove, for ever
        out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_leftovers(out)
    body = body or load_body_model()
    t0, c0 = time.perf_counter(), time.process_time()
    arrays = _with_progress(
        f"generating split '{name}' ({n} scenes)",
        n,
        quiet,
        lambda cb: make_scenes(n, seed, preset, image_size, body, progress=cb),
    )
    stage = _leftover_name("staging", out)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        has_labels = name != "wild"
        ids = np.array([f"{name}-{i:06d}" for i in range(n)])
        if render_images:
            _render_split(stage, arrays, ids, body)
        keys = CONDITION_KEYS + (LABEL_KEYS if has_labels else ())
        shards = []
        for s in range(0, n, shard_size):
            fname = f"shard_{s // shard_size:05d}.npz"
            sl = slice(s, min(n, s + shard_size))
            atomic_save_npz(stage / fname, sample_id=ids[sl], **{k: arrays[k][sl] for k in keys})
            shards.append({"file": fname, "n": sl.stop - sl.start, "sha256": sha256_file(stage / fname)})
        labels_eval = None
        if not has_labels:
            atomic_save_npz(stage / "labels_eval.npz", sample_id=ids, **{k: arrays[k] for k in LABEL_KEYS})
            labels_eval = {"file": "labels_eval.npz", "sha256": sha256_file(stage / "labels_eval.npz")}
        manifest = {
            "split": name,
            "n": n,
            "seed": seed,
            "preset": preset,
            "preset_params": _resolve_preset(preset),
            "generator_version": GENERATOR_VERSION,
            "has_labels": has_labels,
            "shards": shards,
            "labels_eval": labels_eval,
            "body_model": body.name,
            "body_sha256": getattr(body, "source_sha256", None),  # the file's content (None: the mannequin)
            "image_size": [int(image_size[0]), int(image_size[1])],
            "images": bool(render_images),
            "categories": list(poses.POSE_CATEGORIES),
            "seconds": round(time.perf_counter() - t0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2),
        }
        atomic_write_json(stage / "manifest.json", manifest)
        old = _leftover_name("old", out)
        import contextlib

        with contextlib.ExitStack() as locks:
            locks.enter_context(_split_lock(given))  # the lock load_split holds: beside the path the split is known by
            if out != given:  # and beside the folder a link names, which other homes' links may name too
                locks.enter_context(_split_lock(out))
            shutil.rmtree(old, ignore_errors=True)  # os.replace cannot move onto a non-empty folder
            if out.exists():
                os.replace(out, old)
            os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return given


def _with_progress(label: str, total: int, quiet: bool, fn):
    if quiet or total < 2000:
        return fn(None)
    import sys

    from rich.console import Console
    from rich.progress import Progress

    # on stderr, beside the notice that data is being generated: stdout is the caller's (a --json reply, a pipe).
    # A bar only where one is drawn (a terminal, a notebook): elsewhere (a log, CI, a pipe) rich's transient bar drew
    # nothing and then wrote a blank line to stderr after the "(first use)" notice. stderr itself, not rich's
    # is_terminal: FORCE_COLOR (set by many CI systems) makes that True in a log too
    console = Console(stderr=True)
    if not (console.is_jupyter or (getattr(sys.stderr, "isatty", None) and sys.stderr.isatty())):
        return fn(None)
    with Progress(transient=True, console=console) as prog:
        task = prog.add_task(label, total=total)
        return fn(lambda k: prog.advance(task, k))


def _render_split(stage: Path, arrays: dict, ids: np.ndarray, body) -> None:
    """Shaded renders on a random two-tone background and silhouettes, as PNG (``images/``, ``masks/``)."""
    from PIL import Image

    from hmrcritic.hmr.render import get_renderer

    renderer = get_renderer()
    (stage / "images").mkdir()
    (stage / "masks").mkdir()
    rng = np.random.default_rng(len(ids))
    n = len(ids)
    for s in range(0, n, 256):
        sl = slice(s, min(n, s + 256))
        with torch.no_grad():
            verts = (
                body(
                    arrays["global_orient"][sl],
                    arrays["body_pose"][sl],
                    arrays["betas"][sl],
                    arrays["transl"][sl],
                )
                .vertices.cpu()
                .numpy()
            )
        for i, v in zip(range(sl.start, sl.stop), verts, strict=True):
            W, H = (int(x) for x in arrays["image_size"][i])
            rgb, depth = renderer.render(v, body.faces, arrays["K"][i], (W, H))
            top, bottom = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
            t = np.linspace(0, 1, H)[:, None, None]
            bg = (top * (1 - t) + bottom * t) * np.ones((1, W, 1))
            m = depth > 0
            img = np.where(m[..., None], rgb, bg).astype(np.uint8)
            Image.fromarray(img).save(stage / "images" / f"{ids[i]}.png")
            Image.fromarray((m * 255).astype(np.uint8)).save(stage / "masks" / f"{ids[i]}.png")


def _manifest_id(folder: Path) -> str | None:
    """:func:`_content_id` of the split's manifest now (None when there is none): a regeneration swaps in a new
    folder with a new manifest (its shards' checksums, its timings), so a change says the split was replaced."""
    try:
        return _content_id((folder / "manifest.json").read_bytes())
    except OSError:
        return None


def _content_id(raw: bytes) -> str:
    """The manifest's identity is its content. Its ``(device, inode)`` was: a file system hands a deleted file's
    inode to the next one made, so a split regenerated twice under a reader showed its manifest at the first one's
    inode again (seen under a parallel test run) and the reader went on with another generation's shards; stat
    times would stop a reader at a ``touch`` or differ between an NFS client's cached and fresh attributes."""
    import hashlib

    return hashlib.sha256(raw).hexdigest()


def _manifest(folder: Path) -> dict | None:
    """The split's manifest (None when there is none)."""
    return _manifest_and_id(folder)[0]


def _manifest_and_id(folder: Path) -> tuple[dict | None, str | None]:
    """The split's manifest and the :func:`_manifest_id` of the very bytes read (``(None, None)``: none there)."""
    try:
        with open(folder / "manifest.json", "rb") as fh:
            raw = fh.read()
        m = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8;
        # RecursionError: JSON nested thousands deep (it came out of every command that reads the split as a traceback)
        # what to do, like every other damaged-split message: load_split does not regenerate over it by itself
        raise AssetError(f"{folder / 'manifest.json'}: unreadable split manifest ({exc}); regenerate the split "
                         f"(delete {folder})") from None
    if not isinstance(m, dict):
        raise AssetError(f"{folder / 'manifest.json'}: not a split manifest (a JSON object expected); regenerate "
                         f"the split (delete {folder})")
    return m, _content_id(raw)


# what Sample needs from every shard (labels are optional there: wild keeps them in labels_eval.npz)
_SHARD_KEYS = ("sample_id", "keypoints", "K", "image_size")


def _read_npz(path: Path, folder: Path, what: str, required=()) -> dict[str, np.ndarray]:
    """All arrays of one split file, or an AssetError naming the file: a truncated, corrupt or missing shard
    (or wild's ``labels_eval.npz``) must give one line that says which file, not a bare BadZipFile/KeyError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:  # truncated → BadZipFile
        raise AssetError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc}); regenerate the split "
                         f"(delete {folder})") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise AssetError(f"{path}: {what} has no {', '.join(missing)}; regenerate the split (delete {folder})")
    return arrays


def _regenerate_command(manifest: dict) -> str:
    """The ``data generate`` command that makes this split again: with its ``--n``, ``--seed`` and ``--render``
    where they are not the defaults. The bare ``--split`` named for a damaged rendered split made one without
    images (and a custom-size split came back at the default size)."""
    name = manifest.get("split")
    cmd = f"hmrcritic data generate --split {name}"
    if isinstance(name, str) and name in SPLITS:  # a hand-edited "split": [...] raised "unhashable type" here
        n, seed = manifest.get("n"), manifest.get("seed")
        try:
            size = default_size(name)
        except InputError:
            size = None
        cmd += f" --n {n}" if isinstance(n, int) and n != size else ""
        cmd += f" --seed {seed}" if isinstance(seed, int) and seed != SPLITS[name][1] else ""
    return cmd + (" --render" if manifest.get("images") is True else "")  # "images": "no" is no rendered split


def _split_file(folder: Path, name, manifest: dict) -> Path:
    """The path of a file the manifest names (a shard, wild's labels), which must be a plain name inside the
    split's folder: generate_split writes nothing else, and a hand-edited or foreign manifest's ``"../x.npz"`` or
    absolute path read (and hashed, and trained on) a file from anywhere as if it were the split's own."""
    name = str(name)
    if name in ("", ".", "..") or PurePath(name).name != name:
        raise AssetError(f"{Path(folder) / 'manifest.json'}: names the file {name[:200]!r}, which is not inside the "
                         f"split's folder; regenerate the split: {_regenerate_command(manifest)}")
    path = Path(folder) / name
    # the same confinement for what the name leads to: a link placed in the folder (by hand, by a sync tool) that
    # points elsewhere was read, hashed and trained on as the split's own file. generate_split makes no links; a
    # split folder reached through a link (a home on another drive) is resolved too, so it still reads
    try:
        real, home = path.resolve(), Path(folder).resolve()
    except ValueError:  # a name no file can have (a NUL, a lone surrogate): no link either; its read says unreadable
        return path
    except (OSError, RuntimeError):  # RuntimeError: a loop of links
        real, home = None, Path(folder)
    if real is None or real.parent != home:
        what = (f"a link to {str(real)[:300]}, outside the split's folder" if real is not None else
                "a link that cannot be followed (a loop of links?)")
        raise AssetError(f"{path} is {what}; a split's files are its own: regenerate the split: "
                         f"{_regenerate_command(manifest)}")
    return path


def verify_split_files(manifest: dict, folder, labels: bool = True, images: bool = True) -> None:
    """Each shard (and wild's labels file) against the sha256 its manifest recorded: a file truncated, damaged or
    replaced since generation is named, instead of counted and summarised (``data info``) or trained on
    (``train-base``) as if it were whole. Hashing is cheap next to reading: the 20,000-scene train split (21 MB)
    hashes in ~20 ms. Entries without a sha256 are not checked. ``labels=False`` / ``images=False`` leave wild's
    labels file / the rendered images out: a reader that never opens them (export, which sends conditions only) has
    no reason to refuse a split for them."""
    entries = list(manifest.get("shards") or [])
    if labels and isinstance(manifest.get("labels_eval"), dict):
        entries.append(manifest["labels_eval"])
    for entry in entries:
        if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
            continue  # the manifest reader has already refused a manifest without file names
        path = _split_file(Path(folder), entry["file"], manifest)
        if not path.is_file():
            why = "is missing"
        elif sha256_file(path) != entry["sha256"]:
            why = "does not match its manifest (sha256 differs: truncated, damaged or replaced)"
        else:
            continue
        raise AssetError(f"{path} {why}; regenerate the split: {_regenerate_command(manifest)}")
    if images and manifest.get("images") and isinstance(manifest.get("n"), int):
        # the images hold no sha256 in the manifest, but a deleted images folder went unsaid ("images: True"),
        # while every sample read afterwards quietly had no image to overlay or align against
        found = sum(1 for f in (Path(folder) / "images").glob("*.png")) if (Path(folder) / "images").is_dir() else 0
        if found < manifest["n"]:
            raise AssetError(f"{Path(folder) / 'images'}: {found} of the split's {manifest['n']} images are there; "
                             f"regenerate the split: {_regenerate_command(manifest)}")


@keywords_checked
def load_split(
    name: str, root=None, generate: bool = True, n: int | None = None, quiet: bool = False
) -> SceneSet:
    """The split ``name`` from ``root`` (default ``data_dir()``), generated on first use. A split made by
    another generator version or body model is regenerated; with an explicit ``n`` a different size too."""
    from hmrcritic.hmr.body import load_body_model

    _check_name(name)
    folder = _split_root(root) / name
    body = load_body_model()

    def same_body(m) -> bool:
        # by the file's content where both sides know it: by its path alone, a SMPL file replaced at the same
        # path (neutral → male) kept the scenes of the old body, paired with labels the new one poses; and the
        # same file named by another path (relative, absolute) regenerated everything
        if m.get("body_sha256") and body.source_sha256:
            return m["body_sha256"] == body.source_sha256
        return m.get("body_model") == body.name

    def fresh(m):
        return (
            m is not None
            and m.get("generator_version") == GENERATOR_VERSION
            and same_body(m)
            and (n is None or m.get("n") == n)
        )

    m = _manifest(folder)
    if not fresh(m):
        if not generate:
            # which: "not found or out of date" for a split that is there, made with the SMPL file a shell without
            # HMRCRITIC_BODY_MODEL does not use, sent `data info` users to `data generate`, which replaces it
            if m is None:
                why = "not found"
            elif "generator_version" not in m:  # a `{}` or hand-made manifest read "made by generator None"
                why = "its manifest.json is not a split manifest (no generator_version)"
            elif m.get("generator_version") != GENERATOR_VERSION:
                why = f"made by generator {m.get('generator_version')}, not this one's {GENERATOR_VERSION}"
            elif not same_body(m):
                # the mannequin is no file to point HMRCRITIC_BODY_MODEL at: its scenes are used without the variable
                use = ("unset HMRCRITIC_BODY_MODEL to use it" if m.get("body_model") == "mannequin" else
                       "set HMRCRITIC_BODY_MODEL to that file to use it")
                why = (f"made with body model {m.get('body_model')}, not {body.name} (the body model in use): {use}, "
                       f"or replace it with scenes of {body.name}")
            else:
                why = f"of {m.get('n')} scenes, not {n}"
            raise AssetError(
                f"split '{name}' in {folder.parent}: {why}; "
                f"run `hmrcritic data generate --split {name}`"
            )
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _split_lock(folder):
            if not fresh(m := _manifest(folder)):  # another process may have made it meanwhile
                if not quiet:
                    # stderr: a command's --json output on stdout must stay parseable on first use. Which case: a
                    # split of another body model (a SMPL file's, replaced because the variable was unset in this
                    # shell) or generator was replaced under "(first use)", as if nothing had been there
                    if m is None:
                        why = "first use"
                    elif m.get("generator_version") != GENERATOR_VERSION:
                        why = f"replacing the one made by generator {m.get('generator_version')}"
                    elif not same_body(m):
                        why = f"replacing the one made with body model {m.get('body_model')}, not {body.name}"
                    else:
                        why = f"replacing the one of {m.get('n')} scenes by {n}"
                    print(f"hmrcritic: generating synthetic split '{name}' into {folder} ({why})", file=sys.stderr)
                generate_split(name, folder, n=n, quiet=quiet)
    return SceneSet(folder)


# far past any shard generate_split writes (its splits hold at most tens of thousands of scenes)
MAX_SHARD_SCENES = 2**31


class SceneSet:
    """One split on disk, loaded lazily shard by shard. Indexing gives :class:`Sample`; :meth:`arrays`
    gives stacked arrays for batching. ``wild`` has ``has_labels = False``; its labels are only reachable
    through :meth:`eval_labels`."""

    def __init__(self, folder):
        self.folder = Path(folder)
        m, self._manifest_id = _manifest_and_id(self.folder)
        if m is None:
            raise AssetError(f"{self.folder}: no manifest.json (not a generated split)")
        self.manifest = m
        try:
            self.name: str = m["split"]
            self.has_labels: bool = bool(m["has_labels"])
            self._counts = [int(s["n"]) for s in m["shards"]]
            self._files = [str(s["file"]) for s in m["shards"]]
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: a count of Infinity
            raise AssetError(f"{self.folder / 'manifest.json'}: not a split manifest (bad or missing "
                             f"{exc}); regenerate the split (delete {self.folder})") from None
        # a manifest edited to "shards": [] (or a count below 1) read as an empty split, and the first shard asked
        # for raised a bare IndexError; a negative count misplaced every later scene; one past any split (1e300)
        # made len() raise OverflowError
        bad = [c for c in self._counts if not 1 <= c <= MAX_SHARD_SCENES]
        if not self._counts or bad:
            raise AssetError(f"{self.folder / 'manifest.json'}: not a split manifest (no shards, or a shard of "
                             f"{str(bad[0] if bad else 0)[:20]} scenes); regenerate the split (delete {self.folder})")
        # flags are JSON true/false in every manifest generate_split writes: a hand-edited "has_labels": "false"
        # read as True (a non-empty string is), and a wild split's labels were looked for in shards that hold none
        for flag in ("has_labels", "images"):
            if flag in m and not isinstance(m[flag], bool):
                v = m[flag]
                shown = f"a JSON {'array' if isinstance(v, list) else 'object'}" if isinstance(v, list | dict) else (
                    json.dumps(v)[:40])
                raise AssetError(f"{self.folder / 'manifest.json'}: {flag} is {shown}, not true or false; regenerate "
                                 f"the split: {_regenerate_command(m)}")
        for name in self._files:
            _split_file(self.folder, name, m)
        if isinstance(m.get("labels_eval"), dict) and "file" in m["labels_eval"]:
            _split_file(self.folder, m["labels_eval"]["file"], m)
        self._offsets = np.cumsum([0, *self._counts])
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    @property
    def root(self) -> Path:
        """The split's folder (alias of ``folder``)."""
        return self.folder

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return (
            f"SceneSet({self.name!r}, n={len(self)}, labels={self.has_labels}, folder={str(self.folder)!r})"
        )

    def _read(self, file: str, what: str, required) -> dict[str, np.ndarray]:
        """``_read_npz`` of a file of this split, which must still be the split this set was opened on.

        Shards are read lazily, by whatever folder holds the split's name when they are first needed: a split
        regenerated meanwhile (``hmrcritic data generate`` in another shell, beside an exploration or export
        reading it for hours) handed this set shards of the new generation under the old manifest, silently
        mixing two splits (same size, other seed) or failing as "damaged" (other size) or "unreadable" (mid-swap)
        with advice to delete the new, intact split. Checked after the read (a split still the one opened is where
        the file came from) and after a failed one (gone mid-swap, not damaged: said so)."""
        replaced = AssetError(f"split {self.name!r} in {self.folder} was regenerated while this command was reading "
                              "it (`hmrcritic data generate` in another process?): its scenes would mix two "
                              "generations; run the command again")
        try:
            # through _split_file again: a link put in the folder after this set was opened is refused too
            arrays = _read_npz(_split_file(self.folder, file, self.manifest), self.folder, what, required)
        except AssetError:
            if _manifest_id(self.folder) != self._manifest_id:
                raise replaced from None
            raise
        if _manifest_id(self.folder) != self._manifest_id:
            raise replaced
        return arrays

    def _shard(self, k: int) -> dict[str, np.ndarray]:
        if k not in self._cache:
            arrays = self._read(self._files[k], "shard", _SHARD_KEYS)
            # the manifest's count decides the indexing: a shard holding other rows (cut short, replaced by hand)
            # would give an IndexError far from here, or silently fewer scenes to train or evaluate on
            rows = {key: len(v) for key, v in arrays.items() if getattr(v, "ndim", 0) >= 1}
            if set(rows.values()) != {self._counts[k]}:
                raise AssetError(f"split {self.name!r} is damaged: {self.folder / self._files[k]} holds "
                                 f"{sorted(set(rows.values()))} rows "
                                 f"where its manifest lists {self._counts[k]}; regenerate it (delete {self.folder})")
            self._cache[k] = arrays
        return self._cache[k]

    def keys(self) -> list[str]:
        return list(self._shard(0).keys())

    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        """Sample ``i`` (negative counts from the end), or a list of them for a slice (``split[:5]``). An index
        that is not an integer is one InputError line — ``split["a"]`` was a bare TypeError from a comparison, and
        a slice one too."""
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if isinstance(i, bool):
            raise InputError(f"split {self.name}: index must be an integer, got bool")
        try:
            i = operator.index(i)
        except TypeError:
            raise InputError(f"split {self.name}: index must be an integer or a slice, got "
                             f"{type(i).__name__}") from None
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"split {self.name}: index {i} out of range (n={len(self)})")
        k = int(np.searchsorted(self._offsets, i, side="right") - 1)
        a = self._shard(k)
        j = i - int(self._offsets[k])
        get = lambda key: a[key][j].copy() if key in a else None  # noqa: E731 (copies keep the cache intact)
        sid = str(a["sample_id"][j])
        img = self.folder / "images" / f"{sid}.png"
        msk = self.folder / "masks" / f"{sid}.png"
        cat = get("category")
        return Sample(
            sample_id=sid,
            keypoints=a["keypoints"][j].copy(),
            K=a["K"][j].copy(),
            image_size=(int(a["image_size"][j][0]), int(a["image_size"][j][1])),
            smpl24_keypoints=get("smpl24_keypoints"),
            image_path=str(img) if img.exists() else None,
            mask_path=str(msk) if msk.exists() else None,
            global_orient=get("global_orient"),
            body_pose=get("body_pose"),
            betas=get("betas"),
            transl=get("transl"),
            joints3d=get("joints3d"),
            category=poses.POSE_CATEGORIES[int(cat)] if cat is not None else None,
        )

    def arrays(self, keys=None) -> dict[str, np.ndarray]:
        """Stacked arrays over all shards for ``keys`` (default: every key in the shards)."""
        keys = self.keys() if keys is None else list(keys)
        shards = [self._shard(k) for k in range(len(self._counts))]
        missing = [k for k in keys if k not in shards[0]]
        if missing:
            hint = " (wild's labels are only in eval_labels())" if not self.has_labels else ""
            raise KeyError(f"split {self.name} has no {', '.join(missing)}{hint}")
        return {k: np.concatenate([s[k] for s in shards]) for k in keys}

    def eval_labels(self) -> dict[str, np.ndarray]:
        """3D labels for evaluation (all splits): from the shards, or ``labels_eval.npz`` for ``wild``."""
        if self.has_labels:
            return self.arrays(["sample_id", *LABEL_KEYS])
        entry = self.manifest.get("labels_eval")
        if not isinstance(entry, dict) or "file" not in entry:
            raise AssetError(f"{self.folder / 'manifest.json'}: split {self.name} has no labels_eval entry; "
                             f"regenerate the split (delete {self.folder})")
        # the labels of another generation would score these scenes against others
        return self._read(str(entry["file"]), "evaluation labels", ("sample_id", *LABEL_KEYS))


# ------------------------------------------------------------------------------------------- user input
def read_image(path) -> np.ndarray:
    """(H,W,3) uint8 RGB from a PNG/JPEG (anything PIL reads); InputError for missing or non-image files."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise not_a_file_error(p, "image")
    try:
        with Image.open(p) as im:
            im.load()
            # upright as a viewer (and OpenCV-based keypoint detectors) show it: a phone photo stored sideways
            # with an EXIF orientation would otherwise not match its keypoints
            # a damaged EXIF block (PIL's SyntaxError): used as stored, as exif_orientation reads it (none); it was a
            # bare "SyntaxError: not a TIFF file" naming no image
            with contextlib.suppress(SyntaxError):
                im = ImageOps.exif_transpose(im)
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                # 16-bit grey (a PNG from a depth/IR/scientific camera): convert("RGB") clips every value above
                # 255, so the overlays and the report showed a white image; scale the 16-bit range to 8 bits
                grey = np.asarray(im, dtype=np.float64)
                scale = 257.0 if im.mode.startswith("I;16") or np.nanmax(grey, initial=0) > 255 else 1.0
                if im.mode == "F" and np.nanmax(grey, initial=0) <= 1.0:
                    # a float image in [0, 1] (a float TIFF export) was rounded to 0/1: a black image, overlaid
                    # and critiqued without a word. Read as render._check_image reads a float array with max <= 1
                    scale = 1.0 / 255.0
                im = Image.fromarray(np.nan_to_num(grey / scale).clip(0, 255).round().astype(np.uint8))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # transparent pixels hold arbitrary colour (often black) under alpha 0: flatten onto white as a
                # viewer and the report (agent.report._rgb) show it, so the overlays match the input shown
                rgba = im.convert("RGBA")
                im = Image.new("RGB", rgba.size, (255, 255, 255))
                im.paste(rgba, mask=rgba.getchannel("A"))
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{p}: image too large to read safely ({exc})".splitlines()[0]) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{p}: not a readable image (PNG/JPEG expected): {exc}") from None
    if arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise InputError(f"{p}: image has unusable size {arr.shape}")
    return arr


def image_size_of(path) -> tuple[int, int]:
    """(W, H) of an image as :func:`read_image` gives it (upright by its EXIF orientation), from its header alone.

    For lists of inputs (``export --data inputs.jsonl``): decoding every pixel only to learn the size took ~0.45 s
    a 12 MP photo — minutes before the first group of a thousand photos. The errors are read_image's for a file
    that is missing, no image, or too large; damaged pixel data is found when the image is read (overlays, the VLM)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise not_a_file_error(p, "image")
    try:
        with Image.open(p) as im:
            W, H = im.size
            if im.format == "TIFF":  # Pillow reports a TIFF's size already turned by its orientation: the stored one
                W, H = im.tag_v2.get(256, W), im.tag_v2.get(257, H)
            if _orientation_of(im, p) in (5, 6, 7, 8):
                W, H = H, W
    except Image.DecompressionBombError as exc:
        raise InputError(f"{p}: image too large to read safely ({exc})".splitlines()[0]) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{p}: not a readable image (PNG/JPEG expected): {exc}") from None
    if W < 2 or H < 2:
        raise InputError(f"{p}: image has unusable size {(H, W)}")
    return int(W), int(H)


def _as_points(values, path: Path, what: str) -> np.ndarray:
    # JSON true/false are no coordinates or confidences, but numpy reads them as 1.0/0.0: a `true` in a confidence
    # slot (a visibility flag written as a boolean) was a point seen with full confidence, without a word. A walk
    # with a stack of its own: json has already refused nesting deep enough to matter
    stack = [values]
    while stack:
        v = stack.pop()
        if isinstance(v, bool | np.bool_):
            raise InputError(f"{path}: {what} holds true/false where numbers are expected (x, y and a confidence "
                             "in [0, 1] per point)")
        if isinstance(v, list | tuple):
            stack.extend(v)
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {what} must contain only numbers in a regular [x, y, c] layout") from None
    except OverflowError:  # an integer past float range (json reads 1e400 as inf, but 10**400 written out as an int)
        raise InputError(f"{path}: {what} holds a number too large to be a pixel coordinate") from None
    return arr


MAX_KEYPOINT_FILE_BYTES = 10_000_000
# keypoint sets whose first 17 points are COCO-17 in COCO's order (a whole-body or Halpe model's output)
COCO17_PREFIX_FORMATS = {26: "Halpe-26", 133: "COCO-WholeBody-133"}
# one person's keypoints as flat numbers: COCO-17, BODY_25, Halpe-26, COCO-WholeBody-133 (× [x, y, c])
FLAT_PERSON_SIZES = (51, 75, 78, 399)
KEYPOINT_FORMATS = ("a list of 17 [x,y,c] or 51 numbers (COCO-17), OpenPose {'people': [...]} (BODY_25 or COCO-18), "
                    "COCO results/annotations {'keypoints': [...]}, MMPose [{'keypoints', 'keypoint_scores'}], "
                    "Halpe-26 or COCO-WholeBody-133; a list of people in any of the plain forms")


def _person_confidence(person: dict, key: str) -> float:
    """Summed keypoint confidence of one detected person (-1 when its keypoints are not numbers)."""
    try:
        if "keypoint_scores" in person:
            c = np.asarray(person["keypoint_scores"], dtype=np.float64).ravel()
        else:
            a = np.asarray(person[key], dtype=np.float64)
            c = a[:, 2] if a.ndim == 2 and a.shape[1] == 3 else a[2::3] if a.ndim == 1 else np.zeros(0)
        c = c[np.isfinite(c)]
        return float(np.clip(c, 0, None).sum())
    except (TypeError, ValueError, KeyError, IndexError, OverflowError):
        return -1.0


def _pick_person(people: list, key: str, path: Path, person: int | None = None) -> dict:
    """The person ``person`` (an index, counting from 0) of several, or else the most confident one, saying which
    was taken.

    OpenPose lists people in no useful order and detectors in theirs, so "the first" was often a small
    background person with a few weak points; the person with the highest summed keypoint confidence is the
    subject (ties: the first). ``person`` picks another: a file of a whole group (a detector's output for a
    multi-person image) had to be cut into one file per person to reach anyone but the most confident."""
    if person is not None:
        if not 0 <= person < len(people):
            raise InputError(f"{path}: person {person} asked for, but the file holds {len(people)} "
                             f"{'person' if len(people) == 1 else 'people'} (0..{len(people) - 1})")
        return people[person]
    if len(people) == 1:
        return people[0]
    conf = [_person_confidence(d, key) if isinstance(d, dict) else -1.0 for d in people]
    i = int(np.argmax(conf))
    warn_caller(f"{path}: {len(people)} people found; using the most confident (entry {i}, counting from 0); "
                "keep only the wanted person in the file to choose another, or give its index (`--person I` on "
                "sample or critique, person=I)")
    return people[i]


# confidences up to this are read as 1: detectors that take a heatmap's peak as the score give values just
# above 1 (1.005), which are confidences, not visibility flags or another format
CONFIDENCE_SLACK = 1.1


def _check_person(person) -> None:
    """``person`` is a person's index (an int ≥ 0) or None; anything else one InputError line."""
    if person is not None and (isinstance(person, bool) or not isinstance(person, int | np.integer) or person < 0):
        raise InputError(f"person must be a person's index (an int from 0) or None, got {repr(person)[:40]}")


def check_keypoint_layout(layout) -> str:
    """``layout`` as one of :data:`KEYPOINT_LAYOUTS` (case, ``-`` and ``_`` ignored: ``"H36M-17"`` is
    ``"h36m17"``), else one InputError line naming the choices."""
    key = layout.strip().lower().replace("-", "").replace("_", "") if isinstance(layout, str) else None
    if key not in KEYPOINT_LAYOUTS:
        raise InputError(f"keypoint layout must be one of {', '.join(KEYPOINT_LAYOUTS)}, got {repr(layout)[:40]}")
    return key


def _from_h36m17(arr: np.ndarray) -> np.ndarray:
    """(17,3) Human3.6M-17 points in COCO-17's order; the eyes and ears, which H36M lacks, hidden (confidence 0)."""
    out = np.zeros((17, 3), dtype=arr.dtype)
    src = np.asarray(H36M17_TO_COCO17)
    out[src >= 0] = arr[src[src >= 0]]
    return out


# COCO-17's face points (nose, eyes, ears) lie within a head; read from a Human3.6M-17 file they are the pelvis, the
# right leg and the left hip, which span about half the person, and the "nose" (the pelvis) lies midway between the
# "left eye" and the "right ear" (the two hips). The reader warns when both hold: the face points span over this
# share of the person's extent (the larger side of the visible points' box; at least three of them and 12 in all
# visible) and point 0 lies within FACE_MIDPOINT_TOL of the distance between points 1 and 4 from their midpoint (so
# that points in no body's order — a test's random points — do not warn for their spread alone). On the test split
# (1,000 scenes, noisy keypoints) COCO-17 readings span 0.32 at most and none warns; the same scenes in H36M's order
# read as COCO-17 warn in 434 (65 % of the 663 with enough points visible to judge; tests/test_review_s32_keypoints.py
# checks both on 400 scenes of another seed).
FACE_SPREAD_WARN = 0.4
FACE_MIDPOINT_TOL = 0.15


def _face_spread(arr: np.ndarray) -> float | None:
    """The extent of the visible face points (COCO-17 0-4) over the person's, or None with fewer than 3 of them or 12
    in all visible (a crop of the upper body is mostly its face and shoulders)."""
    vis = arr[:, 2] > 0
    if vis[:5].sum() < 3 or vis.sum() < 12:  # a head-and-shoulders crop is mostly face: no reading
        return None
    ext = lambda q: float(np.max(q.max(0) - q.min(0)))  # noqa: E731
    body = ext(arr[vis, :2])
    return ext(arr[:5][vis[:5], :2]) / body if body > 0 else None


def _looks_like_h36m(arr: np.ndarray) -> float | None:
    """The face points' share of the person (:func:`_face_spread`) when a COCO-17 reading looks like a Human3.6M-17
    file (see FACE_SPREAD_WARN), else None."""
    spread = _face_spread(arr)
    if spread is None or spread <= FACE_SPREAD_WARN or not (arr[[0, 1, 4], 2] > 0).all():
        return None
    hips = np.linalg.norm(arr[1, :2] - arr[4, :2])
    pelvis_off = np.linalg.norm(arr[0, :2] - (arr[1, :2] + arr[4, :2]) / 2)
    return spread if pelvis_off <= FACE_MIDPOINT_TOL * hips else None


def read_keypoints_json(path, image_size=None, person: int | None = None, layout: str = "coco17") -> np.ndarray:
    """COCO-17 keypoints (17,3) ``[u, v, conf]`` in pixels from a JSON file, validated.

    Accepted forms: a list of 17 ``[x, y, c]``; 51 flat numbers; a COCO annotation ``{"keypoints": [51]}``
    (visibility flags 0/1/2 become confidence 0/0.5/1; values that are not all flags are read as confidences in
    [0, 1]), a list of them (detector results) or a COCO annotation file ``{"images", "annotations"}`` of one
    image; OpenPose ``{"people": [{"pose_keypoints_2d": [75]}]}`` (BODY_25, or COCO-18's 54 numbers, mapped to
    COCO-17); MMPose
    ``[{"keypoints": [[x, y]], "keypoint_scores": [...]}]`` (or inside ``{"instance_info": [...]}``; its scores
    are not probabilities — RTMPose's exceed 1 — so they are clipped to [0, 1]; other formats' confidences up
    to 1.1, a heatmap peak just above 1, read as 1); Halpe-26 and
    COCO-WholeBody-133, whose first 17 points are COCO-17; a plain list of people, each in one of the plain
    forms (a detector's raw ``(P, 17, 3)`` array). With several people the most confident (summed
    keypoint confidence) is used and a warning says which. Coordinates normalised to [0, 1] are refused (they
    would be a person one pixel tall). With ``image_size`` (W,H), visible points more than 2 % past the border
    are hidden with a warning (a truncated person), unless more than a third of them are (keypoints of another
    image: refused). ``person`` (an index from 0) takes that person of a file of several instead of the most
    confident one; a file of one person takes only 0.

    17 points are read in COCO-17's order (``layout="coco17"``); ``layout="h36m17"`` reads a 17-point file in
    Human3.6M-17's order (VideoPose3D, MotionBERT, MMPose's H36M models) and maps it to COCO-17, the eyes and ears
    hidden (H36M has none; its pelvis, spine, thorax and head are not used). The two cannot be told apart for
    sure, so a COCO-17 reading that looks like H36M-17 warns (its face points spanning over 0.4 of the person, point 0
    midway between points 1 and 4: see FACE_SPREAD_WARN; an H36M file read as COCO-17 gives wrong poses without an
    error).
    """
    _check_person(person)
    layout = check_keypoint_layout(layout)
    p = Path(path)
    data = read_small_json(p, "keypoint", MAX_KEYPOINT_FILE_BYTES, nested_as="keypoints",
                           number_as="a keypoint coordinate")
    visibility_flags = False
    body25 = openpose = False
    scores = None
    if isinstance(data, dict) and isinstance(data.get("instance_info"), list):  # MMPose's demo / inferencer
        data = data["instance_info"]
        if not data:
            raise InputError(f"{p}: MMPose JSON with no people")
    elif isinstance(data, dict) and isinstance(data.get("annotations"), list):  # a COCO annotation file
        anns = [a for a in data["annotations"] if isinstance(a, dict) and "keypoints" in a]
        # as text, as for detector results below: an image_id that is a list or an object raised "unhashable type"
        images = {json.dumps(a.get("image_id")) for a in anns}
        if not anns:
            raise InputError(f"{p}: COCO annotation file with no keypoint annotations")
        if len(images) > 1:
            raise InputError(f"{p}: COCO annotation file with keypoints for {len(images)} images; give a file with "
                             "this image's annotations only")
        data = anns
    if isinstance(data, dict) and "people" in data:
        people = data["people"]
        if not isinstance(people, list) or not people:
            raise InputError(f"{p}: OpenPose JSON with no people")
        chosen = _pick_person(people, "pose_keypoints_2d", p, person)
        if not isinstance(chosen, dict) or "pose_keypoints_2d" not in chosen:
            raise InputError(f"{p}: people[{people.index(chosen)}] has no 'pose_keypoints_2d'")
        values, body25, openpose = chosen["pose_keypoints_2d"], True, True
    elif isinstance(data, dict) and "keypoints" in data:
        _pick_person([data], "keypoints", p, person)  # one person: only person 0 (or None) is there
        values, visibility_flags, scores = data["keypoints"], True, data.get("keypoint_scores")
    elif isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
        if not all("keypoints" in d for d in data):
            raise InputError(f"{p}: list of objects without 'keypoints' (expected COCO annotations or MMPose "
                             "instances)")
        # a COCO results file is one list for a whole dataset: the most confident person of all its images was
        # taken (with "N people found"), as the annotation file of several images is refused above
        images = {json.dumps(d["image_id"]) for d in data if "image_id" in d}
        if len(images) > 1:
            raise InputError(f"{p}: detector results for {len(images)} images (image_id); give a file with this "
                             "image's results only")
        chosen = _pick_person(data, "keypoints", p, person)
        values, visibility_flags, scores = chosen["keypoints"], True, chosen.get("keypoint_scores")
    elif isinstance(data, list):
        values = data
        people = _as_points(data, p, "keypoints")
        if (people.ndim == 3 and people.shape[2] == 3) or (people.ndim == 2 and people.shape[1] in FLAT_PERSON_SIZES):
            # a plain list of people (a detector's raw array, one row per person, [x, y, c] points or flat) was
            # refused as "got shape [2, 17, 3]"; it is read as the other multi-person forms are
            values = _pick_person([{"keypoints": q} for q in people.tolist()], "keypoints", p, person)["keypoints"]
        else:  # one person's points
            _pick_person([{"keypoints": values}], "keypoints", p, person)
    else:
        raise InputError(f"{p}: unrecognised keypoint JSON (expected {KEYPOINT_FORMATS})")
    arr = _as_points(values, p, "keypoints")
    if openpose and arr.ndim == 1 and arr.size == 54:
        # OpenPose's COCO-18 model (--model_pose COCO) and AlphaPose's OpenPose output (--format open) write 18
        # points (COCO-17's with a neck, in OpenPose's order), which were refused as "expected BODY_25"
        arr, body25 = arr.reshape(18, 3)[COCO18_TO_COCO17].ravel(), False
    if scores is not None:  # MMPose: (n,2) points and their scores apart
        sc = _as_points(scores, p, "keypoint_scores").ravel()
        pts = arr
        if pts.ndim != 2 or pts.shape[1] not in (2, 3) or len(sc) != len(pts):
            raise InputError(f"{p}: 'keypoints' {list(arr.shape)} and 'keypoint_scores' {list(sc.shape)} do not "
                             "match (expected n [x, y] and n scores)")
        arr = np.c_[pts[:, :2], np.clip(sc, 0.0, 1.0)]
        visibility_flags = False
    if arr.size == 75 and arr.ndim in (1, 2):
        body25 = True
    n_points = arr.size // 3 if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 3) else 0
    expected = 75 if body25 else 51
    if layout == "h36m17" and (body25 or openpose or n_points != 17):
        what = ("OpenPose points" if openpose or body25 else f"{COCO17_PREFIX_FORMATS[n_points]} points"
                if n_points in COCO17_PREFIX_FORMATS else f"shape {list(arr.shape)}")
        raise InputError(f"{p}: keypoint layout h36m17 is for files of 17 points in Human3.6M's order; this one "
                         f"holds {what} (read it with the default layout, coco17)")
    if not body25 and arr.size % 3 == 0 and n_points in COCO17_PREFIX_FORMATS:
        arr = arr.reshape(-1, 3)[:17]  # Halpe-26 / COCO-WholeBody: body points first, in COCO-17 order
    if arr.size != expected or arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] != 3):
        if body25:
            raise InputError(f"{p}: expected OpenPose BODY_25 (25×3 = 75 numbers) or COCO-18 (54), got shape "
                             f"{list(arr.shape)}")
        hint = " ([x, y] without a confidence: give [x, y, c])" if arr.ndim == 2 and arr.shape[1] == 2 else ""
        raise InputError(f"{p}: expected COCO-17 (17 [x,y,c] or 51 numbers){hint}, got shape {list(arr.shape)}; "
                         f"accepted: {KEYPOINT_FORMATS}")
    arr = arr.reshape(-1, 3)
    if body25:
        arr = arr[BODY25_TO_COCO17]
    h36m = layout == "h36m17"
    if h36m:
        bad = ~np.isfinite(arr)
        if bad.any():  # named by H36M's index: the mapped array drops some points and renumbers the rest
            raise InputError(f"{p}: Human3.6M-17 keypoint {int(np.argwhere(bad)[0][0])} is NaN or infinite")
        arr = _from_h36m17(arr)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise InputError(f"{p}: keypoint {i} ({COCO17_NAMES[i]}) is NaN or infinite")
    conf = arr[:, 2]
    # COCO visibility flags only when every value is one (0/1/2); a COCO-style file from a detector carries
    # scores (0.93, …) in that slot, which are confidences — mapping them as flags silently hid every point < 1
    if np.isin(conf, (0, 1, 2)).all() and (visibility_flags or conf.max() > 1):
        arr[:, 2] = np.select([conf >= 2, conf >= 1], [1.0, 0.5], 0.0)
    elif (conf < 0).any() or (conf > CONFIDENCE_SLACK).any():
        i = int(np.argmax((conf < 0) | (conf > CONFIDENCE_SLACK)))
        raise InputError(f"{p}: keypoint {i} ({COCO17_NAMES[i]}) has confidence {conf[i]:g} outside [0, 1]")
    else:  # a heatmap peak a little above 1 (OpenPose, SimpleBaseline: 1.005) is a confidence of 1
        arr[:, 2] = np.minimum(conf, 1.0)
    visible = arr[:, 2] > 0
    if not visible.any():
        raise InputError(f"{p}: no visible keypoints (every confidence is 0)")
    # coordinates from a tool that normalises to [0, 1] (MediaPipe, some exporters) read as pixels gave a person
    # one pixel tall in the corner, sampled and critiqued without a word (a little slack: such tools put points
    # just past the border at -0.05 or 1.05)
    if (np.abs(arr[visible, :2] - 0.5) <= 0.75).all():
        raise InputError(f"{p}: every keypoint lies in [0, 1]: normalised coordinates? Give pixels (x times the "
                         "image width, y times its height)")
    if image_size is not None:
        W, H = image_size
        tol = 0.02 * max(W, H)
        u, v = arr[:, 0], arr[:, 1]
        out = visible & ((u < -tol) | (u > W + tol) | (v < -tol) | (v > H + tol))
        # A few points past the border are a truncated person: top-down detectors (MMPose, ViTPose) place a
        # cut-off ankle below the frame, and the model hides such points anyway (its training scenes store them
        # as hidden), so they become hidden with a warning instead of refusing the file. Many points outside
        # are keypoints of another image or size: refused.
        if out.sum() * 3 > visible.sum():
            i = int(np.argmax(out))
            raise InputError(
                f"{p}: keypoint {i} ({COCO17_NAMES[i]}) at ({u[i]:.1f}, {v[i]:.1f}) lies outside "
                f"the {W}×{H} image ({int(out.sum())} of {int(visible.sum())} visible keypoints do: keypoints "
                "of another image or image size?)"
            )
        if out.any():
            names = ", ".join(f"{i} ({COCO17_NAMES[i]})" for i in np.flatnonzero(out))
            # how far past the border, as a share of the image's size on that axis: a cut-off ankle lies a little
            # below the frame; points far past it (keypoints scaled ×1.5: knees and ankles 180 px past a 640×480
            # image) are the other image's, and the warning said only "a truncated person"
            past = np.maximum(np.maximum(-u, u - W) / max(W, 1), np.maximum(-v, v - H) / max(H, 1))
            far = int(np.argmax(np.where(out, past, -np.inf)))
            why = "a truncated person"
            if past[far] > 0.1:
                by = max(-u[far], u[far] - W, -v[far], v[far] - H)
                why += (f"? {far} ({COCO17_NAMES[far]}) lies {by:.4g} px past the border: keypoints of another image "
                        "or image size?")
            warn_caller(f"{p}: keypoint{'s' if out.sum() > 1 else ''} {names} lie{'' if out.sum() > 1 else 's'} "
                        f"outside the {W}×{H} image: treated as hidden ({why})")
            visible &= ~out
    arr[~visible] = 0.0
    spread = None if h36m or n_points != 17 else _looks_like_h36m(arr)
    if spread is not None:
        warn_caller(f"{p}: the points read as the face (COCO-17's nose, eyes, ears: 0-4) span {spread:.0%} of the "
                    "person, not a head's share: is the file in Human3.6M-17's order (VideoPose3D, MotionBERT)? "
                    "Then read it with keypoint layout h36m17 (`--keypoint-layout h36m17`, "
                    "layout='h36m17')")
    # the keypoints are returned as float32: a visible coordinate past its range (1e308 is finite in float64) came
    # back as inf, breaking the reader's promise of finite keypoints silently (hidden points are 0 by now, and with
    # image_size such a point lies outside the image and is hidden)
    huge = np.abs(arr) > np.finfo(np.float32).max
    if huge.any():
        i = int(np.argwhere(huge)[0][0])
        raise InputError(f"{p}: keypoint {i} ({COCO17_NAMES[i]}) holds a coordinate too large to be a pixel "
                         f"({arr[i, 0]:.3g}, {arr[i, 1]:.3g})")
    return arr.astype(np.float32)


def _png_late_chunks(path: Path, animated: bool = False) -> tuple[bytes | None, bool]:
    """What PIL's ``load()`` of a PNG would add to its EXIF after the pixel data, by the chunk headers alone (seeks,
    no pixel data read): the last eXIf chunk, and whether a text chunk (an XMP packet, ImageMagick's "Raw profile
    type exif") follows the pixels. Stops where PIL's ``load_end`` does — IEND, an APNG's next frame — and at a
    length past the end of the file, so a hostile length is never allocated."""
    import struct

    exif, late_text, seen_idat = None, False, False
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(8)  # the signature
        while len(head := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            # an fcTL ends the first frame only of an animated PNG (PIL: ``is_animated``), as in load_end
            if kind == b"IEND" or (kind == b"fcTL" and seen_idat and animated) or length > size - f.tell():
                break
            seen_idat = seen_idat or kind == b"IDAT"
            if kind == b"eXIf":
                exif = f.read(length)
                f.seek(4, 1)  # its CRC
                continue
            late_text = late_text or (seen_idat and kind in (b"tEXt", b"zTXt", b"iTXt"))
            f.seek(length + 4, 1)  # the data and its CRC
    return exif, late_text


def _orientation_of(im, path: Path) -> int | None:
    """The EXIF orientation (1-8) of an opened image as PIL's ``exif_transpose`` reads it, without decoding pixels.

    PIL's ``getexif`` of a PNG without an eXIf chunk ahead of the pixel data decodes the whole image to look further
    (0.05 s a 3 MP PNG, what :func:`image_size_of` avoids): the chunks are walked instead and what ``load()`` would
    find is put where PIL puts it; only a text chunk after the pixels (rare) is still read by decoding. The tag is
    compared as PIL compares it (a RATIONAL 6/1 turns the image as 6 does); a damaged EXIF block (PIL's
    SyntaxError) reads as none, as :func:`read_image` then uses the image as stored."""
    from PIL import Image

    try:
        # every PNG's chunks, also one with an eXIf ahead of the pixels: load() keeps the last eXIf of the file
        if im.format == "PNG":
            raw, late_text = _png_late_chunks(path, getattr(im, "is_animated", False))
            if late_text:
                im.load()
                value = im.getexif().get(0x0112)
            else:
                if raw is not None:
                    im.info["exif"] = b"Exif\x00\x00" + raw  # as PIL's chunk_eXIf stores it
                value = Image.Image.getexif(im).get(0x0112)  # the base class's: no load(); eXIf, raw profile, XMP
        else:
            value = im.getexif().get(0x0112)
    except SyntaxError:
        return None
    return next((o for o in range(1, 9) if value == o), None)


def exif_orientation(path) -> int | None:
    """The image's EXIF orientation tag (1-8), or None when it has none or cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _orientation_of(im, Path(path))
    except (OSError, ValueError, SyntaxError):  # SyntaxError: PIL's word for a damaged EXIF block
        return None


def _exif_rotated(path) -> bool:
    """Whether the image carries an EXIF orientation that swaps its width and height (5-8)."""
    return exif_orientation(path) in (5, 6, 7, 8)


@keywords_checked
def sample_from_user(image_path, keypoints_path, focal: float | None = None, person: int | None = None,
                     keypoint_layout: str = "coco17", principal_point=None, intrinsics=None,
                     decode_image: bool = True) -> Sample:
    """A :class:`Sample` from a user image + keypoint JSON; K defaults to focal = max(W, H), centred.

    ``focal`` (pixels) and ``principal_point`` ``(cx, cy)`` (pixels of the image as used) replace those parts of
    the default K — a crop of a larger photo keeps the photo's optical centre; ``intrinsics`` is a calibration JSON
    file instead (:mod:`hmrcritic.hmr.intrinsics` lists its forms and checks). ``decode_image=False`` reads only the
    image's header for its size (:func:`image_size_of`; lists of inputs), not every pixel.

    ``person`` (an index from 0) takes that person of a keypoint file of several (:func:`read_keypoints_json`;
    None: the most confident); its id is then the image's file stem with ``_p<person>`` added, so the people of
    one image are told apart (a critique's default ``group_id`` is the sample's id). ``keypoint_layout``
    ``"h36m17"`` reads a 17-point file in Human3.6M's order (see :func:`read_keypoints_json`).

    Arguments of the wrong type (``focal="x"``, a path that is a number) are refused as :class:`InputError`
    before any file is read; numpy / torch scalars are focal lengths like any other number."""
    for name, value in (("image_path", image_path), ("keypoints_path", keypoints_path)):
        if not isinstance(value, str | os.PathLike):
            raise InputError(f"{name} must be a file path (str or Path), got {type(value).__name__}")
    # ``~`` expanded as load_model's path is (from Python no shell does); any other text kept as given: it is the
    # sample's image_path, which a critique's settings digest reads
    image_path, keypoints_path = (config.path_text(v, name) if os.fspath(v).startswith("~") else v
                                  for name, v in (("image_path", image_path), ("keypoints_path", keypoints_path)))
    if focal is not None and (isinstance(focal, str | bytes | bool) or not hasattr(focal, "__float__")):
        raise InputError(f"focal must be a number (pixels) or None, got {type(focal).__name__}")
    if focal is not None and not (math.isfinite(focal) and focal > 0):
        raise InputError(f"focal length must be a positive number, got {focal}")
    if intrinsics is not None and not isinstance(intrinsics, str | os.PathLike):
        raise InputError(f"intrinsics must be a file path (str or Path), got {type(intrinsics).__name__}")
    if principal_point is not None:
        intrinsics_mod.check_principal_point(principal_point)
    _check_person(person)
    keypoint_layout = check_keypoint_layout(keypoint_layout)
    if decode_image:
        H, W = read_image(image_path).shape[:2]
    else:
        W, H = image_size_of(image_path)
    try:
        kp = read_keypoints_json(keypoints_path, image_size=(W, H), person=person, layout=keypoint_layout)
    except InputError as exc:
        if "lies outside the" in str(exc) and _exif_rotated(image_path):
            # the size named is the upright one, not the one a file browser's "dimensions" may show: say so
            raise InputError(f"{exc} (the image is used upright as its EXIF orientation says, as OpenCV-based "
                             "detectors read it; keypoints from a tool that ignored the rotation do not fit it)"
                             ) from None
        raise
    K = intrinsics_mod.user_intrinsics((W, H), focal=focal, principal_point=principal_point,
                                       intrinsics=intrinsics,
                                       exif_orientation=exif_orientation(image_path) if intrinsics else None)
    sample_id = as_text(Path(image_path).stem) + ("" if person is None else f"_p{int(person)}")
    return Sample(sample_id=sample_id, keypoints=kp, K=K, image_size=(W, H), image_path=str(image_path))
