"""Review (session 34): the alignment path walked as a new user (export → validate → finetune → evaluate).

An ``--out`` that already held a file no finetune wrote was overwritten by the aligned weights without a word:
``--out DATA/dataset.json`` destroyed the header of the very dataset being trained on, ``--out run/model.pt`` a
train-base model, ``--out notes.txt`` a user's file."""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_finetune import TINY, write_dataset

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.finetune import FinetuneConfig, finetune
from hmrcritic.cli import main
from hmrcritic.errors import AssetError, InputError
from hmrcritic.hmr.diffusion import HMRDiffusion, load_model, save_model


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    save_model(HMRDiffusion(TINY), path, extra={"note": "tiny base"})
    return path


@pytest.fixture()
def data(tmp_path):
    return write_dataset(tmp_path / "prefs", n_groups=3, N=4)


def _cfg(data, base, out, **kw):
    kw = {"num_generations": 4, "steps": 1, "batch_size": 2, **kw}
    return FinetuneConfig(data=str(data), out=str(out), model=str(base), **kw)


def test_out_naming_the_datasets_own_header_is_refused_and_the_dataset_stays_readable(data, base):
    header = (data / "dataset.json").read_bytes()
    with pytest.raises(InputError, match="already exists and is a file of the dataset being trained on"):
        finetune(_cfg(data, base, data / "dataset.json"))
    assert (data / "dataset.json").read_bytes() == header
    assert D.validate_dataset(data).ok


def test_out_naming_a_manifest_or_a_users_file_is_refused(data, base, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    for path in (data / D.MANIFEST, notes):
        before = path.read_bytes()
        with pytest.raises(InputError, match="finetune would replace it"):
            finetune(_cfg(data, base, path))
        assert path.read_bytes() == before
        assert not path.with_name(path.name + ".log.jsonl").exists()  # nothing was trained or written


def test_out_naming_a_train_base_model_or_a_state_is_refused(data, base, tmp_path):
    other = tmp_path / "run" / "model.pt"
    other.parent.mkdir()
    save_model(HMRDiffusion(TINY), other, extra={"train": {"steps": 2}})
    with pytest.raises(InputError, match="model checkpoint that no finetune wrote"):
        finetune(_cfg(data, base, other))
    assert "finetune" not in torch.load(other, weights_only=True)["extra"]
    first = tmp_path / "ft.pt"
    finetune(_cfg(data, base, first, checkpoint_every=1))
    with pytest.raises(InputError, match="a training state"):
        finetune(_cfg(data, base, tmp_path / "ft.pt.state.pt"))


def test_a_finetunes_own_checkpoint_and_an_empty_file_are_still_written_over(data, base, tmp_path):
    out = tmp_path / "ft.pt"
    finetune(_cfg(data, base, out))
    finetune(_cfg(data, base, out, resume=False))  # a re-run to the same --out, as documented
    finetune(_cfg(data, base, out, steps=2))  # and a resume to a larger --steps
    assert load_model(out) is not None
    empty = tmp_path / "made_by_mktemp.pt"
    empty.write_bytes(b"")
    assert finetune(_cfg(data, base, empty)) == empty
    assert "finetune" in torch.load(empty, weights_only=True)["extra"]


def test_cli_says_it_in_one_line(data, base, capsys):
    code = main(["finetune", "--data", str(data), "--out", str(data / "dataset.json"), "--model", str(base),
                 "-n", "4", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "already exists and is a file of the dataset being trained on" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("version", "says"), [(0, "older hmrcritic; export it again"), (2, "newer hmrcritic")])
def test_a_dataset_of_another_format_version_says_which_side_is_out_of_date(data, base, tmp_path, version, says):
    """"format_version 0 unsupported (this reads 1)" did not say whether to upgrade or to re-export."""
    import json

    header = json.loads((data / "dataset.json").read_text())
    header["format_version"] = version
    (data / "dataset.json").write_text(json.dumps(header))
    with pytest.raises(AssetError, match=says):
        D.read_header(data)
    assert any(says in e for e in D.validate_dataset(data).errors)
    with pytest.raises(AssetError, match=says):
        finetune(_cfg(data, base, tmp_path / "ft.pt"))


def test_out_naming_a_pipe_is_refused_before_any_step(data, base, tmp_path):
    """A FIFO (or /dev/null) as --out trained every step, wrote OUT.state.pt and OUT.log.jsonl beside it, and only
    the final write refused it."""
    import os

    pipe = tmp_path / "pipe.pt"
    os.mkfifo(pipe)
    with pytest.raises(InputError, match="finetune --out: .* is not a regular file"):
        finetune(_cfg(data, base, pipe, checkpoint_every=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.pt", "prefs"]


def test_finetune_help_says_which_existing_out_is_rewritten(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    with contextlib.suppress(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "must be an earlier finetune's checkpoint" in text


def test_out_naming_an_empty_file_of_the_dataset_is_refused(base, tmp_path):
    """An export whose groups all tie writes an empty pairs.jsonl: empty, but the dataset's (validate compares it)."""
    data = write_dataset(tmp_path / "prefs", n_groups=2, N=4)
    (data / D.PAIRS).write_bytes(b"")
    with pytest.raises(InputError, match="a file of the dataset being trained on"):
        finetune(_cfg(data, base, data / D.PAIRS))
    assert (data / D.PAIRS).read_bytes() == b""
