"""Security review (s17), second pass over untrusted inputs: an endpoint's error text on a terminal, a shared
dataset's manifest naming files outside its folder, and a checkpoint whose config alone sizes the network."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from hmrcritic import redact  # noqa: E402
from hmrcritic.errors import AssetError  # noqa: E402
from hmrcritic.hmr.diffusion import X_DIM  # noqa: E402

KEY = "sk-FAKE-s17-0f1e2d3c4b5a"


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    """Secrets registered by one test must not hide a leak from the next."""
    monkeypatch.setattr(redact, "_extra", set())


class _Hostile(BaseHTTPRequestHandler):
    """An endpoint whose 401 body quotes the request headers (the key among them) wrapped in terminal escape
    sequences: one that retitles the window, one that clears the screen, a bidi override."""

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        text = ("\x1b]0;pwned\x07\x1b[2J\x9b31m invalid key; you sent " + self.headers.get("Authorization", "")
                + " \u202egnirts desrever\u202c \x00\x08")
        body = json.dumps({"error": {"message": text, "type": "invalid_request_error"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET = _answer


def test_an_endpoints_error_text_reaches_the_terminal_without_escape_sequences(tmp_path, monkeypatch):
    """``VLMJudge._scrub`` took out the key and folded whitespace, but an error body's ESC/CSI sequences and
    bidi overrides went on verbatim into the JudgeError (the CLI's error line), ``doctor``'s endpoint check and
    the trace: a hostile or broken endpoint could retitle or clear the user's terminal, or reverse the text."""
    from PIL import Image
    from test_vlm_judge import make_ctx

    from hmrcritic.agent.vlm import VLMJudge
    from hmrcritic.config import JudgeSettings
    from hmrcritic.errors import JudgeError

    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    images = (str(tmp_path / "overlay.png"), str(tmp_path / "side.png"))
    for p in images:
        Image.new("RGB", (64, 48), (90, 90, 90)).save(p)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        judge = VLMJudge(JudgeSettings(base_url=f"http://127.0.0.1:{srv.server_port}/v1", model="m", timeout_s=5.0,
                                       max_retries=0), backoff_base_s=0.01, backoff_max_s=0.02)
        with pytest.raises(JudgeError) as info:
            judge.critique(make_ctx(images, group_id="s17"))
        checked = judge.check_endpoint()["error"]
    finally:
        srv.shutdown()
    for text in (str(info.value), checked):
        assert "invalid key" in text and "HTTP 401" in text  # the server's words are still shown
        assert KEY not in text
        bad = sorted({f"U+{ord(c):04X}" for c in text if not c.isprintable()})
        assert not bad, (bad, text)


def _dataset(root: Path, group_id: str = "g0"):
    """A one-group dataset written the way an export writes it; returns its manifest line as a dict."""
    from hmrcritic.agent.schema import HypothesisScore
    from hmrcritic.alignment import dataset as D

    n, d = 2, X_DIM
    D.write_header(root, D.DatasetHeader(source="test", model_hash="x", judge="builtin", num_generations=n,
                                         sample_steps=2, seed=0, x_dim=d))
    hyps = {"x0": np.zeros((n, d), np.float32), "global_orient": np.zeros((n, 3), np.float32),
            "body_pose": np.zeros((n, 69), np.float32), "betas": np.zeros((n, 10), np.float32),
            "transl": np.zeros((n, 3), np.float32)}
    cond = D.condition_arrays(np.ones((17, 3)), np.diag([500.0, 500.0, 1.0]), (512, 512))
    cref, href = D.write_group_arrays(root, group_id, cond, hyps)
    scores = [HypothesisScore(index=i, motion_structure=5 + i, physical_feasibility=5, image_alignment=5,
                              overall=5 + i, rationale="r") for i in range(n)]
    rec = D.build_record(group_id=group_id, input_id=group_id, source="test", condition=cref, hypotheses=href,
                         num_hypotheses=n, x_dim=d, scores=scores, judge="builtin", memory_version="m0",
                         model_hash="x", seed=0, group_seed=0)
    line = rec.to_line_dict()
    (root / D.MANIFEST).write_text(json.dumps(line) + "\n")
    return line


def test_a_manifest_naming_array_files_outside_the_dataset_folder_is_refused(tmp_path):
    """``ArrayRef.path`` ("relative to the dataset folder") took any string: a shared dataset's manifest naming
    ``../elsewhere/…npz`` or an absolute path had the reader, ``validate`` and the finetuner open that file
    (``root / "/abs"`` is ``/abs``), and validate called such a dataset ok."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.io import record_checksum

    elsewhere = tmp_path / "elsewhere"
    _dataset(elsewhere, "victim")  # array files outside the dataset below, with known checksums
    for name, prefix in (("climbs", "../elsewhere/groups/"), ("absolute", f"{elsewhere}/groups/")):
        root = tmp_path / name
        line = _dataset(root, "victim")
        for ref in ("condition", "hypotheses"):
            line[ref]["path"] = prefix + Path(line[ref]["path"]).name
        for f in (root / D.GROUPS).glob("*.npz"):
            f.unlink()  # only the outside copies exist now
        body = {k: v for k, v in line.items() if k != "checksum"}
        (root / D.MANIFEST).write_text(json.dumps({**body, "checksum": record_checksum(body)}) + "\n")
        assert D.read_manifest(root) == [], name
        with pytest.raises(AssetError, match="no complete groups"):
            D.GroupPreferenceDataset(root)
        report = D.validate_dataset(root)
        assert not report.ok and any("inside the dataset folder" in e for e in report.errors), report.errors
    # the writer's own paths still pass
    ok = tmp_path / "ok"
    _dataset(ok)
    assert [r.group_id for r in D.read_manifest(ok)] == ["g0"] and len(D.GroupPreferenceDataset(ok)) == 1


class _BuiltTheNetwork(BaseException):
    """Raised by the spy below; a BaseException so that load_model's ``except Exception`` cannot turn it into
    an AssetError (the test must see that the network was built, not how that failed)."""


def test_a_checkpoint_whose_config_asks_for_a_huge_network_is_refused_before_building_it(tmp_path, monkeypatch):
    """A small file (a config asking for d_model 8192 or 64 layers beside the weights of a tiny network) made
    load_model allocate and initialise the whole network the config describes (~35 G parameters for 8192 × 64)
    before it found the weights did not fit: swap or the OOM killer for ``hmrcritic sample --model
    untrusted.pt``. Now the layer count and then every name and shape are checked first, on the meta device."""
    from hmrcritic.hmr import diffusion as M

    tiny = M.HMRDiffusion(M.DiffusionConfig(d_model=32, layers=3, heads=2, T=50))
    real_init = M.HMRDiffusion.__init__

    def spy(self, config=None):
        if config is not None and config.d_model * config.layers >= 8192 * 3 and torch.empty(0).device.type != "meta":
            raise _BuiltTheNetwork(f"allocated the network of {config}")
        real_init(self, config)

    monkeypatch.setattr(M.HMRDiffusion, "__init__", spy)
    for name, config, match in (
            ("wide.pt", {"d_model": 8192, "layers": 3, "heads": 4, "T": 50},
             r"size mismatch: state_pos is \(25, 32\) in the file, \(25, 8192\) in the model; kp_pos"),
            ("deep.pt", {"d_model": 32, "layers": 1_000_000, "heads": 2, "T": 50},
             r"the config asks for 1000000 layers, the file holds weights for 3")):
        payload = {"format": M.CHECKPOINT_FORMAT, "version": M.CHECKPOINT_VERSION, "config": config,
                   "state_dict": tiny.state_dict(), "extra": {}}
        torch.save(payload, tmp_path / name)
        assert (tmp_path / name).stat().st_size < 1 << 20
        with pytest.raises(AssetError, match=rf"weights do not match the model: .*{name}.*{match}"):
            M.load_model(tmp_path / name)
    # a real checkpoint loads exactly as before
    p = M.save_model(tiny, tmp_path / "tiny.pt", extra={"n": 1})
    loaded = M.load_model(p)
    assert loaded.checkpoint_extra == {"n": 1} and all(
        torch.equal(v, loaded.state_dict()[k]) for k, v in tiny.state_dict().items())


def test_a_dataset_line_nested_too_deeply_is_reported_not_a_recursion_error(tmp_path):
    """``json.loads`` raises RecursionError (not JSONDecodeError) for a line of 100,000 nested brackets: in a
    shared dataset's manifest it stopped ``export validate`` with "error: RecursionError: …" (no file, no line),
    and the reader and the export's resume with a traceback; in any JSON-lines log (traces, failures.jsonl) it
    stopped ``read_jsonl``. Such a line is now unreadable like any torn one."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.io import read_jsonl

    root = tmp_path / "ds"
    _dataset(root)
    deep = "[" * 100_000 + "]" * 100_000 + "\n"
    with open(root / D.MANIFEST, "a") as fh:
        fh.write(deep)
    (root / D.FAILURES).write_text(deep)
    assert [r.group_id for r in D.read_manifest(root)] == ["g0"]
    assert len(D.GroupPreferenceDataset(root)) == 1
    report = D.validate_dataset(root)
    assert f"{D.MANIFEST}:2: not valid JSON" in report.errors and report.groups == 1
    assert read_jsonl(root / D.FAILURES) == []
    kept, dropped = D.repair_manifest(root)
    assert [r.group_id for r in kept] == ["g0"] and dropped == 1


def test_an_array_file_that_inflates_far_beyond_a_group_is_refused_before_it_is_read(tmp_path):
    """An .npz is a zip: a shared dataset's 300 kB ``groups/…hyps.npz`` of zeros inflated to 320 MB in memory
    before the key and shape checks ran (in the reader, ``validate`` and the export's resume); now its declared
    size is checked first."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.io import atomic_save_npz

    root = tmp_path / "ds"
    line = _dataset(root)
    bomb = root / line["hypotheses"]["path"]
    atomic_save_npz(bomb, x0=np.zeros((20_000, 4_000), np.float32))  # 320 MB of zeros
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(AssetError, match=r"would take 305 MiB uncompressed"):
        D.load_npz(bomb)
    with pytest.raises(AssetError, match="would take"):
        D.GroupPreferenceDataset(root)[0]
    assert any("would take" in e for e in D.validate_dataset(root).errors)
    assert D.load_npz(root / line["condition"]["path"]).keys() == set(D.COND_KEYS)  # a real file still loads


@pytest.mark.parametrize("name", ["exp#3", "a?b", "sp%20ace"])
def test_a_runs_folder_with_uri_characters_in_its_path_is_read_not_a_database_beside_it(tmp_path, name):
    """``_threads`` opened ``f"file:{db}?mode=ro"`` as a URI: a "#" or "?" in the runs folder's path ended the file
    name there (and "%20" was decoded), so SQLite opened — and created, read-write — another database outside
    the runs folder (``…/exp``), and ``runs stats`` / ``runs prune`` saw no checkpoint threads in the real one
    (prune then removed run folders and kept their threads)."""
    import sqlite3

    from hmrcritic.agent.runs import prune_runs, runs_usage

    root = tmp_path / name / "runs"
    (root / "groups").mkdir(parents=True)
    con = sqlite3.connect(root / "checkpoints.sqlite")
    con.execute("CREATE TABLE checkpoints (thread_id TEXT)")
    con.execute("CREATE TABLE writes (thread_id TEXT)")
    con.executemany("INSERT INTO checkpoints VALUES (?)", [("t1",), ("t2",)])
    con.commit()
    con.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert runs_usage(root)["parts"]["checkpoints"]["count"] == 2
    assert prune_runs(0, root=root, dry_run=True)["removed"]["checkpoints"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no stray database beside the folder


def test_a_hypotheses_file_that_inflates_far_beyond_a_group_is_refused_before_it_is_read(tmp_path):
    """``critique --hypotheses H.npz`` unpacked every member first: a small file of zeros took hundreds of MB."""
    from hmrcritic.agent import api
    from hmrcritic.errors import InputError

    path = tmp_path / "h.npz"
    zeros = np.zeros((4, 69), np.float32)
    np.savez_compressed(path, global_orient=zeros[:, :3], body_pose=zeros, betas=zeros[:, :10],
                        transl=zeros[:, :3], pad=np.zeros(80 << 20, np.uint8))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(InputError, match="MiB uncompressed"):
        api.load_hypotheses(path)
