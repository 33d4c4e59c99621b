"""Session 18 follow-ups of my own (the review helpers' tests are in the other test_review_s18_*.py files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmrcritic.errors import InputError
from hmrcritic.hmr.data import read_keypoints_json


def _coco_rows(conf: list[float]) -> list[list[float]]:
    """17 [x, y, c] rows of a standing person in a 640×480 image."""
    ys = np.linspace(80, 420, 17)
    return [[300.0 + 8 * (i % 3), float(ys[i]), float(c)] for i, c in enumerate(conf)]


def test_a_heatmap_peak_just_above_one_is_a_confidence_of_one(tmp_path):
    # detectors that take a heatmap's maximum as the score give 1.005; that file was refused as "outside [0, 1]"
    conf = [0.9] * 17
    conf[0], conf[5] = 1.005, 1.08
    f = tmp_path / "kp.json"
    f.write_text(json.dumps(_coco_rows(conf)))
    kp = read_keypoints_json(f, image_size=(640, 480))
    assert kp[0, 2] == 1.0 and kp[5, 2] == 1.0 and kp[1, 2] == pytest.approx(0.9)
    # also in a COCO detector result (scores in the visibility slot)
    f2 = tmp_path / "det.json"
    f2.write_text(json.dumps([{"image_id": 1, "keypoints": sum(_coco_rows(conf), []), "score": 0.9}]))
    assert read_keypoints_json(f2, image_size=(640, 480))[0, 2] == 1.0


@pytest.mark.parametrize("bad", [1.5, 3.0, -0.1])
def test_confidences_well_outside_zero_one_are_still_refused(tmp_path, bad):
    conf = [0.9] * 17
    conf[3] = bad
    f = tmp_path / "kp.json"
    f.write_text(json.dumps(_coco_rows(conf)))
    with pytest.raises(InputError, match="keypoint 3 .*outside"):
        read_keypoints_json(f, image_size=(640, 480))


def test_a_checkpoint_database_in_a_utf8_named_folder_locks_when_python_reads_names_as_ascii(tmp_path):
    """``LC_ALL=C PYTHONUTF8=0``: SQLite names its file in UTF-8 (``équipe``), which ``os`` cannot encode as ASCII;
    every critique in such a home failed at its thread lock. The lock file lands beside the database."""
    from test_review_s18_locale import run_in_ascii_locale

    folder = tmp_path / "équipe 中文"
    code = ("import os, sys\n"
            "from hmrcritic.agent.api import _saver_file\n"
            "from hmrcritic.agent.graph import open_checkpointer\n"
            "from hmrcritic.agent.runs import thread_lock\n"
            "os.makedirs(os.environ['DIR'], exist_ok=True)\n"
            "saver = open_checkpointer(os.path.join(os.environ['DIR'], 'checkpoints.sqlite'))\n"
            "with thread_lock(_saver_file(saver), 'g1') as held:\n"
            "    print(held, sys.getfilesystemencoding())\n")
    done = run_in_ascii_locale(code, DIR=str(folder))
    assert done.stdout.split() == ["True", "ascii"]
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".lock")) == ["checkpoints.sqlite.threads.lock"]


def test_a_python_api_sample_of_a_latin1_named_image_gets_a_text_id(tmp_path):
    """The CLI cleaned an image name that is not UTF-8 (``caf\\xe9.png`` from an old camera or zip), but
    ``sample_from_user`` — what the Python API and the export read — kept its lone surrogate, on which a critique
    died with "surrogates not allowed" once the id was hashed or written."""
    import os

    from PIL import Image

    from hmrcritic.hmr.data import sample_from_user

    image = tmp_path / os.fsdecode(b"caf\xe9.png")
    Image.new("RGB", (640, 480), (90, 120, 150)).save(image)
    kp = tmp_path / "kp.json"
    kp.write_text(json.dumps(_coco_rows([0.9] * 17)))
    sample = sample_from_user(image, kp)
    assert sample.sample_id == "caf\ufffd"
    sample.sample_id.encode("utf-8")  # no lone surrogate left
    assert sample.image_path == str(image)  # the file itself is still found by its real name


def test_the_first_use_data_progress_bar_keeps_off_stdout(capsys):
    """Generating a split on first use drew its bar on stdout (a blank line in a pipe, in a --json reply or in a
    library caller's output) while the notice beside it went to stderr."""
    from hmrcritic.hmr.data import _with_progress

    # off a terminal (as here) no bar at all since session 29: fn gets None, and neither stream a blank line
    assert _with_progress("generating", 3000, False, lambda advance: ((advance or (lambda k: None))(3000), 7)[1]) == 7
    got = capsys.readouterr()
    assert got.out == "" and got.err == ""


def test_loading_the_text_model_leaves_transformers_progress_bars_as_they_were():
    """The text model's load switched transformers' progress bars off for the whole host process."""
    from transformers.utils import logging as hf_logging

    from hmrcritic.memory import embeddings

    hf_logging.enable_progress_bar()
    embeddings._model = None  # a fresh load (as on a process's first memory search)
    assert embeddings.embed_text("a knee bent backwards").shape == (1, embeddings.TEXT_DIM)
    assert hf_logging.is_progress_bar_enabled()


def test_sampled_side_views_share_one_scale(tmp_path):
    """``sample_to_dir`` (``hmrcritic sample`` / demo) framed each ``side_XX.png`` to its own body, so files put
    side by side hid how the hypotheses differ in size; the grid already used one scale for the group. The side
    view turns about the vertical axis, so each silhouette's height in pixels is its body's height times one
    scale."""
    from types import SimpleNamespace

    import torch
    from PIL import Image
    from test_diffusion import _K, TINY

    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.diffusion import HMRDiffusion, sample_to_dir

    body = load_body_model()
    torch.manual_seed(0)
    model = HMRDiffusion(TINY).eval()  # untrained: bodies of very different heights
    kp = np.concatenate([np.random.default_rng(0).uniform(150, 450, (17, 2)), np.ones((17, 1))], 1)
    item = SimpleNamespace(keypoints=kp, K=_K(1)[0].numpy(), image_size=np.array([640.0, 480.0]), sample_id="s")
    sample_to_dir(model, item, tmp_path, num_generations=4, steps=2, render=True, body=body)
    z = np.load(tmp_path / "hypotheses.npz")
    verts = body(*(torch.as_tensor(z[k]) for k in ("global_orient", "body_pose", "betas", "transl"))).vertices
    heights_m = np.ptp(verts.numpy()[..., 1], axis=1)
    assert heights_m.max() > 1.5 * heights_m.min()  # the case that shows it
    px = []
    for i in range(4):
        grey = np.asarray(Image.open(tmp_path / f"side_{i:02d}.png").convert("L"))
        rows = np.flatnonzero((grey < 250).any(axis=1))
        px.append(rows.max() - rows.min() + 1)
    scale = np.asarray(px) / heights_m  # pixels per metre
    assert scale.max() < 1.05 * scale.min(), (px, heights_m)


def test_an_ascii_stdout_with_surrogateescape_prints_greek_letters(monkeypatch):
    """Under ``LC_ALL=C PYTHONUTF8=0`` stdout is ASCII with ``errors="surrogateescape"``, which the CLI took for a
    caller's own handler and left alone: ``memory rules`` died on its first ρ."""
    import io
    import sys

    from hmrcritic.cli import _tolerant_streams

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdout", out)
    _tolerant_streams()
    print("ρ 0.54 → ok", file=sys.stdout)
    out.flush()
    assert raw.getvalue() == b"\\u03c1 0.54 \\u2192 ok\n"


def test_training_leaves_the_callers_threads_and_random_state_alone(tmp_path):
    """``train_base`` set torch's thread count for good (finetune put it back) and both reseeded the caller's
    global RNG: a notebook's next ``torch.randn`` came from the recipe's seed."""
    import torch
    from test_finetune import _cfg as finetune_cfg
    from test_finetune import write_dataset
    from test_train_resume import _cfg as train_cfg
    from test_train_resume import _data

    from hmrcritic.alignment.finetune import finetune
    from hmrcritic.hmr.train import train_base

    before = torch.get_num_threads()
    threads = 3  # not the recipes' 1, whatever the suite runs with
    torch.set_num_threads(threads)
    torch.manual_seed(1234)
    torch.randn(3)
    expected = torch.randn(5)
    torch.manual_seed(1234)
    torch.randn(3)
    base = train_base(train_cfg(steps=4, threads=1), tmp_path / "base", data=_data())
    assert torch.get_num_threads() == threads
    data = write_dataset(tmp_path / "prefs")
    finetune(finetune_cfg(data, base, tmp_path / "ft.pt", steps=2, threads=1))
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.randn(5), expected)
    torch.set_num_threads(before)


