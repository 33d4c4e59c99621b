"""Session 29, the lead's fixes from the docs audit: the score calibration follows ``explore --error-metric``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import hmrcritic.agent.explore as ex
from hmrcritic.memory.store import MemoryStore

pytestmark = pytest.mark.usefixtures("explore_prior")


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    """8 labelled train groups of 8 hypotheses."""
    from hmrcritic.agent.groups import groups_from_perturbed_gt
    from hmrcritic.hmr.data import SceneSet, generate_split

    folder = generate_split("train", tmp_path_factory.mktemp("s29lead") / "train", n=8, quiet=True)
    return groups_from_perturbed_gt(SceneSet(folder), num_groups=8, num_generations=8, seed=0)


_KW = dict(split="train", batch_size=2, tau=0.5, calibration_groups=2, merge_text=False, max_new_rules=0,
           retire_min_uses=1000)


def test_the_calibration_is_fitted_on_the_error_exploration_learned_from(train, tmp_path):
    """``explore --error-metric mpjpe`` learned its rules and prototypes from MPJPE while the score calibration was
    fitted on PA-MPJPE (the groups' ``errors_mm``), and the critique's line under the table said overall was on
    "the error exploration learned from". The fit now uses the explored metric and records it."""
    from hmrcritic.agent.calibration import fit_calibration
    from hmrcritic.agent.learning_curve import score_groups

    cals = {}
    for metric in ("pa_mpjpe", "mpjpe", "mix"):
        mem = MemoryStore(tmp_path / metric, chroma_url="")
        ex.explore(mem, rounds=1, groups=train, error_metric=metric, **_KW)
        cals[metric] = mem.calibration()
        assert cals[metric] is not None and cals[metric].error_metric == metric
        # the stored map is the least-squares fit onto that metric's errors of the calibration groups (#2–#3)
        cal_groups = train[2:4]
        cfg = {"use_prototypes": False, "use_calibration": False, "learn": False}
        scores, _ = score_groups(cal_groups, mem, "full", agent_config=cfg, tag="t")
        # (the mix is its weighted mean, in mm, since session 30: exploration_error itself divides by 3.9)
        want = fit_calibration(scores, [ex.exploration_error(g, metric) for g in cal_groups],
                               error_metric=metric)
        assert (cals[metric].slope, cals[metric].intercept) == pytest.approx((want.slope, want.intercept), abs=1e-12)
        mem.close()
    mp = [ex.exploration_error(g, "mpjpe") for g in train[2:4]]
    pa = [ex.exploration_error(g, "pa_mpjpe") for g in train[2:4]]
    assert not np.allclose(np.concatenate(mp), np.concatenate(pa))  # the two fits had different errors to follow
    assert cals["mpjpe"].intercept != cals["pa_mpjpe"].intercept


def test_an_old_calibration_of_another_metric_is_refitted(train, tmp_path):
    """A calibration stored before the metric was recorded reads as PA-MPJPE's: a memory explored on MPJPE then
    kept it as fresh (same rules). Resuming that exploration refits it onto MPJPE."""
    path = tmp_path / "m"
    mem = MemoryStore(path, chroma_url="")
    ex.explore(mem, rounds=1, groups=train, error_metric="mpjpe", **_KW)
    cal = mem.calibration()
    old = cal.model_copy(update={"error_metric": "pa_mpjpe", "intercept": cal.intercept + 0.5})
    mem.set_calibration(old)
    mem.close()
    mem = MemoryStore(path, chroma_url="")
    ex.explore(mem, rounds=1, groups=train, error_metric="mpjpe", **_KW)  # nothing left to explore: calibrates
    again = mem.calibration()
    mem.close()
    assert again.error_metric == "mpjpe" and again.intercept == pytest.approx(cal.intercept, abs=1e-12)


def test_the_lines_name_the_calibrations_metric():
    """The critique's line and ``memory stats``/``memory calibration`` say which error overall is mapped onto; a
    calibration written before the field (no ``error_metric``) is PA-MPJPE's."""
    from hmrcritic.agent.api import ScoredGroup, overall_scale_note
    from hmrcritic.commands.memory import describe_calibration
    from hmrcritic.memory.schema import ScoreCalibration

    cal = ScoreCalibration(slope=1.2, intercept=-0.3, groups=4, hypotheses=32, pearson_before=0.5,
                           pearson_after=0.6, error_metric="pve").model_dump(mode="json")
    scored = ScoredGroup(group_id="g", judge="builtin", scores=[], ranking=[], score_calibration=cal)
    assert "error = PVE, the error exploration learned from" in overall_scale_note(scored)
    assert "onto PVE;" in describe_calibration(cal)
    old = {k: v for k, v in cal.items() if k != "error_metric"}
    assert "error = PA-MPJPE" in overall_scale_note(ScoredGroup(group_id="g", judge="builtin", scores=[], ranking=[],
                                                                score_calibration=old))
    assert "onto PA-MPJPE;" in describe_calibration(old)
    mix = overall_scale_note(ScoredGroup(group_id="g", judge="builtin", scores=[], ranking=[],
                                         score_calibration={**cal, "error_metric": "mix"}))
    assert "error = the mix (1.2·MPJPE + 2·PA-MPJPE + 0.7·PVE) / 3.9, the error" in mix
    with pytest.raises(ValueError):
        ScoreCalibration(**{**cal, "error_metric": "chamfer"})


# ----------------------------------------------------------------------------------- export: the agent's settings
def seen_config_score(sample, hypotheses, judge="builtin", memory=None, config=None, group_id=None):
    """The export's stand-in scorer, recording the agent settings each group was scored with in its rationale."""
    from test_export import fake_score

    scored = fake_score(sample, hypotheses, judge=judge, memory=memory, config=config, group_id=group_id)
    for s in scored.scores:
        s.rationale = f"max_reflections={config['max_reflections']} rules_k={config['rules_k']}"
    return scored


def test_an_export_resumed_under_other_agent_variables_is_refused(tmp_path, monkeypatch):
    """A resume under other ``HMRCRITIC_*`` agent variables (reflections, rules_k, the use_* switches, …) went on
    and mixed groups scored two ways in one dataset; ``export validate`` said OK. The header now records the
    settings the groups are scored with, and a resume must match them (an export from before the field resumes)."""
    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export
    from hmrcritic.errors import InputError

    model = tiny_model(tmp_path / "tiny.pt")
    out = tmp_path / "ds"
    kw = dict(score_group="test_review_s29_lead:seen_config_score")
    monkeypatch.setenv("HMRCRITIC_MAX_REFLECTIONS", "0")
    monkeypatch.setenv("HMRCRITIC_RULES_K", "3")
    export(cfg_for(out, model, limit=2, **kw), inputs=make_inputs(3))
    header = D.read_header(out)
    assert header.agent_settings["max_reflections"] == 0 and header.agent_settings["rules_k"] == 3
    assert header.agent_settings["learn"] is False and "memory_dir" not in header.agent_settings
    monkeypatch.delenv("HMRCRITIC_MAX_REFLECTIONS")
    with pytest.raises(InputError, match=r"different agent_settings \(agent setting max_reflections "
                                         r"\(HMRCRITIC_MAX_REFLECTIONS\): 0 there, 2 now\); use another --out"):
        export(cfg_for(out, model, **kw), inputs=make_inputs(3))
    assert len(D.read_manifest(out)) == 2  # nothing written, nothing lost
    monkeypatch.setenv("HMRCRITIC_MAX_REFLECTIONS", "0")
    export(cfg_for(out, model, **kw), inputs=make_inputs(3))  # the same settings resume
    recs = D.read_manifest(out)
    assert len(recs) == 3
    assert {s.rationale for r in recs for s in r.scores} == {"max_reflections=0 rules_k=3"}

    # a header written before the field: unknown settings, resumed as before
    raw = json.loads((out / D.HEADER).read_text())
    raw.pop("agent_settings")
    (out / D.HEADER).write_text(json.dumps(raw))
    monkeypatch.delenv("HMRCRITIC_MAX_REFLECTIONS")
    export(cfg_for(out, model, **kw), inputs=make_inputs(4))
    assert len(D.read_manifest(out)) == 4
    assert D.read_header(out).agent_settings is None  # still unknown: not this resume's settings claimed for all


def test_workers_score_with_the_settings_the_export_resolved(monkeypatch):
    """A worker (another process, a Ray node) built its agent settings from its own environment: the header's
    record would not have been what scored the groups. Workers take the export's resolved settings."""
    from hmrcritic.alignment.export import DEFAULT_SCORER, GroupWorker, WorkerContext, agent_settings
    from hmrcritic.errors import InputError

    monkeypatch.setenv("HMRCRITIC_USE_RULES", "0")
    monkeypatch.setenv("HMRCRITIC_RENDER", "1")
    resolved = agent_settings("builtin", DEFAULT_SCORER, True)
    assert resolved["use_rules"] is False and resolved["render"] is False  # builtin + default scorer: no renders
    monkeypatch.setenv("HMRCRITIC_USE_RULES", "1")  # the worker's environment differs
    ctx = WorkerContext(None, 4, 2, "builtin", DEFAULT_SCORER, True, "/m", None, 1, None, resolved)
    got = GroupWorker(ctx)._agent_config()
    assert got == {**resolved, "memory_dir": "/m", "chroma_url": None}
    monkeypatch.setenv("HMRCRITIC_RULES_K", "-1")
    with pytest.raises(InputError, match=r"HMRCRITIC_RULES_K=-1: input should be greater than or equal to 0"):
        agent_settings("builtin", DEFAULT_SCORER, True)


# ------------------------------------------------------------- evaluate-critic / learning-curve: explore as scored
def _spy_explore(monkeypatch) -> list[dict]:
    """The real explore, with the keyword arguments of each call kept."""
    real, seen = ex.explore, []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "explore", spy)
    return seen


