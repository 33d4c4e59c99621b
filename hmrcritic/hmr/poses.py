"""A procedural source of plausible human poses (no motion-capture data is used or shipped).

Why procedural: no mocap corpus (AMASS, CMU, 3DPW) can be downloaded in this offline setting, and
independent uniform noise per joint gives poses no person makes. Instead every category is a small set
of hand-authored *archetypes* driven by a few correlated, interpretable parameters, which is how the
joint correlations of real motion are reproduced:

- walking: one gait phase drives opposite hip swing on the two legs, knee flexion in early swing, the
  contralateral arm swing and a counter-twist of the spine;
- sitting / crouching: one thigh inclination and one shin inclination give hip flexion, knee flexion
  (their sum) and ankle dorsiflexion together, so feet stay roughly flat; trunk lean couples to pelvis tilt;
- reaching: one target elevation/azimuth lifts the shoulder, extends the elbow, elevates the collar
  (scapulohumeral rhythm), twists the spine towards the reach and points the head at it;
- standing (with arm archetypes hang/hold/hands-on-hips/wave), lying (supine, prone, on the side) and
  kneeling (a crouching variant) likewise.

A small Gaussian perturbation, correlated along the spine/neck chains (the two sides' are independent; see
:func:`_perturb`), is added,
every angle is clamped into :data:`hmrcritic.hmr.anatomy.JOINT_LIMITS_DEG`, and samples whose bone capsules
interpenetrate (checked with the approximate SMPL skeleton of :mod:`anatomy`) are redrawn. Angles follow
the axis meanings documented in :mod:`hmrcritic.hmr.anatomy`. The result is a *synthetic* pose
distribution: broad, anatomically valid and correlated, but not the statistics of real human motion.

``global_orient_body`` is the body's rotation in a y-up world whose +z is the direction the person faces
(identity = upright, facing +z); the scene generator (:mod:`hmrcritic.hmr.data`) adds yaw and the camera.
"""

from __future__ import annotations

import numpy as np
import torch

from hmrcritic.hmr import anatomy
from hmrcritic.hmr.rotations import euler_to_matrix, matrix_to_axis_angle, matrix_to_euler_xyz

POSE_CATEGORIES = ("standing", "walking", "sitting", "crouching", "reaching", "lying")
GENERATOR_VERSION = "poses-1"

_J = {n: i for i, n in enumerate(anatomy.BODY_JOINT_NAMES)}
_SIDES = (("left", 1.0), ("right", -1.0))