def test_one_finetune_per_out_and_a_killed_writes_temp_files_are_removed(tmp_path):
    """Two finetunes with one --out interleaved their state and log; a kill during a state save left a model-sized
    ``.OUT.state.pt.*.tmp`` that nothing removed."""
    import torch
    from test_finetune import TINY, write_dataset
    from test_finetune import _cfg as finetune_cfg

    from hmrcritic.alignment.finetune import finetune
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.diffusion import HMRDiffusion, save_model
    from hmrcritic.io import exclusive_lock

    torch.manual_seed(0)
    base = tmp_path / "base.pt"
    save_model(HMRDiffusion(TINY), base)
    data = write_dataset(tmp_path / "prefs")
    out = tmp_path / "runs" / "ft [1].pt"  # glob characters in the name
    out.parent.mkdir()
    stale = out.parent / ".ft [1].pt.state.pt.abc123.tmp"
    stale.write_bytes(b"half a state")
    busy = pytest.raises(AssetError, match="in use by finetune")
    with exclusive_lock(out.parent / ".ft [1].pt.lock", "finetune"), busy:
        finetune(finetune_cfg(data, base, out, steps=2))
    assert stale.exists()  # a folder in use is not touched
    finetune(finetune_cfg(data, base, out, steps=2))
    assert out.exists() and not stale.exists() and not list(out.parent.glob("*.tmp"))


