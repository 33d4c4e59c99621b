"""Review of the export and dataset format: a resume that mixes critics or exports, a validate that passes a
dataset that lost groups or holds another export's records, a Ray address's credentials in the summary, and a
finetune on an unfinished export. Scoring is ``test_export.fake_score`` (or a second critic below)."""

from __future__ import annotations

import json

import pytest
from test_export import cfg_for, fake_score, make_inputs, model_path  # noqa: F401  (fixture)

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment import export as E
from hmrcritic.alignment.export import export, format_summary
from hmrcritic.errors import InputError


def other_score(sample, hypotheses, **kw):
    """Another critic: fake_score's scores reversed (the best hypothesis of fake_score is the worst here)."""
    scored = fake_score(sample, hypotheses, **kw)
    for s in scored.scores:
        s.overall = 10.0 - s.overall
    return scored


def test_resuming_with_another_scorer_is_refused(model_path, tmp_path):  # noqa: F811
    """--scorer was not recorded: resuming an export with another critic mixed two critics' scores in one
    dataset under one judge name."""
    inputs = make_inputs(3)
    export(cfg_for(tmp_path / "ds", model_path, limit=2), inputs=inputs)
    with pytest.raises(InputError, match="scorer"):
        export(cfg_for(tmp_path / "ds", model_path, score_group="test_review_export:other_score"), inputs=inputs)
    assert len(D.read_manifest(tmp_path / "ds")) == 2
    again = export(cfg_for(tmp_path / "ds", model_path), inputs=inputs)  # the same scorer resumes
    assert (again.done_before, again.new_groups, again.groups) == (2, 1, 3)
    assert D.validate_dataset(tmp_path / "ds").ok


def test_validate_catches_a_finished_dataset_that_lost_groups(model_path, tmp_path):  # noqa: F811
    """A manifest cut back at a line boundary (a partial copy) lost a zero-variance group: no pair refers to
    it, so only the header's count of groups can tell."""
    root = tmp_path / "ds"
    export(cfg_for(root, model_path), inputs=make_inputs(3, tie_last=True))
    assert D.validate_dataset(root).ok
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[:2]))
    rep = D.validate_dataset(root)
    assert not rep.ok and any("3 groups" in e for e in rep.errors), rep.errors


def test_records_of_another_export_are_neither_mixed_in_nor_validated(model_path, tmp_path):  # noqa: F811
    """With dataset.json gone, a resume under another seed kept the old records beside the new ones (every input
    twice, two seeds) and validate passed the result."""
    root = tmp_path / "ds"
    inputs = make_inputs(3)
    export(cfg_for(root, model_path), inputs=inputs)
    header = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").unlink()
    with pytest.raises(InputError, match="seed"):
        export(cfg_for(root, model_path, seed=7), inputs=inputs)
    assert not (root / "dataset.json").exists() and len(D.read_manifest(root)) == 3
    # the header of another export next to these records: validate names the difference
    (root / "dataset.json").write_text(json.dumps({**header, "seed": 7}))
    rep = D.validate_dataset(root)
    assert not rep.ok and any("seed" in e for e in rep.errors), rep.errors
    # the same settings as before: the header is written again and nothing is redone
    (root / "dataset.json").unlink()
    again = export(cfg_for(root, model_path), inputs=inputs)
    assert (again.done_before, again.new_groups, again.groups) == (3, 0, 3) and D.validate_dataset(root).ok


def test_ray_address_credentials_stay_out_of_the_summary(model_path, tmp_path, monkeypatch):  # noqa: F811
    """The summary's executor named the --ray-address as given, password included (every message redacts it)."""
    address = "ray://admin:s3cretpw@head.example:10001"
    monkeypatch.setattr(E, "_ray_preflight", lambda addr: None)
    monkeypatch.setattr(E, "_ray", lambda ctx, tasks, workers, addr: E._serial(ctx, tasks))
    s = export(cfg_for(tmp_path / "ds", model_path, ray_address=address), inputs=make_inputs(1))
    assert s.groups == 1 and s.executor.startswith("ray(")
    for text in (s.model_dump_json(), format_summary(s)):
        assert "s3cretpw" not in text and "head.example:10001" in text


def test_finetune_on_an_unfinished_export_says_so(model_path, tmp_path, capsys):  # noqa: F811
    """An interrupted export is a dataset of its first groups only: finetune trained on it without a word."""
    from hmrcritic.cli import main

    root = tmp_path / "ds"
    export(cfg_for(root, model_path), inputs=make_inputs(2))
    header = D.read_header(root)
    header.counts = {"finished": False}
    D.write_header(root, header)
    args = ["finetune", "--data", str(root), "--model", str(model_path), "--out", str(tmp_path / "a.pt"),
            "--steps", "1", "--batch-size", "2", "--num-generations", "4", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "did not finish" in captured.err and json.loads(captured.out)["final"]["step"] == 1
    header.counts = {"finished": True}
    D.write_header(root, header)
    assert main([*args[:6], str(tmp_path / "b.pt"), *args[7:]]) == 0
    assert "did not finish" not in capsys.readouterr().err


def leaky_score(sample, hypotheses, **kw):
    """A critic whose rationale quotes the API key back (as an endpoint's echo might)."""
    import os

    scored = fake_score(sample, hypotheses, **kw)
    for s in scored.scores:
        s.rationale += f" (auth {os.environ['HMRCRITIC_API_KEY']})"
    return scored


def test_a_rationale_quoting_the_key_is_scrubbed_before_the_dataset(model_path, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-test-very-secret-123456")
    export(cfg_for(tmp_path / "ds", model_path, score_group="test_review_export:leaky_score"), inputs=make_inputs(2))
    text = "".join(p.read_text() for p in (tmp_path / "ds").rglob("*") if p.is_file() and p.suffix != ".npz")
    assert "sk-test-very-secret-123456" not in text
    assert "deviation" in text  # the rationale itself is kept
