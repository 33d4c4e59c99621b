"""Speed and memory of the finetuner: optimiser steps/s and peak memory, G = 20 hypotheses per group, batch
of 8 groups, on CPU, for each objective (gpa with its base-loss regulariser, gpa_linear, dpo, sft).

Each objective runs in a fresh subprocess so its peak resident memory (``resource.getrusage`` ru_maxrss)
is its own; ``tracemalloc`` adds the peak of Python-level allocations (torch tensors are not traced by it),
traced over the warm-up run only (loading, data, first steps): tracing every allocation slows the steps
(sft by a third), so the timed steps run without it.
The preference data is written with the dataset module's own writer (random hypotheses and scores — the
speed does not depend on their values), the model is the shipped base model when present (else a freshly
initialised one of the same architecture). Writes benchmarks/results/alignment.json (or ``--out PATH``).

    python benchmarks/bench_alignment.py [--steps 10] [--threads 2] [--device cpu] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from hmrcritic.io import atomic_write_strict_json

RESULTS = Path(__file__).resolve().parent / "results" / "alignment.json"
OBJECTIVES = ("gpa", "gpa_linear", "dpo", "sft")


def write_data(root: Path, groups: int, n: int) -> None:
    from hmrcritic.agent.schema import HypothesisScore
    from hmrcritic.alignment import dataset as D
    from hmrcritic.hmr.diffusion import X_DIM
    from hmrcritic.io import append_jsonl

    rng = np.random.default_rng(0)
    D.write_header(
        root,
        D.DatasetHeader(
            source="bench",
            model_hash="bench",
            judge="builtin",
            num_generations=n,
            sample_steps=10,
            seed=0,
            x_dim=X_DIM,
        ),
    )
    for g in range(groups):
        kp = np.concatenate([rng.uniform(150, 350, (17, 2)), np.ones((17, 1))], 1)
        cond = D.condition_arrays(kp, [[500, 0, 256], [0, 500, 256], [0, 0, 1]], (512, 512))
        x0 = rng.normal(size=(n, X_DIM)).astype(np.float32)
        hyps = {
            "x0": x0,
            "global_orient": np.zeros((n, 3), np.float32),
            "body_pose": np.zeros((n, 69), np.float32),
            "betas": x0[:, -10:].copy(),
            "transl": np.zeros((n, 3), np.float32),
        }
        cref, href = D.write_group_arrays(root, f"g{g}", cond, hyps)
        s = rng.uniform(0, 10, n).round(1)
        scores = [
            HypothesisScore(
                index=i,
                motion_structure=v,
                physical_feasibility=v,
                image_alignment=v,
                overall=v,
                rationale="bench",
            )
            for i, v in enumerate(s.tolist())
        ]
        rec = D.build_record(
            group_id=f"g{g}",
            input_id=f"g{g}",
            source="bench",
            condition=cref,
            hypotheses=href,
            num_hypotheses=n,
            x_dim=X_DIM,
            scores=scores,
            judge="builtin",
            memory_version="none",
            model_hash="bench",
            seed=0,
            group_seed=g,
        )
        append_jsonl(root / D.MANIFEST, {k: v for k, v in rec.to_line_dict().items() if k != "checksum"})


def base_model_path(tmp: Path) -> tuple[str, str]:
    from hmrcritic.hmr.diffusion import DEFAULT_CHECKPOINT, HMRDiffusion, save_model

    if DEFAULT_CHECKPOINT.exists():
        return str(DEFAULT_CHECKPOINT), "shipped base model"
    path = tmp / "fresh.pt"
    save_model(HMRDiffusion(), path)
    return str(path), "freshly initialised base architecture"


def run_one(args) -> dict:
    """One objective in this process: warm-up steps, then timed steps; prints a JSON line."""
    import torch

    from hmrcritic.alignment.finetune import FinetuneConfig, finetune

    torch.set_num_threads(args.threads)
    out = Path(args.tmp) / f"{args.one}.pt"
    common = dict(
        data=args.data,
        model=args.model,
        objective=args.one,
        num_generations=args.G,
        batch_size=args.batch,
        checkpoint_every=10_000,
        device=args.device,
        resume=True,
    )
    tracemalloc.start()
    finetune(FinetuneConfig(out=str(out), steps=args.warmup, **common))
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()  # off for the timed steps: tracing every allocation slowed sft to 2/3 of its speed
    t0 = time.perf_counter()
    finetune(FinetuneConfig(out=str(out), steps=args.warmup + args.steps, **common))
    elapsed = time.perf_counter() - t0
    logs = [json.loads(x) for x in Path(str(out) + ".log.jsonl").read_text().splitlines()][args.warmup :]
    step_rate = float(np.median([r["steps_per_s"] for r in logs]))
    rec = {
        "objective": args.one,
        "G": args.G,
        "batch_groups": args.batch,
        "steps": args.steps,
        "steps_per_s": step_rate,
        "steps_per_s_incl_setup": args.steps / elapsed,
        "hypotheses_per_s": step_rate * args.G * args.batch,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_python_alloc_mb": py_peak / 2**20,
    }
    if args.device.startswith("cuda"):
        rec["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(rec))
    return rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--G", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--objectives", default=",".join(OBJECTIVES))
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="JSON path (default results/alignment.json, the figures README cites: a smoke run goes "
                         "elsewhere)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        run_one(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-alignment-") as tmp:
        tmp = Path(tmp)
        write_data(tmp / "data", args.groups, args.G)
        model, model_note = base_model_path(tmp)
        rows = []
        for obj in args.objectives.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                obj,
                "--data",
                str(tmp / "data"),
                "--model",
                model,
                "--tmp",
                str(tmp),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--G",
                str(args.G),
                "--batch",
                str(args.batch),
                "--threads",
                str(args.threads),
                "--device",
                args.device,
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise SystemExit(f"{obj} failed:\n{res.stderr[-2000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    import torch

    print(
        f"finetune on {args.device}, G={args.G}, batch {args.batch} groups, {args.threads} threads "
        f"({model_note})"
    )
    print(f"{'objective':<12}{'steps/s':>10}{'hyp/s':>10}{'peak RSS MiB':>14}{'py peak MiB':>12}")
    for r in rows:
        print(
            f"{r['objective']:<12}{r['steps_per_s']:>10.2f}{r['hypotheses_per_s']:>10.0f}"
            f"{r['peak_rss_mb']:>14.0f}{r['peak_python_alloc_mb']:>12.1f}"
        )
    atomic_write_strict_json(
        args.out,
        {
            "benchmark": "alignment.finetune",
            "model": model_note,
            "device": args.device,
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "results": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
