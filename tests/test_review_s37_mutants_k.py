"""Session 37 mutation audit (k) of the agent's public entry (``agent/api.py``) and reproduce's bookkeeping
(``alignment/reproduce.py``): each test kills a mutant the existing tests let through. The expected values are
worked out from the docstrings and docs/CONTRACTS.md (group ids per content, what ``discard_run`` may delete,
ranking ties to the lower index, which cached stage re-runs when its inputs change), never copied from a run."""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_review_s13_alignment import stand_in_stages  # noqa: F401  (a fixture)

from hmrcritic.agent import api
from hmrcritic.agent.api import ScoredGroup, content_group_id, discard_run
from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.agent.state import AgentConfig


def _score(index: int, overall: float) -> dict:
    return {"index": index, "motion_structure": 5.0, "physical_feasibility": 5.0, "image_alignment": 5.0,
            "overall": overall, "rationale": "r"}


# ------------------------------------------------------------------------------------------------ api: ids
def test_content_group_id_follows_the_inputs_sample_and_hypotheses_alike():
    """``<sample id>-<8 hex digits of the inputs>``: the same inputs give the same id (a re-run resumes its
    thread), and other keypoints behind the same hypotheses are other inputs with their own id — with the sample
    left out of the digest, a re-detected image was refused as "already critiqued with different inputs"."""
    from test_agent_graph import make_group

    s, h, _ = make_group(5, n=3, sample_id="s37k")
    gid = content_group_id(s, h)
    assert re.fullmatch(r"s37k-[0-9a-f]{8}", gid), gid
    assert content_group_id(s, {k: v.copy() for k, v in h.items()}) == gid
    moved = copy.copy(s)
    moved.keypoints = s.keypoints.copy()
    moved.keypoints[0, 0] += 3.0  # one keypoint 3 px to the right
    assert content_group_id(moved, h) != gid
    h2 = {k: v.copy() for k, v in h.items()}
    h2["transl"][0, 2] += 0.1
    assert content_group_id(s, h2) != gid


def test_a_thread_lock_entry_goes_once_nobody_holds_it():
    """The per-thread lock entry is dropped when its last holder leaves (docstring): one kept per group for the
    life of the process otherwise — an export of 10,000 groups keeps 10,000 locks."""
    thread = "s37k-lock-entry"
    with api._one_critique_per_thread(thread):
        assert thread in api._THREAD_LOCKS
    assert thread not in api._THREAD_LOCKS
    with api._one_critique_per_thread(thread):  # and a later critique of it still gets a lock
        pass
    assert thread not in api._THREAD_LOCKS


def test_jobs_with_judges_of_their_own_are_each_tried_whatever_the_others_endpoints_did(monkeypatch):
    """The batch stops after UNUSABLE_IN_A_ROW unusable endpoints in a row only when its groups share one judge:
    jobs that bring judges of their own have endpoints of their own, and one refused key says nothing of the next
    job's. (critique_group is replaced as in test_review_s23_mutation: the count is critique_groups' own logic.)"""
    from hmrcritic.agent.vlm import EndpointUnusableError

    calls: list[str] = []

    def scripted(**job):
        calls.append(job["group_id"])
        raise EndpointUnusableError("HTTP 401", f"http://127.0.0.1:9/{job['group_id']}", "the key is refused")

    monkeypatch.setattr(api, "critique_group", scripted)
    jobs = [{"sample": SimpleNamespace(sample_id=f"s{i}"), "hypotheses": None, "group_id": f"g{i}", "judge": "vlm"}
            for i in range(5)]
    res = api.critique_groups(jobs, workers=1)
    assert calls == [f"g{i}" for i in range(5)]
    assert not any("not tried" in r.error for r in res), [r.error for r in res]


FAST = {"render": False, "max_reflections": 0, "use_memory": False}


@pytest.mark.slow  # three whole critiques: 40–100 s on a busy 2-core machine
def test_a_throwaway_critique_leaves_the_kept_critique_of_its_group_alone():
    """keep=False runs on a thread of its own (docstring: exploration, evaluation loops): run on the group's own
    thread, a throwaway critique under other settings replaced the kept, finished critique and then deleted its
    thread — the user's critique lost."""
    from test_agent_graph import make_group

    from hmrcritic.agent.api import critique_group

    s, h, _ = make_group(9, n=3, sample_id="s37k-keep")
    kept = critique_group(s, h, config=FAST, group_id="s37k-keep")
    critique_group(s, h, config={**FAST, "max_reflections": 1}, group_id="s37k-keep", keep=False)
    again = critique_group(s, h, config=FAST, group_id="s37k-keep")
    assert again.finished_earlier and again.run_id == kept.run_id


