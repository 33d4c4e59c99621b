"""Session 35, mutation audit of ``hmrcritic/alignment/finetune.py`` (its loop, resume and checks, not its numbers).

Each test here kills a mutant that the existing tests let through; the expected behaviour is worked out by hand
from the module's docstrings, FinetuneConfig's comments and the optimiser's definition (AdamW, gradient clipping),
never copied from a run. Tiny model (``test_finetune.TINY``), 4 groups of 4 hypotheses, 2–4 steps per run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_finetune import TINY, write_dataset

from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.alignment import dataset as D
from hmrcritic.alignment import finetune as ft
from hmrcritic.alignment.finetune import FinetuneConfig, TrainingDiverged, finetune, state_dict_hash
from hmrcritic.errors import InputError
from hmrcritic.hmr.diffusion import X_DIM, HMRDiffusion, load_model, save_model
from hmrcritic.io import append_jsonl


def _tiny_model(seed: int = 0) -> HMRDiffusion:
    torch.manual_seed(seed)
    model = HMRDiffusion(TINY)
    for head in (model.joint_out, model.shape_out):  # non-zero heads: a model that denoises something
        torch.nn.init.normal_(head.weight, std=0.05)
    return model


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    return save_model(_tiny_model(), tmp_path_factory.mktemp("base") / "base.pt")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("prefs"), n_groups=4, N=4)


def _cfg(data, base, out, **kw):
    kw = {"steps": 2, "batch_size": 2, "num_generations": 4, "checkpoint_every": 2, "lr": 1e-3, **kw}
    return FinetuneConfig(data=str(data), model=str(base), out=str(out), **kw)


def _log(out) -> list[dict]:
    return [json.loads(line) for line in open(str(out) + ".log.jsonl").read().splitlines()]


def _state(out) -> dict:
    return torch.load(str(out) + ".state.pt", map_location="cpu", weights_only=True)


# --- config range checks (M01–M04, M06) ---------------------------------------------------------------------------

@pytest.mark.parametrize(("kw", "flag"), [
    ({"steps": 0}, "--steps"), ({"batch_size": 0}, "--batch-size"), ({"checkpoint_every": 0}, "--checkpoint-every"),
    ({"log_every": 0}, "log_every"),
    ({"ema": 1.0}, "--ema"),  # [0, 1): a decay of 1 keeps the EMA at the base weights for ever
    ({"num_generations": 1}, "--num-generations"),  # a group of one has no preference
    ({"seed": 2**32}, "--seed"),  # the CLI's range is 0..2**32 - 1
    ({"gpa_weight": 0.0, "base_loss_weight": 0.0}, "--gpa-weight"),  # a loss of 0 at every step
])
def test_out_of_range_settings_are_refused_at_construction(kw, flag, tmp_path):
    with pytest.raises(InputError, match=flag):
        FinetuneConfig(data=str(tmp_path / "d"), out=str(tmp_path / "o.pt"), **kw)


def test_the_edges_of_the_ranges_are_accepted(tmp_path):
    cfg = FinetuneConfig(data=str(tmp_path / "d"), out=str(tmp_path / "o.pt"), steps=1, batch_size=1,
                         checkpoint_every=1, log_every=1, ema=0.0, num_generations=2, seed=2**32 - 1)
    assert (cfg.steps, cfg.num_generations, cfg.seed) == (1, 2, 2**32 - 1)


# --- resume refuses other settings (M07) -------------------------------------------------------------------------

def test_resume_refuses_another_beta(data_dir, base_ckpt, tmp_path):
    """β is not among the settings a resumed run may change (steps, cadences, progress, threads): the implicit
    reward it scales changes the loss of every later step."""
    out = tmp_path / "a.pt"
    finetune(_cfg(data_dir, base_ckpt, out))
    with pytest.raises(InputError, match="different settings.*beta"):
        finetune(_cfg(data_dir, base_ckpt, out, steps=4, beta=50.0))
    finetune(_cfg(data_dir, base_ckpt, out, steps=3, checkpoint_every=3, log_every=3))  # those may change
    assert _state(out)["step"] == 3


# --- the reference is frozen, the policy trains (M10, M11) ------------------------------------------------------

def test_reference_frozen_in_eval_mode_and_policy_in_train_mode(data_dir, base_ckpt, tmp_path, monkeypatch):
    """The reference is "a frozen copy of the base model" (module docstring; objectives.frozen_reference: eval mode,
    no grads); the policy trains (with dropout on, every step draws from the global RNG: test_finetune's bitwise
    resume test relies on it). Both seen from inside the loss."""
    seen = []
    real = ft.compute_loss

    def spy(policy, reference, *args, **kw):
        seen.append((policy.training, reference.training, [p.requires_grad for p in reference.parameters()],
                     state_dict_hash(reference)))
        return real(policy, reference, *args, **kw)

    monkeypatch.setattr(ft, "compute_loss", spy)
    finetune(_cfg(data_dir, base_ckpt, tmp_path / "f.pt"))
    base_hash = state_dict_hash(load_model(base_ckpt))
    assert len(seen) == 2
    for policy_training, ref_training, ref_grads, ref_hash in seen:
        assert policy_training and not ref_training and not any(ref_grads) and ref_hash == base_hash


# --- the log window (M12, M13, M14) -----------------------------------------------------------------------------

def test_a_metric_is_averaged_over_the_steps_that_report_it():
    """A DPO step with every group tied reports no reward margin: the window's mean is over the steps that do."""
    assert ft._mean_metrics([{"loss": 1.0, "reward_margin": 2.0}, {"loss": 3.0}]) == {"loss": 2.0,
                                                                                    "reward_margin": 2.0}