def test_evaluate_critic_explores_with_the_ucb_c_it_scores_with(monkeypatch, tmp_path):
    """evaluate-critic explored at explore's own C = 1.0 whatever ``HMRCRITIC_UCB_C`` said, and scored its variants
    at the variable's C (its key records the variable, so the memory explored is keyed by it too)."""
    from hmrcritic.agent.evaluate_critic import evaluate_critic

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")  # train 40, test 2 scenes
    monkeypatch.setenv("HMRCRITIC_UCB_C", "2.5")
    seen = _spy_explore(monkeypatch)
    evaluate_critic(split="test", num_groups=1, num_generations=3, warmup_groups=2, batch_size=2,
                    variants=["full"], source="perturbed", workdir=tmp_path / "w")
    assert [k["ucb_c"] for k in seen] == [2.5]


def test_a_learning_curve_explores_with_the_rules_k_and_ucb_c_it_scores_with(train, monkeypatch, tmp_path):
    """learning-curve's rounds explored with explore's own rules_k 16 and C 1.0 and were scored with the
    ``HMRCRITIC_RULES_K`` / ``HMRCRITIC_UCB_C`` the curve's resume check records."""
    from hmrcritic.agent.learning_curve import learning_curve

    monkeypatch.setenv("HMRCRITIC_RULES_K", "4")
    monkeypatch.setenv("HMRCRITIC_UCB_C", "0.5")
    seen = _spy_explore(monkeypatch)
    learning_curve(MemoryStore(tmp_path / "m", chroma_url=""), rounds=1, batch_size=2, train_groups=train[:2],
                   heldout=train[6:8], explore_kwargs={"merge_text": False, "calibration_groups": 0})
    assert [(k["rules_k"], k["ucb_c"]) for k in seen] == [(4, 0.5)]