def test_a_negative_true_error_is_refused_before_any_work():
    """true_errors_mm are errors in mm, ≥ 0: a signed difference passed by mistake is an InputError."""
    from test_agent_graph import make_group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.errors import InputError

    s, h, errors = make_group(10, n=3, sample_id="s37k-neg")
    with pytest.raises(InputError, match="≥ 0"):
        critique_group(s, h, config=FAST, true_errors_mm=[-1.0, *list(errors)[1:]], keep=False)


# ---------------------------------------------------------------------------------------- api: discard_run
@pytest.fixture()
def roots(tmp_path, monkeypatch):
    """runs_dir() and the system temp folder as two folders of tmp_path, so what lies beside them is outside both."""
    runs, systmp = tmp_path / "runs", tmp_path / "systmp"
    (runs / "groups" / "g1").mkdir(parents=True)
    systmp.mkdir()
    monkeypatch.setenv("HMRCRITIC_RUNS", str(runs))
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    return runs, systmp


def _victim(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "precious.txt").write_text("user data")
    return folder


def test_discard_run_removes_a_run_folder_but_never_a_root_itself(roots):
    runs, systmp = roots
    _victim(runs / "groups" / "g1")
    discard_run(str(runs / "groups" / "g1"))
    assert not (runs / "groups" / "g1").exists()  # inside runs_dir(): removed
    _victim(runs / "groups" / "g2")
    for root in (runs, systmp):
        discard_run(str(root))  # a result whose run_dir is a root: the root is not a run folder
        assert root.is_dir()
    assert (runs / "groups" / "g2" / "precious.txt").is_file()


def test_discard_run_leaves_a_sibling_folder_whose_name_only_begins_like_runs(roots, tmp_path):
    """``<home>/runs-backup`` begins with the text of ``<home>/runs`` but is not inside it."""
    victim = _victim(tmp_path / "runs-backup")
    discard_run(str(victim))
    discard_run(ScoredGroup(group_id="g", scores=[], ranking=[], run_dir=str(victim)))
    assert (victim / "precious.txt").is_file()


def test_discard_run_leaves_a_folder_reached_by_dot_dot_from_inside_runs(roots, tmp_path):
    """``runs/groups/../../elsewhere`` names a folder outside runs_dir(): only where the path really is counts."""
    runs, _ = roots
    victim = _victim(tmp_path / "elsewhere")
    discard_run(str(runs / "groups" / ".." / ".." / "elsewhere"))
    assert (victim / "precious.txt").is_file()


# ------------------------------------------------------------------------------------ api: ranking, overall
def test_ranking_is_best_first_with_ties_to_the_lower_index():
    """CONTRACTS.md: ranking is the indices sorted by (−overall, index) — best first, ties to the lower index."""
    values = {"group_id": "g", "critique": {"scores": [_score(0, 3.0), _score(1, 7.0), _score(2, 7.0),
                                                        _score(3, 9.0)]}}
    res = api._scored(values, AgentConfig(render=False), resumed=False)
    assert res.ranking == [3, 1, 2, 0]
    assert res.overall == [3.0, 7.0, 7.0, 9.0]


def test_overall_is_in_hypothesis_index_order_whatever_order_the_scores_came_in():
    """``overall``: the overall scores in hypothesis index order, also for a ScoredGroup read back from a
    scores.json whose scores were written in another order."""
    sg = ScoredGroup(group_id="g", scores=[HypothesisScore(**_score(1, 2.0)), HypothesisScore(**_score(0, 8.0))],
                     ranking=[0, 1])
    assert sg.overall == [8.0, 2.0]


# ------------------------------------------------------------------------------- api: what a reuse compares
def test_a_mask_file_replaced_behind_the_same_path_is_other_settings(tmp_path):
    """The settings digest holds the bytes of the image and of the mask file: a new mask at the same path must
    not get the old critique back."""
    mask = tmp_path / "mask.png"
    mask.write_bytes(b"mask one")
    cfg = AgentConfig(render=False)
    first = api._settings_digest(cfg, None, str(mask))
    assert api._settings_digest(cfg, None, str(mask)) == first
    mask.write_bytes(b"mask two")
    assert api._settings_digest(cfg, None, str(mask)) != first


def test_two_memory_stores_handed_in_are_two_memories():
    """A finished critique made with ``MemoryStore(a)`` is not the critique with ``MemoryStore(b)``."""
    cfg = AgentConfig(render=False, use_memory=True)
    a = SimpleNamespace(path="/data/mem-a", chroma_url=None, rules=lambda: [])
    b = SimpleNamespace(path="/data/mem-b", chroma_url=None, rules=lambda: [])
    assert api._memory_identity(cfg, a) != api._memory_identity(cfg, b)


