"""Speed of the foundation the rest is built on: body model forward, rendering, metrics, scene generation.

- SMPL forward (the body model in use: the mannequin unless HMRCRITIC_BODY_MODEL points to a file) at batch
  1 / 64 / 1024, in bodies/s (vertices + joints, no grad).
- Renders at 512×512 of that body: overlay on an image (colour + depth + compositing), silhouette mask
  (depth only), and a 16-hypothesis grid (tiles of 256 px) with and without side views, in renders/s.
- Metrics: MPJPE + PA-MPJPE (batched SVD) over 1024 groups × 16 hypotheses, in hypotheses/s.
- Scene generation through ``hmr.data.generate_split`` (keypoints only, and with rendered images) into a
  temporary folder, in scenes/s (each kind after an untimed generation of 2 scenes).

Prints a table and writes benchmarks/results/foundation.json (with the machine's torch/GL details).

    python benchmarks/bench_foundation.py [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hmrcritic.config  # noqa: F401  (GL platform before pyrender)
from hmrcritic.io import atomic_write_strict_json

RESULTS = Path(__file__).resolve().parent / "results" / "foundation.json"


def _rate(fn, items: int, min_time: float, min_reps: int = 2) -> dict:
    """Run ``fn`` once to warm up, then repeatedly for at least ``min_time`` s; items/s and ms per call."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        dt = time.perf_counter() - t0
        if reps >= min_reps and dt >= min_time:
            break
    per_call = dt / reps
    return {"per_s": round(items / per_call, 2), "ms_per_call": round(per_call * 1000, 2), "reps": reps}


def _random_bodies(B: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "global_orient": torch.tensor([[np.pi, 0.0, 0.0]]).repeat(B, 1)
        + 0.1 * torch.randn(B, 3, generator=g),
        "body_pose": 0.2 * torch.randn(B, 69, generator=g),
        "betas": torch.randn(B, 10, generator=g),
        "transl": torch.tensor([[0.0, 0.2, 4.0]]).repeat(B, 1),
    }


def bench_body(body, min_time: float, batches=(1, 64, 1024)) -> dict:
    out = {}
    for B in batches:
        p = _random_bodies(B)

        def fwd(p=p):
            with torch.no_grad():
                body(p["global_orient"], p["body_pose"], p["betas"], p["transl"])

        out[f"batch_{B}"] = {"batch": B, **_rate(fwd, B, min_time)}
    return out


def bench_render(body, min_time: float) -> dict:
    from hmrcritic.hmr.render import Renderer

    r = Renderer()
    p = _random_bodies(16, seed=1)
    with torch.no_grad():
        verts = body(p["global_orient"], p["body_pose"], p["betas"], p["transl"]).vertices.numpy()
    K = np.array([[700.0, 0, 255.5], [0, 700.0, 255.5], [0, 0, 1]])
    img = np.random.default_rng(0).integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    out = {
        "overlay_512": _rate(lambda: r.overlay(img, verts[0], body.faces, K), 1, min_time),
        "mask_512": _rate(lambda: r.mask(verts[0], body.faces, K, (512, 512)), 1, min_time),
        "side_view_256": _rate(lambda: r.side_view(verts[0], body.faces, size=256), 1, min_time),
        "grid16_tile256": _rate(lambda: r.group_grid(img, verts, body.faces, K, cols=4), 1, min_time),
        "grid16_tile256_side": _rate(lambda: r.group_grid(img, verts, body.faces, K, cols=4, side=True), 1,
                                     min_time),
    }
    out["gl"] = r.gl_info
    r.close()
    return out


def bench_metrics(min_time: float, B: int = 1024, N: int = 16) -> dict:
    from hmrcritic.hmr import metrics as M

    g = torch.Generator().manual_seed(0)
    gt = torch.randn(B, 1, 24, 3, generator=g) * 0.3
    pred = gt + 0.05 * torch.randn(B, N, 24, 3, generator=g)
    return {
        "mpjpe": _rate(lambda: M.mpjpe(pred, gt), B * N, min_time),
        "pa_mpjpe": _rate(lambda: M.pa_mpjpe(pred, gt), B * N, min_time),
        "spearman_groups": _rate(lambda: M.spearman(pred[..., 0, 0], pred[..., 1, 1]), B, min_time),
        "shape": [B, N],
    }