# ------------------------------------------------------------------------------- a doubtful calibration is said
def test_a_calibration_fitted_on_too_few_groups_is_said_to_be_doubtful(train, tmp_path):
    """``explore --calibration-groups 2`` stored a fit whose slope sat at its cap and which lowered point-wise r on
    its own groups, without a word, and every critique's overall then read 160–200 mm off. It is still stored (which
    calibration a memory keeps is an exploration decision), and the exploration's note says why it is doubtful."""
    from hmrcritic.agent.calibration import SLOPE_RANGE, calibration_doubts
    from hmrcritic.commands.explore import explore_line
    from hmrcritic.memory.schema import ScoreCalibration

    base = dict(intercept=0.1, hypotheses=320, pearson_before=0.5, pearson_after=0.6)
    assert calibration_doubts(ScoreCalibration(slope=0.5, groups=32, **base)) == []
    # the demo's own fit: r 0.671 → 0.660 on 32 groups is the log-space fit's way, not a doubt
    assert calibration_doubts(ScoreCalibration(slope=1.18, groups=32, **{**base, "pearson_before": 0.671,
                                                                         "pearson_after": 0.660})) == []
    doubts = calibration_doubts(ScoreCalibration(slope=SLOPE_RANGE[1], groups=2,
                                                 **{**base, "pearson_after": 0.45}))
    assert doubts == ["fitted on 2 group(s) only (fewer than 8)",
                      "its slope is held at the bound 3 (the fit wanted more)",
                      "it lowers point-wise r on its own fit (0.500 → 0.450)"]

    events = []
    mem = MemoryStore(tmp_path / "m", chroma_url="")
    summary = ex.explore(mem, rounds=1, groups=train, progress=lambda e, p: events.append((e, p)), **_KW)
    mem.close()
    assert summary.calibration is not None  # stored as before
    assert summary.calibration_note.startswith("this calibration is doubtful: fitted on 2 group(s) only")
    assert "memory calibration --clear --memory-dir" in summary.calibration_note
    line = [explore_line(e, p) for e, p in events if e == "calibrated"][0]
    assert line.startswith("score calibration: log s' =") and "\n  note: " in line and "calibration is doubtful" in line


