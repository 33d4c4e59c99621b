"""Training recipe of the base diffusion model (``hmrcritic train-base``).

Reproducible by construction: every random draw of step ``s`` comes from a generator seeded with
``(seed, s)`` and the data order of epoch ``e`` from ``(seed, e)``, so a run that is killed and resumed
from its last checkpoint continues exactly as an uninterrupted run would (up to float non-associativity
of multithreaded CPU kernels). The recipe is a fixed number of steps, never a time budget.

The condition is augmented on the fly (our addition; the paper's base model sees images): extra random
keypoint dropout, occasional whole-limb occlusion, pixel jitter relative to the person box and confidence
jitter. The model thus sees missing evidence during training and learns to spread its hypotheses where
keypoints are absent — which is what makes best-of-N and the critique/alignment stages meaningful.

The shipped model is the EMA of the weights (a standard diffusion practice; smoother samples).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from hmrcritic.errors import AssetError, HMRCriticError, InputError, check_number
from hmrcritic.hmr.diffusion import (
    DiffusionConfig,
    HMRDiffusion,
    condition_from_keypoints,
    params_to_x0,
    plain_number,
    save_model,
)
from hmrcritic.io import append_jsonl, atomic_torch_save, atomic_write_jsonl, read_jsonl


class TrainingDiverged(HMRCriticError):
    """The training loss became NaN or infinite; nothing of that step was applied or saved (as finetune's)."""


# COCO-17 limb groups that are occluded together (an arm, a leg, the face) in the limb-occlusion augmentation.
LIMB_GROUPS = [
    [5, 7, 9],
    [6, 8, 10],
    [11, 13, 15],
    [12, 14, 16],
    [0, 1, 2, 3, 4],
    [9],
    [10],
    [15, 16],
    [13, 15],
]
TRAIN_KEYS = ["keypoints", "K", "image_size", "global_orient", "body_pose", "betas"]


@dataclass
class TrainConfig:
    """Everything that defines a training run. Saved with the checkpoint (``recipe``)."""

    seed: int = 0
    steps: int = 10000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 2e-5
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.995
    loss_weighting: str = "v"  # "v": v-prediction loss (= eps-MSE / ᾱ_t); "eps": plain. See HMRDiffusion.loss
    snr_gamma: float | None = None  # optional Min-SNR-γ weighting on top
    # One thread: bitwise-reproducible CPU kernels, and on a shared 2-core machine 2 threads measured ~6x
    # slower per step than 1 (spin-waiting under contention).
    threads: int = 1
    split: str = "train"
    max_samples: int | None = None  # use only the first n training samples (tests, quick runs)
    log_every: int = 25
    ckpt_every: int = 200
    # augmentation of the condition
    aug_drop: float = 0.08  # each visible keypoint dropped with this probability
    aug_limb: float = 0.35  # probability that one limb group is fully occluded
    aug_jitter: float = 0.01  # pixel noise std as a share of the person-box size
    aug_conf: float = 0.15  # confidence jitter (uniform ±)
    model: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        # Types first, as the CLI's options are typed: from Python, steps=10.5, batch_size=2.5 or seed=1.5 passed
        # the int() checks below and failed after the split was loaded as a bare TypeError / "manual_seed expected a
        # long"; lr="1e-3" was a bare TypeError and ema="0.99" passed float() and failed at the first EMA update.
        # numpy / torch scalars pass as any number (check_number).
        for name in ("seed", "steps", "batch_size", "warmup", "threads", "log_every", "ckpt_every", "max_samples"):
            if getattr(self, name) is not None or name != "max_samples":
                check_number(f"train-base: {name.replace('_', '-')}", getattr(self, name), integer=True)
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "ema", "snr_gamma", "aug_drop", "aug_limb",
                     "aug_jitter", "aug_conf"):
            if getattr(self, name) is not None or name != "snr_gamma":
                check_number(f"train-base: {name.replace('_', '-')}", getattr(self, name))
        # numpy / torch scalars as plain numbers: the recipe is saved in state.pt and model.pt, both read back
        # weights-only, and an np.float32 lr (a sweep's np.linspace) trained the whole run, then model.pt was refused
        # ("extra holds a value load_model cannot read back") and a resume read state.pt as corrupt
        for f in fields(self):
            setattr(self, f.name, plain_number(getattr(self, f.name)))
        try:  # an unusable architecture or noise schedule, said before the split is loaded (HMRDiffusion's check)
            if isinstance(self.model, dict):  # as from_dict reads it (a dict failed at HMRDiffusion: no attribute)
                self.model = DiffusionConfig.from_dict(self.model)
            if not isinstance(self.model, DiffusionConfig):
                raise ValueError(f"must be a DiffusionConfig or a dict of its fields, got {type(self.model).__name__}")
            self.model.validate()
        except (TypeError, ValueError) as exc:
            raise InputError(f"train-base: model config: {exc}") from None
        for name in ("steps", "batch_size", "threads", "log_every", "ckpt_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"train-base: {name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.max_samples is not None and int(self.max_samples) < 1:  # [:-5] would silently drop the last 5
            raise InputError(f"train-base: max-samples must be ≥ 1 (or left out for all), got {self.max_samples}")
        if self.max_samples is not None and int(self.max_samples) < 2:  # training needs two scenes (see _train): said
            # after the split was loaded, or generated first (20,000 scenes, minutes) where it did not exist yet
            raise InputError(f"train-base: max-samples must be ≥ 2 (training needs at least 2 scenes), got "
                             f"{self.max_samples}")
        if self.seed < 0 or self.warmup < 0:
            raise InputError(f"train-base: seed and warmup must be ≥ 0, got {self.seed}, {self.warmup}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.min_lr) and self.min_lr >= 0):
            raise InputError(f"train-base: lr must be a finite number > 0 and min-lr ≥ 0, got {self.lr}, {self.min_lr}")
        if self.min_lr > self.lr:  # the cosine "decay" would then climb from lr up to min-lr
            raise InputError(f"train-base: min-lr must not exceed lr, got min-lr {self.min_lr} > lr {self.lr}")
        # Out-of-range values here used to train without a word: a negative grad-clip flips every clipped
        # gradient (clip_grad_norm_ scales by max_norm / norm, so the step goes uphill), grad-clip 0 zeroes them,
        # ema > 1 extrapolates the shipped weights away from the model, a NaN jitter makes every keypoint NaN.
        checks = [
            ("grad-clip", self.grad_clip, "a finite number > 0", lambda v: v > 0),
            ("ema", self.ema, "in [0, 1]", lambda v: 0 <= v <= 1),
            ("weight-decay", self.weight_decay, "a finite number ≥ 0", lambda v: v >= 0),
            ("aug-drop", self.aug_drop, "a probability in [0, 1]", lambda v: 0 <= v <= 1),
            ("aug-limb", self.aug_limb, "a probability in [0, 1]", lambda v: 0 <= v <= 1),
            ("aug-jitter", self.aug_jitter, "a finite number ≥ 0", lambda v: v >= 0),
            ("aug-conf", self.aug_conf, "a finite number ≥ 0", lambda v: v >= 0),
        ]
        if self.snr_gamma is not None:
            checks.append(("snr-gamma", self.snr_gamma, "a finite number > 0 (or left out)", lambda v: v > 0))
        for name, value, what, ok in checks:
            try:
                good = math.isfinite(float(value)) and ok(float(value))
            except (TypeError, ValueError):
                good = False
            if not good:
                raise InputError(f"train-base: {name} must be {what}, got {value!r}")
        if self.loss_weighting not in ("v", "eps"):  # else the first step raised a bare ValueError mid-run
            raise InputError(f"train-base: loss-weighting must be 'v' or 'eps', got {self.loss_weighting!r}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        model = DiffusionConfig.from_dict(d.pop("model", {}))
        return cls(model=model, **d)


# --------------------------------------------------------------------------------------------- data
@dataclass
class TrainData:
    """Training tensors: raw x0 (n, X_DIM) and pixel keypoints/intrinsics/image sizes for the condition."""

    x0: torch.Tensor
    keypoints: torch.Tensor
    K: torch.Tensor
    image_size: torch.Tensor
    source: dict = field(default_factory=dict)
    fingerprint: str = ""  # sha256 of the arrays it was built from (set by from_arrays; see data_fingerprint)

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def data_fingerprint(self) -> str:
        """What a resume checks the data against: the source arrays' sha256 (exact on any machine), else that
        of the tensors trained on."""
        if self.fingerprint:
            return self.fingerprint
        return _sha256_tensors([self.x0, self.keypoints, self.K, self.image_size])

    @classmethod
    def from_arrays(cls, arrays: dict, source: dict | None = None) -> TrainData:
        missing = [k for k in TRAIN_KEYS if k not in arrays]
        if missing:
            raise InputError(f"training data lacks arrays {missing}")
        t = {k: torch.as_tensor(np.asarray(arrays[k]), dtype=torch.float32) for k in TRAIN_KEYS}
        n = int(t["keypoints"].shape[0]) if t["keypoints"].ndim else 0
        if t["image_size"].numel() % 2 or t["image_size"].numel() // 2 not in (1, n):
            # else a bare "The expanded size of the tensor (4) must match the existing size (3)"
            raise InputError(f"training data image_size must be one (W, H) pair or one per scene, got shape "
                             f"{tuple(t['image_size'].shape)} for {n} scenes")
        image_size = t["image_size"].reshape(-1, 2).expand(t["keypoints"].shape[0], 2)
        lengths = {k: int(t[k].shape[0]) if t[k].ndim else 0 for k in TRAIN_KEYS if k != "image_size"}
        if len(set(lengths.values())) != 1:
            raise InputError(f"training data arrays disagree in length: {lengths}")
        x0 = params_to_x0(t["global_orient"], t["body_pose"], t["betas"])
        if not torch.isfinite(x0).all() or not torch.isfinite(t["keypoints"]).all():
            raise InputError("training data contains non-finite values")
        return cls(x0=x0, keypoints=t["keypoints"], K=t["K"], image_size=image_size, source=source or {},
                   fingerprint=_sha256_tensors([t[k] for k in TRAIN_KEYS]))


def _sha256_tensors(tensors: list[torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_train_data(split: str = "train", max_samples: int | None = None) -> TrainData:
    from hmrcritic.hmr.data import load_split, verify_split_files

    scenes = load_split(split)
    if not getattr(scenes, "has_labels", True):
        raise InputError(f"split {split!r} has no labels; train on a labelled split")
    if isinstance(getattr(scenes, "manifest", None), dict) and getattr(scenes, "folder", None) is not None:
        # as `data info` does: a shard changed since generation that still unpacks with the rows listed (rewritten
        # by hand, another generation's shard copied in) was trained on without a word; hashing the train split
        # takes ~20 ms. Before the shards are read: a truncated one failed to unpack first, and its message said
        # "delete" the folder, after which train-base made the default split, not this one's --n / --seed
        verify_split_files(scenes.manifest, scenes.folder)
    arrays = scenes.arrays(TRAIN_KEYS)  # a shard shorter than its manifest says is refused by SceneSet
    if max_samples is not None:
        arrays = {k: v[:max_samples] for k, v in arrays.items()}
    source = {"split": split, "n": int(len(arrays["keypoints"]))}
    manifest = getattr(scenes, "manifest", None)
    if isinstance(manifest, dict):
        # body_model: the scenes' keypoints and shapes are that body's; evaluate names a model trained on another
        source.update({k: manifest[k] for k in ("seed", "preset", "generator_version", "body_model") if k in manifest})
        # n stays the scenes trained on: the manifest's n overwrote it, so a --max-samples 500 model recorded
        # "n": 20000 and a refused resume read "20000 scenes; now 500" for two runs on 500 each. The split's own
        # size apart, only where it differs (the recipe's model.pt stays byte for byte as it was)
        if "n" in manifest and manifest["n"] != source["n"]:
            source["split_n"] = manifest["n"]
        # and the SMPL file's content (the mannequin has none, so its model.pt stays byte for byte as it was):
        # evaluate tells the same file named by another path (relative, absolute) from another file at the path
        if manifest.get("body_sha256"):
            source["body_sha256"] = manifest["body_sha256"]
    return TrainData.from_arrays(arrays, source)


def _say_if_not_the_default_split(source: dict, split: str, say: Callable[[str], None]) -> None:
    """A split generated earlier with another ``--n`` or ``--seed`` (a quick test) is what ``load_split`` hands on,
    and the run trained on it without a word: ``train-base --seed 0`` on a 100-scene train split printed the
    recipe's "10000 steps, batch 64" and gave another model than the one it reproduces."""
    from hmrcritic.hmr.data import SPLITS, default_size

    if split not in SPLITS:
        return
    size, seed = default_size(split), SPLITS[split][1]
    have_n, have_seed = source.get("split_n", source.get("n")), source.get("seed", seed)
    if have_n != size or have_seed != seed:
        say(f"the {split} split in the data folder has {have_n} scenes of seed {have_seed}, not the default {size} "
            f"of seed {seed}: this run trains on them, so it does not reproduce the recipe's model "
            f"(`hmrcritic data generate --split {split}` makes the default split)")


def augment_keypoints(
    kp: torch.Tensor, image_size: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> torch.Tensor:
    """Random extra occlusion / noise on pixel keypoints (B,17,3); returns a new tensor."""
    B = kp.shape[0]
    kp = kp.clone()
    vis = kp[..., 2] > 0
    uv = kp[..., :2]
    lo = torch.where(vis[..., None], uv, torch.full_like(uv, 1e9)).amin(1)
    hi = torch.where(vis[..., None], uv, torch.full_like(uv, -1e9)).amax(1)
    size = torch.where(vis.any(1), (hi - lo).amax(1), image_size.amax(1)).clamp_min(1.0)
    noise = torch.randn(B, 17, 2, generator=gen) * (cfg.aug_jitter * size)[:, None, None]
    kp[..., :2] = uv + noise * vis[..., None]
    drop = torch.rand(B, 17, generator=gen) < cfg.aug_drop
    limb_mask = torch.zeros(len(LIMB_GROUPS), 17, dtype=torch.bool)
    for i, g in enumerate(LIMB_GROUPS):
        limb_mask[i, g] = True
    pick = torch.randint(0, len(LIMB_GROUPS), (B,), generator=gen)
    use_limb = torch.rand(B, generator=gen) < cfg.aug_limb
    drop = drop | (limb_mask[pick] & use_limb[:, None])
    keep_any = (vis & ~drop).sum(1) >= 4  # never drop below 4 visible keypoints by augmentation
    drop = drop & keep_any[:, None]
    conf = kp[..., 2] + (torch.rand(B, 17, generator=gen) * 2 - 1) * cfg.aug_conf
    kp[..., 2] = torch.where(vis & ~drop, conf.clamp(0.05, 1.0), torch.zeros_like(conf))
    return kp


# ------------------------------------------------------------------------------------------ training
def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, p)))


def _epoch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _batch_indices(step: int, cfg: TrainConfig, n: int) -> torch.Tensor:
    """Deterministic indices of step ``step`` (epochs of a seeded permutation, wrap-around)."""
    bs = min(cfg.batch_size, n)
    per_epoch = n // bs
    epoch, k = divmod(step, per_epoch)
    return _epoch_order(n, epoch, cfg.seed)[k * bs : (k + 1) * bs]


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """One EMA step of ``ema`` toward ``model`` (the weights a run ships): the decay warms up as
    ``(1 + step) / (10 + step)`` to ``max_decay``. Shared by base training and the alignment finetuner."""
    decay = min(max_decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1 - decay)


_STOP_EXPORT = re.compile(r"model_step\d+\.pt")  # train-base --stop-at N's export of the state at step N
STATE_FILES = ("state.pt", "log.jsonl", "model.pt")  # what a run writes into its folder (atomic temp files too)


def _rng_state(device: str) -> dict:
    """The global RNG streams a training step may draw from (dropout): saved with every checkpoint, so a resumed
    run draws what the uninterrupted one drew."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return rng


def _set_rng_state(rng: dict, device: str) -> None:
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], torch.device(device))


def _save_state(path: Path, model, ema, opt, step: int, cfg: TrainConfig, extra: dict | None = None) -> None:
    atomic_torch_save(
        path,
        {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "config": asdict(cfg),
            **(extra or {}),
        },
    )


def _config_diff(saved: dict, cfg: TrainConfig) -> str:
    """``name old → new`` for every recipe setting that differs (model settings as ``model.name``)."""
    if not isinstance(saved, dict):
        return "(unreadable config)"
    now, out = asdict(cfg), []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, "(unset)"), now.get(key, "(unset)")
        if key == "model" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"model.{k} {a.get(k, '(unset)')} → {b.get(k, '(unset)')}"
                    for k in sorted(set(a) | set(b)) if a.get(k, "(unset)") != b.get(k, "(unset)")]
        elif a != b:
            out.append(f"{key.replace('_', '-')} {a} → {b}")
    return ", ".join(out) or "(unreadable config)"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _write(path: Path, what: str, kept: int, fn, *args) -> None:
    """Run the write ``fn(*args)``; an OS error (disk full, no permission, a read-only folder) becomes one line
    naming the file and what is kept, instead of a bare ``No space left on device``."""
    try:
        fn(*args)
    except OSError as exc:
        keep = (f"the last checkpoint (step {kept}) is kept: fix that and run the same command to resume"
                if kept else "no checkpoint was written yet")
        raise AssetError(f"train-base: cannot write the {what} {path}: {exc.strerror or exc}; {keep}") from None


def _step_on_disk(state_path: Path, known: int) -> int:
    """The step of the training state at ``state_path`` (``known`` when there is none or it cannot be read)."""
    try:
        return int(torch.load(state_path, map_location="cpu", weights_only=True)["step"])
    except Exception:  # none yet, or unreadable: what this run knows it wrote
        return known


def _busy(by: str) -> AssetError:
    return AssetError(f"train-base: this run folder is in use by {by}; wait for it or give another --out")


def check_run_folder(out: Path, resume: bool) -> None:
    """Refuse a resuming ``train-base --out`` that holds a ``model.pt`` but no ``state.pt``: not this command's run
    (a finetune or downloaded checkpoint put there), which the run overwrote at its end without a word. Checked by
    :func:`train_base` itself since session 35 (before, only the CLI did: a notebook's run overwrote it).

    A train-base run keeps its ``state.pt`` beside its ``model.pt``; ``--no-resume`` says to start over (it deletes
    the folder's ``model.pt`` itself), so it is let through."""
    if resume and (out / "model.pt").is_file() and not (out / "state.pt").exists():  # the folder train_base uses
        raise InputError(f"train-base: --out {out} holds a model.pt but no state.pt, so it is not a train-base run "
                         "to resume, and this run would overwrite that model.pt; give another --out, or "
                         "--no-resume to start over here (it deletes that model.pt)")


def _resume_hint(state_path: Path) -> str:
    return f"delete {state_path} or pass --no-resume to start over, or give another --out"


def train_base(
    cfg: TrainConfig,
    out_dir: str | Path,
    data: TrainData | None = None,
    resume: bool = True,
    progress: Callable[[dict], None] | None = None,
    device: str = "cpu",
    stop_at: int | None = None,
    notify: Callable[[str], None] | None = None,
) -> Path:
    """Train (or resume) the base model; returns the path of the final EMA checkpoint ``model.pt``.

    ``stop_at`` ends this call after that many steps (state saved; returns ``state.pt``): training can be
    split over several calls and ends exactly where one uninterrupted call would. A run already at ``stop_at``
    returns at once.

    ``out_dir`` gets ``state.pt`` (resume state, every ``ckpt_every`` steps), ``log.jsonl`` (loss per
    ``log_every`` steps) and ``model.pt`` (EMA weights + recipe, ``load_model``-able) at the end. A resumed run
    continues bitwise as the uninterrupted one (weights, optimizer, EMA, data order, per-step noise, the global
    RNG and the running loss of the log window are all in ``state.pt``); it refuses a state written with another
    recipe or on other training data. One process per folder at a time. ``notify`` gets one-line messages
    (resuming, nothing left to do, interrupted).
    """
    from hmrcritic.config import check_device, path_arg
    from hmrcritic.io import exclusive_lock, remove_write_leftovers

    if stop_at is not None:  # 2.5 never equals a step: the run trained on to the end instead of stopping
        check_number("train-base: --stop-at", stop_at, integer=True)
    if stop_at is not None and stop_at < 1:
        raise InputError(f"train-base: --stop-at must be ≥ 1 step, got {stop_at}")
    check_device(device)
    say = notify or (lambda _msg: None)
    out_dir = path_arg(out_dir, "train-base: out_dir")
    if (out_dir / "dataset.json").is_file():  # an export's folder (its header; hmr reads no alignment module)
        # model.pt, state.pt and log.jsonl were written in among the dataset's files, which `export validate` still
        # passed: a folder of two jobs that a later export resume or prune reads as its own
        raise InputError(f"train-base: --out {out_dir} is a group preference dataset (`hmrcritic export` wrote "
                         "dataset.json there); give train-base its own run folder")
    check_run_folder(out_dir, resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    # the caller's thread count and global RNG back afterwards, as finetune does: a notebook that trained a base
    # model kept 1 thread and an RNG reseeded to the recipe's seed
    try:
        with torch.random.fork_rng(devices=[]), exclusive_lock(out_dir / ".train-base.lock", "train-base",
                                                                busy=_busy):
            remove_write_leftovers(out_dir, STATE_FILES)  # of a run killed mid-write
            return _train(cfg, out_dir, data, resume, progress, device, stop_at, say)
    finally:
        torch.set_num_threads(prev_threads)


def _foreign_log(log_path: Path) -> bool:
    """Whether ``log_path`` holds lines that are not train-base loss records (another tool's log in the folder).

    A run killed before its first checkpoint leaves a log of its own records (``step`` and ``loss``, each with the
    checksum :func:`~hmrcritic.io.append_jsonl` gives it) and perhaps one torn last line: that one is this run's to
    restart. Anything else is someone's file, which a fresh start deleted without a word."""
    try:
        with open(log_path, "rb") as fh:
            lines = [line for line in fh.read().splitlines() if line.strip()]
    except FileNotFoundError:
        return False
    except OSError:  # a folder named log.jsonl, an unreadable file: nothing this run wrote either
        return True
    records = read_jsonl(log_path)  # a record whose checksum fails is left out: not ours (or torn)
    ours = all("checksum" in r and "step" in r and "loss" in r for r in records)
    # a run killed while appending its first record leaves that one torn line alone: it begins as every record of
    # ours does (append_jsonl's json.dumps of {"step": …}), and was refused as someone's file, so the very command
    # that wrote it could not restart in its own folder
    torn_first = not records and len(lines) == 1 and lines[0].lstrip().startswith(b'{"step": ')
    return bool(lines) and not torn_first and (not records or not ours or len(lines) - len(records) > 1)


def _resume_state(state_path: Path, cfg) -> dict:
    """The training state in ``state_path``, checked to be whole and written under ``cfg`` (else AssetError)."""
    from hmrcritic.hmr.diffusion import damaged_member

    # torch.load checks no CRC: a flipped byte in the weights resumed as a model with other weights
    if member := damaged_member(state_path):
        raise AssetError(f"cannot resume from {state_path}: its part {member} does not match the checksum it was "
                         f"written with (a bad copy or disk); {_resume_hint(state_path)}")
    try:
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        saved = st["config"]
    except Exception as exc:
        raise AssetError(f"cannot resume from {state_path}: it is corrupt or not a training state "
                         f"({_one_line(exc)}); {_resume_hint(state_path)}") from None
    try:
        same = TrainConfig.from_dict(saved) == cfg
    except Exception:
        same = False
    if not same:
        raise AssetError(
            f"{state_path} was written by a different training config ({_config_diff(saved, cfg)}); "
            "use another --out or --no-resume"
        )
    return st


def _train(cfg, out_dir: Path, data, resume, progress, device, stop_at, say) -> Path:
    state_path, log_path, final_path = out_dir / "state.pt", out_dir / "log.jsonl", out_dir / "model.pt"
    if not state_path.exists() and _foreign_log(log_path):
        # refused before the data is loaded (or a split generated, minutes): with no state.pt the folder is not a
        # train-base run, and its log.jsonl would be deleted at step 0
        raise InputError(f"train-base: {log_path} is not a train-base loss log (another tool's file?) and there is "
                         f"no {state_path.name} beside it; give another --out, or move the file away to train here")
    # the state's own checks before the data is loaded: a resume under other settings (or of a damaged state) was
    # refused only after the split was read — or generated, minutes on a fresh home
    st = _resume_state(state_path, cfg) if resume and state_path.exists() else None
    if data is None:
        data = load_train_data(cfg.split, cfg.max_samples)
        _say_if_not_the_default_split(data.source, cfg.split, say)
    n = len(data)
    if n < 2:
        raise InputError(f"need at least 2 training samples, got {n}")
    fingerprint = data.data_fingerprint()
    # plain types, as model.pt is read back weights-only: a TrainData given with a Path or a numpy number in its
    # source trained the whole run, then save_model refused model.pt (and a resume refused it again). A plain source
    # is kept as the very object, so the pickle (model.pt's bytes) stays as it was
    source = json.loads(json.dumps(data.source, default=str))
    source = data.source if source == data.source else source

    torch.manual_seed(cfg.seed)
    model = HMRDiffusion(cfg.model).to(device)
    model.set_normalization(data.x0)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, run_loss, run_n = 0, 0.0, 0
    if st is not None:
        known = st.get("data_sha256")
        # A state written before the data and the RNG streams were recorded (an older hmrcritic) cannot be checked
        # against the data: it resumed on a regenerated split without a word, and the resume said it continued
        # bitwise, which it cannot promise without the RNG streams and the log window.
        legacy = known is None
        if known is not None and known != fingerprint:
            was = st.get("data_source") or {}
            raise AssetError(
                f"{state_path} was trained on other data (split {was.get('split', cfg.split)!r}, "
                f"{was.get('n', '?')} scenes; now {len(data)}, and the arrays differ): the split was regenerated "
                "since; use another --out or --no-resume"
            )
        try:
            model.load_state_dict(st["model"])
            ema.load_state_dict(st["ema"])
            opt.load_state_dict(st["opt"])
            start = int(st["step"])
            if "rng" in st:
                _set_rng_state(st["rng"], device)
            if "log_window" in st:  # the log record after the checkpoint averages over the steps before it too
                run_loss, run_n = float(st["log_window"]["loss"]), int(st["log_window"]["n"])
        except Exception as exc:
            raise AssetError(f"cannot resume from {state_path}: {_one_line(exc)}; {_resume_hint(state_path)}") from None
        if not 0 <= start <= cfg.steps:
            raise AssetError(f"cannot resume from {state_path}: step {start} outside 0..{cfg.steps}; "
                             f"{_resume_hint(state_path)}")
        if stop_at is not None and stop_at < start:
            raise InputError(f"train-base: {state_path} is already at step {start}, past --stop-at {stop_at}; "
                             "give a later --stop-at, or another --out")
        # drop log records past the checkpoint (written after it by the killed run)
        # one atomic rewrite (each record keeps its checksum): a crash here must not lose the log before it
        records = [r for r in read_jsonl(log_path) if r.get("step", 0) <= start]
        _write(log_path, "loss log", start, atomic_write_jsonl, log_path, records)
        if start >= cfg.steps:
            say(f"{state_path} has finished all {cfg.steps} steps; writing {final_path} from it")
        elif stop_at == start:
            say(f"{state_path} is already at step {start} (--stop-at {stop_at}); nothing to train")
            return state_path
        else:
            # the kernels (and the RNG streams saved) are the device's: a state trained on cpu and resumed on cuda (or
            # the reverse) continued "bitwise as an uninterrupted one", which it cannot; states before it was kept: ""
            was_on = str(st.get("device") or "")
            moved = bool(was_on) and was_on.split(":")[0] != str(device).split(":")[0]  # cuda:0 → cuda:1 is one kind
            say(f"resuming from step {start}/{cfg.steps} ({state_path}); " + (
                f"it was trained on {was_on} and continues on {device}, so the run differs slightly from an "
                "uninterrupted one (other kernels and random streams)" if moved and not legacy else
                "the run continues bitwise as an uninterrupted one" if not legacy else
                "it was written by an older hmrcritic that kept no record of its training data or random state: "
                "the data is not checked (resume only on the data it started on, else pass --no-resume) and the "
                "run may differ slightly from an uninterrupted one"))
    else:  # starting at step 0: a log (or a state, with --no-resume) left by another run is not this run's
        log_path.unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)
        if not resume:  # nor its model: until this run ends, model.pt would be the old run's beside the new state
            final_path.unlink(missing_ok=True)
            # nor the old run's --stop-at exports: model_step300.pt of the old run sat beside the new run's
            # state, read as this run's weights at that step (only that exact name: other files are the user's)
            for old in out_dir.glob("model_step*.pt"):
                if _STOP_EXPORT.fullmatch(old.name) and old.is_file():
                    old.unlink(missing_ok=True)

    if cfg.batch_size > n and start < cfg.steps:
        # _batch_indices takes min(batch, n): the run printed "batch 64" and recorded it in its recipe while every
        # step trained on the 10 scenes there were
        say(f"batch size {cfg.batch_size} is more than the {n} training scenes: each step trains on all {n}")
    x0_all, kp_all, K_all, size_all = (t.to(device) for t in (data.x0, data.keypoints, data.K, data.image_size))
    model.train()
    t0, timed = time.time(), 0  # steps since t0 (the log window may hold steps from before a resume)
    done = saved_at = start
    try:
        for step in range(start, cfg.steps):
            gen = torch.Generator().manual_seed(cfg.seed * 7_919_993 + step)
            idx = _batch_indices(step, cfg, n)
            kp = augment_keypoints(kp_all[idx].cpu(), size_all[idx].cpu(), cfg, gen).to(device)
            cond = condition_from_keypoints(kp, K_all[idx], size_all[idx])
            x0 = x0_all[idx]
            t = torch.randint(0, model.num_timesteps, (len(idx),), generator=gen).to(device)
            eps = torch.randn(x0.shape, generator=gen).to(device)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            loss = model.loss(x0, cond, t=t, eps=eps, snr_gamma=cfg.snr_gamma, weighting=cfg.loss_weighting).mean()
            if not bool(torch.isfinite(loss)):
                # stop before the NaN reaches the weights, the state and the model: a diverged run trained on to the
                # end and wrote a model.pt of NaN weights (its log full of NaN tokens), which sample then blamed on
                # the checkpoint. As finetune stops.
                if step == 0:  # no update made yet: the data gives it, and "lower the learning rate" would mislead
                    raise TrainingDiverged(f"train-base cannot start: the loss is {float(loss.detach())} at step 1, "
                                           "before any update, so the training data gives it (non-finite image "
                                           "sizes or intrinsics?), not the learning rate")
                kept = (f"the last checkpoint (step {saved_at}, {state_path}) is kept" if saved_at
                        else "no checkpoint was written yet")
                raise TrainingDiverged(f"train-base diverged: the loss is {float(loss.detach())} at step {step + 1} "
                                       f"({kept}); lower the learning rate (TrainConfig.lr, now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema_update(ema, model, step, cfg.ema)
            run_loss += float(loss.detach())
            run_n += 1
            timed += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = time.time() - t0
                rec = {
                    "step": done,
                    "loss": run_loss / run_n,
                    "lr": _lr_at(step, cfg),
                    "grad_norm": float(gnorm),
                    "steps_per_s": timed / max(elapsed, 1e-9),
                }
                _write(log_path, "loss log", saved_at, append_jsonl, log_path, rec)
                if progress:
                    progress({**rec, "total": cfg.steps})
                t0, timed, run_loss, run_n = time.time(), 0, 0.0, 0
            if done % cfg.ckpt_every == 0 or done == cfg.steps or done == stop_at:
                extra = {
                    "rng": _rng_state(device),
                    "log_window": {"loss": run_loss, "n": run_n},
                    "data_sha256": fingerprint,
                    "data_source": json.loads(json.dumps(data.source, default=str)),  # plain types: weights_only
                    "device": str(device),
                }
                _write(state_path, "training state", saved_at, _save_state, state_path, model, ema, opt, done, cfg,
                       extra)
                saved_at = done
            if done == stop_at and done < cfg.steps:
                return state_path
    except KeyboardInterrupt:
        # the state on disk is where a re-run resumes: a Ctrl-C after a state was renamed into place but before
        # ``saved_at`` caught up (the folder's fsync lies between) said "before the first checkpoint" beside it
        saved_at = _step_on_disk(state_path, saved_at)
        say(f"interrupted at step {done}/{cfg.steps}; the last checkpoint is step {saved_at} ({state_path})"
            if saved_at else f"interrupted at step {done}/{cfg.steps}, before the first checkpoint (every "
                             f"{cfg.ckpt_every} steps): nothing was saved, so the same command starts over")
        raise

    extra = {
        "recipe": asdict(cfg),
        "seed": cfg.seed,
        "data": source,
        "steps": cfg.steps,
        "final_loss": (read_jsonl(log_path) or [{}])[-1].get("loss"),
    }
    _write(final_path, "model", saved_at, save_model, ema, final_path, extra)
    return final_path


def loss_curve(out_dir: str | Path) -> list[dict]:
    """The logged loss records of a run (for plots and reports)."""
    return read_jsonl(Path(out_dir) / "log.jsonl")


def check_ship_dest(dest_dir: str | Path | None = None) -> Path:
    """Refuse at once a ``--ship`` whose destination (the package's assets folder by default) cannot be written.

    ``ship_model`` learned it only after training and evaluating (~25 min at the recipe's size). The folder is
    probed by writing a temporary file in it (an unnamed one where the system has them, removed on close):
    ``os.access`` says yes to root even on a read-only mount."""
    import tempfile

    from hmrcritic.hmr.diffusion import ASSETS_DIR

    dest = Path(dest_dir) if dest_dir is not None else ASSETS_DIR
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=dest) as fh:
            fh.write(b"hmrcritic ship probe")
            fh.flush()
    except OSError as exc:
        raise AssetError(f"train-base --ship installs the model into {dest}, which cannot be written "
                         f"({exc.strerror or type(exc).__name__}); make it writable, or train without --ship "
                         "and give the run's model.pt as --model") from None
    return dest


def ship_model(
    model_path: str | Path,
    evals: dict[str, dict],
    dest_dir: str | Path | None = None,
    command: str | None = None,
) -> tuple[Path, Path]:
    """Install a trained checkpoint as the package's base model: ``base_model.pt`` + ``base_model.json``.

    The JSON carries the model config, the training recipe and seed, the data it was trained on and the
    evaluation figures per split (from :func:`hmrcritic.hmr.evaluate.evaluate_model`), so the shipped
    numbers can be re-derived with ``hmrcritic evaluate``.
    """
    import hashlib

    from hmrcritic.hmr.diffusion import ASSETS_DIR, read_checkpoint
    from hmrcritic.io import atomic_write_bytes, atomic_write_json, finite_json

    payload = read_checkpoint(model_path)
    dest = Path(dest_dir) if dest_dir is not None else ASSETS_DIR
    dest.mkdir(parents=True, exist_ok=True)
    pt = dest / "base_model.pt"
    data = Path(model_path).read_bytes()
    extra = payload.get("extra")
    extra = extra if isinstance(extra, dict) else {}  # another tool's checkpoint: a list, None (AttributeError below)
    meta = {
        "checkpoint": pt.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "config": payload["config"],
        "recipe": extra.get("recipe"),
        "seed": extra.get("seed"),
        "data": extra.get("data"),
        "final_loss": extra.get("final_loss"),
        "reproduce": command or "hmrcritic train-base --seed 0 --ship",
        "eval": json.loads(json.dumps(evals)),
    }
    # each file atomically; a crash between the two leaves a pair whose sha256 disagree, which `doctor` reports
    atomic_write_bytes(pt, data)
    # an evaluation figure that is NaN (a split whose hypotheses all diverged, no occluded scene) was written as the
    # bare word NaN, which jq and other strict JSON readers refuse: null, as results.json and the other outputs say
    js = atomic_write_json(dest / "base_model.json", finite_json(meta))
    return pt, js


def model_from_state(state_path: str | Path, device: str = "cpu") -> HMRDiffusion:
    """The EMA model of an unfinished run's ``state.pt`` (to evaluate a run while it trains)."""
    from hmrcritic.hmr.diffusion import damaged_member

    if Path(state_path).is_file() and (member := damaged_member(Path(state_path))):
        raise AssetError(f"training state {state_path} is damaged: its part {member} does not match the checksum it "
                         "was written with (a bad copy or disk)")
    try:
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model = HMRDiffusion(TrainConfig.from_dict(st["config"]).model)
        model.load_state_dict(st["ema"])
    except FileNotFoundError:
        raise AssetError(f"training state not found: {state_path}") from None
    except Exception as exc:
        raise AssetError(f"unreadable training state {state_path}: {type(exc).__name__}") from None
    model.checkpoint_path = f"{state_path}@step{st['step']}"
    return model.to(device).eval()


def checkpoint_from_state(state_path: str | Path, dest: str | Path, step: int | None = None) -> Path:
    """Write the EMA model of a (possibly stopped-early) run's ``state.pt`` as a ``load_model`` checkpoint.

    The recipe it records is the run's config plus ``stop_at`` (the step it stopped at), and the data the
    state was trained on (``data_source``: split, size, seed, preset, generator version — as a finished run's
    model records it), which reproduces it exactly: ``hmrcritic train-base --seed S --stop-at N``. With ``step``
    a state at any other step is refused: ``train-base --stop-at N`` exports after its run has let go of the
    folder, where another
    ``train-base`` may already have trained on (``model_stepN.pt`` would hold a later step's weights).
    """
    model = model_from_state(state_path)  # a missing or unreadable state: one AssetError naming it (a bare
    # FileNotFoundError / UnpicklingError from the load below before)
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    if step is not None and int(st["step"]) != step:
        raise InputError(f"train-base: {state_path} is at step {int(st['step'])}, not {step}: another train-base "
                         f"on {Path(state_path).parent} trained on meanwhile; run the same command again once it "
                         "has stopped")
    cfg = TrainConfig.from_dict(st["config"])
    log = [r for r in read_jsonl(Path(state_path).parent / "log.jsonl") if r.get("step", 0) <= st["step"]]
    loss, window = _final_loss(log, st)
    extra = {
        "recipe": asdict(cfg),
        "seed": cfg.seed,
        "data": st.get("data_source") or {"split": cfg.split},  # states saved before it was recorded: the split
        "steps": int(st["step"]),
        "stop_at": int(st["step"]),
        "final_loss": loss,
        "final_loss_steps": window,
    }
    return save_model(model, dest, extra=extra)


def _final_loss(log: list[dict], st: dict) -> tuple[float | None, list[int] | None]:
    """The mean loss of the last steps a stopped run's state holds, and those steps ``[first, last]`` (1-based).

    A run stopped between two log records (``--stop-at 11`` with ``log_every`` 10, a Ctrl-C after a checkpoint)
    recorded the last logged window's mean (steps 1..10) as the loss of a model trained to step 11: the steps since
    that record are in the state's ``log_window`` (their summed loss and count), which is what this takes then.
    States without one (an older hmrcritic), or stopped on a log step: the last log record's window."""
    step = int(st["step"])
    window = st.get("log_window") or {}
    n = int(window.get("n", 0) or 0)
    if 0 < n <= step:
        return float(window["loss"]) / n, [step - n + 1, step]
    if not log or "loss" not in log[-1]:
        return None, None
    last = int(log[-1].get("step", step))
    first = int(log[-2].get("step", 0)) + 1 if len(log) > 1 else 1
    return log[-1]["loss"], [first, last]
