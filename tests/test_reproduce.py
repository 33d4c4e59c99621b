"""``hmrcritic reproduce``: the whole loop (explore → export → finetune ×5 → evaluate ×6 → table) on tiny
splits with a tiny base model trained here, its resumability and its outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hmrcritic.errors import InputError

CALIBRATION_GROUPS = 8  # groups the exploration's score calibration is fitted on here (explore's default: 32)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny splits in a private data folder and a tiny base checkpoint (a few training steps). The exploration
    fits its score calibration on 8 groups instead of 32 (speed only: reproduce reads the count from explore's
    signature, samples that many more groups, and the fit still runs — see test_quick_run_produces_the_main_table)."""
    import functools

    from hmrcritic.agent import explore as ex

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("repro")
    mp.setenv("HMRCRITIC_DATA", str(root / "data"))
    mp.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")  # train 100, wild 10, test 5
    mp.setattr(ex, "explore", functools.partial(ex.explore, calibration_groups=CALIBRATION_GROUPS))
    from hmrcritic.hmr.diffusion import DiffusionConfig
    from hmrcritic.hmr.train import TrainConfig, train_base

    cfg = TrainConfig(
        steps=30,
        batch_size=32,
        threads=2,
        warmup=5,
        log_every=10,
        ckpt_every=1000,
        model=DiffusionConfig(d_model=32, layers=1, heads=2),
    )
    model = train_base(cfg, root / "base")
    yield {"root": root, "model": model}
    mp.undo()


@pytest.fixture(scope="module")
def first_run(env):
    from hmrcritic.alignment.reproduce import reproduce

    lines: list[str] = []
    res = reproduce("quick", out_dir=env["root"] / "run", model=env["model"], progress=lines.append)
    return res, lines