class _Pose:
    """Euler angles (n,23,3) in degrees with semantic setters (positive = anatomical direction)."""

    def __init__(self, n: int, rng: np.random.Generator):
        self.n, self.rng = n, rng
        self.e = np.zeros((n, 23, 3), np.float64)
        self.g = np.zeros((n, 3), np.float64)  # global orientation, XYZ Euler degrees

    def u(self, lo, hi):
        return self.rng.uniform(lo, hi, self.n)

    def nrm(self, mu, sd):
        return self.rng.normal(mu, sd, self.n)

    def add(self, joint, axis, val):
        self.e[:, _J[joint], axis] += val

    def hip(self, side, sgn, flex, abd=0.0, rot=0.0):
        self.add(f"{side}_hip", 0, -flex)
        self.add(f"{side}_hip", 1, sgn * rot)
        self.add(f"{side}_hip", 2, sgn * abd)

    def knee(self, side, flex):
        self.add(f"{side}_knee", 0, flex)

    def ankle(self, side, dorsi):
        self.add(f"{side}_ankle", 0, -dorsi)

    def toes(self, side, ext):
        self.add(f"{side}_foot", 0, -ext)

    def shoulder(self, side, sgn, abd, flex=0.0, twist=0.0):
        """abd: elevation from hanging (0) through T-pose (90); flex: forward swing of the hanging arm;
        twist: external rotation (>0) of the arm about its own axis, applied before the swing so that
        the elbow's flexion plane turns with it. Composed as a matrix, stored as XYZ Euler angles."""
        abd, flex, twist = (np.broadcast_to(np.asarray(v, np.float64), (self.n,)) for v in (abd, flex, twist))
        zeros = np.zeros(self.n)
        rad = lambda a, b, c: torch.tensor(np.deg2rad(np.stack([a, b, c], -1)))  # noqa: E731
        rot = euler_to_matrix(rad(-flex, zeros, sgn * (abd - 90.0))) @ euler_to_matrix(
            rad(-twist, zeros, zeros)
        )  # x-rotations survive mirroring
        self.e[:, _J[f"{side}_shoulder"]] += np.rad2deg(matrix_to_euler_xyz(rot).numpy())

    def collar(self, side, sgn, elev, protr=0.0):
        self.add(f"{side}_collar", 2, sgn * elev)
        self.add(f"{side}_collar", 1, -sgn * protr)

    def elbow(self, side, sgn, flex):
        self.add(f"{side}_elbow", 1, -sgn * flex)

    def wrist(self, side, sgn, flex, dev=0.0, pron=0.0):
        self.add(f"{side}_wrist", 2, -sgn * flex)
        self.add(f"{side}_wrist", 1, sgn * dev)
        self.add(f"{side}_wrist", 0, pron)

    def spine(self, flex, twist=0.0, lat=0.0):
        for name, w in (("spine1", 0.4), ("spine2", 0.35), ("spine3", 0.25)):
            self.add(name, 0, w * flex)
            self.add(name, 1, w * twist)
            self.add(name, 2, w * lat)

    def neck(self, nod, turn=0.0, tilt=0.0):
        for name in ("neck", "head"):
            self.add(name, 0, 0.5 * nod)
            self.add(name, 1, 0.5 * turn)
            self.add(name, 2, 0.5 * tilt)

    def legs_from_inclination(self, side, sgn, thigh, shin, tilt, abd=0.0, rot=0.0):
        """Leg from absolute segment inclinations (deg from hanging straight down, forward positive for the
        thigh, backward positive for the shin) given the pelvis forward tilt: hip, knee and ankle together."""
        self.hip(side, sgn, thigh + tilt, abd, rot)
        self.knee(side, np.clip(thigh + shin, 0, 148))
        self.ankle(side, np.clip(shin, -45, 33))

    def arm_archetype(self, side, sgn, probs=(0.55, 0.2, 0.15, 0.1)):
        """Standing arm: hang, hold (forearm forward), hand on hip, wave."""
        kind = self.rng.choice(4, self.n, p=list(probs))
        abd = np.select(
            [kind == 0, kind == 1, kind == 2], [self.u(4, 20), self.u(5, 20), self.u(35, 50)], self.u(80, 125)
        )
        flex = np.select(
            [kind == 0, kind == 1, kind == 2],
            [self.u(-10, 20), self.u(15, 50), self.u(-20, 0)],
            self.u(65, 100),
        )
        twist = np.select(
            [kind == 0, kind == 1, kind == 2],
            [self.u(-10, 20), self.u(-25, 5), self.u(-95, -70)],
            self.u(-10, 10),
        )
        elbow = np.select(
            [kind == 0, kind == 1, kind == 2],
            [self.u(3, 30), self.u(40, 90), self.u(85, 110)],
            self.u(50, 110),
        )
        self.shoulder(side, sgn, abd, flex, twist)
        self.elbow(side, sgn, elbow)
        self.collar(side, sgn, np.where(kind == 3, self.u(5, 20), self.u(-5, 5)))
        self.wrist(side, sgn, self.nrm(0, 12), self.nrm(0, 8), self.nrm(0, 20))


