"""How large the VLM judge's requests are: what a local server's context and a hosted API's bill must hold.

For each group size N, ``hmrcritic critique --scene test:0 -n N --judge vlm`` runs (real rendering, recall,
evidence, the revise loop) against the local OpenAI-compatible stub (tests/openai_stub_server.py) on 127.0.0.1,
which records every request. Per call (the critique, then each revise round the reflect node asks for) it
reports the characters of the system and user text, an estimate of their tokens (characters / 4), the images
(pixels, bytes) and an estimate of their tokens at one token per 28 × 28 pixels (Qwen2-VL-style patches; OpenAI
and others count differently), and the JSON body's size.

    .venv/bin/python benchmarks/bench_vlm_request.py              # N = 4, 16, 64
    .venv/bin/python benchmarks/bench_vlm_request.py --sizes 16 --out /tmp/vlm_request_16.json  # one size
Writes benchmarks/results/vlm_request.json. Uses a temporary home (first use generates the test split) and the
default settings: the environment's ``HMRCRITIC_*`` variables are not passed on.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_vlm import request_bytes  # noqa: E402
from openai_stub_server import StubOpenAIServer  # noqa: E402

from hmrcritic.io import atomic_write_strict_json  # noqa: E402

PATCH = 28  # px per image-token side (Qwen2-VL-style estimate)


def describe(request) -> dict:
    """Sizes of one recorded chat request."""
    messages = request.body["messages"]
    system = messages[0]["content"] if isinstance(messages[0]["content"], str) else ""
    parts = messages[-1]["content"]
    text = "\n".join(p["text"] for p in parts if p.get("type") == "text")
    images = []
    for p in parts:
        if p.get("type") == "image_url":
            raw = base64.b64decode(p["image_url"]["url"].split(",", 1)[1])
            w, h = Image.open(io.BytesIO(raw)).size
            images.append({"width": w, "height": h, "bytes": len(raw),
                           "tokens_est": -(-w // PATCH) * -(-h // PATCH)})
    text_chars = len(system) + len(text)
    return {"kind": request.kind, "text_chars": text_chars, "text_tokens_est": text_chars // 4,
            "images": images, "image_tokens_est": sum(i["tokens_est"] for i in images),
            "body_bytes": request_bytes(request.body)}


def measure(n: int, home: Path) -> list[dict]:
    with StubOpenAIServer() as server:
        # the defaults' request, in the temporary home alone: the user's HMRCRITIC_* settings changed what was sent
        # (HMRCRITIC_RENDER=0: no images; rules_k, revise rounds, image size) and where it went — with
        # HMRCRITIC_MEMORY and HMRCRITIC_LEARN=1 the stub's made-up scores were written into the user's memory
        env = {k: v for k, v in os.environ.items() if not k.startswith("HMRCRITIC_")}
        env.update({"HMRCRITIC_HOME": str(home), "HMRCRITIC_BASE_URL": server.base_url,
                    "HMRCRITIC_VLM_MODEL": "stub-vlm"})
        args = [sys.executable, "-m", "hmrcritic", "critique", "--scene", "test:0", "-n", str(n), "--judge", "vlm",
                "--fresh", "--no-learn", "--render", "--out", str(home / f"critique_{n}")]
        res = subprocess.run(args, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"critique -n {n} failed: {res.stderr.strip()[-400:]}")
        return [describe(r) for r in server.requests]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4,16,64", help="Group sizes N, comma-separated.")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vlm_request.json"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="hmrcritic-vlm-request-") as tmp:
        for n in sizes:
            calls = measure(n, Path(tmp))
            rows[str(n)] = calls
            for k, c in enumerate(calls):
                dims = ", ".join(f"{i['width']}×{i['height']}" for i in c["images"])
                what = c["kind"] if c["kind"] != "critique" else ("critique" if k == 0 else f"revise {k}")
                print(f"N = {n:3d} {what:<9} text {c['text_chars']:6d} chars (≈ {c['text_tokens_est']:5d} "
                      f"tokens)  images [{dims}] ≈ {c['image_tokens_est']:5d} tokens  body "
                      f"{c['body_bytes'] / 1e6:.2f} MB")
    atomic_write_strict_json(Path(args.out), {"command": "python benchmarks/bench_vlm_request.py --sizes "
                                              + ",".join(map(str, sizes)), "patch_px": PATCH,
                                              "python": platform.python_version(), "calls": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
