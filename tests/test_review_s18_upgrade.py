"""Upgrade review: files an earlier hmrcritic release wrote into a user's home folder (training states, memory
records, exported datasets) read by this one. Each case was found by running an older checkout's CLI on a home
folder and then this checkout's CLI on the same folder."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hmrcritic.hmr.diffusion import DiffusionConfig
from hmrcritic.hmr.train import TrainConfig, train_base

TESTS = Path(__file__).resolve().parent
TINY = DiffusionConfig(d_model=32, layers=1, heads=2)


def _data(n=16, seed=0):
    sys.path.insert(0, str(TESTS))
    from test_diffusion import _tiny_data

    return _tiny_data(n, seed)


def test_resuming_a_state_of_an_older_release_says_its_data_is_unchecked(tmp_path):
    """A ``state.pt`` written before the data fingerprint and RNG streams were saved (releases up to a27d09e) was
    resumed on whatever the split now holds, and the resume said "the run continues bitwise as an uninterrupted
    one": a regenerated split was mixed into the run with a message that promised the opposite."""
    cfg = TrainConfig(steps=6, batch_size=4, warmup=1, lr=3e-3, log_every=2, ckpt_every=2, threads=1, model=TINY)
    assert train_base(cfg, tmp_path, data=_data(seed=0), stop_at=2).name == "state.pt"
    st = torch.load(tmp_path / "state.pt", weights_only=True)
    for key in ("rng", "log_window", "data_sha256", "data_source"):  # what the older release did not write
        st.pop(key)
    torch.save(st, tmp_path / "state.pt")
    said: list[str] = []
    train_base(cfg, tmp_path, data=_data(seed=1), notify=said.append)  # other data: cannot be told apart
    line = next(s for s in said if "resuming from step 2/6" in s)
    assert "bitwise" not in line, line
    assert "older hmrcritic" in line and "not checked" in line and "--no-resume" in line, line