def test_homes_sharing_one_runs_folder_have_their_own_memories(tmp_path, monkeypatch):
    """With HMRCRITIC_RUNS outside the home (one checkpoint file for several homes), the home's memory is named:
    a critique in home 2 must not come back "finished earlier" with home 1's critique."""
    for var in ("HMRCRITIC_MEMORY", "HMRCRITIC_CHROMA_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "shared-runs"))
    cfg = AgentConfig(render=False, use_memory=True)
    ids = []
    for home in ("home1", "home2"):
        monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / home))
        ids.append(api._memory_identity(cfg, None))
    assert ids[0] != ids[1]


def test_labels_given_to_a_learning_critique_are_other_settings_than_none(tmp_path, monkeypatch):
    """A learning critique writes its labels into its prototypes: a re-run with labels of a group learned without
    them (or with others) must not find the finished thread's settings — the labels would never be learned. The
    settings digest each call computes is caught, and the call stopped there (no graph runs: fast)."""
    from test_agent_graph import make_group

    from hmrcritic.agent.api import critique_group

    seen: list[str] = []
    real = api._settings_digest

    class Stop(Exception):
        pass

    def digest(*a, **k):
        seen.append(real(*a, **k))
        raise Stop

    monkeypatch.setattr(api, "_settings_digest", digest)
    s, h, errors = make_group(8, n=3, sample_id="s37k-labels")
    kw = {"memory": str(tmp_path / "memory"), "config": {"render": False, "max_reflections": 0}, "learn": True}
    for labels in (None, errors, errors, [e + 1.0 for e in errors]):
        with pytest.raises(Stop):
            critique_group(s, h, true_errors_mm=labels, **kw)
    assert seen[1] == seen[2] and len({seen[0], seen[1], seen[3]}) == 3, seen


# ------------------------------------------------------------------------------------ reproduce: the caches
@pytest.fixture()
def staged(tmp_path, monkeypatch, stand_in_stages):  # noqa: F811
    """stand_in_stages, with an explore whose memory version changes on every exploration (a VLM answers
    otherwise; a NaN in its summary, as a round that ranked no group has), an export whose failures are given
    per call, and records of the finetunes and evaluations run."""
    from test_finetune import write_dataset

    import hmrcritic.alignment.export as ex
    import hmrcritic.alignment.finetune as ft
    import hmrcritic.hmr.evaluate as hev
    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment import reproduce as rp

    log = {"explore": [], "export": [], "finetune": [], "evaluate": [], "failures": []}

    def explore(preset, memory_dir, *a):
        log["explore"].append(memory_dir.name)
        memory_dir.mkdir(parents=True, exist_ok=True)
        (memory_dir / "chroma.sqlite3").write_bytes(b"")
        return {"engine": "stand-in", "version": f"v{len(log['explore'])}", "stats": {},
                "summary": {"spearman_mean": float("nan")}}

    def export(cfg, progress=None):
        log["export"].append(Path(cfg.out).name)
        failures = log["failures"].pop(0) if log["failures"] else 0
        scratch = write_dataset(tmp_path / "scratch" / str(len(log["export"])), n_groups=2)
        shutil.copytree(scratch, cfg.out, dirs_exist_ok=True)
        return SimpleNamespace(groups=2, failures=failures,
                               model_dump=lambda: {"groups": 2, "failures": failures})

    def finetune(cfg, progress=None):
        D.read_header(cfg.data)
        log["finetune"].append((Path(cfg.out).name.split("-")[0], cfg.lr, cfg.base_loss_weight))
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_bytes(b"")
        return cfg.out

    def evaluate_model(model, **k):
        log["evaluate"].append(k["limit"])
        return {"n_samples": 1}

    monkeypatch.setattr(rp, "_explore", explore)
    monkeypatch.setattr(ex, "export", export)
    monkeypatch.setattr(ft, "finetune", finetune)
    monkeypatch.setattr(hev, "evaluate_model", evaluate_model)
    monkeypatch.setattr(rp, "CriticSelector", lambda *a, **k: None)  # critic top-1 on: its key, not its scoring
    return log


def _lines(rp, out: Path, **over) -> str:
    lines: list[str] = []
    rp.reproduce("quick", out_dir=out, overrides=over, progress=lines.append)
    return "\n".join(lines)


