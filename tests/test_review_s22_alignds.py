"""Session 22 review (alignds): the group preference dataset as finetune reads it and `hmrcritic export validate`
agree on what each one says about a dataset: what the reader leaves out or does not use is a note in finetune and
an error (or warning) in validate that says what finetune does with it; two records of one group are refused by
both; an unfinished export's advice works when the memory changed mid-export."""

from __future__ import annotations

import json

import pytest
from test_finetune import base_ckpt, write_dataset  # noqa: F401  (base_ckpt: a module fixture)

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.finetune import FinetuneConfig, finetune
from hmrcritic.errors import AssetError, InputError
from hmrcritic.io import record_checksum


def _edited(line: str, **changes) -> str:
    """A manifest line with fields changed and its checksum recomputed (an edit made on purpose)."""
    rec = {**json.loads(line), **changes}
    rec.pop("checksum")
    return json.dumps({**rec, "checksum": record_checksum(rec)}) + "\n"


def _cfg(data, base, out, **kw):
    kw = {"steps": 1, "batch_size": 2, "num_generations": 4, "threads": 1, **kw}
    return FinetuneConfig(data=str(data), model=str(base), out=str(out), **kw)


def test_two_different_records_of_one_group_are_refused_by_the_reader_as_by_validate(tmp_path):
    """Duplicate group ids: validate called the dataset invalid, the reader (and finetune) trained on the first of two
    different records (two critiques' scores of one group) without a word. A repeat of the same record stays
    readable (read once); validate's error says which case it is."""
    root = write_dataset(tmp_path / "prefs", n_groups=3, N=4)
    lines = (root / D.MANIFEST).read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    rescored = [{**s, "overall": 10 - s["overall"]} for s in first["scores"]]
    (root / D.MANIFEST).write_text("".join(lines) + _edited(lines[0], scores=rescored,
                                                              advantages=[-a for a in first["advantages"]]))
    with pytest.raises(AssetError, match=r"group in0 is on line 1 and again, with other content, on line 4"):
        D.GroupPreferenceDataset(root)
    errors = D.validate_dataset(root).errors
    assert any("duplicate group_id in0" in e and "finetune refuses" in e for e in errors), errors

    (root / D.MANIFEST).write_text("".join(lines) + lines[0])  # the same record twice
    assert [r.group_id for r in D.GroupPreferenceDataset(root).records] == ["in0", "in1", "in2"]
    errors = D.validate_dataset(root).errors
    assert any("duplicate group_id in0" in e and "finetune reads it once" in e for e in errors), errors


def test_a_torn_last_line_is_one_error_and_validate_says_finetune_skips_it(tmp_path):
    """A torn last line was two errors ("torn last line (no newline)" and "not valid JSON") for one line, and
    nothing said that finetune trains on the other groups (it does: the reader drops the line)."""
    root = write_dataset(tmp_path / "prefs", n_groups=3, N=4)
    text = (root / D.MANIFEST).read_text()
    (root / D.MANIFEST).write_text(text + text.splitlines()[0][:60])
    rep = D.validate_dataset(root)
    assert [e for e in rep.errors if e.startswith("manifest.jsonl:4")] == [
        "manifest.jsonl:4: torn last line (no newline), not valid JSON"], rep.errors
    assert any("finetune skips them" in w for w in rep.warnings), rep.warnings
    assert len(D.GroupPreferenceDataset(root)) == 3


def test_finetune_says_what_it_left_out_that_validate_calls_an_error(base_ckpt, tmp_path, capsys):  # noqa: F811
    """Torn/damaged lines, a repeated record, stored advantages that are not those of the scores and inputs that
    failed in the export: validate lists each, and finetune trained on the rest without a word."""
    root = write_dataset(tmp_path / "prefs", n_groups=3, N=4)
    lines = (root / D.MANIFEST).read_text().splitlines(keepends=True)
    stale = _edited(lines[1], advantages=list(reversed(json.loads(lines[1])["advantages"])))
    (root / D.MANIFEST).write_text(lines[0] + stale + lines[2] + lines[0] + lines[2][:50])
    (root / D.FAILURES).write_text(json.dumps({"group_id": "in7", "input_id": "in7", "stage": "endpoint",
                                               "error": "down", "extra": 1}) + "\n")
    header = json.loads((root / D.HEADER).read_text())
    (root / D.HEADER).write_text(json.dumps({**header, "counts": {"finished": True, "groups": 4}}))

    rep = D.validate_dataset(root)
    assert any("finetune recomputes them" in e for e in rep.errors), rep.errors
    assert any("1 input(s) failed" in w for w in rep.warnings), rep.warnings

    finetune(_cfg(root, base_ckpt, tmp_path / "a.pt"), progress=True)
    err = capsys.readouterr().err
    assert "line(s) 5 hold no complete record" in err, err
    assert "line(s) 4 repeat an earlier line's record" in err, err
    assert "1 group(s) of" in err and "first: in1" in err and "recomputes them from the scores" in err, err
    assert "1 input(s) of the export" in err and "first: in7" in err, err
    # the torn line explains the finished export's count (4 written, 3 read): not a second note about lost lines
    assert "read back" not in err, err