@pytest.mark.slow
def test_quick_run_produces_the_main_table(env, first_run):
    from hmrcritic.alignment.dataset import read_manifest, validate_dataset
    from hmrcritic.alignment.reproduce import ROW_KEYS, ROWS

    res, lines = first_run
    assert res["preset"] == "quick"
    # the exploration ended by fitting the memory's score calibration on the groups after the explored ones
    explore_rec = json.loads(next((env["root"] / "run").glob("explore-*.json")).read_text(encoding="utf-8"))
    assert explore_rec["summary"]["calibration"]["groups"] == CALIBRATION_GROUPS, explore_rec["summary"]
    assert [r["model"] for r in res["rows"]] == list(ROWS)
    for row in res["rows"]:
        assert set(row) == {"model", *ROW_KEYS}
        for k in ROW_KEYS:
            assert row[k] is not None and math.isfinite(row[k]), (row["model"], k)
        # oracle best-of-M ≤ critic top-1 and ≤ the mean over hypotheses, by definition
        assert row["pa_mpjpe_best_mm"] <= row["pa_mpjpe_top1_mm"] + 1e-6
        assert row["pa_mpjpe_best_mm"] <= row["pa_mpjpe_mean_mm"] + 1e-6
        assert 0.0 <= row["implausible_rate"] <= 1.0
    out = env["root"] / "run"
    for name in ("results.md", "results.json", "results.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert md.count("\n| ") == len(ROWS) + 1 and "PA-MPJPE critic top-1" in md
    assert json.loads((out / "results.json").read_text())["rows"] == res["rows"]
    # the exported wild dataset is valid, label-free, scored with the frozen (explored) memory
    wild = next(out.glob("wild-*"))
    assert validate_dataset(wild).ok
    recs = read_manifest(wild)
    assert recs and all(r.memory_version == res["memory_version"] for r in recs)
    assert res["explore"]["stats"]["prototypes"] > 0  # exploration wrote into the memory before freezing
    # aligned models differ from the base (finetuning did something) and from each other
    rows = {r["model"]: r for r in res["rows"]}
    assert len({rows[m]["pa_mpjpe_mean_mm"] for m in ROWS}) > 2
    assert any("finetune gpa_no_base_loss" in ln for ln in lines)


@pytest.mark.slow
def test_rerun_resumes_and_changed_setting_reruns_only_downstream(env, first_run):
    from hmrcritic.alignment.reproduce import reproduce

    res, _ = first_run
    lines: list[str] = []
    again = reproduce("quick", out_dir=env["root"] / "run", model=env["model"], progress=lines.append)
    assert again["rows"] == res["rows"]
    assert not any(("finetune" in ln or "evaluate" in ln) and "done before" not in ln for ln in lines)
    lines.clear()
    changed = reproduce("quick", out_dir=env["root"] / "run", model=env["model"], progress=lines.append,
                        overrides={"t_min": "100", "objectives": "gpa,sft"})
    text = "\n".join(lines)
    assert "explore: done before" in text and "export: done before" in text
    assert "evaluate base: done before" in text
    assert "finetune gpa: 6 steps" in text  # a GPA-only setting re-trains GPA ...
    assert "finetune sft: done before" in text and "evaluate sft: done before" in text  # ... not the baselines
    assert [r["model"] for r in changed["rows"]] == ["base", "gpa", "sft"]
    assert changed["rows"][0] == res["rows"][0]
    assert changed["rows"][2] == next(r for r in res["rows"] if r["model"] == "sft")
    assert changed["rows"][1] != next(r for r in res["rows"] if r["model"] == "gpa")


def test_a_killed_baseline_resumes_after_a_gpa_only_change(env, first_run):
    """DPO/SFT ignore t_min, gpa_weight, the base loss (and SFT β): their cache key leaves those out, so their
    finetune must not record them either — a baseline killed after a state save used to be refused on resume
    ("belongs to a run with different settings") once a GPA-only setting had changed."""
    from hmrcritic.alignment.reproduce import reproduce

    run = env["root"] / "run"  # in place: the state records its paths; resuming ends where it was (same model)
    ckpt = next(p for p in (run / "models").glob("sft-*.pt") if not p.name.endswith(".state.pt"))
    ckpt.unlink()  # as a kill after the last state save leaves it
    ckpt.with_suffix(".json").unlink()
    lines: list[str] = []
    res = reproduce("quick", out_dir=run, model=env["model"], progress=lines.append,
                    overrides={"t_min": "100", "beta": "50", "gpa_weight": "0.2", "objectives": "sft"})
    assert ckpt.exists() and [r["model"] for r in res["rows"]] == ["base", "sft"]
    assert "finetune sft: 6 steps" in "\n".join(lines)  # re-run (resumed from its state), not "done before"


@pytest.mark.slow
def test_an_export_with_failed_groups_is_retried_by_the_next_run(env, first_run):
    """An export that finished with failed groups (a VLM that timed out, answered garbage) was cached as it was: a
    re-run of reproduce never retried them, and every finetune trained on the short dataset for good. The next run
    resumes the export (retrying only those), and the finetunes are keyed by what the dataset holds."""
    from hmrcritic.alignment.reproduce import reproduce

    run = env["root"] / "run"
    rec_path = next(run.glob("export-*.json"))
    rec = json.loads(rec_path.read_text(encoding="utf-8"))
    assert rec["failures"] == 0
    rec_path.write_text(json.dumps({**rec, "failures": 1}), encoding="utf-8")  # as a run with one failed group
    lines: list[str] = []
    res = reproduce("quick", out_dir=run, model=env["model"], progress=lines.append, overrides={"objectives": "sft"})
    text = "\n".join(lines)
    assert "(retrying 1 failed)" in text
    # the retry left nothing failed: the dataset is the complete one, and its finetune is the cached one
    assert json.loads(rec_path.read_text(encoding="utf-8"))["failures"] == 0
    assert "finetune sft: done before" in text and [r["model"] for r in res["rows"]] == ["base", "sft"]


def test_stage_keys_cover_the_code_each_stage_runs(tmp_path, monkeypatch):
    """An edited objective re-runs the finetunes (and what follows), not the export: the finetune, export and
    evaluation keys carry a digest of the source files each stage runs, so a cached checkpoint trained by old
    code is never reused after a change to the loss or the sampler."""
    import shutil

    import hmrcritic
    from hmrcritic.alignment import reproduce as rp

    pkg = Path(hmrcritic.__file__).parent
    files = sorted({rel for rels in rp._STAGE_CODE.values() for rel in rels})
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pkg / rel, tmp_path / rel)
    before = {stage: rp.stage_code_digest(stage, tmp_path) for stage in rp._STAGE_CODE}
    assert before == {stage: rp.stage_code_digest(stage) for stage in rp._STAGE_CODE}
    with open(tmp_path / "alignment/objectives.py", "a") as f:
        f.write("\n# an edit\n")
    after = {stage: rp.stage_code_digest(stage, tmp_path) for stage in rp._STAGE_CODE}
    assert after["finetune"] != before["finetune"]
    assert after["export"] == before["export"] and after["eval"] == before["eval"]
    # the digest is part of every objective's finetune key
    common = {"steps": 10}
    keys = {obj: rp._finetune_key("k", obj, common, 1.0) for obj in ("gpa", "dpo", "sft")}
    monkeypatch.setattr(rp, "stage_code_digest", lambda stage, root=None: "changed")
    assert all(rp._finetune_key("k", obj, common, 1.0) != k for obj, k in keys.items())


