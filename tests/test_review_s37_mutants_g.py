"""Session 37 mutation audit of ``hmrcritic/hmr/train.py`` (helper g): the recipe's schedule, data order, seeds,
EMA, augmentation and the run's side effects, each checked against an answer worked out by hand from the
docstrings (module docstring, ``train_base``, ``_batch_indices``, ``ema_update``, ``augment_keypoints``) and the
shipped ``base_model.json``.

Each test kills a mutant of train.py that the existing tests let through (named in its docstring): a bug of that
kind trains a model that differs silently from the recipe's."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch

from hmrcritic.hmr import train as T
from hmrcritic.hmr.diffusion import DiffusionConfig
from hmrcritic.hmr.train import TrainConfig, _batch_indices, _lr_at, augment_keypoints, ema_update, train_base

TESTS = Path(__file__).resolve().parent
TINY = DiffusionConfig(d_model=32, layers=1, heads=2)


def _data(n=16, seed=0):
    sys.path.insert(0, str(TESTS))
    from test_diffusion import _tiny_data

    return _tiny_data(n, seed)


def _state(run: Path) -> dict:
    return torch.load(run / "state.pt", map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------ learning-rate schedule
def test_the_cosine_decay_is_half_way_at_the_middle_of_the_steps_after_warmup():
    """Cosine from ``lr`` (end of warmup) to ``min_lr`` (step ``steps``): at p = 1/2 the mean of the two, at p = 1/4
    min + Δ·(1 + cos π/4)/2. Kills a decay span one step short (``steps - warmup - 1``), which the edge checks of
    test_lr_schedule_edges (0, warmup, steps) let through."""
    cfg = TrainConfig(steps=110, warmup=10, lr=1e-3, min_lr=2e-5)
    assert _lr_at(60, cfg) == pytest.approx((1e-3 + 2e-5) / 2, rel=1e-12)
    assert _lr_at(35, cfg) == pytest.approx(2e-5 + (1e-3 - 2e-5) * (1 + math.sqrt(0.5)) / 2, rel=1e-12)


def test_min_lr_equal_to_lr_is_a_constant_schedule_not_refused():
    """``min-lr must not exceed lr``: equal is allowed (a constant learning rate after warmup). Kills ``>=``."""
    cfg = TrainConfig(steps=20, warmup=0, lr=5e-4, min_lr=5e-4)
    assert all(_lr_at(s, cfg) == pytest.approx(5e-4, rel=1e-12) for s in range(20))


def test_the_applied_and_logged_learning_rate_is_that_of_the_step(tmp_path):
    """Warmup 4, lr 1e-3: step s (0-based) trains at lr·(s+1)/4. The optimiser of the state after 2 steps holds
    5e-4 (that of the 2nd step) and the log records 2.5e-4, 5e-4. Kills ``_lr_at(step + 1)`` in the loop (every
    step a step ahead of the schedule) and the log's lr read at ``done``."""
    cfg = TrainConfig(steps=6, batch_size=4, warmup=4, lr=1e-3, min_lr=0.0, log_every=1, ckpt_every=1, model=TINY)
    train_base(cfg, tmp_path, data=_data(8), stop_at=2)
    assert _state(tmp_path)["opt"]["param_groups"][0]["lr"] == pytest.approx(5e-4, rel=1e-12)
    assert [r["lr"] for r in T.loss_curve(tmp_path)] == pytest.approx([2.5e-4, 5e-4], rel=1e-12)


# ------------------------------------------------------------------------------------------------ data order
def test_each_epoch_is_a_permutation_cut_into_whole_batches():
    """n = 10, batch 4: an epoch is 10 // 4 = 2 batches of 4 distinct scenes, disjoint (a seeded permutation
    cut in whole batches); step 2 starts the next epoch. Kills a ceil division (a short third batch of 2) and
    batches that overlap (``[k : k + bs]``)."""
    cfg = TrainConfig(batch_size=4)
    batches = [_batch_indices(s, cfg, 10).tolist() for s in range(6)]
    assert all(len(b) == 4 and len(set(b)) == 4 for b in batches), batches
    for e in range(3):  # the two batches of each epoch share no scene
        assert not set(batches[2 * e]) & set(batches[2 * e + 1]), batches


