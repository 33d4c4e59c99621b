"""``train-base`` under interruption and odd input: a run stopped or killed and resumed ends bitwise as the
uninterrupted one (weights, optimizer, EMA, global RNG, the loss log and the model file), one process per run
folder, a resume on another recipe or other data refused by name, a corrupt state or a failed write as one line.

Each case came from a review that interrupted and resumed real runs; before the fixes a resumed run wrote another
``model.pt`` (its last log window lost the steps before the checkpoint), a model with dropout drifted after a
resume (the global RNG was not saved), re-running ``--stop-at N`` trained the whole recipe, a regenerated train
split was resumed on silently, two processes trained into one folder, and a full disk read ``File too large``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hmrcritic.errors import AssetError, InputError
from hmrcritic.hmr.diffusion import DiffusionConfig
from hmrcritic.hmr.train import TrainConfig, loss_curve, train_base

TESTS = Path(__file__).resolve().parent
TINY = DiffusionConfig(d_model=32, layers=1, heads=2)
DROPOUT = DiffusionConfig(d_model=32, layers=1, heads=2, dropout=0.1)


def _data(n=32, seed=0):
    sys.path.insert(0, str(TESTS))
    from test_diffusion import _tiny_data

    return _tiny_data(n, seed)


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=12, batch_size=8, warmup=2, lr=3e-3, log_every=5, ckpt_every=5, threads=1, model=TINY)
    return TrainConfig(**{**base, **kw})


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = (torch.load(p / "state.pt", weights_only=True) for p in (a, b))
    assert sa["step"] == sb["step"]
    for key in ("model", "ema"):
        for name, value in sa[key].items():
            assert torch.equal(value, sb[key][name]), (key, name)
    for i, slots in sa["opt"]["state"].items():
        for name, value in slots.items():
            assert torch.equal(value, sb["opt"]["state"][i][name]), ("opt", i, name)


def test_stopped_and_resumed_run_writes_the_uninterrupted_model_file(tmp_path):
    """Stopped at step 11 of 12 (inside the last log window of 10..12) and resumed: the same model.pt bytes (its
    final_loss is the last log window's mean) and the same log; the resume says where it continues."""
    data, cfg = _data(), _cfg()
    full = train_base(cfg, tmp_path / "full", data=data)
    assert train_base(cfg, tmp_path / "res", data=data, stop_at=11).name == "state.pt"
    said: list[str] = []
    resumed = train_base(cfg, tmp_path / "res", data=data, notify=said.append)
    assert resumed.read_bytes() == full.read_bytes()
    _assert_same_state(tmp_path / "full", tmp_path / "res")
    assert [(r["step"], r["loss"]) for r in loss_curve(tmp_path / "res")] == \
        [(r["step"], r["loss"]) for r in loss_curve(tmp_path / "full")]
    assert any("resuming from step 11/12" in line for line in said), said


def test_rerunning_the_same_stop_at_does_not_train_on(tmp_path):
    """`train-base --stop-at 4` run twice stays at step 4 (it trained the whole recipe the second time); a smaller
    --stop-at than the state's step is refused."""
    data, cfg = _data(), _cfg(steps=40)
    assert train_base(cfg, tmp_path, data=data, stop_at=4).name == "state.pt"
    said: list[str] = []
    assert train_base(cfg, tmp_path, data=data, stop_at=4, notify=said.append).name == "state.pt"
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 4
    assert not (tmp_path / "model.pt").exists()
    assert any("already at step 4" in line for line in said), said
    with pytest.raises(InputError, match="already at step 4, past --stop-at 2"):
        train_base(cfg, tmp_path, data=data, stop_at=2)


def test_resume_refuses_other_data_and_names_a_changed_setting(tmp_path):
    data, cfg = _data(), _cfg()
    train_base(cfg, tmp_path, data=data, stop_at=5)
    with pytest.raises(AssetError, match="trained on other data"):  # e.g. the train split regenerated meanwhile
        train_base(cfg, tmp_path, data=_data(seed=5))
    with pytest.raises(AssetError, match="different training config") as info:
        train_base(replace(cfg, threads=2, model=replace(TINY, layers=2)), tmp_path, data=data)
    assert "threads 1 → 2" in str(info.value) and "model.layers 1 → 2" in str(info.value)
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 5  # left as it was


def test_a_corrupt_state_is_one_line_with_the_way_out(tmp_path):
    data, cfg = _data(), _cfg()
    train_base(cfg, tmp_path, data=data, stop_at=5)
    state = tmp_path / "state.pt"
    state.write_bytes(state.read_bytes()[: 3000])  # a copy cut short, a disk error
    with pytest.raises(AssetError) as info:
        train_base(cfg, tmp_path, data=data)
    msg = str(info.value)
    assert "\n" not in msg and str(state) in msg and "--no-resume" in msg, msg
    # --no-resume starts over (and drops the corrupt state instead of leaving it to be resumed later)
    assert train_base(cfg, tmp_path, data=data, resume=False).name == "model.pt"


_KILLED_RUN = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_train_resume import _cfg, _data, DROPOUT
    from hmrcritic.hmr.train import train_base
    # slowed by its progress hook (not by its arithmetic), so the test can kill it half-way
    train_base(_cfg(steps=40, log_every=1, ckpt_every=3, model=DROPOUT), {out!r}, data=_data(),
               progress=lambda rec: time.sleep(0.1))
""")


def test_kill_9_mid_training_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    """A real run (dropout on: the global RNG matters) killed with SIGKILL after a checkpoint: while it ran, a second
    run on its folder was refused; the resume removes what the kill left (a temp file of a checkpoint being
    written) and ends bitwise where an uninterrupted run ends."""
    cfg = _cfg(steps=40, log_every=1, ckpt_every=3, model=DROPOUT)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN.format(tests=str(TESTS), out=str(out))],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not (out / "state.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the run never wrote a checkpoint"
            time.sleep(0.05)
        with pytest.raises(AssetError, match="in use by train-base"):
            train_base(cfg, out, data=_data())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    step = torch.load(out / "state.pt", weights_only=True)["step"]
    assert 0 < step < cfg.steps
    (out / ".state.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    said: list[str] = []
    resumed = train_base(cfg, out, data=_data(), notify=said.append)
    assert any(f"resuming from step {step}/40" in line for line in said), said
    assert not list(out.glob(".*.tmp"))
    full = train_base(cfg, tmp_path / "full", data=_data())
    _assert_same_state(tmp_path / "full", out)
    assert resumed.read_bytes() == full.read_bytes()
    assert [r["loss"] for r in loss_curve(out)] == [r["loss"] for r in loss_curve(tmp_path / "full")]


def test_ctrl_c_says_where_the_run_can_resume_from(tmp_path):
    """SIGINT (Ctrl-C) mid-run: the run says the step it reached and the checkpoint a re-run resumes from."""
    code = _KILLED_RUN.replace("progress=", "notify=print, progress=")
    # a terminal's Ctrl-C: Python's own handler, also when this suite runs in the background (a shell starts
    # background jobs with SIGINT ignored, and a child then inherits the ignore and never sees the signal)
    code = code.replace("import sys, time", "import signal, sys, time; signal.signal(signal.SIGINT, "
                                            "signal.default_int_handler)")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", code.format(tests=str(TESTS), out=str(out))], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "state.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in stderr, stderr
    step = torch.load(out / "state.pt", weights_only=True)["step"]
    assert f"the last checkpoint is step {step} ({out / 'state.pt'})" in stdout, stdout


@pytest.fixture()
def tiny_data_dir(tmp_path, monkeypatch):
    """Tiny splits (train 100, test 5, wild 10) in a private data folder, generated here."""
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
    generate_split("train", quiet=True)
    return tmp_path / "data"


def test_a_failed_write_names_the_file_and_leaves_no_temp_file(tiny_data_dir, tmp_path):
    """The file system refuses the checkpoint (here: a file-size limit, EFBIG, the same path as a full disk):
    one line naming state.pt and what is kept, not a bare `File too large`."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); "
            "from hmrcritic.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", code, "train-base", "--steps", "3", "--batch-size", "4",
                          "--max-samples", "16", "--out", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert f"cannot write the training state {out / 'state.pt'}" in err and "no checkpoint was written" in err, err
    assert not (out / "state.pt").exists() and not list(out.glob(".*.tmp"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "tpu"])
def test_a_device_that_is_not_here_is_refused_before_anything(tmp_path, device, capsys):
    from hmrcritic.cli import main

    assert main(["train-base", "--steps", "2", "--device", device, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: device") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
