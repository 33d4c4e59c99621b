"""How close is ``anatomy.joint_limit_violation`` to the true distance from a rotation to its joint's box?

Random joint rotations, Euler angles drawn up to ``--margin`` degrees outside every box (``--poses`` poses × 23
joints), scored three ways: the current measure; the method it replaced in session 15 (clamp both Euler branches
into the box, then 25 projected-gradient steps from the nearer one — kept here only for this comparison); and a
reference (the best of a dense ``--step``° grid over each box, refined by the same exact coordinate ascent the
measure uses, from that grid point). Printed: how many joints read more than 0.1° / 1° / 10° above the
reference, the worst excess, and how many cross ``is_implausible``'s 10° only because of the excess; plus every
allowed shoulder at gimbal lock (y = ±90°), which must read 0; and how much the two methods differ on the
shipped model's hypotheses of ``--model-groups`` test groups. Writes benchmarks/results/joint_limits.json.

    python benchmarks/joint_limits.py [--poses 200] [--margin 50] [--step 3] [--seed 0] [--model-groups N]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from hmrcritic.hmr import anatomy as A
from hmrcritic.hmr.rotations import axis_angle_to_matrix, euler_to_matrix, matrix_to_axis_angle, matrix_to_euler_xyz
from hmrcritic.io import atomic_write_strict_json

RESULTS = Path(__file__).resolve().parent / "results" / "joint_limits.json"


def _geodesic_deg(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    tr = (r1.transpose(-1, -2) @ r2).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.acos(((tr - 1) / 2).clamp(-1, 1)).rad2deg()


def previous_method(rot: torch.Tensor, refine_steps: int = 25) -> torch.Tensor:
    """(B,23,3,3) → (B,23) degrees, as ``joint_limit_violation`` computed it before session 15."""
    lo = torch.as_tensor(A.LIMITS_LO_DEG, dtype=rot.dtype).deg2rad()
    hi = torch.as_tensor(A.LIMITS_HI_DEG, dtype=rot.dtype).deg2rad()
    e1 = matrix_to_euler_xyz(rot)
    e2 = A._wrap(torch.stack([e1[..., 0] + math.pi, math.pi - e1[..., 1], e1[..., 2] + math.pi], -1))
    c1, c2 = torch.maximum(torch.minimum(e1, hi), lo), torch.maximum(torch.minimum(e2, hi), lo)
    d1, d2 = A._rot_dist(rot, euler_to_matrix(c1)), A._rot_dist(rot, euler_to_matrix(c2))
    best = torch.where((d1 <= d2)[..., None], c1, c2)
    dist = torch.minimum(d1, d2)
    todo = dist > 1e-4
    if bool(todo.any()):
        idx = todo.nonzero(as_tuple=True)
        rt, e = rot[idx], best[idx].clone()
        lo_t, hi_t = lo[idx[1]], hi[idx[1]]
        for _ in range(refine_steps):
            ev = e.clone().requires_grad_(True)
            loss = (euler_to_matrix(ev) - rt).pow(2).sum()
            (g,) = torch.autograd.grad(loss, ev)
            e = torch.maximum(torch.minimum(e - 0.2 * g, hi_t), lo_t).detach()
        best[idx] = torch.where((A._rot_dist(rt, euler_to_matrix(e)) < dist[idx])[..., None], e, best[idx])
    out = A._rot_dist(rot, euler_to_matrix(best)).rad2deg()
    return torch.where(dist <= 1e-4, torch.zeros_like(out), out)


def reference(rot: torch.Tensor, step_deg: float) -> torch.Tensor:
    """(B,23,3,3) → (B,23): a dense grid of each box, its best point refined by exact coordinate ascent."""
    out = torch.zeros(rot.shape[:2], dtype=torch.float64)
    for j in range(23):
        lo = torch.as_tensor(A.LIMITS_LO_DEG[j], dtype=torch.float64)
        hi = torch.as_tensor(A.LIMITS_HI_DEG[j], dtype=torch.float64)
        axes = [torch.arange(float(lo[k]), float(hi[k]) + 1e-6, step_deg, dtype=torch.float64) for k in range(3)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).deg2rad()
        gm = euler_to_matrix(grid)  # (G,3,3)
        r = rot[:, j]  # (B,3,3)
        tr = torch.einsum("bij,gij->bg", r, gm)  # trace(rᵀ g) for every pair
        start = grid[tr.argmax(1)]
        e = A._closest_in_box(r, start, lo.deg2rad().expand(len(r), 3), hi.deg2rad().expand(len(r), 3), 50)
        grid_best = torch.acos(((tr.amax(1) - 1) / 2).clamp(-1, 1)).rad2deg()
        out[:, j] = torch.minimum(grid_best, _geodesic_deg(r, euler_to_matrix(e)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--poses", type=int, default=200)
    ap.add_argument("--margin", type=float, default=50.0, help="degrees beyond each box the angles are drawn")
    ap.add_argument("--step", type=float, default=3.0, help="grid step of the reference search (degrees)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-groups", type=int, default=100,
                    help="also compare both methods on the shipped model's hypotheses of N test groups (0: skip)")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()

    g = torch.Generator().manual_seed(args.seed)
    lo = torch.as_tensor(A.LIMITS_LO_DEG, dtype=torch.float64)
    hi = torch.as_tensor(A.LIMITS_HI_DEG, dtype=torch.float64)
    e = (lo - args.margin) + (hi - lo + 2 * args.margin) * torch.rand(args.poses, 23, 3, generator=g,
                                                                       dtype=torch.float64)
    rot = euler_to_matrix(e.deg2rad())
    ref = reference(rot, args.step)
    current = A.joint_limit_violation(matrix_to_axis_angle(rot).reshape(args.poses, 69)).double()
    rows = {"current": current, "previous": previous_method(rot.float()).double()}
    out = {"poses": args.poses, "joints": args.poses * 23, "margin_deg": args.margin, "grid_step_deg": args.step,
           "seed": args.seed, "outside": int((ref > 1e-3).sum()), "methods": {}}
    print(f"{args.poses * 23} joint rotations up to {args.margin:g}° outside their boxes; {out['outside']} outside "
          f"(reference: {args.step:g}° grid + coordinate ascent)")
    for name, v in rows.items():
        excess = v - ref
        rec = {f"above_ref_{t:g}deg": int((excess > t).sum()) for t in (0.1, 1.0, 10.0)}
        rec["worst_excess_deg"] = round(float(excess.max()), 3)
        rec["false_implausible"] = int(((v > 10.0) & (ref <= 10.0)).sum())
        out["methods"][name] = rec
        print(f"  {name:<9} above the reference by > 0.1° {rec['above_ref_0.1deg']:>5}, > 1° "
              f"{rec['above_ref_1deg']:>5}, > 10° {rec['above_ref_10deg']:>5}; worst {rec['worst_excess_deg']:.2f}°; "
              f"over 10° only by the excess {rec['false_implausible']}")
    for y in (90.0, -90.0):  # allowed shoulders at gimbal lock: every one must read 0
        worst = {}
        for name in ("left_shoulder", "right_shoulder"):
            j = A.BODY_JOINT_NAMES.index(name)
            n = 4000
            x = lo[j, 0] + (hi[j, 0] - lo[j, 0]) * torch.rand(n, generator=g, dtype=torch.float64)
            z = lo[j, 2] + (hi[j, 2] - lo[j, 2]) * torch.rand(n, generator=g, dtype=torch.float64)
            r = euler_to_matrix(torch.stack([x, torch.full_like(x, y), z], -1).deg2rad())
            bp = torch.zeros(n, 23, 3, dtype=torch.float64)
            bp[:, j] = matrix_to_axis_angle(r)
            aa = bp.float()  # as a model's pose arrives: float32 axis-angle (near, not exactly at, the lock)
            cur = A.joint_limit_violation(aa.reshape(n, 69))[:, j]
            prev = previous_method(axis_angle_to_matrix(aa))[:, j]
            worst[name] = {"current_over_1deg": int((cur > 1).sum()), "current_worst": round(float(cur.max()), 3),
                           "previous_over_1deg": int((prev > 1).sum()), "previous_worst": round(float(prev.max()), 3)}
        out[f"gimbal_lock_y{y:+g}"] = worst
        print(f"  allowed shoulders at y = {y:+g}° (4,000 each): {worst}")
    if args.model_groups:  # what the change means on real hypotheses: the shipped model's test groups
        from hmrcritic.agent.groups import make_groups

        groups, source = make_groups("test", args.model_groups, 16, seed=0, source="model")
        bp = torch.as_tensor(np.concatenate([g.hypotheses["body_pose"] for g in groups]))
        cur = A.joint_limit_violation(bp).double()
        prev = previous_method(axis_angle_to_matrix(bp.reshape(-1, 23, 3))).double()
        diff = (prev - cur).abs()
        out["model_hypotheses"] = {
            "groups": len(groups), "hypotheses": len(bp), "joints": int(bp.shape[0] * 23),
            "outside": int((cur > 0).sum()), "changed_over_1deg": int((diff > 1).sum()),
            "largest_change_deg": round(float(diff.max()), 3),
            "limit_flag_changes": int(((prev.amax(1) > 10) != (cur.amax(1) > 10)).sum()),
        }
        print(f"  the shipped model's hypotheses ({len(groups)} test groups × 16): {out['model_hypotheses']}")
    atomic_write_strict_json(args.json, out)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