def _standing(p: _Pose):
    w = p.u(-1, 1)  # weight shift: >0 onto the right leg, the left knee relaxes
    for side, sgn in _SIDES:
        relax = np.clip(sgn * w, 0, 1)
        p.hip(side, sgn, p.nrm(2, 4) + 6 * relax, p.u(0, 8) - 3 * relax, p.nrm(0, 6))
        k = p.u(0, 6) + 14 * relax
        p.knee(side, k)
        p.ankle(side, 0.5 * k + p.nrm(0, 3))
        p.arm_archetype(side, sgn)
    p.spine(p.nrm(3, 4), p.nrm(0, 5), -3 * w + p.nrm(0, 2))
    p.neck(p.nrm(0, 8), p.nrm(0, 15), p.nrm(0, 5))
    # Rz(+) turns +x (the left side) upwards: the pelvis tilts up on the relaxed side (w > 0: the left), the
    # opposite of a contrapposto's drop; kept, as a change would alter every generated split
    p.g[:, 2] += 3 * w


def _walking(p: _Pose):
    phase = p.u(0, 2 * np.pi)
    amp = p.u(0.6, 1.25)  # stride / speed
    for side, sgn in _SIDES:
        ph = phase if sgn > 0 else phase + np.pi
        hip = 5 + 25 * amp * np.sin(ph)
        knee = (
            5 + 50 * amp * np.clip(np.cos(ph + np.pi / 4), 0, None) ** 1.5 + 8 * np.clip(np.sin(ph), 0, None)
        )
        p.hip(side, sgn, hip, p.u(0, 5), p.nrm(0, 4))
        p.knee(side, knee)
        p.ankle(side, 8 * amp * np.cos(ph) + p.nrm(0, 3))
        arm = -20 * amp * np.sin(ph) + 3  # contralateral arm swing
        p.shoulder(side, sgn, p.u(5, 15), arm, p.nrm(0, 6))
        p.elbow(side, sgn, 10 + 12 * amp + 0.4 * np.clip(arm, 0, None) + p.u(0, 10))
        p.wrist(side, sgn, p.nrm(0, 8), p.nrm(0, 5), p.nrm(0, 10))
    p.spine(p.u(0, 8), 6 * amp * np.sin(phase), p.nrm(0, 2))
    p.neck(p.nrm(3, 6), p.nrm(0, 12), p.nrm(0, 4))
    p.g[:, 0] += p.u(0, 8)  # forward lean
    p.g[:, 1] += -5 * amp * np.sin(phase)  # pelvis rotation against the shoulders


def _sitting(p: _Pose):
    tilt = p.u(-15, 5)  # pelvis tilt (>0 forward)
    thigh = p.u(75, 100)
    shin = p.u(-25, 20)
    arm_kind = p.rng.choice(3, p.n, p=[0.4, 0.35, 0.25])  # lap, armrest, desk
    for side, sgn in _SIDES:
        p.legs_from_inclination(
            side, sgn, thigh + p.nrm(0, 5), shin + p.nrm(0, 8), tilt, p.u(0, 15), p.nrm(0, 8)
        )
        abd = np.select([arm_kind == 0, arm_kind == 1], [p.u(5, 20), p.u(15, 30)], p.u(5, 20))
        flex = np.select([arm_kind == 0, arm_kind == 1], [p.u(10, 35), p.u(-5, 20)], p.u(30, 60))
        elbow = np.select([arm_kind == 0, arm_kind == 1], [p.u(30, 70), p.u(70, 100)], p.u(60, 100))
        p.shoulder(side, sgn, abd, flex, p.nrm(-5, 8))
        p.elbow(side, sgn, elbow)
        p.wrist(side, sgn, p.nrm(0, 10), p.nrm(0, 6), p.nrm(0, 20))
    p.spine(p.u(-5, 25), p.nrm(0, 6), p.nrm(0, 3))
    p.neck(p.nrm(5, 10), p.nrm(0, 15), p.nrm(0, 5))
    p.g[:, 0] += tilt


