"""The finetuner on small, real models and hand-built preference datasets: runs every objective, logs,
resumes bit-exactly, saves a ``load_model``-able EMA checkpoint, and refuses 3D labels in its data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.finetune import FinetuneConfig, TrainingDiverged, finetune, state_dict_hash
from hmrcritic.errors import AssetError, InputError
from hmrcritic.hmr.diffusion import X_DIM, DiffusionConfig, HMRDiffusion, load_model, save_model
from hmrcritic.io import append_jsonl

TINY = DiffusionConfig(d_model=32, layers=1, heads=2, T=100)


class Killed(Exception):
    """Stands for the process being killed in the middle of a finetune."""


def kill_at(step: int):
    """A progress callback that "kills" the run when step ``step`` is logged (its state is saved before)."""

    def hook(rec):
        if rec["step"] == step:
            raise Killed

    return hook


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = HMRDiffusion(TINY)
    for head in (model.joint_out, model.shape_out):  # non-zero heads: a model that denoises something
        torch.nn.init.normal_(head.weight, std=0.05)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    save_model(model, path, extra={"note": "tiny test model"})
    return path


def write_dataset(root, n_groups=6, N=6, seed=0, poison=None, tie_first=False):
    """A dataset written with the dataset module's own writer: random x0, scores = closeness to a target."""
    rng = np.random.default_rng(seed)
    target = rng.normal(size=X_DIM).astype(np.float32)
    D.write_header(
        root,
        D.DatasetHeader(
            source="test",
            model_hash="x",
            judge="builtin",
            num_generations=N,
            sample_steps=2,
            seed=seed,
            x_dim=X_DIM,
        ),
    )
    for g in range(n_groups):
        x0 = (target + rng.normal(size=(N, X_DIM))).astype(np.float32)
        dist = np.linalg.norm(x0 - target, axis=1)
        overall = (
            np.clip(5 + 3 * (np.sqrt(X_DIM) - dist), 0, 10) if not (tie_first and g == 0) else np.full(N, 5.0)
        )
        kp = np.concatenate([rng.uniform(100, 400, size=(17, 2)), np.ones((17, 1))], 1)
        cond = D.condition_arrays(kp, [[500, 0, 256], [0, 500, 256], [0, 0, 1]], (512, 512))
        hyps = {
            "x0": x0,
            "global_orient": np.zeros((N, 3), np.float32),
            "body_pose": np.zeros((N, 69), np.float32),
            "betas": x0[:, -10:].copy(),
            "transl": np.zeros((N, 3), np.float32),
        }
        gid = f"in{g}"
        cref, href = D.write_group_arrays(root, gid, cond, hyps)
        if poison:
            D.atomic_save_npz(root / cref.path, **cond, **poison)
            cref = D.ArrayRef(path=cref.path, sha256=D.arrays_checksum({**cond, **poison}))
        scores = [
            HypothesisScore(
                index=i,
                motion_structure=s,
                physical_feasibility=s,
                image_alignment=s,
                overall=s,
                rationale="distance to target",
            )
            for i, s in enumerate(overall.tolist())
        ]
        rec = D.build_record(
            group_id=gid,
            input_id=f"in{g}",
            source="test",
            condition=cref,
            hypotheses=href,
            num_hypotheses=N,
            x_dim=X_DIM,
            scores=scores,
            judge="builtin",
            memory_version="m0",
            model_hash="x",
            seed=seed,
            group_seed=g,
        )
        append_jsonl(root / D.MANIFEST, {k: v for k, v in rec.to_line_dict().items() if k != "checksum"})
    D.write_pairs(root, D.read_manifest(root))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("prefs"), tie_first=True)


def _cfg(data, base, out, **kw):
    kw = {"steps": 4, "batch_size": 3, "num_generations": 4, "checkpoint_every": 2, "lr": 1e-3, **kw}
    return FinetuneConfig(data=str(data), model=str(base), out=str(out), **kw)


def test_dataset_written_by_helpers_validates(data_dir):
    rep = D.validate_dataset(data_dir)
    assert rep.ok, rep.errors
    assert rep.groups == 6 and rep.pairs == 5 and rep.zero_variance_share == pytest.approx(1 / 6)


