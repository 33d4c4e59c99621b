"""Session 13 review of the alignment area (objectives, finetuner, dataset reader, reproduce): defects found in
review, each shown by a test that failed before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_finetune import write_dataset

from hmrcritic.alignment import dataset as D
from hmrcritic.errors import InputError


def test_a_manifest_line_garbled_into_non_utf8_bytes_is_dropped_not_a_crash(tmp_path):
    """A crash mid-append (or an editor saving in another encoding) can leave bytes that are not UTF-8 in
    manifest.jsonl. Reading it raised UnicodeDecodeError: finetune, ``export validate`` and the export's own
    repair on resume all stopped there, so the export could never be resumed. Such a line is torn like any
    other: dropped by the reader and the repair, reported by validate."""
    root = write_dataset(tmp_path / "prefs", n_groups=3)
    with open(root / D.MANIFEST, "ab") as fh:
        fh.write(b'{"group_id": "in9", "rationale": "\xff\xfe torn')
    assert [r.group_id for r in D.read_manifest(root)] == ["in0", "in1", "in2"]
    assert len(D.GroupPreferenceDataset(root)) == 3
    rep = D.validate_dataset(root)
    assert not rep.ok and rep.groups == 3 and any("manifest.jsonl:4" in e for e in rep.errors)
    kept, dropped = D.repair_manifest(root)
    assert [r.group_id for r in kept] == ["in0", "in1", "in2"] and dropped == 1
    (root / D.MANIFEST).read_text(encoding="utf-8")  # rewritten without the garbage
    assert D.validate_dataset(root).ok


@pytest.mark.parametrize("t_min", ["-1", "100000"])
def test_reproduce_refuses_a_bad_t_min_before_exploring(tmp_path, monkeypatch, t_min):
    """``--set t_min=…`` outside [0, T) was only refused by the finetune stage, after the exploration and the
    export had run (most of an hour in the ``full`` preset), unlike every other preset field, which is checked
    up front."""
    from hmrcritic.alignment import reproduce as rp

    def explore(*a, **k):
        raise AssertionError("explored before the bad t_min was refused")

    monkeypatch.setattr(rp, "_explore", explore)
    with pytest.raises(InputError, match="t_min"):
        rp.reproduce("quick", out_dir=tmp_path / "run", overrides={"t_min": t_min}, progress=False)


@pytest.fixture
def stand_in_stages(tmp_path, monkeypatch):
    """``reproduce`` with stand-ins for its stages (a tiny base model, an explore that only makes the memory
    folder, an export that writes a small dataset, a finetune that checks its data, a constant evaluation) and
    code digests that do not move while other files of the checkout are edited: for tests of its cache
    decisions. Returns the lists of explore and export calls."""
    import shutil
    from types import SimpleNamespace

    from test_finetune import TINY

    import hmrcritic.agent.evaluate_critic as ec
    import hmrcritic.alignment.export as ex
    import hmrcritic.alignment.finetune as ft
    import hmrcritic.hmr.diffusion as hd
    import hmrcritic.hmr.evaluate as hev
    from hmrcritic.alignment import reproduce as rp
    from hmrcritic.hmr.diffusion import HMRDiffusion

    torch.manual_seed(0)
    tiny = HMRDiffusion(TINY)
    calls = {"explore": [], "export": []}

    def explore(preset, memory_dir, *a):
        calls["explore"].append(str(memory_dir))
        memory_dir.mkdir(parents=True, exist_ok=True)
        (memory_dir / "chroma.sqlite3").write_bytes(b"")
        return {"engine": "stand-in", "version": "v0", "stats": {}}

    def export(cfg, progress=None):
        calls["export"].append(cfg.out)
        scratch = write_dataset(tmp_path / "scratch" / str(len(calls["export"])), n_groups=2)
        shutil.copytree(scratch, cfg.out, dirs_exist_ok=True)
        return SimpleNamespace(groups=2, model_dump=lambda: {"groups": 2, "failures": 0})

    def finetune(cfg, progress=None):
        D.read_header(cfg.data)  # AssetError without the dataset
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_bytes(b"")
        return cfg.out

    monkeypatch.setattr(hd, "load_model", lambda *a, **k: tiny)
    monkeypatch.setattr(rp, "_explore", explore)
    monkeypatch.setattr(rp, "stage_code_digest", lambda stage, root=None: stage)
    monkeypatch.setattr(ec, "code_digest", lambda: "code")
    monkeypatch.setattr(ex, "export", export)
    monkeypatch.setattr(ft, "finetune", finetune)
    monkeypatch.setattr(hev, "evaluate_model", lambda *a, **k: {"n_samples": 1})
    return calls


def test_reproduce_re_exports_when_the_cached_export_folder_is_gone(tmp_path, stand_in_stages):
    """The export stage was skipped whenever its record ``export-<key>.json`` existed, even with the dataset
    folder ``wild-<key>`` deleted (to save space, or by hand): every finetune not yet cached then failed with
    "not a group preference dataset". Explore checks its memory folder and finetune its checkpoint; export now
    checks its dataset."""
    import shutil

    from hmrcritic.alignment import reproduce as rp

    out = tmp_path / "run"
    rp.reproduce("quick", out_dir=out, overrides={"objectives": "gpa", "critic_top1": "false"}, progress=False)
    wild = next(out.glob("wild-*"))
    shutil.rmtree(wild)
    res = rp.reproduce("quick", out_dir=out, overrides={"objectives": "gpa,sft", "critic_top1": "false"},
                       progress=False)
    assert [r["model"] for r in res["rows"]] == ["base", "gpa", "sft"]
    assert stand_in_stages["export"] == [str(wild), str(wild)] and (wild / D.HEADER).exists()


def test_reproduce_with_another_vlm_does_not_reuse_the_first_vlms_results(tmp_path, monkeypatch, stand_in_stages):
    """With ``judge=vlm`` the cache keys named the judge but not which VLM answers (HMRCRITIC_VLM_MODEL /
    endpoint): after switching models every stage said "done before" and the table showed the first model's
    memory, scores and aligned models. (``hmrcritic export`` itself refuses such a resume; reproduce skipped the
    export.) The builtin judge's keys are unchanged."""
    from hmrcritic.alignment import reproduce as rp

    out = tmp_path / "run"
    over = {"objectives": "gpa", "critic_top1": "false", "judge": "vlm"}
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-a")
    rp.reproduce("quick", out_dir=out, overrides=over, progress=False)
    rp.reproduce("quick", out_dir=out, overrides=over, progress=False)  # the same VLM: cached
    assert len(stand_in_stages["explore"]) == 1 and len(stand_in_stages["export"]) == 1
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-b")
    rp.reproduce("quick", out_dir=out, overrides=over, progress=False)
    assert len(set(stand_in_stages["explore"])) == 2 and len(set(stand_in_stages["export"])) == 2


