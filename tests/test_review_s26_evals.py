"""Review s26 (the critic evaluations' leftovers): evaluations of one exploration writing one result.json over
each other, an exploration's failed groups and early stop unreported by evaluate-critic, and groups whose ρ is
undefined counted as 0 without saying how many.

Real groups (perturbed ground truth of tiny generated splits), the real agent graph, a real Chroma memory on disk;
the VLM judge talks HTTP to the local OpenAI-compatible stub (tests/openai_stub_server.py, the network edge)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import test_review_s22_curve as s22

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import StubOpenAIServer  # noqa: E402

pytestmark = pytest.mark.usefixtures("small_prior")  # tiny splits: no 20k-scene train split for the pose prior

# tiny train (6 scenes) and test (4 scenes) splits of other seeds, and perturbed groups of them: session 22's own
data, _groups = s22.data, s22._groups


# ---- 1. evaluations of one exploration keep their own results -------------------------------------------------------
def test_two_evaluations_of_one_exploration_keep_their_own_results(data):
    """The work folder is keyed by the exploration (its explored memory is the cache), not by what is scored, so
    an evaluation of 2 groups and then one of 1 group with other variants (the same exploration) wrote one
    result.json over the other: the first result was lost. Each keeps its own file, named in the payload (and so in
    --json and result.json), result.json stays the latest, and the same evaluation again writes its own file
    again."""
    from hmrcritic.agent.evaluate_critic import evaluate_critic, format_table

    kw = {"split": "test", "num_generations": 3, "warmup_groups": 0, "source": "perturbed", "workdir": data / "eval"}
    first = evaluate_critic(num_groups=2, variants=["evidence_only"], **kw)
    second = evaluate_critic(num_groups=1, variants=["full", "evidence_only"], **kw)
    assert first["workdir"] == second["workdir"]  # one exploration, one folder (and one memory) as before
    assert first["result_file"] != second["result_file"]
    mine = json.loads(Path(first["result_file"]).read_text(encoding="utf-8"))
    assert mine["num_groups"] == 2 and [r["variant"] for r in mine["rows"]] == ["evidence_only"]
    assert mine["rows"][0]["spearman"] == pytest.approx(first["rows"][0]["spearman"])
    latest = json.loads((data / "eval" / "result.json").read_text(encoding="utf-8"))
    assert latest["num_groups"] == 1 and latest["result_file"] == second["result_file"]
    assert Path(second["result_file"]).parent == data / "eval"
    assert f"wrote {second['result_file']}" in format_table(second)
    again = evaluate_critic(num_groups=2, variants=["evidence_only"], **kw)  # the same evaluation: its own file
    assert again["result_file"] == first["result_file"]


def test_evaluate_critic_cli_names_the_file_it_wrote(data, capsys):
    """``hmrcritic evaluate-critic`` (text and --json) says which result file it wrote."""
    from hmrcritic.cli import main

    args = ["evaluate-critic", "--num-groups", "1", "-n", "3", "--warmup-groups", "0", "--source", "perturbed",
            "--variants", "evidence_only"]
    assert main(args + ["--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert Path(payload["result_file"]).is_file()
    assert main(args) == 0
    assert f"wrote {payload['result_file']}" in capsys.readouterr().out


# ---- 2. an exploration's failed (and missing) groups ---------------------------------------------------------------
def test_evaluate_critic_reports_the_explored_groups_that_failed(data, monkeypatch, capsys):
    """A VLM exploration whose critique of one group failed (a 500 from the endpoint; not retried) records that
    group as explored and learns from the others; evaluate-critic then said "memory explored on 2 train groups"
    and its figures, never that the memory learnt from one. The count is in the payload (--json, result.json) and
    the table; no figure changes."""
    from hmrcritic.agent.evaluate_critic import evaluate_critic, format_table

    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "stub-vlm")
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "10")
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-s26-evals")
    with StubOpenAIServer(require_images=False) as srv:
        monkeypatch.setenv("HMRCRITIC_BASE_URL", srv.base_url)
        srv.push("500")  # the first group's critique; every later request is answered
        res = evaluate_critic(split="test", num_groups=1, num_generations=3, warmup_groups=2, batch_size=2,
                              source="perturbed", judge="vlm", max_reflections=0, variants=["full"],
                              workdir=data / "eval")
    assert res["explored_groups"] == 2 and res["explore_failed_groups"] == 1
    assert json.loads((data / "eval" / "result.json").read_text(encoding="utf-8"))["explore_failed_groups"] == 1
    assert "memory explored on 2 train groups (1 of its explored groups failed" in format_table(res)


def test_evaluate_critic_says_when_the_exploration_stopped_short(data):
    """``--warmup-groups 8`` on a train split of 6 scenes: the exploration stops when the split runs out and the
    memory learnt from 6; the table said only "memory explored on 6 train groups", the payload nothing of why.
    The reason is kept (``explore_stopped``) and said beside the count asked for."""
    from hmrcritic.agent.evaluate_critic import evaluate_critic, format_table

    res = evaluate_critic(split="test", num_groups=1, num_generations=3, warmup_groups=8, batch_size=2,
                          source="perturbed", variants=["full"], workdir=data / "eval")
    assert res["explored_groups"] == 6 and res["explore_failed_groups"] == 0
    assert "split exhausted" in res["explore_stopped"]
    assert "memory explored on 6 train groups of 8 asked (stopped: split exhausted" in format_table(res)


# ---- 3. groups whose ρ is undefined ---------------------------------------------------------------------------------
def _same_hypotheses(group):
    """``group`` with every hypothesis a copy of its first: one true error for all, so ρ is undefined."""
    from hmrcritic.agent.groups import LabelledGroup

    n = len(group.errors_mm)
    hyps = {k: np.repeat(np.asarray(v)[:1], n, axis=0) for k, v in group.hypotheses.items()}
    return LabelledGroup(f"{group.group_id}", group.sample, hyps, np.repeat(group.errors_mm[:1], n), group.source)


def test_groups_with_an_undefined_rho_are_counted_in_the_row(data, tmp_path):
    """A scored group whose ρ is undefined (constant scores, or one true error for every hypothesis) counts as 0
    in the means, and nothing said for how many: a ρ near 0 read as a critic ranking at chance. The row counts
    them (``rho_undefined`` per metric) and the table says so; the ρ itself is what it was."""
    from hmrcritic.agent.learning_curve import CURVE_FILE, correlation_row, explore_eval, format_rows, learning_curve
    from hmrcritic.hmr.metrics import spearman
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(tmp_path / "mem", chroma_url="").close()  # the starter memory
    ranked, flat = _groups("test", 2)
    groups = [ranked, _same_hypotheses(flat)]
    res = explore_eval(tmp_path / "mem", groups, variants=["evidence_only"])
    (row,) = res["rows"]
    assert row["groups_scored"] == 2
    assert row["rho_undefined"] == row["rho_undefined_mpjpe"] == row["rho_undefined_pve"] == 1
    assert "evidence_only: ρ undefined for 1 of 2 scored groups" in format_rows(res)
    # a learning curve's rows (its learning_curve.json, its --json) carry the count too
    with MemoryStore(tmp_path / "curve-mem", chroma_url="") as store:
        curve = learning_curve(store, rounds=0, heldout=groups, out_dir=tmp_path / "curve")
    saved = json.loads((tmp_path / "curve" / CURVE_FILE).read_text(encoding="utf-8"))
    assert saved["rows"][0]["rho_undefined"] == curve["rows"][0]["rho_undefined"] == 1

    # the figure is unchanged: the undefined group is a 0 in the mean, as before
    scores = [np.array([3.0, 1.0, 2.0]), np.array([5.0, 5.0, 5.0])]
    err = [np.array([10.0, 30.0, 20.0]), np.array([10.0, 20.0, 30.0])]
    tables = [{m: e for m in ("pa_mpjpe", "mpjpe", "pve")} for e in err]
    row = correlation_row(scores, tables)
    assert row["spearman"] == (float(spearman(scores[0], -err[0])) + 0.0) / 2
    assert row["rho_undefined"] == 1 and row["per_group_spearman"][1] == 0.0
