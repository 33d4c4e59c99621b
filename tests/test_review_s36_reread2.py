"""Session 36, a read-only review of the Python API's folder and file arguments given as ``""`` or with ``~``.

The CLI refuses an empty path (``cli._empty_paths_refused``) and expands ``~`` on every path option
(``commands.expand_user_paths``, ``config.expand_user``); ``load_model``, ``MemoryStore`` and ``reproduce`` do the
same from Python. The entry points below did not: an empty folder was the working folder (files written among the
caller's), a quoted ``"~/x"`` was a folder named ``~`` there, and ``"~nouser/x"`` a bare RuntimeError where README
promises an HMRCriticError with one line. Each test failed on the code it read, as a strict xfail; the lead applied
the proposed fix (``config.path_text`` / ``path_arg`` at each entry) and removed the marks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hmrcritic.errors import HMRCriticError, InputError


class Reached(Exception):
    """A stand-in stage was reached: the argument got past every check."""


@pytest.fixture()
def work(tmp_path, monkeypatch):
    """A temporary working folder, home (HOME, for ``~``) and HMRCRITIC_HOME; the test checks ``work`` stays empty."""
    home = tmp_path / "userhome"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "hmhome"))
    w = tmp_path / "work"
    w.mkdir()
    monkeypatch.chdir(w)
    return w


def _scored():
    from hmrcritic.agent.api import ScoredGroup
    from hmrcritic.agent.schema import HypothesisScore

    scores = [HypothesisScore(index=i, motion_structure=5, physical_feasibility=5, image_alignment=5, overall=5 + i,
                              rationale="r") for i in range(2)]
    return ScoredGroup(group_id="g", scores=scores, ranking=[1, 0])


# --------------------------------------------------------------------------------------------- empty folders
@pytest.mark.parametrize("value", ["", " "])
@pytest.mark.parametrize("writer", ["write_report", "write_scores"])
def test_report_and_scores_refuse_an_empty_out_dir(work, writer, value):
    """``write_report(result, os.environ.get("OUT", ""))`` wrote ``report.html`` (``write_scores``: ``scores.json``)
    into the working folder, where the CLI's ``critique --out ""`` is refused; ``" "`` into a folder named by a
    space."""
    from hmrcritic.agent import api, report

    fn = report.write_report if writer == "write_report" else api.write_scores
    with pytest.raises(InputError, match="empty"):
        fn(_scored(), value)
    assert sorted(os.listdir(work)) == []


def test_run_demo_refuses_an_empty_out_dir(work, monkeypatch):
    """``run_demo(out_dir="")`` passed its checks as the working folder: the demo resets ``./memory`` (a folder of
    that name there is wiped), removes ``./scene_NN`` folders and writes summary.json and index.html beside the
    caller's files. The body model is the stand-in stage reached once the out folder is made."""
    import hmrcritic.hmr.body as body
    from hmrcritic.demo import run_demo

    def reached(*a, **k):
        raise Reached

    monkeypatch.setattr(body, "load_body_model", reached)
    with pytest.raises(InputError, match="empty"):
        run_demo(out_dir="", say=lambda _line: None)


def test_train_base_refuses_an_empty_out_dir(work, monkeypatch):
    """``train_base(cfg, "")`` trained into the working folder: state.pt, log.jsonl, model.pt and its lock there."""
    import hmrcritic.hmr.train as train

    def reached(cfg, out_dir, *a, **k):
        raise Reached(str(out_dir))

    monkeypatch.setattr(train, "_train", reached)
    with pytest.raises(InputError, match="empty"):
        train.train_base(train.TrainConfig(steps=1), "")
    assert [p for p in os.listdir(work) if not p.startswith(".train-base.lock")] == []


@pytest.mark.parametrize("arg", ["workdir", "memory_dir"])
def test_evaluate_critic_refuses_an_empty_folder(work, monkeypatch, arg):
    """``workdir=""``: the evaluation's memory, starter memory, key file and result.json went into the working
    folder; ``memory_dir=""``: the working folder was read as the explored memory (it "is a folder")."""
    from hmrcritic.agent import evaluate_critic as ec

    def reached(workdir, key):
        raise Reached(str(workdir))

    monkeypatch.setattr(ec, "_claim_workdir", reached)
    kwargs = {arg: ""} if arg == "workdir" else {"memory_dir": "", "workdir": str(work.parent / "wd")}
    with pytest.raises(InputError, match="empty"):
        ec.evaluate_critic(num_groups=2, warmup_groups=2, **kwargs)


