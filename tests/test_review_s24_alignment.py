"""Session 24 review (alignment): the finetuner with the numbers an API caller passes. Real parts throughout (the
tiny diffusion model, the dataset writer and reader, the finetuner, save_model/load_model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_finetune import TINY, write_dataset

from hmrcritic.alignment.finetune import FinetuneConfig, finetune
from hmrcritic.errors import InputError
from hmrcritic.hmr.diffusion import HMRDiffusion, load_model, save_model
from hmrcritic.io import read_jsonl


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = HMRDiffusion(TINY)
    for head in (model.joint_out, model.shape_out):
        torch.nn.init.normal_(head.weight, std=0.05)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("prefs"), n_groups=4)


def _cfg(data, base, out, **kw):
    kw = {"steps": 2, "batch_size": 2, "num_generations": 4, "checkpoint_every": 1, "lr": 1e-3, "threads": 1, **kw}
    return FinetuneConfig(data=str(data), model=str(base), out=str(out), **kw)


def test_numpy_and_torch_numbers_train_to_a_loadable_checkpoint(data_dir, base_ckpt, tmp_path):
    """FinetuneConfig takes numpy and torch scalars (session 14), but the run then died: a float32 lr at its first
    checkpoint (TypeError: not JSON serializable), an int64 --steps only after its last step, when save_model refused
    the numpy number in the checkpoint's extra. They train as the plain numbers do, to the same weights."""
    plain = finetune(_cfg(data_dir, base_ckpt, tmp_path / "plain.pt", lr=float(np.float32(1e-3))))
    scalars = finetune(_cfg(data_dir, base_ckpt, tmp_path / "np.pt", steps=np.int64(2), batch_size=torch.tensor(2),
                            lr=np.float32(1e-3), beta=np.float64(100.0), seed=np.uint32(0), threads=np.int64(1)))
    a, b = load_model(plain), load_model(scalars)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("seed", [2**45, -1])
def test_a_seed_out_of_range_is_refused_before_any_work(seed, tmp_path):
    """The CLI takes --seed 0..2**32-1; the API took any integer, and 2**45 overflowed torch's generator at the first
    step (seed × 7,919,993), after the dataset and model were loaded: a bare "Overflow when unpacking long long"."""
    with pytest.raises(InputError, match="--seed must be in 0..4294967295"):
        FinetuneConfig(data=str(tmp_path / "none"), out=str(tmp_path / "o.pt"), seed=seed)


class Stopped(Exception):
    """Stands for the process being stopped (Ctrl-C, a kill) in the middle of a finetune."""


def test_no_resume_stopped_before_its_first_checkpoint_does_not_resume_the_old_run(data_dir, base_ckpt, tmp_path):
    """--no-resume deleted the old run's log but kept its state until the new run's first checkpoint. Stopped before
    that, the next plain re-run continued from the old state: its log held the new run's step 1 and then steps 3-4,
    step 2 missing, the weights of a run whose record is not there. Starting over now drops the old state too."""
    out = tmp_path / "a.pt"
    finetune(_cfg(data_dir, base_ckpt, out, steps=2, checkpoint_every=1))  # an earlier run: state at step 2

    def stop_at_step_1(rec):
        if rec["step"] == 1:
            raise Stopped

    with pytest.raises(Stopped):
        finetune(_cfg(data_dir, base_ckpt, out, steps=4, checkpoint_every=4, resume=False), progress=stop_at_step_1)
    finetune(_cfg(data_dir, base_ckpt, out, steps=4, checkpoint_every=4))
    assert [r["step"] for r in read_jsonl(out.with_name("a.pt.log.jsonl"), verify=False)] == [1, 2, 3, 4]
    straight = finetune(_cfg(data_dir, base_ckpt, tmp_path / "b.pt", steps=4, checkpoint_every=4))
    a, b = load_model(out), load_model(straight)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_an_export_with_a_repeated_input_id_writes_nothing(tmp_path):
    """Two inputs with one sample_id were refused only while the tasks were listed, after the folder and a header
    marked unfinished were written: validate and finetune then said the export "did not finish" and to re-run it,
    which fails the same way. Refused now before anything is written."""
    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment.export import export

    model = tiny_model(tmp_path / "tiny.pt")
    inputs = make_inputs(3)
    inputs[2].sample_id = inputs[0].sample_id
    out = tmp_path / "ds"
    with pytest.raises(InputError, match=f"duplicate input id '{inputs[0].sample_id}'"):
        export(cfg_for(out, model), inputs=inputs)
    assert not out.exists()
