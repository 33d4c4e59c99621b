"""Long runs and big inputs: what grows with the number of groups, hypotheses, memory folders and prototypes.

- ``long_run``: ``critique_group`` on ``--groups`` groups (N = 16) in one process, rendering off and on:
  resident memory (VmRSS) after the first 10 groups and at the end, its slope per group, ms per group (all groups,
  and after the first 10; the pose prior is fitted before the clock starts); the
  runs folder's bytes per group (checkpoint SQLite, run folders, traces), the checkpoint file's growth per group
  after the first 10, and what ``prune_runs(0)`` leaves.
- ``big_group``: one group of N = ``--big`` hypotheses critiqued with rendering: ms per node, the two grid
  PNGs and the HTML report (MB), and the process's peak RSS after it.
- ``memory_folders``: a MemoryStore opened, queried and closed (or dropped) on ``--folders`` copies of a
  memory with ``--folder-prototypes`` prototypes: RSS, open files and threads per folder (each used to keep
  its Chroma system for the life of the process).
- ``checkpointers``: ``critique_group(checkpointer=InMemorySaver())`` per group: compiled graphs cached and
  RSS per group (each used to stay cached for ever, with its checkpoints).
- ``recall``: what the recall node asks the memory per group of 16 (rules Ψ, prototype count and query k=5,
  calibration, version) on a memory of ``--prototypes`` prototypes and ``--rules`` rules.

Everything runs in a temporary HMRCRITIC_HOME (synthetic data generated there on first use, ~1 min, unless
HMRCRITIC_DATA points at existing splits). Prints a table per part and writes benchmarks/results/bench_scale.json.

    python benchmarks/bench_scale.py [--groups 60] [--big 64 128] [--folders 12] [--prototypes 10000]
        [--parts long_run,big_group,memory_folders,checkpointers,recall]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results" / "bench_scale.json"
PARTS = ("long_run", "big_group", "memory_folders", "checkpointers", "recall")
# the variables a run keeps (the data, caches, body model, device); HMRCRITIC_HOME is set to a temporary one
KEEP_VARIABLES = ("HMRCRITIC_DATA", "HMRCRITIC_CACHE", "HMRCRITIC_BODY_MODEL", "HMRCRITIC_DEVICE", "HMRCRITIC_DEBUG",
                  "HMRCRITIC_SPLIT_SIZE_SCALE", "HMRCRITIC_MEMORY_LOCK_TIMEOUT")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _count(folder: str) -> int:
    try:
        return len(os.listdir(folder))
    except OSError:
        return -1


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def long_run(n_groups: int) -> list[dict]:
    from hmrcritic import config as hconfig
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.groups import make_groups
    from hmrcritic.agent.prior import get_pose_prior
    from hmrcritic.agent.runs import prune_runs, runs_usage
    from hmrcritic.agent.state import AgentConfig

    groups, _ = make_groups("test", 10, 16, seed=0, source="perturbed")
    # fitted (and on first use the train split generated: ~1 min in a fresh home) before the clock starts, as in
    # bench_agent: inside the first group it made the no-render row's ms/group 3,267 against 961 with rendering
    get_pose_prior()
    rows = []
    for render in (False, True):
        root = hconfig.runs_dir()
        prune_runs(0, root=root)
        cfg = AgentConfig(render=render, learn=False)
        tag = "render" if render else "plain"
        marks = {}
        t0, paused = time.perf_counter(), 0.0
        for i in range(n_groups):
            g = groups[i % len(groups)]
            critique_group(g.sample, g.hypotheses, config=cfg, group_id=f"{tag}-{i}")
            if i + 1 in (10, n_groups):
                # the clock stops for the mark itself: the collection and the walk of the runs folder after group 10
                # were inside the steady rate (ms_per_group_after_10) and the whole one, and are no critique's time
                p0 = time.perf_counter()
                gc.collect()
                marks[i + 1] = (rss_mb(), p0 - t0 - paused, runs_usage(root)["parts"]["checkpoints"]["bytes"])
                paused += time.perf_counter() - p0
        usage = runs_usage(root)["parts"]
        pruned = prune_runs(0, root=root)
        (a, ta, ca), (b, tb, cb) = marks[10], marks[n_groups]
        rows.append({
            "render": render, "groups": n_groups, "rss_mb_after_10": round(a, 1), "rss_mb_end": round(b, 1),
            "rss_kb_per_group_after_10": round(1024 * (b - a) / max(1, n_groups - 10), 1),
            "ms_per_group": round(1000 * tb / n_groups, 1),
            # the steady rate: the first groups also pay the graph's compile, Chroma's and the renderer's start-up
            "ms_per_group_after_10": round(1000 * (tb - ta) / max(1, n_groups - 10), 1),
            "disk_kb_per_group": {k: round(usage[k]["bytes"] / 1024 / n_groups, 1)
                                  for k in ("checkpoints", "groups", "traces")},
            # the checkpoint file's growth per group after the first 10 (the write-ahead log, ~4 MB, is in the
            # totals above and grows only until it is folded back)
            "checkpoint_kb_per_group_after_10": round((cb - ca) / 1024 / max(1, n_groups - 10), 1),
            "prune_bytes_before": pruned["bytes_before"], "prune_bytes_after": pruned["bytes_after"],
        })
    print(f"{'render':<8}{'groups':>7}{'RSS@10 MiB':>10}{'RSS end':>9}{'KB/group':>9}{'ms/group':>9}{'ms/g >10':>9}"
          f"{'ckpt KB/g':>10}{'growth':>8}{'run KB/g':>9}{'prune →':>10}")
    for r in rows:
        d = r["disk_kb_per_group"]
        print(f"{'on' if r['render'] else 'off':<8}{r['groups']:>7}{r['rss_mb_after_10']:>10.1f}{r['rss_mb_end']:>9.1f}"
              f"{r['rss_kb_per_group_after_10']:>9.1f}{r['ms_per_group']:>9.0f}{r['ms_per_group_after_10']:>9.0f}"
              f"{d['checkpoints']:>10.1f}"
              f"{r['checkpoint_kb_per_group_after_10']:>8.1f}{d['groups']:>9.1f}"
              f"{r['prune_bytes_after'] / 1024:>8.0f}KB")
    return rows


def big_group(sizes: list[int]) -> list[dict]:
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.groups import make_groups
    from hmrcritic.agent.report import render_html
    from hmrcritic.agent.state import AgentConfig

    rows = []
    for n in sizes:
        (g,), _ = make_groups("test", 1, n, seed=1, source="perturbed")
        nodes: dict[str, float] = {}

        def tick(node, update, seconds, nodes=nodes):
            nodes[node] = nodes.get(node, 0.0) + seconds

        t0 = time.perf_counter()
        res = critique_group(g.sample, g.hypotheses, config=AgentConfig(render=True, learn=False),
                             group_id=f"big-{n}", fresh=True, on_update=tick)
        total = time.perf_counter() - t0
        t1 = time.perf_counter()
        page = render_html(res)
        html_s = time.perf_counter() - t1
        pngs = {k: Path(p).stat().st_size for k, p in res.renders.items()}
        rows.append({"n": n, "seconds": round(total, 2), "node_ms": {k: round(1000 * v) for k, v in nodes.items()},
                     "png_mb": round(sum(pngs.values()) / 1e6, 2), "html_mb": round(len(page) / 1e6, 2),
                     "html_ms": round(1000 * html_s), "peak_rss_mb": round(peak_rss_mb(), 1)})
    print(f"{'N':>5}{'total s':>9}{'render ms':>10}{'recall ms':>10}{'PNG MB':>8}{'HTML MB':>8}{'HTML ms':>8}"
          f"{'peak RSS':>9}")
    for r in rows:
        print(f"{r['n']:>5}{r['seconds']:>9.2f}{r['node_ms'].get('render', 0):>10}{r['node_ms'].get('recall', 0):>10}"
              f"{r['png_mb']:>8.2f}{r['html_mb']:>8.2f}{r['html_ms']:>8}{r['peak_rss_mb']:>9.0f}")
    return rows


def _filled_memory(folder: Path, n_protos: int, n_rules: int = 0, seed: int = 0):
    from bench_memory import pose_like

    from hmrcritic.memory import MemoryStore, Prototype, Rule
    from hmrcritic.memory.starter_rules import TAG_VOCABULARY

    store = MemoryStore(folder)
    emb = pose_like(n_protos, seed=seed)
    store.prototypes.add([Prototype(proto_id=f"p{i:07d}", embedding=emb[i].tolist(), overall=5.0,
                                    motion_structure=5.0, physical_feasibility=5.0, image_alignment=5.0,
                                    source=f"bench/{i}") for i in range(n_protos)])
    if n_rules:
        rng = np.random.default_rng(seed)
        tags = list(TAG_VOCABULARY)
        rules = [Rule(rule_id=f"r{i:05d}", text=f"synthetic rule {i}", origin="mined", n_used=int(u),
                      n_success=int(rng.integers(0, u + 1)),
                      tags=list(rng.choice(tags, size=int(rng.integers(1, 4)), replace=False)))
                 for i, u in enumerate(rng.integers(0, 50, n_rules))]
        vecs = rng.normal(size=(n_rules, 384)).astype(np.float32)
        store.rules.add(rules, embeddings=vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    return store


def memory_folders(root: Path, n_folders: int, n_protos: int) -> dict:
    from bench_memory import pose_like

    from hmrcritic.memory import MemoryStore

    _filled_memory(root / "src", n_protos).close()
    gc.collect()
    q = pose_like(16, seed=7)
    marks = []
    for i in range(n_folders):
        dst = root / f"copy{i}"
        shutil.copytree(root / "src", dst, ignore=shutil.ignore_patterns(".write.*"))
        m = MemoryStore(dst, read_only=True)
        m.prototypes.query(q, k=5, include_embeddings=False)
        m.version()
        if i % 2:
            m.close()
        del m  # every other one only dropped, as frozen_copy's callers do
        gc.collect()
        if i in (0, n_folders - 1):
            marks.append((rss_mb(), _count("/proc/self/fd"), _count("/proc/self/task")))
    (r0, f0, t0), (r1, f1, t1) = marks
    k = max(1, n_folders - 1)
    row = {"folders": n_folders, "prototypes": n_protos, "rss_mb_per_folder": round((r1 - r0) / k, 2),
           "fds_per_folder": round((f1 - f0) / k, 2), "threads_per_folder": round((t1 - t0) / k, 2),
           "fds_end": f1, "threads_end": t1}
    print(f"memory folders: {n_folders} × {n_protos} prototypes: {row['rss_mb_per_folder']:+.2f} MiB, "
          f"{row['fds_per_folder']:+.2f} open files, {row['threads_per_folder']:+.2f} threads per folder")
    return row


def checkpointers(n_groups: int) -> dict:
    from langgraph.checkpoint.memory import InMemorySaver

    from hmrcritic.agent import graph
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.groups import make_groups
    from hmrcritic.agent.state import AgentConfig

    groups, _ = make_groups("test", 5, 16, seed=0, source="perturbed")
    cfg = AgentConfig(render=False, learn=False, use_memory=False)
    marks = []
    for i in range(n_groups):
        g = groups[i % len(groups)]
        critique_group(g.sample, g.hypotheses, config=cfg, group_id=f"saver-{i}", checkpointer=InMemorySaver())
        if i in (9, n_groups - 1):
            gc.collect()
            marks.append(rss_mb())
    row = {"groups": n_groups, "compiled_cached": len(graph._COMPILED),
           "rss_kb_per_group_after_10": round(1024 * (marks[1] - marks[0]) / max(1, n_groups - 10), 1)}
    print(f"checkpointer per critique: {row['compiled_cached']} compiled graphs cached after {n_groups} groups, "
          f"{row['rss_kb_per_group_after_10']:+.1f} KB RSS per group")
    return row


def recall(root: Path, n_protos: int, n_rules: int, n_groups: int = 40) -> dict:
    from bench_memory import pose_like

    from hmrcritic.memory.starter_rules import TAG_VOCABULARY

    t = time.perf_counter()
    store = _filled_memory(root / "recall", n_protos, n_rules, seed=3)
    build_s = time.perf_counter() - t
    store.refresh()  # a reader of the finished memory, as a critique process is
    rng = np.random.default_rng(0)
    tags = list(TAG_VOCABULARY)
    parts: dict[str, list[float]] = {"rules": [], "protos": [], "calibration": [], "version": []}
    for i in range(n_groups + 1):
        q = pose_like(16, seed=100 + i)
        tg = list(rng.choice(tags, size=3, replace=False))
        t = time.perf_counter()
        store.rules.scored(tg, ucb_c=1.0)
        t1 = time.perf_counter()
        if store.prototypes.count() > 0:
            store.prototypes.query(q, k=5, include_embeddings=False)
        t2 = time.perf_counter()
        store.calibration()
        t3 = time.perf_counter()
        store.version()
        t4 = time.perf_counter()
        if i:  # the first one loads the index
            for k, v in zip(parts, (t1 - t, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[k].append(v)
    ms = {k: round(1000 * float(np.median(v)), 2) for k, v in parts.items()}
    row = {"prototypes": n_protos, "rules": len(store.rules.all()), "build_s": round(build_s, 1),
           "median_ms": ms, "total_median_ms": round(sum(ms.values()), 2)}
    store.close()
    print(f"recall per group of 16 ({n_protos} prototypes, {row['rules']} rules): "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()) + f"; total {row['total_median_ms']:.2f} ms")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--groups", type=int, default=60)
    ap.add_argument("--big", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--folders", type=int, default=12)
    ap.add_argument("--folder-prototypes", type=int, default=5000)
    ap.add_argument("--prototypes", type=int, default=10_000)
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if unknown := sorted(set(parts) - set(PARTS)):
        ap.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if args.groups < 11:
        ap.error("--groups must be ≥ 11 (growth is measured after the first 10)")
    if "memory_folders" in parts and args.folders < 2:  # one folder gave "not enough values to unpack"
        ap.error("--folders must be ≥ 2 (growth is measured from the first folder to the last)")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    # the defaults, in the temporary home: the caller's HMRCRITIC_CHROMA_URL put long_run's memory on their shared
    # server, HMRCRITIC_JUDGE=vlm sent its groups to their endpoint, the other agent settings changed what was timed
    for var in [v for v in os.environ if v.startswith("HMRCRITIC_") and v not in KEEP_VARIABLES]:
        del os.environ[var]
    os.environ["HMRCRITIC_HOME"] = str(work / "home")
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    result: dict = {"benchmark": "scale", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                      "python": sys.version.split()[0]}}
    try:
        if "long_run" in parts:
            result["long_run"] = long_run(args.groups)
        if "big_group" in parts:
            result["big_group"] = big_group(args.big)
        if "memory_folders" in parts:
            result["memory_folders"] = memory_folders(work / "folders", args.folders, args.folder_prototypes)
        if "checkpointers" in parts:
            result["checkpointers"] = checkpointers(args.groups)
        if "recall" in parts:
            result["recall"] = recall(work / "recall", args.prototypes, args.rules)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from hmrcritic.io import atomic_write_strict_json

    atomic_write_strict_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
