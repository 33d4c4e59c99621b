"""Review s22 (hmrdata): the synthetic splits (``data generate|info``, the split reader), base-model training's
run folder and data, and ``body convert``.

Each test failed before its fix; the docstring says what was wrong."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from hmrcritic.cli import main
from hmrcritic.errors import AssetError, InputError
from hmrcritic.hmr.diffusion import DiffusionConfig
from hmrcritic.hmr.train import TrainConfig, train_base

TESTS = Path(__file__).resolve().parent
TINY = DiffusionConfig(d_model=32, layers=1, heads=2)


def _data(n=8, seed=0):
    sys.path.insert(0, str(TESTS))
    from test_diffusion import _tiny_data

    return _tiny_data(n, seed)


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    """Tiny train and test splits (a few scenes each), made once; tests work on copies."""
    from hmrcritic.hmr.data import generate_split

    root = tmp_path_factory.mktemp("s22data")
    generate_split("train", root / "train", n=6, shard_size=3, quiet=True)
    generate_split("test", root / "test", n=4, shard_size=2, quiet=True)
    return root


@pytest.fixture()
def data_dir(tiny_splits, tmp_path, monkeypatch):
    """A private copy of the tiny splits as the data folder."""
    root = tmp_path / "data"
    shutil.copytree(tiny_splits, root)
    monkeypatch.setenv("HMRCRITIC_DATA", str(root))
    return root


# ---------------------------------------------------------------------------------------- train-base --out
def test_train_base_leaves_another_tools_log_jsonl_alone(tmp_path):
    """``train-base --out DIR`` where DIR had no state.pt deleted any ``log.jsonl`` there at step 0: another
    tool's log (a folder of other runs given as --out by mistake) was lost without a word. Now refused before
    anything is loaded or written, naming the file; a train-base log of a run killed before its first checkpoint
    is still restarted."""
    out = tmp_path / "run"
    out.mkdir()
    theirs = '{"epoch": 1, "val_acc": 0.91}\n{"epoch": 2, "val_acc": 0.93}\n'
    (out / "log.jsonl").write_text(theirs)
    cfg = TrainConfig(steps=2, batch_size=4, log_every=1, ckpt_every=1, model=TINY)
    with pytest.raises(InputError, match=r"log\.jsonl is not a train-base loss log"):
        train_base(cfg, out, data=_data())
    assert (out / "log.jsonl").read_text() == theirs
    assert not (out / "state.pt").exists() and not (out / "model.pt").exists()

    # records of step and loss without hmrcritic's checksum (another trainer's), or no JSON at all: someone's too
    (out / "log.jsonl").write_text('{"step": 1, "loss": 0.3}\n')
    with pytest.raises(InputError, match="another --out"):
        train_base(cfg, out, data=_data())
    (out / "log.jsonl").write_text("step 1 loss 0.3\nstep 2 loss 0.2\n")
    with pytest.raises(InputError, match="another --out"):
        train_base(cfg, out, data=_data())

    # train-base's own log of a run killed before its first checkpoint (plus a torn last line): restarted
    own = tmp_path / "own"
    own.mkdir()
    from hmrcritic.io import append_jsonl

    append_jsonl(own / "log.jsonl", {"step": 1, "loss": 9.0, "lr": 1e-3, "grad_norm": 1.0, "steps_per_s": 3.0})
    with open(own / "log.jsonl", "a") as fh:
        fh.write('{"step": 2, "lo')
    train_base(cfg, own, data=_data())
    records = [json.loads(line) for line in (own / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[0]["loss"] != 9.0


# ------------------------------------------------------------------------------------------- split sizes
def test_split_size_scale_is_held_to_the_scene_cap(monkeypatch):
    """``HMRCRITIC_SPLIT_SIZE_SCALE`` scaled a default split past the 1,000,000 scenes ``data generate --n`` is held
    to (100 → a first use generating 2,000,000 scenes until memory ran out), and 1e305 overflowed to a bare
    OverflowError. Both are now the --n refusal."""
    from hmrcritic.hmr.data import default_size

    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "100")
    with pytest.raises(InputError, match=r"HMRCRITIC_SPLIT_SIZE_SCALE=100 .*1\.\.1,000,000 scenes.*got 2,000,000"):
        default_size("train")
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "1e305")
    with pytest.raises(InputError, match="1,000,000 scenes"):
        default_size("test")
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "50")  # exactly the cap: allowed
    assert default_size("train") == 1_000_000
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.0001")  # the tests' tiny splits stay as they were
    assert default_size("train") == 2


def test_generate_split_refuses_more_scenes_than_the_cap(monkeypatch, tmp_path):
    """The cap was the CLI's alone: ``generate_split(n=...)`` (and ``load_split``'s first use under a large
    scale) went on to build the scenes in memory."""
    import hmrcritic.hmr.data as data

    def never(*a, **k):
        raise AssertionError("scenes generated past the cap")

    monkeypatch.setattr(data, "make_scenes", never)
    with pytest.raises(InputError, match=r"1\.\.1,000,000 scenes"):
        data.generate_split("test", tmp_path / "test", n=1_000_001, quiet=True)
    assert not (tmp_path / "test").exists()


# ------------------------------------------------------------------------------------------ the manifest
def test_a_manifest_without_shards_is_refused_as_damaged(data_dir, capsys):
    """A manifest edited to ``"shards": []`` opened as an empty split, and the first read (``data info``, training)
    raised a bare IndexError; now the manifest reader's "not a split manifest; regenerate" error."""
    from hmrcritic.hmr.data import SceneSet

    path = data_dir / "test" / "manifest.json"
    m = json.loads(path.read_text())
    path.write_text(json.dumps({**m, "shards": []}))
    with pytest.raises(AssetError, match="no shards.*regenerate the split"):
        SceneSet(data_dir / "test")
    assert main(["data", "info", "--split", "test"]) != 0
    err = capsys.readouterr().err
    assert "regenerate" in err and "Traceback" not in err and "IndexError" not in err

    path.write_text(json.dumps({**m, "shards": [{**m["shards"][0], "n": -2}, m["shards"][1]]}))
    with pytest.raises(AssetError, match="regenerate the split"):
        SceneSet(data_dir / "test")


