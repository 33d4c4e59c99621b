"""Review s31: a logic read of the export (hmrcritic/alignment/export.py) and reproduce, one test per finding."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_export import cfg_for, make_inputs, model_path  # noqa: F401  (fixture)

from hmrcritic.errors import InputError
from hmrcritic.memory import MemoryStore


def test_the_memory_watch_follows_a_memory_named_with_a_tilde(tmp_path, model_path, monkeypatch):  # noqa: F811
    """``ExportConfig(memory="~/mem")`` (the Python API, or ``--memory-dir=~/mem``, which the shell leaves alone):
    the workers and the header open ``$HOME/mem`` (``MemoryStore`` expands ``~``), but the memory watch read the
    write sequence and the write lock of a folder literally named ``~`` under the working folder, which never
    changes — an exploration writing the memory meanwhile went unnoticed, and the dataset mixed two memories
    under one version. It must stop as it does for the same memory named by its full path."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    mem = home / "mem"
    MemoryStore(mem).close()
    monkeypatch.setenv("HMRCRITIC_TEST_MEMORY", str(mem))
    cfg = cfg_for(tmp_path / "ds", model_path, use_memory=True, memory="~/mem",
                  score_group="test_review_s13_concurrency:writing_score")
    with pytest.raises(InputError, match="changed while this export ran"):
        from hmrcritic.alignment.export import export

        export(cfg, inputs=make_inputs(3))
    assert not (cwd / "~").exists()  # nothing made under the working folder


def _stub_stages(monkeypatch, calls: list[str]) -> None:
    """reproduce's stages replaced by stubs that write what the next stage and the cache check read, and say
    which ran: the cache keys are what is under test, not the stages."""
    import types

    from hmrcritic.alignment import export as ex
    from hmrcritic.alignment import finetune as ft
    from hmrcritic.alignment import reproduce as rp
    from hmrcritic.hmr import diffusion, evaluate

    base = types.SimpleNamespace(checkpoint_path="base.pt", num_timesteps=1000)
    monkeypatch.setattr(diffusion, "load_model", lambda path=None: base)
    monkeypatch.setattr(ft, "state_dict_hash", lambda model: "hash0")

    def explore(p, memory_dir, model, key, log):
        calls.append("explore")
        memory_dir.mkdir(parents=True, exist_ok=True)
        (memory_dir / "chroma.sqlite3").write_bytes(b"")
        return {"engine": "stub", "version": "v1", "stats": {}}

    def export(cfg, progress=None):
        calls.append("export")
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "dataset.json").write_text("{}")
        return types.SimpleNamespace(groups=1, failures=0, model_dump=lambda: {"groups": 1, "failures": 0})

    def finetune(cfg, progress=None):
        calls.append("finetune")
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_bytes(b"")

    def evaluate_model(mdl, **kw):
        calls.append("evaluate")
        return {"pa_mpjpe_mean_mm": 1.0, "n_samples": 1}

    monkeypatch.setattr(rp, "_explore", explore)
    monkeypatch.setattr(rp, "plot_results", lambda result, path: path)
    monkeypatch.setattr(rp, "CriticSelector", lambda *a, **k: None)
    monkeypatch.setattr(rp, "critic_quality", lambda *a, **k: {})
    monkeypatch.setattr(ex, "export", export)
    monkeypatch.setattr(ft, "finetune", finetune)
    monkeypatch.setattr(evaluate, "evaluate_model", evaluate_model)


@pytest.mark.parametrize("critic_top1", [True, False])
def test_reproduce_does_not_reuse_stages_of_another_body_model(tmp_path, monkeypatch, critic_top1):
    """``HMRCRITIC_BODY_MODEL`` set (or its SMPL file replaced) between two ``reproduce`` runs into one --out: the
    splits are regenerated with the other body (``load_split``), every measure the critic reads and every metric
    of the evaluation pose the hypotheses with it, and the critique agent keys its threads by it
    (``agent.api._body_identity``), yet no cache key of reproduce named it: the second run reused the first
    body's memory, dataset, finetunes and evaluations and printed their table as this body's."""
    from hmrcritic.agent import api
    from hmrcritic.alignment.reproduce import reproduce

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    calls: list[str] = []
    _stub_stages(monkeypatch, calls)
    run = dict(out_dir=tmp_path / "run", progress=False,
               overrides={"objectives": "sft", "critic_top1": str(critic_top1)})
    monkeypatch.setattr(api, "_body_identity", lambda: "")  # the mannequin
    reproduce("quick", **run)
    assert calls == ["explore", "export", "finetune", "evaluate", "evaluate"]
    calls.clear()
    reproduce("quick", **run)  # same body: everything cached
    assert calls == []
    monkeypatch.setattr(api, "_body_identity", lambda: "body=" + "ab" * 32)  # a SMPL file
    reproduce("quick", **run)
    assert calls == ["explore", "export", "finetune", "evaluate", "evaluate"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