def test_the_data_order_depends_on_the_epoch_and_the_seed():
    """"the data order of epoch e from (seed, e)": the first batches of epochs 0..2 under seeds 0..2 are nine
    different index lists (the chance that two seeded permutations of 40 share the first 8 is ~1e-13). Kills an
    order that ignores the epoch (every epoch the same) or the seed (``--seed`` not honoured for the data)."""
    cfg = {s: TrainConfig(seed=s, batch_size=8) for s in range(3)}
    per_epoch = 40 // 8
    firsts = {(s, e): tuple(_batch_indices(e * per_epoch, cfg[s], 40).tolist()) for s in range(3) for e in range(3)}
    assert len(set(firsts.values())) == 9, firsts


def test_the_per_step_random_draws_depend_on_the_seed_and_the_step(tmp_path, monkeypatch):
    """"every random draw of step s comes from a generator seeded with (seed, s)": the generators of steps 0, 1
    under seeds 0 and 1 are four different seeds. Kills a generator seeded by the step alone (``--seed`` then
    changes only the initial weights, not the noise, timesteps or augmentation)."""
    seen: list[tuple[int, int]] = []
    real = T.augment_keypoints

    def spy(kp, size, cfg, gen):
        seen.append((cfg.seed, gen.initial_seed()))
        return real(kp, size, cfg, gen)

    monkeypatch.setattr(T, "augment_keypoints", spy)
    for seed in (0, 1):
        cfg = TrainConfig(seed=seed, steps=2, batch_size=4, warmup=0, log_every=1, ckpt_every=2, model=TINY)
        train_base(cfg, tmp_path / f"s{seed}", data=_data(8))
    assert len(seen) == 4 and len({g for _, g in seen}) == 4, seen


# ------------------------------------------------------------------------------------------------------- EMA
def test_the_ema_decay_warms_up_as_documented():
    """EMA of 0 toward 1: decay min(max, (1+step)/(10+step)), the EMA moves by 1 − decay. Step 0: 1/10 → 0.9;
    step 1000: 1001/1010 → 9/1010; step 10⁶: max 0.995 → 0.005."""
    for step, want in [(0, 0.9), (1000, 9 / 1010), (10**6, 0.005)]:
        ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            ema.weight.fill_(0.0)
            model.weight.fill_(1.0)
        ema_update(ema, model, step, 0.995)
        assert float(ema.weight.detach()) == pytest.approx(want, rel=1e-6), step


# -------------------------------------------------------------------------------------------------- augmentation
def _kp(B: int, visible: list[int], box=(100.0, 50.0)) -> torch.Tensor:
    """B copies of a person whose visible keypoints span exactly a ``box`` (w, h) pixel box at (200, 100)."""
    kp = torch.zeros(B, 17, 3)
    g = torch.Generator().manual_seed(5)
    uv = torch.rand(17, 2, generator=g) * torch.tensor(box) + torch.tensor([200.0, 100.0])
    uv[visible[0]] = torch.tensor([200.0, 100.0])  # the box's corners are keypoints: its size is exactly `box`
    uv[visible[1]] = torch.tensor([200.0 + box[0], 100.0 + box[1]])
    kp[:, :, :2] = uv
    kp[:, visible, 2] = 1.0
    return kp


def test_a_limb_occlusion_may_leave_exactly_four_keypoints():
    """"never drop below 4 visible keypoints": 4 is allowed. Visible: the left arm (5, 7, 9) and 0..3; with every
    scene limb-occluded (aug_limb 1, no random drop), picking the left-arm group leaves exactly {0, 1, 2, 3}, and
    picking the face group (0..4, 4 of them visible) would leave 3, so it is skipped. Kills ``> 4``."""
    cfg = TrainConfig(aug_drop=0.0, aug_limb=1.0, aug_jitter=0.0, aug_conf=0.0)
    vis = [0, 5, 1, 2, 3, 7, 9]
    kp = augment_keypoints(_kp(200, vis), torch.tensor([[640.0, 480.0]]).expand(200, 2), cfg,
                           torch.Generator().manual_seed(0))
    left = [frozenset(torch.nonzero(row[:, 2] > 0).flatten().tolist()) for row in kp]
    assert all(len(s) >= 4 for s in left)
    assert frozenset({0, 1, 2, 3}) in left  # P(no left-arm pick in 200 draws of 9 groups) ≈ 6e-11
    assert frozenset({5, 7, 9}) not in left  # the face group is never applied here (3 would remain)


