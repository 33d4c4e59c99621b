"""Review s25 (leftovers): plain fixes the lead chose — bounds of the agent's count variables, reproduce's cache key
of the critic's top-1 and its finetune record, ``memory rules --ucb-c``'s default, ``train-base --ship``'s assets
folder and ``--no-resume``'s old exports.

Each test failed before its fix; the docstring says what was wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_review_s13_alignment import stand_in_stages  # noqa: F401  (a fixture)

from hmrcritic.cli import main
from hmrcritic.errors import InputError

TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------ agent count variables
@pytest.mark.parametrize("var,field,top", [("HMRCRITIC_MAX_REFLECTIONS", "max_reflections", 100),
                                           ("HMRCRITIC_RULES_K", "rules_k", 10_000),
                                           ("HMRCRITIC_PROTOTYPES_K", "prototypes_k", 1_000)])
def test_agent_count_variables_have_an_upper_bound(monkeypatch, var, field, top):
    """``HMRCRITIC_MAX_REFLECTIONS=99999999999999999999`` passed doctor and the agent built a LangGraph recursion
    limit of that size (a runaway revise loop never stopped); the k's asked Chroma for as many records. Each now has
    a maximum far above any use, refused in one line naming the variable (by doctor too)."""
    import pydantic

    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.commands.doctor import _each_agent_problem

    monkeypatch.setenv(var, "99999999999999999999")
    with pytest.raises(InputError, match=f"{var}=.* must be ≤ {top}"):
        AgentConfig()
    assert [p for p in _each_agent_problem() if var in p], _each_agent_problem()
    monkeypatch.setenv(var, str(top))  # the maximum itself is taken
    assert getattr(AgentConfig(), field) == top
    monkeypatch.delenv(var)
    with pytest.raises(pydantic.ValidationError):  # given directly (Python API), the same bound
        AgentConfig(**{field: top + 1})


# ------------------------------------------------------------------------------------------------------ reproduce
def _memory_versions(monkeypatch, versions):
    """reproduce's explore stage replaced by one that makes the memory folder and reports the next version."""
    from hmrcritic.alignment import reproduce as rp

    explored = []

    def explore(preset, memory_dir, *a):
        explored.append(str(memory_dir))
        memory_dir.mkdir(parents=True, exist_ok=True)
        (memory_dir / "chroma.sqlite3").write_bytes(b"")
        return {"engine": "stand-in", "version": versions[len(explored) - 1], "stats": {}}

    monkeypatch.setattr(rp, "_explore", explore)
    return explored


@pytest.mark.parametrize("second", ["v1", "v0"])
def test_critic_top1_evaluations_are_keyed_by_the_explored_memory_version(tmp_path, monkeypatch, second,
                                                                         stand_in_stages):  # noqa: F811
    """The evaluation key held the exploration key but not the memory's version: a memory deleted and explored
    again (a VLM judge answers otherwise: another version) reused the base row's cached critic top-1, scored with the
    old memory, beside aligned rows scored with the new one. A re-exploration to the same version (the builtin
    judge is deterministic) still reuses it."""
    from test_review_s22_reproduce import record_evaluations

    from hmrcritic.alignment import reproduce as rp

    explored = _memory_versions(monkeypatch, ["v0", second])
    selectors: list[str] = []
    monkeypatch.setattr(rp, "CriticSelector", lambda memory_dir, p, tag: selectors.append(tag) or (lambda ctx: None))
    evaluated = record_evaluations(monkeypatch)
    out = tmp_path / "run"
    over = {"objectives": "gpa"}  # critic_top1 on (the preset's)
    rp.reproduce("quick", out_dir=out, overrides=over, progress=False)
    assert len(evaluated) == 2 and len(selectors) == 2  # base and gpa, each with the critic's top-1
    (memory,) = {Path(p) for p in explored}
    shutil.rmtree(memory)  # deleted: explored again
    lines: list[str] = []
    rp.reproduce("quick", out_dir=out, overrides=over, progress=lines.append)
    assert len(explored) == 2
    if second == "v0":  # the same memory: nothing downstream re-runs
        assert any("evaluate base: done before" in ln for ln in lines), lines
        assert len(evaluated) == 2, lines
    else:
        assert not any("evaluate base: done before" in ln for ln in lines), lines
        assert len(evaluated) == 4, lines  # base and gpa, both with the new memory


def test_a_finetune_resumed_at_its_last_step_records_its_final_log(tmp_path, monkeypatch,
                                                                  stand_in_stages):  # noqa: F811
    """A finetune that resumes at its last step trains and logs nothing in that process: ``models/<obj>-<key>.json``
    got ``final_log: {}``. The checkpoint keeps the run's last log record in its extra; the record takes it."""
    import torch
    from test_finetune import TINY

    import hmrcritic.alignment.finetune as ft
    from hmrcritic.alignment import reproduce as rp
    from hmrcritic.hmr.diffusion import HMRDiffusion, save_model

    torch.manual_seed(0)
    tiny = HMRDiffusion(TINY)
    stored = {"step": 6, "objective": "gpa", "loss": 0.25, "reward_accuracy": 0.75}

    def finetune(cfg, progress=None):  # resumed at step 6 of 6: no log record in this process
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        return save_model(tiny, cfg.out, extra={"final_log": stored})

    monkeypatch.setattr(ft, "finetune", finetune)
    out = tmp_path / "run"
    rp.reproduce("quick", out_dir=out, overrides={"objectives": "gpa", "critic_top1": "false"}, progress=False)
    (rec,) = (out / "models").glob("gpa-*.json")
    assert json.loads(rec.read_text(encoding="utf-8"))["final_log"] == {"step": 6, "loss": 0.25,
                                                                         "reward_accuracy": 0.75}


