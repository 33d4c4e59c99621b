"""Review s32 (a walk through the VLM judge from the CLI against the local stub server): what a user reads.

* the step-down from json_schema to function calling / text (a server without structured outputs) was logged at
  INFO only: the CLI shows WARNING and above, so nothing said that every later request used a weaker form;
* a read timeout (the server took the request and is slow) ended "no answer within 1 s" with no word of the
  setting that bounds it (``HMRCRITIC_VLM_TIMEOUT``), where every other endpoint failure names what to change;
* ``evaluate-critic --judge vlm`` keyed its cache by the VLM's model and endpoint but recorded only
  ``"judge": "vlm"`` in result.json and printed no judge at all: two evaluations of two models read the same.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import StubOpenAIServer  # noqa: E402
from test_review_s22_vlmdown import judge_for  # noqa: E402
from test_vlm_judge import make_ctx  # noqa: E402

from hmrcritic.errors import JudgeError  # noqa: E402


def test_a_step_down_from_json_schema_is_said_once_where_the_cli_shows_it(caplog):
    """A server refusing json_schema: the judge moves to function calling (checked on the server's side) and says
    so once, at WARNING (what the CLI prints), not once per group and not at INFO where no user sees it."""
    caplog.set_level(logging.WARNING, logger="hmrcritic")
    with StubOpenAIServer(reject_response_format=True, require_images=False) as srv:
        judge = judge_for(srv.base_url, max_retries=0)
        for i in range(3):
            judge.critique(make_ctx((None, None), group_id=f"g{i}"))
        modes = [r.mode for r in srv.requests]
    assert modes == ["json_schema", "tools", "tools", "tools"], modes  # one refusal, then function calling
    said = [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "json_schema" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


def test_a_read_timeout_names_the_setting_that_bounds_it():
    """The server accepted and is slow: the group's line says which variable gives it longer."""
    with StubOpenAIServer(default="slow", slow_s=1.5, require_images=False) as srv, \
            pytest.raises(JudgeError) as info:
        judge_for(srv.base_url, timeout_s=0.4, max_retries=0).critique(make_ctx((None, None)))
    msg = str(info.value)
    assert "no answer within 0.4 s" in msg, msg  # the words before stay
    assert "HMRCRITIC_VLM_TIMEOUT" in msg, msg


def test_evaluate_critic_records_and_prints_which_vlm_it_evaluated(monkeypatch, tmp_path):
    """result.json (and the table) name the model and endpoint, as export's dataset.json and critique's
    scores.json do: the evaluation folder is keyed by them, the record said only "vlm"."""
    from hmrcritic.agent.evaluate_critic import evaluate_critic, format_table

    with StubOpenAIServer(require_images=False, model="stub-vlm") as srv:
        monkeypatch.setenv("HMRCRITIC_BASE_URL", srv.base_url)
        monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "walk-vlm-7b")
        monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-walk-test")
        out = evaluate_critic(split="test", num_groups=1, num_generations=3, warmup_groups=0, source="perturbed",
                              judge="vlm", variants=["evidence_only"], workdir=tmp_path / "ev")
        assert srv.arrivals >= 1  # the VLM was asked
    assert out["judge"] == "vlm"
    ident = out.get("judge_model", "")
    assert "walk-vlm-7b" in ident and srv.base_url in ident, out
    table = format_table(out)
    assert "walk-vlm-7b" in table.splitlines()[0], table
