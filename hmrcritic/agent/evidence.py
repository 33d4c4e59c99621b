"""Measured evidence per hypothesis: the numbers every judge (builtin and VLM) and every rule reads.

All measures are computed for a whole group at once (vectorised over the N hypotheses) and returned as
``dict[name, np.ndarray (N,)]``. Names, units and directions live in :data:`MEASURES`; rules (memory) refer
to these names in their executable conditions, so renaming one is a contract change.

Choices made here (the paper is silent; see docs/CONTRACTS.md "agent/"):

* ``reproj_px`` is the confidence-weighted mean distance between projected COCO-17 body keypoints and the
  2D keypoints with confidence > 0; ``reproj_rel`` divides it by the diagonal of the visible keypoints' box
  so a threshold means the same for a small and a large person. That diagonal is floored at 10 % of the
  image's longer side (one or two visible keypoints have no usable box), so for a person whose visible box
  is smaller than that, ``reproj_rel`` is ``reproj_px`` over the floor, not over the person's box.
* ``consensus_dev_mm`` is the distance (mm, weighted mean over the 24 root-relative SMPL joints) of each
  hypothesis to the group *medoid* (the hypothesis with the least total distance to the others). Joints
  with low 2D confidence count up to twice: where the image says nothing, the group's agreement is the
  only evidence there is, and an outlier there is more likely wrong than a diverse but image-supported one.
* ``consensus_pa_mm`` is the mean Procrustes-aligned distance (mm, 24 SMPL joints) of each hypothesis to
  every other one of its group. If the sampler is calibrated, the truth behaves like one more sample of the
  group, so a hypothesis close to all the others is closer to the truth on average — and, Procrustes-aligned
  like PA-MPJPE, it ignores the global rotation and scale that the medoid distance above still counts.
  Measured on groups of the shipped model: within-group Spearman with −PA-MPJPE 0.53 (train) / 0.44 (test),
  with ``reproj_px`` the strongest single measures (``python benchmarks/critic_signals.py``). Beyond the
  paper (its critic sees pixels only).
* ``pose_prior_nll`` comes from :mod:`hmrcritic.agent.prior` (a GMM on 6D joint rotations fitted on the
  train split), standardised on the train poses: 0 = a typical train pose, 1 = one train std less likely.
* ``asymmetry`` is the mean relative left/right bone-length difference of the limbs (unusual shapes).
* ``silhouette_iou`` needs a known person mask and rendered masks; ``floor_penetration_mm`` and
  ``floating_mm`` need a known ground plane. Absent inputs mean the measure is left out, never faked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hmrcritic.agent.schema import finite_float
from hmrcritic.errors import InputError


@dataclass(frozen=True)
class MeasureSpec:
    """What a measure means. ``scale`` is how far to the worse side a value is clearly bad — the value itself
    when higher is worse, its shortfall from 1 when lower is worse (silhouette IoU 0.7): what :func:`badness`
    divides by (the rationale's "worst evidence"), the unit rule mining and maintenance measure in, and what
    :func:`decimals` rounds to. The built-in judge's scores do not read it: they rank each measure within the
    group and leave thresholds to the rules.
    ``tag``/``tag_at`` make the retrieval tag emitted when any hypothesis of a group reaches ``tag_at``."""

    unit: str
    higher_is_worse: bool
    description: str
    axis: str
    scale: float
    tag: str
    tag_at: float


MEASURES: dict[str, MeasureSpec] = {
    "reproj_px": MeasureSpec(
        "px", True, "mean 2D distance of projected body keypoints to the visible 2D keypoints",
        "image_alignment", 25.0, "alignment", 25.0),
    "reproj_rel": MeasureSpec(
        "fraction of box diagonal", True, "reproj_px divided by the diagonal of the visible keypoints' box",
        "image_alignment", 0.06, "alignment", 0.06),
    "joint_limit_deg": MeasureSpec(
        "deg", True, "sum over joints of degrees outside the anatomical range",
        "physical_feasibility", 40.0, "joint_limits", 15.0),
    "hyperextension_deg": MeasureSpec(
        "deg", True, "largest backwards bend of a knee or elbow",
        "physical_feasibility", 20.0, "hyperextension", 5.0),
    "penetration_mm": MeasureSpec(
        "mm", True, "depth of the deepest limb-vs-torso/limb intersection",
        "physical_feasibility", 30.0, "penetration", 10.0),
    "pose_prior_nll": MeasureSpec(
        "train std", True, "negative log-likelihood under the train-pose prior, standardised on the train poses",
        "motion_structure", 3.0, "prior", 2.0),
    "consensus_dev_mm": MeasureSpec(
        "mm", True, "distance of root-relative joints to the group medoid (occluded joints weigh more)",
        "motion_structure", 120.0, "consensus", 80.0),
    "consensus_pa_mm": MeasureSpec(
        "mm", True, "mean Procrustes-aligned joint distance to the other hypotheses of the group",
        "motion_structure", 100.0, "consensus", 80.0),
    "silhouette_iou": MeasureSpec(
        "IoU", False, "overlap of the rendered silhouette with the person mask",
        "image_alignment", 0.3, "alignment", 0.6),
    "floor_penetration_mm": MeasureSpec(
        "mm", True, "depth of the lowest body point below the ground plane",
        "physical_feasibility", 50.0, "grounding", 20.0),
    "floating_mm": MeasureSpec(
        "mm", True, "height of the lowest body point above the ground plane",
        "physical_feasibility", 100.0, "grounding", 50.0),
    "asymmetry": MeasureSpec(
        "fraction", True, "mean relative left/right limb bone-length difference",
        "motion_structure", 0.15, "symmetry", 0.1),
}

# Left/right limb bones (parent, child) as SMPL joint indices: thigh, shin, upper arm, forearm.
_LEFT_BONES = [(1, 4), (4, 7), (16, 18), (18, 20)]
_RIGHT_BONES = [(2, 5), (5, 8), (17, 19), (19, 21)]
_FOOT_JOINTS = [7, 8, 10, 11]


@dataclass
class GroupInputs:
    """Arrays of one group, in camera coordinates (metres) and pixels. Built by the graph's render node."""

    joints: np.ndarray  # (N,24,3) SMPL joints
    coco17: np.ndarray  # (N,17,3) 3D COCO-17 keypoints of the body model
    body_pose: np.ndarray  # (N,69) axis-angle
    keypoints: np.ndarray  # (17,3) [u, v, conf]
    K: np.ndarray  # (3,3)
    image_size: tuple[int, int]  # (W, H)
    joint_conf: np.ndarray | None = None  # (24,) 2D confidence per SMPL joint, if known
    mask: np.ndarray | None = None  # (H,W) bool person mask, if known
    pred_masks: np.ndarray | None = None  # (N,H,W) bool rendered silhouettes
    ground: tuple[np.ndarray, float] | None = None  # (unit normal pointing up, offset): height = n·X + d
    vertices: np.ndarray | None = None  # (N,V,3) for ground contact (joints used when absent)
    pairwise_pa_mm: np.ndarray | None = None  # (N,N) from :func:`pairwise_pa_mm`, computed when absent


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


def project(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(…,J,3) camera points → (…,J,2) pixels; points behind the camera are pushed to z = 1 cm."""
    z = points[..., 2:3].clamp_min(1e-2)
    uv = points[..., :2] / z
    return uv @ K[:2, :2].T + K[:2, 2]


def reprojection(coco17: torch.Tensor, keypoints: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Confidence-weighted mean pixel error per hypothesis and the visible keypoints' box diagonal."""
    conf = keypoints[:, 2].clamp_min(0)
    vis = conf > 0
    if not bool(vis.any()):
        raise InputError("keypoints: no keypoint has confidence > 0; nothing to compare hypotheses against")
    uv = project(coco17, K)  # (N,17,2)
    d = (uv - keypoints[None, :, :2]).norm(dim=-1)  # (N,17)
    px = (d * conf).sum(-1) / conf.sum()
    pts = keypoints[vis, :2]
    diag = float((pts.max(0).values - pts.min(0).values).norm())
    return px, diag


def consensus_deviation(joints: torch.Tensor, joint_conf: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean distance (mm) of each hypothesis' root-relative joints to the group medoid.

    When several hypotheses tie for medoid (always so for N = 2, and for duplicated hypotheses) the distance
    is the mean over the tied ones: picking the first would make the first of a pair look like the consensus
    and its partner the outlier — a preference that comes from the order of the group alone."""
    rel = joints - joints[:, :1]
    w = torch.ones(joints.shape[1]) if joint_conf is None else 2.0 - joint_conf.clamp(0, 1)
    w = w / w.sum()
    pair = ((rel[:, None] - rel[None]).norm(dim=-1) * w).sum(-1)  # (N,N)
    total = pair.sum(1)
    # float sums of the same distances in another order: N terms differ by at most ~N·eps of the sum
    tied = total <= total.min() * (1 + len(total) * torch.finfo(total.dtype).eps)
    return pair[:, tied].mean(1) * 1000.0


def pairwise_pa_mm(joints: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(N, N) Procrustes-aligned mean joint distance (mm) between every pair of hypotheses, in batched
    chunks of pairs (one SVD per pair; N = 100 is 10k 3×3 SVDs). Symmetrised: similarity alignment of a to b
    and of b to a differ by the scale, so the two directions are averaged."""
    from hmrcritic.hmr.metrics import procrustes_align

    j = torch.as_tensor(joints, dtype=torch.float64)
    n = j.shape[0]
    ii, jj = torch.triu_indices(n, n, offset=1)
    out = torch.zeros(n, n, dtype=torch.float64)
    for s in range(0, ii.numel(), chunk):
        a, b = j[ii[s:s + chunk]], j[jj[s:s + chunk]]
        d_ab = (procrustes_align(a, b) - b).norm(dim=-1).mean(-1)
        d_ba = (procrustes_align(b, a) - a).norm(dim=-1).mean(-1)
        out[ii[s:s + chunk], jj[s:s + chunk]] = 0.5 * (d_ab + d_ba)
    return (out + out.T) * 1000.0


def consensus_pa(pairwise_mm: torch.Tensor) -> torch.Tensor:
    """Mean of each row of :func:`pairwise_pa_mm` over the *other* hypotheses (0 for a group of one)."""
    n = pairwise_mm.shape[0]
    return pairwise_mm.sum(1) / max(n - 1, 1)


def bone_asymmetry(joints: torch.Tensor) -> torch.Tensor:
    left = torch.stack([(joints[:, c] - joints[:, p]).norm(dim=-1) for p, c in _LEFT_BONES], -1)
    right = torch.stack([(joints[:, c] - joints[:, p]).norm(dim=-1) for p, c in _RIGHT_BONES], -1)
    return ((left - right).abs() / (0.5 * (left + right)).clamp_min(1e-6)).mean(-1)


def silhouette_iou(pred_masks: np.ndarray, mask: np.ndarray) -> np.ndarray:
    p = np.asarray(pred_masks, bool)
    m = np.asarray(mask, bool)[None]
    inter = (p & m).sum((1, 2))
    union = (p | m).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float64)


def ground_contact(points: torch.Tensor, normal, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(floor_penetration_mm, floating_mm) of the lowest point of each hypothesis w.r.t. a ground plane.

    ``normal`` is normalised here but ``offset`` is used as given, so the pair must already be the plane of
    a *unit* normal (height = n·X + d, metres): a scaled pair ``(k·n, k·d)`` moves the plane by ``(k−1)·d``.
    """
    n = _t(normal)
    n = n / n.norm().clamp_min(1e-9)
    lowest = (points @ n + float(offset)).min(dim=-1).values  # (N,)
    return (-lowest).clamp_min(0) * 1000.0, lowest.clamp_min(0) * 1000.0


def _check_array(name: str, arr, shape: tuple) -> np.ndarray:
    a = np.asarray(arr)
    if a.shape != shape:
        raise InputError(f"evidence: {name} has shape {a.shape}, expected {shape}")
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0].tolist()
        raise InputError(f"evidence: {name} contains NaN/inf (first at index {bad})")
    return a


def _validate(inp: GroupInputs) -> None:
    """Shapes and finiteness of every input a measure reads. The optional inputs are checked too: a NaN
    there used to be turned into a plausible-looking 0 by the final ``nan_to_num`` (joint_conf → every
    consensus_dev_mm 0; ground/vertices → no floor contact), and a mis-sized one was broadcast into a
    measure of the wrong length (pairwise_pa_mm, pred_masks) or crashed in torch/numpy."""
    N = np.asarray(inp.joints).shape[0] if np.ndim(inp.joints) else 0
    if N < 1:
        raise InputError("evidence: the group has no hypotheses (joints has shape "
                         f"{np.shape(inp.joints)}, expected (N ≥ 1, 24, 3))")
    for name, arr, shape in [
        ("joints", inp.joints, (N, 24, 3)),
        ("coco17", inp.coco17, (N, 17, 3)),
        ("body_pose", inp.body_pose, (N, 69)),
        ("keypoints", inp.keypoints, (17, 3)),
        ("K", inp.K, (3, 3)),
    ]:
        _check_array(name, arr, shape)
    size = np.asarray(inp.image_size, dtype=np.float64).reshape(-1)
    if size.shape != (2,) or not np.isfinite(size).all() or (size <= 0).any():
        raise InputError(f"evidence: image_size must be (W, H) > 0, got {inp.image_size!r}")
    if inp.joint_conf is not None:
        _check_array("joint_conf", inp.joint_conf, (24,))
    if inp.pairwise_pa_mm is not None:
        _check_array("pairwise_pa_mm", inp.pairwise_pa_mm, (N, N))
    if inp.mask is not None and inp.pred_masks is not None:
        m = np.asarray(inp.mask)
        if m.ndim != 2:
            raise InputError(f"evidence: mask has shape {m.shape}, expected (H, W)")
        _check_array("pred_masks", inp.pred_masks, (N, *m.shape))
    if inp.ground is not None:
        if len(inp.ground) != 2:
            raise InputError("evidence: ground must be (unit normal (3,), offset)")
        normal = _check_array("ground normal", np.asarray(inp.ground[0], dtype=np.float64), (3,))
        if not np.linalg.norm(normal) > 0:
            raise InputError("evidence: ground normal is the zero vector; expected a unit normal pointing up")
        if finite_float(inp.ground[1]) is None:  # NaN, ±inf, or not a number at all ("1 m", None)
            raise InputError(f"evidence: ground offset is {inp.ground[1]!r}, expected a finite number")
        if inp.vertices is not None:
            v = np.asarray(inp.vertices)
            if v.ndim != 3 or v.shape[0] != N or v.shape[1] < 1 or v.shape[2] != 3:
                raise InputError(f"evidence: vertices has shape {v.shape}, expected ({N}, V ≥ 1, 3)")
            _check_array("vertices", v, v.shape)


def compute_evidence(inp: GroupInputs, prior=None) -> dict[str, np.ndarray]:
    """Every measure this group's inputs allow, each ``(N,)`` float64. ``prior`` defaults to the cached
    train-pose prior (:func:`hmrcritic.agent.prior.get_pose_prior`)."""
    from hmrcritic.hmr import anatomy

    _validate(inp)
    joints = _t(inp.joints)
    coco = _t(inp.coco17)
    pose = _t(inp.body_pose)
    K = _t(inp.K)
    kp = _t(inp.keypoints)
    px, diag = reprojection(coco, kp, K)
    diag = max(diag, 0.1 * float(max(inp.image_size)))  # one or two visible keypoints: fall back to the image
    out: dict[str, torch.Tensor] = {"reproj_px": px, "reproj_rel": px / diag}
    with torch.no_grad():
        out["joint_limit_deg"] = anatomy.joint_limit_violation(pose).sum(-1)
        out["hyperextension_deg"] = anatomy.hyperextension(pose).max(-1).values
        out["penetration_mm"] = anatomy.self_penetration(joints) * 1000.0
    if prior is None:
        from hmrcritic.agent.prior import get_pose_prior

        prior = get_pose_prior()
    out["pose_prior_nll"] = _t(prior.nll(pose))
    conf = None if inp.joint_conf is None else _t(inp.joint_conf)
    out["consensus_dev_mm"] = consensus_deviation(joints, conf)
    pair = pairwise_pa_mm(joints) if inp.pairwise_pa_mm is None else torch.as_tensor(inp.pairwise_pa_mm)
    out["consensus_pa_mm"] = consensus_pa(pair)
    out["asymmetry"] = bone_asymmetry(joints)
    result = {k: v.detach().double().cpu().numpy() for k, v in out.items()}
    if inp.mask is not None and inp.pred_masks is not None:
        result["silhouette_iou"] = silhouette_iou(inp.pred_masks, inp.mask)
    if inp.ground is not None:
        pts = _t(inp.vertices) if inp.vertices is not None else joints[:, _FOOT_JOINTS]
        pen, flo = ground_contact(pts, inp.ground[0], inp.ground[1])
        result["floor_penetration_mm"] = pen.double().numpy()
        result["floating_mm"] = flo.double().numpy()
    for k, v in result.items():
        if np.isnan(v).any():
            # validated inputs can still give one: a value finite in float64 but beyond float32's range (where
            # the measures are computed) is inf there, and inf − inf or inf · 0 is NaN. Read as 0 it was the best
            # value of its measure (a perfect reprojection, full consensus), so the most broken hypothesis looked
            # the best; a measure that cannot be computed is an error, as a NaN input is.
            raise InputError(f"evidence: {k} is NaN for hypotheses {np.flatnonzero(np.isnan(v)).tolist()[:8]} "
                             "(an input beyond float32's range, about 3.4e38?)")
        result[k] = quantise(k, np.nan_to_num(v, posinf=1e6, neginf=-1e6))
    return result


# Evidence is reported to the decimal place at or below this share of each measure's ``scale``: 0.01 mm of
# penetration, 0.1 mm of consensus distance, 0.01 px of reprojection, 1e-4 of bone asymmetry or IoU. Finer
# digits are floating-point noise, and the judge ranks measures within the group: unrounded, a measure that is
# constant in exact arithmetic — the bone asymmetry of SMPL bodies, whose bone lengths the pose cannot change —
# ranked the group by rounding error, differently on each CPU (measured: all 100 test groups of
# `evaluate-critic` reordered on it between torch's AVX-512 and generic kernels, moving the evidence-only
# Spearman by up to 0.01).
EVIDENCE_RESOLUTION = 1e-3


def decimals(name: str) -> int | None:
    """Decimal places measure ``name`` is reported to (None for a measure this module does not know)."""
    spec = MEASURES.get(name)
    return None if spec is None else -math.floor(math.log10(spec.scale * EVIDENCE_RESOLUTION) + 1e-9)


def quantise(name: str, values) -> np.ndarray:
    """``values`` of measure ``name`` rounded to :func:`decimals` places (unknown measures unchanged)."""
    v = np.asarray(values, dtype=np.float64)
    d = decimals(name)
    return v if d is None else np.round(v, d) + 0.0  # + 0.0: no negative zero


def badness(name: str, values) -> np.ndarray:
    """Measure values mapped to 'how bad' on a common scale (0 = fine, 1 = clearly bad at ``scale``)."""
    spec = MEASURES[name]
    v = np.asarray(values, dtype=np.float64)
    if spec.higher_is_worse:
        return np.clip(v, 0, None) / spec.scale
    return np.clip(1.0 - v, 0, None) / spec.scale


def evidence_tags(evidence: dict[str, np.ndarray | list[float]], keypoints=None,
                  image_size: tuple[int, int] | None = None) -> list[str]:
    """Tags for rule retrieval, from the memory's tag vocabulary (memory/starter_rules.TAG_VOCABULARY).

    A measure's tag is emitted when any hypothesis of the group reaches its ``tag_at`` (worse side); with
    the 2D keypoints, ``occlusion`` (some confidence 0) and ``truncation`` (a visible keypoint outside the image,
    or with it 6 or more of the 17 unseen: a person cut by the frame whose detector dropped the points outside).
    Knee/elbow hyperextension also tags ``legs``/``arms``, the limbs it concerns.
    """
    tags: set[str] = set()
    for name, values in evidence.items():
        spec = MEASURES.get(name)
        if spec is None:
            continue
        v = np.asarray(values, dtype=np.float64)
        hit = (v >= spec.tag_at) if spec.higher_is_worse else (v <= spec.tag_at)
        if bool(hit.any()):
            tags.add(spec.tag)
    if "hyperextension" in tags:
        tags.update({"legs", "arms"})
    if keypoints is not None:
        kp = np.asarray(keypoints, dtype=np.float64)
        if bool((kp[:, 2] <= 0).any()):
            tags.add("occlusion")
        if image_size is not None:
            W, H = image_size
            vis = kp[:, 2] > 0
            out = (kp[:, 0] < 0) | (kp[:, 1] < 0) | (kp[:, 0] >= W) | (kp[:, 1] >= H)
            if bool((out & vis).any()) or bool((kp[:, 2] <= 0).sum() >= 6):
                tags.add("truncation")
    return sorted(tags)
