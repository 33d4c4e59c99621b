"""Review session 26: small leftovers — prune's dry run, the doctor's split scale, sample's body model note,
FinetuneConfig's messages (agent/runs.py, commands/doctor.py, commands/model.py, alignment/finetune.py)."""

from __future__ import annotations

import sqlite3

import pytest

from hmrcritic.errors import InputError


def _files(folder) -> dict:
    """Every file under ``folder`` with its bytes: what a dry run must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_dry_prune_writes_nothing_for_threads_whose_run_folder_is_elsewhere(tmp_path):
    """``runs prune --dry-run`` read each thread without a folder under ``groups/`` through ``open_checkpointer``,
    whose set-up switched a rollback-journal database to WAL (rewriting its header, leaving -wal/-shm beside it),
    and took each relative-``run_dir`` thread's lock, making ``checkpoints.sqlite.threads.lock``: a dry run wrote
    into the runs folder it promised only to count."""
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.sqlite import SqliteSaver

    from hmrcritic.agent.runs import prune_runs

    root = tmp_path / "runs"
    (root / "groups").mkdir(parents=True)
    db = root / "checkpoints.sqlite"
    con = sqlite3.connect(db)
    saver = SqliteSaver(con)
    for thread, run_dir in (("relative", "somewhere/relative"), ("absolute", str(tmp_path / "gone"))):
        cp = empty_checkpoint()
        cp["channel_values"] = {"run_dir": run_dir}
        cp["ts"] = "2020-01-01T00:00:00+00:00"  # long ago: both are orphans
        saver.put({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, cp, {}, {})
    con.execute("PRAGMA journal_mode=DELETE")  # as on a file system where WAL cannot work (some NFS mounts)
    con.close()
    before = _files(root)

    dry = prune_runs(7, root=root, dry_run=True)

    assert dry["removed"]["checkpoints"] == 2
    assert _files(root) == before  # no lock file, no -wal/-shm, the same database bytes
    ro = sqlite3.connect(db.as_uri() + "?mode=ro", uri=True)
    try:
        assert ro.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        ro.close()
    assert prune_runs(7, root=root)["removed"] == dry["removed"]  # and counted what a real prune removes


def test_doctor_fails_a_split_scale_too_small_for_the_pose_prior_and_names_the_least_that_works(tmp_path,
                                                                                                monkeypatch):
    """``HMRCRITIC_SPLIT_SIZE_SCALE=0.0024`` passed doctor, and then the first builtin critique made a train split
    of 48 scenes and failed on it ("only 48 train poses available, and it needs 50"). Doctor says so now, with the
    smallest value that works — which does work — and leaves a tiny scale alone where a large enough train split
    is already there (it is kept whatever the scale)."""
    import re

    from hmrcritic.agent import prior
    from hmrcritic.commands.doctor import _folders
    from hmrcritic.errors import AssetError

    monkeypatch.setattr(prior, "_CACHE", {})
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "small"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.0024")
    res = _folders()
    assert not res["ok"] and "48 scenes" in res["error"] and "needs 50" in res["error"], res
    with pytest.raises(AssetError, match="only 48 train poses"):  # what doctor foretold
        prior.get_pose_prior()

    least = re.search(r"the smallest value that works is ([0-9.e-]+)", res["error"]).group(1)
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "least"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", least)
    assert _folders()["ok"]
    assert prior.get_pose_prior() is not None  # fitted on the train split made at that scale
    below = repr(float(least) - 1e-9)
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", below)  # the split there is kept: nothing to fear
    assert _folders()["ok"]
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "below"))
    assert not _folders()["ok"]  # and on a fresh home it is too small (least is the least)


@pytest.mark.parametrize("trained_on", ["mannequin", "/models/SMPL_MALE.pkl"])
def test_sample_notes_a_model_trained_on_another_body_model(tmp_path, monkeypatch, capsys, trained_on):
    """``hmrcritic evaluate`` notes a checkpoint trained on scenes of another body model ("these figures measure it
    on another body"); ``hmrcritic sample`` posed that model's hypotheses on the body in use without a word."""
    import json

    import torch

    from hmrcritic.cli import main
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion, save_model

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")  # a test split of 2 scenes
    torch.manual_seed(0)
    ckpt = save_model(HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2)), tmp_path / "m.pt",
                      extra={"data": {"split": "train", "body_model": trained_on}})
    assert main(["sample", "--scene", "test:0", "-n", "2", "--steps", "2", "--no-render", "--json",
                 "--model", str(ckpt), "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["num_generations"] == 2  # stdout stays the JSON
    note = "trained on scenes of body model /models/SMPL_MALE.pkl, not mannequin"
    assert (note in err) == (trained_on != "mannequin"), err


def _finetune_flags() -> set[str]:
    import typer

    from hmrcritic.cli import app

    cmd = typer.main.get_command(app).commands["finetune"]
    return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize("bad", [
    {"num_generations": 1}, {"steps": 0}, {"batch_size": 0}, {"checkpoint_every": 0}, {"log_every": 0},
    {"ema": 1.0}, {"seed": -1}, {"threads": 0}, {"grad_clip": 0.0}, {"weight_decay": -1.0}, {"objective": "ppo"},
    {"lr": "1e-4"}, {"t_min": "5"}, {"grad_clip": "1"}, {"weight_decay": "0"}, {"log_every": "2"},
], ids=lambda bad: "-".join(f"{k}={v!r}" for k, v in bad.items()))
def test_finetune_config_messages_name_what_the_user_can_set(bad):
    """FinetuneConfig's messages named every field as a flag: "--grad-clip must be a finite number > 0" (and
    --weight-decay, --log-every) sent CLI users after flags ``hmrcritic finetune --help`` does not have. A message
    names the CLI flag where there is one, else the Python field (``FinetuneConfig.grad_clip``)."""
    from hmrcritic.alignment.finetune import FinetuneConfig

    (field, _), = bad.items()
    with pytest.raises(InputError) as info:
        FinetuneConfig(data="d", out="o.pt", **bad)
    named = str(info.value).split()[0]
    flags = _finetune_flags()
    flag = f"--{field.replace('_', '-')}"
    assert named == (flag if flag in flags else f"FinetuneConfig.{field}"), str(info.value)
    assert named in flags or named.removeprefix("FinetuneConfig.") in FinetuneConfig.__dataclass_fields__