@pytest.mark.slow
def test_cli_json(env, first_run):
    import typer
    from typer.testing import CliRunner

    from hmrcritic.commands.reproduce import register

    app = typer.Typer()
    register(app)

    @app.command("noop")  # a second command keeps typer from collapsing the app into `reproduce` itself
    def _noop() -> None: ...

    r = CliRunner().invoke(
        app,
        ["reproduce", "--quick", "--out", str(env["root"] / "run"), "--model", str(env["model"]), "--json"],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["preset"] == "quick" and data["rows"] == first_run[0]["rows"]


def test_bad_settings_are_one_line_errors():
    from hmrcritic.alignment.reproduce import make_preset, parse_overrides

    with pytest.raises(InputError, match="unknown preset"):
        make_preset("huge")
    with pytest.raises(InputError, match="unknown preset field"):
        make_preset("quick", {"learning_rate": "1"})
    with pytest.raises(InputError, match="not a valid int"):
        make_preset("quick", {"steps": "many"})
    with pytest.raises(InputError, match="unknown objective"):
        make_preset("quick", {"objectives": "gpa,ppo"})
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_overrides(["lr"])
    # settings that only the last stages read are refused before the first stage runs
    for key, value, needle in (("eval_split", "bogus", "labelled split"), ("eval_split", "wild", "labelled split"),
                               ("eval_split", "train", "did not learn from"),
                               ("judge", "nope", "builtin or vlm"), ("lr", "nan", "lr must"), ("ema", "2", "ema must"),
                               ("beta", "-1", "beta must"), ("gpa_weight", "inf", "gpa_weight must")):
        with pytest.raises(InputError, match=needle):
            make_preset("quick", {key: value})
    p = make_preset("full", parse_overrides(["lr=3e-4", "t_min=none", "critic_top1=false"]))
    assert p.lr == 3e-4 and p.t_min is None and p.critic_top1 is False


def test_table_marks_changes_against_base(tmp_path):
    from hmrcritic.alignment.reproduce import ROW_KEYS, format_table, plot_results

    base = {"model": "base", **{k: 10.0 for k in ROW_KEYS}}
    gpa = {"model": "gpa", **{k: 8.5 for k in ROW_KEYS}}
    res = {"rows": [base, gpa], "preset": "quick", "settings": {}, "export": {}}
    md = format_table(res)
    assert "8.5 (-15.0%)" in md and "| base | 10.0 |" in md
    assert plot_results(res, tmp_path / "r.png").stat().st_size > 0
    torch.manual_seed(0)


def test_second_run_on_the_same_folder_is_refused(tmp_path):
    from filelock import FileLock

    from hmrcritic.alignment.reproduce import reproduce

    with FileLock(str(tmp_path / ".reproduce.lock")), pytest.raises(InputError, match="another `hmrcritic"):
        reproduce("quick", out_dir=tmp_path, progress=False)
