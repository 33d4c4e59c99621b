"""Upgrade review: files an earlier hmrcritic release wrote into a user's home folder (training states, memory
records, exported datasets) read by this one. Each case was found by running an older checkout's CLI on a home
folder and then this checkout's CLI on the same folder."""

from __future__ import annotations

import torch
from test_train_resume import TINY, _data

from hmrcritic.hmr.train import TrainConfig, train_base


def test_resuming_a_state_of_an_older_release_says_its_data_is_unchecked(tmp_path):
    """A ``state.pt`` written before the data fingerprint and RNG streams were saved (releases up to a27d09e) was
    resumed on whatever the split now holds, and the resume said "the run continues bitwise as an uninterrupted
    one": a regenerated split was mixed into the run with a message that promised the opposite."""
    cfg = TrainConfig(steps=6, batch_size=4, warmup=1, lr=3e-3, log_every=2, ckpt_every=2, threads=1, model=TINY)
    assert train_base(cfg, tmp_path, data=_data(16, seed=0), stop_at=2).name == "state.pt"
    st = torch.load(tmp_path / "state.pt", weights_only=True)
    for key in ("rng", "log_window", "data_sha256", "data_source"):  # what the older release did not write
        st.pop(key)
    torch.save(st, tmp_path / "state.pt")
    said: list[str] = []
    train_base(cfg, tmp_path, data=_data(16, seed=1), notify=said.append)  # other data: cannot be told apart
    line = next(s for s in said if "resuming from step 2/6" in s)
    assert "bitwise" not in line, line
    assert "older hmrcritic" in line and "not checked" in line and "--no-resume" in line, line