def test_learning_curve_refuses_an_empty_out_dir(work, monkeypatch):
    """``learning_curve(mem, out_dir="")`` passed its folder check as the working folder, where it writes
    learning_curve.json/.png and the partial file."""
    from hmrcritic.agent import learning_curve as lc

    def reached(out):
        raise Reached(str(out))

    monkeypatch.setattr(lc, "_check_out_dir", reached)
    with pytest.raises(InputError, match="empty"):
        lc.learning_curve(str(work.parent / "mem"), out_dir="")


# --------------------------------------------------------------------------------- "~" not expanded: a "~" folder
def test_train_base_expands_the_home_in_out_dir(work, monkeypatch):
    """``train_base(cfg, "~/runs/base")`` trained into ``./~/runs/base`` (run_demo, write_report, critique_group's
    run_dir, load_model all expand it)."""
    import hmrcritic.hmr.train as train

    seen = []

    def reached(cfg, out_dir, *a, **k):
        seen.append(Path(out_dir))
        raise Reached

    monkeypatch.setattr(train, "_train", reached)
    with pytest.raises(Reached):
        train.train_base(train.TrainConfig(steps=1), "~/runs/base")
    assert seen == [Path(os.environ["HOME"]) / "runs" / "base"]
    assert not (work / "~").exists()


@pytest.mark.parametrize("out", ["", "~/prefs"])
def test_export_out_is_neither_the_working_folder_nor_a_tilde_folder(work, monkeypatch, out):
    """``export(ExportConfig(out=os.environ.get("OUT", ""), ...))`` wrote its lock, dataset.json, the manifest and
    the shards into the working folder (the CLI's ``export --out ""`` is refused); ``out="~/prefs"`` into
    ``./~/prefs``. The header write is the stand-in stage, reached once the folder is made and locked."""
    import hmrcritic.alignment.export as ex
    from hmrcritic.hmr.data import load_split

    def reached(folder, header):
        raise Reached(str(folder))

    monkeypatch.setattr(ex, "model_hash", lambda model: ("m" * 16, 10))
    monkeypatch.setattr(ex, "frozen_memory", lambda cfg: (None, "none"))
    monkeypatch.setattr(ex, "_check_or_write_header", reached)
    scene = load_split("test", n=1)[0]
    if not out:
        with pytest.raises(InputError, match="empty"):
            ex.export(ex.ExportConfig(out=out, split="test", use_memory=False), inputs=[scene])
    else:
        with pytest.raises(Reached) as got:
            ex.export(ex.ExportConfig(out=out, split="test", use_memory=False), inputs=[scene])
        assert Path(str(got.value)) == Path(os.environ["HOME"]) / "prefs"
    assert sorted(os.listdir(work)) == []


def test_export_config_refuses_an_empty_memory_folder(work):
    """``ExportConfig(memory="")`` (``memory=os.environ.get("MEM", "")``) scored every group against the default
    memory folder (``_memory_folder``: ``if cfg.memory``), as ``chroma_url=""`` did before 7820ee7; the CLI's
    ``--memory-dir ""``, ``MemoryStore("")`` and ``critique_group(memory="")`` are refused."""
    import hmrcritic.alignment.export as ex

    with pytest.raises(InputError, match="empty"):
        ex.ExportConfig(out=str(work.parent / "ds"), split="test", memory="")


def test_finetune_expands_the_home_in_out(work, monkeypatch):
    """``FinetuneConfig(data=..., out="~/aligned.pt")`` wrote the state, the log and the aligned model into
    ``./~/`` (its ``model`` is expanded, its ``out`` was not). The foreign-out check is the stand-in stage."""
    import hmrcritic.alignment.finetune as ft

    def reached(out, data):
        raise Reached(str(out))

    monkeypatch.setattr(ft, "_refuse_foreign_out", reached)
    with pytest.raises(Reached) as got:
        ft.finetune(ft.FinetuneConfig(data=str(work.parent / "ds"), out="~/aligned.pt", steps=1))
    assert Path(str(got.value)) == Path(os.environ["HOME"]) / "aligned.pt"


def test_evaluate_critic_expands_the_home_in_workdir(work, monkeypatch):
    """``evaluate_critic(workdir="~/ev")`` kept its memory and results in ``./~/ev`` (``memory_dir`` is
    expanded, ``workdir`` was not)."""
    from hmrcritic.agent import evaluate_critic as ec

    def reached(workdir, key):
        raise Reached(str(workdir))

    monkeypatch.setattr(ec, "_claim_workdir", reached)
    with pytest.raises(Reached) as got:
        ec.evaluate_critic(num_groups=2, warmup_groups=2, workdir="~/ev")
    assert Path(str(got.value)) == Path(os.environ["HOME"]) / "ev"
    assert not (work / "~").exists()