def _crouching(p: _Pose):
    kneel = p.rng.random(p.n) < 0.3
    tilt = np.where(kneel, p.u(-5, 15), p.u(10, 35))
    one_knee = p.rng.random(p.n) < 0.5
    for side, sgn in _SIDES:
        thigh = p.u(75, 115)
        thigh = np.minimum(thigh, 122 - tilt)
        shin = p.u(10, 35)
        down = kneel & ((sgn > 0) | ~one_knee)  # this knee on the ground
        k_thigh = np.where(down, p.u(-10, 20), np.where(kneel, p.u(70, 95), thigh))
        k_shin = np.where(down, p.u(75, 100), np.where(kneel, p.u(-10, 15), shin))
        p.hip(side, sgn, k_thigh + tilt, p.u(0, 15), p.nrm(0, 8))
        p.knee(side, np.clip(k_thigh + k_shin, 0, 148))
        p.ankle(side, np.where(down, p.u(-45, -15), np.clip(k_shin, -30, 33)))
        p.toes(side, np.where(down, p.u(0, 40), 0))
        p.shoulder(side, sgn, p.u(5, 25), p.u(25, 70), p.nrm(0, 8))
        p.elbow(side, sgn, p.u(10, 60))
        p.wrist(side, sgn, p.nrm(0, 10), p.nrm(0, 6), p.nrm(0, 20))
    bend = np.where(kneel, p.u(-5, 15), p.u(10, 35))
    p.spine(bend, p.nrm(0, 6), p.nrm(0, 3))
    p.neck(-0.5 * (tilt + bend) + p.nrm(0, 6), p.nrm(0, 12), p.nrm(0, 4))
    p.g[:, 0] += tilt


def _reaching(p: _Pose):
    which = p.rng.choice(3, p.n, p=[0.4, 0.4, 0.2])  # left, right, both
    elev = p.u(-30, 85)  # target elevation above the horizontal, deg
    azim = p.u(-20, 70)  # 0 straight ahead, 90 to the side of the reaching arm
    low = elev < 0
    for i, (side, sgn) in enumerate(_SIDES):
        active = (which == i) | (which == 2)
        lift = 90 + elev
        flex = np.where(active, lift * np.cos(np.deg2rad(azim)), p.u(-10, 15))
        abd = np.where(active, np.clip(lift * np.sin(np.deg2rad(azim)), 0, 120) + p.u(0, 10), p.u(5, 20))
        p.shoulder(side, sgn, abd, flex, np.where(active, p.nrm(0, 10), p.nrm(0, 8)))
        p.elbow(side, sgn, np.where(active, p.u(0, 25), p.u(5, 35)))
        p.collar(
            side,
            sgn,
            np.where(active, 0.2 * np.clip(lift - 90, 0, None) + p.u(0, 5), 0),
            np.where(active, p.u(5, 15), 0),
        )
        p.wrist(side, sgn, p.nrm(0, 10), p.nrm(0, 6), p.nrm(0, 20))
        on_toes = active & (elev > 60)
        p.hip(side, sgn, np.where(low, p.u(20, 50), p.nrm(2, 4)), p.u(0, 8), p.nrm(0, 5))
        k = np.where(low, p.u(10, 50), p.u(0, 10))
        p.knee(side, k)
        p.ankle(side, np.where(on_toes, -p.u(10, 30), 0.4 * k))
    toward = np.select([which == 0, which == 1], [1.0, -1.0], 0.0)  # twist towards the reaching side
    p.spine(np.where(low, p.u(15, 40), p.nrm(0, 6)), toward * p.u(0, 20), -toward * p.u(0, 10))
    p.neck(-0.4 * elev + p.nrm(0, 5), toward * 0.4 * azim, p.nrm(0, 4))


