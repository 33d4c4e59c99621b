"""Session 28 review: leftovers earlier sessions listed — a split's shard that is a link to a file outside the split,
an export take-over refused as "different settings" when the folder's groups had lost their arrays, benchmark results
written with NaN tokens, and bench_vlm's request size measured on the request's repr. Each test failed before its
fix."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest
from test_export import cfg_for, make_inputs, model_path  # noqa: F401  (fixture)
from test_review_s27_inputs import _split_folder

from hmrcritic.errors import AssetError, InputError

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

# ------------------------------------------------------------------------------------------- split shard links


def test_a_shard_that_is_a_link_to_a_file_outside_the_split_is_refused(tmp_path):
    """Session 27 confined the manifest's file *names* to the split's folder, but a link named inside the folder
    that points elsewhere was still read, hashed (its sha256 matched: the same bytes) and trained on as the split's
    own shard."""
    from hmrcritic.hmr.data import SceneSet, verify_split_files

    folder = tmp_path / "data" / "test"
    manifest = _split_folder(folder)
    outside = tmp_path / "elsewhere.npz"
    shutil.move(folder / "shard_000.npz", outside)
    (folder / "shard_000.npz").symlink_to(outside)
    pattern = (r"test/shard_000\.npz is a link to .*elsewhere\.npz, outside the split's folder.*regenerate the "
               r"split: hmrcritic data generate --split test --n 3 --seed 7")
    with pytest.raises(AssetError, match=pattern):
        verify_split_files(manifest, folder)
    with pytest.raises(AssetError, match=pattern):
        SceneSet(folder)[0]


def test_a_shard_linked_away_after_the_split_was_opened_is_refused_when_read(tmp_path):
    """The shards are read lazily: a link put in place after the set was opened is checked when it is read."""
    from hmrcritic.hmr.data import SceneSet

    folder = tmp_path / "test"
    _split_folder(folder)
    scenes = SceneSet(folder)
    outside = tmp_path / "elsewhere.npz"
    shutil.move(folder / "shard_000.npz", outside)
    os.symlink(outside, folder / "shard_000.npz")
    with pytest.raises(AssetError, match=r"shard_000\.npz is a link to .*elsewhere\.npz, outside"):
        scenes[0]


def test_a_split_reached_through_a_linked_folder_still_reads(tmp_path):
    """The check resolves the folder too: a split under a home (or data folder) that is itself a link to another
    drive reads as before, and so does a link inside the folder that stays in it."""
    from hmrcritic.hmr.data import SceneSet, verify_split_files

    real = tmp_path / "drive" / "test"
    manifest = _split_folder(real)
    (tmp_path / "home").symlink_to(tmp_path / "drive", target_is_directory=True)
    folder = tmp_path / "home" / "test"
    verify_split_files(manifest, folder)
    assert SceneSet(folder)[0].sample_id
    shutil.move(real / "shard_000.npz", real / "stored.npz")
    (real / "shard_000.npz").symlink_to("stored.npz")  # inside the folder: still the split's own file
    assert SceneSet(folder)[0].sample_id


# ---------------------------------------------------------------------------------------------- export take-over


def test_an_export_whose_group_arrays_are_gone_says_so_instead_of_different_settings(model_path, tmp_path):  # noqa: F811
    """A folder whose groups/ was deleted (to save space, by a cleanup) still holds its manifest's records; a re-run
    with other settings was refused as "holds an export with different num_generations", which reads as a folder
    in use by a healthy export and hides that its arrays are gone. The records are kept as they were."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export

    out = tmp_path / "ds"
    export(cfg_for(out, model_path, num_generations=3), inputs=make_inputs(2))
    shutil.rmtree(out / D.GROUPS)
    manifest = (out / D.MANIFEST).read_bytes()
    with pytest.raises(InputError, match=r"ds holds 2 groups of an export with different num_generations "
                                         r"\(num_generations: 3 there, 4 now\), and none of them has its arrays in "
                                         r".*groups.*restore them, or use another --out"):
        export(cfg_for(out, model_path, num_generations=4), inputs=make_inputs(2))
    assert (out / D.MANIFEST).read_bytes() == manifest
    assert D.read_header(out).num_generations == 3


