"""Critique-agent throughput: groups per second (N = 16 hypotheses) with the builtin judge, with and
without rendering. Real graph, SQLite checkpointer and Chroma memory (starter rules) in a temporary folder.

    python benchmarks/bench_agent.py [--groups 8] [--num-generations 16] [--threads 2] [--out PATH]

Prints a table and writes benchmarks/results/agent.json (or ``--out PATH``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--num-generations", type=int, default=16)
    ap.add_argument("--split", default="test")
    ap.add_argument("--source", default="auto", help="auto | model | perturbed")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "agent.json"))
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                    help="torch threads (default: up to 2); on a shared machine 1 is steadier, as two threads "
                         "fighting other jobs for the cores made a group's evidence 3-10x slower")
    args = ap.parse_args(argv)
    if args.groups < 1:
        ap.error("--groups must be ≥ 1 (one more is drawn to warm the caches)")
    if args.threads < 1:
        ap.error("--threads must be ≥ 1")

    work = tempfile.mkdtemp(prefix="bench-agent-")
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # its checkpoints, memory and run folders


# the variables a run keeps: where the data and caches are, the body model, the device; the others are the agent's
# settings and the memory's place, which the figures (the defaults, a memory of its own) must not take from the caller
KEEP_VARIABLES = ("HMRCRITIC_HOME", "HMRCRITIC_DATA", "HMRCRITIC_CACHE", "HMRCRITIC_BODY_MODEL", "HMRCRITIC_DEVICE",
                  "HMRCRITIC_DEBUG", "HMRCRITIC_SPLIT_SIZE_SCALE", "HMRCRITIC_MEMORY_LOCK_TIMEOUT")


def _run(args, work: str) -> int:
    # with the caller's HMRCRITIC_CHROMA_URL the benchmark's starter memory was their shared server's memory (its
    # rules scored the groups), and HMRCRITIC_USE_MEMORY=0, another rules_k or reflections changed what was timed
    for var in [v for v in os.environ if v.startswith("HMRCRITIC_") and v not in KEEP_VARIABLES]:
        del os.environ[var]
    os.environ["HMRCRITIC_RUNS"] = str(Path(work) / "runs")  # keep the user's runs folder clean
    import torch

    torch.set_num_threads(args.threads)
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.groups import make_groups
    from hmrcritic.agent.prior import get_pose_prior
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.io import atomic_write_strict_json
    from hmrcritic.memory.store import MemoryStore

    get_pose_prior()  # fitted/cached once; not part of the per-group cost
    groups, source = make_groups(args.split, args.groups + 1, args.num_generations, seed=0, source=args.source)
    memory = MemoryStore(path=Path(work) / "memory", chroma_url="")  # on disk, whatever the environment says
    saver = open_checkpointer(Path(work) / "bench.sqlite")
    rows = []
    for render in (False, True):
        cfg = AgentConfig(judge="builtin", render=render, learn=False, memory_dir=str(Path(work) / "memory"))
        tag = "render" if render else "no-render"
        warm = groups[0]  # first group warms caches (body model, renderer context, Chroma)
        critique_group(warm.sample, warm.hypotheses, memory=memory, config=cfg, checkpointer=saver,
                       group_id=f"{tag}/warm", run_dir=Path(work) / tag / "warm")
        t0 = time.perf_counter()
        for g in groups[1:]:
            critique_group(g.sample, g.hypotheses, memory=memory, config=cfg, checkpointer=saver,
                           group_id=f"{tag}/{g.group_id}", run_dir=Path(work) / tag / g.group_id)
        dt = time.perf_counter() - t0
        rows.append({"render": render, "groups": len(groups) - 1, "seconds": dt,
                     "groups_per_s": (len(groups) - 1) / dt, "ms_per_group": 1000 * dt / (len(groups) - 1)})
    result = {"num_generations": args.num_generations, "judge": "builtin", "group_source": source,
              "rows": rows, "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
              "python": sys.version.split()[0]}
    print(f"critique agent, builtin judge, N = {args.num_generations}, {source} hypotheses")
    print(f"{'rendering':<12}{'groups':>8}{'groups/s':>10}{'ms/group':>10}")
    for r in rows:
        print(f"{'on' if r['render'] else 'off':<12}{r['groups']:>8}{r['groups_per_s']:>10.2f}"
              f"{r['ms_per_group']:>10.0f}")
    out = Path(args.out)
    atomic_write_strict_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