def _lying(p: _Pose):
    kind = p.rng.choice(3, p.n, p=[0.5, 0.25, 0.25])  # supine, prone, side
    side_lying = kind == 2
    for side, sgn in _SIDES:
        bent = p.rng.random(p.n) < np.where(side_lying, 0.8, 0.35)
        hip = np.where(bent, np.where(side_lying, p.u(30, 80), p.u(30, 80)), p.u(-5, 15))
        knee = np.where(bent, np.where(side_lying, p.u(40, 100), p.u(50, 120)), p.u(0, 10))
        p.hip(side, sgn, hip, p.u(0, 15), p.nrm(0, 8))
        p.knee(side, knee)
        p.ankle(side, np.where(kind == 1, -p.u(10, 40), p.nrm(0, 10)))
        arm = p.rng.choice(3, p.n, p=[0.5, 0.3, 0.2])  # at side, overhead, forward
        abd = np.select([arm == 0, arm == 1], [p.u(5, 35), p.u(120, 170)], p.u(10, 30))
        flex = np.select([arm == 0, arm == 1], [p.u(-10, 15), p.u(-10, 20)], p.u(50, 90))
        p.shoulder(side, sgn, abd, flex, p.nrm(0, 10))
        p.elbow(side, sgn, np.select([arm == 1], [p.u(20, 130)], p.u(5, 60)))
        p.collar(side, sgn, np.where(arm == 1, p.u(5, 25), 0))
        p.wrist(side, sgn, p.nrm(0, 10), p.nrm(0, 6), p.nrm(0, 20))
    p.spine(np.where(side_lying, p.u(0, 25), p.nrm(0, 5)), p.nrm(0, 6), p.nrm(0, 5))
    p.neck(
        np.where(kind == 0, p.u(0, 25), p.nrm(0, 8)),
        np.where(kind == 1, p.u(-80, 80), p.nrm(0, 20)),
        p.nrm(0, 6),
    )
    p.g[:, 0] += np.select([kind == 0, kind == 1], [-90.0, 90.0], 0.0)
    p.g[:, 2] += np.where(side_lying, np.where(p.rng.random(p.n) < 0.5, 90.0, -90.0), 0.0)


_BUILDERS = {
    "standing": _standing,
    "walking": _walking,
    "sitting": _sitting,
    "crouching": _crouching,
    "reaching": _reaching,
    "lying": _lying,
}

# Perturbation scale per joint (deg): stiff spine, looser distal joints.
_NOISE_SD = np.array(
    [
        [3.0 if ("spine" in n or n in ("neck", "head")) else 4.0 if "collar" in n else 5.0] * 3
        for n in anatomy.BODY_JOINT_NAMES
    ]
)


_CHAIN = {
    "spine2": "spine1",
    "spine3": "spine2",
    "neck": "spine3",
    "head": "neck",
    "left_hand": "left_wrist",
    "right_hand": "right_wrist",
}


def _perturb(p: _Pose):
    """Correlated Gaussian perturbation: spine/neck/hand joints inherit half of their parent's noise
    (smooth bends rather than zig-zags).

    The ``shared`` term was meant as one left/right component mirrored onto both sides, but each side adds the
    draw of its own joint (``shared[:, j]``), so it only widens the noise of lateral joints (sd × 1.12) and the
    two sides stay independent (measured |r| < 0.05). Kept: drawing it per left joint would change every
    generated split, which is identified by its content."""
    noise = p.rng.normal(0, 1, (p.n, 23, 3)) * _NOISE_SD
    shared = p.rng.normal(0, 1, (p.n, 23, 3)) * _NOISE_SD * 0.5
    for j, name in enumerate(anatomy.BODY_JOINT_NAMES):
        if name.startswith("left_"):
            noise[:, j] += shared[:, j]
        elif name.startswith("right_"):
            noise[:, j] += shared[:, j] * np.array([1.0, -1.0, -1.0])  # mirrored
        if name in _CHAIN:
            noise[:, j] += 0.5 * noise[:, _J[_CHAIN[name]]]
    p.e += noise
    p.g += p.rng.normal(0, 3, (p.n, 3))


