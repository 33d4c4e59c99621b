"""Throughput of the preference export: groups/s with 1 and 2 worker processes and with a local Ray, and
peak memory.

Each configuration exports the same inputs (the first ``--inputs`` scenes of a generated ``wild`` split)
into a fresh folder with the real pipeline: diffusion sampling (the shipped base model when present, else
a freshly initialised one of the same architecture) + the critique agent with the builtin judge on a frozen
starter memory. Each configuration runs in its own subprocess so that its peak resident memory is its own:
``peak_rss_parent_mb`` (``resource.getrusage(RUSAGE_SELF)``) and ``peak_rss_children_mb`` (the largest
worker process, ``RUSAGE_CHILDREN``; Ray's workers are not children of the driver and are not counted).
groups/s counts the export call alone (worker start-up included: that is what a user waits for).
Writes benchmarks/results/export.json (or ``--out PATH``).

    python benchmarks/bench_export.py [--inputs 8] [--G 20] [--configs serial,pool2,ray2] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hmrcritic.io import atomic_write_strict_json

RESULTS = Path(__file__).resolve().parent / "results" / "export.json"
CONFIGS = {"serial": (1, None), "pool2": (2, None), "ray2": (2, "local")}


def run_one(args) -> None:
    from hmrcritic.alignment.export import ExportConfig, export

    workers, ray = CONFIGS[args.one]
    cfg = ExportConfig(
        out=str(Path(args.tmp) / args.one),
        data=args.data,
        model=args.model,
        num_generations=args.G,
        workers=workers,
        ray_address=ray,
        limit=args.inputs,
        sample_steps=args.steps,
        memory=args.memory,
        score_group=args.scorer,
    )
    t0 = time.perf_counter()
    s = export(cfg)
    elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "config": args.one,
                "executor": s.executor,
                "groups": s.new_groups,
                "failures": s.failures,
                "G": args.G,
                "elapsed_s": elapsed,
                "groups_per_s": s.new_groups / elapsed,
                "peak_rss_parent_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                "zero_variance_share": s.zero_variance_share,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--G", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--scorer", default="hmrcritic.agent.api:critique_group")
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="JSON path (default results/export.json, the figures README cites: a smoke run goes "
                         "elsewhere)")
    for hidden in ("one", "data", "model", "tmp", "memory"):
        ap.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(args)
        return
    if unknown := sorted(set(args.configs.split(",")) - set(CONFIGS)):
        ap.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    # the starter memory is a folder of the run (the workers inherit this environment): with the caller's
    # HMRCRITIC_CHROMA_URL it was their shared server's memory, seeded there and scoring every group
    os.environ.pop("HMRCRITIC_CHROMA_URL", None)

    from hmrcritic.hmr.data import generate_split
    from hmrcritic.hmr.diffusion import DEFAULT_CHECKPOINT, HMRDiffusion, save_model
    from hmrcritic.memory import MemoryStore

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        tmp = Path(tmp)
        data = generate_split("wild", tmp / "wild", n=args.inputs, quiet=True)
        if DEFAULT_CHECKPOINT.exists():
            model, note = str(DEFAULT_CHECKPOINT), "shipped base model"
        else:
            model, note = str(tmp / "fresh.pt"), "freshly initialised base architecture"
            save_model(HMRDiffusion(), model)
        MemoryStore(tmp / "memory")  # a frozen starter memory, made once
        # one untimed serial pass warms the caches the agent builds on first use (pose prior, body model)
        warm = [
            sys.executable,
            __file__,
            "--one",
            "serial",
            "--data",
            str(data),
            "--model",
            model,
            "--tmp",
            str(tmp / "warm"),
            "--memory",
            str(tmp / "memory"),
            "--inputs",
            "1",
            "--G",
            str(args.G),
            "--steps",
            str(args.steps),
            "--scorer",
            args.scorer,
        ]
        res = subprocess.run(warm, capture_output=True, text=True, check=False)
        if res.returncode != 0:  # check=True said only "returned non-zero exit status 1", the reason swallowed
            tail = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "?"
            sys.exit(f"bench_export: the warm-up export failed (nothing measured): {tail}")
        for name in args.configs.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                name,
                "--data",
                str(data),
                "--model",
                model,
                "--tmp",
                str(tmp),
                "--memory",
                str(tmp / "memory"),
                "--inputs",
                str(args.inputs),
                "--G",
                str(args.G),
                "--steps",
                str(args.steps),
                "--scorer",
                args.scorer,
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ.copy())
            if res.returncode != 0:
                print(f"{name}: failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else '?'}")
                rows.append({"config": name, "error": res.stderr[-1000:]})
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(
        f"export of {args.inputs} wild inputs, G={args.G}, {args.steps} DDIM steps ({note}), "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'config':<10}{'groups/s':>10}{'elapsed s':>11}{'RSS parent MiB':>15}{'RSS worker MiB':>15}")
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<10}{'failed':>10}")
            continue
        print(
            f"{r['config']:<10}{r['groups_per_s']:>10.3f}{r['elapsed_s']:>11.1f}{r['peak_rss_parent_mb']:>15.0f}"
            f"{r['peak_rss_children_mb']:>15.0f}"
        )
    atomic_write_strict_json(
        args.out,
        {
            "benchmark": "alignment.export",
            "model": note,
            "inputs": args.inputs,
            "G": args.G,
            "steps": args.steps,
            "scorer": args.scorer,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "results": rows,
        },
    )
    print(f"wrote {args.out}")
    if any("error" in r for r in rows):  # recorded above, but a failed configuration is no benchmark: make says so
        sys.exit(1)


if __name__ == "__main__":
    main()
