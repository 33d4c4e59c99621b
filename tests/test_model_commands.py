"""``sample``, ``evaluate``, ``train-base``, ``body`` and ``data`` on bad or damaged input: one line, exit code 2,
refused before anything is loaded, trained or written, and nothing half-written.

Each case came from a review that ran the commands on wrong values and damaged files; before the fixes they left
an empty output folder, generated whole splits before refusing a setting, trained a full run before refusing its
--ship settings, raised a bare RuntimeError/IndexError on a split whose shard was cut short, printed a two-line
pickle error for a truncated .npz, wrote a converted body model that does not load, or ran out of memory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hmrcritic.cli import main


def _one_line_error(capsys) -> str:
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not line.startswith(("hmrcritic: generating synthetic split", "  evaluated")))
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Tiny splits (train 100, test 5, wild 10), generated once; tests that damage one work on a copy."""
    from hmrcritic.hmr.data import generate_split

    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HMRCRITIC_DATA", str(root))
        mp.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
        for name in ("train", "test", "wild"):
            generate_split(name, quiet=True)
    return root


@pytest.fixture()
def data_dir(splits, tmp_path, monkeypatch):
    """A private copy of the tiny splits, the data folder of this test."""
    root = tmp_path / "data"
    shutil.copytree(splits, root)
    monkeypatch.setenv("HMRCRITIC_DATA", str(root))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
    return root


def _cut_shard(folder, keep=3):
    """Rewrite the split's first shard with only its first ``keep`` scenes (its manifest still lists them all)."""
    shard = folder / "shard_00000.npz"
    with np.load(shard) as z:
        arrays = {k: z[k][:keep] for k in z.files}
    np.savez_compressed(shard, **arrays)
    return shard


# ------------------------------------------------------------------------------------------- sample / evaluate
@pytest.mark.parametrize("extra,needle", [
    (["--steps", "0"], "--steps (DDIM steps) must be ≥ 1"),
    (["--steps", "-3"], "--steps (DDIM steps) must be ≥ 1"),
    (["--steps", "5000"], "DDIM steps must be in 1..1000"),
    (["-n", "0"], "--num-generations must be in 1..1024"),
    (["-n", "5000"], "--num-generations must be in 1..1024"),
])
def test_sample_refuses_bad_settings_without_making_the_output_folder(data_dir, tmp_path, extra, needle, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--scene", "test:0", "-n", "2", "--no-render", *extra, "--out", str(out)]) == 2
    assert needle in _one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("extra,needle", [
    (["--steps", "0"], "--steps (DDIM steps) must be ≥ 1"),
    (["--steps", "5000"], "DDIM steps must be in 1..1000"),
    (["-n", "5000"], "--num-generations must be in 1..1024"),
])
def test_evaluate_refuses_bad_settings_before_loading_any_split(tmp_path, monkeypatch, extra, needle, capsys):
    """On a fresh data folder the refusal came after generating the evaluated split and the train split (the
    nearest-neighbour bank): minutes at full size."""
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "fresh"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
    assert main(["evaluate", "--limit", "2", *extra]) == 2
    assert needle in _one_line_error(capsys)
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())


