"""What a known principal point is worth on crops (session 33's ``--principal-point`` / ``--intrinsics``).

A person detector's pipeline hands the model a crop of a larger photo. The crop keeps the photo's optical centre, so
its principal point is not the crop's centre; the model is conditioned on the ray of the person box's centre,
``(c − principal point) / focal``. This crops each test scene to its person (the visible keypoints' box, padded by
``--pad``), writes the crops as labelled ``.npz`` files (``evaluate --data``; the labels are unchanged: a crop does not
move the camera) under three cameras, and evaluates the shipped model on each:

- ``full image``: the scene as generated (the reference);
- ``crop, known K``: the photo's focal and principal point minus the crop's corner (``--intrinsics``, or ``--focal``
  with ``--principal-point``);
- ``crop, focal only``: the true focal, the principal point at the crop's centre (``--focal`` alone);
- ``crop, no flags``: the default guess, focal = max(W, H) of the crop, centred.

Prints the figures (mm, lsp14) and writes benchmarks/results/crop_principal_point.json.

    python benchmarks/crop_principal_point.py [--scenes 200] [-n 16] [--pad 0.2] [--farthest SHARE]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from hmrcritic.hmr.data import load_split
from hmrcritic.hmr.evaluate import evaluate_model
from hmrcritic.io import atomic_write_strict_json

RESULTS = Path(__file__).resolve().parent / "results" / "crop_principal_point.json"
KEYS = ["keypoints", "K", "image_size", "global_orient", "body_pose", "betas", "transl"]
SHOWN = ("mpjpe_mean_mm", "mpjpe_best_mm", "pa_mpjpe_mean_mm", "pa_mpjpe_best_mm", "pve_mean_mm", "reproj_px")


def off_axis(a: dict) -> np.ndarray:
    """|ray| of each scene's visible-keypoint box centre, (c − principal point) / focal."""
    kp, K = a["keypoints"].astype(np.float64), a["K"].astype(np.float64)
    vis = kp[..., 2] > 0
    lo = np.where(vis[..., None], kp[..., :2], np.inf).min(1)
    hi = np.where(vis[..., None], kp[..., :2], -np.inf).max(1)
    ray = ((lo + hi) / 2 - K[:, :2, 2]) / np.stack([K[:, 0, 0], K[:, 1, 1]], 1)
    return np.linalg.norm(ray, axis=1)


def crops(a: dict, pad: float) -> dict[str, dict]:
    """The scenes cropped to their person, under the three cameras (and the full scenes)."""
    kp, K = a["keypoints"].astype(np.float64), a["K"].astype(np.float64)
    vis = kp[..., 2] > 0
    big = np.inf
    lo = np.where(vis[..., None], kp[..., :2], big).min(1)
    hi = np.where(vis[..., None], kp[..., :2], -big).max(1)
    side = (hi - lo).max(1) * (1 + 2 * pad)
    corner = np.floor((lo + hi) / 2 - side[:, None] / 2)
    size = np.ceil(np.stack([side, side], 1)) + 1
    kp_c = kp.copy()
    kp_c[..., :2] -= corner[:, None]
    labels = {k: a[k] for k in ("global_orient", "body_pose", "betas", "transl")}
    known = K.copy()
    known[:, :2, 2] -= corner
    focal_only = K.copy()
    focal_only[:, :2, 2] = size / 2
    default = np.zeros_like(K)
    default[:, 0, 0] = default[:, 1, 1] = size.max(1)
    default[:, :2, 2] = size / 2
    default[:, 2, 2] = 1
    crop = {"keypoints": kp_c, "image_size": size, **labels}
    return {"full image": {k: a[k] for k in KEYS},
            "crop, known K": {**crop, "K": known},
            "crop, focal only": {**crop, "K": focal_only},
            "crop, no flags": {**crop, "K": default}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=200, help="Test scenes (the first ones).")
    ap.add_argument("-n", "--num-generations", type=int, default=16)
    ap.add_argument("--pad", type=float, default=0.2, help="Crop margin around the person, × the box side.")
    ap.add_argument("--farthest", type=float, default=None,
                    help="Keep only this share of the scenes whose person is farthest off the optical axis (the box "
                         "centre's ray |c − principal point| / focal): chosen by geometry, before any evaluation.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    scenes = load_split("test")
    a = {k: np.asarray(v)[: args.scenes] for k, v in scenes.arrays(KEYS).items()}
    ray = off_axis(a)
    if args.farthest is not None:
        keep = np.sort(np.argsort(-ray, kind="stable")[: max(1, round(args.farthest * len(ray)))])
        a, ray = {k: v[keep] for k, v in a.items()}, ray[keep]
    res: dict = {"machine": platform.processor() or platform.machine(), "scenes": len(a["keypoints"]),
                 "num_generations": args.num_generations, "pad": args.pad, "seed": args.seed,
                 "farthest": args.farthest, "off_axis_median": float(np.median(ray)), "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, arrays in crops(a, args.pad).items():
            path = Path(tmp) / (name.replace(",", "").replace(" ", "_") + ".npz")
            np.savez(path, **arrays)
            t0 = time.perf_counter()
            r = evaluate_model(None, data=path, num_generations=args.num_generations, seed=args.seed,
                               nn_baseline=False)
            res["rows"][name] = {k: r[k] for k in SHOWN} | {"seconds": round(time.perf_counter() - t0, 1)}
    width = max(map(len, res["rows"]))
    print(f"{res['scenes']} scenes, median off-axis ray {res['off_axis_median']:.3f} (|c − principal point| / f)")
    print(f"{'camera':<{width}}  " + "  ".join(f"{k:>17}" for k in SHOWN))
    for name, row in res["rows"].items():
        print(f"{name:<{width}}  " + "  ".join(f"{row[k]:>17.1f}" for k in SHOWN))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_strict_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
