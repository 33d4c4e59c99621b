"""Review s37 (mutation audit, part l): three gaps earlier audits left open in agent/explore.py and
alignment/export.py.

* explore ``_run_batch`` with ``prototypes="representative"``: the module doc says the prototypes are "the best
  and the worst hypothesis of each group and the hypotheses the critic misjudged most" (PROTOS_MISJUDGED = 2),
  best and worst by the TRUE error, so a group the critic ranks wrongly still stores its true best and worst;
* explore ``_check_overlap``: a run resumed or continued under its own signature is not "another run" of the
  memory, and must not be refused as overlapping the groups it learned from itself;
* export: the memory-changed stop message names how many groups were written so far (kept), a resume's earlier
  groups included.

Answers are worked out by hand from the docstrings (not copied from the code's output).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hmrcritic.agent import explore as ex
from hmrcritic.errors import InputError
from hmrcritic.memory.store import MemoryStore


# ---------------------------------------------------------------------------------- representative prototypes
class _Group:
    """A labelled group with hand-set true errors; the stand-in critique never looks at its sample."""

    def __init__(self, gid: str, errors):
        self.group_id, self.hypotheses, self.extra = gid, {}, {}
        self.sample = SimpleNamespace(keypoints=np.zeros((17, 3)), image_size=(64, 64))
        self.errors_mm = np.asarray(errors, np.float64)


def _stand_in_critique(overall_by_group: dict[str, list[float]]):
    """``critique_group`` replaced by a critic whose overall scores are set by hand (keyed by the group id the
    exploration passes: ``explore-<group>``)."""

    def critique_group(sample, hypotheses, *, group_id, **_):
        overall = overall_by_group[group_id.removeprefix("explore-")]
        scores = [SimpleNamespace(index=k, overall=float(s), motion_structure=float(s),
                                  physical_feasibility=float(s), image_alignment=float(s), rationale="stand-in.")
                  for k, s in enumerate(overall)]
        return SimpleNamespace(overall=list(overall), evidence={"reproj_px": [1.0] * len(overall)},
                               rules_recalled=[], rules_applied=[], scores=scores, run_dir=group_id)

    return critique_group


def test_representative_prototypes_are_the_true_best_and_worst_not_the_critics(tmp_path, monkeypatch):
    """One group of 6, true PA-MPJPE [40, 10, 60, 20, 50, 30]: true best h1 (10 mm), true worst h2 (60 mm); true
    ranks h1 0, h3 1, h5 2, h0 3, h4 4, h2 5. The critic scores [6, 8, 5, 3, 9, 7]: its ranks h4 0, h1 1, h5 2,
    h0 3, h2 4, h3 5 — its best is h4, its worst h3. Misjudged by |critic rank − true rank|: h3 4, h4 4, h1 1,
    h2 1, h0 0, h5 0, so the two most misjudged are h3 and h4. Representative prototypes: best h1, worst h2,
    misjudged h3, h4 — exactly {h1, h2, h3, h4}; h1 with its 10 mm, h2 with its 60 mm. A pick by the critic's
    score (best h4, worst h3) would store only h3 and h4."""
    from hmrcritic.agent import api, evidence, nodes
    from hmrcritic.memory import embeddings

    g = _Group("train-0", [40, 10, 60, 20, 50, 30])
    monkeypatch.setattr(api, "critique_group", _stand_in_critique({"train-0": [6, 8, 5, 3, 9, 7]}))
    monkeypatch.setattr(api, "discard_run", lambda res: None)
    monkeypatch.setattr(nodes, "load_bodies", lambda run_dir: {"joints": np.zeros((6, 24, 3))})
    monkeypatch.setattr(embeddings, "pose_embedding", lambda joints: np.eye(len(joints), embeddings.POSE_DIM))
    monkeypatch.setattr(evidence, "evidence_tags", lambda ev, kp, size: [])
    mem = MemoryStore(tmp_path / "m", seed_starter=False)
    # τ = −1: no group falls short, so no rule mining (the stand-in evidence has nothing to mine)
    s = ex.explore(mem, split="train", groups=[g], rounds=1, batch_size=1, tau=-1.0, calibration_groups=0,
                   max_new_rules=0)
    (rep,) = s.rounds
    assert rep.groups == 1 and rep.failed == [] and rep.prototypes == 4
    recs = {p["proto_id"]: p for p in mem.prototypes.export_records()}
    assert set(recs) == {f"explore:train-0#h{k}" for k in (1, 2, 3, 4)}
    assert recs["explore:train-0#h1"]["error_mm"] == pytest.approx(10.0)
    assert recs["explore:train-0#h2"]["error_mm"] == pytest.approx(60.0)
    # settled on the true rank: the true best gets the critic's top score (9), the true worst its lowest (3)
    assert recs["explore:train-0#h1"]["overall"] == pytest.approx(9.0)
    assert recs["explore:train-0#h2"]["overall"] == pytest.approx(3.0)


# ------------------------------------------------------------------------------------- overlap with itself
def test_a_runs_own_record_never_refuses_it_even_where_its_spans_meet_the_groups_to_come():
    """``_check_overlap`` refuses a run "that would explore groups *another* run of this memory already learned
    from"; a run's own record (same signature) is how it resumes and continues, never a reason to refuse it.
    The record here is made by hand (explore itself never writes a span that crosses a round's end, so its own
    records cannot meet its next groups): a run of batch 4 whose record holds a span [2, 6) and no round done.
    Compared with itself it would "meet" round 1 (groups 4–7) at #4–#5; it must go on, while the same record
    under another signature (another batch size) is refused at exactly those groups."""
    s = ex._settings("train", 4, 0, "auto", 16, "pa_mpjpe", 0, None)
    sig = ex._signature(s)
    prog = {"runs": {sig: {"settings": dict(s), "rounds_done": [], "spans": [[2, 6]]}}}
    ex._check_overlap(prog, sig, s, 2, None)  # its own record: not refused
    other = {**s, "batch_size": 2}
    with pytest.raises(InputError, match=r"#2–#5"):
        ex._check_overlap(prog, ex._signature(other), other, 3, None)


# ---------------------------------------------------------------------- export: the memory-changed stop's count
ME = "test_review_s37_mutants_l"
EXPORT_STATE: dict = {"fail": set(), "write_on": None, "memory": None}  # set by the test; serial: in-process


def _inputs(ids):
    rng = np.random.default_rng(0)
    K = np.array([[500, 0, 256], [0, 500, 256], [0, 0, 1]], np.float32)
    return [SimpleNamespace(sample_id=sid, keypoints=np.concatenate(
        [rng.uniform(150, 350, (17, 2)), rng.uniform(0.5, 1, (17, 1))], 1).astype(np.float32), K=K,
        image_size=(512, 512), joints3d=None) for sid in ids]


def memory_writing_score(sample, hypotheses, **kw):
    """A flat stand-in scorer that fails the ids in ``fail`` and, scoring ``write_on``, writes a prototype to the
    export's memory first (what an exploration running beside the export does)."""
    from hmrcritic.agent.schema import HypothesisScore
    from hmrcritic.memory.schema import Prototype

    if sample.sample_id in EXPORT_STATE["fail"]:
        raise RuntimeError(f"judge down for {sample.sample_id}")
    if sample.sample_id == EXPORT_STATE["write_on"]:
        v = np.random.default_rng(3).normal(size=69)
        store = MemoryStore(EXPORT_STATE["memory"], seed_starter=False)
        try:
            store.prototypes.add([Prototype(proto_id="learned", embedding=(v / np.linalg.norm(v)).tolist(),
                                            overall=5.0, motion_structure=5, physical_feasibility=5,
                                            image_alignment=5)])
        finally:
            store.close()
    n = hypotheses.body_pose.shape[1]
    return SimpleNamespace(scores=[HypothesisScore(index=i, motion_structure=5.0, physical_feasibility=5.0,
                                                   image_alignment=5.0, overall=5.0, rationale=f"h{i}")
                                   for i in range(n)])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2, T=100)), path)
    return path