def test_finetune_does_not_resume_a_state_trained_on_other_data_at_the_same_path(tmp_path):
    """Resuming compared the settings (the --data *path* among them) and the base model, not the data: after a
    re-export into the same folder (another judge, another seed, an export resumed meanwhile) the same command
    silently continued the old state, giving one checkpoint trained on two datasets. The state now records a
    hash of the dataset's records; other data is refused like other settings."""
    import shutil

    from test_finetune import TINY

    from hmrcritic.alignment.finetune import FinetuneConfig, finetune
    from hmrcritic.hmr.diffusion import HMRDiffusion, save_model

    torch.manual_seed(0)
    base = save_model(HMRDiffusion(TINY), tmp_path / "base.pt", extra={})
    data = write_dataset(tmp_path / "prefs", n_groups=3, N=4, seed=0)
    kw = {"data": str(data), "model": str(base), "out": str(tmp_path / "a.pt"), "batch_size": 2,
          "num_generations": 3, "checkpoint_every": 1}
    finetune(FinetuneConfig(steps=2, **kw))
    finetune(FinetuneConfig(steps=3, **kw))  # the same data: resumes
    shutil.rmtree(data)
    write_dataset(data, n_groups=3, N=4, seed=1)  # re-exported: same path, other groups
    with pytest.raises(InputError, match="other data"):
        finetune(FinetuneConfig(steps=4, **kw))
    finetune(FinetuneConfig(steps=4, resume=False, **kw))  # what the message offers


def test_reproduce_with_other_split_sizes_does_not_reuse_cached_results(tmp_path, monkeypatch, stand_in_stages):
    """HMRCRITIC_SPLIT_SIZE_SCALE gives other splits (other groups, memories, test scenes), but no cache key held
    the split sizes: a second run on other sizes said "done before" for every stage; without critic_top1 the
    evaluation key held no data identity at all. Default sizes keep the keys they had."""
    from hmrcritic.alignment import reproduce as rp

    out = tmp_path / "run"
    over = {"objectives": "gpa", "critic_top1": "false"}
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.5")
    rp.reproduce("quick", out_dir=out, overrides=over, progress=False)
    evals = len(list((out / "eval").glob("*.json")))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.25")
    rp.reproduce("quick", out_dir=out, overrides=over, progress=False)
    assert len(set(stand_in_stages["explore"])) == 2
    assert len(list((out / "eval").glob("*.json"))) == 2 * evals
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "1")
    assert rp._split_sizes() is None