def test_learning_curve_expands_the_home_in_out_dir(work, monkeypatch):
    from hmrcritic.agent import learning_curve as lc

    def reached(out):
        raise Reached(str(out))

    monkeypatch.setattr(lc, "_check_out_dir", reached)
    with pytest.raises(Reached) as got:
        lc.learning_curve(str(work.parent / "mem"), out_dir="~/lc")
    assert Path(str(got.value)) == Path(os.environ["HOME"]) / "lc"


def test_sample_from_user_expands_the_home(work):
    """``sample_from_user("~/photo.png", "~/photo.json")`` said "~/photo.png: image file not found" for a file that
    is there (load_model and load_body_model expand ``~``; from Python no shell does)."""
    from PIL import Image

    from hmrcritic.hmr.data import sample_from_user

    home = Path(os.environ["HOME"])
    Image.new("RGB", (64, 48)).save(home / "photo.png")
    kp = [[32.0 + i, 10.0 + 2 * i, 0.9] for i in range(17)]
    import json

    (home / "photo.json").write_text(json.dumps({"keypoints": kp}))
    s = sample_from_user("~/photo.png", "~/photo.json")
    assert s.sample_id == "photo"


# ------------------------------------------------------------------------------- "~nouser": a bare RuntimeError
def _nouser_calls(work):
    from hmrcritic.agent import api, report
    from hmrcritic.agent.evaluate_critic import evaluate_critic
    from hmrcritic.alignment.finetune import FinetuneConfig, finetune
    from hmrcritic.demo import run_demo
    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.diffusion import load_model
    from hmrcritic.memory.store import MemoryStore

    bad = "~hmrcritic-no-such-user/x"
    return {
        "load_body_model": lambda: load_body_model(bad),
        "load_model": lambda: load_model(bad),
        "MemoryStore": lambda: MemoryStore(bad),
        "write_report": lambda: report.write_report(_scored(), bad),
        "write_scores": lambda: api.write_scores(_scored(), bad),
        "run_demo": lambda: run_demo(out_dir=bad, say=lambda _line: None),
        "critique_group run_dir": lambda: api.critique_group(None, None, run_dir=bad),
        "evaluate_critic memory_dir": lambda: evaluate_critic(memory_dir=bad, workdir=str(work.parent / "wd")),
        "finetune model": lambda: finetune(FinetuneConfig(data=str(work.parent / "ds"), out=str(work.parent / "m.pt"),
                                                          model=bad)),
    }


@pytest.mark.parametrize("name", ["load_body_model", "load_model", "MemoryStore", "write_report", "write_scores",
                                  "run_demo", "critique_group run_dir", "evaluate_critic memory_dir",
                                  "finetune model"])
def test_a_tilde_user_of_no_account_is_one_input_error(work, name):
    """``config.expand_user`` turns it into one InputError line for the CLI; from Python these raised
    ``RuntimeError: Could not determine home directory.``, which is no HMRCriticError."""
    with pytest.raises(HMRCriticError, match="no user"):
        _nouser_calls(work)[name]()
    assert sorted(os.listdir(work)) == []


@pytest.mark.parametrize("root", ["", "~/data"])
def test_load_split_root_is_neither_the_working_folder_nor_a_tilde_folder(work, monkeypatch, root):
    """``load_split("test", root="")`` generated (and then read) the split in ``./test``; ``root="~/data"`` in
    ``./~/data/test``. The manifest read is the stand-in stage: it names the folder the split would be made in."""
    from hmrcritic.hmr import data

    def reached(folder):
        raise Reached(str(folder))

    monkeypatch.setattr(data, "_manifest", reached)
    if not root:
        with pytest.raises(InputError, match="empty"):
            data.load_split("test", root=root)
    else:
        with pytest.raises(Reached) as got:
            data.load_split("test", root=root)
        assert Path(str(got.value)) == Path(os.environ["HOME"]) / "data" / "test"


class _ConstJudge:
    """Scores every hypothesis alike: a quick critique with no prior, renders or memory."""

    name = "const"

    def critique(self, ctx):
        from hmrcritic.agent.schema import GroupCritique, HypothesisScore

        return GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5,
                                                     image_alignment=5, overall=5, rationale="same")
                                     for i in range(ctx.num_hypotheses)])


def test_critique_group_refuses_an_empty_run_dir(work):
    """``critique_group(..., run_dir="")`` wrote inputs.npz, renders and arrays into the working folder, and
    recorded it as the run folder: ``discard_run(result)`` of a ``keep=False`` critique then removes the folder
    whole when the working folder is under the temp folder (a notebook started there)."""
    from test_agent_graph import make_group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.state import AgentConfig

    s, h, _ = make_group(3, sample_id="empty-run-dir")
    with pytest.raises(InputError, match="empty"):
        critique_group(s, h, judge=_ConstJudge(), config=AgentConfig(render=False, use_memory=False), run_dir="",
                       keep=False)
    assert sorted(os.listdir(work)) == []
