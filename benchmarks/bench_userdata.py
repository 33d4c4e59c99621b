"""Benchmark reading one's own data (session 33): ``export --data inputs.jsonl`` reads and checks every entry before
the first group, ``export --data kp.npz`` / ``evaluate --data labelled.npz`` every row.

Measured: an input list of ``--entries`` photos (JPEG, ``--width`` × ``--height``, each with a COCO-17 keypoint file)
through :func:`hmrcritic.hmr.userdata.read_inputs` (images sized from their headers) against decoding every image as
``sample`` does (``sample_from_user(..., decode_image=True)``); an ``.npz`` of ``--rows`` inputs and a labelled one
through :func:`read_inputs` / :func:`read_labelled`. Prints a table and writes benchmarks/results/userdata.json.

    python benchmarks/bench_userdata.py [--entries 200] [--width 4000 --height 3000] [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from hmrcritic.hmr.data import sample_from_user
from hmrcritic.hmr.userdata import read_inputs, read_labelled
from hmrcritic.io import atomic_write_strict_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "userdata.json"


def _person(W: int, H: int) -> list:
    """A standing person's COCO-17 keypoints in the middle of a W × H image (all visible)."""
    xs = np.array([0, 0.02, -0.02, 0.04, -0.04, 0.1, -0.1, 0.12, -0.12, 0.13, -0.13, 0.07, -0.07, 0.08, -0.08,
                   0.08, -0.08])
    ys = np.array([0.1, 0.09, 0.09, 0.1, 0.1, 0.22, 0.22, 0.38, 0.38, 0.5, 0.5, 0.52, 0.52, 0.7, 0.7, 0.88, 0.88])
    return [[W / 2 + x * H, y * H, 0.9] for x, y in zip(xs, ys, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=200, help="Photos in the input list.")
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--rows", type=int, default=100_000, help="Rows of the .npz files.")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from PIL import Image

    res: dict = {"machine": platform.processor() or platform.machine(), "entries": args.entries,
                 "image": [args.width, args.height], "rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        # one noisy photo (JPEG of noise: the worst case to decode), linked under every entry's name
        noise = rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / "photo.jpg", quality=90)
        atomic_write_text(root / "kp.json", json.dumps(_person(args.width, args.height)))
        lines = []
        for i in range(args.entries):
            (root / f"p{i:05d}.jpg").symlink_to(root / "photo.jpg")
            lines.append(json.dumps({"image": f"p{i:05d}.jpg", "keypoints": "kp.json"}))
        atomic_write_text(root / "inputs.jsonl", "\n".join(lines) + "\n")

        t0 = time.perf_counter()
        samples = read_inputs(root / "inputs.jsonl")
        res["list_header_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(args.entries):
            sample_from_user(root / f"p{i:05d}.jpg", root / "kp.json")
        res["list_decoded_s"] = time.perf_counter() - t0
        assert len(samples) == args.entries

        n = args.rows
        kp = np.tile(np.asarray(_person(640, 480), np.float32), (n, 1, 1))
        K = np.array([[640.0, 0, 320], [0, 640, 240], [0, 0, 1]], np.float32)
        np.savez(root / "inputs.npz", keypoints=kp, K=K, image_size=np.array([640, 480]))
        labels = {"global_orient": np.tile(np.float32([np.pi, 0, 0]), (n, 1)),
                  "body_pose": np.zeros((n, 69), np.float32), "betas": np.zeros((n, 10), np.float32),
                  "transl": np.tile(np.float32([0, 0, 5]), (n, 1))}
        np.savez(root / "labelled.npz", keypoints=kp, K=K, image_size=np.array([640, 480]), **labels)
        t0 = time.perf_counter()
        assert len(read_inputs(root / "inputs.npz")) == n
        res["npz_inputs_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert read_labelled(root / "labelled.npz")[1] == n
        res["npz_labelled_s"] = time.perf_counter() - t0

    print(f"input list, {args.entries} photos of {args.width}x{args.height}: {res['list_header_s']:.2f} s from the "
          f"headers ({args.entries / res['list_header_s']:.0f} entries/s), {res['list_decoded_s']:.2f} s decoding "
          f"every image ({args.entries / res['list_decoded_s']:.1f} entries/s)")
    print(f".npz of {n} inputs: {res['npz_inputs_s']:.2f} s; labelled .npz of {n} scenes: "
          f"{res['npz_labelled_s']:.2f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_strict_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
