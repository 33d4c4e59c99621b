"""Session 23 review (alignment): the export's stop on an unusable VLM endpoint as validate, finetune and a re-run see
it. Real parts throughout (the tiny diffusion model, the export, the dataset reader, the finetuner); the only double
is the OpenAI-compatible endpoint on 127.0.0.1 (tests/openai_stub_server.py)."""

from __future__ import annotations

import pytest
from openai_stub_server import StubOpenAIServer
from test_export import cfg_for, make_inputs, tiny_model
from test_review_s22_vlmdown import SCORER, vlm_env

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import export
from hmrcritic.alignment.finetune import FinetuneConfig, finetune
from hmrcritic.alignment.reproduce import make_preset
from hmrcritic.errors import InputError, JudgeError
from hmrcritic.io import read_jsonl


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def test_endpoint_failures_on_the_last_groups_finish_the_export(model_path, tmp_path, monkeypatch):
    """The stop after 3 endpoint failures in a row is there to spare the groups still to come. When the third was
    the export's last group there were none, yet it stopped all the same: every input tried, the dataset left
    marked unfinished (finetune: "did not finish (interrupted or still running)"), no pairs.jsonl, and a JudgeError
    telling the user to re-run to "continue". It ends as any export with failures does."""
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        srv.push("good", "good")  # two groups scored, then the key is refused for the last three
        s = export(cfg_for(tmp_path / "ds", model_path, judge="vlm", score_group=SCORER), inputs=make_inputs(5))
        assert len(srv.requests) == 5
    root = tmp_path / "ds"
    assert (s.groups, s.new_groups, s.failures) == (2, 2, 3)
    header = D.read_header(root)
    assert header.counts["finished"] is True and header.counts["failures_open"] == 3
    assert len(read_jsonl(root / D.PAIRS)) == s.pairs == 2
    fails = read_jsonl(root / D.FAILURES)
    assert [f["stage"] for f in fails] == ["score"] * 3 and all(f["endpoint_unusable"] for f in fails)
    rep = D.validate_dataset(root)
    assert rep.ok and not any("did not finish" in w for w in rep.warnings), rep


def test_groups_not_attempted_are_not_reported_as_tried_and_failed(model_path, tmp_path, monkeypatch, capsys):
    """After the stop, validate and finetune said "N input(s) failed" of every failures.jsonl record, the groups the
    export never sent included (here 2 of 5): they now say how many were not attempted, and why. A re-run then
    tries each of them once and writes no group twice."""
    root = tmp_path / "ds"
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        srv.push("good", "good")
        cfg = cfg_for(root, model_path, judge="vlm", score_group=SCORER)
        inputs = make_inputs(7)
        with pytest.raises(JudgeError, match="export stopped"):
            export(cfg, inputs=inputs)
        rep = D.validate_dataset(root)
        assert any("5 input(s) failed" in w and "2 of them were not attempted" in w and "3 were tried and failed"
                   in w for w in rep.warnings), rep.warnings

        ft = FinetuneConfig(data=str(root), model=str(model_path), out=str(tmp_path / "a.pt"), steps=1, batch_size=2,
                            num_generations=4, threads=1)
        finetune(ft, progress=True)
        err = capsys.readouterr().err
        assert "5 input(s) of the export" in err and "2 of them were not attempted" in err, err

        srv.default = "good"
        n_before = len(srv.requests)
        s = export(cfg, inputs=inputs)
        assert len(srv.requests) - n_before == 5  # the 3 failed and the 2 not attempted, each once
    assert (s.done_before, s.new_groups, s.groups, s.failures) == (2, 5, 7, 0)
    ids = [r.group_id for r in D.read_manifest(root)]
    assert len(ids) == len(set(ids)) == 7
    assert not any("input(s) failed" in w for w in D.validate_dataset(root).warnings)


def test_reproduce_refuses_a_gpa_row_with_no_loss_before_any_work():
    """`--set gpa_weight=0` (a plain-denoising control for the gpa row) left gpa_no_base_loss with both loss weights
    0, which the finetune refuses: only when that row's finetune started, after the exploration, the export and the
    finetunes before it (most of an hour in `full`). The preset refuses it now, naming the row."""
    with pytest.raises(InputError, match=r"gpa_weight is 0: objective\(s\) \['gpa_no_base_loss'\]"):
        make_preset("quick", {"gpa_weight": "0"})
    with pytest.raises(InputError, match=r"\['gpa', 'gpa_linear', 'gpa_no_base_loss'\]"):
        make_preset("quick", {"gpa_weight": "0", "base_loss_weight": "0"})
    # what the finetune accepts, the preset accepts: each listed row then trains on something
    p = make_preset("quick", {"gpa_weight": "0", "objectives": "gpa,gpa_linear,dpo,sft"})
    for obj in p.objectives:
        FinetuneConfig(data="d", out="o.pt", objective=obj, gpa_weight=p.gpa_weight,
                       base_loss_weight=p.base_loss_weight)
