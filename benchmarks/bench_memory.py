"""Benchmark the Chroma dual memory: prototype query latency at 10k/100k entries, rule retrieval at 1k rules.

Prototypes are pose-like: a template skeleton with random joint offsets, embedded with ``pose_embedding``,
inserted in one locked batch. Queries are single poses (k=5, the agent's per-hypothesis recall) and one
batch of 16 (a whole group). Rule retrieval is Ψ over 1k rules, cached (a frozen memory) and uncached
(first call after a write). Prints a table and writes benchmarks/results/memory.json.

    python benchmarks/bench_memory.py [--sizes 10000 100000] [--queries 200] [--rules 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from hmrcritic.io import atomic_write_strict_json
from hmrcritic.memory import MemoryStore, Prototype, Rule, pose_embedding
from hmrcritic.memory.starter_rules import TAG_VOCABULARY

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"


def _template() -> np.ndarray:
    return np.array([
        [0, 0, 0], [.06, -.09, 0], [-.06, -.09, 0], [0, .11, 0], [.1, -.47, 0], [-.1, -.47, 0], [0, .24, 0],
        [.09, -.88, -.04], [-.09, -.88, -.04], [0, .29, 0], [.12, -.94, .08], [-.12, -.94, .08], [0, .5, 0],
        [.07, .4, 0], [-.07, .4, 0], [0, .6, .05], [.18, .43, 0], [-.18, .43, 0], [.44, .43, 0],
        [-.44, .43, 0], [.7, .43, 0], [-.7, .43, 0], [.78, .43, 0], [-.78, .43, 0]])


def pose_like(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    joints = _template()[None] + rng.normal(scale=0.12, size=(n, 24, 3))
    return pose_embedding(joints)


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "mean_ms": round(float(a.mean()), 3), "n": len(xs)}


# below this many samples a p95 is (by linear interpolation) little more than the largest one: said so when printed
FEW_FOR_P95 = 20


def _samples_line(protos: list[dict], rules: dict) -> str:
    """How many timings each percentile of the tables is of (the JSON's ``n``): with the default 200 queries a
    16-pose "p95" is of 12 batches and write16's of 5 writes, which the table alone did not say. The counts do
    not depend on the memory's size (one line for every row)."""
    first = protos[0] if protos else {}
    counts = [(label, stats["n"]) for label, stats in (
        ("q1", first.get("query_single_k5")), ("q16", first.get("query_group16_k5")),
        ("write16", first.get("write_group16")), ("rules cached", rules["retrieve_cached_k8"]),
        ("rules uncached", rules["retrieve_uncached_k8"])) if stats is not None]
    few = [label for label, n in counts if n < FEW_FOR_P95]
    note = f"; a p95 of under {FEW_FOR_P95} samples is near the largest one: {', '.join(few)}" if few else ""
    return "samples per percentile: " + ", ".join(f"{label} {n}" for label, n in counts) + note


def bench_prototypes(root: Path, size: int, n_queries: int) -> dict:
    # chroma_url="": on disk in the temporary folder; HMRCRITIC_CHROMA_URL sent 100k synthetic prototypes (and 1k
    # synthetic rules) into the caller's shared server memory
    store = MemoryStore(root / f"protos-{size}", seed_starter=False, chroma_url="")
    emb = pose_like(size, seed=size)
    protos = [Prototype(proto_id=f"p{i:07d}", embedding=emb[i].tolist(), overall=5.0, motion_structure=5.0,
                        physical_feasibility=5.0, image_alignment=5.0, source=f"bench/{i}")
              for i in range(size)]
    t0 = time.perf_counter()
    store.prototypes.add(protos, progress=True)
    insert_s = time.perf_counter() - t0
    assert store.prototypes.count() == size
    store.refresh()  # measure a reader that opened the finished memory, as a scoring worker would
    queries = pose_like(n_queries, seed=size + 1)
    store.prototypes.query(queries[:1], k=5)  # warm-up (index load)
    single = []
    for q in queries:
        t = time.perf_counter()
        store.prototypes.query(q[None], k=5)
        single.append(time.perf_counter() - t)
    group = []
    for s in range(0, n_queries - 15, 16):
        t = time.perf_counter()
        store.prototypes.query(queries[s:s + 16], k=5)
        group.append(time.perf_counter() - t)
    # recall@1 of self-queries on a sample: the index returns the stored vector itself
    idx = np.random.default_rng(0).choice(size, 50, replace=False)
    hits = store.prototypes.query(emb[idx], k=1, include_embeddings=False)
    recall = float(np.mean([row[0][0].proto_id == f"p{i:07d}" for row, i in zip(hits, idx, strict=True)]))
    t = time.perf_counter()
    store.version()
    version_s = time.perf_counter() - t
    # one group's memory_write: 16 prototypes in one locked batch (includes reopening Chroma from disk)
    writes = []
    extra = pose_like(16 * 5, seed=size + 2)
    for w in range(5):
        batch = [Prototype(proto_id=f"w{w}-{i}", embedding=extra[16 * w + i].tolist(), overall=5.0,
                           motion_structure=5.0, physical_feasibility=5.0, image_alignment=5.0)
                 for i in range(16)]
        t = time.perf_counter()
        store.prototypes.add(batch)
        writes.append(time.perf_counter() - t)
    return {"entries": size, "insert_s": round(insert_s, 2), "insert_per_s": round(size / insert_s, 1),
            "query_single_k5": _pct(single), "query_group16_k5": _pct(group), "self_recall_at_1": recall,
            "version_s": round(version_s, 3), "write_group16": _pct(writes)}


def bench_rules(root: Path, n_rules: int, n_queries: int) -> dict:
    store = MemoryStore(root / "rules", seed_starter=False, chroma_url="")
    rng = np.random.default_rng(1)
    tags = list(TAG_VOCABULARY)
    rules = []
    for i in range(n_rules):
        used = int(rng.integers(0, 50))
        rules.append(Rule(rule_id=f"r{i:05d}", text=f"synthetic rule {i}", origin="mined", n_used=used,
                          n_success=int(rng.integers(0, used + 1)),
                          tags=list(rng.choice(tags, size=int(rng.integers(1, 4)), replace=False))))
    vecs = rng.normal(size=(n_rules, 384)).astype(np.float32)
    store.rules.add(rules, embeddings=vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    query_tags = [list(rng.choice(tags, size=3, replace=False)) for _ in range(n_queries)]
    cached = []
    store.rules.retrieve(query_tags[0], k=8)
    for qt in query_tags:
        t = time.perf_counter()
        store.rules.retrieve(qt, k=8)
        cached.append(time.perf_counter() - t)
    uncached = []
    for qt in query_tags[:50]:
        store.rules.invalidate()
        t = time.perf_counter()
        store.rules.retrieve(qt, k=8)
        uncached.append(time.perf_counter() - t)
    used = [r.rule_id for r in store.rules.retrieve(query_tags[0], k=8)]  # not part of record_use's time
    t = time.perf_counter()
    store.rules.record_use(used, success=True)
    record_s = time.perf_counter() - t
    return {"rules": n_rules, "retrieve_cached_k8": _pct(cached), "retrieve_uncached_k8": _pct(uncached),
            "record_use_8_rules_s": round(record_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.queries < 16:
        ap.error("--queries must be ≥ 16 (group queries take 16 poses at a time)")
    if min(args.sizes) < 50:
        ap.error("--sizes must each be ≥ 50 (self-recall is measured on 50 stored entries)")
    if args.rules < 1:
        ap.error("--rules must be ≥ 1 (retrieval from an empty rule memory measures nothing)")
    root = Path(tempfile.mkdtemp(prefix="hmrcritic-bench-memory-"))
    try:
        protos = [bench_prototypes(root, s, args.queries) for s in args.sizes]
        rules = bench_rules(root, args.rules, args.queries)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    import chromadb

    result = {"benchmark": "memory", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                 "chromadb": chromadb.__version__},
              "prototypes": protos, "rules": rules}
    print(f"{'prototypes':>10} {'insert/s':>9} {'q1 p50 ms':>10} {'q1 p95 ms':>10} {'q16 p50 ms':>11} "
          f"{'q16 p95 ms':>11} {'recall@1':>8} {'version s':>9} {'write16 ms':>10}")
    for p in protos:
        print(f"{p['entries']:>10} {p['insert_per_s']:>9.0f} {p['query_single_k5']['p50_ms']:>10.2f} "
              f"{p['query_single_k5']['p95_ms']:>10.2f} {p['query_group16_k5']['p50_ms']:>11.2f} "
              f"{p['query_group16_k5']['p95_ms']:>11.2f} {p['self_recall_at_1']:>8.2f} "
              f"{p['version_s']:>9.3f} {p['write_group16']['p50_ms']:>10.1f}")
    c, u = rules["retrieve_cached_k8"], rules["retrieve_uncached_k8"]
    print(f"rules={rules['rules']}: retrieve k=8 cached p50 {c['p50_ms']:.2f} ms p95 {c['p95_ms']:.2f} ms; "
          f"uncached p50 {u['p50_ms']:.2f} ms p95 {u['p95_ms']:.2f} ms; "
          f"record_use(8) {rules['record_use_8_rules_s']:.3f} s")
    print(_samples_line(protos, rules))
    atomic_write_strict_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