def _finalise(p: _Pose) -> tuple[torch.Tensor, torch.Tensor]:
    lo = anatomy.LIMITS_LO_DEG.astype(np.float64) + 0.5
    hi = anatomy.LIMITS_HI_DEG.astype(np.float64) - 0.5
    e = np.clip(p.e, lo, hi)
    body = matrix_to_axis_angle(euler_to_matrix(torch.tensor(np.deg2rad(e), dtype=torch.float64)))
    glob = matrix_to_axis_angle(euler_to_matrix(torch.tensor(np.deg2rad(p.g), dtype=torch.float64)))
    return glob.float(), body.reshape(p.n, 69).float()


def _draw(category: str, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    p = _Pose(n, rng)
    _BUILDERS[category](p)
    _perturb(p)
    return _finalise(p)


def _category_index(c) -> int:
    """Index of a category given by name or index. An unknown name used to raise a bare ``tuple.index(x): x not
    in tuple``, and a negative index (-1) drew "lying" poses but was stored as category -1, which indexes no
    category in the returned ``category`` array."""
    if isinstance(c, str):
        if c not in POSE_CATEGORIES:
            raise ValueError(f"unknown pose category {c!r}; choose from {', '.join(POSE_CATEGORIES)}")
        return POSE_CATEGORIES.index(c)
    i = int(c)
    if not 0 <= i < len(POSE_CATEGORIES):
        raise ValueError(f"pose category index {c!r} out of range 0..{len(POSE_CATEGORIES) - 1} "
                         f"({', '.join(POSE_CATEGORIES)})")
    return i


def sample_poses(n: int, seed: int, categories=None, max_rounds: int = 20, joints_fn=None) -> dict:
    """Draw ``n`` plausible poses, deterministic per ``seed``.

    Returns ``global_orient_body (n,3)``, ``body_pose (n,69)``, ``betas (n,10)`` (float32 tensors) and
    ``category (n,)`` (int64 index into :data:`POSE_CATEGORIES`). ``categories`` restricts the mix (names
    or indices); categories are drawn uniformly. Poses with interpenetrating capsules are redrawn, judged
    on ``joints_fn(global_orient, body_pose, betas) -> (B,24,3)`` (the scene generator passes the body
    model, so the check sees its proportions and the betas) or else on the approximate SMPL skeleton.
    """
    if int(n) < 0:
        raise ValueError(f"sample_poses: n must be ≥ 0, got {n}")
    if categories is None:
        cats = list(range(len(POSE_CATEGORIES)))
    else:
        if isinstance(categories, (str, int, np.integer)):  # one category: a bare "walking" was read letter by letter
            categories = [categories]
        cats = [_category_index(c) for c in categories]
        if not cats:
            raise ValueError("categories must not be empty")
    rng = np.random.default_rng(seed)
    category = rng.choice(np.array(cats), n)
    betas = np.clip(rng.normal(0, 1, (n, 10)), -2.5, 2.5).astype(np.float32)
    glob = torch.zeros(n, 3)
    body = torch.zeros(n, 69)
    for c in sorted(set(category.tolist())):
        idx = np.nonzero(category == c)[0]
        todo = idx
        for _ in range(max_rounds):
            g, b = _draw(POSE_CATEGORIES[c], len(todo), rng)
            glob[todo], body[todo] = g, b
            if joints_fn is None:
                joints = anatomy.forward_kinematics(g, b)
            else:
                joints = joints_fn(g, b, torch.from_numpy(betas[todo])).float().cpu()
            bad = (anatomy.self_penetration(joints) > 0.0) | (anatomy.hyperextension(b).amax(1) > 0.5)
            todo = todo[bad.numpy()]
            if len(todo) == 0:
                break
        if len(todo):  # extremely rare: fall back to the category's archetype without perturbation
            p = _Pose(len(todo), rng)
            _BUILDERS[POSE_CATEGORIES[c]](p)
            glob[todo], body[todo] = _finalise(p)
    return {
        "global_orient_body": glob,
        "body_pose": body,
        "betas": torch.from_numpy(betas),
        "category": torch.from_numpy(category.astype(np.int64)),
    }