# --------------------------------------------------------------- export: a server memory named by --chroma-url
def resetting_score(sample, hypotheses, judge="builtin", memory=None, config=None, group_id=None):
    """The export's stand-in scorer; at input img001 another machine (another local lock folder) adds a rule to
    the server memory, as a `memory import` or an exploration there would."""
    from test_export import fake_score

    from hmrcritic.memory.schema import Rule

    if sample.sample_id == "img001":
        other = MemoryStore(os.environ["S29_OTHER_LOCK"], chroma_url=os.environ["S29_SERVER"])
        other.rules.add([Rule(rule_id="rule-s29-elsewhere", text="a rule written on another machine")])
        other.close()
    return fake_score(sample, hypotheses, judge=judge, memory=memory, config=config, group_id=group_id)


def test_an_export_from_a_server_named_by_chroma_url_notices_a_write_elsewhere(chroma_url, tmp_path, monkeypatch):
    """With ``--chroma-url`` the export did not watch its memory at all (through HMRCRITIC_CHROMA_URL it did), and
    writers on other machines leave no trace in this machine's folder: a reset of the server mid-export gave a
    dataset scored by two memories under one header version, and `export validate` passed it. The server's
    version is now read every SERVER_CHECK_S seconds (0 here) and the message names the server."""
    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment import export as E
    from hmrcritic.errors import InputError

    MemoryStore(tmp_path / "lock", chroma_url=chroma_url).close()  # creates and seeds the server memory
    monkeypatch.setenv("S29_OTHER_LOCK", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("S29_SERVER", chroma_url)
    monkeypatch.setattr(E._MemoryWatch, "SERVER_CHECK_S", 0.0, raising=False)
    model = tiny_model(tmp_path / "tiny.pt")
    cfg = cfg_for(tmp_path / "ds", model, score_group="test_review_s29_lead:resetting_score", use_memory=True,
                  memory=str(tmp_path / "lock"), chroma_url=chroma_url)
    with pytest.raises(InputError, match=r"the memory on the Chroma server http://127\.0\.0\.1:\d+ changed while this "
                                         r"export ran .* the 1 group\(s\) written so far are kept"):
        E.export(cfg, inputs=make_inputs(4))
    # img001, scored while the write happened, is not written either
    assert [r.input_id for r in D.read_manifest(tmp_path / "ds")] == ["img000"]


def test_a_calibrated_memorys_version_is_what_it_was_before_the_metric_was_recorded(tmp_path):
    """The calibration's new ``error_metric`` field went into the memory's version hash, so every calibrated
    memory got a new version on upgrading (the published memory versions, an export's resume check). A PA-MPJPE
    calibration hashes as before (the value pinned here was computed by session 28's code); another metric's
    calibration is another version."""
    from hmrcritic.memory.schema import ScoreCalibration

    mem = MemoryStore(tmp_path / "m", chroma_url="")
    cal = ScoreCalibration(slope=0.49297862156256655, intercept=0.44425098844027455, groups=32, hypotheses=512,
                           split="train", first_group="train-000200", pearson_before=0.6773126830569168,
                           pearson_after=0.7615141405149971, rules_fingerprint="abc")
    mem.set_calibration(cal)
    assert mem.version() == "ff157c12bcd3bd24"
    mem.set_calibration(cal.model_copy(update={"error_metric": "mpjpe"}))
    assert mem.version() != "ff157c12bcd3bd24"
    mem.close()


def test_every_base_url_variable_has_its_credentials_masked(monkeypatch):
    """OPENAI_API_BASE became a base URL variable without joining the variables whose ``user:password@`` is
    masked: a password with a "/" (which the URL check reads as no credentials at all) was quoted back whole by
    httpx's "Invalid port" error."""
    from hmrcritic.config import BASE_URL_VARS
    from hmrcritic.redact import URL_ENV_VARS, scrub

    assert set(BASE_URL_VARS) <= set(URL_ENV_VARS)
    for name in BASE_URL_VARS:
        monkeypatch.setenv(name, "http://alice:Pa55w0rd/x@127.0.0.1:1/v1")
        assert "Pa55w0rd" not in scrub("InvalidURL: Invalid port: 'Pa55w0rd/x'"), name
        monkeypatch.delenv(name)


def test_the_retry_advice_speaks_of_a_refusal_only_where_groups_are_written(tmp_path):
    """A re-run after the export's memory changed is refused when the folder holds groups (another memory_version),
    and "re-running the export retries them" promised otherwise; into a folder with none it takes the folder over,
    so there the advice has no such clause."""
    from hmrcritic.alignment import dataset as D

    (tmp_path / D.FAILURES).write_text("")
    some = D._failed_warning(tmp_path, ["g0"])
    none = D._failed_warning(tmp_path, ["g0"], written=False)
    assert some.endswith(D.RETRY_ADVICE) and "that re-run is refused" in some
    assert none.endswith("re-running the same export retries them") and "refused" not in none
