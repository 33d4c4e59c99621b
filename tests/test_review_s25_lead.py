"""Session 25, the lead engineer's own fixes and speed-ups (helpers' findings have their own files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrcritic.agent.api import load_hypotheses
from hmrcritic.commands import scene_from_spec
from hmrcritic.errors import InputError
from hmrcritic.hmr import anatomy
from hmrcritic.hmr.diffusion import MAX_GENERATIONS
from hmrcritic.hmr.rotations import axis_rotation
from hmrcritic.redact import printable


def _closest_in_box_six_rotations(r, start, lo, hi, sweeps):
    """The coordinate ascent as it was written before session 25: six axis rotations built every sweep."""
    rt = r.transpose(-1, -2)
    x, y, z = start.unbind(-1)
    for _ in range(sweeps):
        a = axis_rotation("Y", y) @ axis_rotation("Z", z) @ rt
        x = anatomy._best_angle(a[..., 1, 1] + a[..., 2, 2], a[..., 1, 2] - a[..., 2, 1], lo[..., 0], hi[..., 0])
        b = axis_rotation("Z", z) @ rt @ axis_rotation("X", x)
        y = anatomy._best_angle(b[..., 0, 0] + b[..., 2, 2], b[..., 2, 0] - b[..., 0, 2], lo[..., 1], hi[..., 1])
        c = rt @ axis_rotation("X", x) @ axis_rotation("Y", y)
        z = anatomy._best_angle(c[..., 0, 0] + c[..., 1, 1], c[..., 0, 1] - c[..., 1, 0], lo[..., 2], hi[..., 2])
    return torch.stack([x, y, z], -1)


def test_joint_limit_search_reusing_rotations_is_bit_identical(monkeypatch):
    """The joint-limit measure is evidence: building each rotation once per change must not move a single bit."""
    g = torch.Generator().manual_seed(25)
    for dtype, scale in ((torch.float32, 4.0), (torch.float64, 2.0), (torch.float32, 0.6)):
        body_pose = ((torch.rand(96, 69, generator=g) - 0.5) * scale).to(dtype)
        now = anatomy.joint_limit_violation(body_pose)
        with monkeypatch.context() as m:
            m.setattr(anatomy, "_closest_in_box", _closest_in_box_six_rotations)
            before = anatomy.joint_limit_violation(body_pose)
        assert (before > 0).any()  # the search ran on joints outside their boxes
        assert torch.equal(now, before)


def _hyps(n: int = 2, **over) -> dict:
    arrays = {"global_orient": np.zeros((n, 3)), "body_pose": np.zeros((n, 69)), "betas": np.zeros((n, 10)),
              "transl": np.tile([0.0, 0.2, 3.5], (n, 1))}
    return {**arrays, **over}


def test_complex_hypotheses_are_refused_not_cast_to_their_real_part():
    with pytest.raises(InputError, match="body_pose holds complex128 values, expected real numbers"):
        load_hypotheses(_hyps(body_pose=np.zeros((2, 69)) + 0.3j))


def test_no_hypotheses_with_a_shared_betas_says_so():
    """A shared (1, 10) betas beside zero hypotheses read "betas has 1 hypotheses, others have 0"."""
    with pytest.raises(InputError, match="no hypotheses"):
        load_hypotheses(_hyps(0, betas=np.zeros((1, 10)), transl=np.zeros((1, 3))))


def test_more_hypotheses_than_a_group_holds_are_refused_before_the_pairwise_evidence(tmp_path):
    path = tmp_path / "h.npz"
    np.savez(path, **_hyps(MAX_GENERATIONS + 1))
    with pytest.raises(InputError, match=f"{MAX_GENERATIONS + 1} hypotheses; a group holds at most "
                                         f"{MAX_GENERATIONS}") as err:
        load_hypotheses(path)
    assert str(path) in str(err.value)
    assert len(load_hypotheses(_hyps(MAX_GENERATIONS))["transl"]) == MAX_GENERATIONS


def test_a_translation_that_is_no_placement_is_refused():
    transl = np.array([[0.0, 0.2, 3.5], [0.0, 0.0, float(2**62)]])
    with pytest.raises(InputError, match="transl of hypothesis 1 reaches 4.61e"):
        load_hypotheses(_hyps(transl=transl))
    far = np.array([[0.0, 0.2, 1000.0], [0.0, 0.2, 3.5]])  # a telephoto framing of a person 1 km away still reads
    assert load_hypotheses(_hyps(transl=far))["transl"][0, 2] == 1000.0


@pytest.mark.parametrize("spec", ["test:²", "test:٣", "test:"])
def test_a_scene_index_of_unicode_digits_is_a_usage_error(spec):
    with pytest.raises(InputError, match="--scene must look like SPLIT:INDEX"):
        scene_from_spec(spec)


def test_printable_masks_what_prints_over_a_line_but_keeps_line_ends():
    """A bare carriage return, a vertical tab or a form feed in an error line quoting a server (or a group id) wrote
    over what the terminal showed before it; a CRLF line end must stay a line end."""
    assert printable("shown\rhidden\x0bx\x0cy") == "shown?hidden?x?y"
    assert printable("first line\r\nsecond\n\tthird") == "first line\r\nsecond\n\tthird"


def test_ctrl_c_right_after_a_checkpoint_was_renamed_into_place_names_that_checkpoint(tmp_path, monkeypatch):
    """A Ctrl-C that lands after the training state was renamed into place (during the folder's fsync) but before
    the run noted it said "before the first checkpoint" beside a state.pt a re-run resumes from (seen in CI-like
    load as a failure of test_ctrl_c_says_where_the_run_can_resume_from). The signal is raised at that point."""
    import sys
    from pathlib import Path

    from hmrcritic.hmr import train
    from hmrcritic.hmr.diffusion import DiffusionConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_diffusion import _tiny_data

    real = train._save_state

    def save_then_interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_save_state", save_then_interrupted)
    cfg = train.TrainConfig(steps=12, batch_size=8, warmup=2, lr=3e-3, log_every=5, ckpt_every=5, threads=1,
                            model=DiffusionConfig(d_model=32, layers=1, heads=2))
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        train.train_base(cfg, tmp_path / "run", data=_tiny_data(32, 0), notify=said.append)
    step = torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"]
    assert step == 5
    assert any(f"the last checkpoint is step 5 ({tmp_path / 'run' / 'state.pt'})" in line for line in said), said



def test_retries_past_a_thousand_back_off_without_overflow():
    """``backoff_base_s * 2 ** (attempt - 1)`` overflowed a float once ``attempt`` passed ~1024 (a large
    HMRCRITIC_VLM_RETRIES, which has no upper bound): the group failed with a bare OverflowError, not its last
    reason."""
    from hmrcritic.agent.vlm import VLMJudge
    from hmrcritic.config import JudgeSettings

    judge = VLMJudge(JudgeSettings(base_url="http://127.0.0.1:9/v1", model="stub-vlm", max_retries=5000),
                     backoff_base_s=1.0, backoff_max_s=30.0)
    waits = [judge._backoff(a) for a in (1, 2, 1025, 4999)]
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0
    assert all(15.0 <= w <= 30.0 for w in waits[2:])


@pytest.mark.usefixtures("small_prior")
def test_labels_given_on_a_rerun_of_a_learning_critique_are_learned_not_dropped(tmp_path):
    """A learning critique re-run with labels (first run without) returned the finished thread: its labels were
    silently never learned (``rules_recorded`` 0, prototypes without their true error)."""
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.memory.store import MemoryStore
    from tests.test_review_s25_graph import CONFIG, group

    s, h, err = group(3, "scene-labels")
    memory = MemoryStore(tmp_path / "mem")
    kw = dict(judge="builtin", memory=memory, config={**CONFIG, "use_memory": True}, learn=True,
              checkpointer=open_checkpointer(tmp_path / "ck.sqlite"), run_dir=tmp_path / "g")
    unlabelled = critique_group(s, h, **kw)
    assert unlabelled.memory_written["rules_recorded"] == 0
    labelled = critique_group(s, h, true_errors_mm=err, **kw)
    assert not labelled.finished_earlier
    assert labelled.memory_written["rules_recorded"] > 0
    assert critique_group(s, h, true_errors_mm=err, **kw).finished_earlier  # the same labels: reused
    assert critique_group(s, h, **kw).finished_earlier is False  # without them again: what it learned differs



def test_finetune_without_model_refuses_an_out_that_is_the_shipped_base(tmp_path, monkeypatch):
    """Without --model the base is the shipped checkpoint: an --out naming it would have replaced the shipped
    base model with the aligned one. (The shipped path is pointed at a copy, so that a regression overwrites the
    copy, not the checkout's model.)"""
    import shutil
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_finetune import write_dataset

    from hmrcritic.alignment import finetune as ft
    from hmrcritic.hmr.diffusion import DEFAULT_CHECKPOINT

    shipped = Path(shutil.copy(DEFAULT_CHECKPOINT, tmp_path / "base_model.pt"))
    monkeypatch.setattr(ft, "DEFAULT_CHECKPOINT", shipped)
    before = shipped.read_bytes()
    data = write_dataset(tmp_path / "prefs", n_groups=2)
    with pytest.raises(InputError, match="is the checkpoint being aligned"):
        ft.finetune(ft.FinetuneConfig(data=str(data), out=str(tmp_path / "." / "base_model.pt"), steps=1,
                                      threads=1), progress=False)
    assert shipped.read_bytes() == before