def bench_scenes(n: int, n_images: int) -> dict:
    try:
        from hmrcritic.hmr.data import generate_split
    except ImportError as exc:
        return {"skipped": f"hmr.data not importable: {exc}"}
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-scenes-") as tmp:
        for label, count, images in (("keypoints_only", n, False), ("with_images", n_images, True)):
            # an untimed pass first, as every other figure here has: the first generation with images pays a
            # one-time cost (50 scenes under load: 2.6 s, then 1.0 s and 0.9 s; on a quiet machine 47 scenes/s cold
            # against 56 warm, 2026-12-06)
            generate_split("test", out_dir=Path(tmp) / f"{label}-warm", n=2, seed=0, render_images=images,
                           quiet=True)
            t0 = time.perf_counter()
            generate_split("test", out_dir=Path(tmp) / label, n=count, seed=0, render_images=images,
                           quiet=True)
            dt = time.perf_counter() - t0
            out[label] = {"n": count, "seconds": round(dt, 3), "per_s": round(count / dt, 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="short timings (smoke test)")
    ap.add_argument("--scenes", type=int, default=2000, help="scenes for the keypoint-only generation timing")
    ap.add_argument("--scene-images", type=int, default=50, help="scenes for the with-images timing")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default results/foundation.json; with --quick results/foundation_quick.json, "
                         "so a smoke run never replaces the figures README cites)")
    args = ap.parse_args()
    args.out = args.out or (RESULTS.with_name("foundation_quick.json") if args.quick else RESULTS)
    torch.set_num_threads(args.threads)
    min_time = 0.3 if args.quick else 2.0
    if args.quick:
        args.scenes, args.scene_images = min(args.scenes, 200), min(args.scene_images, 8)

    from hmrcritic.hmr.body import load_body_model

    body = load_body_model()
    res = {
        "machine": {
            "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "gl_platform": os.environ.get("PYOPENGL_PLATFORM"),
            # other work on the machine slows every figure; record how busy it was
            "load_avg_1min_start": round(os.getloadavg()[0], 2),
        },
        "body_model": {"name": body.name, "vertices": int(body.num_vertices), "faces": int(len(body.faces))},
        "quick": args.quick,
    }
    res["smpl_forward"] = bench_body(body, min_time)
    res["render"] = bench_render(body, min_time)
    res["machine"]["gl_renderer"] = res["render"].pop("gl").get("renderer")
    res["metrics"] = bench_metrics(min_time)
    res["scenes"] = bench_scenes(args.scenes, args.scene_images)

    rows = [(f"SMPL forward, batch {v['batch']}", v["per_s"], "bodies/s", v["ms_per_call"])
            for v in res["smpl_forward"].values()]
    names = {"overlay_512": "overlay 512²", "mask_512": "mask 512² (depth only)",
             "side_view_256": "side view 256²", "grid16_tile256": "grid of 16 (256-px tiles)",
             "grid16_tile256_side": "grid of 16 + side views"}
    rows += [(names[k], v["per_s"], "renders/s", v["ms_per_call"]) for k, v in res["render"].items()]
    B, N = res["metrics"]["shape"]
    rows += [(f"{k} ({B}×{N})", res["metrics"][k]["per_s"], "groups/s" if "spearman" in k else "hyps/s",
              res["metrics"][k]["ms_per_call"]) for k in ("mpjpe", "pa_mpjpe", "spearman_groups")]
    for k, v in res["scenes"].items():
        if isinstance(v, dict):
            rows.append((f"scenes: {k} (n={v['n']})", v["per_s"], "scenes/s", 1000 * v["seconds"] / v["n"]))
        else:
            rows.append((f"scenes: {v}", float("nan"), "", float("nan")))
    m = res["machine"]
    print(f"foundation benchmark: torch {m['torch']}, {m['threads']} threads, GL {m['gl_platform']} "
          f"({m['gl_renderer']}), body {body.name} ({body.num_vertices} vertices)")
    print(f"{'what':<40} {'rate':>12} {'unit':<10} {'ms/call':>10}")
    for name, rate, unit, ms in rows:
        print(f"{name:<40} {rate:>12,.1f} {unit:<10} {ms:>10.2f}")
    res["machine"]["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(f"load average (1 min) at start / end: {m['load_avg_1min_start']} / {m['load_avg_1min_end']} "
          f"on {m['cpu_count']} CPUs")
    atomic_write_strict_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
