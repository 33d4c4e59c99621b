"""Review (session 21) of ``hmrcritic export`` under the conditions of a real batch job: what ``validate`` says of
the folder an interrupted run leaves, labels of samples that are no dataclass, and a VLM judge that cannot be made
(no endpoint, no key) found once before sampling instead of once per input. Scoring is ``test_export.fake_score``
except where the real agent and the local OpenAI-compatible stub server are the point."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_export import cfg_for, make_inputs, model_path  # noqa: F401  (fixture)

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment import export as E
from hmrcritic.alignment.export import export
from hmrcritic.errors import InputError

sys.path.insert(0, str(Path(__file__).parent))


def test_validate_lists_only_the_failures_still_open_after_an_interrupted_resume(model_path, tmp_path,  # noqa: F811
                                                                                 monkeypatch):
    """Run 1: img001 fails. Run 2 writes img001, then is stopped (Ctrl-C) before it tidies failures.jsonl: validate
    said "1 input(s) failed and are not in the dataset" of a dataset holding every input. Lines of one group that
    failed on two runs, and a torn last line, were each counted as an input too."""
    out, inputs = tmp_path / "ds", make_inputs(3)
    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", "img001")
    assert export(cfg_for(out, model_path), inputs=inputs).failures == 1
    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", "")

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "write_pairs", stopped)
    with pytest.raises(KeyboardInterrupt):
        export(cfg_for(out, model_path), inputs=inputs)
    rep = D.validate_dataset(out)
    assert rep.ok and rep.groups == 3
    assert not [w for w in rep.warnings if "failed" in w], rep.warnings
    assert any("did not finish" in w for w in rep.warnings)

    # one input that failed on two runs (two lines) and a kill mid-append (a torn line): one open failure
    failed = {"group_id": "g-open", "input_id": "g", "stage": "score", "error": "JudgeError: x"}
    (out / D.FAILURES).write_text(json.dumps(failed) + "\n" + json.dumps(failed) + '\n{"group_id": "g-ot')
    assert any(w.startswith("1 input(s) failed") for w in D.validate_dataset(out).warnings)


def test_validate_of_an_export_stopped_before_its_first_group_says_to_re_run_it(model_path, tmp_path,  # noqa: F811
                                                                               monkeypatch):
    """Ctrl-C before the first group leaves the header alone: validate said only "manifest.jsonl: missing", not
    that the export did not finish and that re-running it completes it (as it says once a group is written)."""
    out = tmp_path / "ds"

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "_write_group", stopped)
    with pytest.raises(KeyboardInterrupt):
        export(cfg_for(out, model_path), inputs=make_inputs(2))
    rep = D.validate_dataset(out)
    assert not rep.ok and any("manifest.jsonl: missing" in e for e in rep.errors)
    assert any("did not finish" in w and "re-run" in w for w in rep.warnings), rep.warnings


def test_labels_of_samples_that_are_no_dataclass_never_reach_the_scorer(model_path, tmp_path):  # noqa: F811
    """``export(inputs=...)`` with samples of another kind (a SimpleNamespace here) passed their joints3d on to the
    scorer (fake_score asserts it is None): every group failed with "a 3D label reached the scorer"."""
    inputs = [SimpleNamespace(**vars(s)) for s in make_inputs(2)]
    summary = export(cfg_for(tmp_path / "ds", model_path), inputs=inputs)
    assert (summary.groups, summary.failures) == (2, 0), summary.first_failure
    assert all(s.joints3d is not None for s in inputs)  # the caller's samples are left as they were


def test_a_vlm_export_without_endpoint_or_key_is_refused_before_anything_is_written(model_path, tmp_path,  # noqa: F811
                                                                                    monkeypatch):
    """No HMRCRITIC_API_KEY and no HMRCRITIC_BASE_URL: every input was sampled and then failed with the same
    "the VLM judge has no endpoint and no key" (a folder of failures, exit 1 only at the end of the split)."""
    for var in ("HMRCRITIC_BASE_URL", "OPENAI_BASE_URL", "HMRCRITIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "ds"
    cfg = cfg_for(out, model_path, judge="vlm", score_group=E.DEFAULT_SCORER)
    with pytest.raises(InputError, match="no endpoint and no key"):
        export(cfg, inputs=make_inputs(2))
    assert not out.exists()


def test_a_vlm_export_through_a_local_server_names_its_judge_and_resumes(model_path, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    """The real agent and VLM judge against the stub server on 127.0.0.1: the preflight lets a configured endpoint
    through, the header names the model and endpoint, and a resume writes nothing again."""
    from openai_stub_server import StubOpenAIServer

    with StubOpenAIServer() as srv:
        monkeypatch.setenv("HMRCRITIC_BASE_URL", srv.base_url)
        monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
        out = tmp_path / "ds"
        cfg = cfg_for(out, model_path, judge="vlm", score_group=E.DEFAULT_SCORER)
        first = export(cfg, inputs=make_inputs(1))
        assert (first.groups, first.failures) == (1, 0), first.first_failure
        header = D.read_header(out)
        assert header.judge == "vlm" and header.judge_model == f"gpt-4o-mini @ {srv.base_url}"
        before = (out / D.MANIFEST).read_bytes()
        again = export(cfg, inputs=make_inputs(1))
        assert (again.new_groups, again.done_before) == (0, 1)
        assert (out / D.MANIFEST).read_bytes() == before and D.validate_dataset(out).ok


def test_finetune_refuses_a_dataset_holding_a_record_of_another_export_as_validate_does(model_path, tmp_path):  # noqa: F811
    """A manifest line of another export (here another model's samples: model_hash differs; its checksum is valid)
    made ``export validate`` say INVALID, yet ``finetune`` trained on it under the header of this one."""
    from hmrcritic.alignment.finetune import FinetuneConfig, finetune
    from hmrcritic.errors import AssetError

    out = tmp_path / "ds"
    export(cfg_for(out, model_path), inputs=make_inputs(3))
    lines = (out / D.MANIFEST).read_text().splitlines(keepends=True)
    foreign = D.parse_manifest_line(lines[0]).model_copy(update={"model_hash": "0123456789abcdef"})
    (out / D.MANIFEST).write_text(json.dumps(foreign.to_line_dict()) + "\n" + "".join(lines[1:]))
    assert any("a record of another export" in e for e in D.validate_dataset(out).errors)
    cfg = FinetuneConfig(data=str(out), out=str(tmp_path / "a.pt"), model=str(model_path), steps=1, batch_size=2,
                         num_generations=4)
    with pytest.raises(AssetError, match="record of another export .*model_hash='0123456789abcdef'"):
        finetune(cfg)
    assert not (tmp_path / "a.pt").exists()
