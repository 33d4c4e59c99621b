"""Finetune the diffusion HMR model on an exported group preference dataset (GPA | DPO | SFT).

Recipe (PAPER.md §4, the released code): AdamW at lr 1e-4, gradients clipped to norm 1, an EMA of the
weights (decay 0.999 with the usual warm-up ``min(decay, (1+k)/(10+k))`` so short runs are not just the
base model), ``num_generations`` = 20 of the stored hypotheses drawn per group and step, a frozen copy of
the base model as the reference. Objectives and their formulas: :mod:`hmrcritic.alignment.objectives`.

Only what the dataset reader yields reaches the model: 2D keypoints, intrinsics, image size, the sampled
``x0`` and the critic's scores — never a 3D label (the reader refuses label keys by name).

Everything a run needs to continue lives beside the output checkpoint ``OUT``:
``OUT.state.pt`` (policy, EMA, optimiser, step, RNG; written atomically every ``checkpoint_every`` steps),
``OUT.log.jsonl`` (one record per logged step: loss, implicit-reward margin/accuracy, zero-variance share,
per-group score statistics, grad norm, lr, steps/s). Each step's randomness comes from a generator seeded
by ``(seed, step)``, so a resumed run gives the same weights as an uninterrupted one.
The final checkpoint holds the EMA weights, written with the model's ``save_model`` (``load_model`` reads it).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import operator
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from hmrcritic.alignment.dataset import (
    FAILURES,
    RETRY_ADVICE,
    GroupPreferenceDataset,
    not_attempted_note,
    open_failures,
)
from hmrcritic.alignment.objectives import (
    OBJECTIVES,
    UNUSED_SETTINGS,
    ObjectiveConfig,
    compute_loss,
    frozen_reference,
)
from hmrcritic.alignment.stats import GroupStatTracker, zero_variance_mask
from hmrcritic.errors import (
    AssetError,
    HMRCriticError,
    InputError,
    check_number,
    keywords_checked,
    keywords_checked_init,
)
from hmrcritic.hmr.diffusion import CHECKPOINT_FORMAT, DEFAULT_CHECKPOINT, damaged_member
from hmrcritic.hmr.train import ema_update
from hmrcritic.io import (
    append_jsonl,
    atomic_torch_save,
    atomic_write_jsonl,
    check_output_target,
    exclusive_lock,
    read_jsonl,
    remove_write_leftovers,
)


class TrainingDiverged(HMRCriticError):
    """The loss became NaN or infinite; nothing of that step was applied or saved."""


_INT_FIELDS = ("num_generations", "steps", "batch_size", "t_min", "seed", "checkpoint_every", "log_every")
_FLOAT_FIELDS = ("lr", "weight_decay", "beta", "gpa_weight", "base_loss_weight", "ema", "grad_clip")

# The fields ``hmrcritic finetune`` has no flag for: a message names them as the field a Python caller sets, as
# "--grad-clip must be …" sent CLI users after a flag that ``finetune --help`` does not list
_NO_CLI_FLAG = ("weight_decay", "grad_clip", "log_every")


def _option(name: str) -> str:
    """What a message calls field ``name``: its ``hmrcritic finetune`` flag, else ``FinetuneConfig.<name>``."""
    return f"FinetuneConfig.{name}" if name in _NO_CLI_FLAG else f"--{name.replace('_', '-')}"


# Fields that may change between a run and its resumption (everything else must match).
# ``threads`` too: it moves the weights only by float rounding (see FinetuneConfig.threads)
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "log_every", "progress", "threads"}


@keywords_checked_init
@dataclass
class FinetuneConfig:
    data: str
    out: str
    model: str | None = None  # base checkpoint; None → the shipped base model
    objective: str = "gpa"
    num_generations: int = 20
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta: float = 100.0
    t_min: int | None = None
    gpa_weight: float = 0.1
    base_loss_weight: float = 1.0
    scale_rewards: str = "group"
    ema: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 1
    device: str = "cpu"
    resume: bool = True
    # torch CPU threads; None leaves torch's setting (one per core). The weights are bit-identical run to run only
    # at one thread count (float sums reduce in another order at another count: the last bits differ), so the
    # count used is recorded in the checkpoint (torch_threads_used: every count a resumed run's steps ran at).
    # Set it to compare runs across machines.
    threads: int | None = None

    def __post_init__(self) -> None:
        self._check_types()
        self._plain_numbers()
        from hmrcritic.config import path_text

        # "" refused and "~" expanded, as the CLI's path options; other text as given (a resume compares it). Named
        # as the Python caller wrote them, as ExportConfig's are (the CLI refuses its own spellings before this)
        self.data = path_text(self.data, "FinetuneConfig.data")
        self.out = path_text(self.out, "FinetuneConfig.out")
        self.model = None if self.model is None else path_text(self.model, "FinetuneConfig.model")
        if self.objective == "gpa_no_base_loss":
            self.objective, self.base_loss_weight = "gpa", 0.0
        if self.objective not in OBJECTIVES:
            # gpa_no_base_loss is taken above (gpa without the base loss), and --help lists it: so does this line
            raise InputError(f"--objective must be one of {', '.join((*OBJECTIVES, 'gpa_no_base_loss'))}, got "
                             f"{self.objective!r}")
        # (num_generations: its own bound, ≥ 2, below; -n 0 was told "≥ 1" and -n 1 then "≥ 2")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{_option(name)} must be ≥ 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema < 1.0:
            raise InputError(f"--ema must be in [0, 1), got {self.ema}")
        # sft too: its "best of a group" of one hypothesis is a tie like any other, so every group was skipped and
        # the run saved the base model unchanged after steps of zero loss
        if self.num_generations < 2:
            raise InputError(f"--num-generations must be ≥ 2 (a group of one hypothesis has no preference, and "
                             f"best-of-group SFT no best), got {self.num_generations}")
        if self.threads is not None:
            check_number("--threads", self.threads, integer=True)
            if self.threads < 1:
                raise InputError(f"--threads must be ≥ 1, got {self.threads}")
            self.threads = operator.index(self.threads)
        # the CLI's range: a larger seed overflowed torch's generator at the first step (seed × 7,919,993), after the
        # dataset and the model were loaded, with a bare "Overflow when unpacking long long"
        if not 0 <= self.seed <= 2**32 - 1:
            raise InputError(f"--seed must be in 0..{2**32 - 1}, got {self.seed}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise InputError(f"{_option('grad_clip')} must be a finite number > 0, got {self.grad_clip}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"{_option('weight_decay')} must be a finite number ≥ 0, got {self.weight_decay}")
        self.objective_config()  # β and the loss weights: refused here, before any file is read or written
        # GPA's loss is gpa_weight · L_GPA + base_loss_weight · L_base: with both 0 it is 0 at every step, so no
        # weight moved and the run saved the base model as "aligned checkpoint" after all its steps
        if self.objective in ("gpa", "gpa_linear") and self.gpa_weight == 0 and self.base_loss_weight == 0:
            raise InputError(f"--gpa-weight and --base-loss-weight are both 0 (objective {self.objective}): the loss "
                             "is 0 at every step and nothing would train; give --gpa-weight > 0")

    def _check_types(self) -> None:
        """Numbers of the wrong type (``batch_size="8"``) are refused in one line like any other bad option, not
        as a TypeError from a comparison below or from the optimizer once the dataset is loaded. Numpy and torch
        scalars are numbers; the values are kept as given."""
        for name in (*_INT_FIELDS, *_FLOAT_FIELDS):
            value = getattr(self, name)
            if not (value is None and name == "t_min"):
                check_number(_option(name), value, integer=name in _INT_FIELDS)

    def _plain_numbers(self) -> None:
        """The numbers as plain Python ints and floats (same values). A numpy or torch scalar passed the checks
        and then stopped the run: a float32 ``lr`` at the first checkpoint (the saved settings are JSON: "Object of
        type float32 is not JSON serializable"), an int64 ``steps`` only after the last step (``save_model`` refuses
        a numpy number in the checkpoint's extra), every trained step lost."""
        for name in (*_INT_FIELDS, *_FLOAT_FIELDS):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, operator.index(value) if name in _INT_FIELDS else float(value))

    def objective_config(self) -> ObjectiveConfig:
        try:
            return ObjectiveConfig(
                self.objective,
                self.beta,
                self.t_min,
                self.gpa_weight,
                self.base_loss_weight,
                self.scale_rewards,
            )
        except ValueError as exc:
            # ObjectiveConfig names its fields ("scale_rewards must be …"); the user set a flag (--scale-rewards)
            msg = str(exc)
            name = msg.split(" ", 1)[0]
            if name in {f.name for f in fields(ObjectiveConfig)}:
                msg = _option(name) + msg[len(name):]
            raise InputError(msg) from None

    @property
    def state_path(self) -> Path:
        return Path(self.out + ".state.pt")

    @property
    def log_path(self) -> Path:
        return Path(self.out + ".log.jsonl")


