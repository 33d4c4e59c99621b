"""Session 35 re-read of the session's commits (7e565d2..HEAD): the bugs found, each as a test that fails on the code
as committed (marked ``xfail(strict=True)``: un-mark it when the fix lands), and a few checks of what was found right.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hmrcritic.redact import scrub_tree


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    return tmp_path


def test_scrub_tree_keeps_the_api_key_status_set():
    """``scrub_tree`` masks a no-whitespace string under a secret key whole since 3d73515, and doctor's settings
    say ``"api_key": "set"`` (``JudgeSettings.public``): the status became ``***`` (``"not set"`` stays only because
    it holds a space). A status is no credential."""
    assert scrub_tree({"api_key": "set"}) == {"api_key": "set"}
    assert scrub_tree({"api_key": "not set"}) == {"api_key": "not set"}


def test_doctor_says_the_api_key_is_set(home, monkeypatch):
    """``hmrcritic doctor`` (text and ``--json``) went from "api key set" to "api key ***" with a key in the
    environment: run_checks scrubs its report with scrub_tree. tests/test_doctor.py::
    test_doctor_never_prints_the_key asserts the same and fails on HEAD."""
    from hmrcritic.commands.doctor import CHECKS, _summary, run_checks

    key = "abcd1234efgh5678ijkl"
    monkeypatch.setenv("HMRCRITIC_API_KEY", key)
    report = run_checks(skip=tuple(name for name, _ in CHECKS if name != "judge"))
    judge = report["checks"][0]
    assert judge["settings"]["api_key"] == "set"
    line = _summary(judge)
    assert "api key set" in line and key not in line


def test_scoring_record_reads_sizes_sources_and_judges():
    """What was found right: explore_eval's new keys for groups of one size and of two, a mixed source, and a
    custom judge object (named, and not), as evaluate-critic's payload says them (judge_model only for a VLM)."""
    from hmrcritic.agent.learning_curve import _scoring_record

    def table(n):
        return {"pa_mpjpe": np.zeros(n)}

    held = [SimpleNamespace(source="model"), SimpleNamespace(source="model")]
    assert _scoring_record(held, [table(4), table(4)], "builtin") == {
        "num_generations": 4, "group_source": "model", "judge": "builtin"}
    mixed = [SimpleNamespace(source="model"), SimpleNamespace(source="perturbed")]
    rec = _scoring_record(mixed, [table(4), table(3)], SimpleNamespace(name="mine"))
    assert rec == {"num_generations": None, "group_source": "mixed", "judge": "mine"}
    assert _scoring_record(held, [table(2)] * 2, object())["judge"] == "custom"
