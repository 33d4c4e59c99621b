"""VLM-path throughput: how many groups per second the VLM judge gets through an endpoint that takes
``--latency`` seconds per call, with the concurrency limit at 1 and at 8.

The endpoint is the local OpenAI-compatible stub (tests/openai_stub_server.py) on 127.0.0.1, so what is
measured is our side of the path — prompt building, base64 image parts, the real langchain-openai client,
HTTP, tolerant parsing and validation — plus the simulated model latency. The grids are synthetic PNGs of the
size the renderer produces for a group (tiles of ``--tile`` px, 4 per row), drawn with shapes so they
compress like renders rather than like noise.

    .venv/bin/python benchmarks/bench_vlm.py            # 16 groups x 16 hypotheses, 1 s per call
Writes benchmarks/results/vlm.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from openai_stub_server import StubOpenAIServer  # noqa: E402

from hmrcritic.agent.judges import JudgeContext  # noqa: E402
from hmrcritic.agent.vlm import VLMJudge  # noqa: E402
from hmrcritic.config import JudgeSettings  # noqa: E402
from hmrcritic.io import atomic_write_strict_json  # noqa: E402


def request_bytes(body: dict) -> int:
    """Bytes of the JSON body sent for a request the stub recorded (it keeps the body parsed). The openai client
    serialises compactly (no spaces, non-ASCII as UTF-8: ``openai._utils._json.openapi_dumps``, httpx's defaults),
    and dumping the parsed body the same way gives those bytes back; ``str(body)`` measured Python's repr of it
    (spaces after every ``,`` and ``:``, ``True``/``None``, other quoting), not what went over the wire."""
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode())


def synthetic_grid(path: Path, n: int, tile: int, rng: np.random.Generator) -> None:
    cols = 4
    rows = math.ceil(n / cols)
    img = Image.new("RGB", (cols * tile, rows * tile), (40, 44, 52))
    draw = ImageDraw.Draw(img)
    for i in range(n):
        x0, y0 = (i % cols) * tile, (i // cols) * tile
        for _ in range(12):
            cx, cy = rng.uniform(0.2, 0.8, 2) * tile
            rx, ry = rng.uniform(0.03, 0.15, 2) * tile
            colour = tuple(int(c) for c in rng.integers(60, 255, 3))
            draw.ellipse([x0 + cx - rx, y0 + cy - ry, x0 + cx + rx, y0 + cy + ry], fill=colour)
        draw.text((x0 + 4, y0 + 4), str(i), fill=(255, 255, 255))
    img.save(path)


def make_contexts(folder: Path, groups: int, n: int, tile: int, seed: int = 0) -> list[JudgeContext]:
    rng = np.random.default_rng(seed)
    ctxs = []
    for g in range(groups):
        overlay, side = folder / f"g{g}_overlay.png", folder / f"g{g}_side.png"
        synthetic_grid(overlay, n, tile, rng)
        synthetic_grid(side, n, tile, rng)
        evidence = {
            "reproj_px": rng.gamma(2.0, 6.0, n).tolist(),
            "joint_limit_deg": (rng.random(n) * 30 * (rng.random(n) < 0.3)).tolist(),
            "penetration_mm": (rng.random(n) * 40 * (rng.random(n) < 0.2)).tolist(),
            "consensus_dev_mm": rng.gamma(2.0, 20.0, n).tolist(),
        }
        info = {k: "measured; higher is worse" for k in evidence}
        ctxs.append(
            JudgeContext(
                group_id=f"bench/{g:04d}",
                num_hypotheses=n,
                evidence=evidence,
                measure_info=info,
                overlay_grid_path=str(overlay),
                side_grid_path=str(side),
            )
        )
    return ctxs


def run(groups: int, hypotheses: int, latency: float, concurrencies: list[int], tile: int) -> dict:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-vlm-") as tmp:
        ctxs = make_contexts(Path(tmp), groups, hypotheses, tile)
        image_kb = sum(
            Path(p).stat().st_size for c in ctxs[:1] for p in (c.overlay_grid_path, c.side_grid_path)
        )
        for conc in concurrencies:
            with StubOpenAIServer(latency_s=latency) as srv:
                settings = JudgeSettings(
                    base_url=srv.base_url,
                    model="stub-vlm",
                    timeout_s=60.0,
                    max_retries=2,
                    max_concurrency=conc,
                    # the grids as rendered, whatever the caller's HMRCRITIC_VLM_IMAGE_MAX_SIDE / _IMAGE_DETAIL /
                    # _MAX_TOKENS say: with them the requests (and images_kb_per_group, read from the files) were
                    # not the ones timed
                    max_tokens=None,
                    image_max_side=None,
                    image_detail=None,
                )
                judge = VLMJudge(settings)
                t0 = time.perf_counter()
                out = judge.critique_many(ctxs)
                wall = time.perf_counter() - t0
                assert srv.violations == [], srv.violations
                assert all(len(c.scores) == hypotheses for c in out)
                ideal = latency * math.ceil(groups / conc)
                req_bytes = request_bytes(srv.requests[0].body)
                results.append(
                    {
                        "concurrency": conc,
                        "groups": groups,
                        "wall_s": round(wall, 3),
                        "groups_per_s": round(groups / wall, 3),
                        "ideal_wall_s": ideal,
                        "overhead_s_per_wave": round((wall - ideal) / math.ceil(groups / conc), 4),
                        "max_in_flight": srv.max_in_flight,
                        "requests": len(srv.requests),
                        "request_kb": round(req_bytes / 1024, 1),
                    }
                )
    base = results[0]["wall_s"]
    for r in results:
        r["speedup_vs_first"] = round(base / r["wall_s"], 2)
    return {
        "benchmark": "vlm",
        "description": "VLMJudge.critique_many vs the local OpenAI-compatible stub, fixed latency per call",
        "settings": {
            "groups": groups,
            "hypotheses": hypotheses,
            "latency_s": latency,
            "tile_px": tile,
            "images_kb_per_group": round(image_kb / 1024, 1),
        },
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "results": results,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--hypotheses", type=int, default=16)
    ap.add_argument("--latency", type=float, default=1.0, help="seconds the stub takes per call")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--tile", type=int, default=192, help="px per hypothesis tile in the synthetic grids")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vlm.json")
    args = ap.parse_args(argv)
    if args.groups < 1 or args.hypotheses < 1:  # 0 groups: an IndexError on the first request, 0 waves next
        ap.error("--groups and --hypotheses must be ≥ 1")
    if min(args.concurrency) < 1:
        ap.error("--concurrency values must each be ≥ 1")
    report = run(args.groups, args.hypotheses, args.latency, args.concurrency, args.tile)
    print(
        f"VLM judge: {args.groups} groups x {args.hypotheses} hypotheses, {args.latency:g} s per call, "
        f"{report['settings']['images_kb_per_group']} kB of PNG per group"
    )
    print(
        f"{'concurrency':>11} {'wall s':>8} {'groups/s':>9} {'ideal s':>8} {'overhead s/wave':>16} "
        f"{'max in flight':>14} {'speedup':>8}"
    )
    for r in report["results"]:
        print(
            f"{r['concurrency']:>11} {r['wall_s']:>8.2f} {r['groups_per_s']:>9.2f} {r['ideal_wall_s']:>8.1f} "
            f"{r['overhead_s_per_wave']:>16.3f} {r['max_in_flight']:>14} {r['speedup_vs_first']:>8.2f}"
        )
    atomic_write_strict_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