def test_a_deleted_memory_is_explored_again_and_every_stage_that_read_it_re_runs(tmp_path, staged):
    """The explore record alone is not the memory: with the memory folder gone the stage runs again, and its new
    memory (another version) re-runs the export scored with it and the base row's critic top-1."""
    from hmrcritic.alignment import reproduce as rp

    out = tmp_path / "run"
    _lines(rp, out, objectives="gpa")
    assert (len(staged["explore"]), len(staged["export"]), len(staged["evaluate"])) == (1, 1, 2)
    shutil.rmtree(next(out.glob("memory-*")))
    text = _lines(rp, out, objectives="gpa")
    assert len(staged["explore"]) == 2 and staged["explore"][0] == staged["explore"][1]  # same key, re-run
    assert len(staged["export"]) == 2, text  # scored with the new memory: exported again
    assert "evaluate base: done before" not in text and len(staged["evaluate"]) == 4
    # results.json is strict JSON (the NaN of the exploration's summary is null)
    json.loads((out / "results.json").read_text(encoding="utf-8"),
               parse_constant=lambda c: pytest.fail(f"results.json holds {c}"))


def test_an_export_with_failed_groups_is_retried_and_the_complete_dataset_trained_again(tmp_path, staged):
    from hmrcritic.alignment import reproduce as rp

    out = tmp_path / "run"
    staged["failures"] = [1]  # the first export leaves a group failed; the retry completes it
    _lines(rp, out, objectives="gpa", critic_top1="false")
    text = _lines(rp, out, objectives="gpa", critic_top1="false")
    assert "(retrying 1 failed)" in text and len(staged["export"]) == 2
    assert len(staged["finetune"]) == 2, text  # the short dataset's model is not the complete one's


def test_a_changed_finetune_input_re_trains_and_re_evaluates_only_what_it_feeds(tmp_path, staged):
    from hmrcritic.alignment import reproduce as rp

    out = tmp_path / "run"
    over = {"objectives": "gpa,gpa_no_base_loss", "critic_top1": "false"}
    _lines(rp, out, **over)
    # gpa_no_base_loss is gpa with the base loss weight 0 (module doc), whatever the preset's base weight
    assert sorted(staged["finetune"]) == [("gpa", 1e-4, 1.0), ("gpa_no_base_loss", 1e-4, 0.0)]
    assert len(staged["evaluate"]) == 3
    text = _lines(rp, out, **over, base_loss_weight="0.5")  # gpa reads it; gpa_no_base_loss has 0 by definition
    assert "finetune gpa_no_base_loss: done before" in text and len(staged["finetune"]) == 3
    assert len(staged["evaluate"]) == 4
    text = _lines(rp, out, **over, lr="3e-4")  # another learning rate: both re-trained and re-evaluated
    assert len(staged["finetune"]) == 5 and "evaluate base: done before" in text
    assert "evaluate gpa: done before" not in text and len(staged["evaluate"]) == 6
    for ckpt in (out / "models").glob("gpa-*.pt"):  # the checkpoints gone, their records left: trained again
        ckpt.unlink()
    _lines(rp, out, **over, lr="3e-4")
    assert len(staged["finetune"]) == 6 and len(staged["evaluate"]) == 6  # the same model: its evaluation kept
    _lines(rp, out, **over, lr="3e-4", eval_limit="5")  # fewer test inputs: every row evaluated again
    assert staged["evaluate"][6:] == [5, 5, 5]


def test_a_baselines_finetune_key_leaves_out_the_gpa_only_settings():
    """DPO and SFT ignore t_min, gpa_weight and the base loss: tuning those must not re-train the baselines,
    while GPA's key follows them."""
    from hmrcritic.alignment import reproduce as rp

    common = {"steps": 6, "lr": 1e-4, "beta": 100.0, "t_min": None, "gpa_weight": 0.1}
    other = {**common, "t_min": 100, "gpa_weight": 0.2}
    for obj in ("dpo", "sft"):
        assert rp._finetune_key("k", obj, common, 1.0) == rp._finetune_key("k", obj, other, 0.0)
    assert rp._finetune_key("k", "gpa", common, 1.0) != rp._finetune_key("k", "gpa", other, 1.0)


def test_the_tables_header_gives_the_setting_when_the_rows_evaluated_different_counts():
    """"evaluate N inputs": the count the rows evaluated when they agree, else the eval_limit setting (one count
    of one row would misstate the others)."""
    from hmrcritic.alignment.reproduce import ROW_KEYS, format_table

    rows = [{"model": m, **{k: 1.0 for k in ROW_KEYS}} for m in ("base", "gpa")]
    res = {"rows": rows, "preset": "quick", "settings": {"eval_limit": 6, "eval_split": "test"}, "export": {},
           "extra": {"base": {"n_samples": 4}, "gpa": {"n_samples": 4}}}
    assert "evaluate 4 `test` inputs" in format_table(res)
    res["extra"]["gpa"]["n_samples"] = 5
    assert "evaluate 6 `test` inputs" in format_table(res)