def test_the_pixel_jitter_is_a_share_of_the_person_box_longest_side():
    """aug_jitter 0.01 on a person spanning 100 × 50 px: pixel noise of std 1 px (0.01 × the longer side 100), not
    0.5 (the shorter side). Measured over 200 × 17 × 2 draws (standard error ~0.6 %)."""
    cfg = TrainConfig(aug_drop=0.0, aug_limb=0.0, aug_jitter=0.01, aug_conf=0.0)
    kp0 = _kp(200, list(range(17)))
    kp = augment_keypoints(kp0, torch.tensor([[640.0, 480.0]]).expand(200, 2), cfg, torch.Generator().manual_seed(1))
    assert float((kp[..., :2] - kp0[..., :2]).std()) == pytest.approx(1.0, rel=0.05)


def test_a_kept_keypoint_keeps_a_confidence_of_at_least_005():
    """The confidence jitter of a kept keypoint is clamped to [0.05, 1]: a visible keypoint of confidence 0.05
    jittered by ±0.15 stays visible (> 0), as the docstring's "only removes or jitters" requires (drop is
    the occlusion's job). Kills a clamp at 0, which turned about a third of them invisible."""
    cfg = TrainConfig(aug_drop=0.0, aug_limb=0.0, aug_jitter=0.0, aug_conf=0.15)
    kp0 = _kp(100, list(range(17)))
    kp0[..., 2] = 0.05
    kp = augment_keypoints(kp0, torch.tensor([[640.0, 480.0]]).expand(100, 2), cfg, torch.Generator().manual_seed(2))
    assert bool((kp[..., 2] >= 0.05 - 1e-7).all()) and bool((kp[..., 2] <= 1.0).all())


