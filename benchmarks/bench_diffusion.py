"""Speed of the diffusion HMR model: hypotheses/s when sampling groups, and training steps/s.

Sampling: N = 16 and 100 hypotheses for a batch of inputs at 3, 10 and 50 DDIM steps (one batched pass
per step, including the translation solve and its body-model call). Training: optimiser steps/s at the
recipe's batch size.
Uses the shipped base model when present (else a freshly initialised one of the same architecture: the
speed does not depend on the weights). Writes benchmarks/results/diffusion.json (or ``--out PATH``).

    python benchmarks/bench_diffusion.py [--device cuda] [--threads 1] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from hmrcritic.hmr.diffusion import (
    DEFAULT_CHECKPOINT,
    HMRDiffusion,
    condition_from_keypoints,
    load_model,
    sample,
)
from hmrcritic.hmr.train import TrainConfig
from hmrcritic.io import atomic_write_strict_json

RESULTS = Path(__file__).resolve().parent / "results" / "diffusion.json"


def _inputs(B: int, device: str):
    g = torch.Generator().manual_seed(0)
    uv = torch.rand(B, 17, 2, generator=g) * torch.tensor([200.0, 380.0]) + torch.tensor([220.0, 50.0])
    conf = (torch.rand(B, 17, generator=g) > 0.15).float()
    K = torch.tensor([[800.0, 0, 320], [0, 800, 240], [0, 0, 1]]).expand(B, 3, 3)
    return condition_from_keypoints(torch.cat([uv, conf[..., None]], -1), K, (640, 480)).to(device)


def _timeit(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_sampling(model, cond, B: int, body, Ns, steps_list, repeat: int, dev: str) -> list[dict]:
    """One row per (N, DDIM steps): the best of ``repeat`` timed ``sample`` calls for the B inputs of ``cond``."""
    rows = []
    for N in Ns:
        # an untimed pass at this N first: the first call at a new batch size (B·N rows) allocates, and was ~20 %
        # slower than the next ones, which is what the first row of each N used to report (--repeat 1)
        sample(model, cond, num_generations=N, steps=1, body=body)
        for steps in steps_list:

            def run(N=N, steps=steps):
                sample(
                    model,
                    cond,
                    num_generations=N,
                    steps=steps,
                    body=body,
                    generator=torch.Generator(device=dev).manual_seed(0),
                )

            s = _timeit(run, repeat)
            rows.append(
                {
                    "N": N,
                    "B": B,
                    "ddim_steps": steps,
                    "seconds": round(s, 4),
                    "hypotheses_per_s": round(B * N / s, 1),
                }
            )
            print(
                f"N={N:4d} B={B} DDIM steps={steps:3d} {rows[-1]['hypotheses_per_s']:10.1f} hyp/s "
                f"({s * 1000:.0f} ms per group batch, incl. translation solve)",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--inputs", type=int, default=1, help="inputs per batch (B); B·N rows per network call")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer settings (smoke run)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON to write (default: results/diffusion.json; diffusion_quick.json with --quick)")
    args = ap.parse_args()
    if min(args.repeat, args.inputs, args.threads) < 1:  # --repeat 0 timed nothing and reported 0.0 hyp/s
        ap.error("--repeat, --inputs and --threads must each be ≥ 1")
    torch.set_num_threads(args.threads)
    dev = args.device
    if DEFAULT_CHECKPOINT.exists():
        model, source = load_model(device=dev), str(DEFAULT_CHECKPOINT.name)
    else:
        model, source = HMRDiffusion(TrainConfig().model).to(dev).eval(), "untrained (no shipped checkpoint)"
    from hmrcritic.hmr.body import load_body_model

    body = load_body_model(device=dev)
    cond = _inputs(args.inputs, dev)
    Ns = [16] if args.quick else [16, 100]
    steps_list = [3, 10] if args.quick else [3, 10, 50]
    rows = bench_sampling(model, cond, args.inputs, body, Ns, steps_list, args.repeat, dev)

    cfg = TrainConfig()
    train_model = HMRDiffusion(cfg.model).to(dev).train()
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-4)
    tc = _inputs(cfg.batch_size, dev)
    x0 = torch.randn(cfg.batch_size, HMRDiffusion.X_DIM, device=dev)

    def step():
        loss = train_model.loss(x0, tc).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    n_steps = 3 if args.quick else 10
    t = _timeit(lambda: [step() for _ in range(n_steps)], 1) / n_steps
    train = {
        "batch_size": cfg.batch_size,
        "steps_per_s": round(1 / t, 2),
        "samples_per_s": round(cfg.batch_size / t, 1),
    }
    print(
        f"training: {train['steps_per_s']} steps/s at batch {cfg.batch_size} "
        f"({train['samples_per_s']} samples/s)"
    )

    out = {
        "device": dev,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "model": source,
        "params": train_model.num_parameters(),
        "config": model.config.__dict__,
        "sampling": rows,
        "training": train,
        "note": "best of --repeat runs; wall time on a possibly shared machine (see load_avg)",
        "load_avg": list(os.getloadavg()),
    }
    # a --quick smoke run never replaces the figures README cites
    path = args.out or (RESULTS.with_name("diffusion_quick.json") if args.quick else RESULTS)
    atomic_write_strict_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