def test_gpa_finetune_logs_and_saves_a_loadable_ema_checkpoint(data_dir, base_ckpt, tmp_path):
    out = finetune(_cfg(data_dir, base_ckpt, tmp_path / "aligned.pt"))
    model = load_model(out)
    base = load_model(base_ckpt)
    assert state_dict_hash(model) != state_dict_hash(base)
    assert (
        model.checkpoint_extra["weights"] == "ema"
        and model.checkpoint_extra["finetune"]["objective"] == "gpa"
    )
    logs = [json.loads(line) for line in (tmp_path / "aligned.pt.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3, 4]
    for r in logs:
        for key in (
            "loss",
            "loss_gpa",
            "loss_base",
            "zero_variance_share",
            "grad_norm",
            "batch_score_std_mean",
        ):
            assert np.isfinite(r[key]), key
        assert r["num_generations"] == 4
    # the tied group (1 of 6) shows up as zero-variance share in the batches that drew it
    assert any(r["zero_variance_share"] > 0 for r in logs) or all(
        r["batch_zero_variance_share"] == 0 for r in logs
    )
    assert (tmp_path / "aligned.pt.state.pt").exists()


def test_resume_gives_the_same_weights(data_dir, base_ckpt, tmp_path):
    straight = finetune(_cfg(data_dir, base_ckpt, tmp_path / "a.pt", steps=4))
    finetune(_cfg(data_dir, base_ckpt, tmp_path / "b.pt", steps=2))  # "killed" after step 2 …
    resumed = finetune(_cfg(data_dir, base_ckpt, tmp_path / "b.pt", steps=4))  # … and re-run
    a, b = load_model(straight).state_dict(), load_model(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b.pt.log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    with pytest.raises(InputError, match="different settings"):
        finetune(_cfg(data_dir, base_ckpt, tmp_path / "b.pt", steps=6, lr=5e-4))
    # a state already past --steps would hand back a longer-trained model under the smaller step count
    with pytest.raises(InputError, match="past --steps 3"):
        finetune(_cfg(data_dir, base_ckpt, tmp_path / "b.pt", steps=3))


@pytest.mark.parametrize("objective", ["gpa", "dpo", "sft"])
def test_resume_after_a_kill_between_checkpoints_is_bitwise(objective, data_dir, tmp_path):
    """Killed mid-run (after step 5, last state at step 3), with dropout on so the global torch RNG is used
    by every step: the resumed run re-does steps 4–5 and ends bitwise equal to an uninterrupted one, with
    the same per-step log."""
    import dataclasses

    torch.manual_seed(0)
    model = HMRDiffusion(dataclasses.replace(TINY, dropout=0.1))
    for head in (model.joint_out, model.shape_out):
        torch.nn.init.normal_(head.weight, std=0.05)
    base = save_model(model, tmp_path / "base.pt", extra={})
    kw = {"objective": objective, "steps": 7, "checkpoint_every": 3}
    straight = finetune(_cfg(data_dir, base, tmp_path / "a.pt", **kw))

    with pytest.raises(Killed):
        finetune(_cfg(data_dir, base, tmp_path / "b.pt", **kw), progress=kill_at(5))
    assert torch.load(tmp_path / "b.pt.state.pt", weights_only=True)["step"] == 3
    resumed = finetune(_cfg(data_dir, base, tmp_path / "b.pt", **kw))
    a, b = load_model(straight).state_dict(), load_model(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = ([json.loads(line) for line in (tmp_path / f"{n}.pt.log.jsonl").read_text().splitlines()]
              for n in "ab")
    assert [r["step"] for r in lb] == list(range(1, 8))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_a_diverging_run_stops_before_nan_reaches_the_weights(data_dir, base_ckpt, tmp_path):
    out = tmp_path / "boom.pt"
    with pytest.raises(TrainingDiverged, match="diverged"):
        finetune(_cfg(data_dir, base_ckpt, out, steps=6, lr=1e30, checkpoint_every=1, ema=0.0))
    assert not out.exists()  # no final checkpoint of a run that blew up
    state = torch.load(Path(str(out) + ".state.pt"), weights_only=True)  # the last good step is kept
    assert all(torch.isfinite(v).all() for v in state["policy"].values() if v.is_floating_point())


@pytest.mark.parametrize("objective", ["gpa_linear", "dpo", "sft"])
def test_other_objectives_run(objective, data_dir, base_ckpt, tmp_path):
    out = finetune(_cfg(data_dir, base_ckpt, tmp_path / f"{objective}.pt", objective=objective, steps=2))
    rec = json.loads((tmp_path / f"{objective}.pt.log.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(rec["loss"]) and load_model(out).checkpoint_extra["finetune"]["objective"] == objective
    if objective == "dpo":
        assert "reward_margin" in rec and "reward_accuracy" in rec


def test_gpa_raises_the_implicit_reward_of_better_hypotheses(data_dir, base_ckpt, tmp_path):
    """A short GPA run (no base loss, no EMA) must prefer high-scored hypotheses: the reward accuracy and
    margin logged in the last steps beat those of the first steps. (10 steps: two windows of 5 that do not overlap;
    the GPA loss falls from 0.69 to ~0.1 by step 6 at this learning rate, and the accuracy is 1.0 from step 2.)"""
    cfg = _cfg(
        data_dir,
        base_ckpt,
        tmp_path / "learn.pt",
        steps=10,
        lr=3e-3,
        gpa_weight=1.0,
        base_loss_weight=0.0,
        beta=10.0,
        ema=0.0,
        batch_size=5,
        num_generations=6,
        checkpoint_every=100,
    )
    finetune(cfg)
    logs = [json.loads(line) for line in (tmp_path / "learn.pt.log.jsonl").read_text().splitlines()]
    first = np.mean([r["loss_gpa"] for r in logs[:5]])
    last = np.mean([r["loss_gpa"] for r in logs[-5:]])
    assert last < first
    assert np.mean([r["reward_accuracy"] for r in logs[-5:]]) > 0.5


def test_reader_and_finetuner_refuse_3d_label_keys(base_ckpt, tmp_path):
    root = write_dataset(
        tmp_path / "poisoned", n_groups=2, poison={"joints3d": np.zeros((24, 3), np.float32)}
    )
    ds = D.GroupPreferenceDataset(root)
    with pytest.raises(AssetError, match="3D label"):
        ds[0]
    rep = D.validate_dataset(root)
    assert not rep.ok and any("joints3d" in e for e in rep.errors)
    with pytest.raises(AssetError, match="3D label"):
        finetune(_cfg(root, base_ckpt, tmp_path / "p.pt", steps=1))
    assert not (tmp_path / "p.pt").exists()


def test_bad_config_is_a_clear_error(data_dir, base_ckpt, tmp_path):
    with pytest.raises(InputError, match="objective"):
        _cfg(data_dir, base_ckpt, tmp_path / "x.pt", objective="ppo")
    with pytest.raises(InputError, match="scale.rewards"):
        finetune(_cfg(data_dir, base_ckpt, tmp_path / "x.pt", scale_rewards="global"))
    with pytest.raises(AssetError):
        finetune(_cfg(tmp_path / "nothing", base_ckpt, tmp_path / "x.pt"))
    for bad in ({"beta": float("nan")}, {"beta": -1.0}, {"gpa_weight": float("inf")},
                {"base_loss_weight": -0.5}, {"grad_clip": 0.0}, {"weight_decay": float("nan")}):
        with pytest.raises(InputError, match=next(iter(bad)).replace("_", ".")):
            _cfg(data_dir, base_ckpt, tmp_path / "x.pt", **bad)
    assert not (tmp_path / "x.pt").exists()


def test_no_wild_label_reaches_the_finetuner(base_ckpt, tmp_path, monkeypatch):
    """Build a dataset from a generated ``wild`` split, finetune, then poison wild's eval label file and do it
    all again: the finetuner only ever sees 2D conditions, x0 and scores, and the result is identical."""
    import test_export

    from hmrcritic.alignment import finetune as ft
    from hmrcritic.alignment.export import ExportConfig, export
    from hmrcritic.hmr.data import SceneSet, generate_split

    wild = generate_split("wild", tmp_path / "wild", n=4, quiet=True)
    assert not SceneSet(wild).has_labels and (wild / "labels_eval.npz").exists()
    seen_keys: set[str] = set()

    class Spy(D.GroupPreferenceDataset):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            seen_keys.update(item)
            return item

    monkeypatch.setattr(ft, "GroupPreferenceDataset", Spy)

    def run(tag: str) -> dict:
        prefs = tmp_path / f"prefs-{tag}"
        export(
            ExportConfig(
                out=str(prefs),
                data=str(wild),
                model=str(base_ckpt),
                num_generations=4,
                sample_steps=2,
                score_group=test_export.SCORER,
                use_memory=False,
            )
        )
        assert D.validate_dataset(prefs).ok
        for f in (prefs / "groups").glob("*.npz"):
            with np.load(f) as z:
                assert not set(z.files) & D.LABEL_KEYS - set(D.HYP_KEYS) and set(z.files) <= {
                    *D.COND_KEYS,
                    *D.HYP_KEYS,
                }
                if f.name.endswith(".cond.npz"):
                    assert sorted(z.files) == sorted(D.COND_KEYS)
        out = finetune(_cfg(prefs, base_ckpt, tmp_path / f"{tag}.pt", steps=2, batch_size=2))
        return load_model(out).state_dict()

    monkeypatch.syspath_prepend(str(Path(test_export.__file__).parent))
    clean = run("clean")
    labels = dict(np.load(wild / "labels_eval.npz"))
    rng = np.random.default_rng(1)
    poisoned = {
        k: (rng.normal(size=v.shape).astype(v.dtype) if v.dtype.kind == "f" else v) for k, v in labels.items()
    }
    D.atomic_save_npz(wild / "labels_eval.npz", **poisoned)
    again = run("poisoned")
    assert all(torch.equal(clean[k], again[k]) for k in clean)
    assert seen_keys == {"group_id", "keypoints", "K", "image_size", "x0", "overall", "axes", "advantages"}
