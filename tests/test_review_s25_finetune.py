"""Session 25 review (finetuner, objectives, reproduce's loop). Real parts throughout: the tiny diffusion model, the
dataset writer and reader, the finetuner, save_model/load_model."""

from __future__ import annotations

import json

import pytest
import test_review_s24_alignment as s24

from hmrcritic.alignment.finetune import TrainingDiverged, finetune

# the same tiny base checkpoint and preference dataset as session 24's alignment tests (module-scoped fixtures)
base_ckpt, data_dir, _cfg = s24.base_ckpt, s24.data_dir, s24._cfg


def _strict(text: str) -> list[dict]:
    """JSON lines as a strict reader takes them (no NaN / Infinity tokens)."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines() if line.strip()]


def test_a_gradient_that_overflows_stops_the_run_instead_of_a_silent_zero_step(data_dir, base_ckpt, tmp_path):
    """gpa_linear with a huge β: the loss stays finite (about 1e21) but the gradient norm overflows to inf. Clipping
    by an infinite norm multiplied every gradient by 0 (or made an inf one NaN): the run went on to its last step
    training nothing, saved the base model as the aligned checkpoint, and logged "grad_norm": Infinity (not JSON).
    It now stops as a diverging loss does, before the step is applied; the log stays strict JSON."""
    out = tmp_path / "huge-beta.pt"
    with pytest.raises(TrainingDiverged, match=r"gradient norm is inf at step 1 .*lower --beta"):
        finetune(_cfg(data_dir, base_ckpt, out, objective="gpa_linear", beta=1e30, steps=3))
    assert not out.exists()  # no "aligned" checkpoint of a run that trained nothing
    log = out.with_name(out.name + ".log.jsonl")
    assert _strict(log.read_text(encoding="utf-8") if log.exists() else "") == []


def test_reproduce_expands_a_home_relative_model_path(base_ckpt, tmp_path, monkeypatch):
    """`hmrcritic reproduce --model=~/base.pt` (the shell leaves `~` after `=` alone): reproduce resolved the path
    before load_model could expand `~`, so it looked for ./~/base.pt and stopped on a missing checkpoint, where
    finetune, sample and evaluate take the same path. The base loads now: the run gets as far as checking t_min
    against the model's T (100 for the tiny model), a refusal that comes before any exploring."""
    from hmrcritic.alignment.reproduce import reproduce
    from hmrcritic.errors import InputError

    home = tmp_path / "home"
    home.mkdir()
    (home / "base.pt").write_bytes(base_ckpt.read_bytes())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"t_min must be in \[0, 100\)"):
        reproduce("quick", out_dir=tmp_path / "run", model="~/base.pt", overrides={"t_min": "500"}, progress=False)
    assert not (tmp_path / "~").exists()


def test_reproduce_writes_strict_json_when_an_exploration_round_has_no_mean(base_ckpt, tmp_path, monkeypatch):
    """A round of the exploration whose groups could not be ranked (a VLM that scores every hypothesis alike) keeps
    mean_spearman NaN. reproduce copied the exploration's summary into explore-<key>.json and results.json as the bare
    word NaN, which is not JSON (jq, JavaScript and strict parsers refuse the whole file), where `--json` prints null
    and evaluate-critic's result.json is strict. A tiny run (no exploration rounds, one SFT step) is made, its
    exploration record given such a round, and the run repeated from its caches: both files are strict JSON."""
    from hmrcritic.alignment.reproduce import reproduce

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")  # wild 10, test 5 scenes
    tiny = {"explore_rounds": "0", "wild_groups": "2", "num_generations": "2", "sample_steps": "1", "steps": "1",
            "batch_size": "2", "eval_limit": "1", "eval_generations": "2", "eval_batch": "1", "critic_top1": "false",
            "objectives": "sft"}
    out = tmp_path / "run"
    reproduce("quick", out_dir=out, model=base_ckpt, overrides=tiny, progress=False)
    (rec_path,) = out.glob("explore-*.json")
    rec = json.loads(rec_path.read_text(encoding="utf-8"))
    rec["summary"] = {"rounds": [{"round": 1, "groups": 2, "mean_spearman": float("nan")}]}
    rec_path.write_text(json.dumps(rec), encoding="utf-8")
    res = reproduce("quick", out_dir=out, model=base_ckpt, overrides=tiny, progress=False)
    assert res["rows"][1]["model"] == "sft"  # every stage read back from the run folder
    (strict,) = _strict((out / "results.json").read_text(encoding="utf-8").replace("\n", " "))
    assert strict["explore"]["summary"]["rounds"][0]["mean_spearman"] is None
    assert strict["rows"] == json.loads(json.dumps(res["rows"]))