# ---------------------------------------------------------------------------------------------- memory rules C
def test_memory_rules_takes_its_ucb_constant_from_the_variable(tmp_path, monkeypatch, capsys):
    """``memory rules --ucb-c`` defaulted to a fixed 1.0 while the agent (and so every critique) reads
    ``HMRCRITIC_UCB_C``: with the variable set, the listing ranked the rules by another Ψ than retrieval did."""
    monkeypatch.setenv("HMRCRITIC_MEMORY", str(tmp_path / "memory"))
    assert main(["memory", "rules", "--ucb-c", "0.25", "--json"]) == 0
    explicit = json.loads(capsys.readouterr().out)
    assert main(["memory", "rules", "--json"]) == 0
    at_one = json.loads(capsys.readouterr().out)
    monkeypatch.setenv("HMRCRITIC_UCB_C", "0.25")
    assert main(["memory", "rules", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == explicit
    assert main(["memory", "rules"]) == 0
    assert "C=0.25" in capsys.readouterr().out
    assert main(["memory", "rules", "--ucb-c", "1", "--json"]) == 0  # the option beats the variable
    assert json.loads(capsys.readouterr().out) == at_one
    monkeypatch.setenv("HMRCRITIC_UCB_C", "-1")
    assert main(["memory", "rules"]) == 2
    assert "HMRCRITIC_UCB_C" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ train-base --ship
def _no_training(monkeypatch):
    import hmrcritic.hmr.train as train

    trained: list = []
    monkeypatch.setattr(train, "train_base", lambda cfg, out, **kw: trained.append(out) or Path(out) / "model.pt")
    return trained


def test_ship_to_an_unwritable_assets_folder_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """``train-base --ship`` learned that the assets folder cannot be written only in ``ship_model``, after the
    training and the evaluations (~25 min). Refused at once now (here: the folder's path is a file)."""
    import hmrcritic.hmr.diffusion as diffusion

    trained = _no_training(monkeypatch)
    blocked = tmp_path / "assets"
    blocked.write_text("not a folder", encoding="utf-8")
    monkeypatch.setattr(diffusion, "ASSETS_DIR", blocked)
    assert main(["train-base", "--ship", "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    assert trained == [] and str(blocked) in capsys.readouterr().err
    # a writable folder passes, and the probe leaves nothing in it
    writable = tmp_path / "ok"
    writable.mkdir()
    from hmrcritic.hmr.train import check_ship_dest

    monkeypatch.setattr(diffusion, "ASSETS_DIR", writable)
    assert check_ship_dest() == writable and list(writable.iterdir()) == []


_RO_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import hmrcritic.hmr.diffusion as diffusion
    import hmrcritic.hmr.train as train
    from hmrcritic.cli import main

    assets, run = Path(sys.argv[1]), sys.argv[2]
    diffusion.ASSETS_DIR = assets
    train.train_base = lambda *a, **k: sys.exit("trained before the assets folder was checked")
    sys.exit(main(["train-base", "--ship", "--steps", "1", "--out", run]))
""")


def test_ship_to_a_read_only_mounted_assets_folder_is_refused_before_training(tmp_path):
    """The same on a read-only mount, where ``os.access`` says yes to root: the folder is probed by a write."""
    assets = tmp_path / "assets"
    assets.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"',
                            str(assets)], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no read-only bind mount here (unshare -rm: {probe.stderr.strip()[:100]})")
    script = tmp_path / "ship.py"
    script.write_text(_RO_SCRIPT, encoding="utf-8")
    cmd = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$1" "$2" "$0" "$3"')
    res = subprocess.run(["unshare", "-rm", "sh", "-c", cmd, str(assets), sys.executable, str(script),
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(TESTS.parent)})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "cannot be written" in res.stderr and "trained before" not in res.stderr, res.stderr
    assert list(assets.iterdir()) == []


# ------------------------------------------------------------------------------------- train-base --no-resume
def test_no_resume_removes_the_old_runs_step_exports(tmp_path):
    """``--no-resume`` deleted state.pt, log.jsonl and model.pt but kept the old run's ``model_stepN.pt`` (its
    ``--stop-at`` exports) beside the new run, where they read as this run's weights at that step. Only that exact
    name is removed: other files in the folder are the user's."""
    from test_review_s21_hmrtrain import TINY, _data

    from hmrcritic.hmr.train import TrainConfig, checkpoint_from_state, train_base

    run = tmp_path / "run"
    cfg = TrainConfig(steps=3, batch_size=4, warmup=0, model=TINY)
    state = train_base(cfg, run, data=_data(8), stop_at=1)
    checkpoint_from_state(state, run / "model_step1.pt", step=1)  # as `train-base --stop-at 1` exports it
    keep = ["model_step1.pt.bak", "my_model_step2.pt", "model_stepX.pt", "model_step.pt"]
    for name in keep:
        (run / name).write_bytes(b"user")
    (run / "model_step7.pt").mkdir()  # not a file: left alone
    train_base(cfg, run, data=_data(8), stop_at=1, resume=False)
    assert not (run / "model_step1.pt").exists()
    assert all((run / name).read_bytes() == b"user" for name in keep) and (run / "model_step7.pt").is_dir()
    assert (run / "state.pt").exists()