def test_each_log_record_averages_only_its_own_window(data_dir, base_ckpt, tmp_path):
    """Logging does not move the weights, so a run logging every step and one logging every 2nd step train the same
    steps: the 2-step record is the mean of the two 1-step records of its window (and not of earlier windows)."""
    every1 = _log(finetune(_cfg(data_dir, base_ckpt, tmp_path / "e1.pt", steps=4, log_every=1)))
    every2 = _log(finetune(_cfg(data_dir, base_ckpt, tmp_path / "e2.pt", steps=4, log_every=2)))
    assert [r["step"] for r in every2] == [2, 4]
    for rec, pair in zip(every2, (every1[0:2], every1[2:4]), strict=True):
        assert rec["loss"] == pytest.approx((pair[0]["loss"] + pair[1]["loss"]) / 2, rel=1e-9, abs=1e-12)


def test_the_last_step_is_logged_and_checkpointed_off_the_cadence(data_dir, base_ckpt, tmp_path):
    """steps 3, log and checkpoint every 2: step 2 by the cadence, step 3 because it is the last."""
    out = finetune(_cfg(data_dir, base_ckpt, tmp_path / "c.pt", steps=3, log_every=2, checkpoint_every=2))
    assert [r["step"] for r in _log(out)] == [2, 3]
    assert _state(out)["step"] == 3


class Killed(Exception):
    pass


def test_a_resume_inside_a_log_window_logs_what_an_uninterrupted_run_logs(data_dir, base_ckpt, tmp_path,
                                                                          monkeypatch):
    """Checkpoint at step 2, log at step 4, killed during step 3: the resumed run's step-4 record must be the mean
    over steps 1–4 (the open window is saved with the state), as the uninterrupted run logs it."""
    kw = {"steps": 4, "log_every": 4, "checkpoint_every": 2}
    straight = _log(finetune(_cfg(data_dir, base_ckpt, tmp_path / "s.pt", **kw)))
    real = ft.ema_update

    def kill_in_step_3(ema, policy, step, decay):
        if step == 2:
            raise Killed
        real(ema, policy, step, decay)

    monkeypatch.setattr(ft, "ema_update", kill_in_step_3)
    with pytest.raises(Killed):
        finetune(_cfg(data_dir, base_ckpt, tmp_path / "r.pt", **kw))
    monkeypatch.setattr(ft, "ema_update", real)
    assert _state(tmp_path / "r.pt")["step"] == 2
    resumed = _log(finetune(_cfg(data_dir, base_ckpt, tmp_path / "r.pt", **kw)))
    assert [r["step"] for r in resumed] == [4]
    assert resumed[0]["loss"] == straight[0]["loss"] and resumed[0]["grad_norm"] == straight[0]["grad_norm"]


# --- settings read from the config (M21, M23, M24, M29) --------------------------------------------------------

def _write_mixed_groups(root, sizes=(4, 6)):
    """A dataset whose groups hold different numbers of hypotheses (an export resumed with another -n)."""
    rng = np.random.default_rng(3)
    D.write_header(root, D.DatasetHeader(source="test", model_hash="x", judge="builtin", num_generations=max(sizes),
                                         sample_steps=2, seed=0, x_dim=X_DIM))
    for g, n in enumerate(sizes):
        x0 = rng.normal(size=(n, X_DIM)).astype(np.float32)
        overall = np.linspace(1, 9, n)
        kp = np.concatenate([rng.uniform(100, 400, size=(17, 2)), np.ones((17, 1))], 1)
        cond = D.condition_arrays(kp, [[500, 0, 256], [0, 500, 256], [0, 0, 1]], (512, 512))
        hyps = {"x0": x0, "global_orient": np.zeros((n, 3), np.float32), "body_pose": np.zeros((n, 69), np.float32),
                "betas": x0[:, -10:].copy(), "transl": np.zeros((n, 3), np.float32)}
        cref, href = D.write_group_arrays(root, f"g{g}", cond, hyps)
        scores = [HypothesisScore(index=i, motion_structure=s, physical_feasibility=s, image_alignment=s, overall=s,
                                  rationale="t") for i, s in enumerate(overall.tolist())]
        rec = D.build_record(group_id=f"g{g}", input_id=f"g{g}", source="test", condition=cref, hypotheses=href,
                             num_hypotheses=n, x_dim=X_DIM, scores=scores, judge="builtin", memory_version="m0",
                             model_hash="x", seed=0, group_seed=g)
        append_jsonl(root / D.MANIFEST, {k: v for k, v in rec.to_line_dict().items() if k != "checksum"})
    D.write_pairs(root, D.read_manifest(root))
    return root