# --------------------------------------------------------------------------------------------- run side effects
def test_the_callers_thread_count_is_restored(tmp_path):
    """A run on 1 thread gives the caller's thread count back (as finetune does); a notebook kept 1 thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = TrainConfig(steps=1, batch_size=4, warmup=0, threads=1, log_every=1, ckpt_every=1, model=TINY)
        train_base(cfg, tmp_path, data=_data(8))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_grad_clip_is_honoured(tmp_path):
    """A grad-clip of 1e-12 scales every gradient to ~1e-12, far below AdamW's eps (1e-8): the first update then
    moves the weights by ≤ lr·1e-3 (weight decay 0), where an unclipped step moves some weight by ~lr. Kills a
    clip that ignores ``cfg.grad_clip``."""
    moved = {}
    for clip in (1.0, 1e-12):
        cfg = TrainConfig(steps=2, batch_size=4, warmup=0, lr=1e-2, weight_decay=0.0, grad_clip=clip, log_every=1,
                          ckpt_every=1, model=TINY)
        train_base(cfg, tmp_path / str(clip), data=_data(8), stop_at=1)
        torch.manual_seed(0)  # the run's initial weights (seeded with cfg.seed = 0), to compare with
        init = {k: v.detach() for k, v in T.HMRDiffusion(TINY).named_parameters()}  # weights, not buffers
        after = _state(tmp_path / str(clip))["model"]
        moved[clip] = max(float((after[k] - v).abs().max()) for k, v in init.items())
    assert moved[1.0] > 5e-3, moved  # Adam's first step is ~lr per weight
    assert moved[1e-12] < 1e-4, moved


def test_the_default_recipe_is_the_shipped_models(tmp_path):
    """The shipped ``base_model.json`` says how it is reproduced (``reproduce``: ``train-base --seed 0 …``): every
    recipe setting it does not name on that command line must be TrainConfig's default, or the command trains
    another model. Kills a changed default (e.g. ema 0.995 → 0.999)."""
    from hmrcritic.hmr.diffusion import ASSETS_DIR

    meta = json.loads((ASSETS_DIR / "base_model.json").read_text())
    named = {w[2:].replace("-", "_") for w in meta["reproduce"].split() if w.startswith("--")}
    defaults = asdict(TrainConfig())
    assert {f.name for f in fields(TrainConfig)} == set(meta["recipe"])
    differ = {k: (v, defaults[k]) for k, v in meta["recipe"].items() if k not in named and defaults[k] != v}
    assert not differ, differ


def test_a_resume_from_a_checkpoint_on_a_log_step_keeps_that_steps_record(tmp_path):
    """Stopped at step 10 with a log record every 5 and resumed to 12: the log is that of the uninterrupted run,
    records at steps 5, 10 and 12. Kills a resume that drops the record *at* the checkpoint's step (``< start``:
    the record of steps 6..10 was lost, the log read 5, 12)."""
    cfg = TrainConfig(steps=12, batch_size=4, warmup=2, log_every=5, ckpt_every=5, model=TINY)
    data = _data(8)
    train_base(cfg, tmp_path / "run", data=data, stop_at=10)
    train_base(cfg, tmp_path / "run", data=data)
    assert [r["step"] for r in T.loss_curve(tmp_path / "run")] == [5, 10, 12]


def test_a_stop_at_the_recipes_last_step_finishes_the_run(tmp_path):
    """``stop_at`` = ``steps``: the call ends where the uninterrupted run ends, so it writes and returns model.pt
    ("ends exactly where one uninterrupted call would"), not only state.pt. Kills ``if done == stop_at`` without
    ``done < cfg.steps`` (the finished run returned state.pt and wrote no model.pt)."""
    cfg = TrainConfig(steps=3, batch_size=4, warmup=0, log_every=1, ckpt_every=1, model=TINY)
    path = train_base(cfg, tmp_path, data=_data(8), stop_at=3)
    assert path == tmp_path / "model.pt" and path.is_file()


def test_a_run_restarted_from_step_0_logs_only_its_own_steps(tmp_path):
    """Ctrl-C at step 2 before the first checkpoint (every 10 steps): nothing to resume, so the same command starts
    over at step 0, and its log is that run's alone, records 1, 2, 3. Kills a fresh start that keeps the killed
    run's records (the log read 1, 2, 1, 2, 3, and the model's final loss came from it)."""
    cfg = TrainConfig(steps=3, batch_size=4, warmup=0, log_every=1, ckpt_every=10, model=TINY)
    data = _data(8)

    def ctrl_c(rec: dict) -> None:
        if rec["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_base(cfg, tmp_path, data=data, progress=ctrl_c)
    assert not (tmp_path / "state.pt").exists() and [r["step"] for r in T.loss_curve(tmp_path)] == [1, 2]
    train_base(cfg, tmp_path, data=data)
    assert [r["step"] for r in T.loss_curve(tmp_path)] == [1, 2, 3]


def test_a_killed_writes_temporary_files_are_removed_and_nothing_else(tmp_path):
    """A run killed mid-write leaves ``.state.pt.<random>.tmp`` (atomic_write_bytes's temporary name; the real file
    is intact): the next run in that folder removes it, and leaves a file of the user's alone. Kills a run that
    no longer calls remove_write_leftovers (the leftovers of every killed write would pile up)."""
    for name in (".state.pt.k1lled.tmp", ".model.pt.x7.tmp", ".log.jsonl.q2.tmp", "notes.tmp"):
        (tmp_path / name).write_bytes(b"torn")
    cfg = TrainConfig(steps=1, batch_size=4, warmup=0, log_every=1, ckpt_every=1, model=TINY)
    train_base(cfg, tmp_path, data=_data(8))
    assert sorted(p.name for p in tmp_path.glob("*tmp")) == ["notes.tmp"]
