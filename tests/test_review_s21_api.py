"""Session 21: the Python API's hypothesis files as other tools write them, and the run id a resumed critique
reports once it finished (found by the session-21 review of the critique command)."""

from __future__ import annotations

import numpy as np
import pytest

from hmrcritic.agent.api import critique_group, load_hypotheses
from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("small_prior")


def _ours(n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"global_orient": rng.normal(0, 0.3, (n, 3)).astype(np.float32),
            "body_pose": rng.normal(0, 0.2, (n, 69)).astype(np.float32),
            "betas": rng.normal(0, 1, (n, 10)).astype(np.float32),
            "transl": np.tile(np.float32([0, 0.2, 5]), (n, 1))}


def test_an_extra_pickled_key_is_ignored_not_fatal(tmp_path):
    """CONTRACTS.md: readers ignore extra keys. One object-dtype (pickled) key beside the four SMPL arrays made
    the whole file "not a readable .npz archive"."""
    ours = _ours()
    path = tmp_path / "h.npz"
    np.savez(path, **ours, meta=np.array([{"tool": "x"}], dtype=object))
    got = load_hypotheses(path)
    for k, v in ours.items():
        np.testing.assert_array_equal(got[k], v)


@pytest.mark.parametrize("layout", ["poses72", "poses24x3", "per_joint"])
def test_other_tools_pose_layouts_read_exactly(tmp_path, layout):
    """AMASS-style ``poses (N, 72)`` / ``(N, 24, 3)`` and per-joint ``(N, 23, 3)`` rotations are the same numbers
    as ours, split or reshaped; they were refused ("missing global_orient", "wrong shape")."""
    ours = _ours()
    full = np.concatenate([ours["global_orient"], ours["body_pose"]], axis=1)
    extra = {"betas": ours["betas"], "transl": ours["transl"]}
    if layout == "poses72":
        np.savez(tmp_path / "h.npz", poses=full, **extra)
    elif layout == "poses24x3":
        np.savez(tmp_path / "h.npz", poses=full.reshape(-1, 24, 3), **extra)
    else:
        np.savez(tmp_path / "h.npz", global_orient=ours["global_orient"].reshape(-1, 1, 3),
                 body_pose=ours["body_pose"].reshape(-1, 23, 3), **extra)
    got = load_hypotheses(tmp_path / "h.npz")
    for k, v in ours.items():
        np.testing.assert_array_equal(got[k], v)


def test_smplx_poses_are_refused_with_the_reason(tmp_path):
    ours = _ours()
    np.savez(tmp_path / "h.npz", poses=np.zeros((4, 165)), betas=ours["betas"], transl=ours["transl"])
    with pytest.raises(InputError, match=r"poses has shape \(4, 165\).*SMPL-X"):
        load_hypotheses(tmp_path / "h.npz")


def test_one_shared_shape_and_placement_apply_to_every_hypothesis():
    """One ``betas (10,)`` and one ``transl (3,)`` for a group (one person, many poses) were refused as
    "betas has 1 hypotheses, others have N"."""
    ours = _ours()
    got = load_hypotheses({**ours, "betas": ours["betas"][0], "transl": ours["transl"][0]})
    np.testing.assert_array_equal(got["betas"], np.repeat(ours["betas"][:1], 4, axis=0))
    np.testing.assert_array_equal(got["transl"], np.repeat(ours["transl"][:1], 4, axis=0))


def test_other_beta_counts_read_where_exact_and_refused_where_not():
    ours = _ours()
    padded = np.concatenate([ours["betas"], np.zeros((4, 6), np.float32)], axis=1)
    np.testing.assert_array_equal(load_hypotheses({**ours, "betas": padded})["betas"], ours["betas"])
    short = load_hypotheses({**ours, "betas": ours["betas"][:, :8]})["betas"]
    np.testing.assert_array_equal(short[:, :8], ours["betas"][:, :8])
    assert not short[:, 8:].any()
    with pytest.raises(InputError, match="16 coefficients and those past the tenth are not zero"):
        load_hypotheses({**ours, "betas": np.ones((4, 16), np.float32)})


def test_a_resumed_critique_reports_the_run_that_finished_it(tmp_path):
    """A critique interrupted in run A and finished in run B: a later call ("finished earlier") named run A,
    whose trace shows the crash, instead of B, which produced the scores."""
    from test_agent_graph import FlakyJudge, cfg, make_group

    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.errors import JudgeError
    from hmrcritic.memory.store import MemoryStore

    memory = MemoryStore(tmp_path / "mem")
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    s, h, _ = make_group(4, sample_id="resumed-run-id")
    judge = FlakyJudge()
    with pytest.raises(JudgeError):
        critique_group(s, h, judge=judge, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g")
    finished = critique_group(s, h, judge=judge, memory=memory, config=cfg(), checkpointer=saver,
                              run_dir=tmp_path / "g")
    assert finished.resumed and not finished.finished_earlier
    again = critique_group(s, h, judge=judge, memory=memory, config=cfg(), checkpointer=saver,
                           run_dir=tmp_path / "g")
    assert again.finished_earlier and again.run_id == finished.run_id
    assert [x.overall for x in again.scores] == [x.overall for x in finished.scores]


def test_a_failure_after_the_graph_ran_ends_the_trace(tmp_path, monkeypatch):
    """Trimming the finished thread (or reading its state back) can fail like the graph can (the database
    locked, the disk full); the trace was left without an end and read "interrupted, or still running"."""
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent import api
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.trace import read_trace
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(api, "_keep_last_checkpoint", disk_full)
    s, h, _ = make_group(5, sample_id="trace-ends")
    with pytest.raises(OSError):
        critique_group(s, h, memory=MemoryStore(tmp_path / "mem"), config=cfg(),
                       checkpointer=open_checkpointer(tmp_path / "ckpt.sqlite"), run_dir=tmp_path / "g")
    records = read_trace(last=True)
    assert records[-1]["event"] == "error" and "No space left" in records[-1]["error"]


def test_a_learning_critique_of_a_split_scene_is_held_out_from_evaluation(tmp_path):
    """``critique --scene test:3 --learn`` wrote that scene's prototypes (with the true error, where labels were
    given) without recording it in ``explored_on.json``: evaluating that memory on test-000003 afterwards recalled
    the scene's own prototype, every held-out check passing. A user's own scene is recorded nowhere."""
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent.explore import assert_not_explored, explored_record
    from hmrcritic.memory.store import MemoryStore

    memory = MemoryStore(tmp_path / "mem")
    s, h, errors = make_group(6, sample_id="test-000003")
    critique_group(s, h, memory=memory, config=cfg(learn=True), true_errors_mm=errors, run_dir=tmp_path / "g")
    assert explored_record(memory)["splits"]["test"]["group_ids"] == ["test-000003"]
    with pytest.raises(InputError, match="test-000003"):
        assert_not_explored(memory, "test", ["test-000002", "test-000003"])
    own, h2, _ = make_group(7, sample_id="my-photo")
    critique_group(own, h2, memory=memory, config=cfg(learn=True), run_dir=tmp_path / "g2")
    assert set(explored_record(memory)["splits"]) == {"test"}
    s3, h3, _ = make_group(8, sample_id="test-000004")
    critique_group(s3, h3, memory=memory, config=cfg(learn=False), run_dir=tmp_path / "g3")
    assert explored_record(memory)["splits"]["test"]["group_ids"] == ["test-000003"]