def test_an_export_with_some_arrays_left_is_still_refused_as_different_settings(model_path, tmp_path):  # noqa: F811
    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export

    out = tmp_path / "ds"
    export(cfg_for(out, model_path, num_generations=3), inputs=make_inputs(2))
    rec = D.read_manifest(out)[0]
    (out / rec.hypotheses.path).unlink()
    with pytest.raises(InputError, match=r"ds holds an export with different num_generations \(num_generations: 3 "
                                         r"there, 4 now\); use another --out$"):
        export(cfg_for(out, model_path, num_generations=4), inputs=make_inputs(2))


# ------------------------------------------------------------------------------------------------- benchmarks


def test_every_benchmark_writes_its_results_as_strict_json():
    """The scripts wrote their figures with ``json.dumps``' defaults: a NaN (a Spearman ρ of tied scores, a variant
    that scored no group) became the bare word NaN, which jq, JavaScript and strict parsers refuse for the whole
    file. Each result goes through ``hmrcritic.io.finite_json`` (NaN → null) as ship_model's and reproduce's do —
    since session 31 through ``hmrcritic.io.atomic_write_strict_json``, which applies it (tests/test_review_s31_lead.py
    checks that writer)."""
    offenders, calls = [], 0
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(node.func, "id", None) if isinstance(node, ast.Call) else None
            if name == "atomic_write_strict_json":
                calls += 1
            elif name == "atomic_write_json":
                calls += 1
                obj = node.args[1] if len(node.args) > 1 else None
                if not (isinstance(obj, ast.Call) and getattr(obj.func, "id", None) == "finite_json"):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert calls >= 20 and offenders == []


def test_bench_vlm_request_size_is_the_json_body_sent(tmp_path):
    """``request_kb`` was ``len(str(body))``: Python's repr of the parsed request (spaces after every ``,`` and
    ``:``, ``True``/``None``), not the body the client sent. Measured against the bytes a local server received
    from the real openai client, with non-ASCII text in it (UTF-8 on the wire, not ``\\u`` escapes)."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import openai
    from conftest import load_benchmark

    bench = load_benchmark("bench_vlm")
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "{}"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="k", max_retries=0)
        image = "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 8).decode()
        client.chat.completions.create(model="stub-vlm", temperature=0, max_tokens=None, messages=[
            {"role": "system", "content": "Score each hypothesis 0–10: knees bend forward — not backward."},
            {"role": "user", "content": [{"type": "text", "text": "Hypothèses: «4»"},
                                         {"type": "image_url", "image_url": {"url": image, "detail": "high"}}]}])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    raw = received[0]
    body = json.loads(raw)
    assert bench.request_bytes(body) == len(raw)
    assert len(str(body).encode()) != len(raw)  # what was measured before


def test_an_export_from_a_split_whose_shard_was_replaced_is_refused(model_path, tmp_path):  # noqa: F811
    """train-base and `data info` check each shard against its manifest's sha256; export did not, so a shard replaced
    by another of the same size (another seed's scenes) was sampled and scored into the dataset as the split's."""
    import numpy as np

    from hmrcritic.alignment.export import export

    folder = tmp_path / "test"
    _split_folder(folder)
    with np.load(folder / "shard_000.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["keypoints"] = arrays["keypoints"] + 1.0  # same keys and rows: only the content differs
    np.savez(folder / "shard_000.npz", **arrays)
    with pytest.raises(AssetError, match=r"test/shard_000\.npz does not match its manifest .*regenerate the split"):
        export(cfg_for(tmp_path / "ds", model_path, split=None, data=str(folder)))
    assert not (tmp_path / "ds").exists()