def test_a_missing_pairs_file_says_finetune_does_not_need_it(tmp_path):
    """validate called the dataset INVALID for a missing pairs.jsonl, and finetune (which never reads it) ran: the
    error now says so, so a user does not re-export for nothing before finetuning."""
    root = write_dataset(tmp_path / "prefs", n_groups=3, N=4)
    (root / D.PAIRS).unlink()
    errors = D.validate_dataset(root).errors
    assert any("pairs.jsonl: missing" in e and "finetune does not read it" in e for e in errors), errors


def test_an_unfinished_export_s_advice_works_after_the_memory_changed(tmp_path, monkeypatch):
    """An export the memory's change stopped ("memory … changed while this export ran; … into another --out"): the
    re-run of the same command is refused (another memory_version), yet validate and finetune said only "re-run the
    same export command to complete it"."""
    from typer.testing import CliRunner

    from hmrcritic.alignment import export as E
    from hmrcritic.alignment import finetune as ft
    from hmrcritic.cli import app

    root = write_dataset(tmp_path / "prefs", n_groups=2, N=4)
    header = D.read_header(root)
    header.counts = {"finished": False}
    D.write_header(root, header)
    with pytest.raises(InputError, match="another --out"):  # what the re-run after the change says
        E._check_or_write_header(root, header.model_copy(update={"memory_version": "changed"}))
    warning = [w for w in D.validate_dataset(root).warnings if "did not finish" in w]
    assert warning and "another --out" in warning[0], warning

    monkeypatch.setattr(ft, "finetune", lambda cfg, progress=False: (_ for _ in ()).throw(SystemExit(0)))
    res = CliRunner().invoke(app, ["finetune", "--data", str(root), "--out", str(tmp_path / "a.pt")])
    assert "training on the 2 group(s)" in res.output and "another --out" in res.output, res.output


def test_gpa_with_both_loss_weights_zero_is_refused(tmp_path):
    """``--gpa-weight 0 --base-loss-weight 0`` (or ``--objective gpa_no_base_loss --gpa-weight 0``): the loss was 0
    at every step, no weight moved, and the run saved the base model as its "aligned checkpoint"."""
    for kw in ({"gpa_weight": 0.0, "base_loss_weight": 0.0}, {"objective": "gpa_no_base_loss", "gpa_weight": 0.0},
               {"objective": "gpa_linear", "gpa_weight": 0, "base_loss_weight": 0}):
        with pytest.raises(InputError, match="both 0"):
            FinetuneConfig(data=str(tmp_path), out=str(tmp_path / "a.pt"), **kw)
    # one of them is enough to train something; dpo and sft do not use them
    FinetuneConfig(data=str(tmp_path), out=str(tmp_path / "a.pt"), gpa_weight=0.0)
    FinetuneConfig(data=str(tmp_path), out=str(tmp_path / "a.pt"), objective="dpo", gpa_weight=0, base_loss_weight=0)


def test_a_run_resumed_with_another_thread_count_records_both(base_ckpt, tmp_path):  # noqa: F811
    """``--threads`` may change on resume (it moves the weights only by float rounding), but the checkpoint recorded
    only the last process's count: a run trained at 1 thread and finished at 2 read as a 2-thread run, which a
    from-scratch 2-thread run does not reproduce bit for bit."""
    from hmrcritic.hmr.diffusion import load_model

    root = write_dataset(tmp_path / "prefs", n_groups=3, N=4)
    out = tmp_path / "a.pt"
    finetune(_cfg(root, base_ckpt, out, steps=2, checkpoint_every=1, threads=1))
    finetune(_cfg(root, base_ckpt, out, steps=4, checkpoint_every=1, threads=2))
    extra = load_model(out).checkpoint_extra
    assert extra["torch_threads"] == 2 and extra["torch_threads_used"] == [1, 2], extra
    finetune(_cfg(root, base_ckpt, tmp_path / "b.pt", steps=2, threads=1))
    assert load_model(tmp_path / "b.pt").checkpoint_extra["torch_threads_used"] == [1]
