"""Session 23 review (hmr): base-model training's run folder and data, and what ``evaluate`` says of its memory.

Each test failed before its fix; the docstring says what was wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_review_s22_hmrdata import TINY, _data  # the tiny model and data the training reviews share

from hmrcritic.errors import AssetError, InputError
from hmrcritic.hmr.train import TrainConfig, train_base


def test_train_base_restarts_after_a_kill_during_its_first_log_record(tmp_path):
    """A run killed while appending its first loss record leaves a log.jsonl of that one torn line (and no
    state.pt). Rerunning the same command refused its own folder: "log.jsonl is not a train-base loss log
    (another tool's file?)". The torn line begins as train-base's records do, so it is restarted; another tool's
    one-line file is still refused."""
    cfg = TrainConfig(steps=2, batch_size=4, log_every=1, ckpt_every=1, model=TINY)
    own = tmp_path / "own"
    own.mkdir()
    (own / "log.jsonl").write_text('{"step": 1, "loss": 0.41, "lr"')
    train_base(cfg, own, data=_data())
    records = [json.loads(line) for line in (own / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert (own / "model.pt").exists()

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "log.jsonl").write_text('{"epoch": 1, "val_acc"')
    with pytest.raises(InputError, match=r"log\.jsonl is not a train-base loss log"):
        train_base(cfg, theirs, data=_data())
    assert (theirs / "log.jsonl").read_text() == '{"epoch": 1, "val_acc"'


def test_training_on_a_truncated_shard_names_the_command_that_remakes_that_split(tmp_path, monkeypatch):
    """Training hashes its shards against the manifest, but only after reading them: a truncated shard failed to
    unpack first, with "regenerate the split (delete <folder>)", and train-base then made the default 20,000-scene
    split in its place, not the 6 scenes of this one. The shards are checked before they are read, so the message
    is the manifest check's, with the ``data generate`` command (its --n) that remakes this split."""
    from hmrcritic.hmr.data import generate_split
    from hmrcritic.hmr.train import load_train_data

    root = tmp_path / "data"
    monkeypatch.setenv("HMRCRITIC_DATA", str(root))
    folder = generate_split("train", root / "train", n=6, shard_size=3, quiet=True)
    assert load_train_data("train").source["n"] == 6
    shard = sorted(Path(folder).glob("shard_*.npz"))[0]
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AssetError) as err:
        load_train_data("train")
    msg = str(err.value)
    assert str(shard) in msg and "does not match its manifest" in msg, msg
    assert msg.endswith("hmrcritic data generate --split train --n 6"), msg
    assert "delete" not in msg


def test_evaluate_batch_size_help_says_which_sampling_holds_the_whole_batch(monkeypatch, body):
    """``evaluate --batch-size``'s help said memory does not depend on the batch ("the B·N hypotheses are evaluated
    512 at a time"), but with ``--eta`` > 0 (and ``--guidance``) the network still saw all B·N rows at once
    (hmr.evaluate.sample handed those to diffusion.sample), and the help said so. Session 24: those are chunked too
    (ddim_sample_x0's row_chunks); measured here, and the help says the hypotheses are sampled 512 at a time."""
    import typer.main

    from hmrcritic.cli import app
    from hmrcritic.hmr import evaluate as E
    from hmrcritic.hmr.diffusion import load_model
    from tests.conftest import upright_scenes

    model = load_model(None)
    monkeypatch.setattr(E, "_load_labelled", lambda split, limit: (upright_scenes(body, 4), 4))
    monkeypatch.setattr(E, "CHUNK_ROWS", 8)
    seen = []
    predict = model.predict_eps

    def spy(x, t, cond):
        seen.append(x.shape[0])
        return predict(x, t, cond)

    monkeypatch.setattr(model, "predict_eps", spy)
    kw = dict(num_generations=6, steps=2, batch_size=4, nn_baseline=False, body=body)
    for eta, guidance in ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5)):
        seen.clear()
        E.evaluate_model(model, eta=eta, guidance=guidance, **kw)
        assert 0 < max(seen) <= 8, (eta, guidance, seen)

    cmd = typer.main.get_command(app).commands["evaluate"]
    help_text = " ".join(next(p.help for p in cmd.params if p.name == "batch_size").split())
    assert "sampled and evaluated 512 at a time" in help_text and "except" not in help_text, help_text


def test_evaluate_on_a_damaged_custom_split_names_the_command_that_remakes_it(tmp_path, monkeypatch):
    """A wild split whose labels file holds fewer rows than its manifest was refused with "regenerate it
    (`hmrcritic data generate --split wild`)": that command makes the default-size split, not these 4 scenes
    (``data info`` and training name ``--n`` since session 22). The message now names this split's command."""
    import numpy as np

    from hmrcritic.hmr.data import generate_split
    from hmrcritic.hmr.diffusion import load_model
    from hmrcritic.hmr.evaluate import evaluate_model

    root = tmp_path / "data"
    monkeypatch.setenv("HMRCRITIC_DATA", str(root))
    folder = generate_split("wild", root / "wild", n=4, shard_size=2, quiet=True)
    labels = folder / "labels_eval.npz"
    with np.load(labels) as z:
        short = {k: z[k][:3] for k in z.files}
    np.savez(labels, **short)
    with pytest.raises(AssetError, match=r"labels_eval|damaged") as err:
        evaluate_model(load_model(None), split="wild", num_generations=2, steps=2, nn_baseline=False)
    # since session 29 evaluate checks the split's checksums first ("…; regenerate the split: <command>")
    assert str(err.value).rstrip("`)").endswith("hmrcritic data generate --split wild --n 4"), err.value