def test_a_resume_stopped_by_a_memory_change_names_every_group_the_dataset_keeps(tmp_path, tiny_model):
    """Run 1 exports a–e with the judge failing b and c: the dataset holds a, d and e. Run 2 resumes with --limit 3
    (inputs a, b, c: a done, b and c retried): b is written, then an exploration writes the memory while c is
    scored, and the export stops before writing c. "The N group(s) written so far are kept" must say 4 — a, d, e
    from before and b from this run, all of which the dataset keeps (d and e lie beyond this run's inputs, yet
    stay written) — not 1 (this run's new groups), 2 (those of its inputs) or 3 (those from before)."""
    from hmrcritic.alignment import dataset as DS
    from hmrcritic.alignment.export import ExportConfig, export

    mem = tmp_path / "mem"
    MemoryStore(mem, seed_starter=False).close()
    out = tmp_path / "ds"

    def cfg(**kw):
        return ExportConfig(out=str(out), model=str(tiny_model), split="inline", num_generations=2,
                            sample_steps=1, score_group=f"{ME}:memory_writing_score", use_memory=True,
                            memory=str(mem), **kw)

    ids = ["a", "b", "c", "d", "e"]
    EXPORT_STATE.update(fail={"b", "c"}, write_on=None, memory=str(mem))
    try:
        s1 = export(cfg(), inputs=_inputs(ids))
        assert (s1.new_groups, s1.failures) == (3, 2)
        EXPORT_STATE.update(fail=set(), write_on="c")
        with pytest.raises(InputError, match="changed while this export ran") as err:
            export(cfg(limit=3), inputs=_inputs(ids))
    finally:
        EXPORT_STATE.update(fail=set(), write_on=None, memory=None)
    assert "the 4 group(s) written so far are kept" in str(err.value), str(err.value)
    assert sorted(r.input_id for r in DS.read_manifest(out)) == ["a", "b", "d", "e"]