def test_evaluate_says_when_the_split_is_smaller_than_asked(data_dir, capsys):
    """--limit 50 on a 5-scene split: evaluated whole, and said so; progress goes to stderr, also with --json."""
    assert main(["evaluate", "--split", "test", "--limit", "50", "-n", "2", "--steps", "2", "--no-nn", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n_samples"] == 5
    assert "split 'test' has only 5 scenes; evaluated all of them (--limit 50)" in captured.err
    assert "evaluated 5/5" in captured.err


def test_a_split_cut_short_is_named_not_a_raw_error(data_dir, tmp_path, capsys):
    """A shard holding fewer scenes than the manifest lists (a copy cut short, a file replaced by hand)."""
    _cut_shard(data_dir / "test")
    assert main(["evaluate", "--split", "test", "-n", "2", "--steps", "2", "--no-nn"]) == 2
    assert "split 'test'" in (err := _one_line_error(capsys)) and "is damaged" in err
    assert main(["sample", "--scene", "test:4", "-n", "2", "--no-render", "--out", str(tmp_path / "s")]) == 2
    assert "split 'test'" in (err := _one_line_error(capsys)) and "is damaged" in err
    _cut_shard(data_dir / "train")
    assert main(["train-base", "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "run")]) == 2
    # training checks the shards' sha256 before it reads them (session 23): the shard and the command that remakes
    # this very split are named
    err = _one_line_error(capsys)
    assert "train/shard_00000.npz does not match its manifest" in err and "data generate --split train" in err, err
    assert main(["data", "info", "--split", "train"]) == 2
    assert "shard_00000.npz does not match its manifest" in _one_line_error(capsys)


def test_a_split_cut_short_is_refused_by_the_scene_set_itself(data_dir):
    """The library, not only the commands: indexing past a short shard raised a bare IndexError, and
    ``arrays()`` stacked fewer scenes than ``len()`` says."""
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.data import SceneSet

    _cut_shard(data_dir / "test")
    scenes = SceneSet(data_dir / "test")
    assert len(scenes) > 3
    for use in (lambda: scenes[0], lambda: scenes[len(scenes) - 1], lambda: scenes.arrays(["keypoints"])):
        with pytest.raises(AssetError, match="split 'test' is damaged: .*holds \\[3\\] rows"):
            use()


# ------------------------------------------------------------------------------------------------- train-base
@pytest.mark.parametrize("extra,needle", [
    (["--ship", "--eval-limit", "0"], "--eval-limit must be ≥ 1"),
    (["--ship", "--guidance", "-1"], "--guidance must be a finite number ≥ 0"),
    (["--max-samples", "-5"], "max-samples must be ≥ 1"),
])
def test_train_base_refuses_bad_settings_before_training(data_dir, tmp_path, extra, needle, capsys):
    """--ship's evaluation settings were checked only after the whole run (23 min at the recipe's size); a
    negative --max-samples trained on all but the last scenes."""
    out = tmp_path / "run"
    assert main(["train-base", "--steps", "2", "--batch-size", "4", *extra, "--out", str(out)]) == 2
    assert needle in _one_line_error(capsys)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------- body
@pytest.fixture(scope="module")
def body_files(tmp_path_factory):
    from hmrcritic.hmr import mannequin
    from hmrcritic.hmr.body import REQUIRED_LAYOUT, load_body_model, read_model_arrays

    load_body_model()  # the mannequin file exists
    root = tmp_path_factory.mktemp("bodies")
    arrays = read_model_arrays(mannequin.default_folder() / mannequin.FILE_NAME)
    good = root / "good.pkl"
    shutil.copy(mannequin.default_folder() / mannequin.FILE_NAME, good)
    npz = root / "layout_only.npz"  # every SMPL key, but a 4008-vertex mesh without its face vertex ids
    np.savez(npz, **{k: arrays[k] for k in REQUIRED_LAYOUT})
    (root / "truncated.npz").write_bytes(npz.read_bytes()[: 20000])
    np.save(root / "one.npy", arrays["v_template"])
    (root / "empty.pkl").write_bytes(b"")
    return root


@pytest.mark.parametrize("src,needle", [
    ("truncated.npz", "truncated or corrupt .npz"),
    ("one.npy", "single .npy array"),
    ("empty.pkl", "is empty"),
    ("/dev/null", "not a regular file"),
])
def test_body_convert_of_a_wrong_or_partial_file_is_one_line_and_writes_nothing(body_files, src, needle, capsys):
    path = src if src.startswith("/") else str(body_files / src)
    out = body_files / "out" / f"{src.strip('/').replace('/', '_')}.pkl"
    assert main(["body", "convert", path, str(out)]) == 2
    assert needle in _one_line_error(capsys)
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no temp file left beside it either


def test_body_convert_of_a_model_that_cannot_load_says_so(body_files, capsys):
    """Every SMPL key present, but a 4008-vertex mesh without its face vertex ids: converted (the format is right),
    and a warning says now that it will not load, instead of the first `sample` that needs it."""
    out = body_files / "layout_only_plain.pkl"
    assert main(["body", "convert", str(body_files / "layout_only.npz"), str(out)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {out} does not load as a body model yet" in err and "vertex_ids" in err, err


def test_body_convert_and_export_refuse_outputs_that_would_go_wrong(body_files, capsys):
    good = body_files / "good.pkl"
    before = good.read_bytes()
    cases = [
        (["body", "convert", str(good), str(body_files)], "is a folder; give a file name"),
        (["body", "convert", str(good), str(good)], "is the input file"),
        (["body", "convert", str(good), str(body_files / "x.npz")], "name it .pkl"),
        (["body", "export-obj", str(body_files)], "is a folder; give a file name"),
        (["body", "info", "--body-model", str(body_files / "truncated.npz")], "truncated or corrupt .npz"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        assert needle in _one_line_error(capsys), argv
    assert good.read_bytes() == before and not (body_files / "x.npz").exists()
    assert main(["body", "convert", str(good), str(body_files / "conv.pkl")]) == 0  # a good file still converts
    assert main(["body", "info", "--body-model", str(body_files / "conv.pkl")]) == 0


# ------------------------------------------------------------------------------------------------------- data
def test_data_generate_refuses_a_size_that_cannot_fit_at_once(tmp_path):
    """--n 10**8 ran for minutes towards an out-of-memory kill (every scene is held until the split is written)."""
    env = {**__import__("os").environ, "HMRCRITIC_DATA": str(tmp_path / "d")}
    res = subprocess.run([sys.executable, "-c", "import sys; from hmrcritic.cli import main; sys.exit(main())",
                          "data", "generate", "--split", "test", "--n", "100000000"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--n must be in 1..1,000,000" in res.stderr, res.stderr
    assert not (tmp_path / "d" / "test").exists()