# -------------------------------------------------------------------------------------- training's data
def test_training_refuses_a_shard_changed_since_generation(data_dir):
    """``data info`` checks every shard's sha256 against the manifest, training did not: a shard rewritten after
    generation (valid, same rows, other values) was trained on without a word. Hashing costs ~20 ms for the
    20,000-scene split, so training checks too."""
    from hmrcritic.hmr.train import load_train_data

    assert len(load_train_data("train")) == 6  # intact: trains
    shard = data_dir / "train" / "shard_00001.npz"
    with np.load(shard) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["body_pose"] = arrays["body_pose"] * 0.5
    np.savez_compressed(shard, **arrays)
    with pytest.raises(AssetError, match=r"shard_00001\.npz does not match its manifest"):
        load_train_data("train", max_samples=2)


# ------------------------------------------------------------------------------------------ body convert
def test_body_convert_names_a_missing_input_before_the_output_name(tmp_path, capsys):
    """``body convert /missing.pkl out.npz`` said to name the output .pkl; once renamed, that the input was not
    there. The input's problem comes first; nothing is written."""
    rc = main(["body", "convert", str(tmp_path / "missing.pkl"), str(tmp_path / "out.npz")])
    err = capsys.readouterr().err
    assert rc != 0 and "missing.pkl is not found" in err and ".npz" not in err
    assert not (tmp_path / "out.npz").exists()


# ------------------------------------------------------------------------------------ another body model
def test_a_mannequin_split_under_another_body_model_says_to_unset_the_variable(data_dir, monkeypatch, capsys):
    """A split of the mannequin read while ``HMRCRITIC_BODY_MODEL`` names a file told the user to "set
    HMRCRITIC_BODY_MODEL to that file to use it": the mannequin is no file to set it to; it is used without it."""
    from hmrcritic.hmr import mannequin
    from hmrcritic.hmr.body import load_body_model

    load_body_model()  # the mannequin's file is generated on first use
    monkeypatch.setenv("HMRCRITIC_BODY_MODEL", str(mannequin.default_folder() / mannequin.FILE_NAME))
    assert main(["data", "info", "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "made with body model mannequin" in err and "unset HMRCRITIC_BODY_MODEL to use it" in err
    assert "to that file" not in err


def test_the_regenerate_hint_of_a_damaged_split_makes_the_same_split(data_dir, capsys):
    """``data info`` on a damaged split named ``hmrcritic data generate --split X`` whatever made it: following it
    for a rendered split (``--render``) gave one without images, for a 4-scene split one of the default size."""
    split = data_dir / "test"
    m = json.loads((split / "manifest.json").read_text())
    (split / "manifest.json").write_text(json.dumps({**m, "images": True}))  # as `--render` records it
    assert main(["data", "info", "--split", "test"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "0 of the split's 4 images are there" in err
    assert err.rstrip().endswith("regenerate the split: hmrcritic data generate --split test --n 4 --render")
    (split / "manifest.json").write_text(json.dumps({**m, "seed": 7}))
    (split / m["shards"][1]["file"]).unlink()
    assert main(["data", "info", "--split", "test"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is missing" in err and err.rstrip().endswith("hmrcritic data generate --split test --n 4 --seed 7")


def test_replacing_another_body_models_split_is_not_called_first_use(data_dir, monkeypatch, capsys):
    """``load_split`` regenerates a split made with another body model (a SMPL file's split, read in a shell without
    ``HMRCRITIC_BODY_MODEL``): the notice said "(first use)", as if nothing had been there to replace."""
    from hmrcritic.hmr import mannequin
    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.data import load_split

    load_body_model()
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")  # 2 scenes
    monkeypatch.setenv("HMRCRITIC_BODY_MODEL", str(mannequin.default_folder() / mannequin.FILE_NAME))
    assert len(load_split("test")) == 2
    err = capsys.readouterr().err
    assert "(replacing the one made with body model mannequin, not " in err and "first use" not in err
    load_split("wild", root=data_dir / "new")
    assert "(first use)" in capsys.readouterr().err