def state_dict_hash(model: torch.nn.Module) -> str:
    """Content hash of a model's weights and buffers (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def dataset_hash(ds: GroupPreferenceDataset) -> str:
    """Hash of the groups a dataset holds (its records' checksums, which cover scores and array checksums)."""
    return hashlib.sha256("|".join(str(r.checksum) for r in ds.records).encode()).hexdigest()[:16]


class _GroupTensors:
    """All groups of a dataset in memory (the arrays are small): conditions built once, x0 per group."""

    def __init__(self, ds: GroupPreferenceDataset, device: str):
        from hmrcritic.hmr.diffusion import condition_from_keypoints

        items = [ds[i] for i in range(len(ds))]
        self.group_ids = [it["group_id"] for it in items]
        kp = torch.stack([it["keypoints"] for it in items])
        K = torch.stack([it["K"] for it in items])
        size = torch.stack([it["image_size"] for it in items])
        self.cond = condition_from_keypoints(kp, K, size).to(device)
        self.x0 = [it["x0"].to(device) for it in items]
        self.overall = [it["overall"].to(device) for it in items]
        self.min_n = min(x.shape[0] for x in self.x0)

    def __len__(self) -> int:
        return len(self.x0)

    def batch(self, step: int, batch_size: int, G: int, seed: int, gen: torch.Generator):
        """Groups of step ``step`` (epochs of a seeded permutation) and G hypotheses drawn per group."""
        n = len(self)
        bs = min(batch_size, n)
        epoch, k = divmod(step, n // bs)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        idx = order[k * bs : (k + 1) * bs]
        xs, ss = [], []
        for i in idx.tolist():
            pick = torch.randperm(self.x0[i].shape[0], generator=gen)[:G].to(self.x0[i].device)
            xs.append(self.x0[i][pick])
            ss.append(self.overall[i][pick])
        return idx, torch.stack(xs), torch.stack(ss)


def _load_base(cfg: FinetuneConfig):
    from hmrcritic.hmr.diffusion import load_model

    return load_model(cfg.model, device=cfg.device)


def _comparable(cfg: FinetuneConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE_CHANGES and k != "resume"}


def _settings_changed(saved: str | None, cfg: FinetuneConfig, ignore: set[str]) -> list[str]:
    """The settings a saved state was trained with that differ now (``name old → new``).

    ``ignore``: the path fields whose files are compared by content instead. The paths as typed were compared,
    so the same run resumed from another folder (``--out ft/a.pt`` there, ``--out a.pt`` here) or with an
    absolute path was refused as "a run with different settings" — it was not — and the message offered only
    ``--no-resume``, which throws the trained steps away."""
    try:
        old = json.loads(saved) if isinstance(saved, str) else None
    except ValueError:
        old = None
    if not isinstance(old, dict):
        return ["(the saved settings are unreadable)"]
    now = json.loads(json.dumps(_comparable(cfg), sort_keys=True))  # as saved: JSON types
    return [f"{k} {old.get(k)!r} → {now.get(k)!r}" for k in sorted(old.keys() | now.keys())
            if k not in ignore and old.get(k) != now.get(k)]


def _saved_data(saved: str | None) -> str | None:
    """The --data a saved state's settings name (as typed then), None when they are unreadable."""
    try:
        data = json.loads(saved).get("data") if isinstance(saved, str) else None
    except (ValueError, AttributeError):
        return None
    return data if isinstance(data, str) else None


def _same_path(a: str, b: str) -> bool:
    """Do two --data paths name one folder? A saved path that does not exist from here (typed relative to another
    folder, or deleted since) counts as the same: the message keeps "the dataset changed since" rather than name a
    folder that may not be the one the run read."""
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve() or not Path(a).expanduser().exists()
    except OSError:
        return True


def _save_state(cfg: FinetuneConfig, policy, ema, opt, step: int, base_hash: str,
                window: list[dict] | None = None, tracker: GroupStatTracker | None = None,
                data_hash: str | None = None, threads_used: list[int] | None = None) -> None:
    atomic_torch_save(
        cfg.state_path,
        {
            "step": step,
            "policy": policy.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            # dropout on a GPU draws from the CUDA generators: saved too, so a GPU run resumes as it would run on
            # (not covered by the tests, which run on CPU)
            **({"cuda_rng": torch.cuda.get_rng_state_all()}
               if str(cfg.device).startswith("cuda") and torch.cuda.is_available() else {}),
            "config": json.dumps(_comparable(cfg), sort_keys=True),
            "base_hash": base_hash,
            "data_hash": data_hash,
            # the steps of the logging window still open at this step (a checkpoint need not fall on a log
            # step): a resumed run logs the same window means as an uninterrupted one
            "window": list(window or []),
            "tracker": tracker.state_dict() if tracker is not None else None,
            "threads_used": sorted(threads_used or []),
        },
    )


def _resume(cfg: FinetuneConfig, policy, ema, opt, base_hash: str, tracker: GroupStatTracker,
            data_hash: str | None = None) -> tuple[int, list, list[int]]:
    path = cfg.state_path
    if member := damaged_member(path):  # torch.load reads a flipped byte in the weights as other weights
        raise AssetError(f"cannot resume from {path}: it is damaged (its part {member} does not match the checksum "
                         "it was written with); restore it, or use another --out, or --no-resume (which deletes it)")
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # a state cut short (a full disk, a copy stopped) failed with torch's whole reader text and no way out
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise AssetError(f"cannot resume from {path}: it is not a readable torch file ({type(exc).__name__}: "
                         f"{detail}); restore it, or use another --out, or --no-resume (which deletes it)") from None
    # a torch file of other contents (a list, a model checkpoint given as --out's state) failed as "AttributeError:
    # 'list' object has no attribute 'get'"; a state with a part missing or of another type (a hand edit, a bad
    # restore) as a bare KeyError / RuntimeError / TypeError from deep in the loaders, the file never named
    if not isinstance(st, dict) or not {"step", "policy", "ema", "opt", "torch_rng"} <= set(st):
        raise AssetError(f"cannot resume from {path}: not a finetune state (the weights, optimizer and step a "
                         "finetune saves); restore it, or use another --out, or --no-resume (which deletes it)")
    # --out names the state itself and --model the weights compared by base_hash; --data is compared by the hash
    # of its groups where the state has one (states saved before it: by the path)
    # and the settings the objective does not read: another --t-min of a DPO run trains the very same weights
    ignore = ({"out", "model", *UNUSED_SETTINGS.get(cfg.objective, ())}
              | ({"data"} if st.get("data_hash") is not None else set()))
    changed = _settings_changed(st.get("config"), cfg, ignore)
    if changed:
        raise InputError(f"{path} belongs to a run with different settings ({'; '.join(changed)}); give the same "
                         "ones to resume it, or use another --out or --no-resume")
    if st.get("base_hash") != base_hash:
        raise InputError(f"{path} belongs to a run from another base model (weights {st.get('base_hash')}; "
                         f"{cfg.model or 'the shipped model'} has {base_hash}); use another --out or --no-resume")
    # the same --data path with other groups in it (re-exported, another judge, an export resumed meanwhile): the
    # settings match, but continuing would train one model on two datasets (states saved before this: not checked)
    if st.get("data_hash") not in (None, data_hash):
        # another --data folder was told "the dataset changed since", sending the user to look for an edit of a
        # dataset nobody touched: name the folder the run was trained on when it is another one
        then = _saved_data(st.get("config"))
        why = (f"{then} then, {cfg.data} now" if then is not None and not _same_path(then, cfg.data)
               else "the dataset changed since")
        raise InputError(f"{path} belongs to a run on other data than {cfg.data} holds now ({why}); use another "
                         "--out or --no-resume")
    try:
        step, window, threads_used = _load_resume_state(st, policy, ema, opt, tracker)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise AssetError(f"cannot resume from {path}: its saved state is damaged ({type(exc).__name__}: {detail}); "
                         "restore it, or use another --out, or --no-resume (which deletes it)") from None
    if step > cfg.steps:
        raise InputError(f"{path} is already at step {step}, past --steps {cfg.steps}: the saved model is "
                         f"trained longer than asked; use --steps ≥ {step}, another --out or --no-resume")
    # a record whose step is no number (not one a finetune wrote) is kept as it is, like one without a step: it
    # failed the comparison as "TypeError: '<=' not supported between 'str' and 'int'"
    kept = [r for r in read_jsonl(cfg.log_path)
            if not (isinstance(r.get("step"), int | float) and not isinstance(r.get("step"), bool))
            or r["step"] <= step]
    atomic_write_jsonl(cfg.log_path, kept)
    return step, window, threads_used


def _load_resume_state(st: dict, policy, ema, opt, tracker: GroupStatTracker) -> tuple[int, list, list[int]]:
    """Load a resume state's parts into the run's objects; raises what the loaders raise for a damaged part
    (:func:`_resume` names the file). Every part is read and checked before the log is rewritten."""
    policy.load_state_dict(st["policy"])
    ema.load_state_dict(st["ema"])
    opt.load_state_dict(st["opt"])
    torch.set_rng_state(st["torch_rng"])
    if "cuda_rng" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda_rng"])
    step = st["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step {step!r} is not a step count")
    window = st.get("window") or []
    if not isinstance(window, list) or not all(
            isinstance(m, dict) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in m.values())
            for m in window):
        raise ValueError("'window' is not a list of logged metrics")
    threads = st.get("threads_used") or []
    if not isinstance(threads, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in threads):
        raise ValueError("'threads_used' is not a list of thread counts")
    if st.get("tracker"):  # a state saved before the window was kept resumes with an empty one
        tracker.load_state_dict(st["tracker"])
    return step, list(window), list(threads)


@keywords_checked
def finetune(config: FinetuneConfig, progress: bool | Callable[[dict], None] = False,
             generations_given: bool | None = None) -> Path:
    """Run (or resume) a finetune; returns the path of the final EMA checkpoint (``config.out``).

    ``generations_given``: whether the caller's user chose ``num_generations`` (the CLI: ``-n`` typed), for the note
    on a dataset of smaller groups — "(asked for 20)" rather than "(default 20)"; None judges by the value alone.
    Not a config field: the config is compared when a run resumes, and how a value was given is no setting.

    ``progress``: True for a rich progress bar, or a callable receiving each logged record. Only True prints the
    notes on stderr (fewer hypotheses per group than ``num_generations``, another model's samples, settings the
    objective ignores, a dataset of the held-out test split, groups left out): a caller with a callable or False reads
    them from the checkpoint's extra (``num_generations_used``, ``data_model_hash``, ``data_split``) and
    ``validate_dataset``. The caller's torch thread count and global random state are as they were afterwards (the
    run seeds its own).
    """
    if not isinstance(config, FinetuneConfig):  # a dict stopped as "'dict' object has no attribute 'threads'"
        raise InputError(f"finetune: config must be a FinetuneConfig(data=..., out=...), got {type(config).__name__}")
    prev = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        with torch.random.fork_rng(devices=[]), contextlib.ExitStack() as held:  # manual_seed reseeded a notebook's RNG
            return _finetune(config, progress, held, generations_given)
    finally:
        torch.set_num_threads(prev)  # the caller's setting (a notebook, reproduce's evaluation) back


def _refuse_foreign_out(out: Path, data: str) -> None:
    """Refuse an ``out`` that already holds a file no finetune wrote: the aligned weights would replace it.

    Only a finetune's own checkpoint (a re-run, a resume, ``--no-resume``) or an empty file (``mktemp``) may be
    written over — an empty file only outside the ``data`` folder (an all-tied export's ``pairs.jsonl`` is
    empty, and is the dataset's all the same). ``--out runs/prefs/dataset.json`` (or ``manifest.jsonl``)
    replaced the dataset's header with a torch file, so the dataset being trained on could no longer be read;
    ``--out runs/base/model.pt`` silently replaced a train-base model that was not ``--model``; ``--out notes.txt``
    a user's file. Checked before the dataset is read, so nothing is written and no step is spent. The file is
    opened memory-mapped (a large checkpoint is not read into memory).

    A device, pipe or socket (``--out /dev/null``, a FIFO) is refused here too: the final atomic write refused it
    only after every step had run, with the state and log already written beside it."""
    check_output_target(out, "finetune --out")
    try:
        if not out.is_file():
            return
        in_data = Path(data).resolve() in out.resolve().parents
        if out.stat().st_size == 0 and not in_data:
            return
    except OSError:  # unreadable metadata: the write below reports it
        return
    try:
        payload = torch.load(out, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (not a torch file, or one the weights-only loader refuses)
        payload = None
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        if isinstance(payload.get("extra"), dict) and "finetune" in payload["extra"]:
            return  # an earlier finetune's result: re-running to the same --out rewrites it, as documented
        what = ("a model checkpoint that no finetune wrote (train-base's model.pt, or a model saved by "
                "hmr.diffusion.save_model)")
    elif isinstance(payload, dict) and {"step", "ema", "opt"} <= set(payload):
        what = "a training state (train-base's state.pt or a finetune's OUT.state.pt)"
    elif in_data:
        what = f"a file of the dataset being trained on ({data})"
    else:
        what = "not a model checkpoint"
    raise InputError(f"--out {out} already exists and is {what}: finetune would replace it with the aligned weights; "
                     "give a new file path (or delete that file first)")


def _busy(by: str) -> AssetError:
    return AssetError(f"finetune: this --out is in use by {by}; wait for it or give another --out")


def _finetune(cfg: FinetuneConfig, progress: bool | Callable[[dict], None], held: contextlib.ExitStack,
              generations_given: bool | None = None) -> Path:
    from hmrcritic.config import check_device

    check_device(cfg.device)
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise InputError(f"--lr must be a finite number > 0, got {cfg.lr}")
    ocfg = cfg.objective_config()
    out = Path(cfg.out)
    if out.is_dir():
        raise InputError(f"--out must be a checkpoint file path, got a folder: {out}")
    # the aligned weights written over the base checkpoint: the base is gone (the frozen reference of every later
    # run with it), and a resume is refused as "another base model" since its hash changed under the state file
    # without --model the base is the shipped checkpoint, which --out must not name either
    base = Path(cfg.model).expanduser() if cfg.model else DEFAULT_CHECKPOINT
    if out.resolve() == base.resolve():
        raise InputError(f"--out {out} is the checkpoint being aligned (--model, or the shipped base without it): "
                         "the aligned model would replace its base; write it to another file")
    _refuse_foreign_out(out, cfg.data)
    if progress is True:
        _note_unused(cfg)
    ds = GroupPreferenceDataset(cfg.data)
    data = _GroupTensors(ds, cfg.device)
    data_hash = dataset_hash(ds)
    G = min(cfg.num_generations, data.min_n)
    if G < 2:  # a hand-written dataset: export refuses groups of one; with G = 1 no step carries a preference
        raise InputError(f"{cfg.data}: its smallest group has {data.min_n} hypothesis; every group needs ≥ 2 to "
                         "carry a preference")
    # Every group tied: GPA's term, DPO's pair and SFT's best all skip a tied group, so each step trains nothing
    # (dpo, sft, gpa without base loss: the base model is saved back unchanged) or only the plain denoising loss;
    # the CLI ended as if it had aligned the model. Said, not refused: a run on such data is well defined.
    if progress is True and all(bool(zero_variance_mask(o[None])[0]) for o in data.overall):
        import sys

        trains = ("only the plain denoising loss" if cfg.objective in ("gpa", "gpa_linear") and cfg.base_loss_weight > 0
                  else "nothing: the checkpoint will be the base model")
        print(f"note: all {len(data)} group(s) of {cfg.data} score every hypothesis alike (zero-variance share "
              f"100 %): no step carries a preference, so this run trains {trains}; export groups the critic "
              "tells apart to align on", file=sys.stderr)
    if progress is True:
        _note_left_out(ds, cfg.data)
        _note_held_out_split(ds, cfg.data)
    written = ds.header.counts.get("groups")
    # (groups missing no more than the unreadable lines the note above counted: explained there already)
    if ds.header.counts.get("finished") is True and isinstance(written, int) and written != len(ds.records) \
            and not 0 < written - len(ds.records) <= len(ds.skipped_lines) and progress is True:
        import sys

        # a finished export whose manifest lost lines (or holds damaged ones) was trained on what was left without
        # a word; `export validate` calls it an error, the run is still well defined on the groups that read
        print(f"note: {cfg.data}: the finished export wrote {written} groups, {len(ds.records)} read back (manifest "
              f"lines lost or damaged since; `hmrcritic export validate {cfg.data}` lists them): training on those",
              file=sys.stderr)
    if cfg.num_generations > G and progress is True:  # the CLI: say so rather than silently train on fewer
        import sys

        print(f"note: the dataset's smallest group has {data.min_n} hypotheses; using G = {G} "
              f"({_generations_origin(cfg.num_generations, generations_given)})", file=sys.stderr)

    torch.manual_seed(cfg.seed)
    base = _load_base(cfg)
    # hypotheses of another width (a dataset sampled by another kind of model) stopped the first step with a bare
    # "The size of tensor a (150) must match the size of tensor b (154)"
    widths = sorted({int(x.shape[1]) for x in data.x0})
    if widths != [int(base.X_DIM)]:
        raise InputError(f"{cfg.data}: its hypotheses have {' or '.join(map(str, widths))} values each, but the model "
                         f"being aligned ({cfg.model or 'the shipped one'}) has {base.X_DIM}: the dataset was sampled "
                         "by another kind of model (check --model)")
    if cfg.t_min is not None and not 0 <= cfg.t_min < base.num_timesteps:
        raise InputError(f"--t-min must be in [0, {base.num_timesteps}), got {cfg.t_min}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # one process per --out (two interleaved their state and log), held until the caller's block ends; then the
    # temporary files of a run killed mid-write, which nothing else removes (model-sized; the real files are intact)
    held.enter_context(exclusive_lock(out.parent / f".{out.name}.lock", "finetune", busy=_busy))
    remove_write_leftovers(out.parent, (out.name, cfg.state_path.name, cfg.log_path.name))
    base_hash = state_dict_hash(base)
    if base_hash != ds.header.model_hash and progress is True:
        import sys

        print(f"note: {cfg.data} was sampled by model {ds.header.model_hash}, but the model being aligned is "
              f"{base_hash}: the preferences are about another model's samples (check --model)", file=sys.stderr)
    reference = frozen_reference(base) if cfg.objective != "sft" else None
    policy = copy.deepcopy(base).train()
    for p in policy.parameters():
        p.requires_grad_(True)
    ema = frozen_reference(base)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    start, window, threads_used = 0, [], []
    tracker = GroupStatTracker()
    if cfg.resume and cfg.state_path.exists():
        start, window, threads_used = _resume(cfg, policy, ema, opt, base_hash, tracker, data_hash)
    else:
        # starting over (--no-resume) drops the old run's state with its log: kept until this run's first checkpoint,
        # a run stopped before that was continued from the old state by the next plain re-run, its log holding this
        # run's first steps and then the old state's next ones (the steps between missing), or refused as "a run on
        # other data … use --no-resume", the option just given
        cfg.log_path.unlink(missing_ok=True)
        cfg.state_path.unlink(missing_ok=True)

    bar = None
    if progress is True:
        import sys

        # a resumed run shows the loss it stopped at (not NaN until its next logged step); a run that is already
        # complete trains nothing, so it says so instead of showing a finished bar with an unknown loss
        last = (read_jsonl(cfg.log_path, verify=False) or [{}])[-1] if start else {}
        if start >= cfg.steps:
            print(f"note: {cfg.state_path} is already at step {start} of --steps {cfg.steps}: nothing left to "
                  f"train; writing {out} from it (a larger --steps trains on)", file=sys.stderr)
        else:
            if start:
                # a re-run to the same --out (a larger --steps, or the same command after a kill) continued the old
                # run with only the progress bar starting part-way to show it: read as a fresh run of --steps steps
                print(f"note: resuming from step {start} of {cfg.state_path} (to --steps {cfg.steps}; delete it "
                      "or pass --no-resume to start over)", file=sys.stderr)
            bar = _progress_bar(cfg.steps, start, last.get("loss"))
    callback = progress if callable(progress) else None
    t0, timed = time.time(), 0  # steps run by this process in the open window (restored ones were not timed)
    if start < cfg.steps:  # the thread counts the steps ran at, this process's too (see the checkpoint's extra)
        threads_used = sorted({*threads_used, torch.get_num_threads()})
    try:
        for step in range(start, cfg.steps):
            gen = torch.Generator().manual_seed(cfg.seed * 7_919_993 + step)
            idx, x0, scores = data.batch(step, cfg.batch_size, G, cfg.seed, gen)
            cond = data.cond.index(idx.to(data.x0[0].device))
            tracker.update([data.group_ids[i] for i in idx.tolist()], scores)
            step_gen = torch.Generator(device=x0.device).manual_seed(cfg.seed * 104_729 + step)
            out_obj = compute_loss(policy, reference, x0, cond, scores, ocfg, step_gen)
            if not torch.isfinite(out_obj.loss):
                # Stop before a NaN reaches the weights: the state and checkpoint of the last good step stay.
                # At step 1 no update was made yet (and no state saved): the base model or the data gives the NaN,
                # and "lower --lr" would send the user after the wrong cause.
                loss_v = float(out_obj.loss.detach())
                if step == 0:
                    raise TrainingDiverged(
                        f"finetune cannot start: the loss is {loss_v} at step 1, before any update, so the base model "
                        f"({cfg.model or 'the shipped one'}) or the data in {cfg.data} gives it, not --lr or --beta")
                kept = (f"the last saved state, {cfg.state_path}, is kept" if cfg.state_path.exists()
                        else f"no state was saved yet: --checkpoint-every is {cfg.checkpoint_every}")
                raise TrainingDiverged(
                    f"finetune diverged: the loss is {loss_v} at step {step + 1} ({kept}); lower --lr or --beta")
            opt.zero_grad(set_to_none=True)
            if out_obj.loss.requires_grad:
                out_obj.loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            if not torch.isfinite(gnorm):
                # a finite loss whose gradient overflows (a huge --beta): clipping by an infinite norm zeroed the
                # step (a run that trained nothing and ended as if aligned) or, with an inf or NaN gradient, made
                # every weight NaN, saved with the state; the log held "grad_norm": Infinity, which is not JSON
                kept = (f"the last saved state, {cfg.state_path}, is kept" if cfg.state_path.exists()
                        else f"no state was saved yet: --checkpoint-every is {cfg.checkpoint_every}")
                raise TrainingDiverged(
                    f"finetune diverged: the gradient norm is {float(gnorm)} at step {step + 1} (loss "
                    f"{float(out_obj.loss.detach()):.4g}; {kept}); lower --beta or --lr")
            opt.step()
            ema_update(ema, policy, step, cfg.ema)
            window.append({**out_obj.metrics, "grad_norm": float(gnorm)})
            timed += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = time.time() - t0
                rec = {
                    "step": done,
                    "objective": cfg.objective,
                    "lr": cfg.lr,
                    "num_generations": G,
                    **_mean_metrics(window),
                    **{f"batch_{k}": v for k, v in tracker.summary().items()},
                    "steps_per_s": timed / max(elapsed, 1e-9),
                }
                append_jsonl(cfg.log_path, rec, checksum=False)
                if bar is not None:
                    bar[0].update(bar[1], completed=done, loss=_loss_text(rec.get("loss")))
                if callback:
                    callback({**rec, "total": cfg.steps})
                tracker.clear()
                t0, window, timed = time.time(), [], 0
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                _save_state(cfg, policy, ema, opt, done, base_hash, window, tracker, data_hash, threads_used)
    finally:
        if bar is not None:
            bar[0].stop()

    from hmrcritic.hmr.diffusion import save_model

    final = ema
    final_log = (read_jsonl(cfg.log_path, verify=False) or [{}])[-1]
    extra = {
        "finetune": {k: v for k, v in asdict(cfg).items() if k != "resume"},
        "base_model_hash": base_hash,
        "data_model_hash": ds.header.model_hash,
        "data_groups": len(ds),
        # the split the groups came from (the dataset header's): an evaluation on it measures inputs aligned on
        "data_split": ds.header.split,
        "num_generations_used": G,
        "torch_threads": torch.get_num_threads(),
        # every count the run's steps ran at: a run resumed with another --threads recorded only the last one, so
        # its weights read as those of one count (which they are not, bit for bit); [] for a state saved before this
        "torch_threads_used": threads_used,
        "final_log": final_log,
        "weights": "ema",
    }
    save_model(final, out, extra=extra)
    return out


def _note_left_out(ds: GroupPreferenceDataset, data: str) -> None:
    """What the reader left out or does not use that ``export validate`` calls an error, one line each on stderr:
    the run is well defined without it, but it went on without a word while validate said INVALID, so a user could
    not tell what the model was trained on."""
    import sys

    def lines(numbers: list[int]) -> str:
        return ", ".join(map(str, numbers[:5])) + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else "")

    manifest = f"{data}/manifest.jsonl"
    said = f"`hmrcritic export validate {data}` lists them"
    if ds.skipped_lines:
        print(f"note: {manifest}: line(s) {lines(ds.skipped_lines)} hold no complete record (torn by an interrupted "
              f"write, or damaged): skipped, training on the {len(ds)} group(s) that read; {said}", file=sys.stderr)
    if ds.repeated_lines:
        print(f"note: {manifest}: line(s) {lines(ds.repeated_lines)} repeat an earlier line's record: each group is "
              f"trained on once; {said}", file=sys.stderr)
    failed = open_failures(ds.root, (r.group_id for r in ds.records))
    if failed:  # a VLM endpoint down for most of an export left a few groups: trained on without a word
        print(f"note: {len(failed)} input(s) of the export into {data} failed and are not in the dataset "
              f"({FAILURES}, first: {failed[0]}{not_attempted_note(ds.root, failed)}): training on the {len(ds)} "
              f"group(s) it holds; {RETRY_ADVICE}", file=sys.stderr)
    if ds.stale_advantages:
        print(f"note: {len(ds.stale_advantages)} group(s) of {data} store advantages that do not match their scores "
              f"(first: {ds.stale_advantages[0]}): unused, finetune recomputes them from the scores; {said}",
              file=sys.stderr)


def unused_settings(cfg: FinetuneConfig) -> list[str]:
    """The settings given away from their defaults that ``cfg.objective`` does not read (objectives.UNUSED_SETTINGS),
    as ``--flag value``."""
    defaults = {f.name: f.default for f in fields(FinetuneConfig)}
    return [f"{_option(name)} {getattr(cfg, name)}" for name in UNUSED_SETTINGS.get(cfg.objective, ())
            if getattr(cfg, name) != defaults[name]]


def _note_unused(cfg: FinetuneConfig) -> None:
    """Say which given settings the objective ignores. ``--objective dpo --t-min 900`` (or ``--scale-rewards none``,
    ``--gpa-weight``, ``sft --beta``) trained exactly the model the defaults train, without a word: a sweep of
    them compared one model with itself."""
    import sys

    unused = unused_settings(cfg)
    if unused:
        what = ("a pairwise loss on each group's best and worst hypothesis over the full t range, without "
                "advantages or a base loss" if cfg.objective == "dpo"
                else "a plain denoising loss on each group's best hypothesis")
        print(f"note: --objective {cfg.objective} does not use {', '.join(unused)}: ignored ({cfg.objective} is "
              f"{what})", file=sys.stderr)


# The split `hmrcritic evaluate` and `reproduce` score by default and keep out of every other stage
HELD_OUT_SPLIT = "test"


def _note_held_out_split(ds: GroupPreferenceDataset, data: str) -> None:
    """Say so when the groups come from the held-out test split: `export --split test` is accepted (any split is
    data), and the aligned model was then evaluated on the very inputs it was aligned on, with no word anywhere."""
    import sys

    if ds.header.split == HELD_OUT_SPLIT:
        print(f"note: {data} holds groups of the {HELD_OUT_SPLIT} split, which `hmrcritic evaluate` scores by default: "
              f"evaluating this model on {HELD_OUT_SPLIT} measures inputs it was aligned on (their 2D keypoints and "
              "critic scores, not their labels); export --split wild to align on inputs `evaluate` (default --split "
              "test) leaves alone",
              file=sys.stderr)


def _mean_metrics(window: list[dict]) -> dict[str, float]:
    keys = sorted({k for m in window for k in m})
    return {k: sum(m[k] for m in window if k in m) / max(1, sum(k in m for m in window)) for k in keys}


def _loss_text(loss: float | None) -> str:
    """The progress bar's loss: "–" until a step is logged (rather than "nan", which reads as a diverged run)."""
    return "–" if loss is None else f"{loss:.4f}"


def _generations_origin(n: int, given: bool | None = None) -> str:
    """How the note on a smaller G names ``num_generations``: "asked for 30" where the user chose it (``given``),
    "default 20" where they did not; with ``given`` unknown (None, a Python caller), by the value: the default's
    is called the default. "asked for 20" on a command line without -n read as a setting the user gave, and an
    explicit ``-n 20`` as the default before the CLI passed ``given``."""
    if given is None:
        given = n != FinetuneConfig.num_generations
    return f"asked for {n}" if given else f"default {n}"


def _progress_bar(total: int, start: int, loss: float | None = None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn("finetune"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    task = prog.add_task("finetune", total=total, completed=start, loss=_loss_text(loss))
    prog.start()
    return prog, task