def test_groups_of_different_sizes_draw_the_smallest_group_size(base_ckpt, tmp_path):
    """num_generations 20 on groups of 4 and 6: G = min(20, 4) = 4 hypotheses drawn per group and step (the
    checkpoint's num_generations_used), so a batch of both groups stacks."""
    root = _write_mixed_groups(tmp_path / "mixed")
    out = finetune(_cfg(root, base_ckpt, tmp_path / "m.pt", num_generations=20, batch_size=2))
    assert load_model(out).checkpoint_extra["num_generations_used"] == 4
    assert [r["num_generations"] for r in _log(out)] == [4, 4]


def _max_change(out, base_ckpt) -> float:
    a, b = load_model(out).state_dict(), load_model(base_ckpt).state_dict()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_grad_clip_is_the_one_configured(data_dir, base_ckpt, tmp_path):
    """Gradients clipped to a total norm of 1e-12 are far below Adam's eps (1e-8): each step moves a weight by at
    most lr · 1e-12 / 1e-8 = 1e-7 (lr 1e-3), so 2 steps stay under 1e-6; with the default clip of 1 Adam's first step
    moves every weight with a gradient by about lr. ema 0: the checkpoint is the policy."""
    tiny = finetune(_cfg(data_dir, base_ckpt, tmp_path / "t.pt", grad_clip=1e-12, ema=0.0))
    plain = finetune(_cfg(data_dir, base_ckpt, tmp_path / "p.pt", ema=0.0))
    assert _max_change(tiny, base_ckpt) < 1e-6 < 1e-4 < _max_change(plain, base_ckpt)


def test_weight_decay_is_the_one_configured(data_dir, base_ckpt, tmp_path):
    """AdamW's decoupled decay multiplies each trained weight by (1 - lr·wd) per step: lr 1e-2, wd 10 → 0.9, so
    0.81 after 2 steps; the gradient part is held under 2e-6 by a clip of 1e-12 (see the test above)."""
    out = finetune(_cfg(data_dir, base_ckpt, tmp_path / "wd.pt", lr=1e-2, weight_decay=10.0, grad_clip=1e-12,
                        ema=0.0))
    a, b = load_model(out).state_dict(), load_model(base_ckpt).state_dict()
    decayed = [k for k in a if b[k].abs().max() > 0.01 and torch.allclose(a[k], 0.81 * b[k], atol=1e-5)]
    assert len(decayed) > len(a) // 2


def test_ema_zero_ships_the_policy_weights(data_dir, base_ckpt, tmp_path):
    """--ema 0: the decay min(0, warm-up) is 0, so the EMA is the policy after every step and the final
    checkpoint (the EMA weights) equals the saved state's policy."""
    out = finetune(_cfg(data_dir, base_ckpt, tmp_path / "e.pt", ema=0.0))
    final, policy = load_model(out).state_dict(), _state(out)["policy"]
    assert all(torch.equal(final[k], policy[k]) for k in final)


# --- early stop, --no-resume (M25, M28) --------------------------------------------------------------------------

def test_a_nan_loss_at_the_first_step_names_the_base_model_or_data(data_dir, tmp_path):
    """No update was made before step 1: its NaN comes from the base model or the data, not --lr."""
    model = _tiny_model()
    with torch.no_grad():
        model.joint_out.weight.fill_(3e38)  # finite (a NaN weight is refused on load), but its outputs overflow
    base = save_model(model, tmp_path / "nan.pt")
    with pytest.raises(TrainingDiverged, match="cannot start"):
        finetune(_cfg(data_dir, base, tmp_path / "n.pt"))


def test_no_resume_starts_over_with_new_settings(data_dir, base_ckpt, tmp_path):
    out = tmp_path / "nr.pt"
    finetune(_cfg(data_dir, base_ckpt, out, steps=4, checkpoint_every=4))
    finetune(_cfg(data_dir, base_ckpt, out, steps=2, lr=5e-4, resume=False))  # other settings: not a resume
    assert [r["step"] for r in _log(out)] == [1, 2] and _state(out)["step"] == 2
