"""Benchmark the secret scrubber (hmrcritic.redact.scrub), which every error line, log line, kept trace record and
LangSmith upload goes through: µs per call for a short line, a 2.6 KB trace record and a ~60 KB text, with a
short key set (masked whole only) and with a long one (its 8-character pieces masked too, session 23).
Prints a table and writes benchmarks/results/scrub.json.

    python benchmarks/bench_scrub.py [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import string
import time
from pathlib import Path

from hmrcritic import redact
from hmrcritic.io import atomic_write_strict_json

RESULTS = Path(__file__).resolve().parent / "results" / "scrub.json"


def _best_us(fn, reps: int, inner: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="Timing repeats (the best is reported).")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.reps < 1:  # with none, nothing was timed: every figure read "inf µs" and the JSON held nulls
        ap.error("--reps must be ≥ 1 (the best of the repeats is reported)")
    for v in (*redact.SECRET_ENV_VARS, *redact.URL_ENV_VARS):
        os.environ.pop(v, None)
    rnd = random.Random(0)
    key = "sk-proj-" + "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(156))
    record = ('{"event": "node", "node": "critique", "changed": {"scores": ['
              + ", ".join(f'{{"index": {i}, "overall": 7.5, "rationale": "The pose of hypothesis {i} bends the '
                          'left knee beyond its limits; motion structure and image alignment acceptable."}'
                          for i in range(16)) + "]}}")
    texts = {"line": "error: VLM judge failed after 4 attempts: HTTP 500 Internal Server Error",
             "trace_record": record, "text_60k": record * (60000 // len(record))}
    rows = []
    for label, value in (("short key (whole only)", key[:15]), ("long key (pieces too)", key)):
        os.environ["OPENAI_API_KEY"] = value
        redact.scrub("warm the cache")
        row = {"key": label}
        for name, text in texts.items():
            row[f"{name}_us"] = round(_best_us(lambda t=text: redact.scrub(t), args.reps,
                                               max(1, 200_000 // len(text))), 1)
        rows.append(row)
    print(f"{'key':<24}" + "".join(f"{n + ' (' + str(len(t)) + ' ch)':>28}" for n, t in texts.items()))
    for row in rows:
        print(f"{row['key']:<24}" + "".join(f"{row[f'{n}_us']:>25.1f} µs" for n in texts))
    atomic_write_strict_json(args.out, {"rows": rows, "sizes": {n: len(t) for n, t in texts.items()},
                                        "python": platform.python_version(), "machine": platform.machine(),
                                        "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
