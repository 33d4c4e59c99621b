"""Error, diversity and rank-agreement metrics, batched in torch over any leading dimensions.

Conventions (see docs/CONTRACTS.md): 3D inputs are in metres, every reported 3D error is in **mm**,
2D errors are in pixels. Each function says which joint set and which alignment it uses, because an
MPJPE figure is meaningless without both:

- ``joint_set="lsp14"`` (default, as in the HMR literature: HMR, SPIN, ProHMR report on the 14 LSP
  joints) selects the 14 LSP joints from the 24 SMPL joints. Its root is the **mid-hip** point (mean of
  the two LSP hips), because LSP has no pelvis joint (the same choice SPIN makes for H36M/3DPW).
- ``joint_set="smpl24"`` uses all 24 SMPL joints; its root is the SMPL pelvis (joint 0).
- ``joint_set=None`` uses the joints as given; root = joint 0.

Inputs with 24 joints are subset by ``joint_set``; inputs that already have ``len(joint_set)`` joints
are taken to be in that set's order.

Group statistics (mean / best-of-N oracle / worst / median / critic-selected top-1), the diversity of a
group and the rank correlations the critique agent is judged by (Spearman, Kendall τ-b) live here too,
so that the agent, the alignment evaluation and the benchmarks all compute them the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

# LSP-14 order: R ankle, R knee, R hip, L hip, L knee, L ankle, R wrist, R elbow, R shoulder, L shoulder,
# L elbow, L wrist, neck, head, as SMPL joint indices. Used only if hmr.body (the owner of joint sets)
# cannot be imported; body.JOINT_SETS is authoritative.
_LSP14_FALLBACK = [8, 5, 2, 1, 4, 7, 21, 19, 17, 16, 18, 20, 12, 15]
_LSP14_HIPS = (2, 3)  # positions of R hip and L hip inside the lsp14 list


def joint_indices(name: str) -> list[int]:
    """SMPL joint indices of a named joint set (``lsp14`` or ``smpl24``), from hmr.body when present."""
    try:
        from hmrcritic.hmr.body import JOINT_SETS
    except ImportError:  # body model module not importable: keep metrics usable on their own
        JOINT_SETS = {"smpl24": list(range(24)), "lsp14": _LSP14_FALLBACK}
    if name not in JOINT_SETS:
        raise ValueError(f"unknown joint set {name!r}; choose one of {sorted(JOINT_SETS)}")
    return list(JOINT_SETS[name])


def _as_tensor(x) -> Tensor:
    """Tensors pass through; float64 arrays stay float64 (ranks must not gain ties); others become float32."""
    if isinstance(x, Tensor):
        return x
    a = np.asarray(x)
    if any(step < 0 for step in a.strides):  # a reversed view (``x[::-1]``): torch refuses negative strides
        a = a.copy()
    t = torch.as_tensor(a)
    return t if t.dtype == torch.float64 else t.to(torch.float32)


def select_joints(joints: Tensor, joint_set: str | None = "lsp14") -> tuple[Tensor, Tensor]:
    """Return ``(subset (…,J',3), root (…,3))`` for the joint set; see the module docstring for roots."""
    joints = _as_tensor(joints)
    if joint_set is None:
        return joints, joints[..., 0, :]
    idx = joint_indices(joint_set)
    J = joints.shape[-2]
    if J == 24 and len(idx) != 24:
        joints = joints[..., idx, :]
    elif len(idx) != J:
        raise ValueError(f"joint set {joint_set!r} needs 24 SMPL joints or {len(idx)} joints, got {J}")
    if joint_set == "lsp14":
        root = 0.5 * (joints[..., _LSP14_HIPS[0], :] + joints[..., _LSP14_HIPS[1], :])
    else:
        root = joints[..., 0, :]
    return joints, root


def _check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape[-2:] != b.shape[-2:] or a.shape[-1] != 3:
        raise ValueError(f"{what}: prediction {tuple(a.shape)} and ground truth {tuple(b.shape)} differ")
    # Leading dims broadcast only at equal rank (or against one lone (J,3) set): a (B,J,3) ground truth against
    # (B,N,J,3) hypotheses lined its batch up with the hypotheses, a silently wrong figure when B == N
    if a.ndim != b.ndim and min(a.ndim, b.ndim) > 2:
        raise ValueError(f"{what}: prediction {tuple(a.shape)} and ground truth {tuple(b.shape)} differ in rank; "
                         "give both the same leading dims, e.g. (B,N,J,3) against (B,1,J,3)")


def mpjpe(pred, gt, joint_set: str | None = "lsp14") -> Tensor:
    """Mean per-joint position error in mm after root (pelvis / mid-hip) alignment. Shape ``(…)``.

    ``pred``/``gt`` are ``(…,J,3)`` in metres; leading dims of equal rank broadcast (e.g. ``(B,N,…)`` against
    ``(B,1,…)``); ranks that differ are refused unless one side is a single ``(J,3)`` set.
    """
    pred, gt = _as_tensor(pred), _as_tensor(gt)
    _check_same_shape(pred, gt, "mpjpe")
    p, pr = select_joints(pred, joint_set)
    g, gr = select_joints(gt, joint_set)
    p = p - pr.unsqueeze(-2)
    g = g - gr.unsqueeze(-2)
    return _diverged_as_nan((p - g).norm(dim=-1).mean(dim=-1) * 1000.0)


def _diverged_as_nan(err: Tensor) -> Tensor:
    """An infinite error (a hypothesis with an inf coordinate) as NaN, as PA-MPJPE gives it: :func:`group_metrics`
    skips NaN hypotheses, so an inf one made its group's MPJPE/PVE mean and worst inf (and the group dropped from an
    evaluation's MPJPE while its PA-MPJPE kept it: the two figures covered different scenes)."""
    return torch.where(torch.isinf(err), torch.full_like(err, float("nan")), err)


def procrustes_align(pred, gt) -> Tensor:
    """Similarity-align ``pred (…,J,3)`` to ``gt (…,J,3)`` (rotation, uniform scale, translation).

    Closed form (Umeyama 1991) via a batched SVD in float64; the sign correction on the smallest singular
    direction keeps the rotation proper (det = +1) so a mirrored prediction is never "aligned" by a
    reflection. Returns the aligned prediction in the dtype of ``pred``. A sample with a NaN/inf point (a
    diverged hypothesis) comes back all NaN, like its MPJPE, instead of making the batched SVD raise for
    every sample of the batch. Integer inputs (joints in whole mm) come back as float32, not truncated to
    integers (which also made :func:`pa_mpjpe` raise "vector_norm: Expected a floating point ... Got Long").
    """
    pred, gt = _as_tensor(pred), _as_tensor(gt)
    pred, gt = torch.broadcast_tensors(pred, gt)
    dtype = pred.dtype if pred.is_floating_point() else torch.float32
    X = pred.double()
    Y = gt.double()
    finite = (torch.isfinite(X).all(dim=-1) & torch.isfinite(Y).all(dim=-1)).all(dim=-1)  # (…)
    X = torch.where(finite[..., None, None], X, 0.0)
    Y = torch.where(finite[..., None, None], Y, 0.0)
    mu_x = X.mean(dim=-2, keepdim=True)
    mu_y = Y.mean(dim=-2, keepdim=True)
    X0 = X - mu_x
    Y0 = Y - mu_y
    var_x = (X0**2).sum(dim=(-2, -1))  # (…)
    cov = X0.transpose(-1, -2) @ Y0  # (…,3,3) = sum_j x_j y_j^T
    U, S, Vh = torch.linalg.svd(cov)
    V = Vh.transpose(-1, -2)
    d = torch.sign(torch.linalg.det(V @ U.transpose(-1, -2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    Z = torch.ones(S.shape, dtype=S.dtype, device=S.device)
    Z[..., -1] = d
    R = V @ torch.diag_embed(Z) @ U.transpose(-1, -2)  # rotation acting on column vectors: y ≈ s R x
    scale = (S * Z).sum(dim=-1) / var_x.clamp_min(1e-12)
    aligned = scale[..., None, None] * (X0 @ R.transpose(-1, -2)) + mu_y
    aligned = torch.where(finite[..., None, None], aligned, float("nan"))
    return aligned.to(dtype)


def pa_mpjpe(pred, gt, joint_set: str | None = "lsp14") -> Tensor:
    """Procrustes-aligned MPJPE in mm (similarity transform with scale, per sample). Shape ``(…)``.

    Alignment is computed on the joints of ``joint_set`` only (as in the literature), so the number does
    not depend on the absolute position, orientation or size of the prediction.
    """
    pred, gt = _as_tensor(pred), _as_tensor(gt)
    _check_same_shape(pred, gt, "pa_mpjpe")
    p, _ = select_joints(pred, joint_set)
    g, _ = select_joints(gt, joint_set)
    p, g = torch.broadcast_tensors(p, g)
    aligned = procrustes_align(p, g)
    return (aligned - g).norm(dim=-1).mean(dim=-1) * 1000.0


def pve(pred_verts, gt_verts, pred_root=None, gt_root=None) -> Tensor:
    """Per-vertex error in mm after root alignment. Shape ``(…)``.

    ``pred_root``/``gt_root`` ``(…,3)`` are the pelvis positions (SMPL joint 0 of each body), the
    standard alignment for PVE on 3DPW. Without them both meshes are centred on their vertex centroid
    (documented fallback when no joints are at hand). Both meshes must share a topology.
    """
    pv, gv = _as_tensor(pred_verts), _as_tensor(gt_verts)
    _check_same_shape(pv, gv, "pve")
    if (pred_root is None) != (gt_root is None):
        # one mesh on its pelvis and the other on its vertex centroid differ by the pelvis-to-centroid offset
        # (several cm) even for identical meshes: a silently inflated figure
        raise ValueError("pve: give both pred_root and gt_root (pelvis alignment) or neither (centroid alignment)")
    pr = pv.mean(dim=-2) if pred_root is None else _as_tensor(pred_root)
    gr = gv.mean(dim=-2) if gt_root is None else _as_tensor(gt_root)
    for name, root, verts in (("pred_root", pr, pv), ("gt_root", gr, gv)):
        # a (B,3) root under (B,N,V,3) vertices broadcast its batch against the hypotheses
        if root.shape[-1:] != (3,) or root.ndim != verts.ndim - 1:
            raise ValueError(f"pve: {name} {tuple(root.shape)} must be (…,3) with the leading dims of "
                             f"its vertices {tuple(verts.shape)}")
    return _diverged_as_nan(((pv - pr.unsqueeze(-2)) - (gv - gr.unsqueeze(-2))).norm(dim=-1).mean(dim=-1) * 1000.0)


def reprojection_error(joints2d_pred, keypoints, min_conf: float = 0.0) -> Tensor:
    """Mean 2D distance in pixels between projected joints ``(…,K,2)`` and keypoints ``(…,K,3)`` [u,v,conf].

    Only keypoints with ``conf > min_conf`` count (COCO-17 order on both sides). Coordinates of invisible
    keypoints are ignored even if they are NaN; a sample with no visible keypoint gives NaN (undefined,
    not zero, so that it cannot look like a perfect fit) without warnings or NaN gradients elsewhere.
    """
    pred = _as_tensor(joints2d_pred)
    kp = _as_tensor(keypoints).to(pred.dtype)
    if pred.shape[-1] != 2 or kp.shape[-1] != 3 or pred.shape[-2] != kp.shape[-2]:
        raise ValueError(
            f"reprojection_error: need (…,K,2) and (…,K,3), got {tuple(pred.shape)} and {tuple(kp.shape)}"
        )
    conf = torch.nan_to_num(kp[..., 2], nan=0.0)
    vis = conf > min_conf
    diff = torch.where(vis.unsqueeze(-1), pred - kp[..., :2], torch.zeros_like(pred))
    dist = torch.where(vis, diff.norm(dim=-1), torch.zeros_like(conf))
    count = vis.sum(dim=-1)
    mean = dist.sum(dim=-1) / count.clamp_min(1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


@dataclass
class MetricResult:
    """One reported figure with everything needed to read it (what, how aligned, which joints, unit)."""

    name: str
    value: float
    unit: str = "mm"
    joint_set: str = "lsp14"
    alignment: str = "pelvis"  # "pelvis" (root / mid-hip), "procrustes", or "none"

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.name} = {self.value:.2f} {self.unit} ({self.joint_set}, {self.alignment}-aligned)"


def group_metrics(per_hyp, reduce: bool = True) -> dict:
    """Statistics of a per-hypothesis error ``(B,N)`` over each group of N hypotheses.

    Returns ``mean`` (average hypothesis), ``best`` (oracle best-of-N, the paper's headline number),
    ``worst`` and ``median``. With ``reduce`` each is a float averaged over the B groups; otherwise a
    ``(B,)`` tensor. NaN entries (undefined errors) are ignored within a group.

    ``median`` is ``torch.nanmedian``: for an even count of (non-NaN) values it is the **lower** of the two
    middle values, not their average (``[1, 2, 3, 4]`` → 2, not 2.5). Published tables were computed this
    way, so it stays; compare with numpy/scipy medians accordingly.
    """
    e = _as_tensor(per_hyp).float()
    if e.ndim == 1:
        e = e.unsqueeze(0)
    if e.ndim != 2:
        raise ValueError(f"group_metrics: expected (B,N), got {tuple(e.shape)}")
    if e.shape[-1] == 0:  # groups without a hypothesis: undefined like an all-NaN group (amin raised IndexError)
        e = torch.full((e.shape[0], 1), float("nan"))
    nan = torch.isnan(e)
    out = {
        "mean": torch.nanmean(e, dim=-1),
        "best": torch.where(nan, torch.full_like(e, float("inf")), e).amin(dim=-1),
        "worst": torch.where(nan, torch.full_like(e, float("-inf")), e).amax(dim=-1),
        "median": torch.nanmedian(e, dim=-1).values,
    }
    all_nan = nan.all(dim=-1)
    out = {k: torch.where(all_nan, torch.full_like(v, float("nan")), v) for k, v in out.items()}
    if reduce:
        return {k: float(torch.nanmean(v)) for k, v in out.items()}
    return out


def top1_index(scores) -> Tensor:
    """Index ``(…)`` of the highest score along the last dim: NaN scores never win (torch's argmax picks NaN),
    ties go to the lowest index (deterministic)."""
    s = torch.nan_to_num(_as_tensor(scores).to(torch.float64), nan=float("-inf"))
    return s.argmax(dim=-1)


def select_top1(per_hyp_error, scores) -> Tensor:
    """Error ``(B,)`` of the hypothesis each group's critic scored highest (``scores (B,N)``, higher=better),
    picked by :func:`top1_index`; NaN for a group scored all NaN (no pick: the argmax of all −inf is index 0,
    which reported the sampler's first hypothesis as the critic's choice)."""
    e = _as_tensor(per_hyp_error)
    s = _as_tensor(scores)
    if e.shape != s.shape:
        raise ValueError(f"select_top1: errors {tuple(e.shape)} and scores {tuple(s.shape)} differ")
    picked = e.gather(-1, top1_index(s).unsqueeze(-1)).squeeze(-1)
    return torch.where(torch.isnan(s.to(torch.float64)).all(dim=-1), float("nan"), picked)


def tied_top1_error(scores, errors) -> float:
    """The critic's top-1 error for reporting: the error of the hypothesis scored highest, and where several share
    the highest score, the mean of their errors (the expected error of picking one of them at random).

    :func:`select_top1` must pick one hypothesis (a selection is a sample); a *figure* that took the lowest index
    among tied best reported the sampler's order as the critic's choice — a critic that ties more (the
    evidence-only one) got a luckier or unluckier top-1 than it earned. NaN scores never win; NaN when all are."""
    s = np.asarray(scores, np.float64).reshape(-1)
    e = np.asarray(errors, np.float64).reshape(-1)
    if s.shape != e.shape:
        raise ValueError(f"tied_top1_error: {s.size} scores and {e.size} errors")
    finite = ~np.isnan(s)
    if not finite.any():
        return float("nan")
    return float(e[finite & (s == s[finite].max())].mean())


# pair distances (B·rows·N·J) per block of the pairwise diversity passes (~50 MB of float32 differences)
PAIR_CHUNK_ELEMS = 1 << 22


def mean_pairwise_distance(joints, mask=None, root_relative: bool = False) -> Tensor:
    """Diversity of each group: mean over hypothesis pairs of the mean joint distance, in mm. Shape ``(B,)``.

    ``joints (B,N,J,3)`` in metres; ``mask (B,J)`` or ``(J,)`` bool picks the joints that count (e.g. the
    limbs the keypoints do not see, to measure how much the model hedges there). With ``root_relative``
    each hypothesis is first centred on its joint 0, so only articulation differences count.
    A group with fewer than 2 hypotheses or no selected joint gives NaN.
    """
    j = _as_tensor(joints).float()
    if j.ndim != 4 or j.shape[-1] != 3:
        raise ValueError(f"mean_pairwise_distance: expected (B,N,J,3), got {tuple(j.shape)}")
    B, N, J, _ = j.shape
    if root_relative:
        j = j - j[:, :, :1]
    if mask is None:
        m = torch.ones(B, J, dtype=torch.bool, device=j.device)
    else:
        m = torch.as_tensor(mask, device=j.device).bool()
        m = m.expand(B, J) if m.ndim == 1 else m
    mf = m.float()[:, None, None, :]
    # the (B,N,N,J,3) differences of all pairs at once were 288·B·N² bytes (2.4 GB for `evaluate -n 512`'s 32
    # groups): a block of first hypotheses at a time, every pair's value computed as before; the sum over pairs
    # below stays one reduction over all of them (a sum of per-block sums adds in another order)
    step = max(1, PAIR_CHUNK_ELEMS // max(B * N * J, 1))
    per_pair = j.new_empty(B, N, N)
    for s in range(0, N, step):
        d = (j[:, s : s + step].unsqueeze(2) - j.unsqueeze(1)).norm(dim=-1)  # (B,step,N,J)
        per_pair[:, s : s + step] = (d * mf).sum(-1) / mf.sum(-1).clamp_min(1)
    pairs = N * (N - 1)
    out = per_pair.sum(dim=(-1, -2)) / max(pairs, 1) * 1000.0
    bad = (m.sum(-1) == 0) | (N < 2)
    return torch.where(bad, torch.full_like(out, float("nan")), out)


def rankdata(x) -> Tensor:
    """1-based ranks along the last dim with ties given their average rank (like scipy's 'average').

    A slice with a NaN has no ranking: all its ranks are NaN (scipy's default ``nan_policy='propagate'``), so
    a correlation computed from them is NaN too instead of ranking NaN below every number."""
    x = _as_tensor(x).to(torch.float64)
    less = (x.unsqueeze(-1) > x.unsqueeze(-2)).sum(-1)  # how many are smaller than x_i
    equal = (x.unsqueeze(-1) == x.unsqueeze(-2)).sum(-1)  # includes x_i itself
    ranks = less.to(torch.float64) + (equal.to(torch.float64) + 1.0) / 2.0
    return torch.where(torch.isnan(x).any(dim=-1, keepdim=True), float("nan"), ranks)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    den = torch.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    num = (a * b).sum(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def pearson(x, y) -> Tensor:
    """Pearson correlation along the last dim, batched over leading dims (NaN if either is constant).

    Constancy is tested on the values themselves: the centred copy of a constant like ``[0.1, 0.1, 0.1]`` is
    float noise (its mean is not exactly 0.1), not zeros, so ``den > 0`` alone gave r = ±1 for two constants.
    """
    x, y = _as_tensor(x).to(torch.float64), _as_tensor(y).to(torch.float64)
    r = _pearson(x, y)
    const = (x == x[..., :1]).all(dim=-1) | (y == y[..., :1]).all(dim=-1)
    return torch.where(const, torch.full_like(r, float("nan")), r)


def spearman(x, y) -> Tensor:
    """Spearman's ρ along the last dim (per group), ties by average ranks; NaN if either side is constant or has a NaN.

    Used as the paper's "group-wise Spearman": correlate a critic's scores with the ground-truth errors
    of the same group (expect a negative ρ between scores and errors for a good critic).
    """
    x, y = _as_tensor(x), _as_tensor(y)
    if x.shape != y.shape:
        raise ValueError(f"spearman: shapes {tuple(x.shape)} and {tuple(y.shape)} differ")
    return _pearson(rankdata(x), rankdata(y))


def kendall_tau(x, y) -> Tensor:
    """Kendall's τ-b along the last dim (per group), tie-corrected like scipy's default; NaN if constant or with a NaN.

    τ-b = Σ_{i<j} sgn(xi−xj)·sgn(yi−yj) / sqrt(#pairs untied in x · #pairs untied in y), computed from
    the full sign matrices so a batch of groups is one tensor op (O(N²) memory, fine for N ≤ a few 100).
    """
    x, y = _as_tensor(x).to(torch.float64), _as_tensor(y).to(torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"kendall_tau: shapes {tuple(x.shape)} and {tuple(y.shape)} differ")
    sx = torch.sign(x.unsqueeze(-1) - x.unsqueeze(-2))
    sy = torch.sign(y.unsqueeze(-1) - y.unsqueeze(-2))
    num = (sx * sy).sum(dim=(-1, -2))
    den = torch.sqrt(sx.abs().sum(dim=(-1, -2)) * sy.abs().sum(dim=(-1, -2)))
    # torch.sign(NaN) is 0, which would count a NaN as tied with everything: a group with one is NaN instead
    den = torch.where(torch.isnan(x).any(dim=-1) | torch.isnan(y).any(dim=-1), 0.0, den)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def standard_metrics(
    pred_joints, gt_joints, pred_verts=None, gt_verts=None, joint_set: str = "lsp14"
) -> dict[str, Tensor]:
    """MPJPE, PA-MPJPE (on ``joint_set``) and, with vertices, PVE (pelvis-aligned with SMPL joint 0).

    ``*_joints`` are the 24 SMPL joints ``(…,24,3)``; returns per-sample tensors in mm keyed by name.
    """
    pj, gj = _as_tensor(pred_joints), _as_tensor(gt_joints)
    out = {"mpjpe": mpjpe(pj, gj, joint_set), "pa_mpjpe": pa_mpjpe(pj, gj, joint_set)}
    if (pred_verts is None) != (gt_verts is None):  # "pve" was left out without a word
        raise ValueError("standard_metrics: give both pred_verts and gt_verts for PVE, or neither")
    if pred_verts is not None and gt_verts is not None:
        if pj.shape[-2] != 24:  # PVE's root is SMPL joint 0: joint 0 of an lsp14 set is the right ankle
            raise ValueError(f"standard_metrics: PVE needs the 24 SMPL joints for its pelvis root, got "
                             f"{pj.shape[-2]} joints")
        out["pve"] = pve(pred_verts, gt_verts, pj[..., 0, :], gj[..., 0, :])
    return out