def test_an_interrupted_critique_ends_its_trace_and_lets_go_of_it(tmp_path, monkeypatch):
    """Ctrl-C in a critique (a stopped notebook cell) left its trace without an end and its file locked as
    "in use" for as long as the traceback was kept: ``runs prune`` would never remove it."""
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.trace import read_trace, trace_in_use
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    s, h, _ = make_group(3)

    def stop(node, update, seconds):
        if node == "recall":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        critique_group(s, h, memory=MemoryStore(path=tmp_path / "memory"), config=cfg(),
                       checkpointer=open_checkpointer(tmp_path / "ckpt.sqlite"), on_update=stop, keep=True)
    records = read_trace(last=True)
    assert records[-1]["event"] == "error" and records[-1]["error"].startswith("KeyboardInterrupt")
    assert not trace_in_use(next((tmp_path / "runs" / "traces").glob("*.jsonl")))


def test_langgraphs_own_stream_entries_are_not_traced_as_nodes(tmp_path, monkeypatch):
    """Resuming a killed critique, LangGraph replays saved writes with a ``__metadata__: {"cached": true}`` entry
    in the update stream; it was traced and handed to ``on_update`` as a node ("2. __metadata__ 3.7 ms")."""
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import compile_graph, open_checkpointer
    from hmrcritic.agent.trace import read_trace
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    app = compile_graph(saver)

    class Replaying:  # the compiled graph, with the entry LangGraph adds to a replayed update
        def __getattr__(self, name):
            return getattr(app, name)

        def stream(self, *args, **kwargs):
            for i, chunk in enumerate(app.stream(*args, **kwargs)):
                yield {"__metadata__": {"cached": True}, **chunk} if i == 1 else chunk

    seen = []
    s, h, _ = make_group(4)
    critique_group(s, h, memory=MemoryStore(path=tmp_path / "memory"), config=cfg(), checkpointer=saver,
                   graph=Replaying(), on_update=lambda node, update, seconds: seen.append(node), keep=True)
    traced = [r["node"] for r in read_trace(last=True) if r.get("event") == "node"]
    assert traced == seen and traced[:2] == ["render", "recall"] and not any(n.startswith("__") for n in traced)


def test_a_builtin_critique_finished_by_other_critic_code_is_made_again(tmp_path, monkeypatch):
    """A builtin critique finished by an older hmrcritic came back "finished earlier" with that version's scores
    (a review re-ran an old home: three hypotheses ranked otherwise), and one it left interrupted was continued by
    the new code. The builtin critic's code is part of a thread's settings now; the same code still reuses."""
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent import api
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    memory = MemoryStore(path=tmp_path / "memory")
    s, h, _ = make_group(5)

    def run():
        return api.critique_group(s, h, memory=memory, config=cfg(), checkpointer=saver, keep=True)

    assert not run().finished_earlier
    assert run().finished_earlier  # same code: reused
    monkeypatch.setattr(api, "_critic_code", lambda: "another version")
    assert not run().finished_earlier  # other critic code: critiqued again
